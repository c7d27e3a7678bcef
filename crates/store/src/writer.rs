//! Group commit: one writer thread owns the write connection. Each job runs in its own savepoint
//! inside a shared transaction; the batch commits once (one fsync) and every job is answered only
//! once that commit is on disk (on SQLite the sync is made by a thread of its own while the writer
//! goes on with the next batch: see `settle`). A 2xx therefore always means durable, and many
//! writers share one fsync.

use crate::cache::ReadCache;
use crate::committers::Committers;
use crate::db::{DatabaseUrl, DbConn};
use crate::instance;
use crate::journal::{self, Journal};
use crate::merges::{links_in, Merges};
use crate::settle::{Completion, Publish, Settle, Settler};
use crate::StoreError;
use diesel::connection::SimpleConnection;
use diesel::Connection;
use epaccs_access::audit::AuditRecord;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

type Work = Box<dyn FnOnce(&mut DbConn) -> Completion + Send>;

enum Job {
    Work {
        work: Work,
        /// May change clinical data or sharing facts: the read cache is emptied after its batch.
        changes_data: bool,
    },
    /// An audit record: all of a batch's are appended together. Used on SQLite without an
    /// audit journal (PostgreSQL without one has its audit committers).
    Audit(Box<AuditRecord>, oneshot::Sender<Result<(), StoreError>>),
    /// Records already durable in the audit journal, to copy into the audit tables. Nobody
    /// waits for this: a copy that fails is kept and tried again with the next batch.
    Copy(journal::Copy),
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
/// The most journaled audit records copied in one batch (about 20 ms of work on SQLite: what a
/// clinical write sharing the batch may wait behind it).
const COPY_PER_BATCH: usize = 512;
/// How long a request waits for its batch before answering 503.
const WAIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    cache: std::sync::Arc<ReadCache>,
    /// Where reads' audit records are made durable, when configured (see `journal`).
    journal: Option<Journal>,
    /// PostgreSQL without a journal: reads' audit records are committed by threads of their
    /// own (see `committers`).
    committers: Option<Committers>,
    /// Signalled after a committed batch that enqueued notifications (wakes the worker).
    pub committed: std::sync::Arc<tokio::sync::Notify>,
}

