//! `router-sled-durable`: what it takes for a sled 0.34 flush to survive a
//! power cut.
//!
//! # What this crate owns
//! [`FileSync`], opened next to a sled database, and called after every
//! `Db::flush` that must be durable. Users: router-raft's log and state
//! storage, router-e2ee's Signal protocol store.
//!
//! # What it must not do
//! Depend on sled or know its format: it only knows the names of the files
//! sled 0.34 keeps in its directory (`conf`, `db`, `blobs/<lsn>`).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// What sled 0.34's flush leaves undone, done after it.
///
/// On Linux sled makes its log stable with `sync_file_range`, which writes
/// the data pages but neither commits the file's metadata (its new size, the
/// blocks just allocated at its end) nor flushes the device's write cache;
/// and it never syncs the files under `blobs/` where it puts large values
/// (snapshots). After a power cut such writes are gone although the flush
/// returned: the chaos suite's power-loss profile lost a whole node's
/// database that way, and every node's at once. So a flush here ends with an
/// `fdatasync` of `db`, of every blob file not synced yet, and of the
/// directory that names them.
#[derive(Debug)]
pub struct FileSync {
    db_file: File,
    blobs_dir: PathBuf,
    /// Blob files already synced, with the length they had then: sled
    /// never rewrites a blob (it writes a new file), but one listed while
    /// sled was still writing it is synced again once its length changed.
    /// Pruned to what still exists on every sync.
    synced_blobs: Mutex<HashSet<(OsString, u64)>>,
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
        files.sync()?;
        Ok(files)
    }

    /// Makes durable what sled wrote before its last flush returned.
    pub fn sync(&self) -> std::io::Result<()> {
        self.db_file.sync_data()?;
        let mut synced = self.synced_blobs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut present = HashSet::new();
        let mut new_entries = false;
        if self.blobs_dir.exists() {
            for entry in std::fs::read_dir(&self.blobs_dir)? {
                let entry = entry?;
                let len = match entry.metadata() {
                    Ok(m) => m.len(),
                    // Removed by sled since the listing: nothing to keep.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                let key = (entry.file_name(), len);
                if !synced.contains(&key) {
                    match File::open(entry.path()) {
                        Ok(f) => f.sync_data()?,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    }
                    new_entries = true;
                }
                present.insert(key);
            }
            if new_entries {
                File::open(&self.blobs_dir)?.sync_all()?;
            }
        }
        *synced = present;
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
        db.flush().expect("flush");
        files.sync().expect("sync");
        let blobs = files.synced_blobs.lock().expect("lock").clone();
        assert!(!blobs.is_empty(), "the large value went to a blob file and was synced");
        db.remove(b"large").expect("remove");
        db.flush().expect("flush");
        files.sync().expect("sync again");
    }

    #[test]
    fn refuses_a_directory_without_a_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(FileSync::open(dir.path()).is_err());
    }
}
