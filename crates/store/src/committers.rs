//! PostgreSQL without an audit journal: reads' audit records are committed by a few threads
//! of their own, each with its own connection, instead of riding the single writer's batches.
//!
//! With one committer a read's latency is a whole batch (insert, commit, WAL flush), and the
//! next batch cannot start until the flush returns: throughput was set by the flush, not by
//! the CPU (measured: a third of the machine idle at 32 concurrent reads). With several, one
//! collects and inserts the next batch while another waits for its flush, and PostgreSQL
//! flushes concurrent commits together. Audit records are append-only rows with unique ids, so
//! the committers never conflict with each other or with the writer.
//!
//! Each batch is still one transaction: every record in it is acknowledged only after its
//! commit has returned (durable), and if it fails every caller in it is answered 503.

use crate::db::{DatabaseUrl, DbConn};
use crate::merges::Merges;
use crate::StoreError;
use diesel::connection::SimpleConnection;
use diesel::Connection;
use epaccs_access::audit::AuditRecord;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The most records committed together.
const MAX_BATCH: usize = 512;

type Entry = (Box<AuditRecord>, oneshot::Sender<Result<(), StoreError>>);

#[derive(Clone)]
pub(crate) struct Committers {
    tx: mpsc::Sender<Entry>,
}

impl Committers {
    /// Opens `count` connections (an error here stops the service from starting) and starts a
    /// thread for each.
    pub(crate) fn start(
        url: &DatabaseUrl,
        count: usize,
        merges: Arc<Merges>,
        committed: Arc<tokio::sync::Notify>,
    ) -> Result<Committers, StoreError> {
        let (tx, rx) = mpsc::channel::<Entry>(8192);
        // Whoever holds the receiver collects the next batch; the others are inserting or
        // waiting for their commits meanwhile.
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..count {
            let conn = url
                .connect(false)
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let timer = crate::merges::idle_timer()?;
            let (url, rx, merges, committed) =
                (url.clone(), rx.clone(), merges.clone(), committed.clone());
            std::thread::Builder::new()
                .name(format!("epaccs-audit-{n}"))
                .spawn(move || run(url, conn, timer, rx, merges, committed))
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        }
        Ok(Committers { tx })
    }

    /// Resolves once `rec` is committed.
    pub(crate) async fn audit(&self, rec: AuditRecord) -> Result<(), StoreError> {
        let (done_tx, done_rx) = oneshot::channel();
        self.tx
            .send((Box::new(rec), done_tx))
            .await
            .map_err(|_| StoreError::Unavailable("the audit committers have stopped".into()))?;
        crate::writer::answer(done_rx).await
    }
}

/// The next batch, or None when every sender is gone. While waiting, the thread holding the
/// receiver merges the waiting links when quiet (see `merges::next_or_merge`).
fn next_batch(
    rx: &Mutex<mpsc::Receiver<Entry>>,
    timer: &tokio::runtime::Runtime,
    conn: &mut Option<DbConn>,
    merges: &Merges,
) -> Option<Vec<Entry>> {
    let mut rx = rx.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let first = crate::merges::next_or_merge(&mut rx, timer, conn, merges)?;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(entry) => batch.push(entry),
            Err(_) => break,
        }
    }
    Some(batch)
}

