//! Moving the audit trail's per-patient links from `audit_patient_recent`, where they are
//! appended in arrival order, into the per-patient index `audit_patient`, in one sorted merge
//! (one page written per patient touched, not one per link). Shared by the writer and, on
//! PostgreSQL, the audit committers: whoever appended links counts them here, and whoever sees
//! enough waiting merges them; never two merges at once from one service.

use crate::db::DbConn;
use diesel::Connection;
use epaccs_access::audit::AuditRecord;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Links are merged once this many have gathered (about 100 ms of work on SQLite here), or
/// after `Merges::IDLE` with nothing else to do.
#[cfg(not(test))]
const MERGE_AT: u64 = 16_384;
#[cfg(test)]
const MERGE_AT: u64 = 64;

pub(crate) struct Merges {
    /// Links known to be waiting: counted at start, then as audit records are appended (the
    /// links of writes' own audit records are not counted; they are merged with the rest).
    waiting: AtomicU64,
    busy: AtomicBool,
}

impl Merges {
    #[cfg(not(test))]
    pub(crate) const IDLE: Duration = Duration::from_secs(10);
    #[cfg(test)]
    pub(crate) const IDLE: Duration = Duration::from_millis(300);

    pub(crate) fn new(waiting: u64) -> Merges {
        Merges {
            waiting: AtomicU64::new(waiting),
            busy: AtomicBool::new(false),
        }
    }

    pub(crate) fn add(&self, links: u64) {
        self.waiting.fetch_add(links, Ordering::SeqCst);
    }

    pub(crate) fn due(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) >= MERGE_AT
    }

    /// Merges everything waiting, in its own transaction on `conn` (between batches). Returns
    /// at once if another thread is merging; that thread merges again if enough gathered
    /// meanwhile. A failure leaves the links waiting (searches read both tables) and is tried
    /// again at the next occasion.
    pub(crate) fn merge(&self, conn: &mut DbConn) {
        loop {
            if self.busy.swap(true, Ordering::SeqCst) {
                return;
            }
            let merged = self.merge_once(conn);
            self.busy.store(false, Ordering::SeqCst);
            // Links counted while this merge ran were left to it (their thread saw it busy).
            if !merged || !self.due() {
                return;
            }
        }
    }

    fn merge_once(&self, conn: &mut DbConn) -> bool {
        let seen = self.waiting.load(Ordering::SeqCst);
        // Everything waiting: one batch can bring more than `MERGE_AT` (e.g. searches naming
        // many patients), and the backlog never outgrows a merge.
        let limit = seen.max(MERGE_AT);
        match conn.transaction(|c| crate::audit::merge_recent(c, limit as usize)) {
            Ok(moved) => {
                // Took everything there was: what was counted before is gone (the count may
                // have missed some), and links counted since are still waiting.
                let done = if moved < limit { seen } else { moved };
                let _ = self
                    .waiting
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                        Some(w.saturating_sub(done))
                    });
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "merging the audit trail's patient links failed; will retry");
                false
            }
        }
    }
}

/// A timer for `next_or_merge` (a thread of the store waits on a channel with it).
pub(crate) fn idle_timer() -> Result<tokio::runtime::Runtime, crate::StoreError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| crate::StoreError::Unavailable(format!("cannot start a timer: {e}")))
}

/// Waits for the next item on `rx` (None once every sender is gone), merging the waiting links
/// each time `Merges::IDLE` passes with nothing: a service that goes quiet does not leave them
/// staged.
pub(crate) fn next_or_merge<T>(
    rx: &mut tokio::sync::mpsc::Receiver<T>,
    timer: &tokio::runtime::Runtime,
    conn: &mut Option<DbConn>,
    merges: &Merges,
) -> Option<T> {
    loop {
        match timer.block_on(async { tokio::time::timeout(Merges::IDLE, rx.recv()).await }) {
            Ok(next) => return next,
            Err(_) => {
                if let Some(c) = conn.as_mut() {
                    merges.merge(c);
                }
            }
        }
    }
}

pub(crate) fn links_in<R: std::borrow::Borrow<AuditRecord>>(recs: &[R]) -> u64 {
    recs.iter().map(|r| r.borrow().patients.len() as u64).sum()
}
