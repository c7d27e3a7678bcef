//! The audit journal: where a read's audit record is made durable before the response is sent.
//!
//! Every read appends an AuditEvent. Inserting each into the audit tables on the group-commit
//! path costs a B-tree insert per index per record, in small batches, on the one writer thread
//! that also carries every clinical write. Instead, the journal thread appends the records of
//! all waiting requests to a log file with one `write` and one `fdatasync`, and answers them;
//! only then are the records handed to the writer, which copies them into the audit tables
//! behind the responses (`Job::Copy`), together with the sequence number it has copied up to
//! (`audit_journal.applied`). The copy and that number commit in one transaction, so a record
//! is copied exactly once, and after a crash start-up copies whatever the log holds beyond it
//! before the service takes a request.
//!
//! Searches of the trail first wait until every record acknowledged so far has been copied
//! (`Writer::audit_settled`), so a privacy officer never misses an access that has been answered.
//!
//! The log is a directory of segments named by their first sequence number, each line one
//! JSON record `{"seq":N,"record":{..}}`. A segment is closed at `SEGMENT_BYTES` and deleted once
//! everything in it has been copied. A torn last line (a crash during an unacknowledged append)
//! is ignored; a damaged line elsewhere is reported and skipped, never fatal: a record store that
//! will not start at 3 a.m. is worse than one lost audit line, and the damage is logged loudly.

use crate::StoreError;
use epaccs_access::audit::AuditRecord;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// A segment is closed once it holds this many bytes (small in unit tests, to exercise it).
#[cfg(not(test))]
pub const SEGMENT_BYTES: u64 = 8 << 20;
#[cfg(test)]
pub const SEGMENT_BYTES: u64 = 64 << 10;
/// The most records appended with one write.
const MAX_BATCH: usize = 2048;
/// Records are handed to the writer in batches of about this many (each commit of the audit
/// tables costs a fixed amount on top of its records: measured on SQLite, a batch of 30 costs
/// about 60 us per record, a batch of 300 about 40), or once the oldest is `COPY_DELAY` old.
const COPY_RECORDS: usize = 256;
const COPY_DELAY: std::time::Duration = std::time::Duration::from_millis(25);

#[derive(Serialize)]
struct EntryRef<'a> {
    seq: u64,
    record: &'a AuditRecord,
}

#[derive(Deserialize)]
struct Entry {
    seq: u64,
    record: AuditRecord,
}

/// What the log held at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every readable record, in sequence order.
    pub records: Vec<(u64, AuditRecord)>,
    /// The highest sequence number seen (0 if none).
    pub last_seq: u64,
    /// Lines that could not be read, other than a torn last line.
    pub damaged: usize,
    /// The segment files read (deleted once their records are in the database).
    pub segments: Vec<PathBuf>,
}

/// A segment is named by its first sequence number, zero-padded so name order is sequence order.
fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.log"))
}

fn segment_paths(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    // See `segment_path`.
    paths.sort();
    Ok(paths)
}

/// Whether `dir` holds any segment; false if it cannot be read.
pub fn has_segments(dir: &Path) -> bool {
    segment_paths(dir).is_ok_and(|p| !p.is_empty())
}

/// Reads every segment in `dir` (which need not exist).
pub fn recover(dir: &Path) -> io::Result<Recovered> {
    let mut out = Recovered {
        segments: segment_paths(dir)?,
        ..Default::default()
    };
    for path in &out.segments {
        let bytes = fs::read(path)?;
        // A segment is zero-filled when created: its records end at the first NUL.
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        let mut lines = bytes[..end].split_inclusive(|b| *b == b'\n').peekable();
        while let Some(line) = lines.next() {
            let complete = line.last() == Some(&b'\n');
            match serde_json::from_slice::<Entry>(line) {
                Ok(e) if complete => {
                    out.last_seq = out.last_seq.max(e.seq);
                    out.records.push((e.seq, e.record));
                }
                // Cut short at the end of the written part: an append that never completed,
                // so nobody was told it was durable.
                _ if !complete && lines.peek().is_none() => {}
                _ => {
                    out.damaged += 1;
                    tracing::error!(segment = %path.display(), "a damaged audit journal line was skipped");
                }
            }
        }
    }
    out.records.sort_by_key(|(seq, _)| *seq);
    out.records.dedup_by_key(|(seq, _)| *seq);
    Ok(out)
}

/// Makes a directory entry durable (a new or removed segment).
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

