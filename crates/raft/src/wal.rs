//! The Raft log in append-only segment files: [`WalLogStore`].
//!
//! A directory of segments `00000000000000000001.wal`, `…02.wal`, each an
//! 8-byte file header ([`FILE_MAGIC`]) followed by frames. One write is one
//! frame, and it is fsynced before the next one is written:
//!
//! ```text
//! frame  = [u32 body length][u32 crc32 of body][body]           (little endian)
//! body   = record*
//! record = [u8 kind][u32 length][payload]
//!   kind 1 entry      [u64 term][u64 leader node][u64 index][codec-encoded Entry]
//!   kind 2 vote       codec-encoded Vote
//!   kind 3 committed  codec-encoded Option<LogId>
//!   kind 4 purged     codec-encoded LogId (every entry up to it is gone)
//!   kind 5 truncate   [u64 index] (every entry from it on is gone)
//! ```
//!
//! Why frames, and one at a time: openraft hands [`RaftLogStorage::append`]
//! every entry that queued up meanwhile, so one append is one frame and one
//! fdatasync (group commit). Since every frame is synced before the next is
//! written, at most the last frame of the last segment can be unsynced. So
//! on open a damaged frame there is a torn write and is cut; a damaged frame
//! anywhere else was synced, so the data directory is corrupt and the node
//! refuses to start (it must not vote or serve with a log it cannot trust).
//!
//! Records replay in order to rebuild the index (entry index -> position);
//! entries are not decoded at open. A new segment starts once the active one
//! passes [`SEGMENT_BYTES`], and its first frame repeats the vote, committed
//! and purged ids, so a purge can unlink every older segment whose entries are
//! all purged without losing them. `committed` is only a hint (openraft
//! re-applies from the snapshot otherwise), so it rides in the next frame
//! instead of costing an fsync of its own.
//!
//! Recent entries stay decoded in a cache of [`CACHE_BYTES`], so replication
//! and apply of fresh entries read neither the disk nor the decoder.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{CommittedLeaderId, ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogId, RaftLogReader};

use crate::codec::{self, io_error};
use crate::stats::StorageStats;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// First bytes of every segment: what it is and the layout version.
pub const FILE_MAGIC: &[u8; 8] = b"IRWAL\0\0\x01";
/// A new segment starts once the active one holds this much.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Encoded bytes of recent entries kept decoded in memory.
pub const CACHE_BYTES: usize = 32 << 20;
/// Refused at open: no append writes a frame this large (openraft sends at
/// most `max_payload_entries` per call, and one entry is bounded by the
/// gRPC message limit).
const MAX_FRAME_BYTES: u32 = 1 << 30;
/// An append larger than this is written as several frames.
const FRAME_SPLIT_BYTES: usize = 64 << 20;

const KIND_ENTRY: u8 = 1;
const KIND_VOTE: u8 = 2;
const KIND_COMMITTED: u8 = 3;
const KIND_PURGED: u8 = 4;
const KIND_TRUNCATE: u8 = 5;

/// Where an entry's encoded bytes are.
#[derive(Clone, Copy, Debug)]
struct Position {
    segment: u64,
    offset: u64,
    len: u32,
    log_id: LogId,
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    len: u64,
    /// Highest entry index written to this segment.
    max_index: Option<u64>,
}

#[derive(Debug, Default)]
struct Index {
    segments: BTreeMap<u64, Segment>,
    /// Entry `first + i` is at `positions[i]`.
    first: u64,
    positions: VecDeque<Position>,
    /// Decoded entries of the tail of `positions`, with their encoded size.
    cache: VecDeque<(Entry, usize)>,
    cache_bytes: usize,
    vote: Option<Vote>,
    committed: Option<LogId>,
    /// `committed` changed since the last frame.
    committed_unwritten: bool,
    purged: Option<LogId>,
}

impl Index {
    fn next_index(&self) -> u64 {
        self.first + self.positions.len() as u64
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.positions.back().map(|p| p.log_id)
    }

