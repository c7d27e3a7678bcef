//! The audit trail: append-only AuditEvents, searchable by privacy officers.

use crate::db::{execute, load, Bind, DbConn, Sql};
use crate::StoreError;
use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use epaccs_access::audit::AuditRecord;
use epaccs_access::{Decision, Gate};
use epaccs_fhir::query::DateValue;

/// Inserts one record (inside the caller's transaction: a write and its audit commit together).
pub fn insert(conn: &mut DbConn, rec: &AuditRecord) -> Result<(), StoreError> {
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
    if rec.break_glass {
        crate::outbox::enqueue_alert(conn, &rec.id)?;
    }
    for p in &rec.patients {
        let mut sql =
            Sql::new("INSERT INTO audit_patient (audit_id, patient_key, recorded) VALUES (");
        sql.text(rec.id.clone())
            .push(", ")
            .text(p.clone())
            .push(", ")
            .int(rec.recorded)
            .push(")");
        execute(conn, &sql)?;
    }
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
        sql.push(" AND a.id IN (SELECT audit_id FROM audit_patient WHERE patient_key = ")
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
        .map(|r| epaccs_access::audit::render_stored(&r.id, r.recorded, &r.content))
        .collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::Internal)?;
    Ok((events, next))
}
