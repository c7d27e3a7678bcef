//! Group commit: one writer thread owns the write connection. Each job runs in its own savepoint
//! inside a shared transaction; the batch commits once (one fsync) and every job is answered only
//! after that commit. A 2xx therefore always means durable, and many writers share one fsync.

use crate::cache::ReadCache;
use crate::db::{DatabaseUrl, DbConn};
use crate::instance;
use crate::StoreError;
use diesel::connection::SimpleConnection;
use diesel::Connection;
use epaccs_access::audit::AuditRecord;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type Work = Box<dyn FnOnce(&mut DbConn) -> Completion + Send>;

enum Job {
    Work {
        work: Work,
        /// May change clinical data or sharing facts: the read cache is emptied after its batch.
        changes_data: bool,
    },
    /// An audit record: all of a batch's are appended together, a few statements per batch
    /// rather than two per record (one round trip each on PostgreSQL).
    Audit(Box<AuditRecord>, oneshot::Sender<Result<(), StoreError>>),
}

/// What a job may change (each runs in its own savepoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Resources or the sharing facts.
    Data,
    /// Only the service's own bookkeeping: seen `jti`s, delivery marks, leases.
    Bookkeeping,
}

/// The most jobs committed together.
const MAX_BATCH: usize = 512;
/// How long a request waits for its batch before answering 503.
const WAIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    cache: std::sync::Arc<ReadCache>,
    /// Signalled after a committed batch that enqueued notifications (wakes the worker).
    pub committed: std::sync::Arc<tokio::sync::Notify>,
}

impl Writer {
    pub fn start(url: DatabaseUrl, cache: std::sync::Arc<ReadCache>) -> Result<Writer, StoreError> {
        // One writing instance per database (see `instance`): the lock is held by this thread
        // (the file) or its connection (the PostgreSQL session) for as long as it runs.
        let lock_file = match &url {
            DatabaseUrl::Sqlite(path) => Some(instance::claim_file(path, instance::CLAIM_WAIT)?),
            DatabaseUrl::Postgres(_) => None,
        };
        let mut conn = url
            .connect(true)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        instance::claim_session(&mut conn, instance::CLAIM_WAIT)?;
        let (tx, rx) = mpsc::channel::<Job>(8192);
        let committed = std::sync::Arc::new(tokio::sync::Notify::new());
        let signal = committed.clone();
        let checkpoints = if url.is_sqlite() {
            Some(start_checkpointer(&url)?)
        } else {
            None
        };
        std::thread::Builder::new()
            .name("epaccs-writer".into())
            .spawn({
                let cache = cache.clone();
                move || {
                    let _held = lock_file;
                    run(url, conn, rx, signal, cache, checkpoints)
                }
            })
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Writer {
            tx,
            cache,
            committed,
        })
    }

    pub fn cache(&self) -> &std::sync::Arc<ReadCache> {
        &self.cache
    }

    /// Appends an audit record in the next batch; resolves after the batch has committed
    /// durably. The batch's records are inserted together, with no savepoint: if that fails on
    /// PostgreSQL the whole batch fails and every caller in it is answered 503, so nothing is
    /// lost or claimed durable that is not.
    pub async fn audit(&self, rec: AuditRecord) -> Result<(), StoreError> {
        let (done_tx, done_rx) = oneshot::channel();
        self.tx
            .send(Job::Audit(Box::new(rec), done_tx))
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        answer(done_rx).await
    }

    /// Runs `f` in its own savepoint in the next batch; resolves after the batch has committed
    /// durably.
    pub async fn submit<T, F>(&self, kind: Kind, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> Result<T, StoreError> + Send + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel::<Result<T, StoreError>>();
        let work: Work = Box::new(move |conn: &mut DbConn| {
            // A nested transaction is a savepoint: a failing job undoes only itself.
            let result = conn.transaction(|c| f(c));
            Box::new(move |committed: Result<(), StoreError>| {
                let _ = done_tx.send(committed.and(result));
            }) as Completion
        });
        let job = Job::Work {
            work,
            changes_data: kind == Kind::Data,
        };
        self.tx
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        answer(done_rx).await
    }
}

