//! Answering a batch once it is durable, and publishing what it did.
//!
//! PostgreSQL's commit returns once the commit is on disk, so the writer answers a batch's
//! callers at once (`Settler::Inline`).
//!
//! On SQLite the writer's connection runs with `synchronous = NORMAL`: a commit writes its WAL
//! frames and returns without syncing them, and the batch is handed to a thread of its own
//! (`Settler::Thread`) with its callers' answers and what it publishes (how far the audit journal
//! has been copied, that notifications are waiting). That thread takes every batch handed over
//! since its last sync, syncs the WAL once (`fdatasync`, which writes out every page of the file
//! whichever descriptor wrote it), and only then answers and publishes them, in commit order.
//! Meanwhile the writer builds and commits its next batch: the disk's latency is no longer paid
//! by the one thread every write goes through. (Measured: with the sync inside the commit the
//! writer spent about a third of its time waiting for the disk under continuous creates.)
//!
//! A 2xx still means durable. WAL frames are checksummed in a chain from the WAL header (which
//! SQLite syncs itself whenever it starts the WAL again), so after a crash SQLite recovers the
//! longest valid run of commits: a sync that covers a batch's frames covers every batch before
//! it. What does change: another connection may read a batch in the moment between its commit
//! and its sync. Such a read can show a write whose author has not been answered yet and which a
//! power failure in that moment would undo (its author is then never told it succeeded).
//! Nothing that has been acknowledged, published or notified can be undone.
//!
//! If a sync fails, the kernel may already have dropped the pages it could not write, and a later
//! sync could then succeed without them: nothing committed since the last good sync can be called
//! durable. Every caller waiting is answered 503, and the writer refuses every write from then on
//! until the service is restarted and SQLite recovers from what is on disk (PostgreSQL stops on a
//! failed fsync for the same reason).

use crate::StoreError;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Notify};

/// Answers one job of a batch with the batch's outcome.
pub(crate) type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A batch the writer has committed (or failed to commit).
pub(crate) struct Settle {
    pub outcome: Result<(), StoreError>,
    pub completions: Vec<Completion>,
    /// Every journaled audit record through this sequence number is now in the audit tables.
    pub applied: Option<u64>,
    /// The batch enqueued notifications.
    pub notify: bool,
}

/// Where a batch's results are published.
pub(crate) struct Publish {
    /// How far the audit journal has been copied (the journal then deletes what it need not keep).
    pub applied: watch::Sender<u64>,
    /// Wakes the notification worker.
    pub committed: Arc<Notify>,
}

impl Publish {
    fn finish(&self, batch: Settle, durable: &Result<(), StoreError>) {
        let outcome = batch.outcome.and_then(|()| durable.clone());
        if outcome.is_ok() {
            if let Some(through) = batch.applied {
                self.applied.send_replace(through);
            }
            if batch.notify {
                self.committed.notify_one();
            }
        }
        for done in batch.completions {
            done(outcome.clone());
        }
    }
}

pub(crate) enum Settler {
    /// Each commit is durable when it returns (PostgreSQL).
    Inline(Publish),
    /// Commits are made durable by the settling thread (SQLite).
    Thread {
        tx: std::sync::mpsc::Sender<Settle>,
        failed: Arc<AtomicBool>,
        syncing: Arc<Syncing>,
    },
}

/// Batches handed to the settling thread and not yet answered.
#[derive(Default)]
pub(crate) struct Syncing {
    batches: AtomicUsize,
    /// Signalled when the count reaches zero.
    done: Notify,
}

/// The longest the writer holds a batch open for more jobs while a sync is in flight (a sync
/// takes well under a millisecond on a local disk; this only bounds a stalled one).
const HOLD_OPEN: std::time::Duration = std::time::Duration::from_millis(20);

impl Settler {
    /// Starts the settling thread for the SQLite database whose WAL is `wal`.
    pub fn start(wal: PathBuf, publish: Publish) -> Result<Settler, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel::<Settle>();
        let failed = Arc::new(AtomicBool::new(false));
        let syncing = Arc::new(Syncing::default());
        let (failing, counted) = (failed.clone(), syncing.clone());
        std::thread::Builder::new()
            .name("epaccs-wal-sync".into())
            .spawn(move || settle(rx, Wal::new(wal), publish, failing, counted))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Settler::Thread {
            tx,
            failed,
            syncing,
        })
    }

    /// The next job for the open batch, if one arrives before the batches already handed over
    /// have been synced; None at once when none is being synced (PostgreSQL: never).
    pub fn next_while_syncing<J>(
        &self,
        rx: &mut tokio::sync::mpsc::Receiver<J>,
        timer: &tokio::runtime::Runtime,
    ) -> Option<J> {
        let Settler::Thread { syncing, .. } = self else {
            return None;
        };
        if syncing.batches.load(Ordering::Acquire) == 0 {
            return None;
        }
        if let Ok(job) = rx.try_recv() {
            return Some(job);
        }
        timer.block_on(async {
            let done = syncing.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            // Checked after registering, so a sync finishing in between is not missed.
            if syncing.batches.load(Ordering::Acquire) == 0 {
                return None;
            }
            tokio::select! {
                job = rx.recv() => job,
                _ = done => None,
                _ = tokio::time::sleep(HOLD_OPEN) => None,
            }
        })
    }

    /// Answers the batch's callers and publishes what it did, once it is durable.
    pub fn settle(&self, batch: Settle) {
        match self {
            Settler::Inline(publish) => publish.finish(batch, &Ok(())),
            // If the thread has gone, the batch is dropped here: its callers' channels close and
            // they are answered 503.
            Settler::Thread { tx, syncing, .. } => {
                syncing.batches.fetch_add(1, Ordering::AcqRel);
                if let Err(unsent) = tx.send(batch) {
                    syncing.batches.fetch_sub(1, Ordering::AcqRel);
                    drop(unsent);
                }
            }
        }
    }

    /// A sync has failed: nothing more may be committed until a restart.
    pub fn failed(&self) -> bool {
        match self {
            Settler::Inline(_) => false,
            Settler::Thread { failed, .. } => failed.load(Ordering::Acquire),
        }
    }
}

