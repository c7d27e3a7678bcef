//! The audit trail: append-only AuditEvents, searchable by privacy officers.

use crate::db::{execute, load, Bind, DbConn, PgAuditAppend, Sql};
use crate::StoreError;
use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use epaccs_access::audit::AuditRecord;
use epaccs_access::{Decision, Gate};
use epaccs_fhir::query::DateValue;
use std::borrow::Borrow;

/// Inserts one record (inside the caller's transaction: a write and its audit commit together).
pub fn insert(conn: &mut DbConn, rec: &AuditRecord) -> Result<(), StoreError> {
    insert_many(conn, std::slice::from_ref(rec))
}

/// One `audit_event` row, by itself (SQLite: a prepared statement per row).
fn insert_event(conn: &mut DbConn, rec: &AuditRecord) -> Result<(), StoreError> {
    let mut sql = Sql::new("INSERT INTO audit_event (id, recorded, client_id, user_id, org, role, purpose, outcome, break_glass, content) VALUES (");
    sql.text(rec.id.clone())
        .push(", ")
        .int(rec.recorded)
        .push(", ")
        .text(rec.client_id.clone())
        .push(", ");
    sql.bind(Bind::OptText(rec.user_id.clone()))
        .push(", ")
        .text(rec.org.clone())
        .push(", ")
        .text(rec.role.clone());
    sql.push(", ")
        .text(rec.purpose.clone())
        .push(", ")
        .text(rec.outcome.clone())
        .push(", ")
        .bind(Bind::Bool(rec.break_glass));
    sql.push(", ").text(rec.content.clone()).push(")");
    execute(conn, &sql)?;
    Ok(())
}

/// The (patient, recorded, audit id) links of `recs`. They are appended to
/// `audit_patient_recent` and moved into the per-patient index by `merge_recent`.
fn patient_links<R: Borrow<AuditRecord>>(recs: &[R]) -> Vec<(&str, i64, &str)> {
    recs.iter()
        .map(Borrow::borrow)
        .flat_map(|r: &AuditRecord| {
            r.patients
                .iter()
                .map(|p| (p.as_str(), r.recorded, r.id.as_str()))
        })
        .collect()
}