async fn answer<T>(done: oneshot::Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
    match tokio::time::timeout(WAIT, done).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(StoreError::Unavailable(
            "the database did not accept the write".into(),
        )),
        Err(_) => Err(StoreError::Unavailable(
            "timed out waiting for the database".into(),
        )),
    }
}

fn run(
    url: DatabaseUrl,
    conn: DbConn,
    mut rx: mpsc::Receiver<Job>,
    committed: std::sync::Arc<tokio::sync::Notify>,
    cache: std::sync::Arc<ReadCache>,
    // Held only so the checkpointer stops when the writer does.
    _checkpoints: Option<std::sync::mpsc::Sender<()>>,
) {
    let mut conn = Some(conn);
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        if conn.is_none() {
            // A new PostgreSQL session must take the instance lock again; if another instance
            // took it meanwhile, this one keeps refusing writes.
            conn = url.connect(true).ok().and_then(|mut c| {
                match instance::claim_session(&mut c, Duration::ZERO) {
                    Ok(()) => Some(c),
                    Err(e) => {
                        tracing::error!(error = %e, "writer cannot reclaim the database");
                        None
                    }
                }
            });
        }
        let Some(c) = conn.as_mut() else {
            // Dropping the jobs answers them 503; the next batch tries to reconnect.
            tracing::error!(jobs = jobs.len(), "database unavailable; writes refused");
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let mut completions: Vec<Completion> = Vec::with_capacity(jobs.len());
        let mut records: Vec<AuditRecord> = Vec::new();
        let mut audited: Vec<oneshot::Sender<Result<(), StoreError>>> = Vec::new();
        let mut changes_data = false;
        let result = c.transaction::<(), diesel::result::Error, _>(|c| {
            for job in jobs {
                match job {
                    Job::Work {
                        work,
                        changes_data: d,
                    } => {
                        changes_data |= d;
                        completions.push(work(c));
                    }
                    Job::Audit(rec, done) => {
                        records.push(*rec);
                        audited.push(done);
                    }
                }
            }
            if !records.is_empty() {
                let appended = crate::audit::insert_many(c, &records);
                completions.push(Box::new(move |committed: Result<(), StoreError>| {
                    let outcome = committed.and(appended);
                    for done in audited {
                        let _ = done.send(outcome.clone());
                    }
                }));
            }
            Ok(())
        });
        // Before anyone in the batch is answered (committed or not: emptying is always safe).
        if changes_data {
            cache.invalidate_all();
        }
        let outcome = result.map_err(|e| {
            tracing::error!(error = %e, "group commit failed");
            StoreError::Unavailable("the database could not commit".into())
        });
        if outcome.is_err() && c.batch_execute("SELECT 1").is_err() {
            conn = None;
        }
        if crate::outbox::ENQUEUED.with(|e| e.replace(false)) && outcome.is_ok() {
            committed.notify_one();
        }
        for done in completions {
            done(outcome.clone());
        }
    }
}

/// SQLite only: WAL checkpoints run on their own thread and connection, not inside a commit.
/// The writer connection has `wal_autocheckpoint` off; otherwise every thousandth page written
/// would make one unlucky batch copy the WAL into the database (and fsync it) while its callers
/// wait. A PASSIVE checkpoint never blocks the writer or readers; SQLite restarts the WAL from
/// its beginning at the next commit once every frame has been copied.
fn start_checkpointer(url: &DatabaseUrl) -> Result<std::sync::mpsc::Sender<()>, StoreError> {
    let mut conn = url
        .connect(false)
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("epaccs-checkpoint".into())
        .spawn(move || loop {
            match rx.recv_timeout(CHECKPOINT_EVERY) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = conn.batch_execute("PRAGMA wal_checkpoint(PASSIVE)") {
                        tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
                    }
                }
                // The writer has stopped: one last checkpoint, then end.
                _ => {
                    let _ = conn.batch_execute("PRAGMA wal_checkpoint(PASSIVE)");
                    return;
                }
            }
        })
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    Ok(tx)
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
