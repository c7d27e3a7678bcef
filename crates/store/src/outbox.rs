//! Subscriptions' delivery state and the outbox. Events are enqueued inside the transaction of
//! the write they announce, so a committed change is never missed and a rolled-back one is never
//! sent.

use crate::db::{execute, load, Bind, DbConn, Sql};
use crate::search::where_clause;
use crate::StoreError;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::QueryableByName;
use epaccs_fhir::query::Query;
use epaccs_fhir::search::SearchParams;
use serde_json::Value;
use std::sync::OnceLock;

/// The shipped search parameter definitions (compiled in), for work inside a transaction.
pub(crate) fn params() -> &'static SearchParams {
    static P: OnceLock<SearchParams> = OnceLock::new();
    P.get_or_init(|| SearchParams::shipped().unwrap_or_default())
}

/// A subscription as the delivery worker sees it.
#[derive(Debug, Clone, QueryableByName)]
pub struct Subscription {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Text)]
    pub owner_client: String,
    #[diesel(sql_type = Text)]
    pub criteria_type: String,
    #[diesel(sql_type = Text)]
    pub criteria: String,
    #[diesel(sql_type = Text)]
    pub endpoint: String,
    /// JSON array of `Name: value` strings.
    #[diesel(sql_type = Text)]
    pub headers: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub payload: Option<String>,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub error: Option<String>,
}

/// An event waiting for delivery.
#[derive(Debug, Clone, QueryableByName)]
pub struct Event {
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = Text)]
    pub subscription_id: String,
    /// create, update, delete, handshake or alert.
    #[diesel(sql_type = Text)]
    pub event: String,
    #[diesel(sql_type = Text)]
    pub res_type: String,
    #[diesel(sql_type = Text)]
    pub res_id: String,
    #[diesel(sql_type = BigInt)]
    pub version_id: i64,
    #[diesel(sql_type = BigInt)]
    pub created: i64,
    #[diesel(sql_type = BigInt)]
    pub attempts: i64,
}

const SUB_COLUMNS: &str =
    "id, owner_client, criteria_type, criteria, endpoint, headers, payload, status, error";

/// Mirrors a written Subscription resource into the delivery table; enqueues a handshake when
/// it becomes active. `owner` is the client that wrote it.
pub fn after_subscription_write(
    conn: &mut DbConn,
    id: &str,
    resource: Option<&Value>,
    owner: &str,
) -> Result<(), StoreError> {
    let previous = get(conn, id)?;
    let mut del = Sql::new("DELETE FROM subscription WHERE id = ");
    del.text(id);
    execute(conn, &del)?;
    let Some(r) = resource else { return Ok(()) };
    let criteria = r
        .get("criteria")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let criteria_type = criteria.split('?').next().unwrap_or_default().to_string();
    let channel = r.get("channel").cloned().unwrap_or(Value::Null);
    let endpoint = channel
        .get("endpoint")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let headers = channel
        .get("header")
        .cloned()
        .unwrap_or(Value::Array(vec![]))
        .to_string();
    let payload = channel
        .get("payload")
        .and_then(Value::as_str)
        .map(str::to_string);
    let status = r
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("off")
        .to_string();
    let error = r.get("error").and_then(Value::as_str).map(str::to_string);
    let mut sql = Sql::new(&format!(
        "INSERT INTO subscription ({SUB_COLUMNS}, updated) VALUES ("
    ));
    sql.text(id)
        .push(", ")
        .text(owner)
        .push(", ")
        .text(criteria_type)
        .push(", ")
        .text(criteria)
        .push(", ")
        .text(endpoint);
    sql.push(", ")
        .text(headers)
        .push(", ")
        .bind(Bind::OptText(payload))
        .push(", ")
        .text(status.clone())
        .push(", ")
        .bind(Bind::OptText(error));
    sql.push(", ")
        .int(epaccs_fhir::date::now_micros())
        .push(")");
    execute(conn, &sql)?;
    let was_active = previous.is_some_and(|p| p.status == "active");
    if status == "active" && !was_active {
        enqueue(conn, id, "handshake", "Subscription", id, 0)?;
    }
    Ok(())
}

pub fn get(conn: &mut DbConn, id: &str) -> Result<Option<Subscription>, StoreError> {
    let mut sql = Sql::new(&format!(
        "SELECT {SUB_COLUMNS} FROM subscription WHERE id = "
    ));
    sql.text(id);
    Ok(load::<Subscription>(conn, &sql)?.pop())
}

