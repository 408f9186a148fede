//! [`PayloadStore`]: queued ciphertexts in append-only files, so a node's
//! memory does not grow with the mail it holds.
//!
//! ```text
//! <data_dir>/payloads/<n>.payload   records: [u32 len][u32 crc32(bytes)][bytes]
//! entries to apply ──> PayloadStore::spill (their commands' ciphertexts, before apply)
//!                  ──> State (mailbox entries hold Blob handles: segment, offset, len)
//! receive stream / snapshot encode ──> Blob::bytes ──> pread + CRC check
//! snapshot build ──> names the segments it refers to, PayloadStore::make_durable fsyncs them
//! ```
//!
//! A segment is written without fsync: until a snapshot refers to it, the
//! log holds the durable copy of its records. A snapshot of the node's own
//! ([`crate::snapshot_files`], "placed" form) names records by segment,
//! offset and length instead of copying them; before it counts, every
//! segment it names is fsynced, and it keeps them while it is current.
//! [`PayloadStore::reopen`] keeps the files an earlier run left so the
//! current snapshot can claim them; [`PayloadStore::release_leftovers`]
//! deletes the rest (their records come back from the log).
//!
//! A segment is unlinked when the last handle on it drops: every entry in it
//! was acked or expired, no snapshot names it, and no snapshot being encoded
//! still reads it. The open segment is closed (and so may go) once it passes
//! `segment_bytes`. A read of an unlinked file still works through the open
//! descriptor.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use router_core::blob::{BlobPlaces, PlacedSources};
use router_core::{Blob, BlobSink, BlobSource};

use crate::stats::StorageStats;

/// A segment is closed once it holds this much (records may end past it).
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Ciphertexts shorter than this stay in memory: a handle is not smaller.
pub const MIN_STORED_BYTES: usize = 256;

const RECORD_HEADER: usize = 8;
/// The most one write hands the kernel.
const WRITE_BYTES: usize = 1 << 20;
/// Not the `seg` of builds before snapshots named segments: those delete
/// every `*.seg` at start, before they refuse a data directory whose
/// snapshot they cannot read, and must not take the named segments with them.
const SEGMENT_SUFFIX: &str = "payload";
/// What those builds left: a cache of snapshot and log, removed at start.
const LEGACY_SEGMENT_SUFFIX: &str = "seg";

/// One segment file. Unlinked on drop once closed.
#[derive(Debug)]
struct Segment {
    id: u64,
    path: PathBuf,
    file: File,
    /// Bytes claimed, and bytes whose write completed.
    len: AtomicU64,
    written: AtomicU64,
    closed: AtomicBool,
    /// Closed, every claim written, and fsynced after that: nothing left to sync.
    synced: AtomicBool,
    stats: Arc<StorageStats>,
}

impl Drop for Segment {
    fn drop(&mut self) {
        self.stats.payload_segments.fetch_sub(1, Ordering::Relaxed);
        self.stats.payload_bytes.fetch_sub(self.len.load(Ordering::Relaxed), Ordering::Relaxed);
        if self.closed.load(Ordering::Relaxed)
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot unlink a payload segment");
        }
    }
}

impl BlobSource for Segment {
    fn read(&self, offset: u64, len: u32) -> io::Result<Bytes> {
        let mut record = vec![0u8; RECORD_HEADER + len as usize];
        self.file.read_exact_at(&mut record, offset)?;
        let stored_len = u32::from_le_bytes(record[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(record[4..8].try_into().expect("4 bytes"));
        let bytes = Bytes::from(record).slice(RECORD_HEADER..);
        if stored_len != len || crc32fast::hash(&bytes) != crc {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("payload record at {offset} of {} is damaged", self.path.display()),
            ));
        }
        Ok(bytes)
    }

    fn place(&self) -> Option<u64> {
        Some(self.id)
    }