struct Segment {
    path: PathBuf,
    file: File,
    /// Bytes written so far (records end here; zeros follow).
    len: u64,
}

impl Segment {
    /// A new segment, zero-filled to `SEGMENT_BYTES` and made durable before any record is
    /// written to it. Appends then overwrite allocated blocks without changing the file's size,
    /// so each `fdatasync` flushes data only, not the file system's journal.
    fn create(dir: &Path, first_seq: u64) -> io::Result<Segment> {
        let path = segment_path(dir, first_seq);
        let file = zero_filled(&path)?;
        sync_dir(dir)?;
        Ok(Segment { path, file, len: 0 })
    }

    /// A new segment made from a spare prepared by `Spares` (a rename, not a fill).
    fn from_spare(dir: &Path, spare: &Path, first_seq: u64) -> io::Result<Segment> {
        let path = segment_path(dir, first_seq);
        fs::rename(spare, &path)?;
        sync_dir(dir)?;
        let file = OpenOptions::new().write(true).open(&path)?;
        Ok(Segment { path, file, len: 0 })
    }
}

fn zero_filled(path: &Path) -> io::Result<File> {
    let mut file = OpenOptions::new().create_new(true).write(true).open(path)?;
    let chunk = SEGMENT_BYTES.min(1 << 20);
    let zeros = vec![0u8; chunk as usize];
    for _ in 0..SEGMENT_BYTES / chunk {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    Ok(file)
}

/// Zero-filling a segment takes milliseconds, which every request waiting on the journal
/// would feel; a helper thread keeps one spare ready (`*.spare`, never read by `recover`), so
/// starting a segment is a rename.
struct Spares {
    ready: std::sync::mpsc::Receiver<PathBuf>,
    want: std::sync::mpsc::Sender<()>,
}

impl Spares {
    fn start(dir: &Path) -> io::Result<Spares> {
        // Spares left by an earlier run are incomplete or unneeded.
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|x| x == "spare") {
                fs::remove_file(&path)?;
            }
        }
        let (want, wanted) = std::sync::mpsc::channel::<()>();
        let (made, ready) = std::sync::mpsc::channel::<PathBuf>();
        let dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("epaccs-audit-spare".into())
            .spawn(move || {
                let mut n = 0u64;
                while wanted.recv().is_ok() {
                    n += 1;
                    let path = dir.join(format!("{n}.spare"));
                    match zero_filled(&path) {
                        Ok(_) => {
                            if made.send(path).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot prepare an audit journal segment");
                            let _ = fs::remove_file(&path);
                        }
                    }
                }
            })?;
        want.send(()).ok();
        Ok(Spares { ready, want })
    }

    /// The next segment: the spare if it is ready (and another is asked for), else made now.
    fn next(&self, dir: &Path, first_seq: u64) -> io::Result<Segment> {
        match self.ready.try_recv() {
            Ok(spare) => {
                self.want.send(()).ok();
                Segment::from_spare(dir, &spare, first_seq)
            }
            Err(_) => Segment::create(dir, first_seq),
        }
    }
}

type Waiter = oneshot::Sender<Result<(), StoreError>>;

/// What the journal thread hands the writer: records to copy, and the sequence number the copy
/// reaches.
pub struct Copy {
    pub records: Vec<AuditRecord>,
    pub through: u64,
}

/// The appending side, shared by every request.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<(AuditRecord, Waiter)>,
    acknowledged: Arc<AtomicU64>,
    applied: watch::Receiver<u64>,
}