/// How many links are waiting in `audit_patient_recent`.
pub fn recent_links(conn: &mut DbConn) -> Result<u64, StoreError> {
    let rows: Vec<Count> = load(
        conn,
        &Sql::new("SELECT COUNT(*) AS n FROM audit_patient_recent"),
    )?;
    Ok(rows.first().map_or(0, |r| r.n.max(0) as u64))
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Moves up to `limit` of the oldest waiting links into the per-patient index, in its key
/// order (inside the caller's transaction); returns how many moved.
pub fn merge_recent(conn: &mut DbConn, limit: usize) -> Result<u64, StoreError> {
    let mut sql = Sql::new("SELECT COUNT(*) AS n, COALESCE(MAX(seq), 0) AS upto FROM (SELECT seq FROM audit_patient_recent ORDER BY seq LIMIT ");
    sql.int(limit as i64).push(") oldest");
    let rows: Vec<Upto> = load(conn, &sql)?;
    let Some(&Upto { n, upto }) = rows.first() else {
        return Ok(0);
    };
    if n == 0 {
        return Ok(0);
    }
    // Either way, a link already in the index (it cannot be, but a merge must never fail on
    // it) is skipped.
    if matches!(conn, DbConn::Pg(_)) {
        // One statement, so one snapshot: links committed meanwhile by the audit committers
        // (see `committers`) are either moved or left, never deleted unmerged; a merge running
        // at the same time skips the rows this one deleted.
        let mut sql = Sql::new("WITH moved AS (DELETE FROM audit_patient_recent WHERE seq <= ");
        sql.int(upto).push(" RETURNING audit_id, patient_key, recorded) INSERT INTO audit_patient (audit_id, patient_key, recorded) SELECT audit_id, patient_key, recorded FROM moved ORDER BY patient_key, recorded, audit_id ON CONFLICT DO NOTHING");
        execute(conn, &sql)?;
        return Ok(n.max(0) as u64);
    }
    let mut sql = Sql::new("INSERT INTO audit_patient (audit_id, patient_key, recorded) SELECT audit_id, patient_key, recorded FROM audit_patient_recent WHERE seq <= ");
    sql.int(upto)
        .push(" ORDER BY patient_key, recorded, audit_id ON CONFLICT DO NOTHING");
    execute(conn, &sql)?;
    let mut sql = Sql::new("DELETE FROM audit_patient_recent WHERE seq <= ");
    sql.int(upto);
    execute(conn, &sql)?;
    Ok(n.max(0) as u64)
}

#[derive(QueryableByName, Clone, Copy)]
struct Upto {
    #[diesel(sql_type = BigInt)]
    n: i64,
    #[diesel(sql_type = BigInt)]
    upto: i64,
}

/// Appends a batch's audit records. On PostgreSQL, where each statement is a round trip, with
/// one statement taking arrays (records and links together; the same prepared statement
/// whatever the batch size); on SQLite (in-process) one prepared statement per row is cheaper
/// than a multi-row VALUES list, so record by record. Break-glass records also queue an alert
/// (another statement: callers with one in the batch need a transaction).
pub fn insert_many<R: Borrow<AuditRecord>>(
    conn: &mut DbConn,
    recs: &[R],
) -> Result<(), StoreError> {
    if matches!(conn, DbConn::Sqlite(_)) {
        for rec in recs.iter().map(Borrow::borrow) {
            insert_event(conn, rec)?;
        }
        for (patient, recorded, id) in patient_links(recs) {
            let mut sql = Sql::new(
                "INSERT INTO audit_patient_recent (audit_id, patient_key, recorded) VALUES (",
            );
            sql.text(id)
                .push(", ")
                .text(patient)
                .push(", ")
                .int(recorded)
                .push(")");
            execute(conn, &sql)?;
        }
        return alerts(conn, recs);
    }
    let DbConn::Pg(pg) = conn else {
        unreachable!("SQLite is handled above")
    };
    let recs: Vec<&AuditRecord> = recs.iter().map(Borrow::borrow).collect();
    let links = patient_links(&recs);
    PgAuditAppend {
        ids: recs.iter().map(|r| r.id.as_str()).collect(),
        recorded: recs.iter().map(|r| r.recorded).collect(),
        client_ids: recs.iter().map(|r| r.client_id.as_str()).collect(),
        user_ids: recs.iter().map(|r| r.user_id.as_deref()).collect(),
        orgs: recs.iter().map(|r| r.org.as_str()).collect(),
        roles: recs.iter().map(|r| r.role.as_str()).collect(),
        purposes: recs.iter().map(|r| r.purpose.as_str()).collect(),
        outcomes: recs.iter().map(|r| r.outcome.as_str()).collect(),
        break_glass: recs.iter().map(|r| r.break_glass).collect(),
        contents: recs.iter().map(|r| r.content.as_str()).collect(),
        link_ids: links.iter().map(|l| l.2).collect(),
        link_patients: links.iter().map(|l| l.0).collect(),
        link_recorded: links.iter().map(|l| l.1).collect(),
    }
    .execute(pg)?;
    alerts(conn, &recs)
}

/// Queues the privacy officers' alert for each break-glass record.
fn alerts<R: Borrow<AuditRecord>>(conn: &mut DbConn, recs: &[R]) -> Result<(), StoreError> {
    for rec in recs.iter().map(Borrow::borrow).filter(|r| r.break_glass) {
        crate::outbox::enqueue_alert(conn, &rec.id)?;
    }
    Ok(())
}

#[derive(QueryableByName)]
struct Applied {
    #[diesel(sql_type = BigInt)]
    applied: i64,
}

/// How far the audit journal has been copied into the audit tables (see `journal`).
pub fn journal_applied(conn: &mut DbConn) -> Result<u64, StoreError> {
    let rows: Vec<Applied> = load(
        conn,
        &Sql::new("SELECT applied FROM audit_journal WHERE id = 1"),
    )?;
    Ok(rows.first().map_or(0, |r| r.applied.max(0) as u64))
}

/// Copies journaled records into the audit tables and records how far the copy has got, in the
/// caller's transaction (so a record is never copied twice).
pub fn copy_journaled<R: Borrow<AuditRecord>>(
    conn: &mut DbConn,
    recs: &[R],
    through: u64,
) -> Result<(), StoreError> {
    insert_many(conn, recs)?;
    let through = i64::try_from(through)
        .map_err(|_| StoreError::Internal("audit journal sequence overflow".into()))?;
    let mut sql = Sql::new("UPDATE audit_journal SET applied = ");
    sql.int(through)
        .push(" WHERE id = 1 AND applied < ")
        .int(through);
    execute(conn, &sql)?;
    Ok(())
}

/// A query over the audit trail.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub id: Option<String>,
    pub patient: Option<String>,
    /// Client id or SDS user id.
    pub agent: Option<String>,
    pub dates: Vec<DateValue>,
    /// Only break-glass events (DCM 110113/110127) when true.
    pub break_glass: Option<bool>,
    pub outcome: Option<String>,
    pub count: usize,
    /// Continue after this (recorded, id), newest first.
    pub before: Option<(i64, String)>,
}