    fn active(&self) -> (u64, &Segment) {
        let (id, s) = self.segments.last_key_value().expect("a WAL always has an active segment");
        (*id, s)
    }

    fn add(&mut self, position: Position) -> Result<(), String> {
        let index = position.log_id.index;
        if self.positions.is_empty() {
            if self.purged.is_some_and(|p| index <= p.index) {
                return Err(format!("entry {index} is at or before the purge point {:?}", self.purged));
            }
            self.first = index;
        } else if index != self.next_index() {
            return Err(format!(
                "entry {index} follows entry {} (a gap or an overwrite without truncate)",
                self.next_index() - 1
            ));
        }
        self.positions.push_back(position);
        Ok(())
    }

    fn truncate(&mut self, since: u64) {
        while self.positions.back().is_some_and(|p| p.log_id.index >= since) {
            self.positions.pop_back();
            // The cache holds the log's last entries: the one just dropped is
            // its last one whenever it holds any (also when it covers only a
            // tail of the log, after a restart or an eviction).
            if let Some((_, size)) = self.cache.pop_back() {
                self.cache_bytes -= size;
            }
        }
    }

    /// Drops entries up to `upto`; how many there were.
    fn purge(&mut self, upto: LogId) -> u64 {
        if self.purged.is_some_and(|p| p.index >= upto.index) {
            return 0;
        }
        self.purged = Some(upto);
        let mut dropped = 0;
        while self.positions.front().is_some_and(|p| p.log_id.index <= upto.index) {
            self.positions.pop_front();
            self.first += 1;
            dropped += 1;
            if self.cache.len() > self.positions.len() {
                let (_, size) = self.cache.pop_front().expect("cache is not longer than the log");
                self.cache_bytes -= size;
            }
        }
        if self.positions.is_empty() {
            self.first = upto.index + 1;
        }
        dropped
    }

    fn cache_push(&mut self, entry: Entry, size: usize) {
        self.cache.push_back((entry, size));
        self.cache_bytes += size;
        while self.cache_bytes > CACHE_BYTES && self.cache.len() > 1 {
            let (_, size) = self.cache.pop_front().expect("not empty");
            self.cache_bytes -= size;
        }
    }

    /// The cached entry at `index`, if it is cached.
    fn cached(&self, index: u64) -> Option<&Entry> {
        let cache_first = self.next_index() - self.cache.len() as u64;
        let at = index.checked_sub(cache_first)?;
        self.cache.get(at as usize).map(|(e, _)| e)
    }
}

/// A frame being put together.
#[derive(Default)]
struct Frame {
    body: Vec<u8>,
    /// (offset of the entry bytes in `body`, length, log id).
    entries: Vec<(usize, u32, LogId)>,
}

impl Frame {
    fn record(&mut self, kind: u8, payload: &[&[u8]]) -> usize {
        let len: usize = payload.iter().map(|p| p.len()).sum();
        self.body.push(kind);
        self.body.extend_from_slice(&(len as u32).to_le_bytes());
        let start = self.body.len();
        for p in payload {
            self.body.extend_from_slice(p);
        }
        start
    }

    fn entry(&mut self, log_id: LogId, bytes: &[u8]) {
        let mut head = [0u8; 24];
        head[..8].copy_from_slice(&log_id.leader_id.term.to_le_bytes());
        head[8..16].copy_from_slice(&log_id.leader_id.node_id.to_le_bytes());
        head[16..].copy_from_slice(&log_id.index.to_le_bytes());
        let start = self.record(KIND_ENTRY, &[&head, bytes]);
        self.entries.push((start + 24, bytes.len() as u32, log_id));
    }

    fn value<T: serde::Serialize>(&mut self, kind: u8, value: &T) -> io::Result<()> {
        let bytes = codec::encode(value).map_err(io::Error::other)?;
        self.record(kind, &[&bytes]);
        Ok(())
    }