impl Journal {
    /// Starts the journal thread. `next_seq` continues after everything already recovered and
    /// copied; `copy` receives each durable batch for the writer; `applied` follows the
    /// writer's progress (segments are deleted behind it).
    pub fn start(
        dir: &Path,
        next_seq: u64,
        copy: Box<dyn Fn(Copy) -> bool + Send>,
        applied: watch::Receiver<u64>,
    ) -> Result<Journal, StoreError> {
        let setup =
            |e: io::Error| StoreError::Unavailable(format!("audit journal {}: {e}", dir.display()));
        fs::create_dir_all(dir).map_err(setup)?;
        let segment = Segment::create(dir, next_seq).map_err(setup)?;
        let spares = Spares::start(dir).map_err(setup)?;
        let (tx, rx) = mpsc::channel(8192);
        let acknowledged = Arc::new(AtomicU64::new(next_seq - 1));
        let thread = Appender {
            dir: dir.to_path_buf(),
            segment,
            spares,
            closed: VecDeque::new(),
            next_seq,
            acknowledged: acknowledged.clone(),
            applied: applied.clone(),
            copy,
        };
        std::thread::Builder::new()
            .name("epaccs-audit-journal".into())
            .spawn(move || thread.run(rx))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Journal {
            tx,
            acknowledged,
            applied,
        })
    }

    /// Appends `rec`; resolves once it is on disk.
    pub async fn append(&self, rec: AuditRecord) -> Result<(), StoreError> {
        let (done_tx, done_rx) = oneshot::channel();
        self.tx
            .send((rec, done_tx))
            .await
            .map_err(|_| StoreError::Unavailable("the audit journal has stopped".into()))?;
        done_rx.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the audit journal did not accept the record".into(),
            ))
        })
    }

    /// Waits until every record acknowledged before this call is in the audit tables.
    pub async fn settled(&self, wait: std::time::Duration) -> Result<(), StoreError> {
        let target = self.acknowledged.load(Ordering::Acquire);
        let mut applied = self.applied.clone();
        let reached = tokio::time::timeout(wait, async {
            applied.wait_for(|a| *a >= target).await.map(|_| ())
        })
        .await;
        match reached {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Unavailable("the writer has stopped".into())),
            Err(_) => Err(StoreError::Unavailable(
                "timed out waiting for the audit trail to be indexed".into(),
            )),
        }
    }
}

struct Appender {
    dir: PathBuf,
    segment: Segment,
    spares: Spares,
    /// Closed segments and the last sequence number in each.
    closed: VecDeque<(PathBuf, u64)>,
    next_seq: u64,
    acknowledged: Arc<AtomicU64>,
    applied: watch::Receiver<u64>,
    copy: Box<dyn Fn(Copy) -> bool + Send>,
}

