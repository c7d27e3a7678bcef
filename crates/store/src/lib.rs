#![doc = include_str!("../README.md")]

pub mod audit;
mod cache;
pub mod clients;
mod committers;
pub mod db;
pub mod death;
pub mod decisions;
mod facts;
mod instance;
mod journal;
mod lifecycle;
mod merges;
pub mod outbox;
pub mod resources;
pub mod search;
mod settle;
mod writer;

/// A fresh database on the local PostgreSQL for unit tests (`EPACCS_TEST_POSTGRES`, as the API
/// tests), dropped afterwards.
#[cfg(test)]
pub(crate) mod testdb {
    use crate::DatabaseUrl;
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    use epaccs_access::audit::AuditRecord;

    pub fn with_postgres(f: impl FnOnce(&DatabaseUrl)) {
        let admin = std::env::var("EPACCS_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string());
        let name = format!("epaccs_unit_{}", uuid::Uuid::new_v4().simple());
        let mut c = diesel::PgConnection::establish(&format!("{admin}/postgres"))
            .expect("PostgreSQL must be running for the postgres tests");
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        f(&DatabaseUrl::Postgres(format!("{admin}/{name}")));
        c.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .expect("drop database");
    }

    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    /// The single number `sql` (a `SELECT COUNT(*) AS n ...`) returns.
    pub fn count(conn: &mut crate::DbConn, sql: &str) -> i64 {
        crate::db::load::<Count>(conn, &crate::db::Sql::new(sql)).expect("count")[0].n
    }

    /// An ambulance crew's read, audited, naming `patients`; tests change what they need with
    /// struct update syntax.
    pub fn audit_record(id: String, recorded: i64, patients: Vec<String>) -> AuditRecord {
        AuditRecord {
            id,
            recorded,
            client_id: "crew".into(),
            user_id: None,
            org: "RX801".into(),
            role: "ambulance".into(),
            purpose: "TREAT".into(),
            outcome: "0".into(),
            break_glass: false,
            patients,
            content:
                r#"{"i":"read","o":"0","p":"TREAT","c":"crew","org":"RX801","role":"ambulance"}"#
                    .into(),
        }
    }
}

use cache::Cached;
pub use db::{DatabaseUrl, DbConn};
pub use decisions::Amendment;
pub use resources::{HistoryEntry, Put, Stored, WriteOp, Written};

use epaccs_fhir::search::SearchParams;
use epaccs_fhir::Issue;
use std::sync::Arc;

/// Everything that can go wrong in the store, each mapped to one HTTP status by the API.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("deleted")]
    Gone { version_id: i64, last_updated: i64 },
    /// Withheld by the sharing rules; `reveal` says whether the caller may be told.
    #[error("{reason}")]
    Withheld { reveal: bool, reason: String },
    /// A write refused by the sharing rules.
    #[error("{reason}")]
    Forbidden { reveal: bool, reason: String },
    #[error("{0}")]
    PreconditionFailed(String),
    /// A change to a decision another organisation owns, without the amendment it needs (403).
    /// The caller may read the resource, so the message says what is needed.
    #[error("{0}")]
    NotOwner(String),
    /// A change that needs `If-Match` (428).
    #[error("{0}")]
    PreconditionRequired(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{}", .0.first().map(|i| i.message.clone()).unwrap_or_default())]
    Unprocessable(Vec<Issue>),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl StoreError {
    pub fn unprocessable(path: impl Into<String>, message: impl Into<String>) -> Self {
        StoreError::Unprocessable(vec![Issue::error("processing", Some(path.into()), message)])
    }
}

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match &e {
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
                StoreError::Conflict("a concurrent write changed this resource; retry".into())
            }
            Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => {
                StoreError::Conflict("a concurrent write changed this resource; retry".into())
            }
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _)
            | Error::BrokenTransactionManager => {
                StoreError::Unavailable("lost the database connection".into())
            }
            Error::DatabaseError(_, info) if info.message().contains("database is locked") => {
                StoreError::Unavailable("the database is busy".into())
            }
            // Backstops for input the API should have refused already: a NUL character
            // (PostgreSQL text cannot hold one) or a search too large for SQLite's parser.
            // Bad input is a 400, never a 500.
            Error::DatabaseError(_, info)
                if info.message().contains("0x00")
                    || info.message().contains("Expression tree is too large")
                    || info.message().contains("too many SQL variables")
                    || info.message().contains("pattern too complex") =>
            {
                tracing::warn!(error = %e, "database refused the request's values");
                StoreError::BadRequest(
                    "the request holds a value or a search the database cannot take (a NUL \
                     character, or too many values)"
                        .into(),
                )
            }
            _ => {
                tracing::error!(error = %e, "database error");
                StoreError::Internal("database error".into())
            }
        }
    }
}