impl Writer {
    pub fn start(
        url: DatabaseUrl,
        cache: std::sync::Arc<ReadCache>,
        journal_dir: Option<PathBuf>,
        committers: usize,
    ) -> Result<Writer, StoreError> {
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
        // Whatever the journal holds beyond the copy is copied before anything else happens.
        let next_seq = match &journal_dir {
            Some(dir) => Some(recover_journal(&mut conn, dir)? + 1),
            None => None,
        };
        let (tx, rx) = mpsc::channel::<Job>(8192);
        let (applied_tx, applied_rx) = watch::channel(next_seq.unwrap_or(1) - 1);
        let journal = match (&journal_dir, next_seq) {
            (Some(dir), Some(next)) => {
                let to_writer = tx.clone();
                Some(Journal::start(
                    dir,
                    next,
                    Box::new(move |copy| to_writer.blocking_send(Job::Copy(copy)).is_ok()),
                    applied_rx,
                )?)
            }
            _ => None,
        };
        let committed = std::sync::Arc::new(tokio::sync::Notify::new());
        let publish = Publish {
            applied: applied_tx,
            committed: committed.clone(),
        };
        let settler = match &url {
            DatabaseUrl::Sqlite(path) => {
                // From here on the settling thread makes each commit durable (see `settle`).
                conn.batch_execute("PRAGMA synchronous = NORMAL")
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                let mut wal = path.clone().into_os_string();
                wal.push("-wal");
                Settler::start(PathBuf::from(wal), publish)?
            }
            DatabaseUrl::Postgres(_) => Settler::Inline(publish),
        };
        // Links waiting to be merged, counted at start (see `merges`).
        let merges = std::sync::Arc::new(Merges::new(
            crate::audit::recent_links(&mut conn).unwrap_or(0),
        ));
        let committers = match (&url, &journal) {
            (DatabaseUrl::Postgres(_), None) => Some(Committers::start(
                &url,
                committers.max(1),
                merges.clone(),
                committed.clone(),
            )?),
            _ => None,
        };
        let timer = crate::merges::idle_timer()?;
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
                    let shared = Shared {
                        cache,
                        merges,
                        timer,
                    };
                    run(url, conn, rx, shared, settler, checkpoints)
                }
            })
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Writer {
            tx,
            cache,
            journal,
            committers,
            committed,
        })
    }

    pub fn cache(&self) -> &std::sync::Arc<ReadCache> {
        &self.cache
    }

    /// Makes an audit record durable: appended to the audit journal when there is one (copied
    /// into the audit tables behind the request); otherwise committed in the audit committers'
    /// next batch (PostgreSQL) or the writer's (SQLite). Resolves once it is on disk. If the
    /// insert or the commit fails, every caller in that batch is answered 503, so nothing is
    /// claimed durable that is not.
    pub async fn audit(&self, rec: AuditRecord) -> Result<(), StoreError> {
        if let Some(j) = &self.journal {
            return j.append(rec).await;
        }
        if let Some(c) = &self.committers {
            return c.audit(rec).await;
        }
        let (done_tx, done_rx) = oneshot::channel();
        self.tx
            .send(Job::Audit(Box::new(rec), done_tx))
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        answer(done_rx).await
    }

    /// Waits until every audit record acknowledged so far is in the audit tables (at once
    /// when there is no journal: then each is inserted before it is acknowledged).
    pub async fn audit_settled(&self) -> Result<(), StoreError> {
        match &self.journal {
            Some(j) => j.settled(WAIT).await,
            None => Ok(()),
        }
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

pub(crate) async fn answer<T>(
    done: oneshot::Receiver<Result<T, StoreError>>,
) -> Result<T, StoreError> {
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

/// What the writer thread shares with the rest of the store.
struct Shared {
    cache: std::sync::Arc<ReadCache>,
    merges: std::sync::Arc<Merges>,
    /// Times the idle wait (see `merges::next_or_merge`).
    timer: tokio::runtime::Runtime,
}

fn run(
    url: DatabaseUrl,
    conn: DbConn,
    mut rx: mpsc::Receiver<Job>,
    shared: Shared,
    settler: Settler,
    checkpoints: Option<Checkpoints>,
) {
    let Shared {
        cache,
        merges,
        timer,
    } = shared;
    let mut conn = Some(conn);
    let mut merged_at = std::time::Instant::now();
    // Journaled audit records not yet copied, oldest first.
    let mut pending: std::collections::VecDeque<journal::Copy> = Default::default();
    // The last copy failed: try again soon even if no new work arrives.
    let mut retry = false;
    loop {
        let first = if pending.is_empty() {
            let job = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Idle: a good moment to merge what has waited a while (whatever the count
                    // says: it does not include the links of writes' own audit records).
                    if merged_at.elapsed() >= Merges::IDLE {
                        if let Some(c) = conn.as_mut() {
                            merges.merge(c);
                        }
                        merged_at = std::time::Instant::now();
                    }
                    None
                }
            };
            match job {
                Some(job) => Some(job),
                // Nothing to do: wait for work (merging when quiet).
                None => match crate::merges::next_or_merge(&mut rx, &timer, &mut conn, &merges) {
                    Some(job) => Some(job),
                    None => break,
                },
            }
        } else {
            // A copy is waiting: don't wait for new work to do it.
            match rx.try_recv() {
                Ok(job) => Some(job),
                Err(mpsc::error::TryRecvError::Empty) => {
                    if retry {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    None
                }
                // What was not copied is still in the journal: copied at the next start.
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        };
        let mut jobs = Vec::with_capacity(64);
        let mut next = first;
        while let Some(job) = next {
            match job {
                Job::Copy(c) => pending.push_back(c),
                other => jobs.push(other),
            }
            next = if jobs.len() < MAX_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if settler.failed() {
            // Dropping the jobs answers them 503. What the journal handed over stays in the
            // journal, to be copied at the next start.
            tracing::error!(
                jobs = jobs.len(),
                "writes refused: the database could not make a write durable; restart the service"
            );
            pending.clear();
            continue;
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
        let mut copied = false;
        let alone = jobs.is_empty();
        // At most `COPY_PER_BATCH` records per batch, so a backlog of copies never holds a
        // clinical write behind it for long.
        let mut taken: Vec<journal::Copy> = Vec::new();
        let mut n_taken = 0;
        while n_taken < COPY_PER_BATCH {
            let Some(c) = pending.pop_front() else { break };
            n_taken += c.records.len();
            taken.push(c);
        }
        let through = taken.last().map(|c| c.through);
        let copies: Vec<&AuditRecord> = taken.iter().flat_map(|c| c.records.iter()).collect();
        // Journal copies handed over while this batch took in more jobs (for the next batch).
        let mut late: Vec<journal::Copy> = Vec::new();
        let result = c.transaction::<(), diesel::result::Error, _>(|c| {
            let mut run_job = |c: &mut DbConn, job: Job| match job {
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
                Job::Copy(copy) => late.push(copy),
            };
            let mut n = jobs.len();
            for job in jobs {
                run_job(c, job);
            }
            // While the last batch is still being synced (SQLite), more jobs join this one:
            // they are run now, overlapping the disk's work, and share this commit, so batches
            // stay as large as when the writer waited for the sync itself.
            while !alone && n < MAX_BATCH {
                match settler.next_while_syncing(&mut rx, &timer) {
                    Some(job) => {
                        run_job(c, job);
                        n += 1;
                    }
                    None => break,
                }
            }
            if let Some(through) = through {
                // In its own savepoint when it shares the batch: a copy that fails is kept for
                // the next batch and takes nobody else's write with it. Alone it needs none
                // (a savepoint journals every page it changes): the whole batch is rolled back.
                let r = if alone {
                    crate::audit::copy_journaled(c, &copies, through)
                } else {
                    c.transaction(|c| crate::audit::copy_journaled(c, &copies, through))
                };
                match r {
                    Ok(()) => copied = true,
                    Err(e) => {
                        tracing::error!(error = %e, records = copies.len(), "audit journal copy failed; will retry");
                        // Never commit part of a copy: it would be copied again.
                        if alone {
                            return Err(diesel::result::Error::RollbackTransaction);
                        }
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
        if outcome.is_ok() {
            merges.add(links_in(&records));
            if copied {
                merges.add(links_in(&copies));
            }
        }
        pending.extend(late);
        let applied = if let (true, Ok(()), Some(through)) = (copied, &outcome, through) {
            retry = false;
            Some(through)
        } else {
            if !taken.is_empty() {
                // Not copied: first in line again.
                for c in taken.into_iter().rev() {
                    pending.push_front(c);
                }
                retry = true;
            }
            None
        };
        let notify = crate::outbox::ENQUEUED.with(|e| e.replace(false)) && outcome.is_ok();
        settler.settle(Settle {
            outcome,
            completions,
            applied,
            notify,
        });
        if merges.due() {
            if let Some(c) = conn.as_mut() {
                merges.merge(c);
                merged_at = std::time::Instant::now();
            }
        }
        if let (Some(cp), Some(c)) = (&checkpoints, conn.as_mut()) {
            if cp.restart.swap(false, std::sync::atomic::Ordering::Relaxed) {
                restart_wal(c);
            }
        }
    }
}

/// Copies whatever the audit journal in `dir` holds beyond `audit_journal.applied` into the
/// audit tables, then removes its segments. Returns the last sequence number ever used, which
/// the database now records too, so numbering continues even if the directory is lost.
fn recover_journal(conn: &mut DbConn, dir: &std::path::Path) -> Result<u64, StoreError> {
    let found = journal::recover(dir).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot read the audit journal {}: {e}",
            dir.display()
        ))
    })?;
    let applied = crate::audit::journal_applied(conn)?;
    let todo: Vec<&(u64, AuditRecord)> = found
        .records
        .iter()
        .filter(|(seq, _)| *seq > applied)
        .collect();
    for chunk in todo.chunks(1000) {
        let through = chunk.last().map_or(applied, |(seq, _)| *seq);
        let recs: Vec<&AuditRecord> = chunk.iter().map(|(_, r)| r).collect();
        conn.transaction(|c| crate::audit::copy_journaled(c, &recs, through))?;
    }
    let last = found.last_seq.max(applied);
    conn.transaction(|c| crate::audit::copy_journaled::<AuditRecord>(c, &[], last))?;
    journal::remove_segments(dir, &found.segments).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot tidy the audit journal {}: {e}",
            dir.display()
        ))
    })?;
    if !todo.is_empty() || found.damaged > 0 {
        tracing::warn!(
            copied = todo.len(),
            damaged = found.damaged,
            "audit journal records copied into the audit trail at start-up"
        );
    }
    Ok(last)
}

/// SQLite only: WAL checkpoints run on their own thread and connection, not inside a commit.
/// The writer connection has `wal_autocheckpoint` off; otherwise every thousandth page written
/// would make one unlucky batch copy the WAL into the database (and fsync it) while its callers
/// wait. A PASSIVE checkpoint never blocks the writer or readers.
///
/// SQLite starts the WAL again from its beginning only at a commit when no reader is using it;
/// with the read pool busy all the time that moment never comes, and under load the WAL grew
/// without bound (measured: ~45 MB a second, 300 MB in 8 s), making every read's WAL look-up and
/// every checkpoint dearer. So once the WAL passes `WAL_RESTART_FRAMES` the checkpointer asks the
/// writer, between batches, for a RESTART checkpoint on its own connection: the PASSIVE ones have
/// already copied nearly everything (`RESTART_BEHIND_FRAMES`), no write can be in progress, and new readers read the latest
/// snapshot, so it only waits (at most `RESTART_WAIT`) for the reads in flight to end; if they do
/// not, it is asked again at the next tick.
pub(crate) struct Checkpoints {
    /// Held only so the checkpointer stops when the writer does.
    _stop: std::sync::mpsc::Sender<()>,
    restart: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[derive(diesel::QueryableByName)]
struct WalState {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    log: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    checkpointed: i32,
}

/// A RESTART is asked for only when the PASSIVE checkpoints have copied all but this many
/// frames, so the writer pauses for a reset, not for a copy (measured: asking regardless put
/// 270 ms on the p99 of creates).
const RESTART_BEHIND_FRAMES: i32 = 256;

/// Before asking for a RESTART, further PASSIVE checkpoints copy what was written during the one
/// that qualified, at most this many, stopping at the first that takes less than `CATCH_UP_QUICK`.
const CATCH_UP_PASSES: usize = 4;
const CATCH_UP_QUICK: Duration = Duration::from_millis(5);

/// 64 MiB of 2 KiB pages (1 MiB in unit tests).
#[cfg(not(test))]
const WAL_RESTART_FRAMES: i32 = 32_768;
#[cfg(test)]
const WAL_RESTART_FRAMES: i32 = 512;
const RESTART_WAIT: &str = "PRAGMA busy_timeout = 5";

fn start_checkpointer(url: &DatabaseUrl) -> Result<Checkpoints, StoreError> {
    let mut conn = url
        .connect(false)
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let restart = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let wanted = restart.clone();
    let passive = crate::db::Sql::new("PRAGMA wal_checkpoint(PASSIVE)");
    std::thread::Builder::new()
        .name("epaccs-checkpoint".into())
        .spawn(move || loop {
            match rx.recv_timeout(CHECKPOINT_EVERY) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if checkpoint(&mut conn, &passive) {
                        wanted.store(true, std::sync::atomic::Ordering::Relaxed);
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
    Ok(Checkpoints { _stop: tx, restart })
}

/// One PASSIVE checkpoint; true when the writer should now RESTART the WAL.
fn checkpoint(conn: &mut DbConn, passive: &crate::db::Sql) -> bool {
    let rows = match crate::db::load::<WalState>(conn, passive) {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
            return false;
        }
    };
    let due = rows.first().is_some_and(|r| {
        r.log >= WAL_RESTART_FRAMES && r.log - r.checkpointed <= RESTART_BEHIND_FRAMES
    });
    if due {
        // `log` is the WAL's length when that checkpoint began: what the writer appended while
        // it ran is not copied yet, and the RESTART would copy it with the writer stopped
        // (measured: restarts of 150-200 ms, creates' p99 130-136 ms; with these passes, 64-77
        // ms). Copy it here first, while the writer goes on, until a pass is quick.
        for _ in 0..CATCH_UP_PASSES {
            let began = std::time::Instant::now();
            if crate::db::load::<WalState>(conn, passive).is_err()
                || began.elapsed() < CATCH_UP_QUICK
            {
                break;
            }
        }
    }
    due
}

/// On the writer's connection, between batches (see `Checkpoints`).
fn restart_wal(conn: &mut DbConn) {
    let outcome = conn
        .batch_execute(RESTART_WAIT)
        .and_then(|()| conn.batch_execute("PRAGMA wal_checkpoint(RESTART)"));
    if let Err(e) = conn
        .batch_execute("PRAGMA busy_timeout = 10000")
        .and(outcome)
    {
        tracing::warn!(error = %e, "WAL restart failed; will retry");
    }
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::*;

    /// The WAL's checkpoint sequence number (bytes 12..16 of its header, big-endian), which
    /// SQLite increments each time it starts the WAL again from the beginning.
    fn wal_restarts(wal: &std::path::Path) -> u32 {
        let mut header = [0u8; 16];
        std::fs::File::open(wal)
            .and_then(|f| std::io::Read::read_exact(&mut &f, &mut header))
            .map_or(0, |()| {
                u32::from_be_bytes([header[12], header[13], header[14], header[15]])
            })
    }

    /// With a reader always busy, the WAL is still started again, over and over, instead of
    /// growing with every write. (The file itself keeps the size it reached: SQLite cuts it
    /// back only to `journal_size_limit`, so how far it grows depends on how much is written
    /// between two checkpoints, which is machine speed; the restarts are the property.)
    #[test]
    fn the_wal_stays_bounded_under_steady_reads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("wal.db");
        let wal = dir.path().join("wal.db-wal");
        let url = DatabaseUrl::Sqlite(db.clone());
        url.migrate().expect("migrate");
        let w =
            Writer::start(url.clone(), crate::cache::ReadCache::new(0), None, 1).expect("writer");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (url, stop) = (url.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = url.connect(false).expect("reader");
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    crate::testdb::count(&mut c, "SELECT COUNT(*) AS n FROM audit_event");
                }
            })
        };
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let mut largest = 0;
        let mut written = 0u64;
        let first = wal_restarts(&wal);
        rt.block_on(async {
            for i in 0..20_000u64 {
                let rec = AuditRecord {
                    content: "x".repeat(600),
                    ..crate::testdb::audit_record(
                        format!("wal-{i:05}"),
                        i as i64,
                        vec![format!("p{}", i % 97)],
                    )
                };
                w.audit(rec).await.expect("append");
                written += 1;
                largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
                // Three restarts after the first WAL has passed the threshold.
                if wal_restarts(&wal).wrapping_sub(first) >= 3 {
                    break;
                }
            }
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().expect("reader");
        let restarts = wal_restarts(&wal).wrapping_sub(first);
        assert!(
            restarts >= 3,
            "the WAL was started again {restarts} times in {written} one-record commits (largest {largest} bytes)"
        );
        assert!(
            largest < 64 << 20,
            "the WAL reached {largest} bytes in {written} commits"
        );
    }

    /// Fewer links than a merge waits for, then nothing more: once the service has been quiet
    /// for `Merges::IDLE` (300 ms under test) they are in the per-patient index all the same.
    fn a_quiet_service_merges_its_waiting_links(url: &DatabaseUrl, journal: Option<PathBuf>) {
        url.migrate().expect("migrate");
        let w = Writer::start(url.clone(), crate::cache::ReadCache::new(0), journal, 1)
            .expect("writer");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            for i in 0..10 {
                let rec = crate::testdb::audit_record(format!("q-{i}"), i, vec![format!("p{i}")]);
                w.audit(rec).await.expect("audit");
            }
            w.audit_settled().await.expect("settled");
        });
        let mut conn = url.connect(false).expect("connect");
        let merged = "SELECT COUNT(*) AS n FROM audit_patient";
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while crate::testdb::count(&mut conn, merged) < 10 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(crate::testdb::count(&mut conn, merged), 10);
        assert_eq!(
            crate::testdb::count(&mut conn, "SELECT COUNT(*) AS n FROM audit_patient_recent"),
            0
        );
        drop(w);
    }

    #[test]
    fn a_quiet_service_merges_its_waiting_links_on_sqlite() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = DatabaseUrl::Sqlite(dir.path().join("quiet.db"));
        a_quiet_service_merges_its_waiting_links(&url, None);
    }

    #[test]
    fn a_quiet_service_merges_its_journaled_links_on_sqlite() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = DatabaseUrl::Sqlite(dir.path().join("quiet.db"));
        a_quiet_service_merges_its_waiting_links(&url, Some(dir.path().join("journal")));
    }

    #[test]
    fn a_quiet_service_merges_its_waiting_links_on_postgres() {
        crate::testdb::with_postgres(|url| a_quiet_service_merges_its_waiting_links(url, None));
    }
}