/// Where a page of the audit trail ended: (recorded, id).
pub type AuditPosition = (i64, String);

#[derive(QueryableByName)]
struct AuditRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = BigInt)]
    recorded: i64,
    #[diesel(sql_type = Text)]
    content: String,
}

/// Searches the trail, newest first. Only privacy officers may; the gate decides.
pub fn search(
    conn: &mut DbConn,
    gate: &Gate,
    q: &AuditQuery,
) -> Result<(Vec<String>, Option<AuditPosition>), StoreError> {
    if let Decision::Deny { reason, .. } = gate.check_read(None, "AuditEvent", "*", "") {
        return Err(StoreError::Forbidden {
            reveal: true,
            reason,
        });
    }
    let mut sql = Sql::new("SELECT a.id, a.recorded, a.content FROM audit_event a WHERE 1 = 1");
    if let Some(id) = &q.id {
        sql.push(" AND a.id = ").text(id.clone());
    }
    if let Some(p) = &q.patient {
        // Merged links, and those still waiting to be (see `merge_recent`).
        sql.push(" AND a.id IN (SELECT audit_id FROM audit_patient WHERE patient_key = ")
            .text(p.clone())
            .push(" UNION ALL SELECT audit_id FROM audit_patient_recent WHERE patient_key = ")
            .text(p.clone())
            .push(")");
    }
    if let Some(a) = &q.agent {
        sql.push(" AND (a.client_id = ")
            .text(a.clone())
            .push(" OR a.user_id = ")
            .text(a.clone())
            .push(")");
    }
    for d in &q.dates {
        use epaccs_fhir::query::Prefix::*;
        let (lo, hi) = (d.range.low, d.range.high);
        match d.prefix {
            Eq | Ap => sql
                .push(" AND a.recorded >= ")
                .int(lo)
                .push(" AND a.recorded < ")
                .int(hi),
            Ne => sql
                .push(" AND (a.recorded < ")
                .int(lo)
                .push(" OR a.recorded >= ")
                .int(hi)
                .push(")"),
            Gt | Sa => sql.push(" AND a.recorded >= ").int(hi),
            Ge => sql.push(" AND a.recorded >= ").int(lo),
            Lt | Eb => sql.push(" AND a.recorded < ").int(lo),
            Le => sql.push(" AND a.recorded < ").int(hi),
        };
    }
    if let Some(b) = q.break_glass {
        // A literal, so the partial index of break-glass events can serve it.
        sql.push(if b {
            " AND a.break_glass = TRUE"
        } else {
            " AND a.break_glass = FALSE"
        });
    }
    if let Some(o) = &q.outcome {
        sql.push(" AND a.outcome = ").text(o.clone());
    }
    if let Some((rec, id)) = &q.before {
        sql.push(" AND (a.recorded < ")
            .int(*rec)
            .push(" OR (a.recorded = ")
            .int(*rec)
            .push(" AND a.id < ")
            .text(id.clone())
            .push("))");
    }
    sql.push(" ORDER BY a.recorded DESC, a.id DESC LIMIT ")
        .int(q.count as i64 + 1);
    let mut rows: Vec<AuditRow> = load(conn, &sql)?;
    let next = if rows.len() > q.count {
        rows.truncate(q.count);
        rows.last().map(|r| (r.recorded, r.id.clone()))
    } else {
        None
    };
    let events = rows
        .into_iter()
        .map(|r| {
            epaccs_access::audit::render_stored(&r.id, r.recorded, &r.content).unwrap_or_else(|e| {
                // A row nobody can read was not written by the service: say so, and keep
                // the rest of the trail searchable.
                tracing::error!(id = %r.id, error = %e, "audit record cannot be read");
                damaged(&r.id, r.recorded)
            })
        })
        .collect();
    Ok((events, next))
}

