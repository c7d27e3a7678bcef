//! Connections: one diesel `MultiConnection` over PostgreSQL and SQLite, the backend picked
//! explicitly from the URL scheme (a mistyped Postgres URL must not quietly become a file).

use diesel::backend::Backend;
use diesel::connection::SimpleConnection;
use diesel::pg::{Pg, PgConnection};
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::r2d2::{self, ManageConnection};
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, Bool, Double, Nullable, Text};
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel::{Connection, QueryResult, QueryableByName, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::path::PathBuf;

#[derive(diesel::MultiConnection)]
pub enum DbConn {
    Pg(PgConnection),
    Sqlite(SqliteConnection),
}

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");
const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");

/// A database location, parsed once from `EPACCS_DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Postgres(String),
    Sqlite(PathBuf),
}

#[derive(Debug, thiserror::Error)]
#[error("invalid database URL {url:?}: {why}")]
pub struct UrlError {
    pub url: String,
    pub why: String,
}

impl DatabaseUrl {
    /// `postgres://...` / `postgresql://...`, or `sqlite://PATH` (`sqlite:///abs/path` for an
    /// absolute path). Anything else is refused.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let err = |why: &str| UrlError {
            url: url.to_string(),
            why: why.to_string(),
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            if url.len() <= "postgres://".len() + 1 {
                return Err(err("no host"));
            }
            Ok(DatabaseUrl::Postgres(url.to_string()))
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(err("no file path after sqlite://"));
            }
            Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
        } else {
            Err(err(
                "expected a postgres://, postgresql:// or sqlite:// URL",
            ))
        }
    }

    pub fn is_sqlite(&self) -> bool {
        matches!(self, DatabaseUrl::Sqlite(_))
    }

    /// Opens one connection, with the per-connection settings each backend needs.
    pub fn connect(&self, writer: bool) -> Result<DbConn, ConnError> {
        match self {
            DatabaseUrl::Postgres(u) => Ok(DbConn::Pg(PgConnection::establish(u)?)),
            DatabaseUrl::Sqlite(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        ConnError::Setup(format!("cannot create {}: {e}", parent.display()))
                    })?;
                }
                let p = path
                    .to_str()
                    .ok_or_else(|| ConnError::Setup("the SQLite path is not UTF-8".into()))?;
                let mut c = SqliteConnection::establish(p)?;
                // WAL: readers never block the writer. synchronous=FULL: every commit is fsync'd,
                // so an acknowledged write survives power loss; group commit keeps it fast. (The
                // group-commit writer switches to NORMAL once its settling thread syncs each batch
                // before anyone is answered: see `settle`.)
                c.batch_execute("PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;")?;
                if writer {
                    // 2 KiB pages (new databases only; an existing file keeps its own): every
                    // request appends an audit record whose per-patient index entry lands on a
                    // random leaf page, and each dirty page is written whole to the WAL at
                    // commit, so smaller pages make every commit lighter (measured: ~20% more
                    // audited reads than 4 KiB). Larger resources spill to overflow pages.
                    // Checkpoints run on their own thread (see `writer`), never inside a commit;
                    // the WAL starts again once past 64 MiB, and its file is cut back only if it
                    // has grown past 128 MiB, so the frames after a restart overwrite blocks the
                    // file already has (cutting it to the size it restarts at made every restart
                    // grow it again, a sync of its size with each commit: measured, creates' p99
                    // 161-191 ms with the cut, 124-140 ms without). Each job of a group
                    // commit runs in a savepoint, whose journal of changed pages SQLite keeps in
                    // a temporary file unless temp_store is MEMORY (measured: those writes were
                    // a fifth of the writer's time under creates).
                    c.batch_execute(
                        "PRAGMA page_size = 2048; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                         PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 134217728; \
                         PRAGMA temp_store = MEMORY;",
                    )?;
                }
                Ok(DbConn::Sqlite(c))
            }
        }
    }

    /// Runs the embedded migrations of this backend.
    pub fn migrate(&self) -> Result<Vec<String>, ConnError> {
        let mut conn = self.connect(true)?;
        let applied = match &mut conn {
            DbConn::Pg(c) => c
                .run_pending_migrations(PG_MIGRATIONS)
                .map(|v| v.iter().map(|m| m.to_string()).collect()),
            DbConn::Sqlite(c) => c
                .run_pending_migrations(SQLITE_MIGRATIONS)
                .map(|v| v.iter().map(|m| m.to_string()).collect()),
        };
        applied.map_err(|e| ConnError::Setup(format!("migration failed: {e}")))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("database setup failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("{0}")]
    Setup(String),
}

/// r2d2 manager that builds the right variant for the URL.
#[derive(Debug, Clone)]
pub struct Manager(pub DatabaseUrl);

impl ManageConnection for Manager {
    type Connection = DbConn;
    type Error = ConnError;

    fn connect(&self) -> Result<DbConn, ConnError> {
        self.0.connect(false)
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), ConnError> {
        conn.batch_execute("SELECT 1").map_err(ConnError::from)
    }

    fn has_broken(&self, _conn: &mut DbConn) -> bool {
        false
    }
}

pub type Pool = r2d2::Pool<Manager>;

/// A bind value for hand-written SQL.
#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    Bool(bool),
    Float(f64),
}

