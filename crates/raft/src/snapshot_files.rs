//! Snapshots as files: built, sent, received and installed by streaming,
//! never held whole in memory.
//!
//! ```text
//! <data_dir>/snapshots/<n>/state  payloads named by place in this node's segments ("placed" form)
//! <data_dir>/snapshots/<n>/data   or payloads as bytes (the form openraft sends; older builds kept it)
//! <data_dir>/snapshots/<n>/meta   its SnapshotMeta, and the file's length and CRC32 (codec-encoded)
//! <data_dir>/snapshots/build-<k>/ one being built
//! <data_dir>/snapshots/recv-<k>/  one being received
//! <data_dir>/snapshots/bytes-<k>   the current placed snapshot written out as bytes for a peer
//! ```
//!
//! A snapshot is written under `build-<k>` or `recv-<k>`, both files
//! fsynced, then the directory is renamed to the next `<n>` and the parent
//! fsynced: `<n>` directories are complete, and the highest is the current
//! one. Older ones are removed after the rename; a reader that opened one
//! keeps reading it. `open` removes what an interrupted write left, and a
//! new receive removes the receives openraft gave up on (it runs one at a
//! time, and drops an abandoned one without telling the store).
//!
//! The meta file records the data's length and CRC32, checked before a
//! stored snapshot is decoded at start: a damaged file stops the node
//! instead of decoding into a different state.
//!
//! A placed snapshot keeps the payload segments it names ([`PlacedSources`],
//! set in the same step as the commit that makes it current): they go only
//! once a newer snapshot replaces it. So does the bytes form last written
//! for a peer (`bytes-<k>`, not fsynced, removed at start): a retried or a
//! second send reads it instead of writing it again.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use router_core::blob::PlacedSources;

use crate::codec;
use crate::types::SnapshotMeta;

/// The snapshot directory of one node.
#[derive(Clone, Debug)]
pub struct SnapshotFiles {
    dir: PathBuf,
    /// Numbers `tmp-<k>` directories.
    next_tmp: Arc<AtomicU64>,
    /// Makes "is the current one older? then replace it" one step, and
    /// holds what goes with the current snapshot.
    commit: Arc<Mutex<Kept>>,
}

/// What goes with the current snapshot.
#[derive(Debug, Default)]
struct Kept {
    /// The payload segments it names.
    sources: PlacedSources,
    /// Its bytes form as last written for a peer: snapshot id and file.
    bytes_form: Option<(String, PathBuf)>,
}

impl Kept {
    fn drop_bytes_form(&mut self) {
        if let Some((_, path)) = self.bytes_form.take()
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a snapshot's bytes form");
        }
    }
}

/// How a snapshot file holds the payloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// As bytes: what openraft sends and receives, and what older builds wrote.
    Bytes,
    /// By place in this node's payload segments (`state` file).
    Placed,
}

const BYTES_FILE: &str = "data";
const PLACED_FILE: &str = "state";

/// What the meta file holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredMeta {
    meta: SnapshotMeta,
    data_len: u64,
    data_crc32: u32,
}

/// The current snapshot.
#[derive(Debug)]
pub struct Current {
    pub meta: SnapshotMeta,
    pub data: PathBuf,
    pub form: Form,
    data_len: u64,
    data_crc32: u32,
}

impl Current {
    /// Reads the data file through and checks its length and CRC32.
    pub fn verify(&self) -> io::Result<()> {
        let (len, crc) = checksum(&self.data)?;
        if (len, crc) != (self.data_len, self.data_crc32) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot {} is damaged: {len} bytes with CRC32 {crc:08x}, its meta says {} bytes with {:08x}",
                    self.data.display(),
                    self.data_len,
                    self.data_crc32
                ),
            ));
        }
        Ok(())
    }
}

fn checksum(path: &Path) -> io::Result<(u64, u32)> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let (mut hasher, mut len, mut buf) = (crc32fast::Hasher::new(), 0u64, vec![0u8; 1 << 20]);
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((len, hasher.finalize()));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