    /// The vote, committed and purged ids, so the segment this frame starts
    /// holds them on its own.
    fn header(&mut self, index: &Index) -> io::Result<()> {
        if let Some(vote) = &index.vote {
            self.value(KIND_VOTE, vote)?;
        }
        self.value(KIND_COMMITTED, &index.committed)?;
        if let Some(purged) = &index.purged {
            self.value(KIND_PURGED, purged)?;
        }
        Ok(())
    }

    fn encoded(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.body.len());
        out.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&self.body).to_le_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

/// What must be fsynced for a written frame to be durable.
struct Pending {
    file: Arc<File>,
    /// A new segment was created: its directory entry must be synced too.
    dir: Option<PathBuf>,
}

impl Pending {
    fn sync(self) -> io::Result<()> {
        if crate::mutation::skips_fsync() {
            return Ok(());
        }
        self.file.sync_data()?;
        if let Some(dir) = self.dir {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// The segment files and the index over them. Shared by the store and its
/// readers; writes come one at a time from openraft (`&mut self` calls).
#[derive(Debug)]
struct Wal {
    dir: PathBuf,
    /// [`SEGMENT_BYTES`]; smaller in tests.
    segment_bytes: u64,
    index: Mutex<Index>,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

fn corrupt(path: &Path, offset: u64, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{} at byte {offset}: {what}; this log was synced and cannot be trusted: \
             wipe this node's data directory and start it again (it rejoins the cluster as a new \
             incarnation, removing its old one)",
            path.display()
        ),
    )
}

impl Wal {
    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens the log in `dir`, creating it (and its first segment) if needed.
    fn open(dir: &Path, segment_bytes: u64) -> io::Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let mut ids: Vec<u64> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_suffix(".wal").and_then(|s| s.parse::<u64>().ok()) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut index = Index::default();
        for (i, id) in ids.iter().enumerate() {
            let last = i + 1 == ids.len();
            let segment = replay(&segment_path(dir, *id), *id, last, &mut index)?;
            index.segments.insert(*id, segment);
        }
        let wal = Wal { dir: dir.to_path_buf(), segment_bytes, index: Mutex::new(index) };
        if ids.is_empty() {
            let mut index = wal.lock();
            let pending = wal.new_segment(&mut index, 1)?;
            drop(index);
            pending.sync()?;
        }
        Ok(wal)
    }

    /// Creates segment `id` with its file header; it becomes the active one.
    fn new_segment(&self, index: &mut Index, id: u64) -> io::Result<Pending> {
        let path = segment_path(&self.dir, id);
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        file.write_all_at(FILE_MAGIC, 0)?;
        let file = Arc::new(file);
        index.segments.insert(id, Segment { file: file.clone(), len: FILE_MAGIC.len() as u64, max_index: None });
        Ok(Pending { file, dir: Some(self.dir.clone()) })
    }

    /// Writes `frame` (with the pending committed id) to the active segment,
    /// starting a new one first when it is full, and updates the index. The
    /// caller syncs what it returns before the next write.
    fn write(&self, index: &mut Index, mut frame: Frame, entries: Vec<(Entry, usize)>) -> io::Result<Pending> {
        if index.committed_unwritten {
            frame.value(KIND_COMMITTED, &index.committed)?;
            index.committed_unwritten = false;
        }
        // Checked before anything is written: a frame the index refuses
        // would stop this node at its next start too.
        let mut expect = (!index.positions.is_empty()).then(|| index.next_index());
        for (_, _, log_id) in &frame.entries {
            let fits = match expect {
                Some(next) => log_id.index == next,
                None => index.purged.is_none_or(|p| log_id.index > p.index),
            };
            if !fits {
                return Err(io::Error::other(format!(
                    "entry {} does not follow the log (next {expect:?}, purged {:?})",
                    log_id.index, index.purged
                )));
            }
            expect = Some(log_id.index + 1);
        }
        let mut dir = None;
        let (mut id, active) = index.active();
        if active.len >= self.segment_bytes {
            id += 1;
            dir = self.new_segment(index, id)?.dir;
            let mut header = Frame::default();
            header.header(index)?;
            let shift = header.body.len();
            header.body.extend_from_slice(&frame.body);
            header.entries = frame.entries.iter().map(|(at, len, log_id)| (at + shift, *len, *log_id)).collect();
            frame = header;
        }
        let bytes = frame.encoded();
        let segment = index.segments.get_mut(&id).expect("active segment");
        let start = segment.len;
        segment.file.write_all_at(&bytes, start)?;
        segment.len += bytes.len() as u64;
        if let Some((_, _, last)) = frame.entries.last() {
            segment.max_index = Some(last.index);
        }
        let file = segment.file.clone();
        for (at, len, log_id) in frame.entries {
            let position = Position { segment: id, offset: start + 8 + at as u64, len, log_id };
            index.add(position).map_err(io::Error::other)?;
        }
        for (entry, size) in entries {
            index.cache_push(entry, size);
        }
        Ok(Pending { file, dir })
    }

    /// Unlinks the oldest segments whose entries are all purged (never the
    /// active one: every later segment repeats the vote and ids they hold).
    fn drop_purged_segments(&self, index: &mut Index) -> io::Result<()> {
        let Some(purged) = index.purged else { return Ok(()) };
        let (active, _) = index.active();
        while let Some((&id, segment)) = index.segments.first_key_value() {
            if id == active || segment.max_index.is_some_and(|m| m > purged.index) {
                break;
            }
            std::fs::remove_file(segment_path(&self.dir, id))?;
            index.segments.remove(&id);
        }
        Ok(())
    }

    /// Where entry `at` can be read without the lock: decoded from the
    /// cache, or its file (kept open even if a purge unlinks it meanwhile).
    fn locate(&self, index: &Index, at: u64) -> io::Result<Located> {
        if let Some(e) = index.cached(at) {
            return Ok(Located::Cached(e.clone()));
        }
        let p = index.positions[(at - index.first) as usize];
        let segment = index.segments.get(&p.segment).ok_or_else(|| io::Error::other("segment of an entry is gone"))?;
        Ok(Located::OnDisk(segment.file.clone(), p))
    }
}

enum Located {
    Cached(Entry),
    OnDisk(Arc<File>, Position),
}

impl Located {
    fn read(self) -> io::Result<Entry> {
        match self {
            Located::Cached(e) => Ok(e),
            Located::OnDisk(file, p) => {
                let mut buf = vec![0u8; p.len as usize];
                file.read_exact_at(&mut buf, p.offset)?;
                codec::decode(&buf)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("entry {}: {e}", p.log_id.index)))
            }
        }
    }
}