/// Hand-written SQL with numbered placeholders. Each `bind` appends `$n`; both backends accept
/// `$n` (SQLite numbers them in order of appearance, so each is used once, in order).
#[derive(Debug, Default, Clone)]
pub struct Sql {
    pub text: String,
    pub binds: Vec<Bind>,
}

impl Sql {
    pub fn new(text: &str) -> Self {
        Sql {
            text: text.to_string(),
            binds: Vec::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    pub fn bind(&mut self, b: Bind) -> &mut Self {
        self.binds.push(b);
        self.text.push_str(&format!("${}", self.binds.len()));
        self
    }

    pub fn text(&mut self, s: impl Into<String>) -> &mut Self {
        self.bind(Bind::Text(s.into()))
    }

    pub fn int(&mut self, i: i64) -> &mut Self {
        self.bind(Bind::Int(i))
    }

    /// Appends another fragment, renumbering its placeholders.
    pub fn append(&mut self, other: &Sql) -> &mut Self {
        let mut binds = other.binds.iter();
        for part in parts(&other.text) {
            match part {
                Part::Text(t) => {
                    self.text.push_str(t);
                }
                Part::Param => {
                    if let Some(b) = binds.next() {
                        self.bind(b.clone());
                    }
                }
            }
        }
        self
    }
}

/// A piece of a [`Sql`] text: literal SQL (a `$` not followed by digits stays literal), or one
/// `$n` placeholder.
enum Part<'a> {
    Text(&'a str),
    Param,
}

/// Splits a [`Sql`] text into literal pieces and placeholders, in order.
fn parts(text: &str) -> impl Iterator<Item = Part<'_>> {
    let mut rest = text;
    let mut param_next = false;
    std::iter::from_fn(move || {
        if std::mem::take(&mut param_next) {
            return Some(Part::Param);
        }
        if rest.is_empty() {
            return None;
        }
        let mut from = 0;
        while let Some(p) = rest[from..].find('$') {
            let pos = from + p;
            let digits = rest[pos + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            if digits == 0 {
                from = pos + 1;
                continue;
            }
            let literal = &rest[..pos];
            rest = &rest[pos + 1 + digits..];
            if literal.is_empty() {
                return Some(Part::Param);
            }
            param_next = true;
            return Some(Part::Text(literal));
        }
        Some(Part::Text(std::mem::take(&mut rest)))
    })
}

/// A statement as diesel sees it: the `$n` placeholders of a [`Sql`] become real bind
/// parameters of the backend (`$n` on PostgreSQL, `?` on SQLite). Unlike `sql_query`, it may be
/// kept in diesel's per-connection prepared-statement cache (keyed by its SQL text), so a hot
/// statement is parsed and planned once per connection rather than on every request.
struct Statement<'a> {
    sql: &'a Sql,
    cache: bool,
}

impl<DB> QueryFragment<DB> for Statement<'_>
where
    DB: Backend
        + HasSqlType<Text>
        + HasSqlType<Nullable<Text>>
        + HasSqlType<BigInt>
        + HasSqlType<Bool>
        + HasSqlType<Double>,
    String: ToSql<Text, DB>,
    Option<String>: ToSql<Nullable<Text>, DB>,
    i64: ToSql<BigInt, DB>,
    bool: ToSql<Bool, DB>,
    f64: ToSql<Double, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        if !self.cache {
            out.unsafe_to_cache_prepared();
        }
        let mut binds = self.sql.binds.iter();
        for part in parts(&self.sql.text) {
            match part {
                Part::Text(t) => out.push_sql(t),
                Part::Param => match binds.next() {
                    Some(Bind::Text(s)) => out.push_bind_param::<Text, _>(s)?,
                    Some(Bind::OptText(s)) => out.push_bind_param::<Nullable<Text>, _>(s)?,
                    Some(Bind::Int(i)) => out.push_bind_param::<BigInt, _>(i)?,
                    Some(Bind::Bool(b)) => out.push_bind_param::<Bool, _>(b)?,
                    Some(Bind::Float(f)) => out.push_bind_param::<Double, _>(f)?,
                    None => {
                        return Err(diesel::result::Error::QueryBuilderError(
                            "more placeholders than bind values".into(),
                        ))
                    }
                },
            }
        }
        Ok(())
    }
}