    fn sync(&self) -> io::Result<()> {
        if self.synced.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Read before the fsync: a claim written after it is not covered.
        let complete = self.closed.load(Ordering::SeqCst)
            && self.written.load(Ordering::SeqCst) == self.len.load(Ordering::SeqCst);
        self.file.sync_data()?;
        if complete {
            self.synced.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// The node's payload files. Cheap to clone; clones share the open segment.
#[derive(Clone, Debug)]
pub struct PayloadStore {
    dir: PathBuf,
    segment_bytes: u64,
    open: Arc<Mutex<OpenSegment>>,
    leftovers: Arc<Mutex<Leftovers>>,
    stats: Arc<StorageStats>,
}

/// The segments an earlier run left, until the current snapshot claimed
/// the ones it names ([`PayloadStore::reopen`]).
#[derive(Debug, Default)]
struct Leftovers {
    unclaimed: std::collections::BTreeMap<u64, PathBuf>,
    claimed: PlacedSources,
}

#[derive(Debug)]
struct OpenSegment {
    segment: Arc<Segment>,
    next_id: u64,
}

impl PayloadStore {
    /// Opens `dir` (created if missing) after deleting the segments an
    /// earlier run left (a scratch store). Counts what it holds in `stats`
    /// (the node's, shared with the stores).
    pub fn open(dir: &Path, stats: Arc<StorageStats>) -> io::Result<Self> {
        let store = Self::reopen_with(dir, SEGMENT_BYTES, stats)?;
        store.release_leftovers()?;
        Ok(store)
    }

    /// Opens `dir` keeping the segments an earlier run left, for the
    /// current snapshot to claim by decoding through this store
    /// ([`BlobPlaces`]); call [`Self::release_leftovers`] after that.
    pub fn reopen(dir: &Path, stats: Arc<StorageStats>) -> io::Result<Self> {
        Self::reopen_with(dir, SEGMENT_BYTES, stats)
    }

    pub fn reopen_with(dir: &Path, segment_bytes: u64, stats: Arc<StorageStats>) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut leftovers = Leftovers::default();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == SEGMENT_SUFFIX) {
                match path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok()) {
                    Some(id) => drop(leftovers.unclaimed.insert(id, path)),
                    None => std::fs::remove_file(&path)?,
                }
            } else if path.extension().is_some_and(|e| e == LEGACY_SEGMENT_SUFFIX) {
                std::fs::remove_file(&path)?;
            }
        }
        let first = leftovers.unclaimed.keys().next_back().map_or(1, |last| last + 1);
        let segment = new_segment(dir, first, &stats)?;
        Ok(PayloadStore {
            dir: dir.to_path_buf(),
            segment_bytes,
            open: Arc::new(Mutex::new(OpenSegment { segment, next_id: first + 1 })),
            leftovers: Arc::new(Mutex::new(leftovers)),
            stats,
        })
    }

    fn lock_leftovers(&self) -> MutexGuard<'_, Leftovers> {
        self.leftovers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes the segments an earlier run left that nothing claimed, and
    /// answers the claimed ones: what the current snapshot names.
    pub fn release_leftovers(&self) -> io::Result<PlacedSources> {
        let mut leftovers = self.lock_leftovers();
        for path in std::mem::take(&mut leftovers.unclaimed).into_values() {
            std::fs::remove_file(&path)?;
        }
        Ok(std::mem::take(&mut leftovers.claimed))
    }

    /// Makes every segment in `sources` durable (fsync of each not yet
    /// synced, then of the directory that names them): after this a
    /// snapshot naming them may count.
    pub fn make_durable(&self, sources: &PlacedSources) -> io::Result<()> {
        for source in sources.values() {
            source.sync()?;
        }
        if !sources.is_empty() {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, OpenSegment> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves every in-memory blob of `blobs` that is long enough into the
    /// open segment. The records go out in writes of up to 1 MiB from one
    /// reused buffer (measured here: one write per record batch of tens of
    /// MiB ran at a tenth of the speed). On a write error the blobs stay in
    /// memory (nothing is lost; the error is counted and returned).
    pub fn spill(&self, blobs: Vec<&mut Blob>) -> io::Result<()> {
        let mut blobs: Vec<&mut Blob> =
            blobs.into_iter().filter(|b| b.inline().is_some_and(|b| b.len() >= MIN_STORED_BYTES)).collect();
        if blobs.is_empty() {
            return Ok(());
        }
        let total: u64 = blobs.iter().map(|b| (RECORD_HEADER + b.len()) as u64).sum();
        let written = self.reserve(total).and_then(|(segment, base)| {
            let mut staging = Vec::with_capacity((total as usize).min(WRITE_BYTES));
            let (mut staged_at, mut offsets) = (base, Vec::with_capacity(blobs.len()));
            for blob in &blobs {
                let bytes = blob.inline().expect("filtered to in-memory blobs");
                if !staging.is_empty() && staging.len() + RECORD_HEADER + bytes.len() > WRITE_BYTES {
                    segment.file.write_all_at(&staging, staged_at)?;
                    staged_at += staging.len() as u64;
                    staging.clear();
                }
                offsets.push(staged_at + staging.len() as u64);
                append_record(&mut staging, bytes);
            }
            segment.file.write_all_at(&staging, staged_at)?;
            segment.written.fetch_add(total, Ordering::SeqCst);
            Ok((segment, offsets))
        });
        let (segment, offsets) = written.inspect_err(|_| {
            self.stats.payload_write_errors.fetch_add(1, Ordering::Relaxed);
        })?;
        let source: Arc<dyn BlobSource> = segment;
        for (blob, offset) in blobs.iter_mut().zip(offsets) {
            let len = blob.len() as u32;
            **blob = Blob::stored(source.clone(), offset, len);
        }
        Ok(())
    }

    /// Claims `len` bytes at the end of the open segment (closing it first
    /// when full); answers the segment and where the claim starts. What is
    /// claimed but never written (a failed write) is never referenced.
    fn reserve(&self, len: u64) -> io::Result<(Arc<Segment>, u64)> {
        let mut open = self.lock();
        let at = open.segment.len.load(Ordering::Relaxed);
        if at > 0 && at + len > self.segment_bytes {
            let next = new_segment(&self.dir, open.next_id, &self.stats)?;
            open.next_id += 1;
            let full = std::mem::replace(&mut open.segment, next);
            full.closed.store(true, Ordering::SeqCst);
        }
        let segment = open.segment.clone();
        let at = segment.len.load(Ordering::SeqCst);
        segment.len.store(at + len, Ordering::SeqCst);
        self.stats.payload_bytes.fetch_add(len, Ordering::Relaxed);
        Ok((segment, at))
    }
}

/// Claims a segment an earlier run left, on the first blob that names it.
impl BlobPlaces for PayloadStore {
    fn source(&self, place: u64) -> io::Result<Arc<dyn BlobSource>> {
        let mut leftovers = self.lock_leftovers();
        if let Some(source) = leftovers.claimed.get(&place) {
            return Ok(source.clone());
        }
        let path = leftovers.unclaimed.remove(&place).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("payload segment {place} is missing from {}", self.dir.display()),
            )
        })?;
        let file = File::open(&path)?;
        let len = file.metadata()?.len();
        self.stats.payload_segments.fetch_add(1, Ordering::Relaxed);
        self.stats.payload_bytes.fetch_add(len, Ordering::Relaxed);
        let segment: Arc<dyn BlobSource> = Arc::new(Segment {
            id: place,
            path,
            file,
            len: AtomicU64::new(len),
            written: AtomicU64::new(len),
            closed: AtomicBool::new(true),
            synced: AtomicBool::new(true),
            stats: self.stats.clone(),
        });
        leftovers.claimed.insert(place, segment.clone());
        Ok(segment)
    }
}