fn run(
    url: DatabaseUrl,
    conn: DbConn,
    timer: tokio::runtime::Runtime,
    rx: Arc<Mutex<mpsc::Receiver<Entry>>>,
    merges: Arc<Merges>,
    committed: Arc<tokio::sync::Notify>,
) {
    let mut conn = Some(conn);
    while let Some(batch) = next_batch(&rx, &timer, &mut conn, &merges) {
        if conn.is_none() {
            conn = url.connect(false).ok();
        }
        let Some(c) = conn.as_mut() else {
            // Dropping the batch answers it 503; the next one tries to reconnect.
            tracing::error!(records = batch.len(), "database unavailable; audit refused");
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let (records, waiting): (Vec<Box<AuditRecord>>, Vec<_>) = batch.into_iter().unzip();
        // One statement appends the batch (its own transaction in autocommit); a break-glass
        // record also queues an alert, so then the batch is one explicit transaction.
        let outcome = if records.iter().any(|r| r.break_glass) {
            c.transaction(|c| crate::audit::insert_many(c, &records))
        } else {
            crate::audit::insert_many(c, &records)
        };
        let outcome = outcome.map_err(|e| {
            tracing::error!(error = %e, records = records.len(), "audit commit failed");
            StoreError::Unavailable("the database could not commit".into())
        });
        if outcome.is_err() && c.batch_execute("SELECT 1").is_err() {
            conn = None;
        }
        // Break-glass alerts were queued: wake the delivery worker once they are committed.
        if crate::outbox::ENQUEUED.with(|e| e.replace(false)) && outcome.is_ok() {
            committed.notify_one();
        }
        if outcome.is_ok() {
            merges.add(crate::merges::links_in(&records));
        }
        for done in waiting {
            let _ = done.send(outcome.clone());
        }
        if merges.due() {
            if let Some(c) = conn.as_mut() {
                merges.merge(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testdb::{audit_record, count, with_postgres};
    use crate::writer::Writer;

    /// Thousands of reads' records at once, committed by all the committers while the links
    /// are merged as they gather (64 at a time under test): every record is there once and
    /// every link once, in one table or the other, only for its own patient.
    #[test]
    fn concurrent_commits_and_merges_keep_every_record_and_link_once() {
        with_postgres(|url| {
            url.migrate().expect("migrate");
            // Four committers: they commit side by side and merge between them.
            let w = Writer::start(url.clone(), crate::cache::ReadCache::new(0), None, 4)
                .expect("writer");
            let n = 3_000i64;
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async {
                let mut audits = tokio::task::JoinSet::new();
                for i in 0..n {
                    let w = w.clone();
                    // Each names its own patient and one everybody shares.
                    let rec = audit_record(
                        format!("c-{i:05}"),
                        i,
                        vec![format!("p-{i:05}"), "shared".into()],
                    );
                    audits.spawn(async move { w.audit(rec).await });
                }
                while let Some(r) = audits.join_next().await {
                    r.expect("task").expect("audit");
                }
            });
            let mut conn = url.connect(false).expect("connect");
            assert_eq!(count(&mut conn, "SELECT COUNT(*) AS n FROM audit_event"), n);
            // Merges run after their batch is answered: one may still be under way.
            let merged = "SELECT COUNT(*) AS n FROM audit_patient";
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while count(&mut conn, merged) < n && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            assert!(
                count(&mut conn, merged) >= n,
                "fewer than half of the links merged"
            );
            // Each count in one snapshot: a merge moves links between the tables atomically.
            let all = count(
                &mut conn,
                "SELECT COUNT(*) AS n FROM (SELECT audit_id, patient_key FROM audit_patient \
                 UNION ALL SELECT audit_id, patient_key FROM audit_patient_recent) l",
            );
            assert_eq!(all, 2 * n, "links lost or doubled");
            let distinct = count(
                &mut conn,
                "SELECT COUNT(*) AS n FROM (SELECT audit_id, patient_key FROM audit_patient \
                 UNION SELECT audit_id, patient_key FROM audit_patient_recent) l",
            );
            assert_eq!(distinct, 2 * n);
            let wrong = count(
                &mut conn,
                "SELECT COUNT(*) AS n FROM (SELECT audit_id, patient_key FROM audit_patient \
                 UNION ALL SELECT audit_id, patient_key FROM audit_patient_recent) l \
                 WHERE patient_key <> 'shared' AND substr(audit_id, 3) <> substr(patient_key, 3)",
            );
            assert_eq!(wrong, 0, "a link names another patient");
            drop(w);
        });
    }
}