impl QueryId for Statement<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Statement<'_> {
    type SqlType = Untyped;
}

impl<Conn> RunQueryDsl<Conn> for Statement<'_> {}

/// The most distinct statement texts kept prepared. Statement texts depend on the shape of a
/// request (which parameters, how many values), never on the values themselves; the bound keeps
/// a stream of unusual search shapes from growing every connection's cache without limit.
const MAX_CACHED_SHAPES: usize = 1024;

fn cacheable(text: &str) -> bool {
    use std::collections::HashSet;
    use std::sync::{OnceLock, RwLock};
    static SHAPES: OnceLock<RwLock<HashSet<String>>> = OnceLock::new();
    let shapes = SHAPES.get_or_init(|| RwLock::new(HashSet::new()));
    if let Ok(known) = shapes.read() {
        if known.contains(text) {
            return true;
        }
        if known.len() >= MAX_CACHED_SHAPES {
            return false;
        }
    }
    match shapes.write() {
        Ok(mut known) if known.len() < MAX_CACHED_SHAPES => {
            known.insert(text.to_string());
            true
        }
        _ => false,
    }
}

fn statement(sql: &Sql) -> Statement<'_> {
    Statement {
        sql,
        cache: cacheable(&sql.text),
    }
}

/// Runs a query and loads its rows.
pub fn load<R>(conn: &mut DbConn, sql: &Sql) -> QueryResult<Vec<R>>
where
    R: QueryableByName<Pg> + QueryableByName<Sqlite> + 'static,
{
    match conn {
        DbConn::Pg(c) => statement(sql).load(c),
        DbConn::Sqlite(c) => statement(sql).load(c),
    }
}

/// Runs a statement; returns the number of rows changed.
pub fn execute(conn: &mut DbConn, sql: &Sql) -> QueryResult<usize> {
    match conn {
        DbConn::Pg(c) => statement(sql).execute(c),
        DbConn::Sqlite(c) => statement(sql).execute(c),
    }
}

/// PostgreSQL: a batch of audit records and their patient links appended by one statement with
/// array parameters, whatever the batch size. One round trip and one parse-free execution of a
/// prepared statement (its text never changes); in autocommit it is its own transaction.
pub(crate) struct PgAuditAppend<'a> {
    pub ids: Vec<&'a str>,
    pub recorded: Vec<i64>,
    pub client_ids: Vec<&'a str>,
    pub user_ids: Vec<Option<&'a str>>,
    pub orgs: Vec<&'a str>,
    pub roles: Vec<&'a str>,
    pub purposes: Vec<&'a str>,
    pub outcomes: Vec<&'a str>,
    pub break_glass: Vec<bool>,
    pub contents: Vec<&'a str>,
    pub link_ids: Vec<&'a str>,
    pub link_patients: Vec<&'a str>,
    pub link_recorded: Vec<i64>,
}