impl From<r2d2_error::PoolError> for StoreError {
    fn from(e: r2d2_error::PoolError) -> Self {
        tracing::error!(error = %e, "no database connection");
        StoreError::Unavailable("no database connection available".into())
    }
}

mod r2d2_error {
    pub type PoolError = diesel::r2d2::PoolError;
}

/// Runs `f` in a savepoint of the current transaction: its changes are undone if it fails,
/// while the enclosing transaction (e.g. the audit record of the same request) goes on.
pub fn savepoint<T>(
    conn: &mut DbConn,
    f: impl FnOnce(&mut DbConn) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    use diesel::Connection;
    conn.transaction(f)
}

/// Whether an audit journal directory holds segments (records that may not have been copied
/// into the audit tables); false if it cannot be read.
pub fn audit_journal_has_segments(dir: &std::path::Path) -> bool {
    journal::has_segments(dir)
}

/// The store: a read pool, the group-commit writer and the search parameter definitions.
#[derive(Clone)]
pub struct Store {
    pool: db::Pool,
    writer: writer::Writer,
    params: Arc<SearchParams>,
    backend: &'static str,
}

/// Options for opening the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub pool_size: u32,
    pub connect_timeout: std::time::Duration,
    /// Bytes of current resources kept in memory for reads (0 = off).
    pub cache_bytes: u64,
    /// Directory of the audit journal, where reads' audit records are made durable before
    /// they are copied into the audit tables (see `journal`); None appends them to the
    /// database directly.
    pub audit_journal: Option<std::path::PathBuf>,
    /// PostgreSQL without a journal: how many connections commit reads' audit records (see
    /// `committers`).
    pub audit_committers: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            pool_size: 16,
            connect_timeout: std::time::Duration::from_secs(5),
            cache_bytes: 256 << 20,
            audit_journal: None,
            audit_committers: 1,
        }
    }
}