/// Writes a new log into `dir` (which must not hold one) from what another
/// store kept: the ids, then the entries (already encoded), every frame
/// synced. For moving a log over from the tree backend.
pub(crate) fn write_new(
    dir: &Path,
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    entries: impl IntoIterator<Item = io::Result<(LogId, Vec<u8>)>>,
) -> io::Result<()> {
    let wal = Wal::open(dir, SEGMENT_BYTES)?;
    let mut frame = Frame::default();
    {
        let mut index = wal.lock();
        if !index.positions.is_empty() || index.vote.is_some() {
            return Err(io::Error::other(format!("{} already holds a Raft log", dir.display())));
        }
        index.vote = vote;
        index.committed = committed;
        if let Some(p) = purged {
            index.purge(p);
        }
        frame.header(&index)?;
    }
    for entry in entries {
        let (log_id, bytes) = entry?;
        if purged.is_some_and(|p| log_id.index <= p.index) {
            continue;
        }
        if !frame.entries.is_empty() && frame.body.len() + bytes.len() > FRAME_SPLIT_BYTES {
            let mut index = wal.lock();
            wal.write(&mut index, std::mem::take(&mut frame), Vec::new())?.sync()?;
        }
        frame.entry(log_id, &bytes);
    }
    let mut index = wal.lock();
    wal.write(&mut index, frame, Vec::new())?.sync()
}