impl QueryFragment<Pg> for PgAuditAppend<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        use diesel::sql_types::Array;
        out.push_sql(
            "WITH e AS (INSERT INTO audit_event (id, recorded, client_id, user_id, org, role, \
             purpose, outcome, break_glass, content) SELECT * FROM unnest(",
        );
        out.push_bind_param::<Array<Text>, _>(&self.ids)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<BigInt>, _>(&self.recorded)?;
        out.push_sql("::int8[], ");
        out.push_bind_param::<Array<Text>, _>(&self.client_ids)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.user_ids)?;
        out.push_sql("::text[], ");
        for texts in [&self.orgs, &self.roles, &self.purposes, &self.outcomes] {
            out.push_bind_param::<Array<Text>, _>(texts)?;
            out.push_sql("::text[], ");
        }
        out.push_bind_param::<Array<Bool>, _>(&self.break_glass)?;
        out.push_sql("::bool[], ");
        out.push_bind_param::<Array<Text>, _>(&self.contents)?;
        out.push_sql(
            "::text[])) INSERT INTO audit_patient_recent (audit_id, patient_key, recorded) \
             SELECT * FROM unnest(",
        );
        out.push_bind_param::<Array<Text>, _>(&self.link_ids)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<Text>, _>(&self.link_patients)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<BigInt>, _>(&self.link_recorded)?;
        out.push_sql("::int8[])");
        Ok(())
    }
}

impl QueryId for PgAuditAppend<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl PgAuditAppend<'_> {
    pub(crate) fn execute(&self, conn: &mut PgConnection) -> QueryResult<usize> {
        conn.execute_returning_count(self)
    }
}

/// PostgreSQL: every index row of one resource version, for all five index tables, inserted by
/// one statement with array parameters (one round trip instead of one per table; the text takes
/// two forms, so it is prepared once per connection). Empty arrays insert nothing.
pub(crate) struct PgIndexInsert<'a> {
    /// First delete the resource's existing rows in every table (same statement, same
    /// snapshot: the deletes never see the rows it inserts).
    pub replace: bool,
    pub res_type: &'a str,
    pub id: &'a str,
    pub token_params: Vec<&'a str>,
    pub token_systems: Vec<&'a str>,
    pub token_codes: Vec<&'a str>,
    pub string_params: Vec<&'a str>,
    pub string_values: Vec<&'a str>,
    pub string_raws: Vec<&'a str>,
    pub date_params: Vec<&'a str>,
    pub date_lows: Vec<i64>,
    pub date_highs: Vec<i64>,
    pub quantity_params: Vec<&'a str>,
    pub quantity_values: Vec<f64>,
    pub quantity_systems: Vec<&'a str>,
    pub quantity_codes: Vec<&'a str>,
    pub ref_params: Vec<&'a str>,
    pub ref_types: Vec<&'a str>,
    pub ref_ids: Vec<&'a str>,
}

impl QueryFragment<Pg> for PgIndexInsert<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        use diesel::sql_types::Array;
        // `SELECT <type>, <id>, * FROM unnest(` for one table.
        fn owner<'b>(
            out: &mut AstPass<'_, 'b, Pg>,
            me: &'b PgIndexInsert<'_>,
            head: &str,
        ) -> QueryResult<()> {
            out.push_sql(head);
            out.push_sql(" SELECT ");
            out.push_bind_param::<Text, _>(&me.res_type)?;
            out.push_sql("::text, ");
            out.push_bind_param::<Text, _>(&me.id)?;
            out.push_sql("::text, * FROM unnest(");
            Ok(())
        }
        fn texts<'b>(out: &mut AstPass<'_, 'b, Pg>, columns: &[&'b Vec<&str>]) -> QueryResult<()> {
            for (i, c) in columns.iter().enumerate() {
                if i > 0 {
                    out.push_sql(", ");
                }
                out.push_bind_param::<Array<Text>, _>(*c)?;
                out.push_sql("::text[]");
            }
            Ok(())
        }
        out.push_sql("WITH ");
        if self.replace {
            for table in [
                "search_token",
                "search_string",
                "search_date",
                "search_quantity",
                "search_reference",
            ] {
                out.push_sql(table);
                out.push_sql("_old AS (DELETE FROM ");
                out.push_sql(table);
                out.push_sql(" WHERE res_type = ");
                out.push_bind_param::<Text, _>(&self.res_type)?;
                out.push_sql(" AND id = ");
                out.push_bind_param::<Text, _>(&self.id)?;
                out.push_sql("), ");
            }
        }
        owner(
            &mut out,
            self,
            "t AS (INSERT INTO search_token (res_type, id, param, system, code)",
        )?;
        texts(
            &mut out,
            &[&self.token_params, &self.token_systems, &self.token_codes],
        )?;
        owner(
            &mut out,
            self,
            ")), s AS (INSERT INTO search_string (res_type, id, param, value, raw)",
        )?;
        texts(
            &mut out,
            &[&self.string_params, &self.string_values, &self.string_raws],
        )?;
        owner(
            &mut out,
            self,
            ")), d AS (INSERT INTO search_date (res_type, id, param, low, high)",
        )?;
        texts(&mut out, &[&self.date_params])?;
        out.push_sql(", ");
        out.push_bind_param::<Array<BigInt>, _>(&self.date_lows)?;
        out.push_sql("::int8[], ");
        out.push_bind_param::<Array<BigInt>, _>(&self.date_highs)?;
        out.push_sql("::int8[]");
        owner(
            &mut out,
            self,
            ")), q AS (INSERT INTO search_quantity (res_type, id, param, value, system, code)",
        )?;
        texts(&mut out, &[&self.quantity_params])?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Double>, _>(&self.quantity_values)?;
        out.push_sql("::float8[], ");
        texts(&mut out, &[&self.quantity_systems, &self.quantity_codes])?;
        owner(
            &mut out,
            self,
            ")) INSERT INTO search_reference (res_type, id, param, target_type, target_id)",
        )?;
        texts(
            &mut out,
            &[&self.ref_params, &self.ref_types, &self.ref_ids],
        )?;
        out.push_sql(")");
        Ok(())
    }
}