impl Appender {
    fn run(mut self, mut rx: mpsc::Receiver<(AuditRecord, Waiter)>) {
        let mut buf = Vec::with_capacity(64 << 10);
        // Durable records not yet handed to the writer, and when the oldest became durable.
        let mut held: Vec<AuditRecord> = Vec::new();
        let mut since = std::time::Instant::now();
        // Only to wait for the next record with a time limit.
        let timer = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .ok();
        loop {
            let first = match rx.try_recv() {
                Ok(item) => item,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Idle: wait for more until the held records are `COPY_DELAY` old, then
                    // hand them over (handing each quiet moment's one or two records over at
                    // once made the writer commit, and fsync, once per read at low load).
                    let wait = COPY_DELAY.saturating_sub(since.elapsed());
                    let next = match &timer {
                        Some(timer) if !held.is_empty() => timer
                            .block_on(async { tokio::time::timeout(wait, rx.recv()).await })
                            .ok(),
                        _ => None,
                    };
                    match next {
                        Some(Some(item)) => item,
                        Some(None) => break,
                        None => {
                            if !held.is_empty() && !self.hand_over(&mut held) {
                                return;
                            }
                            match rx.blocking_recv() {
                                Some(item) => item,
                                None => break,
                            }
                        }
                    }
                }
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            self.forget_copied();
            let outcome = self.append(&mut buf, &batch);
            let (records, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            for w in waiters {
                let _ = w.send(outcome.clone());
            }
            if outcome.is_ok() {
                if held.is_empty() {
                    since = std::time::Instant::now();
                }
                held.extend(records);
                if (held.len() >= COPY_RECORDS || since.elapsed() >= COPY_DELAY)
                    && !self.hand_over(&mut held)
                {
                    return;
                }
            }
        }
        if !held.is_empty() {
            self.hand_over(&mut held);
        }
    }

    /// Hands the held records to the writer; false once the writer has stopped (what is on
    /// disk is then copied at the next start).
    fn hand_over(&mut self, held: &mut Vec<AuditRecord>) -> bool {
        let records = std::mem::take(held);
        (self.copy)(Copy {
            records,
            through: self.next_seq - 1,
        })
    }

    /// Writes the batch durably, or leaves the segment as it was.
    fn append(
        &mut self,
        buf: &mut Vec<u8>,
        batch: &[(AuditRecord, Waiter)],
    ) -> Result<(), StoreError> {
        buf.clear();
        for (i, (record, _)) in batch.iter().enumerate() {
            let entry = EntryRef {
                seq: self.next_seq + i as u64,
                record,
            };
            serde_json::to_writer(&mut *buf, &entry)
                .map_err(|e| StoreError::Internal(format!("audit record: {e}")))?;
            buf.push(b'\n');
        }
        if self.segment.len > 0 && self.segment.len + buf.len() as u64 > SEGMENT_BYTES {
            match self.spares.next(&self.dir, self.next_seq) {
                Ok(next) => {
                    let old = std::mem::replace(&mut self.segment, next);
                    self.closed.push_back((old.path, self.next_seq - 1));
                }
                // Keep appending to the old one.
                Err(e) => tracing::warn!(error = %e, "cannot start a new audit journal segment"),
            }
        }
        let written = self
            .segment
            .file
            .write_all_at(buf, self.segment.len)
            .and_then(|()| self.segment.file.sync_data());
        match written {
            Ok(()) => {
                self.segment.len += buf.len() as u64;
                self.next_seq += batch.len() as u64;
                self.acknowledged
                    .store(self.next_seq - 1, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "the audit journal could not be written");
                // None of the batch is acknowledged; the next batch is written over whatever
                // part of it reached the file. Its sequence numbers are not used again, so no
                // number ever names two records.
                self.next_seq += batch.len() as u64;
                Err(StoreError::Unavailable(
                    "the audit trail could not be written".into(),
                ))
            }
        }
    }

    /// Deletes closed segments whose records are all in the database.
    fn forget_copied(&mut self) {
        let applied = *self.applied.borrow();
        let mut removed = false;
        while let Some((path, last)) = self.closed.front() {
            if *last > applied {
                break;
            }
            if let Err(e) = fs::remove_file(path) {
                tracing::warn!(error = %e, segment = %path.display(), "cannot remove an audit journal segment");
            }
            self.closed.pop_front();
            removed = true;
        }
        if removed {
            let _ = sync_dir(&self.dir);
        }
    }
}

/// Removes segments read at start-up once their records are in the database.
pub fn remove_segments(dir: &Path, segments: &[PathBuf]) -> io::Result<()> {
    for p in segments {
        match fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if !segments.is_empty() {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::DatabaseUrl;
    use crate::testdb::count;
    use crate::writer::Writer;

    fn record(i: u64) -> AuditRecord {
        AuditRecord {
            user_id: Some("u1".into()),
            content: "{}".into(),
            ..crate::testdb::audit_record(
                format!("journal-{i:04}"),
                1_000 + i as i64,
                vec![format!("p{}", i % 3)],
            )
        }
    }

    fn line(seq: u64) -> String {
        let mut s = serde_json::to_string(&EntryRef {
            seq,
            record: &record(seq),
        })
        .expect("json");
        s.push('\n');
        s
    }

    #[test]
    fn recovery_skips_a_torn_last_line_and_reports_damage_elsewhere() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = format!("{}{{\"seq\":2,\"rec\n{}", line(1), line(3));
        fs::write(segment_path(dir.path(), 1), first).expect("write");
        let torn = line(5);
        // As a crash leaves a zero-filled segment: a record, half of the next, then zeros.
        let mut second = format!("{}{}", line(4), &torn[..torn.len() / 2]).into_bytes();
        second.resize(second.len() + 4096, 0);
        fs::write(segment_path(dir.path(), 4), second).expect("write");
        let found = recover(dir.path()).expect("recover");
        let seqs: Vec<u64> = found.records.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![1, 3, 4]);
        assert_eq!(found.records[1].1, record(3));
        assert_eq!(found.damaged, 1, "the cut line inside the first segment");
        assert_eq!(found.last_seq, 4);
        assert_eq!(found.segments.len(), 2);
    }

    /// Acknowledged records reach the audit tables; what a crash left in the journal is copied
    /// at the next start, exactly once; numbering continues after it.
    fn journaled_records_survive_a_restart(url: &DatabaseUrl) {
        url.migrate().expect("migrate");
        let dir = tempfile::tempdir().expect("temp dir");
        let journal = dir.path().join("journal");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let mut conn = url.connect(false).expect("connect");
        let events = "SELECT COUNT(*) AS n FROM audit_event";

        let w = Writer::start(
            url.clone(),
            crate::cache::ReadCache::new(0),
            Some(journal.clone()),
            1,
        )
        .expect("writer");
        rt.block_on(async {
            // Appended together, as concurrent requests would be.
            let mut appends = tokio::task::JoinSet::new();
            for i in 1..=5 {
                let w = w.clone();
                appends.spawn(async move { w.audit(record(i)).await });
            }
            while let Some(r) = appends.join_next().await {
                r.expect("task").expect("append");
            }
            w.audit_settled().await.expect("settled");
        });
        assert_eq!(count(&mut conn, events), 5);
        assert_eq!(
            count(
                &mut conn,
                "SELECT (SELECT COUNT(*) FROM audit_patient) + (SELECT COUNT(*) FROM audit_patient_recent) AS n"
            ),
            5
        );
        drop(w);

        // What a crash leaves: records 6..=8 acknowledged but never copied.
        let tail: String = (6..=8).map(line).collect();
        fs::write(segment_path(&journal, 6), tail).expect("write");
        let w = Writer::start(
            url.clone(),
            crate::cache::ReadCache::new(0),
            Some(journal.clone()),
            1,
        )
        .expect("writer after the crash");
        assert_eq!(
            count(&mut conn, events),
            8,
            "copied before the first request"
        );
        assert_eq!(
            count(
                &mut conn,
                "SELECT COUNT(*) AS n FROM audit_event WHERE id = 'journal-0007'"
            ),
            1
        );
        // The old segments are gone; the next record continues the numbering.
        rt.block_on(async {
            w.audit(record(9)).await.expect("append");
            w.audit_settled().await.expect("settled");
        });
        let names: Vec<String> = segment_paths(&journal)
            .expect("list")
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![format!("{:020}.log", 9)]);
        assert_eq!(count(&mut conn, events), 9);
        drop(w);

        // Starting again copies nothing twice.
        let w = Writer::start(
            url.clone(),
            crate::cache::ReadCache::new(0),
            Some(journal),
            1,
        )
        .expect("writer again");
        assert_eq!(count(&mut conn, events), 9);
        drop(w);
    }