/// Replays one segment into `index`. In the last segment a damaged final
/// frame is a torn write: the file is cut before it.
fn replay(path: &Path, id: u64, last: bool, index: &mut Index) -> io::Result<Segment> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let file_len = file.metadata()?.len();
    let mut reader = io::BufReader::with_capacity(1 << 20, &file);
    let mut magic = [0u8; 8];
    if file_len < 8 || reader.read_exact(&mut magic).is_err() || &magic != FILE_MAGIC {
        if last && (file_len < 8 || zeros_from(&file, 0, file_len)?) {
            // Created, but its header never synced: an empty segment.
            file.set_len(0)?;
            file.write_all_at(FILE_MAGIC, 0)?;
            file.sync_data()?;
            return Ok(Segment { file: Arc::new(file), len: 8, max_index: None });
        }
        return Err(corrupt(path, 0, "not a router WAL segment (bad file header)"));
    }
    let mut offset = 8u64;
    let mut max_index = None;
    let mut torn_at = None;
    while offset < file_len {
        let frame_start = offset;
        let mut head = [0u8; 8];
        let remaining = file_len - offset;
        let damaged = |what: &str| -> io::Result<Option<u64>> {
            // Only the last frame of the last segment can be unsynced.
            if !last {
                return Err(corrupt(path, frame_start, what));
            }
            Ok(Some(frame_start))
        };
        if remaining < 8 {
            torn_at = damaged("cut-off frame header")?;
            break;
        }
        reader.read_exact(&mut head)?;
        let body_len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        let reaches_end = 8 + u64::from(body_len) >= remaining;
        if body_len == 0 || body_len > MAX_FRAME_BYTES || reaches_end && 8 + u64::from(body_len) > remaining {
            // A length that runs past the end, or none at all: torn if what
            // follows is the end of the file or never-written zeros.
            if last && (reaches_end || zeros_from(&file, frame_start, file_len)?) {
                torn_at = Some(frame_start);
                break;
            }
            return Err(corrupt(path, frame_start, format!("bad frame length {body_len}")));
        }
        let mut body = vec![0u8; body_len as usize];
        reader.read_exact(&mut body)?;
        if crc32fast::hash(&body) != crc {
            if last && reaches_end {
                torn_at = Some(frame_start);
                break;
            }
            return Err(corrupt(path, frame_start, "frame checksum mismatch"));
        }
        let body_start = frame_start + 8;
        apply_records(&body, |kind, at, payload| {
            let bad = |what: String| corrupt(path, body_start + at as u64, what);
            match kind {
                KIND_ENTRY => {
                    if payload.len() < 24 {
                        return Err(bad("short entry record".into()));
                    }
                    let word = |i: usize| u64::from_le_bytes(payload[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
                    let log_id = LogId::new(CommittedLeaderId::new(word(0), word(1)), word(2));
                    let position = Position {
                        segment: id,
                        offset: body_start + at as u64 + 24,
                        len: (payload.len() - 24) as u32,
                        log_id,
                    };
                    index.add(position).map_err(bad)?;
                    max_index = Some(log_id.index);
                }
                KIND_VOTE => index.vote = Some(codec::decode(payload).map_err(|e| bad(format!("vote: {e}")))?),
                KIND_COMMITTED => {
                    index.committed = codec::decode(payload).map_err(|e| bad(format!("committed: {e}")))?;
                }
                KIND_PURGED => {
                    let purged: LogId = codec::decode(payload).map_err(|e| bad(format!("purged: {e}")))?;
                    index.purge(purged);
                }
                KIND_TRUNCATE => {
                    let since = payload.try_into().map(u64::from_le_bytes).map_err(|_| bad("truncate".into()))?;
                    index.truncate(since);
                }
                other => return Err(bad(format!("unknown record kind {other}"))),
            }
            Ok(())
        })
        .map_err(|e| match e {
            RecordError::Io(e) => e,
            RecordError::Layout(at) => corrupt(path, body_start + at as u64, "record runs past its frame"),
        })?;
        offset = body_start + u64::from(body_len);
    }
    let len = match torn_at {
        Some(at) => {
            tracing::warn!(segment = %path.display(), at, dropped = file_len - at, "cut a torn write at the end of the Raft log");
            file.set_len(at)?;
            file.sync_data()?;
            at
        }
        None => file_len,
    };
    Ok(Segment { file: Arc::new(file), len, max_index })
}

enum RecordError {
    Io(io::Error),
    Layout(usize),
}

impl From<io::Error> for RecordError {
    fn from(e: io::Error) -> Self {
        RecordError::Io(e)
    }
}

fn apply_records(body: &[u8], mut each: impl FnMut(u8, usize, &[u8]) -> io::Result<()>) -> Result<(), RecordError> {
    let mut at = 0;
    while at < body.len() {
        if body.len() - at < 5 {
            return Err(RecordError::Layout(at));
        }
        let kind = body[at];
        let len = u32::from_le_bytes(body[at + 1..at + 5].try_into().expect("4 bytes")) as usize;
        let start = at + 5;
        let end = start.checked_add(len).filter(|e| *e <= body.len()).ok_or(RecordError::Layout(at))?;
        each(kind, start, &body[start..end])?;
        at = end;
    }
    Ok(())
}

/// Every byte of `file` from `from` to `end` is zero.
fn zeros_from(file: &File, from: u64, end: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; 1 << 16];
    let mut at = from;
    while at < end {
        let n = buf.len().min((end - at) as usize);
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// The raft log of one node in segment files. Cheap to clone: clones share
/// the files and the index, and openraft's log readers are such clones.
#[derive(Clone, Debug)]
pub struct WalLogStore {
    wal: Arc<Wal>,
    stats: Arc<StorageStats>,
    span: tracing::Span,
}

async fn sync(pending: Pending) -> io::Result<()> {
    tokio::task::spawn_blocking(move || pending.sync())
        .await
        .map_err(|e| io::Error::other(format!("fsync task: {e}")))?
}

impl WalLogStore {
    /// Opens (or creates) the log in `dir`: replays every segment, cuts a
    /// torn final write, and refuses a log whose synced part is damaged.
    pub fn open(dir: &Path, stats: Arc<StorageStats>) -> Result<Self, StorageError> {
        Self::open_with(dir, stats, SEGMENT_BYTES)
    }

    pub(crate) fn open_with(dir: &Path, stats: Arc<StorageStats>, segment_bytes: u64) -> Result<Self, StorageError> {
        let wal = Wal::open(dir, segment_bytes).map_err(|e| {
            io_error(ErrorSubject::Logs, ErrorVerb::Read, &e, format!("open Raft log {}", dir.display()))
        })?;
        let store = WalLogStore { wal: Arc::new(wal), stats, span: tracing::Span::current() };
        {
            let index = store.wal.lock();
            if let Some(c) = index.committed {
                store.stats.committed(c.index);
            }
            // An entry in a format this build cannot read fails here, not mid-election.
            if let Some(last) = index.last_log_id() {
                store
                    .wal
                    .locate(&index, last.index)
                    .and_then(Located::read)
                    .map_err(|e| io_error(ErrorSubject::Log(last), ErrorVerb::Read, &e, "read the last log entry"))?;
            }
        }
        Ok(store)
    }

    /// Writes a frame of its own (vote, truncate, purge) and syncs it.
    async fn write_synced(&self, frame: Frame, subject: ErrorSubject<u64>, what: &str) -> Result<(), StorageError> {
        let pending = {
            let mut index = self.wal.lock();
            self.wal.write(&mut index, frame, Vec::new())
        };
        let result = match pending {
            Ok(p) => sync(p).await,
            Err(e) => Err(e),
        };
        result.map_err(|e| io_error(subject, ErrorVerb::Write, &e, what))
    }

    /// Bytes of the segment files, for tests and metrics.
    pub fn disk_bytes(&self) -> u64 {
        self.wal.lock().segments.values().map(|s| s.len).sum()
    }

    /// How many segment files the log spans.
    pub fn segments(&self) -> usize {
        self.wal.lock().segments.len()
    }
}

fn bounds(range: &impl RangeBounds<u64>, first: u64, next: u64) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => i.saturating_add(1),
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    (start.max(first), end.min(next))
}

impl RaftLogReader<TypeConfig> for WalLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let fail =
            |e: io::Error| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e, format!("read log entries {range:?}"));
        let located: Vec<Located> = {
            let index = self.wal.lock();
            let (start, end) = bounds(&range, index.first, index.next_index());
            (start..end.max(start)).map(|at| self.wal.locate(&index, at)).collect::<io::Result<_>>().map_err(fail)?
        };
        // Disk reads (a lagging follower's) do not hold up appends.
        located.into_iter().map(|l| l.read().map_err(fail)).collect()
    }
}