fn settle(
    rx: std::sync::mpsc::Receiver<Settle>,
    mut wal: Wal,
    publish: Publish,
    failed: Arc<AtomicBool>,
    syncing: Arc<Syncing>,
) {
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        batches.extend(rx.try_iter());
        let durable = if failed.load(Ordering::Acquire) {
            Err(not_durable())
        } else if batches.iter().any(|b| b.outcome.is_ok()) {
            wal.sync().map_err(|e| {
                tracing::error!(error = %e, wal = %wal.path.display(),
                    "the database's write-ahead log could not be synced; writes are refused until the service is restarted");
                failed.store(true, Ordering::Release);
                not_durable()
            })
        } else {
            Ok(())
        };
        let n = batches.len();
        for batch in batches {
            publish.finish(batch, &durable);
        }
        if syncing.batches.fetch_sub(n, Ordering::AcqRel) == n {
            syncing.done.notify_waiters();
        }
    }
}

fn not_durable() -> StoreError {
    StoreError::Unavailable("the database could not make the write durable".into())
}

/// The WAL file, opened on first use.
struct Wal {
    path: PathBuf,
    file: Option<(File, u64)>,
}

impl Wal {
    fn new(path: PathBuf) -> Wal {
        Wal { path, file: None }
    }

    fn sync(&mut self) -> std::io::Result<()> {
        // SQLite keeps the WAL for as long as the writer's connection is open and only ever cuts
        // it back, but a descriptor of a file that had been replaced would sync nothing useful:
        // open it again if the path names another file.
        let ino = std::fs::metadata(&self.path)?.ino();
        let file = match &self.file {
            Some((file, open)) if *open == ino => file,
            _ => {
                let file = File::open(&self.path)?;
                let opened = file.metadata()?.ino();
                &self.file.insert((file, opened)).0
            }
        };
        file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish() -> (Publish, watch::Receiver<u64>, Arc<Notify>) {
        let (applied, seen) = watch::channel(0);
        let committed = Arc::new(Notify::new());
        (
            Publish {
                applied,
                committed: committed.clone(),
            },
            seen,
            committed,
        )
    }

    fn batch(
        outcome: Result<(), StoreError>,
        applied: Option<u64>,
    ) -> (Settle, std::sync::mpsc::Receiver<Result<(), StoreError>>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let done: Completion = Box::new(move |r| {
            let _ = tx.send(r);
        });
        (
            Settle {
                outcome,
                completions: vec![done],
                applied,
                notify: true,
            },
            rx,
        )
    }

    const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

    #[test]
    fn batches_are_answered_and_published_once_synced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let wal = dir.path().join("db-wal");
        std::fs::write(&wal, b"frames").expect("write the WAL");
        let (p, seen, _) = publish();
        let settler = Settler::start(wal, p).expect("settler");
        let (ok, ok_rx) = batch(Ok(()), Some(7));
        let (bad, bad_rx) = batch(Err(StoreError::Conflict("no".into())), Some(9));
        settler.settle(ok);
        settler.settle(bad);
        assert!(ok_rx.recv_timeout(WAIT).expect("answered").is_ok());
        assert!(matches!(
            bad_rx.recv_timeout(WAIT).expect("answered"),
            Err(StoreError::Conflict(_))
        ));
        // A failed batch publishes nothing.
        assert_eq!(*seen.borrow(), 7);
        assert!(!settler.failed());
    }

    #[test]
    fn a_failed_sync_refuses_the_batch_and_every_write_after_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        // No WAL where the settler looks: the sync fails, as a disk error would.
        let (p, seen, _) = publish();
        let settler = Settler::start(dir.path().join("missing-wal"), p).expect("settler");
        let (first, first_rx) = batch(Ok(()), Some(5));
        settler.settle(first);
        assert!(matches!(
            first_rx.recv_timeout(WAIT).expect("answered"),
            Err(StoreError::Unavailable(_))
        ));
        assert_eq!(
            *seen.borrow(),
            0,
            "nothing published from a batch not durable"
        );
        assert!(settler.failed());
        // Even once the file is there, nothing more is called durable before a restart.
        std::fs::write(dir.path().join("missing-wal"), b"frames").expect("write the WAL");
        let (second, second_rx) = batch(Ok(()), Some(6));
        settler.settle(second);
        assert!(second_rx.recv_timeout(WAIT).expect("answered").is_err());
        assert_eq!(*seen.borrow(), 0);
    }

    #[test]
    fn a_replaced_wal_is_opened_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db-wal");
        std::fs::write(&path, b"one").expect("write the WAL");
        let mut wal = Wal::new(path.clone());
        wal.sync().expect("sync");
        let first = wal.file.as_ref().expect("opened").1;
        std::fs::remove_file(&path).expect("remove the WAL");
        std::fs::write(&path, b"two").expect("write the new WAL");
        wal.sync().expect("sync");
        let second = wal.file.as_ref().expect("opened").1;
        assert_ne!(first, second);
        assert_eq!(second, std::fs::metadata(&path).expect("stat").ino());
    }
}