const BUILD_PREFIX: &str = "build-";
const RECEIVE_PREFIX: &str = "recv-";
/// A placed snapshot written out as bytes for a peer.
const SCRATCH_PREFIX: &str = "bytes-";

/// The current snapshot opened for reading, with the segments it names.
#[derive(Debug)]
pub struct Opened {
    pub meta: SnapshotMeta,
    pub file: std::fs::File,
    pub path: PathBuf,
    pub form: Form,
    pub sources: PlacedSources,
}

/// A snapshot being written: its directory and data file.
#[derive(Debug)]
pub struct Pending {
    pub dir: PathBuf,
    pub data: PathBuf,
    form: Form,
}

impl SnapshotFiles {
    /// Opens `dir` (created if missing), removing unfinished writes and
    /// every complete snapshot but the newest.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let files = SnapshotFiles { dir: dir.to_path_buf(), next_tmp: Arc::default(), commit: Arc::default() };
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(BUILD_PREFIX) || name.starts_with(RECEIVE_PREFIX) {
                std::fs::remove_dir_all(entry.path())?;
            } else if name.starts_with(SCRATCH_PREFIX) {
                std::fs::remove_file(entry.path())?;
            }
        }
        files.remove_older_than(files.newest()?)?;
        Ok(files)
    }

    /// Numbers of the complete snapshots, ascending.
    fn numbers(&self) -> io::Result<Vec<u64>> {
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            if let Ok(n) = entry?.file_name().to_string_lossy().parse::<u64>() {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        Ok(numbers)
    }

    fn newest(&self) -> io::Result<Option<u64>> {
        Ok(self.numbers()?.last().copied())
    }

    fn remove_older_than(&self, newest: Option<u64>) -> io::Result<()> {
        let Some(newest) = newest else { return Ok(()) };
        for n in self.numbers()? {
            if n < newest {
                std::fs::remove_dir_all(self.dir.join(n.to_string()))?;
            }
        }
        Ok(())
    }

    /// The current snapshot, if there is one.
    pub fn current(&self) -> io::Result<Option<Current>> {
        let Some(n) = self.newest()? else { return Ok(None) };
        let dir = self.dir.join(n.to_string());
        let meta = std::fs::read(dir.join("meta"))?;
        let stored: StoredMeta = codec::decode(&meta).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let form = if dir.join(PLACED_FILE).exists() { Form::Placed } else { Form::Bytes };
        let data = dir.join(if form == Form::Placed { PLACED_FILE } else { BYTES_FILE });
        Ok(Some(Current { meta: stored.meta, data, form, data_len: stored.data_len, data_crc32: stored.data_crc32 }))
    }

    /// [`Self::current`] with its data file opened, in one step with respect
    /// to commits (which remove the snapshot they replace).
    pub fn open_current(&self) -> io::Result<Option<Opened>> {
        let kept = self.lock_kept();
        let Some(current) = self.current()? else { return Ok(None) };
        let file = std::fs::File::open(&current.data)?;
        let sources = kept.sources.clone();
        Ok(Some(Opened { meta: current.meta, file, path: current.data, form: current.form, sources }))
    }

    fn lock_kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.commit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `sources` the segments the current snapshot names (at start,
    /// once the current snapshot was decoded).
    pub fn keep_sources(&self, sources: PlacedSources) {
        self.lock_kept().sources = sources;
    }

    /// The bytes form written earlier for snapshot `id`, opened at its
    /// start, if it is still kept.
    pub fn kept_bytes_form(&self, id: &str) -> io::Result<Option<std::fs::File>> {
        let kept = self.lock_kept();
        match &kept.bytes_form {
            Some((kept_id, path)) if kept_id == id => Ok(Some(std::fs::File::open(path)?)),
            _ => Ok(None),
        }
    }

    /// Keeps the bytes form at `path` for the next send if snapshot `id` is
    /// still the current one and none is kept yet; otherwise removes the
    /// file (a reader that opened it keeps reading it).
    pub fn keep_bytes_form(&self, id: &str, path: PathBuf) -> io::Result<()> {
        let mut kept = self.lock_kept();
        let current = self.current()?.is_some_and(|c| c.meta.snapshot_id == id);
        if current && kept.bytes_form.is_none() {
            kept.bytes_form = Some((id.to_string(), path));
            return Ok(());
        }
        std::fs::remove_file(&path)
    }

    /// [`Self::keep_bytes_form`], its failure only logged: the caller's
    /// file was written and is open, so its send can go on.
    pub fn try_keep_bytes_form(&self, id: &str, path: PathBuf) {
        if let Err(e) = self.keep_bytes_form(id, path) {
            tracing::warn!(snapshot_id = id, error = %e, "cannot keep a snapshot's bytes form for the next send");
        }
    }

    /// A new directory to build a snapshot in, payloads as bytes.
    pub fn begin_build(&self) -> io::Result<Pending> {
        self.begin(BUILD_PREFIX, Form::Bytes)
    }

    /// A new directory to build a placed snapshot in.
    pub fn begin_build_placed(&self) -> io::Result<Pending> {
        self.begin(BUILD_PREFIX, Form::Placed)
    }

    /// A new file for a placed snapshot written out as bytes, opened for
    /// reading and writing (`open` removes what a crash leaves of it).
    pub fn scratch(&self) -> io::Result<(std::fs::File, PathBuf)> {
        let k = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{SCRATCH_PREFIX}{k}"));
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        Ok((file, path))
    }

    /// A new directory to receive a snapshot in; removes earlier receives
    /// first (openraft abandons a receive by dropping it).
    pub fn begin_receive(&self) -> io::Result<Pending> {
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(RECEIVE_PREFIX) {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        self.begin(RECEIVE_PREFIX, Form::Bytes)
    }

    fn begin(&self, prefix: &str, form: Form) -> io::Result<Pending> {
        let k = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.join(format!("{prefix}{k}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir(&dir)?;
        let data = dir.join(if form == Form::Placed { PLACED_FILE } else { BYTES_FILE });
        Ok(Pending { dir, data, form })
    }

    /// Makes `pending` (its data written) the current snapshot, naming
    /// `sources`, unless the current one covers more of the log. Answers
    /// whether it did. The data file is fsynced here (the sources must be
    /// already); call from a blocking thread.
    pub fn commit(&self, pending: Pending, meta: &SnapshotMeta, sources: PlacedSources) -> io::Result<bool> {
        std::fs::File::open(&pending.data)?.sync_all()?;
        let (data_len, data_crc32) = checksum(&pending.data)?;
        let stored = StoredMeta { meta: meta.clone(), data_len, data_crc32 };
        // A placed snapshot's meta is of a version older builds refuse:
        // they must not start on a snapshot whose payloads they cannot find.
        let version = if pending.form == Form::Placed { codec::PLACED_SNAPSHOT_FORMAT } else { codec::BASE_FORMAT };
        let meta_bytes = codec::encode_at(version, &stored).map_err(io::Error::other)?;
        let meta_path = pending.dir.join("meta");
        std::fs::write(&meta_path, meta_bytes)?;
        std::fs::File::open(&meta_path)?.sync_all()?;
        std::fs::File::open(&pending.dir)?.sync_all()?;
        let mut kept = self.lock_kept();
        if let Some(current) = self.current()?
            && current.meta.last_log_id > meta.last_log_id
        {
            std::fs::remove_dir_all(&pending.dir)?;
            return Ok(false);
        }
        let n = self.newest()?.map_or(1, |n| n + 1);
        std::fs::rename(&pending.dir, self.dir.join(n.to_string()))?;
        // Current from here on, so it keeps its segments from here on; the
        // replaced one keeps its own until the rename is known durable.
        let replaced = std::mem::replace(&mut kept.sources, sources);
        if let Err(e) = std::fs::File::open(&self.dir).and_then(|d| d.sync_all()) {
            kept.sources.extend(replaced);
            return Err(e);
        }
        drop(replaced);
        kept.drop_bytes_form();
        if let Err(e) = self.remove_older_than(Some(n)) {
            // Harmless: the next commit or start removes them.
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove older snapshots");
        }
        Ok(true)
    }

    /// Runs `fill` on `pending`'s data file (writes it, or checks what was
    /// received), then commits it with `meta` and the segments `fill` says
    /// it names; when `fill` fails, removes it.
    pub fn complete<T>(
        &self,
        pending: Pending,
        meta: &SnapshotMeta,
        fill: impl FnOnce(&Path) -> io::Result<(T, PlacedSources)>,
    ) -> io::Result<T> {
        match fill(&pending.data) {
            Ok((done, sources)) => {
                self.commit(pending, meta, sources)?;
                Ok(done)
            }
            Err(e) => {
                self.discard(pending);
                Err(e)
            }
        }
    }

    /// Drops a snapshot that will not be committed.
    pub fn discard(&self, pending: Pending) {
        if let Err(e) = std::fs::remove_dir_all(&pending.dir) {
            tracing::warn!(dir = %pending.dir.display(), error = %e, "cannot remove an unfinished snapshot");
        }
    }

    /// The pending write a received snapshot's data file belongs to.
    pub fn pending_of(&self, data: &Path) -> Option<Pending> {
        let dir = data.parent()?;
        let receiving = dir.file_name()?.to_string_lossy().starts_with(RECEIVE_PREFIX);
        (receiving && dir.parent()? == self.dir).then(|| Pending {
            dir: dir.to_path_buf(),
            data: data.to_path_buf(),
            form: Form::Bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{LogId, StoredMembership};

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("s{index}"),
        }
    }

    fn write(files: &SnapshotFiles, index: u64) -> bool {
        let pending = files.begin_build().unwrap();
        std::fs::write(&pending.data, format!("data {index}")).unwrap();
        files.commit(pending, &meta(index), PlacedSources::new()).unwrap()
    }

    #[test]
    fn the_newest_commit_is_current_and_an_older_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::open(dir.path()).unwrap();
        assert!(files.current().unwrap().is_none());
        assert!(write(&files, 10));
        assert!(write(&files, 20));
        assert!(!write(&files, 15), "a snapshot covering less of the log does not replace the current one");
        let current = files.current().unwrap().unwrap();
        assert_eq!(current.meta, meta(20));
        assert_eq!(std::fs::read_to_string(&current.data).unwrap(), "data 20");
        current.verify().unwrap();
        assert_eq!(files.numbers().unwrap().len(), 1, "older snapshots are removed");
    }

    #[test]
    fn open_removes_unfinished_writes_and_keeps_the_current_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::open(dir.path()).unwrap();
        assert!(write(&files, 10));
        let unfinished = files.begin_build().unwrap();
        std::fs::write(&unfinished.data, "half").unwrap();
        let files = SnapshotFiles::open(dir.path()).unwrap();
        assert!(!unfinished.dir.exists());
        assert_eq!(files.current().unwrap().unwrap().meta, meta(10));
    }

    #[test]
    fn a_new_receive_removes_an_abandoned_one_and_leaves_builds_alone() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::open(dir.path()).unwrap();
        let abandoned = files.begin_receive().unwrap();
        std::fs::write(&abandoned.data, "dropped by openraft").unwrap();
        let building = files.begin_build().unwrap();
        let next = files.begin_receive().unwrap();
        assert!(!abandoned.dir.exists());
        assert!(building.dir.exists() && next.dir.exists());
        assert!(files.pending_of(&next.data).is_some());
        assert!(files.pending_of(&building.data).is_none(), "only receives are installed from their file");
    }

    #[test]
    fn a_damaged_snapshot_file_fails_its_check() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::open(dir.path()).unwrap();
        assert!(write(&files, 10));
        let current = files.current().unwrap().unwrap();
        std::fs::write(&current.data, "data 1O").unwrap();
        let err = current.verify().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}