thread_local! {
    /// Set when a job on this (writer) thread enqueued an event; the writer wakes the delivery
    /// worker after the commit only then, not after every audit-only batch.
    pub(crate) static ENQUEUED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn enqueue(
    conn: &mut DbConn,
    sub: &str,
    event: &str,
    ty: &str,
    id: &str,
    version: i64,
) -> Result<(), StoreError> {
    ENQUEUED.with(|e| e.set(true));
    let now = epaccs_fhir::date::now_micros();
    let mut sql = Sql::new("INSERT INTO outbox (subscription_id, event, res_type, res_id, version_id, created, attempts, next_attempt, delivered) VALUES (");
    sql.text(sub)
        .push(", ")
        .text(event)
        .push(", ")
        .text(ty)
        .push(", ")
        .text(id)
        .push(", ")
        .int(version);
    sql.push(", ")
        .int(now)
        .push(", 0, ")
        .int(now)
        .push(", FALSE)");
    execute(conn, &sql)?;
    Ok(())
}

#[derive(QueryableByName)]
struct Hit {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Enqueues an event for every active subscription whose criteria match the resource as it is
/// now in this transaction (call before a delete removes the index rows).
pub fn enqueue_matches(
    conn: &mut DbConn,
    ty: &str,
    id: &str,
    version: i64,
    event: &str,
) -> Result<(), StoreError> {
    let subs: Vec<Subscription> = load(conn, &active_subscriptions(ty))?;
    enqueue_for(conn, subs, ty, id, version, event)
}

/// The query for the active subscriptions to resources of type `ty`.
pub(crate) fn active_subscriptions(ty: &str) -> Sql {
    let mut sql = Sql::new(&format!(
        "SELECT {SUB_COLUMNS} FROM subscription WHERE status = 'active' AND criteria_type = "
    ));
    sql.text(ty);
    sql
}

/// As `enqueue_matches`, with the active subscriptions to `ty` already read in this transaction.
pub(crate) fn enqueue_for(
    conn: &mut DbConn,
    subs: Vec<Subscription>,
    ty: &str,
    id: &str,
    version: i64,
    event: &str,
) -> Result<(), StoreError> {
    for s in subs {
        let query = s.criteria.split_once('?').map(|(_, q)| q).unwrap_or("");
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let Ok(q) = Query::parse(params(), ty, &pairs, false) else {
            continue;
        };
        let mut check = Sql::new("SELECT COUNT(*) AS n FROM resource r");
        check
            .append(&where_clause(ty, &q.filters))
            .push(" AND r.id = ")
            .text(id);
        let hit: Vec<Hit> = load(conn, &check)?;
        if hit.first().is_some_and(|h| h.n > 0) {
            enqueue(conn, &s.id, event, ty, id, version)?;
        }
    }
    Ok(())
}

/// Enqueues a break-glass alert (an AuditEvent) for active `AuditEvent` subscriptions.
pub fn enqueue_alert(conn: &mut DbConn, audit_id: &str) -> Result<(), StoreError> {
    let subs: Vec<Subscription> = load(conn, &Sql::new(&format!("SELECT {SUB_COLUMNS} FROM subscription WHERE status = 'active' AND criteria_type = 'AuditEvent'")))?;
    for s in subs {
        enqueue(conn, &s.id, "alert", "AuditEvent", audit_id, 1)?;
    }
    Ok(())
}

/// For each active subscription, its oldest undelivered events that are due, in order (up to
/// `per_subscription`). A subscription whose head event is waiting for a retry yields nothing, so
/// order is kept.
pub fn due(
    conn: &mut DbConn,
    now: i64,
    per_subscription: i64,
) -> Result<Vec<(Subscription, Vec<Event>)>, StoreError> {
    let subs: Vec<Subscription> = load(
        conn,
        &Sql::new(&format!(
            "SELECT {SUB_COLUMNS} FROM subscription WHERE status = 'active'"
        )),
    )?;
    let mut out = Vec::new();
    for s in subs {
        let mut sql = Sql::new("SELECT seq, subscription_id, event, res_type, res_id, version_id, created, attempts FROM outbox WHERE delivered = FALSE AND subscription_id = ");
        sql.text(s.id.clone())
            .push(" ORDER BY seq LIMIT ")
            .int(per_subscription);
        let events: Vec<Event> = load(conn, &sql)?;
        let Some(head) = events.first() else { continue };
        let mut next = Sql::new("SELECT next_attempt AS n FROM outbox WHERE seq = ");
        next.int(head.seq);
        let head_due = load::<Hit>(conn, &next)?
            .first()
            .is_some_and(|h| h.n <= now);
        if head_due {
            out.push((s, events));
        }
    }
    Ok(out)
}

/// Marks an event delivered (or suppressed by the sharing rules).
pub fn mark_delivered(conn: &mut DbConn, seq: i64, outcome: &str) -> Result<(), StoreError> {
    let mut sql = Sql::new("UPDATE outbox SET delivered = TRUE, delivered_at = ");
    sql.int(epaccs_fhir::date::now_micros())
        .push(", outcome = ")
        .text(outcome)
        .push(" WHERE seq = ")
        .int(seq);
    execute(conn, &sql)?;
    Ok(())
}

/// Records a failed attempt; returns the number of attempts so far.
pub fn mark_failed(
    conn: &mut DbConn,
    seq: i64,
    next_attempt: i64,
    outcome: &str,
) -> Result<i64, StoreError> {
    let mut sql = Sql::new("UPDATE outbox SET attempts = attempts + 1, next_attempt = ");
    sql.int(next_attempt)
        .push(", outcome = ")
        .text(outcome)
        .push(" WHERE seq = ")
        .int(seq);
    execute(conn, &sql)?;
    let mut q = Sql::new("SELECT attempts AS n FROM outbox WHERE seq = ");
    q.int(seq);
    Ok(load::<Hit>(conn, &q)?.first().map_or(0, |h| h.n))
}

/// After the retry limit: the subscription goes to `error` with the reason (in the table and as
/// a new version of the Subscription resource). Its pending events wait until it is reactivated.
pub fn set_error(conn: &mut DbConn, id: &str, reason: &str) -> Result<(), StoreError> {
    let mut sql = Sql::new("UPDATE subscription SET status = 'error', error = ");
    sql.text(reason)
        .push(", updated = ")
        .int(epaccs_fhir::date::now_micros())
        .push(" WHERE id = ")
        .text(id);
    execute(conn, &sql)?;
    crate::resources::system_update(conn, "Subscription", id, |r| {
        r["status"] = Value::String("error".into());
        r["error"] = Value::String(reason.to_string());
    })?;
    // The next attempt happens once the subscription is reactivated.
    let mut reset = Sql::new(
        "UPDATE outbox SET next_attempt = 0 WHERE delivered = FALSE AND subscription_id = ",
    );
    reset.text(id);
    execute(conn, &reset)?;
    Ok(())
}

/// Counts undelivered events (for monitoring and tests).
pub fn pending(conn: &mut DbConn) -> Result<i64, StoreError> {
    Ok(load::<Hit>(
        conn,
        &Sql::new("SELECT COUNT(*) AS n FROM outbox WHERE delivered = FALSE"),
    )?
    .first()
    .map_or(0, |h| h.n))
}

/// Takes or renews the delivery lease for `holder` until `expires`; false if another live
/// worker holds it.
pub fn acquire_lease(
    conn: &mut DbConn,
    holder: &str,
    now: i64,
    expires: i64,
) -> Result<bool, StoreError> {
    let mut sql = Sql::new("INSERT INTO worker_lease (name, holder, expires) VALUES ('delivery', ");
    sql.text(holder).push(", ").int(expires).push(") ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires WHERE worker_lease.holder = ");
    sql.text(holder)
        .push(" OR worker_lease.expires < ")
        .int(now);
    Ok(execute(conn, &sql)? == 1)
}

/// Gives the delivery lease up (on a clean shutdown), so the next worker starts at once.
pub fn release_lease(conn: &mut DbConn, holder: &str) -> Result<(), StoreError> {
    let mut sql = Sql::new("DELETE FROM worker_lease WHERE name = 'delivery' AND holder = ");
    sql.text(holder);
    execute(conn, &sql)?;
    Ok(())
}

/// The client id under which the record-locator feed runs.
pub const LOCATOR_CLIENT: &str = "epaccs-nrl";

/// What the locator publishes: ReSPECT form indexes and end-of-life care plans.
const LOCATOR_FEEDS: [(&str, &str, &str); 2] = [
    (
        "nrl-respect",
        "DocumentReference",
        "DocumentReference?type=http://snomed.info/sct|1382601000000107",
    ),
    (
        "nrl-eol-plan",
        "CarePlan",
        "CarePlan?category=http://snomed.info/sct|736373009",
    ),
];

/// Turns the record-locator feed on (pointers to `url`) or off.
pub fn configure_locator(conn: &mut DbConn, url: Option<&str>) -> Result<(), StoreError> {
    for (id, ty, criteria) in LOCATOR_FEEDS {
        let mut del = Sql::new("DELETE FROM subscription WHERE id = ");
        del.text(id);
        execute(conn, &del)?;
        if let Some(u) = url {
            let mut sql = Sql::new(&format!(
                "INSERT INTO subscription ({SUB_COLUMNS}, updated) VALUES ("
            ));
            sql.text(id)
                .push(", ")
                .text(LOCATOR_CLIENT)
                .push(", ")
                .text(ty)
                .push(", ")
                .text(criteria)
                .push(", ")
                .text(u);
            sql.push(", '[]', 'application/fhir+json', 'active', NULL, ")
                .int(epaccs_fhir::date::now_micros())
                .push(")");
            execute(conn, &sql)?;
        }
    }
    Ok(())
}

#[derive(QueryableByName)]
struct Key {
    #[diesel(sql_type = Text)]
    res_type: String,
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = BigInt)]
    version_id: i64,
}

/// After a change to a person's consent: the locator re-checks each pointer it may have
/// published for them (published again if consent is in force, deleted if not).
pub fn refresh_locator(conn: &mut DbConn, patient_key: &str) -> Result<(), StoreError> {
    for (feed, ty, _) in LOCATOR_FEEDS {
        if get(conn, feed)?.is_none_or(|s| s.status != "active") {
            continue;
        }
        let mut sql =
            Sql::new("SELECT res_type, id, version_id FROM resource WHERE patient_key = ");
        sql.text(patient_key).push(" AND res_type = ").text(ty);
        for k in load::<Key>(conn, &sql)? {
            enqueue(conn, feed, "refresh", &k.res_type, &k.id, k.version_id)?;
        }
    }
    Ok(())
}
