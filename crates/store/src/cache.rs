//! A read-through cache of what reads look up most: current resource rows (with the sharing facts
//! they were read with), a patient's resources for the emergency summary, and the NHS-number and
//! demographic look-ups. It holds rows *before* the gate: every request is still decided by its
//! own gate, on the facts the row was read with.
//!
//! It is coherent because this process is the only writer (see `instance.rs`): the group-commit
//! writer empties it after every committed batch that may have changed clinical data or sharing
//! facts, before any caller in that batch is answered. Audit-only batches (every read's record)
//! leave it alone, so a read-heavy load keeps it warm.
//!
//! The race a read-through cache must not lose — a reader that read a row just before a commit
//! putting it into the cache just after that commit emptied it — is closed with a generation
//! counter: the writer bumps the generation *before* emptying; a reader notes the generation
//! *before* its read transaction begins and, after inserting, takes its entry out again if the
//! generation has moved. Either the writer's emptying comes after the insert, or the reader sees
//! the bump; a stale row never stays.

use crate::resources::ResourceRow;
use crate::StoreError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes charged for an entry besides its JSON (keys, facts, bookkeeping).
const ENTRY_OVERHEAD: u64 = 256;

/// A cached answer.
#[derive(Debug)]
pub(crate) enum Cached {
    /// One current resource (`Type/id`).
    Row(ResourceRow),
    /// Several rows (a patient's resources of some types).
    Rows(Vec<ResourceRow>),
    /// Ids (a look-up's candidates).
    Ids(Vec<String>),
}

fn wrong_kind() -> StoreError {
    StoreError::Internal("read cache holds the wrong kind of answer".into())
}

impl Cached {
    pub fn row(&self) -> Result<&ResourceRow, StoreError> {
        match self {
            Cached::Row(r) => Ok(r),
            _ => Err(wrong_kind()),
        }
    }

    pub fn rows(&self) -> Result<&[ResourceRow], StoreError> {
        match self {
            Cached::Rows(r) => Ok(r),
            _ => Err(wrong_kind()),
        }
    }

    pub fn ids(&self) -> Result<&[String], StoreError> {
        match self {
            Cached::Ids(ids) => Ok(ids),
            _ => Err(wrong_kind()),
        }
    }
}

fn row_weight(row: &ResourceRow) -> u64 {
    ENTRY_OVERHEAD + row.content.len() as u64 + row.facts.as_ref().map_or(0, |f| f.len() as u64)
}

#[derive(Clone)]
struct Weigher;

impl quick_cache::Weighter<String, Arc<Cached>> for Weigher {
    fn weight(&self, key: &String, v: &Arc<Cached>) -> u64 {
        key.len() as u64
            + match v.as_ref() {
                Cached::Row(r) => row_weight(r),
                Cached::Rows(rows) => ENTRY_OVERHEAD + rows.iter().map(row_weight).sum::<u64>(),
                Cached::Ids(ids) => {
                    ENTRY_OVERHEAD + ids.iter().map(|i| i.len() as u64 + 24).sum::<u64>()
                }
            }
    }
}

pub(crate) struct ReadCache {
    generation: AtomicU64,
    rows: Option<quick_cache::sync::Cache<String, Arc<Cached>, Weigher>>,
}

/// Where a reader stood before its read transaction began.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket(u64);

/// The key of one current resource.
pub(crate) fn key(ty: &str, id: &str) -> String {
    let mut k = String::with_capacity(ty.len() + id.len() + 1);
    k.push_str(ty);
    k.push('/');
    k.push_str(id);
    k
}

impl ReadCache {
    /// `bytes` = 0 turns the cache off.
    pub fn new(bytes: u64) -> Arc<ReadCache> {
        let rows = (bytes > 0).then(|| {
            // Estimated item count only sizes the internal tables.
            let items = (bytes / 4096).max(64) as usize;
            quick_cache::sync::Cache::with_weighter(items, bytes, Weigher)
        });
        Arc::new(ReadCache {
            generation: AtomicU64::new(0),
            rows,
        })
    }

    pub fn get(&self, key: &str) -> Option<Arc<Cached>> {
        self.rows.as_ref()?.get(key)
    }

    /// Taken before the read transaction that may fill the cache begins.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.generation.load(Ordering::SeqCst))
    }

    /// Offers an answer read in a transaction that began after `ticket` was taken.
    pub fn offer(&self, ticket: Ticket, key: String, value: Arc<Cached>) {
        let Some(rows) = &self.rows else { return };
        if self.generation.load(Ordering::SeqCst) != ticket.0 {
            return;
        }
        rows.insert(key.clone(), value);
        if self.generation.load(Ordering::SeqCst) != ticket.0 {
            rows.remove(&key);
        }
    }

    /// Called by the writer after a batch that may have changed data, before answering it.
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(rows) = &self.rows {
            rows.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, content: &str) -> ResourceRow {
        ResourceRow {
            res_type: "Patient".into(),
            id: id.into(),
            version_id: 1,
            patient_key: Some(id.into()),
            writer_org: "A1".into(),
            deleted: false,
            last_updated: 0,
            content: content.into(),
            facts: None,
        }
    }

    #[test]
    fn a_row_read_before_an_invalidation_is_not_kept() {
        let c = ReadCache::new(1 << 20);
        let t = c.ticket();
        c.invalidate_all(); // a commit lands while the reader is reading
        c.offer(
            t,
            key("Patient", "p1"),
            Arc::new(Cached::Row(row("p1", "old"))),
        );
        assert!(c.get("Patient/p1").is_none());
        let t = c.ticket();
        c.offer(
            t,
            key("Patient", "p1"),
            Arc::new(Cached::Row(row("p1", "new"))),
        );
        match c.get("Patient/p1").as_deref() {
            Some(Cached::Row(r)) => assert_eq!(r.content, "new"),
            other => panic!("expected the new row, got {other:?}"),
        }
        c.invalidate_all();
        assert!(c.get("Patient/p1").is_none());
    }

    #[test]
    fn off_when_sized_zero() {
        let c = ReadCache::new(0);
        let t = c.ticket();
        c.offer(
            t,
            key("Patient", "p1"),
            Arc::new(Cached::Row(row("p1", "x"))),
        );
        assert!(c.rows.is_none());
        assert!(c.get("Patient/p1").is_none());
    }
}