impl QueryId for PgIndexInsert<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl PgIndexInsert<'_> {
    pub(crate) fn execute(&self, conn: &mut PgConnection) -> QueryResult<usize> {
        conn.execute_returning_count(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_explicit() {
        assert!(matches!(
            DatabaseUrl::parse("postgres://postgres@127.0.0.1/x"),
            Ok(DatabaseUrl::Postgres(_))
        ));
        assert_eq!(
            DatabaseUrl::parse("sqlite://data/e.db").ok(),
            Some(DatabaseUrl::Sqlite("data/e.db".into()))
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///tmp/e.db").ok(),
            Some(DatabaseUrl::Sqlite("/tmp/e.db".into()))
        );
        for bad in ["postgress://x", "data/e.db", "sqlite://", "mysql://x", ""] {
            assert!(DatabaseUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fragments_renumber() {
        let mut a = Sql::new("a = ");
        a.int(1);
        let mut b = Sql::new(" AND b = ");
        b.int(2).push(" AND c = ").int(3);
        a.append(&b);
        assert_eq!(a.text, "a = $1 AND b = $2 AND c = $3");
        assert_eq!(a.binds.len(), 3);
    }

    /// Cached statements must be prepared once: without the planner stability guarantee
    /// (`.cargo/config.toml`), SQLite re-prepares a statement whenever a bound LIMIT changes.
    #[test]
    fn sqlite_is_built_with_planner_stability() {
        #[derive(QueryableByName)]
        struct Opt {
            #[diesel(sql_type = Text)]
            compile_options: String,
        }
        let mut c = SqliteConnection::establish(":memory:").expect("in-memory database");
        let opts: Vec<Opt> = diesel::sql_query("PRAGMA compile_options")
            .load(&mut c)
            .expect("compile options");
        assert!(
            opts.iter().any(|o| o.compile_options == "ENABLE_QPSG"),
            "SQLite was built without SQLITE_ENABLE_QPSG"
        );
    }

    #[test]
    fn new_sqlite_databases_use_2k_pages() {
        #[derive(QueryableByName)]
        struct PageSize {
            #[diesel(sql_type = BigInt)]
            page_size: i64,
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let url = DatabaseUrl::Sqlite(dir.path().join("p.db"));
        url.migrate().expect("migrate");
        let DbConn::Sqlite(mut c) = url.connect(false).expect("connect") else {
            panic!("expected SQLite");
        };
        let p: Vec<PageSize> = diesel::sql_query("PRAGMA page_size")
            .load(&mut c)
            .expect("page size");
        assert_eq!(p[0].page_size, 2048);
    }
}
