//! One writing instance per database.
//!
//! Several guarantees rest on this process being the only writer: one record per NHS number and
//! one current ReSPECT form are checked inside the single writer's transactions, and the read
//! cache is emptied by that writer. A second instance over the same database would break them
//! silently, so it is refused: on SQLite by an exclusive lock on a file beside the database, on
//! PostgreSQL by a session advisory lock held by the writer's connection (re-taken whenever the
//! writer reconnects; if another instance took it meanwhile, this one refuses writes).

use crate::db::{load, DbConn, Sql};
use crate::StoreError;
use diesel::sql_types::Bool;
use diesel::QueryableByName;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;
use std::time::{Duration, Instant};

/// PostgreSQL advisory lock key ("epaccsWR"); advisory locks are scoped to one database.
const PG_LOCK_KEY: i64 = 0x6570_6163_6373_5752;

/// How long a starting instance waits for a stopping one to let go.
pub(crate) const CLAIM_WAIT: Duration = Duration::from_secs(10);

fn refused(what: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "another epaccs instance is writing to {what}; only one instance may serve a database"
    ))
}

/// Takes the SQLite instance lock (`<database>.instance-lock`), waiting up to `wait`.
pub(crate) fn claim_file(db: &Path, wait: Duration) -> Result<File, StoreError> {
    let mut name = db.as_os_str().to_owned();
    name.push(".instance-lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&name)
        .map_err(|e| StoreError::Unavailable(format!("cannot open the instance lock: {e}")))?;
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if started.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(TryLockError::WouldBlock) => return Err(refused(&db.display().to_string())),
            Err(TryLockError::Error(e)) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot lock the instance lock: {e}"
                )))
            }
        }
    }
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// Takes the PostgreSQL advisory lock on the writer's own session, waiting up to `wait`.
/// A no-op on SQLite (its lock is the file's).
pub(crate) fn claim_session(conn: &mut DbConn, wait: Duration) -> Result<(), StoreError> {
    if !matches!(conn, DbConn::Pg(_)) {
        return Ok(());
    }
    let mut sql = Sql::new("SELECT pg_try_advisory_lock(");
    sql.int(PG_LOCK_KEY).push(") AS locked");
    let started = Instant::now();
    loop {
        let got = load::<Locked>(conn, &sql)?.pop().is_some_and(|l| l.locked);
        if got {
            return Ok(());
        }
        if started.elapsed() >= wait {
            return Err(refused("this PostgreSQL database"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_on_one_sqlite_database_is_refused_until_the_first_ends() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("one.db");
        let first = claim_file(&db, Duration::ZERO).expect("first claim");
        let second = claim_file(&db, Duration::from_millis(120));
        assert!(
            matches!(second, Err(StoreError::Unavailable(ref m)) if m.contains("another epaccs instance")),
            "second claim must be refused"
        );
        drop(first);
        claim_file(&db, Duration::ZERO).expect("claim after the first instance ended");
    }
}