    /// Many segments' worth: every record is copied once, copied segments are deleted, and
    /// a restart copies nothing again.
    #[test]
    fn segments_roll_over_and_are_removed_once_copied() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = DatabaseUrl::Sqlite(dir.path().join("roll.db"));
        url.migrate().expect("migrate");
        let journal = dir.path().join("journal");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let w = Writer::start(
            url.clone(),
            crate::cache::ReadCache::new(0),
            Some(journal.clone()),
            1,
        )
        .expect("writer");
        let n = 2_000u64;
        rt.block_on(async {
            let mut appends = tokio::task::JoinSet::new();
            for i in 1..=n {
                let w = w.clone();
                appends.spawn(async move { w.audit(record(i)).await });
            }
            while let Some(r) = appends.join_next().await {
                r.expect("task").expect("append");
            }
            w.audit_settled().await.expect("settled");
            // One more append lets the journal delete what has been copied.
            w.audit(record(n + 1)).await.expect("append");
            w.audit_settled().await.expect("settled");
        });
        let mut conn = url.connect(false).expect("connect");
        let events = "SELECT COUNT(*) AS n FROM audit_event";
        assert_eq!(count(&mut conn, events), n as i64 + 1);
        // Every record's patient link is there once, and the writer has merged most of them
        // into the per-patient index as they gathered (64 at a time under test).
        let merged = count(&mut conn, "SELECT COUNT(*) AS n FROM audit_patient");
        let waiting = count(&mut conn, "SELECT COUNT(*) AS n FROM audit_patient_recent");
        assert_eq!(merged + waiting, n as i64 + 1);
        assert!(merged >= n as i64 - 64 * 8, "only {merged} links merged");
        let bytes: usize = (1..=n).map(|i| line(i).len()).sum();
        assert!(
            bytes as u64 > 4 * SEGMENT_BYTES,
            "the test must span segments"
        );
        let left = segment_paths(&journal).expect("list").len();
        assert!(
            left <= 2,
            "{left} segments left after everything was copied"
        );
        drop(w);
        let w = Writer::start(
            url.clone(),
            crate::cache::ReadCache::new(0),
            Some(journal),
            1,
        )
        .expect("writer again");
        assert_eq!(count(&mut conn, events), n as i64 + 1);
        drop(w);
    }

    #[test]
    fn journaled_records_survive_a_restart_on_sqlite() {
        let dir = tempfile::tempdir().expect("temp dir");
        journaled_records_survive_a_restart(&DatabaseUrl::Sqlite(dir.path().join("j.db")));
    }

    #[test]
    fn journaled_records_survive_a_restart_on_postgres() {
        crate::testdb::with_postgres(journaled_records_survive_a_restart);
    }
}
