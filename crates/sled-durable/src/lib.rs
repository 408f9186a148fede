//! `router-sled-durable`: what it takes for a sled 0.34 flush to survive a
//! power cut.
//!
//! # What this crate owns
//! [`FileSync`], opened next to a sled database, and called after every
//! `Db::flush` that must be durable; [`retry_while_locked`], for opening one
//! that a handle dropped a moment ago may still lock. Users: router-raft's
//! log and state storage, router-e2ee's Signal protocol store.
//!
//! # What it must not do
//! Depend on sled or know its format: it only knows the names of the files
//! sled 0.34 keeps in its directory (`conf`, `db`, `blobs/<lsn>`).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long [`retry_while_locked`] waits for a database handle dropped in
/// this process to release the directory's file lock.
pub const LOCK_RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Runs `open` again while it fails because another handle holds the
/// database's file lock, for at most [`LOCK_RELEASE_WAIT`]: a database
/// dropped a moment ago may hold it while sled's I/O threads finish with it.
/// `io_error` finds the I/O error in `open`'s; sled 0.34 reports `flock`'s
/// `WouldBlock` as an `Other` error saying "could not acquire lock".
pub fn retry_while_locked<T, E>(
    mut open: impl FnMut() -> Result<T, E>,
    io_error: impl Fn(&E) -> Option<&std::io::Error>,
) -> Result<T, E> {
    let deadline = Instant::now() + LOCK_RELEASE_WAIT;
    loop {
        match open() {
            Err(e) if io_error(&e).is_some_and(is_lock_held) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            done => return done,
        }
    }
}

fn is_lock_held(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

/// What sled 0.34's flush leaves undone, done after it.
///
/// On Linux sled makes its log stable with `sync_file_range`, which writes
/// the data pages but neither commits the file's metadata (its new size, the
/// blocks just allocated at its end) nor flushes the device's write cache;
/// and it never syncs the files under `blobs/` where it puts large values
/// (snapshots, large tree pages). After a power cut such writes are gone
/// although the flush returned: the chaos suite's power-loss profile lost a
/// whole node's database that way, and every node's at once. So a flush here
/// ends with an `fdatasync` of `db`, of every blob file not synced yet, and
/// of the directory that names them.
///
/// Usage: [`FileSync::before_flush`], then sled's flush, then
/// [`FileSync::after_flush`] with what the first call returned.
/// Why listing the blobs *before* the flush is enough: sled creates and
/// writes a blob file while it holds a log reservation, which it takes
/// (raising its highest reserved position) before creating the file; its
/// flush waits until everything up to the highest position reserved when the
/// flush starts is written, so every file the listing saw is complete once
/// the flush returns. A file created later is listed, and synced, by the
/// next flush, which is the first one that promises it. So a file is synced
/// once, by name, and no flush looks at the files' sizes (a `statx` per blob
/// file per flush was 5 % of a node's CPU under load).
#[derive(Debug)]
pub struct FileSync {
    db_file: File,
    blobs_dir: PathBuf,
    /// Blob files already synced. Pruned to what still exists on every sync.
    synced_blobs: Mutex<HashSet<OsString>>,
}

/// The blob files present before a flush: what [`FileSync::after_flush`]
/// syncs (the new ones) and keeps track of (all of them).
#[derive(Debug)]
pub struct BlobListing {
    present: HashSet<OsString>,
}

impl FileSync {
    /// Also syncs what sled created at open (`conf`, `db`, `blobs/` and
    /// the directory entries naming them).
    pub fn open(dir: &Path) -> std::io::Result<FileSync> {
        let db_file = File::open(dir.join("db"))?;
        for name in ["conf", "db"] {
            File::open(dir.join(name))?.sync_all()?;
        }
        File::open(dir)?.sync_all()?;
        let files = FileSync { db_file, blobs_dir: dir.join("blobs"), synced_blobs: Mutex::new(HashSet::new()) };
        let listing = files.before_flush()?;
        files.after_flush(listing)?;
        Ok(files)
    }

    /// Lists the blob files; call right before sled's flush.
    pub fn before_flush(&self) -> std::io::Result<BlobListing> {
        let mut present = HashSet::new();
        if self.blobs_dir.exists() {
            for entry in std::fs::read_dir(&self.blobs_dir)? {
                present.insert(entry?.file_name());
            }
        }
        Ok(BlobListing { present })
    }

    /// Makes durable what sled's flush wrote: call once it returned, with the
    /// listing taken before it.
    pub fn after_flush(&self, listing: BlobListing) -> std::io::Result<()> {
        self.db_file.sync_data()?;
        let mut synced = self.synced_blobs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut new_entries = false;
        for name in &listing.present {
            if synced.contains(name) {
                continue;
            }
            match File::open(self.blobs_dir.join(name)) {
                Ok(f) => f.sync_data()?,
                // Removed by sled since the listing: nothing to keep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            new_entries = true;
        }
        if new_entries {
            File::open(&self.blobs_dir)?.sync_all()?;
        }
        *synced = listing.present;
        Ok(())
    }

    /// [`before_flush`](Self::before_flush), `flush`, [`after_flush`](Self::after_flush).
    pub fn flush_with<E: From<std::io::Error>>(&self, flush: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let listing = self.before_flush()?;
        flush()?;
        self.after_flush(listing)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_db_and_blobs_and_tracks_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new().path(dir.path()).flush_every_ms(None).open().expect("open");
        let files = FileSync::open(dir.path()).expect("file sync");
        db.insert(b"small", &b"v"[..]).expect("insert");
        // Large enough for sled to write it as a blob file.
        db.insert(b"large", vec![7u8; 4 << 20]).expect("insert");
        files.flush_with(|| db.flush().map(drop)).expect("flush and sync");
        let blobs = files.synced_blobs.lock().expect("lock").clone();
        assert!(!blobs.is_empty(), "the large value went to a blob file and was synced");
        db.remove(b"large").expect("remove");
        files.flush_with(|| db.flush().map(drop)).expect("flush and sync again");
    }

    #[test]
    fn refuses_a_directory_without_a_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(FileSync::open(dir.path()).is_err());
    }
}
