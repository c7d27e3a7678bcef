//! Repository functions for FHIR resources. Every function that returns or changes patient data
//! takes a `Gate`.

use crate::db::{execute, load, Bind, DbConn, Sql};
use crate::decisions::{self, Amendment};
use crate::facts;
use crate::StoreError;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel::QueryableByName;
use epaccs_access::{Decided, Decision, Gate, PatientFacts};
use epaccs_core::NhsNumber;
use epaccs_fhir::date;
use epaccs_fhir::query::Filter;
use epaccs_fhir::registry::{PatientLink, ResourceKind};
use epaccs_fhir::search::IndexRows;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// A resource version as stored: the exact JSON text with server-owned `id` and `meta`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    pub last_updated: i64,
    pub deleted: bool,
    pub patient_key: Option<String>,
    pub content: String,
}

#[derive(QueryableByName, Debug, Clone)]
pub(crate) struct ResourceRow {
    #[diesel(sql_type = Text)]
    pub res_type: String,
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = BigInt)]
    pub version_id: i64,
    #[diesel(sql_type = Nullable<Text>)]
    pub patient_key: Option<String>,
    #[diesel(sql_type = Text)]
    pub writer_org: String,
    #[diesel(sql_type = Bool)]
    pub deleted: bool,
    #[diesel(sql_type = BigInt)]
    pub last_updated: i64,
    #[diesel(sql_type = Text)]
    pub content: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub facts: Option<String>,
}

/// A row handed to the gate: owned (moved into the answer) or borrowed from the read cache
/// (only the answer's fields are copied, never the row's sharing facts).
pub(crate) trait RowSource: std::borrow::Borrow<ResourceRow> {
    fn into_stored(self) -> Stored;
}

impl RowSource for ResourceRow {
    fn into_stored(self) -> Stored {
        self.stored()
    }
}

impl RowSource for &ResourceRow {
    fn into_stored(self) -> Stored {
        Stored {
            resource_type: self.res_type.clone(),
            id: self.id.clone(),
            version_id: self.version_id,
            last_updated: self.last_updated,
            deleted: self.deleted,
            patient_key: self.patient_key.clone(),
            content: self.content.clone(),
        }
    }
}

impl ResourceRow {
    fn stored(self) -> Stored {
        Stored {
            resource_type: self.res_type,
            id: self.id,
            version_id: self.version_id,
            last_updated: self.last_updated,
            deleted: self.deleted,
            patient_key: self.patient_key,
            content: self.content,
        }
    }
}

fn parse_facts(raw: Option<&str>) -> Result<PatientFacts, StoreError> {
    match raw {
        Some(s) => serde_json::from_str(s)
            .map_err(|e| StoreError::Internal(format!("corrupt sharing facts: {e}"))),
        None => Ok(PatientFacts::default()),
    }
}

/// A patient's sharing facts as parsed from `raw`, remembered per thread by patient and by the
/// exact text parsed: a read of a cached row does not parse the same facts again, and facts
/// that changed (a consent withdrawn) never match the remembered text, so they are parsed anew.
fn facts_of(key: &str, raw: Option<&str>) -> Result<Arc<PatientFacts>, StoreError> {
    /// Patients remembered per thread before the memo starts afresh.
    const MEMO_PATIENTS: usize = 4096;
    type Memo = HashMap<String, (Option<String>, Arc<PatientFacts>)>;
    thread_local! {
        static MEMO: std::cell::RefCell<Memo> = std::cell::RefCell::new(HashMap::new());
    }
    MEMO.with(|memo| {
        let mut memo = memo.borrow_mut();
        if let Some((seen, facts)) = memo.get(key) {
            if seen.as_deref() == raw {
                return Ok(facts.clone());
            }
        }
        let facts = Arc::new(parse_facts(raw)?);
        if memo.len() >= MEMO_PATIENTS {
            memo.clear();
        }
        memo.insert(key.to_string(), (raw.map(str::to_string), facts.clone()));
        Ok(facts)
    })
}

/// Asks the gate about one row. `log` records the decision as a disclosure for the audit.
pub(crate) fn gate_row(
    gate: &Gate,
    source: impl RowSource,
    cache: &mut HashMap<String, Arc<PatientFacts>>,
    log: bool,
) -> Result<Decided<Stored>, StoreError> {
    let row: &ResourceRow = source.borrow();
    let patient = match &row.patient_key {
        Some(k) => {
            if !cache.contains_key(k) {
                cache.insert(k.clone(), facts_of(k, row.facts.as_deref())?);
            }
            cache.get(k).map(|f| (k.as_str(), &**f))
        }
        None => None,
    };
    if !log {
        let ok = gate.would_read(patient, &row.res_type, &row.writer_org);
        return Ok(if ok {
            Decided::Visible(source.into_stored())
        } else {
            Decided::Withheld {
                reveal: false,
                reason: String::new(),
            }
        });
    }
    let d = gate.check_read(patient, &row.res_type, &row.id, &row.writer_org);
    Ok(Gate::gated(d, source.into_stored()))
}

const COLUMNS: &str = "r.res_type, r.id, r.version_id, r.patient_key, r.writer_org, r.deleted, r.last_updated, r.content, pa.facts";

pub(crate) fn current_row(
    conn: &mut DbConn,
    ty: &str,
    id: &str,
) -> Result<Option<ResourceRow>, StoreError> {
    let mut sql = Sql::new(&format!("SELECT {COLUMNS} FROM resource r LEFT JOIN patient_access pa ON pa.patient_key = r.patient_key WHERE r.res_type = "));
    sql.text(ty).push(" AND r.id = ").text(id);
    Ok(load::<ResourceRow>(conn, &sql)?.pop())
}

fn withheld(reveal: bool, reason: String) -> StoreError {
    if reveal {
        StoreError::Withheld { reveal, reason }
    } else {
        StoreError::NotFound
    }
}

/// Reads the current version.
pub fn read(conn: &mut DbConn, gate: &Gate, ty: &str, id: &str) -> Result<Stored, StoreError> {
    let row = current_row(conn, ty, id)?.ok_or(StoreError::NotFound)?;
    decide_read(gate, row)
}

/// The gate's decision on a current row, as a read's answer.
pub(crate) fn decide_read(gate: &Gate, row: impl RowSource) -> Result<Stored, StoreError> {
    match gate_row(gate, row, &mut HashMap::new(), true)? {
        Decided::Visible(s) if s.deleted => Err(StoreError::Gone {
            version_id: s.version_id,
            last_updated: s.last_updated,
        }),
        Decided::Visible(s) => Ok(s),
        Decided::Withheld { reveal, reason } => Err(withheld(reveal, reason)),
    }
}