impl BlobSink for PayloadStore {
    fn min_len(&self) -> usize {
        MIN_STORED_BYTES
    }

    fn store(&self, bytes: &[u8]) -> io::Result<Blob> {
        let mut buf = Vec::with_capacity(RECORD_HEADER + bytes.len());
        append_record(&mut buf, bytes);
        let written = self.reserve(buf.len() as u64).and_then(|(segment, at)| {
            segment.file.write_all_at(&buf, at)?;
            segment.written.fetch_add(buf.len() as u64, Ordering::SeqCst);
            Ok(Blob::stored(segment, at, bytes.len() as u32))
        });
        written.inspect_err(|_| {
            self.stats.payload_write_errors.fetch_add(1, Ordering::Relaxed);
        })
    }
}

fn append_record(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
    buf.extend_from_slice(bytes);
}

fn new_segment(dir: &Path, id: u64, stats: &Arc<StorageStats>) -> io::Result<Arc<Segment>> {
    let path = dir.join(format!("{id:08}.{SEGMENT_SUFFIX}"));
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    stats.payload_segments.fetch_add(1, Ordering::Relaxed);
    Ok(Arc::new(Segment {
        id,
        path,
        file,
        len: AtomicU64::new(0),
        written: AtomicU64::new(0),
        closed: AtomicBool::new(false),
        synced: AtomicBool::new(false),
        stats: stats.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    impl PayloadStore {
        fn open_with_segment_bytes(dir: &Path, segment_bytes: u64) -> Self {
            let store = Self::reopen_with(dir, segment_bytes, Arc::default()).unwrap();
            store.release_leftovers().unwrap();
            store
        }
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".payload"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn spilled_blobs_read_back_and_short_ones_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = PayloadStore::open(dir.path(), Arc::default()).unwrap();
        let long = vec![7u8; 1000];
        let (mut a, mut b) = (Blob::from(long.clone()), Blob::from_static(b"short"));
        store.spill(vec![&mut a, &mut b]).unwrap();
        assert!(a.inline().is_none());
        assert_eq!(a.bytes().unwrap(), Bytes::from(long));
        assert!(b.inline().is_some());
    }

    #[test]
    fn one_spill_larger_than_a_write_reads_back_record_by_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = PayloadStore::open(dir.path(), Arc::default()).unwrap();
        let mut blobs: Vec<Blob> = (0..10u8).map(|i| Blob::from(vec![i; 300 << 10])).collect();
        store.spill(blobs.iter_mut().collect()).unwrap();
        for (i, blob) in blobs.iter().enumerate() {
            assert!(blob.inline().is_none());
            assert_eq!(blob.bytes().unwrap(), Bytes::from(vec![i as u8; 300 << 10]));
        }
    }

    #[test]
    fn a_closed_segment_goes_when_its_last_blob_does_and_the_open_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = PayloadStore::open_with_segment_bytes(dir.path(), 4096);
        let mut blobs: Vec<Blob> = (0..10u8).map(|i| Blob::from(vec![i; 1500])).collect();
        for blob in blobs.iter_mut() {
            store.spill(vec![blob]).unwrap();
        }
        let before = segment_files(dir.path());
        assert!(before.len() >= 4, "10 records of 1.5 KiB in 4 KiB segments: {before:?}");
        // Dropping the first four blobs frees the first segments only.
        blobs.drain(..4);
        let after = segment_files(dir.path());
        assert!(after.len() < before.len(), "{before:?} -> {after:?}");
        assert!(!after.contains(&before[0]));
        for (i, blob) in blobs.iter().enumerate() {
            assert_eq!(blob.bytes().unwrap()[0], i as u8 + 4);
        }
        blobs.clear();
        assert_eq!(segment_files(dir.path()).len(), 1, "the open segment stays");
        assert_eq!(store.stats.snapshot().payload_segments, 1);
    }

    #[test]
    fn a_damaged_record_is_an_error_not_other_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = PayloadStore::open(dir.path(), Arc::default()).unwrap();
        let blob = store.store(&[1u8; 512]).unwrap();
        let path = dir.path().join(&segment_files(dir.path())[0]);
        let file = OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(&[2u8], RECORD_HEADER as u64 + 100).unwrap();
        let err = blob.bytes().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn reopen_keeps_the_segments_a_snapshot_claims_and_release_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = PayloadStore::open_with_segment_bytes(dir.path(), 4096);
        let blobs: Vec<Blob> = (0..4u8).map(|i| store.store(&vec![i; 3000]).unwrap()).collect();
        let places: Vec<u64> = blobs.iter().map(|b| format!("{b:?}")).map(|d| place_of(&d)).collect();
        assert_eq!(places, vec![1, 2, 3, 4], "one record per 4 KiB segment");
        // What a crash leaves: every file, the open segment's included.
        std::mem::forget(blobs);
        std::mem::forget(store);
        let reopened = PayloadStore::reopen_with(dir.path(), 4096, Arc::default()).unwrap();
        let claimed = reopened.source(3).unwrap();
        assert!(Arc::ptr_eq(&claimed, &reopened.source(3).unwrap()), "claimed once");
        assert!(reopened.source(9).is_err(), "a segment that is not there");
        let fresh = reopened.store(&[9u8; 300]).unwrap();
        assert!(format!("{fresh:?}").contains("00000005.payload"), "new segments number past the old: {fresh:?}");
        let kept = reopened.release_leftovers().unwrap();
        assert_eq!(kept.keys().copied().collect::<Vec<_>>(), vec![3]);
        assert_eq!(segment_files(dir.path()), vec!["00000003.payload".to_string(), "00000005.payload".to_string()]);
        drop(kept);
        drop(claimed);
        assert_eq!(segment_files(dir.path()), vec!["00000005.payload".to_string()], "unnamed, a claimed segment goes");
    }

    fn place_of(debug: &str) -> u64 {
        let name = debug.split(".payload").next().unwrap();
        name[name.len() - 8..].parse().unwrap()
    }

    #[test]
    fn a_closed_segment_is_synced_once_and_the_open_one_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = PayloadStore::open_with_segment_bytes(dir.path(), 4096);
        let first = store.store(&[1u8; 3000]).unwrap();
        let second = store.store(&[2u8; 3000]).unwrap();
        let (_, first_named) = router_core::blob::encode_with_places(|| bincode::serialize(&first).unwrap());
        let (_, second_named) = router_core::blob::encode_with_places(|| bincode::serialize(&second).unwrap());
        store.make_durable(&first_named).unwrap();
        store.make_durable(&second_named).unwrap();
        let synced = |named: &PlacedSources| {
            let segment = named.values().next().unwrap();
            format!("{segment:?}").contains("synced: true")
        };
        assert!(synced(&first_named), "closed and fully written: nothing left to sync");
        assert!(!synced(&second_named), "the open segment takes more records after the sync");
    }

    #[test]
    fn open_deletes_what_an_earlier_run_left() {
        let dir = tempfile::tempdir().unwrap();
        let store = PayloadStore::open(dir.path(), Arc::default()).unwrap();
        let _kept = store.store(&[1u8; 512]).unwrap();
        std::fs::write(dir.path().join("00000099.payload"), b"stale").unwrap();
        std::fs::write(dir.path().join("00000007.seg"), b"an older build's").unwrap();
        let _again = PayloadStore::open(dir.path(), Arc::default()).unwrap();
        assert_eq!(
            segment_files(dir.path()),
            vec!["00000100.payload".to_string()],
            "a new open segment, numbered past"
        );
        assert!(!dir.path().join("00000007.seg").exists());
    }
}