/// The AuditEvent shown for a stored record that cannot be read: its id and time, a failure
/// outcome and a note that it is damaged.
fn damaged(id: &str, recorded: i64) -> String {
    serde_json::json!({
        "resourceType": "AuditEvent",
        "id": id,
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "recorded": epaccs_fhir::date::format_instant(recorded),
        "outcome": "8",
        "outcomeDesc": "this audit record is damaged and cannot be read; it was not written as stored by this service",
        "agent": [{"requestor": false, "who": {"display": "unknown"}}],
        "source": {"observer": {"display": "epaccs"}}
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::DatabaseUrl;

    use crate::testdb::count;

    fn appends_whole(url: &DatabaseUrl) {
        url.migrate().expect("migrate");
        let mut conn = url.connect(true).expect("connect");
        // One batch of 71, with and without a user, naming none, one or two patients.
        let recs: Vec<AuditRecord> = (0..71)
            .map(|i| AuditRecord {
                user_id: (i % 2 == 0).then(|| "u".to_string()),
                ..crate::testdb::audit_record(
                    format!("a{i:03}"),
                    1_000 + i,
                    (0..(i % 3)).map(|p| format!("p{p}")).collect(),
                )
            })
            .collect();
        insert_many(&mut conn, &recs).expect("insert");
        assert_eq!(
            count(&mut conn, "SELECT COUNT(*) AS n FROM audit_event"),
            71
        );
        let links: i64 = (0..71).map(|i| i % 3).sum();
        assert_eq!(
            count(
                &mut conn,
                "SELECT (SELECT COUNT(*) FROM audit_patient) + (SELECT COUNT(*) FROM audit_patient_recent) AS n"
            ),
            links
        );
        assert_eq!(
            count(
                &mut conn,
                "SELECT COUNT(*) AS n FROM audit_event WHERE id = 'a070' AND recorded = 1070"
            ),
            1
        );
        // Each value landed in its own record's row.
        assert_eq!(
            count(
                &mut conn,
                "SELECT COUNT(*) AS n FROM audit_event WHERE (user_id IS NULL) = (CAST(substr(id, 2) AS INTEGER) % 2 = 1)"
            ),
            71
        );
        assert_eq!(
            count(
                &mut conn,
                "SELECT COUNT(*) AS n FROM audit_patient_recent WHERE audit_id = 'a005' AND recorded = 1005 AND patient_key IN ('p0', 'p1')"
            ),
            2
        );
    }

    fn privacy_officer() -> Gate {
        use epaccs_core::{OdsCode, Purpose, Role, Scopes};
        let principal = epaccs_core::Principal {
            client_id: "po".into(),
            org: OdsCode::parse("X26").expect("ods"),
            role: Role::PrivacyOfficer,
            user_id: None,
            user_name: None,
            user_role: None,
            purpose: Purpose::Treat,
            break_glass_reason: None,
            scopes: Scopes::parse_strict("system/AuditEvent.read").expect("scope"),
        };
        Gate::new(
            principal,
            std::sync::Arc::new(epaccs_access::Rules::default()),
        )
    }

    fn record(i: i64, patients: &[&str]) -> AuditRecord {
        crate::testdb::audit_record(
            format!("m{i:04}"),
            5_000 + i,
            patients.iter().map(|p| p.to_string()).collect(),
        )
    }

    fn ids_for(conn: &mut DbConn, patient: &str) -> Vec<String> {
        let q = AuditQuery {
            patient: Some(patient.into()),
            count: 1_000,
            ..Default::default()
        };
        let (events, _) = search(conn, &privacy_officer(), &q).expect("search");
        events
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_str(e).expect("json");
                v["id"].as_str().expect("id").to_string()
            })
            .collect()
    }

    /// Links wait in `audit_patient_recent` and move into the per-patient index in merges; a
    /// search by patient finds every access before, during and after, and only that patient's.
    fn links_are_found_before_and_after_merging(url: &DatabaseUrl) {
        url.migrate().expect("migrate");
        let mut conn = url.connect(true).expect("connect");
        // Patient A in every even record, B in every third; 30 records.
        let recs: Vec<AuditRecord> = (0..30)
            .map(|i| {
                let mut ps = Vec::new();
                if i % 2 == 0 {
                    ps.push("Patient/a");
                }
                if i % 3 == 0 {
                    ps.push("Patient/b");
                }
                record(i, &ps)
            })
            .collect();
        insert_many(&mut conn, &recs).expect("insert");
        let expect = |p: &str| -> Vec<String> {
            let mut ids: Vec<String> = recs
                .iter()
                .filter(|r| r.patients.iter().any(|x| x == p))
                .map(|r| r.id.clone())
                .collect();
            ids.reverse(); // newest first
            ids
        };
        let links = recent_links(&mut conn).expect("count");
        assert_eq!(links, 15 + 10);
        assert_eq!(ids_for(&mut conn, "Patient/a"), expect("Patient/a"));
        // Part merged: found across both tables.
        let moved = merge_recent(&mut conn, 7).expect("merge");
        assert_eq!(moved, 7);
        assert_eq!(recent_links(&mut conn).expect("count"), links - 7);
        assert_eq!(ids_for(&mut conn, "Patient/a"), expect("Patient/a"));
        assert_eq!(ids_for(&mut conn, "Patient/b"), expect("Patient/b"));
        // All merged.
        assert_eq!(merge_recent(&mut conn, 1_000).expect("merge"), links - 7);
        assert_eq!(merge_recent(&mut conn, 1_000).expect("merge"), 0);
        assert_eq!(
            count(&mut conn, "SELECT COUNT(*) AS n FROM audit_patient") as u64,
            links
        );
        assert_eq!(ids_for(&mut conn, "Patient/a"), expect("Patient/a"));
        assert_eq!(ids_for(&mut conn, "Patient/b"), expect("Patient/b"));
        assert!(ids_for(&mut conn, "Patient/c").is_empty());
        // A waiting link can be neither changed nor deleted before it is merged.
        insert_many(&mut conn, &[record(99, &["Patient/c"])]).expect("insert");
        assert!(execute(
            &mut conn,
            &Sql::new("UPDATE audit_patient_recent SET patient_key = 'Patient/a'")
        )
        .is_err());
        assert!(execute(&mut conn, &Sql::new("DELETE FROM audit_patient_recent")).is_err());
        assert_eq!(ids_for(&mut conn, "Patient/c"), vec!["m0099".to_string()]);
        assert!(execute(&mut conn, &Sql::new("DELETE FROM audit_patient")).is_err());
    }

    #[test]
    fn links_are_found_before_and_after_merging_on_sqlite() {
        let dir = tempfile::tempdir().expect("temp dir");
        links_are_found_before_and_after_merging(&DatabaseUrl::Sqlite(dir.path().join("m.db")));
    }

    #[test]
    fn links_are_found_before_and_after_merging_on_postgres() {
        crate::testdb::with_postgres(links_are_found_before_and_after_merging);
    }

    #[test]
    fn a_batch_of_any_size_is_appended_whole_on_sqlite() {
        let dir = tempfile::tempdir().expect("temp dir");
        appends_whole(&DatabaseUrl::Sqlite(dir.path().join("a.db")));
    }

    /// The multi-row path, on the local PostgreSQL.
    #[test]
    fn a_batch_of_any_size_is_appended_whole_on_postgres() {
        crate::testdb::with_postgres(appends_whole);
    }
}