const VERSION_COLUMNS: &str = "v.res_type, v.id, v.version_id, v.patient_key, v.writer_org, v.deleted, v.last_updated, v.content, pa.facts";

/// Reads one version.
pub fn vread(
    conn: &mut DbConn,
    gate: &Gate,
    ty: &str,
    id: &str,
    version: i64,
) -> Result<Stored, StoreError> {
    let mut sql = Sql::new(&format!("SELECT {VERSION_COLUMNS} FROM resource_version v LEFT JOIN patient_access pa ON pa.patient_key = v.patient_key WHERE v.res_type = "));
    sql.text(ty)
        .push(" AND v.id = ")
        .text(id)
        .push(" AND v.version_id = ")
        .int(version);
    let Some(row) = load::<ResourceRow>(conn, &sql)?.pop() else {
        // Distinguish an unknown resource from an unknown version, without revealing either.
        read(conn, gate, ty, id).map(|_| ()).or_else(|e| {
            if matches!(e, StoreError::Gone { .. }) {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        return Err(StoreError::NotFound);
    };
    match gate_row(gate, row, &mut HashMap::new(), true)? {
        Decided::Visible(s) if s.deleted => Err(StoreError::Gone {
            version_id: s.version_id,
            last_updated: s.last_updated,
        }),
        Decided::Visible(s) => Ok(s),
        Decided::Withheld { reveal, reason } => Err(withheld(reveal, reason)),
    }
}

/// One entry of a history bundle.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub stored: Stored,
    pub method: String,
}

#[derive(QueryableByName)]
struct VersionRow {
    #[diesel(embed)]
    res: ResourceRow,
    #[diesel(sql_type = Text)]
    method: String,
    #[diesel(sql_type = BigInt)]
    seq: i64,
}

/// History of one resource (`id` given) or of a type, newest first, gated entry by entry.
/// `before_seq` continues a previous page. Returns the entries and the next page's position.
pub fn history(
    conn: &mut DbConn,
    gate: &Gate,
    ty: &str,
    id: Option<&str>,
    since: Option<i64>,
    count: usize,
    before_seq: Option<i64>,
) -> Result<(Vec<HistoryEntry>, Option<i64>), StoreError> {
    if let Some(id) = id {
        // The resource must exist and be visible (a deleted one still has a history).
        match read(conn, gate, ty, id) {
            Ok(_) | Err(StoreError::Gone { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let mut out = Vec::new();
    let mut cursor = before_seq;
    let mut cache = HashMap::new();
    loop {
        let mut sql = Sql::new(&format!("SELECT {VERSION_COLUMNS}, v.method, v.seq FROM resource_version v LEFT JOIN patient_access pa ON pa.patient_key = v.patient_key WHERE v.res_type = "));
        sql.text(ty);
        if let Some(id) = id {
            sql.push(" AND v.id = ").text(id);
        }
        if let Some(s) = since {
            sql.push(" AND v.last_updated >= ").int(s);
        }
        if let Some(c) = cursor {
            sql.push(" AND v.seq < ").int(c);
        }
        let batch = (count + 1) as i64;
        sql.push(" ORDER BY v.seq DESC LIMIT ").int(batch);
        let rows: Vec<VersionRow> = load(conn, &sql)?;
        let exhausted = (rows.len() as i64) < batch;
        for r in rows {
            let seq = r.seq;
            let method = r.method;
            if let Decided::Visible(stored) = gate_row(gate, r.res, &mut cache, true)? {
                if out.len() == count {
                    return Ok((out, cursor));
                }
                out.push(HistoryEntry { stored, method });
            }
            cursor = Some(seq);
        }
        if exhausted || count == 0 {
            return Ok((out, None));
        }
    }
}

/// A validated resource body to write, with what the API derived from it.
#[derive(Debug, Clone)]
pub struct Put {
    pub kind: &'static ResourceKind,
    /// The validated JSON; `id` and `meta.versionId`/`meta.lastUpdated` are set by the store.
    pub body: Value,
    pub index: IndexRows,
    pub link: PatientLink,
    /// `PUT`, `POST` or `PATCH`, for the history.
    pub method: &'static str,
}

#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Create; `id` is set when a transaction assigned it in advance (for `urn:uuid` references).
    Create {
        put: Put,
        if_none_exist: Option<Vec<Filter>>,
        id: Option<String>,
    },
    /// Update by id; creates the resource with that id if it does not exist (`upsert`).
    Update {
        id: String,
        put: Put,
        if_match: Option<i64>,
        upsert: bool,
    },
    ConditionalUpdate {
        filters: Vec<Filter>,
        put: Put,
        if_match: Option<i64>,
    },
    Delete {
        resource_type: String,
        id: String,
        if_match: Option<i64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStatus {
    Created,
    Updated,
    /// Conditional create found an existing match: nothing written.
    Existing,
    Deleted,
    /// Delete of a resource already deleted: nothing written.
    AlreadyDeleted,
}

#[derive(Debug, Clone)]
pub struct Written {
    pub stored: Stored,
    pub status: WriteStatus,
}

impl Written {
    pub fn resource_type(&self) -> &str {
        &self.stored.resource_type
    }
}

/// Applies one write inside the caller's transaction.
pub fn apply(conn: &mut DbConn, gate: &Gate, op: WriteOp) -> Result<Written, StoreError> {
    apply_amended(conn, gate, op, None)
}

/// Applies one write that may carry an amendment: the reason another organisation gave (a
/// Provenance in the same transaction) for changing a decision it does not own.
pub fn apply_amended(
    conn: &mut DbConn,
    gate: &Gate,
    op: WriteOp,
    amendment: Option<&Amendment>,
) -> Result<Written, StoreError> {
    let written = apply_one(conn, gate, op, amendment)?;
    if matches!(written.status, WriteStatus::Created | WriteStatus::Updated) {
        match written.resource_type() {
            "Composition" => {
                crate::lifecycle::after_composition_write(conn, gate, &written.stored)?
            }
            "Patient" | "Observation" => crate::death::after_write(conn, gate, &written.stored)?,
            _ => {}
        }
    }
    Ok(written)
}

fn apply_one(
    conn: &mut DbConn,
    gate: &Gate,
    op: WriteOp,
    amendment: Option<&Amendment>,
) -> Result<Written, StoreError> {
    match op {
        WriteOp::Create {
            put,
            if_none_exist,
            id,
        } => {
            if let Some(filters) = if_none_exist {
                match matches_for_condition(conn, gate, put.kind.name, &filters)? {
                    Matches::None => {}
                    Matches::One(row) => {
                        return Ok(Written {
                            stored: row,
                            status: WriteStatus::Existing,
                        })
                    }
                    Matches::Many => {
                        return Err(StoreError::PreconditionFailed(
                            "If-None-Exist matched more than one resource".into(),
                        ))
                    }
                }
            }
            let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            insert_new(conn, gate, &id, put)
        }
        WriteOp::Update {
            id,
            put,
            if_match,
            upsert,
        } => update(conn, gate, &id, put, if_match, upsert, amendment),
        WriteOp::ConditionalUpdate {
            filters,
            put,
            if_match,
        } => match matches_for_condition(conn, gate, put.kind.name, &filters)? {
            Matches::None => {
                if let Some(body_id) = put.body.get("id").and_then(Value::as_str) {
                    let id = body_id.to_string();
                    return update(conn, gate, &id, put, if_match, true, amendment);
                }
                let id = uuid::Uuid::new_v4().to_string();
                insert_new(conn, gate, &id, put)
            }
            Matches::One(row) => {
                if put
                    .body
                    .get("id")
                    .and_then(Value::as_str)
                    .is_some_and(|b| b != row.id)
                {
                    return Err(StoreError::BadRequest(
                        "the id in the body does not match the resource the condition found".into(),
                    ));
                }
                update(conn, gate, &row.id.clone(), put, if_match, false, amendment)
            }
            Matches::Many => Err(StoreError::PreconditionFailed(
                "the condition matched more than one resource".into(),
            )),
        },
        WriteOp::Delete {
            resource_type,
            id,
            if_match,
        } => delete(conn, gate, &resource_type, &id, if_match, amendment),
    }
}

enum Matches {
    None,
    One(Stored),
    Many,
}

/// The id of the one visible resource matching a conditional create's criteria, if any (for a
/// transaction that must know ids before it writes). Errors as a conditional create would.
pub fn condition_match(
    conn: &mut DbConn,
    gate: &Gate,
    ty: &str,
    filters: &[Filter],
) -> Result<Option<String>, StoreError> {
    match matches_for_condition(conn, gate, ty, filters)? {
        Matches::None => Ok(None),
        Matches::One(s) => Ok(Some(s.id)),
        Matches::Many => Err(StoreError::PreconditionFailed(
            "ifNoneExist matched more than one resource".into(),
        )),
    }
}

/// Resolves a conditional interaction's criteria over the rows the caller may see. A match the
/// sharing rules withhold counts as no match (the write is then decided by the write rules, as
/// for any other write): otherwise the answer would tell a caller with no access whether a
/// withheld person, or their data (a CPR decision), matches the criteria. Chained criteria are
/// gated the same way (`search::gated_where`).
fn matches_for_condition(
    conn: &mut DbConn,
    gate: &Gate,
    ty: &str,
    filters: &[Filter],
) -> Result<Matches, StoreError> {
    /// Candidates read per round trip while looking for visible ones.
    const BATCH: i64 = 64;
    if filters.is_empty() {
        return Err(StoreError::BadRequest(
            "a conditional interaction needs at least one search criterion".into(),
        ));
    }
    let criteria = crate::search::gated_where(conn, gate, ty, filters)?;
    let mut facts = HashMap::new();
    let mut found: Option<ResourceRow> = None;
    let mut after: Option<String> = None;
    loop {
        let mut sql = Sql::new(&format!("SELECT {COLUMNS} FROM resource r LEFT JOIN patient_access pa ON pa.patient_key = r.patient_key"));
        sql.append(&criteria);
        if let Some(a) = &after {
            sql.push(" AND r.id > ").text(a.clone());
        }
        sql.push(" ORDER BY r.id LIMIT ").int(BATCH);
        let rows: Vec<ResourceRow> = load(conn, &sql)?;
        let exhausted = (rows.len() as i64) < BATCH;
        for row in rows {
            after = Some(row.id.clone());
            if let Decided::Visible(_) = gate_row(gate, &row, &mut facts, false)? {
                if found.is_some() {
                    return Ok(Matches::Many);
                }
                found = Some(row);
            }
        }
        if exhausted {
            break;
        }
    }
    match found {
        None => Ok(Matches::None),
        // The one match is returned to the caller: its read is decided (and recorded) as such.
        Some(row) => match gate_row(gate, row, &mut facts, true)? {
            Decided::Visible(s) => Ok(Matches::One(s)),
            Decided::Withheld { .. } => Ok(Matches::None),
        },
    }
}

/// Sets `id` and `meta` on the validated body, keeping everything else exactly as sent.
fn finalize(
    body: Value,
    ty: &str,
    id: &str,
    version: i64,
    last_updated: i64,
) -> Result<String, StoreError> {
    let Value::Object(map) = body else {
        return Err(StoreError::BadRequest("a resource is a JSON object".into()));
    };
    let mut out = Map::with_capacity(map.len() + 2);
    out.insert("resourceType".into(), Value::String(ty.to_string()));
    out.insert("id".into(), Value::String(id.to_string()));
    let mut meta = match map.get("meta") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    meta.insert("versionId".into(), Value::String(version.to_string()));
    meta.insert(
        "lastUpdated".into(),
        Value::String(date::format_instant(last_updated)),
    );
    out.insert("meta".into(), Value::Object(meta));
    for (k, v) in map {
        if k != "resourceType" && k != "id" && k != "meta" {
            out.insert(k, v);
        }
    }
    serde_json::to_string(&Value::Object(out)).map_err(|e| StoreError::Internal(e.to_string()))
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = Text)]
    id: String,
}

#[derive(QueryableByName)]
struct KeyRow {
    #[diesel(sql_type = Nullable<Text>)]
    patient_key: Option<String>,
}

/// Resolves the patient key of a resource being written.
fn resolve_patient(
    conn: &mut DbConn,
    kind: &ResourceKind,
    link: &PatientLink,
    id: &str,
) -> Result<Option<String>, StoreError> {
    let element = kind.patient_elements.first().copied().unwrap_or("subject");
    let path = format!("{}.{element}", kind.name);
    match link {
        PatientLink::None => Ok(None),
        PatientLink::SelfPatient(_) => Ok(Some(id.to_string())),
        PatientLink::Patient(pid) => {
            live_patient(conn, kind, pid)?;
            Ok(Some(pid.clone()))
        }
        PatientLink::Nhs(n) => {
            let ids = patients_by_nhs(conn, n)?;
            match ids.as_slice() {
                [one] => Ok(Some(one.clone())),
                [] => Err(StoreError::unprocessable(
                    path,
                    format!("no Patient has NHS number {n}"),
                )),
                _ => Err(StoreError::unprocessable(
                    path,
                    format!("NHS number {n} matches more than one Patient; refusing to guess"),
                )),
            }
        }
        PatientLink::Via {
            resource_type,
            id: target,
        } => {
            let mut sql = Sql::new("SELECT patient_key FROM resource WHERE res_type = ");
            sql.text(resource_type.clone())
                .push(" AND id = ")
                .text(target.clone());
            match load::<KeyRow>(conn, &sql)?.pop() {
                Some(k) => Ok(k.patient_key),
                None => Err(StoreError::unprocessable(
                    path,
                    format!("{resource_type}/{target} does not exist"),
                )),
            }
        }
        PatientLink::Missing => Err(StoreError::unprocessable(
            path,
            format!(
                "a {} must reference the Patient it is about ({}.{element})",
                kind.name, kind.name
            ),
        )),
    }
}

/// The stored sharing facts of `Patient/{pid}`, which a resource of `kind` names as its person
/// (None if none are stored yet); refused (422) if there is no such live Patient.
fn live_patient(
    conn: &mut DbConn,
    kind: &ResourceKind,
    pid: &str,
) -> Result<Option<String>, StoreError> {
    #[derive(QueryableByName)]
    struct Found {
        #[diesel(sql_type = Nullable<Text>)]
        facts: Option<String>,
    }
    let mut sql = Sql::new("SELECT pa.facts FROM resource r LEFT JOIN patient_access pa ON pa.patient_key = r.id WHERE r.res_type = 'Patient' AND r.deleted = FALSE AND r.id = ");
    sql.text(pid);
    match load::<Found>(conn, &sql)?.pop() {
        Some(found) => Ok(found.facts),
        None => {
            let element = kind.patient_elements.first().copied().unwrap_or("subject");
            Err(StoreError::unprocessable(
                format!("{}.{element}", kind.name),
                format!("Patient/{pid} does not exist"),
            ))
        }
    }
}

/// Live Patient ids carrying this NHS number.
pub fn patients_by_nhs(conn: &mut DbConn, n: &NhsNumber) -> Result<Vec<String>, StoreError> {
    let mut sql = Sql::new("SELECT t.id FROM search_token t JOIN resource r ON r.res_type = t.res_type AND r.id = t.id WHERE t.res_type = 'Patient' AND t.param = 'identifier' AND t.system = ");
    sql.text(NhsNumber::SYSTEM)
        .push(" AND t.code = ")
        .text(n.as_str())
        .push(" AND r.deleted = FALSE");
    Ok(load::<IdRow>(conn, &sql)?
        .into_iter()
        .map(|r| r.id)
        .collect())
}

/// One record per person: an NHS number may belong to one live Patient only.
fn check_unique_person(conn: &mut DbConn, put: &Put, id: &str) -> Result<(), StoreError> {
    if put.kind.name != "Patient" {
        return Ok(());
    }
    for t in put
        .index
        .tokens
        .iter()
        .filter(|t| t.param == "identifier" && t.system == NhsNumber::SYSTEM)
    {
        let Ok(n) = NhsNumber::parse(&t.code) else {
            continue;
        };
        // The other record is not named: the caller may not be allowed to read it (a search by
        // the NHS number finds it for those who may).
        if patients_by_nhs(conn, &n)?.iter().any(|o| o != id) {
            return Err(StoreError::Conflict(format!(
                "NHS number {n} already belongs to another Patient record: one record per person"
            )));
        }
    }
    Ok(())
}

fn load_facts(conn: &mut DbConn, key: &str) -> Result<PatientFacts, StoreError> {
    facts::load_facts(conn, key)
}

fn insert_new(conn: &mut DbConn, gate: &Gate, id: &str, put: Put) -> Result<Written, StoreError> {
    insert(conn, gate, id, put, true)
}

/// Creates `put` as `id`. `checked`: decided by the caller's gate (false only for what the
/// service writes on its own account: a ReSPECT index, a Provenance).
fn insert(
    conn: &mut DbConn,
    gate: &Gate,
    id: &str,
    put: Put,
    checked: bool,
) -> Result<Written, StoreError> {
    let (key, facts) = match &put.link {
        // The common case (`subject: Patient/{id}`): that the person exists and their sharing
        // facts, with one query.
        PatientLink::Patient(pid) => {
            let facts = live_patient(conn, put.kind, pid)?;
            (Some(pid.clone()), parse_facts(facts.as_deref())?)
        }
        link => {
            let key = resolve_patient(conn, put.kind, link, id)?;
            let facts = match &key {
                Some(k) if put.kind.name != "Patient" || k != id => load_facts(conn, k)?,
                _ => PatientFacts::default(),
            };
            (key, facts)
        }
    };
    if checked {
        deny_write(gate.check_write(key.as_deref().map(|k| (k, &facts)), put.kind.name, id, None))?;
    }
    check_unique_person(conn, &put, id)?;
    let now = date::now_micros();
    let org = gate.principal().org.to_string();
    let index = index_with_link(&put, key.as_deref());
    let owned = decisions::is_owned_decision(put.kind.name, &put.body);
    let content = finalize(put.body, put.kind.name, id, 1, now)?;
    let mut sql = Sql::new("INSERT INTO resource (res_type, id, version_id, patient_key, writer_org, deleted, last_updated, content) VALUES (");
    sql.text(put.kind.name)
        .push(", ")
        .text(id)
        .push(", 1, ")
        .bind(Bind::OptText(key.clone()))
        .push(", ")
        .text(org.clone());
    sql.push(", FALSE, ")
        .int(now)
        .push(", ")
        .text(content.clone())
        .push(")");
    let version = version_sql(
        put.kind.name,
        id,
        1,
        key.as_deref(),
        &org,
        false,
        now,
        put.method,
        &content,
    );
    let subscriptions = if matches!(conn, DbConn::Pg(_)) {
        // One round trip for the resource, its first version, and the subscriptions that may
        // be notified of it (matched against it below, once it is indexed).
        let mut all = Sql::new("WITH r AS (");
        all.append(&sql)
            .push("), v AS (")
            .append(&version)
            .push(") ")
            .append(&crate::outbox::active_subscriptions(put.kind.name));
        Some(load::<crate::outbox::Subscription>(conn, &all)?)
    } else {
        execute(conn, &sql)?;
        execute(conn, &version)?;
        None
    };
    insert_index(conn, put.kind.name, id, &index)?;
    if let Some(k) = &key {
        if !facts_unchanged(&facts, put.kind.name, &org) {
            facts::after_write(conn, k, put.kind.name, Some(&org))?;
        }
    }
    match subscriptions {
        Some(subs) => {
            crate::outbox::enqueue_for(conn, subs, put.kind.name, id, 1, "create")?;
            subscription_written(conn, gate, put.kind.name, id, &content)?;
        }
        None => after_write(conn, gate, put.kind.name, id, 1, &content, "create")?,
    }
    let stored = Stored {
        resource_type: put.kind.name.to_string(),
        id: id.to_string(),
        version_id: 1,
        last_updated: now,
        deleted: false,
        patient_key: key,
        content,
    };
    if owned {
        decisions::record(conn, gate, &stored, "CREATE", None, None)?;
    }
    Ok(Written {
        stored,
        status: WriteStatus::Created,
    })
}

/// Creates a resource the service writes on its own account as part of the caller's write (a
/// ReSPECT index, a Provenance): not decided by the caller's gate, since it records what the
/// caller's permitted write did. Its writer is the caller's organisation.
pub(crate) fn create_internal(
    conn: &mut DbConn,
    gate: &Gate,
    put: Put,
) -> Result<Written, StoreError> {
    let id = uuid::Uuid::new_v4().to_string();
    insert(conn, gate, &id, put, false)
}

/// Whether a write of a `ty` by `org` leaves the person's sharing facts (`facts`, read in the
/// same transaction) as they are: the type does not feed them and `org` already wrote to the
/// record. `facts::after_write` would then change nothing, so the write skips it.
fn facts_unchanged(facts: &PatientFacts, ty: &str, org: &str) -> bool {
    !facts::FEEDS_FACTS.contains(&ty) && facts.writer_orgs.contains(org)
}

/// A resource that names its patient by NHS number (or through another resource) is indexed
/// as if it referenced `Patient/{key}`, so `?patient=` and `?subject=` find it.
fn index_with_link(put: &Put, key: Option<&str>) -> IndexRows {
    let mut rows = put.index.clone();
    if let (Some(k), PatientLink::Nhs(_) | PatientLink::Via { .. }) = (key, &put.link) {
        let mut params = vec!["patient"];
        if put.kind.patient_elements.first() == Some(&"subject") {
            params.push("subject");
        }
        for p in params {
            let row = epaccs_fhir::search::RefRow {
                param: p.to_string(),
                target_type: "Patient".into(),
                target_id: k.to_string(),
            };
            if !rows.references.contains(&row) {
                rows.references.push(row);
            }
        }
    }
    rows
}

/// Outbox events for matching subscriptions, and the delivery state of a written Subscription.
fn after_write(
    conn: &mut DbConn,
    gate: &Gate,
    ty: &str,
    id: &str,
    version: i64,
    content: &str,
    event: &str,
) -> Result<(), StoreError> {
    crate::outbox::enqueue_matches(conn, ty, id, version, event)?;
    subscription_written(conn, gate, ty, id, content)
}

/// The delivery state of a written Subscription (nothing for other types).
fn subscription_written(
    conn: &mut DbConn,
    gate: &Gate,
    ty: &str,
    id: &str,
    content: &str,
) -> Result<(), StoreError> {
    if ty == "Subscription" {
        let value: Value =
            serde_json::from_str(content).map_err(|e| StoreError::Internal(e.to_string()))?;
        crate::outbox::after_subscription_write(
            conn,
            id,
            Some(&value),
            &gate.principal().client_id,
        )?;
    }
    Ok(())
}

/// A server-made new version of a resource that is not patient data (e.g. a Subscription put in
/// `error` by the delivery worker). Not gated: no person's data is read or written.
pub fn system_update(
    conn: &mut DbConn,
    ty: &str,
    id: &str,
    change: impl FnOnce(&mut Value),
) -> Result<(), StoreError> {
    let Some(current) = current_row(conn, ty, id)? else {
        return Ok(());
    };
    if current.patient_key.is_some() || current.deleted {
        return Err(StoreError::Internal(
            "system updates never touch patient data".into(),
        ));
    }
    let mut value: Value =
        serde_json::from_str(&current.content).map_err(|e| StoreError::Internal(e.to_string()))?;
    change(&mut value);
    let now = date::now_micros().max(current.last_updated + 1);
    let version = current.version_id + 1;
    let content = finalize(value, ty, id, version, now)?;
    let mut set = Sql::new("version_id = ");
    set.int(version)
        .push(", last_updated = ")
        .int(now)
        .push(", content = ")
        .text(content.clone());
    advance_row(conn, ty, id, current.version_id, &set)?;
    execute(
        conn,
        &version_sql(
            ty,
            id,
            version,
            None,
            &current.writer_org,
            false,
            now,
            "PUT",
            &content,
        ),
    )?;
    Ok(())
}

/// Moves the current row of `ty/id` on from `from_version` with the given SET clause. The
/// version check in the WHERE clause makes a concurrent change by another instance a 409, never
/// a lost update.
fn advance_row(
    conn: &mut DbConn,
    ty: &str,
    id: &str,
    from_version: i64,
    set: &Sql,
) -> Result<(), StoreError> {
    let mut sql = Sql::new("UPDATE resource SET ");
    sql.append(set)
        .push(" WHERE res_type = ")
        .text(ty)
        .push(" AND id = ")
        .text(id)
        .push(" AND version_id = ")
        .int(from_version);
    if execute(conn, &sql)? != 1 {
        return Err(StoreError::Conflict(format!(
            "{ty}/{id} was changed by a concurrent write; retry"
        )));
    }
    Ok(())
}

fn deny_write(d: Decision) -> Result<(), StoreError> {
    match d {
        Decision::Permit(_) | Decision::BreakGlass => Ok(()),
        Decision::Deny { reveal, reason } => Err(StoreError::Forbidden { reveal, reason }),
    }
}

#[allow(clippy::too_many_arguments)]
fn update(
    conn: &mut DbConn,
    gate: &Gate,
    id: &str,
    put: Put,
    if_match: Option<i64>,
    upsert: bool,
    amendment: Option<&Amendment>,
) -> Result<Written, StoreError> {
    let Some(current) = current_row(conn, put.kind.name, id)? else {
        if if_match.is_some() {
            return Err(StoreError::PreconditionFailed(format!(
                "{}/{id} does not exist, so If-Match cannot match",
                put.kind.name
            )));
        }
        if !upsert {
            return Err(StoreError::NotFound);
        }
        let mut put = put;
        put.link = match put.link {
            PatientLink::SelfPatient(_) => PatientLink::SelfPatient(id.to_string()),
            other => other,
        };
        return insert_new(conn, gate, id, put);
    };
    let facts = parse_facts(current.facts.as_deref())?;
    let decision = gate.check_write(
        current.patient_key.as_deref().map(|k| (k, &facts)),
        put.kind.name,
        id,
        Some(&current.writer_org),
    );
    deny_write(decision)?;
    if let Some(expected) = if_match {
        if expected != current.version_id {
            return Err(StoreError::PreconditionFailed(format!(
                "version conflict: If-Match names version {expected} but the current version is {}",
                current.version_id
            )));
        }
    }
    check_reference_data(&current, &put)?;
    let key = resolve_patient(conn, put.kind, &put.link, id)?;
    if key != current.patient_key && !current.deleted {
        return Err(StoreError::unprocessable(
            format!("{}.{}", put.kind.name, put.kind.patient_elements.first().copied().unwrap_or("id")),
            "a resource cannot be moved to another person's record; mark it entered-in-error and create a new one",
        ));
    }
    let before = current.clone().stored();
    let owned = decisions::check_change(conn, gate, &before, Some(&put.body), if_match, amendment)?;
    check_unique_person(conn, &put, id)?;
    let org = gate.principal().org.to_string();
    let refresh_facts = key != current.patient_key || !facts_unchanged(&facts, put.kind.name, &org);
    let written = write_version(conn, gate, &before, put, key, &org, refresh_facts)?;
    if owned {
        decisions::record(conn, gate, &written.stored, "UPDATE", amendment, None)?;
    }
    Ok(written)
}

/// Writes `put` as the next version of `current` on behalf of `org`: the row, its version,
/// its index rows, the person's sharing facts (when `refresh_facts`), and the outbox.
fn write_version(
    conn: &mut DbConn,
    gate: &Gate,
    current: &Stored,
    put: Put,
    key: Option<String>,
    org: &str,
    refresh_facts: bool,
) -> Result<Written, StoreError> {
    let id = current.id.as_str();
    let now = date::now_micros().max(current.last_updated + 1);
    let version = current.version_id + 1;
    let index = index_with_link(&put, key.as_deref());
    let content = finalize(put.body, put.kind.name, id, version, now)?;
    let mut set = Sql::new("version_id = ");
    set.int(version)
        .push(", patient_key = ")
        .bind(Bind::OptText(key.clone()))
        .push(", writer_org = ")
        .text(org);
    set.push(", deleted = FALSE, last_updated = ")
        .int(now)
        .push(", content = ")
        .text(content.clone());
    advance_row(conn, put.kind.name, id, current.version_id, &set)?;
    execute(
        conn,
        &version_sql(
            put.kind.name,
            id,
            version,
            key.as_deref(),
            org,
            false,
            now,
            put.method,
            &content,
        ),
    )?;
    replace_index(conn, put.kind.name, id, &index)?;
    if let Some(k) = &key {
        if refresh_facts {
            facts::after_write(conn, k, put.kind.name, Some(org))?;
        }
    }
    after_write(conn, gate, put.kind.name, id, version, &content, "update")?;
    Ok(Written {
        stored: Stored {
            resource_type: put.kind.name.to_string(),
            id: id.to_string(),
            version_id: version,
            last_updated: now,
            deleted: false,
            patient_key: key,
            content,
        },
        status: WriteStatus::Updated,
    })
}

/// A change the service makes on its own account to a person's resource, as part of the
/// caller's write (a ReSPECT form superseded by a newer one; a deceased person's enrolment
/// ended): versioned, indexed, announced and given a Provenance like any change, but decided by
/// the rule that makes it, not by the caller's gate, since the caller may not be able to read
/// the resource. The resource stays its writer's: the caller gains no access through it. Never
/// returned to the caller.
pub(crate) fn server_update(
    conn: &mut DbConn,
    gate: &Gate,
    current: &Stored,
    change: impl FnOnce(&mut Value),
    reason: &str,
) -> Result<(), StoreError> {
    let kind = epaccs_fhir::registry::kind_of(&current.resource_type)
        .ok_or_else(|| StoreError::Internal("unknown type".into()))?;
    let mut body: Value =
        serde_json::from_str(&current.content).map_err(|e| StoreError::Internal(e.to_string()))?;
    change(&mut body);
    let index = crate::outbox::params().index(kind.name, &body);
    let owned = decisions::is_owned_decision(kind.name, &body);
    let put = Put {
        kind,
        body,
        index,
        link: PatientLink::None,
        method: "PUT",
    };
    let row = current_row(conn, kind.name, &current.id)?.ok_or(StoreError::NotFound)?;
    if row.version_id != current.version_id {
        return Err(StoreError::Conflict(format!(
            "{}/{} was changed by a concurrent write; retry",
            kind.name, current.id
        )));
    }
    let key = current.patient_key.clone();
    let written = write_version(conn, gate, current, put, key, &row.writer_org, false)?;
    if owned {
        decisions::record(conn, gate, &written.stored, "UPDATE", None, Some(reason))?;
    }
    Ok(())
}

/// Every live resource of type `ty` in the person's record, whoever wrote it and whatever the
/// caller may read: the system view that the service's own rules (one current ReSPECT form,
/// closing a deceased person's record) decide over. Never returned to a caller.
pub(crate) fn person_resources(
    conn: &mut DbConn,
    key: &str,
    ty: &str,
) -> Result<Vec<Stored>, StoreError> {
    let mut sql = Sql::new(&format!("SELECT {COLUMNS} FROM resource r LEFT JOIN patient_access pa ON pa.patient_key = r.patient_key WHERE r.patient_key = "));
    sql.text(key)
        .push(" AND r.res_type = ")
        .text(ty)
        .push(" AND r.deleted = FALSE ORDER BY r.last_updated, r.id");
    Ok(load::<ResourceRow>(conn, &sql)?
        .into_iter()
        .map(ResourceRow::stored)
        .collect())
}

/// Shared reference data may not silently move access: an Organization's ODS code is what
/// relationships are decided by, so it never changes (a re-organised body is a new
/// Organization).
fn check_reference_data(current: &ResourceRow, put: &Put) -> Result<(), StoreError> {
    if put.kind.name != "Organization" || current.deleted {
        return Ok(());
    }
    let ods = |v: &Value| -> Vec<String> {
        v.get("identifier")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|i| {
                i.get("system").and_then(Value::as_str) == Some(epaccs_core::OdsCode::SYSTEM)
            })
            .filter_map(|i| i.get("value").and_then(Value::as_str))
            .map(|v| v.to_ascii_uppercase())
            .collect()
    };
    let old: Value = serde_json::from_str(&current.content).unwrap_or(Value::Null);
    if ods(&old) != ods(&put.body) {
        return Err(StoreError::unprocessable(
            "Organization.identifier",
            "an Organization's ODS code never changes: relationships with people are decided by it; record a re-organised body as a new Organization",
        ));
    }
    Ok(())
}

fn delete(
    conn: &mut DbConn,
    gate: &Gate,
    ty: &str,
    id: &str,
    if_match: Option<i64>,
    amendment: Option<&Amendment>,
) -> Result<Written, StoreError> {
    let current = current_row(conn, ty, id)?.ok_or(StoreError::NotFound)?;
    let facts = parse_facts(current.facts.as_deref())?;
    let decision = gate.check_write(
        current.patient_key.as_deref().map(|k| (k, &facts)),
        ty,
        id,
        Some(&current.writer_org),
    );
    deny_write(decision)?;
    if let Some(expected) = if_match {
        if expected != current.version_id {
            return Err(StoreError::PreconditionFailed(format!(
                "version conflict: If-Match names version {expected} but the current version is {}",
                current.version_id
            )));
        }
    }
    if current.deleted {
        return Ok(Written {
            stored: current.stored(),
            status: WriteStatus::AlreadyDeleted,
        });
    }
    let owned = decisions::check_change(
        conn,
        gate,
        &current.clone().stored(),
        None,
        if_match,
        amendment,
    )?;
    // Announce the delete while the index still describes the resource.
    crate::outbox::enqueue_matches(conn, ty, id, current.version_id + 1, "delete")?;
    if ty == "Subscription" {
        crate::outbox::after_subscription_write(conn, id, None, &gate.principal().client_id)?;
    }
    let now = date::now_micros().max(current.last_updated + 1);
    let version = current.version_id + 1;
    let org = gate.principal().org.to_string();
    let mut set = Sql::new("version_id = ");
    set.int(version)
        .push(", deleted = TRUE, last_updated = ")
        .int(now)
        .push(", writer_org = ")
        .text(org.clone());
    advance_row(conn, ty, id, current.version_id, &set)?;
    execute(
        conn,
        &version_sql(
            ty,
            id,
            version,
            current.patient_key.as_deref(),
            &org,
            true,
            now,
            "DELETE",
            &current.content,
        ),
    )?;
    delete_index(conn, ty, id)?;
    if let Some(k) = &current.patient_key {
        facts::after_write(conn, k, ty, None)?;
    }
    let mut stored = current.stored();
    stored.version_id = version;
    stored.last_updated = now;
    stored.deleted = true;
    if owned {
        decisions::record(conn, gate, &stored, "DELETE", amendment, None)?;
    }
    Ok(Written {
        stored,
        status: WriteStatus::Deleted,
    })
}

/// The INSERT of one row of `resource_version`.
#[allow(clippy::too_many_arguments)]
fn version_sql(
    ty: &str,
    id: &str,
    version: i64,
    key: Option<&str>,
    org: &str,
    deleted: bool,
    now: i64,
    method: &str,
    content: &str,
) -> Sql {
    let mut sql = Sql::new("INSERT INTO resource_version (res_type, id, version_id, patient_key, writer_org, deleted, last_updated, method, content) VALUES (");
    sql.text(ty)
        .push(", ")
        .text(id)
        .push(", ")
        .int(version)
        .push(", ")
        .bind(Bind::OptText(key.map(str::to_string)));
    sql.push(", ")
        .text(org)
        .push(", ")
        .bind(Bind::Bool(deleted))
        .push(", ")
        .int(now)
        .push(", ")
        .text(method)
        .push(", ")
        .text(content)
        .push(")");
    sql
}

fn delete_index(conn: &mut DbConn, ty: &str, id: &str) -> Result<(), StoreError> {
    if let DbConn::Pg(pg) = conn {
        // One round trip: the replacing statement, with nothing to insert.
        pg_index(ty, id, &IndexRows::default(), true).execute(pg)?;
        return Ok(());
    }
    for table in [
        "search_token",
        "search_string",
        "search_date",
        "search_reference",
        "search_quantity",
    ] {
        let mut sql = Sql::new(&format!("DELETE FROM {table} WHERE res_type = "));
        sql.text(ty).push(" AND id = ").text(id);
        execute(conn, &sql)?;
    }
    Ok(())
}

/// The PostgreSQL statement writing `rows` (first deleting the resource's old rows if `replace`).
fn pg_index<'a>(
    ty: &'a str,
    id: &'a str,
    rows: &'a IndexRows,
    replace: bool,
) -> crate::db::PgIndexInsert<'a> {
    crate::db::PgIndexInsert {
        replace,
        res_type: ty,
        id,
        token_params: rows.tokens.iter().map(|t| t.param.as_str()).collect(),
        token_systems: rows.tokens.iter().map(|t| t.system.as_str()).collect(),
        token_codes: rows.tokens.iter().map(|t| t.code.as_str()).collect(),
        string_params: rows.strings.iter().map(|t| t.param.as_str()).collect(),
        string_values: rows.strings.iter().map(|t| t.value.as_str()).collect(),
        string_raws: rows.strings.iter().map(|t| t.raw.as_str()).collect(),
        date_params: rows.dates.iter().map(|t| t.param.as_str()).collect(),
        date_lows: rows.dates.iter().map(|t| t.low).collect(),
        date_highs: rows.dates.iter().map(|t| t.high).collect(),
        quantity_params: rows.quantities.iter().map(|t| t.param.as_str()).collect(),
        quantity_values: rows.quantities.iter().map(|t| t.value).collect(),
        quantity_systems: rows.quantities.iter().map(|t| t.system.as_str()).collect(),
        quantity_codes: rows.quantities.iter().map(|t| t.code.as_str()).collect(),
        ref_params: rows.references.iter().map(|t| t.param.as_str()).collect(),
        ref_types: rows
            .references
            .iter()
            .map(|t| t.target_type.as_str())
            .collect(),
        ref_ids: rows
            .references
            .iter()
            .map(|t| t.target_id.as_str())
            .collect(),
    }
}

/// Replaces a resource's index rows with those of its new version (on PostgreSQL with one
/// statement: its deletes and inserts share one snapshot, so the deletes never see the rows it
/// inserts).
fn replace_index(
    conn: &mut DbConn,
    ty: &str,
    id: &str,
    rows: &IndexRows,
) -> Result<(), StoreError> {
    if let DbConn::Pg(pg) = conn {
        pg_index(ty, id, rows, true).execute(pg)?;
        return Ok(());
    }
    delete_index(conn, ty, id)?;
    insert_index(conn, ty, id, rows)
}

/// Writes index rows: on PostgreSQL, where each statement is a round trip, all of them with one
/// statement; on SQLite as multi-row INSERTs, one statement per table (in chunks).
fn insert_index(conn: &mut DbConn, ty: &str, id: &str, rows: &IndexRows) -> Result<(), StoreError> {
    if let DbConn::Pg(pg) = conn {
        pg_index(ty, id, rows, false).execute(pg)?;
        return Ok(());
    }
    fn multi<T>(
        conn: &mut DbConn,
        head: &str,
        items: &[T],
        ty: &str,
        id: &str,
        each: impl Fn(&mut Sql, &T),
    ) -> Result<(), StoreError> {
        for chunk in items.chunks(100) {
            let mut sql = Sql::new(head);
            for (i, item) in chunk.iter().enumerate() {
                sql.push(if i == 0 { " (" } else { ", (" });
                sql.text(ty).push(", ").text(id);
                each(&mut sql, item);
                sql.push(")");
            }
            execute(conn, &sql)?;
        }
        Ok(())
    }
    multi(
        conn,
        "INSERT INTO search_token (res_type, id, param, system, code) VALUES",
        &rows.tokens,
        ty,
        id,
        |s, t| {
            s.push(", ")
                .text(t.param.clone())
                .push(", ")
                .text(t.system.clone())
                .push(", ")
                .text(t.code.clone());
        },
    )?;
    multi(
        conn,
        "INSERT INTO search_string (res_type, id, param, value, raw) VALUES",
        &rows.strings,
        ty,
        id,
        |s, t| {
            s.push(", ")
                .text(t.param.clone())
                .push(", ")
                .text(t.value.clone())
                .push(", ")
                .text(t.raw.clone());
        },
    )?;
    multi(
        conn,
        "INSERT INTO search_date (res_type, id, param, low, high) VALUES",
        &rows.dates,
        ty,
        id,
        |s, t| {
            s.push(", ")
                .text(t.param.clone())
                .push(", ")
                .int(t.low)
                .push(", ")
                .int(t.high);
        },
    )?;
    multi(
        conn,
        "INSERT INTO search_reference (res_type, id, param, target_type, target_id) VALUES",
        &rows.references,
        ty,
        id,
        |s, t| {
            s.push(", ")
                .text(t.param.clone())
                .push(", ")
                .text(t.target_type.clone())
                .push(", ")
                .text(t.target_id.clone());
        },
    )?;
    multi(
        conn,
        "INSERT INTO search_quantity (res_type, id, param, value, system, code) VALUES",
        &rows.quantities,
        ty,
        id,
        |s, t| {
            s.push(", ")
                .text(t.param.clone())
                .push(", ")
                .bind(Bind::Float(t.value))
                .push(", ")
                .text(t.system.clone())
                .push(", ")
                .text(t.code.clone());
        },
    )?;
    Ok(())
}

/// Live resources in a person's record (for `$everything` and the emergency summary), gated.
pub fn compartment(
    conn: &mut DbConn,
    gate: &Gate,
    patient_key: &str,
    types: &[&str],
    since: Option<i64>,
) -> Result<(Vec<Stored>, usize), StoreError> {
    gate_compartment(gate, compartment_rows(conn, patient_key, types, since)?)
}

/// A patient's live resources (of the given types, changed since a time), before the gate.
pub(crate) fn compartment_rows(
    conn: &mut DbConn,
    patient_key: &str,
    types: &[&str],
    since: Option<i64>,
) -> Result<Vec<ResourceRow>, StoreError> {
    let mut sql = Sql::new(&format!("SELECT {COLUMNS} FROM resource r LEFT JOIN patient_access pa ON pa.patient_key = r.patient_key WHERE r.patient_key = "));
    sql.text(patient_key).push(" AND r.deleted = FALSE");
    if !types.is_empty() {
        sql.push(" AND r.res_type IN (");
        for (i, t) in types.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.text(*t);
        }
        sql.push(")");
    }
    if let Some(s) = since {
        sql.push(" AND r.last_updated >= ").int(s);
    }
    sql.push(" ORDER BY r.res_type, r.id");
    Ok(load(conn, &sql)?)
}

/// The gate's decisions on a patient's rows: what may be shown, and how many were withheld.
pub(crate) fn gate_compartment<R: RowSource>(
    gate: &Gate,
    rows: impl IntoIterator<Item = R>,
) -> Result<(Vec<Stored>, usize), StoreError> {
    let mut cache = HashMap::new();
    let mut out = Vec::new();
    let mut withheld = 0;
    for r in rows {
        match gate_row(gate, r, &mut cache, true)? {
            Decided::Visible(s) => out.push(s),
            Decided::Withheld { .. } => withheld += 1,
        }
    }
    Ok((out, withheld))
}

/// Live Patient ids whose family name, birth date and postcode all match exactly (after
/// folding case, accents and spaces). Not gated: the caller uses the count to refuse to guess
/// between people, and gates the single match before showing anything.
pub fn patients_by_demographics(
    conn: &mut DbConn,
    family: &str,
    birth: epaccs_fhir::date::Range,
    postcode: &str,
) -> Result<Vec<String>, StoreError> {
    let mut sql =
        Sql::new("SELECT r.id FROM resource r WHERE r.res_type = 'Patient' AND r.deleted = FALSE");
    sql.push(" AND r.id IN (SELECT id FROM search_string WHERE res_type = 'Patient' AND param = 'family' AND value = ").text(family).push(")");
    sql.push(" AND r.id IN (SELECT id FROM search_date WHERE res_type = 'Patient' AND param = 'birthdate' AND low = ").int(birth.low);
    sql.push(" AND high = ").int(birth.high).push(")");
    sql.push(" AND r.id IN (SELECT id FROM search_string WHERE res_type = 'Patient' AND param = 'address-postalcode' AND value = ").text(postcode).push(")");
    Ok(load::<IdRow>(conn, &sql)?
        .into_iter()
        .map(|r| r.id)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use epaccs_access::facts::ConsentStatus;

    #[test]
    fn remembered_facts_never_outlive_a_change() {
        let given = PatientFacts {
            consent: ConsentStatus::Given,
            ..Default::default()
        };
        let withdrawn = PatientFacts {
            consent: ConsentStatus::Withdrawn,
            ..Default::default()
        };
        let raw_given = serde_json::to_string(&given).expect("json");
        let raw_withdrawn = serde_json::to_string(&withdrawn).expect("json");

        let first = facts_of("p1", Some(&raw_given)).expect("facts");
        let again = facts_of("p1", Some(&raw_given)).expect("facts");
        assert!(Arc::ptr_eq(&first, &again), "the same text is parsed once");
        assert_eq!(*first, given);

        // Withdrawn: the new text is parsed, at once.
        let now = facts_of("p1", Some(&raw_withdrawn)).expect("facts");
        assert_eq!(*now, withdrawn);
        // Another patient with the same text is still their own entry; no facts at all is the
        // default (no consent).
        assert_eq!(*facts_of("p2", Some(&raw_given)).expect("facts"), given);
        assert_eq!(
            *facts_of("p1", None).expect("facts"),
            PatientFacts::default()
        );
        assert!(facts_of("p3", Some("{not json")).is_err());
    }
}