impl RaftLogStorage<TypeConfig> for WalLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let index = self.wal.lock();
        Ok(LogState { last_purged_log_id: index.purged, last_log_id: index.last_log_id().or(index.purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut frame = Frame::default();
        frame.value(KIND_VOTE, vote).map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, &e, "encode vote"))?;
        self.wal.lock().vote = Some(*vote);
        self.write_synced(frame, ErrorSubject::Vote, "write and fsync vote").await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.wal.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut index = self.wal.lock();
        index.committed = committed;
        index.committed_unwritten = true;
        if let Some(c) = committed {
            self.stats.committed(c.index);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.wal.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Usually one frame; a catch-up append of many large entries is cut
        // into frames of about FRAME_SPLIT_BYTES, each synced before the next.
        let mut frames = vec![(Frame::default(), Vec::new())];
        let purged = self.wal.lock().purged;
        for entry in entries {
            let log_id = *entry.get_log_id();
            if purged.is_some_and(|p| log_id.index <= p.index) {
                // Already covered by the snapshot the log was purged to (a
                // purge past the log's end, then an older entry arrives).
                continue;
            }
            let bytes = codec::encode_at(codec::entry_format(&entry), &entry)
                .map_err(|e| io_error(ErrorSubject::Log(log_id), ErrorVerb::Write, &e, "encode log entry"))?;
            let (frame, _) = frames.last().expect("one frame at least");
            if !frame.entries.is_empty() && frame.body.len() + bytes.len() > FRAME_SPLIT_BYTES {
                frames.push((Frame::default(), Vec::new()));
            }
            let (frame, decoded) = frames.last_mut().expect("one frame at least");
            frame.entry(log_id, &bytes);
            decoded.push((entry, bytes.len()));
        }
        let mut synced = Ok(());
        for (frame, decoded) in frames {
            let written = {
                let mut index = self.wal.lock();
                self.wal.write(&mut index, frame, decoded)
            };
            synced = match written {
                Ok(pending) => sync(pending).await,
                Err(e) => Err(e),
            };
            if synced.is_err() {
                break;
            }
        }
        match synced {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(io_error(ErrorSubject::Logs, ErrorVerb::Write, &e, "write and fsync appended log entries"))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.span.in_scope(|| tracing::debug!(%log_id, "truncate log"));
        let mut frame = Frame::default();
        frame.record(KIND_TRUNCATE, &[&log_id.index.to_le_bytes()]);
        self.wal.lock().truncate(log_id.index);
        self.write_synced(frame, ErrorSubject::Logs, "write and fsync a log truncation").await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.span.in_scope(|| tracing::debug!(%log_id, "purge log"));
        let mut frame = Frame::default();
        frame
            .value(KIND_PURGED, &log_id)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e, "encode purge point"))?;
        let dropped = self.wal.lock().purge(log_id);
        self.stats.purged(dropped);
        self.write_synced(frame, ErrorSubject::Logs, "write and fsync a log purge").await?;
        // Only once the purge point is durable may whole segments go.
        let mut index = self.wal.lock();
        self.wal
            .drop_purged_segments(&mut index)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &e, "remove purged log segments"))
    }
}
