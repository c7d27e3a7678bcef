//! Keeps `patient_access` (the sharing facts of each person) in step with the record, inside the
//! same transaction as the write that changes it.

use crate::db::{execute, load, DbConn, Sql};
use crate::StoreError;
use diesel::sql_types::Text;
use diesel::QueryableByName;
use epaccs_access::facts::RecordedConsent;
use epaccs_access::PatientFacts;
use epaccs_core::OdsCode;
use serde_json::Value;

#[derive(QueryableByName)]
struct FactsRow {
    #[diesel(sql_type = Text)]
    facts: String,
}

#[derive(QueryableByName)]
struct ContentRow {
    #[diesel(sql_type = Text)]
    content: String,
}

#[derive(QueryableByName)]
struct ConsentRow {
    #[diesel(sql_type = Text)]
    content: String,
    #[diesel(sql_type = Text)]
    writer_org: String,
}

pub(crate) fn load_facts(conn: &mut DbConn, key: &str) -> Result<PatientFacts, StoreError> {
    let mut sql = Sql::new("SELECT facts FROM patient_access WHERE patient_key = ");
    sql.text(key);
    match load::<FactsRow>(conn, &sql)?.pop() {
        Some(r) => serde_json::from_str(&r.facts)
            .map_err(|e| StoreError::Internal(format!("corrupt sharing facts: {e}"))),
        None => Ok(PatientFacts::default()),
    }
}

fn contents(conn: &mut DbConn, key: &str, ty: &str) -> Result<Vec<Value>, StoreError> {
    let mut sql = Sql::new("SELECT content FROM resource WHERE patient_key = ");
    sql.text(key)
        .push(" AND res_type = ")
        .text(ty)
        .push(" AND deleted = FALSE");
    let rows: Vec<ContentRow> = load(conn, &sql)?;
    Ok(rows
        .into_iter()
        .filter_map(|r| serde_json::from_str(&r.content).ok())
        .collect())
}

/// The ODS code of `Organization/{id}`. A deleted Organization still answers with the code it
/// had: deleting shared reference data never moves access (and its ODS code cannot be changed,
/// see `resources::check_reference_data`).
/// The person's Consents, each with the organisation that recorded its current version.
fn consents(conn: &mut DbConn, key: &str) -> Result<Vec<RecordedConsent>, StoreError> {
    let mut sql = Sql::new(
        "SELECT content, writer_org FROM resource WHERE res_type = 'Consent' AND patient_key = ",
    );
    sql.text(key).push(" AND deleted = FALSE");
    let rows: Vec<ConsentRow> = load(conn, &sql)?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(RecordedConsent {
                value: serde_json::from_str(&r.content).ok()?,
                recorded_by: Some(r.writer_org),
            })
        })
        .collect())
}

fn organisation_ods(conn: &mut DbConn, id: &str) -> Option<String> {
    let mut sql =
        Sql::new("SELECT content FROM resource WHERE res_type = 'Organization' AND id = ");
    sql.text(id);
    let row: ContentRow = load::<ContentRow>(conn, &sql).ok()?.pop()?;
    let org: Value = serde_json::from_str(&row.content).ok()?;
    org.get("identifier")?
        .as_array()?
        .iter()
        .find(|i| i.get("system").and_then(Value::as_str) == Some(OdsCode::SYSTEM))
        .and_then(|i| i.get("value").and_then(Value::as_str))
        .and_then(|v| OdsCode::parse(v).ok())
        .map(|o| o.to_string())
}

/// The resource types the sharing facts are computed from.
pub(crate) const FEEDS_FACTS: [&str; 3] = ["Patient", "Consent", "CareTeam"];

/// After a write to `key`'s record by `org` (None for a delete): recompute the facts when the
/// written type affects them or a new organisation joined the writers.
pub(crate) fn after_write(
    conn: &mut DbConn,
    key: &str,
    ty: &str,
    org: Option<&str>,
) -> Result<(), StoreError> {
    if ty == "Consent" {
        crate::outbox::refresh_locator(conn, key)?;
    }
    let mut facts = load_facts(conn, key)?;
    let new_writer = org.is_some_and(|o| !facts.writer_orgs.contains(o));
    if !new_writer && !FEEDS_FACTS.contains(&ty) {
        return Ok(());
    }
    let mut writers = std::mem::take(&mut facts.writer_orgs);
    if let Some(o) = org {
        writers.insert(o.to_string());
    }
    let patient = contents(conn, key, "Patient")?.into_iter().next();
    let consents = consents(conn, key)?;
    let teams = contents(conn, key, "CareTeam")?;
    let mut org_ids: Vec<String> = Vec::new();
    let mut collect_org_refs = |v: &Value| {
        let s = v.to_string();
        for part in s.split("\"Organization/").skip(1) {
            if let Some(end) = part.find('"') {
                org_ids.push(part[..end].to_string());
            }
        }
    };
    if let Some(p) = &patient {
        collect_org_refs(p);
    }
    teams.iter().for_each(&mut collect_org_refs);
    consents.iter().for_each(|c| collect_org_refs(&c.value));
    let mut resolved = std::collections::HashMap::new();
    for id in org_ids {
        if let Some(ods) = organisation_ods(conn, &id) {
            resolved.insert(id, ods);
        }
    }
    let derived = PatientFacts::derive(patient.as_ref(), &consents, &teams, writers, &|id| {
        resolved.get(id).cloned()
    });
    let json = serde_json::to_string(&derived).map_err(|e| StoreError::Internal(e.to_string()))?;
    let mut sql = Sql::new("INSERT INTO patient_access (patient_key, facts) VALUES (");
    sql.text(key)
        .push(", ")
        .text(json)
        .push(") ON CONFLICT (patient_key) DO UPDATE SET facts = excluded.facts");
    execute(conn, &sql)?;
    Ok(())
}