impl Store {
    /// Runs migrations, opens the pool and starts the writer.
    pub fn open(
        url: &DatabaseUrl,
        params: Arc<SearchParams>,
        opts: StoreOptions,
    ) -> Result<Store, StoreError> {
        url.migrate()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let pool = diesel::r2d2::Pool::builder()
            .max_size(opts.pool_size)
            .connection_timeout(opts.connect_timeout)
            .build(db::Manager(url.clone()))
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot open the connection pool: {e}"))
            })?;
        let writer = writer::Writer::start(
            url.clone(),
            cache::ReadCache::new(opts.cache_bytes),
            opts.audit_journal.clone(),
            opts.audit_committers,
        )?;
        let backend = if url.is_sqlite() {
            "sqlite"
        } else {
            "postgres"
        };
        Ok(Store {
            pool,
            writer,
            params,
            backend,
        })
    }

    /// Signalled after a committed write batch that enqueued notifications.
    pub fn commits(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.writer.committed.clone()
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    pub fn params(&self) -> &Arc<SearchParams> {
        &self.params
    }

    /// Runs `f` on a pooled connection on the blocking pool.
    pub async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get()?;
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("worker failed: {e}")))?
    }

    /// Reads the current version of a resource through the gate. Served from the read cache
    /// when it holds the row (no database round trip), otherwise read on the blocking pool and
    /// offered to the cache. The gate decides on every call, cached or not.
    pub async fn read(
        &self,
        gate: Arc<epaccs_access::Gate>,
        ty: &str,
        id: &str,
    ) -> Result<Stored, StoreError> {
        let row = self.current(ty, id).await?;
        resources::decide_read(&gate, row.row()?)
    }

    /// The current row of a resource, before the gate (cached).
    async fn current(&self, ty: &str, id: &str) -> Result<Arc<Cached>, StoreError> {
        let key = cache::key(ty, id);
        let (ty, id) = (ty.to_string(), id.to_string());
        self.cached(key, move |c| {
            let row = resources::current_row(c, &ty, &id)?.ok_or(StoreError::NotFound)?;
            Ok(Cached::Row(row))
        })
        .await
    }

    /// The page `search::search` would return for an NHS-number look-up
    /// (`search::nhs_number_only`), answered from the cache: the live Patients with that number
    /// (one, or none), in id order, each decided by the caller's gate; withheld ones counted,
    /// never shown. None when the query is not such a look-up or needs more than one page.
    pub async fn search_by_nhs_number(
        &self,
        gate: Arc<epaccs_access::Gate>,
        ty: &str,
        q: &epaccs_fhir::query::Query,
    ) -> Result<Option<search::SearchPage>, StoreError> {
        let Some(n) = search::nhs_number_only(ty, q) else {
            return Ok(None);
        };
        let mut ids = self.patients_by_nhs(&n).await?;
        if ids.len() > q.count.unwrap_or(epaccs_fhir::query::DEFAULT_COUNT) {
            return Ok(None);
        }
        ids.sort();
        let mut cached = Vec::with_capacity(ids.len());
        for id in &ids {
            match self.current("Patient", id).await {
                Ok(row) => cached.push(row),
                // Deleted since the look-up.
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        let rows = cached
            .iter()
            .map(|c| c.row())
            .collect::<Result<Vec<_>, _>>()?;
        let (matches, withheld) =
            resources::gate_compartment(&gate, rows.into_iter().filter(|r| !r.deleted))?;
        Ok(Some(search::SearchPage {
            matches,
            withheld,
            ..Default::default()
        }))
    }

    /// A patient's live resources of the given types, through the gate (cached like `read`):
    /// what may be shown, and how many were withheld.
    pub async fn compartment(
        &self,
        gate: Arc<epaccs_access::Gate>,
        patient_id: &str,
        types: &'static [&'static str],
    ) -> Result<(Vec<Stored>, usize), StoreError> {
        let key = format!("compartment|{patient_id}|{}", types.join(","));
        let pid = patient_id.to_string();
        let rows = self
            .cached(key, move |c| {
                Ok(Cached::Rows(resources::compartment_rows(
                    c, &pid, types, None,
                )?))
            })
            .await?;
        resources::gate_compartment(&gate, rows.rows()?.iter())
    }

    /// Live Patient ids carrying this NHS number (not gated: see `resources::patients_by_nhs`).
    pub async fn patients_by_nhs(
        &self,
        n: &epaccs_core::NhsNumber,
    ) -> Result<Vec<String>, StoreError> {
        let n = n.clone();
        let ids = self
            .cached(format!("nhs|{}", n.as_str()), move |c| {
                Ok(Cached::Ids(resources::patients_by_nhs(c, &n)?))
            })
            .await?;
        Ok(ids.ids()?.to_vec())
    }

    /// Live Patient ids matching family name, birth date and postcode exactly (not gated).
    pub async fn patients_by_demographics(
        &self,
        family: &str,
        birth: epaccs_fhir::date::Range,
        postcode: &str,
    ) -> Result<Vec<String>, StoreError> {
        let key = format!(
            "demographics|{family}|{}|{}|{postcode}",
            birth.low, birth.high
        );
        let (family, postcode) = (family.to_string(), postcode.to_string());
        let ids = self
            .cached(key, move |c| {
                Ok(Cached::Ids(resources::patients_by_demographics(
                    c, &family, birth, &postcode,
                )?))
            })
            .await?;
        Ok(ids.ids()?.to_vec())
    }

    /// The cached answer under `key`, or `load` run on the blocking pool and offered to the
    /// cache (see `cache` for why a stale answer can never stay).
    async fn cached<F>(&self, key: String, load: F) -> Result<Arc<Cached>, StoreError>
    where
        F: FnOnce(&mut DbConn) -> Result<Cached, StoreError> + Send + 'static,
    {
        let cache = self.writer.cache().clone();
        if let Some(hit) = cache.get(&key) {
            return Ok(hit);
        }
        self.with_conn(move |c| {
            let ticket = cache.ticket();
            let value = Arc::new(load(c)?);
            cache.offer(ticket, key, value.clone());
            Ok(value)
        })
        .await
    }

    /// Appends an audit record in the next group commit (with the batch's other records, no
    /// savepoint of its own); resolves once it is durable.
    pub async fn append_audit(
        &self,
        rec: epaccs_access::audit::AuditRecord,
    ) -> Result<(), StoreError> {
        self.writer.audit(rec).await
    }

    /// Searches the audit trail (privacy officers; the gate decides), after every audit record
    /// acknowledged before this call has reached the audit tables.
    pub async fn search_audit(
        &self,
        gate: Arc<epaccs_access::Gate>,
        q: audit::AuditQuery,
    ) -> Result<(Vec<String>, Option<audit::AuditPosition>), StoreError> {
        self.writer.audit_settled().await?;
        self.with_conn(move |c| audit::search(c, &gate, &q)).await
    }

    /// Runs `f` in the next group commit; resolves once it is durable. Anything that may change
    /// resources or the sharing facts goes through here (it empties the read cache).
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.submit(writer::Kind::Data, f).await
    }

    /// Like `write`, for the service's own bookkeeping that never touches resources or sharing
    /// facts (seen `jti`s, delivery marks, leases), so the read cache stays warm.
    pub async fn write_bookkeeping<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.submit(writer::Kind::Bookkeeping, f).await
    }
}
