//! The segment-file log beyond openraft's suite: what survives a restart, a
//! torn final write, damage to synced frames, segment rotation and purge, and
//! the move of an older build's sled log.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{EntryPayload, RaftLogReader};
use router_core::{Command, ProviderId};
use tempfile::TempDir;

use crate::backend::{Backend, SledBackend, Tree};
use crate::stats::StorageStats;
use crate::tests::{batch_entry, log_id, rt, workload};
use crate::types::{Entry, StorageError, Vote};
use crate::{LogStore, WalLogStore, open};

fn open_log(dir: &Path) -> Result<WalLogStore, StorageError> {
    WalLogStore::open(dir, Arc::new(StorageStats::default()))
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    files
}

fn last_segment(dir: &Path) -> PathBuf {
    segments(dir).pop().expect("a segment")
}

/// Entries 1..=n, each with an envelope-sized command.
fn entries(from: u64, to: u64) -> Vec<Entry> {
    (from..=to)
        .map(|i| {
            batch_entry(
                i,
                vec![Command::SetMediaHosts {
                    provider: ProviderId::new("acme"),
                    media_hosts: vec![format!("m{i}.example:443"); 8],
                }],
            )
        })
        .collect()
}

async fn indexes(log: &mut WalLogStore) -> Vec<u64> {
    log.try_get_log_entries(..).await.unwrap().iter().map(|e| e.log_id.index).collect()
}

/// A truncation while the cache holds only a tail of the log (here: the
/// entries appended since a restart) must drop the truncated entries from the
/// cache too, or every cached read after it lands on the wrong entry.
#[test]
fn a_truncation_inside_a_partial_cache_keeps_reads_on_the_right_entries() {
    rt().block_on(async {
        let dir = TempDir::new().unwrap();
        let mut log = open_log(dir.path()).unwrap();
        log.blocking_append(entries(1, 10)).await.unwrap();
        drop(log);
        let mut log = open_log(dir.path()).unwrap();
        log.blocking_append(entries(11, 14)).await.unwrap();
        log.truncate(log_id(1, 13)).await.unwrap();
        assert_eq!(indexes(&mut log).await, (1..=12).collect::<Vec<_>>());
        let mut newer: Vec<Entry> = entries(13, 14);
        for e in &mut newer {
            e.log_id = log_id(2, e.log_id.index);
        }
        log.blocking_append(newer).await.unwrap();
        let read = log.try_get_log_entries(..).await.unwrap();
        let ids: Vec<(u64, u64)> = read.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect();
        let expected: Vec<(u64, u64)> = (1..=14).map(|i| (if i >= 13 { 2 } else { 1 }, i)).collect();
        assert_eq!(ids, expected, "every read returns the entry it asked for, the new ones after the cut");
        drop(log);
        let mut log = open_log(dir.path()).unwrap();
        let replayed = log.try_get_log_entries(..).await.unwrap();
        assert_eq!(replayed, read, "the files agree with what was read from the cache");
    });
}

#[test]
fn log_vote_and_committed_survive_a_restart_and_reads_agree_with_the_cache() {
    rt().block_on(async {
        let dir = TempDir::new().unwrap();
        let mut log = open_log(dir.path()).unwrap();
        let vote = Vote::new_committed(2, 1);
        log.save_vote(&vote).await.unwrap();
        log.blocking_append(workload()).await.unwrap();
        log.save_committed(Some(log_id(1, 3))).await.unwrap();
        // Committed rides with the next frame.
        log.blocking_append(entries(5, 6)).await.unwrap();
        let cached = log.try_get_log_entries(1..7).await.unwrap();
        drop(log);

        let mut log = open_log(dir.path()).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 3)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 6)));
        assert_eq!(state.last_purged_log_id, None);
        let from_disk = log.try_get_log_entries(1..7).await.unwrap();
        assert_eq!(from_disk, cached, "entries read back from the files equal the cached ones");
        assert_eq!(log.try_get_log_entries(3..=4).await.unwrap().len(), 2);
        assert!(log.try_get_log_entries(9..).await.unwrap().is_empty());
    });
}

#[test]
fn a_torn_final_write_is_cut_and_the_log_goes_on() {
    rt().block_on(async {
        let dir = TempDir::new().unwrap();
        let mut log = open_log(dir.path()).unwrap();
        log.blocking_append(entries(1, 3)).await.unwrap();
        log.blocking_append(entries(4, 4)).await.unwrap();
        drop(log);
        let seg = last_segment(dir.path());
        let len = std::fs::metadata(&seg).unwrap().len();

        // The last frame lost its final bytes.
        std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 3).unwrap();
        let mut log = open_log(dir.path()).unwrap();
        assert_eq!(indexes(&mut log).await, vec![1, 2, 3], "the torn entry is gone, the synced ones stay");
        log.blocking_append(entries(4, 5)).await.unwrap();
        drop(log);
        let mut log = open_log(dir.path()).unwrap();
        assert_eq!(indexes(&mut log).await, vec![1, 2, 3, 4, 5]);
        drop(log);

        // A tail of zeros (space allocated, data never written).
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0u8; 4096]).unwrap();
        drop(f);
        let mut log = open_log(dir.path()).unwrap();
        assert_eq!(indexes(&mut log).await, vec![1, 2, 3, 4, 5]);
        drop(log);
        let cut = std::fs::metadata(&seg).unwrap().len();
        assert!(cut < len + 4096, "the zeros were cut off ({cut} bytes)");

        // The last frame's bytes arrived, but not all of them (checksum).
        let mut bytes = std::fs::read(&seg).unwrap();
        let at = bytes.len() - 2;
        bytes[at] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        let mut log = open_log(dir.path()).unwrap();
        // Bit rot in a synced final frame reads the same way: documented in
        // docs/design/raft-log.md.
        assert_eq!(indexes(&mut log).await, vec![1, 2, 3], "a damaged final frame reads as an unsynced write");
    });
}

/// A log of two frames (entries 1-2, 3-4); its segment file.
async fn two_frames(dir: &Path) -> PathBuf {
    let mut log = open_log(dir).unwrap();
    log.blocking_append(entries(1, 2)).await.unwrap();
    log.blocking_append(entries(3, 4)).await.unwrap();
    drop(log);
    last_segment(dir)
}

#[test]
fn damage_to_a_synced_frame_stops_the_node() {
    rt().block_on(async {
        let dir = TempDir::new().unwrap();
        let seg = two_frames(dir.path()).await;
        let mut bytes = std::fs::read(&seg).unwrap();
        // A byte inside the first frame's body: a later frame proves it was synced.
        bytes[8 + 8 + 10] ^= 0x01;
        std::fs::write(&seg, &bytes).unwrap();
        let err = open_log(dir.path()).expect_err("a damaged synced frame must be refused").to_string();
        assert!(err.contains("checksum") && err.contains("cannot be trusted"), "unclear error: {err}");

        // A frame length that runs into the next frame.
        let dir = TempDir::new().unwrap();
        let seg = two_frames(dir.path()).await;
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[8] = bytes[8].wrapping_add(1);
        std::fs::write(&seg, &bytes).unwrap();
        assert!(open_log(dir.path()).is_err(), "a wrong frame length is refused");

        // Not a segment at all.
        let dir = TempDir::new().unwrap();
        drop(open_log(dir.path()).unwrap());
        std::fs::write(last_segment(dir.path()), b"something else entirely").unwrap();
        let err = open_log(dir.path()).expect_err("a foreign file is refused").to_string();
        assert!(err.contains("file header"), "unclear error: {err}");
    });
}

#[test]
fn truncate_and_purge_are_durable_and_purge_unlinks_whole_segments() {
    rt().block_on(async {
        let dir = TempDir::new().unwrap();
        let stats = Arc::new(StorageStats::default());
        let mut log = WalLogStore::open_with(dir.path(), stats.clone(), 1024).unwrap();
        log.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
        for i in 1..=40 {
            log.blocking_append(entries(i, i)).await.unwrap();
        }
        let before = segments(dir.path()).len();
        assert!(before > 4, "small segments rotate ({before})");

        log.truncate(log_id(1, 38)).await.unwrap();
        log.purge(log_id(1, 30)).await.unwrap();
        let after = segments(dir.path()).len();
        assert!(after < before, "purged segments are unlinked ({before} -> {after})");
        assert_eq!(stats.snapshot().log_entries_purged, 30);
        assert_eq!(indexes(&mut log).await, (31..=37).collect::<Vec<_>>());
        drop(log);

        let mut log = WalLogStore::open_with(dir.path(), stats, 1024).unwrap();
        assert_eq!(indexes(&mut log).await, (31..=37).collect::<Vec<_>>(), "truncate and purge replayed");
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 30)));
        assert_eq!(state.last_log_id, Some(log_id(1, 37)));
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new_committed(3, 2)), "the vote outlives its segment");

        // Purged past the end (a snapshot install): the log starts after it.
        log.purge(log_id(2, 50)).await.unwrap();
        assert!(indexes(&mut log).await.is_empty());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(2, 50)));
        log.blocking_append(entries(51, 52)).await.unwrap();
        drop(log);
        let mut log = open_log(dir.path()).unwrap();
        assert_eq!(indexes(&mut log).await, vec![51, 52]);
    });
}

#[test]
fn an_append_that_does_not_follow_the_log_is_refused_before_it_is_written() {
    rt().block_on(async {
        let dir = TempDir::new().unwrap();
        let mut log = open_log(dir.path()).unwrap();
        log.blocking_append(entries(1, 3)).await.unwrap();
        assert!(log.blocking_append(entries(5, 5)).await.is_err(), "a gap");
        drop(log);
        let mut log = open_log(dir.path()).unwrap();
        assert_eq!(indexes(&mut log).await, vec![1, 2, 3], "nothing of the refused append was kept");
    });
}

#[test]
fn an_older_builds_sled_log_is_moved_and_older_builds_are_fenced_off() {
    rt().block_on(async {
        let dir = TempDir::new().unwrap();
        let vote = Vote::new_committed(4, 1);
        {
            // What a build before the segment log left.
            let backend = SledBackend::open(&dir.path().join("raft")).unwrap();
            let (mut log, _sm) = open(backend).unwrap();
            log.save_vote(&vote).await.unwrap();
            log.blocking_append(workload()).await.unwrap();
            log.blocking_append(entries(5, 9)).await.unwrap();
            log.save_committed(Some(log_id(1, 8))).await.unwrap();
            log.purge(log_id(1, 2)).await.unwrap();
            log.blocking_append(entries(10, 10)).await.unwrap();
        }
        let want = {
            let (mut log, _sm) = crate::open_on_disk(dir.path()).await.unwrap();
            assert_eq!(log.read_vote().await.unwrap(), Some(vote));
            assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 8)));
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
            assert_eq!(state.last_log_id, Some(log_id(1, 10)));
            let moved = log.try_get_log_entries(..).await.unwrap();
            assert_eq!(moved.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), (3..=10).collect::<Vec<_>>());
            assert!(matches!(moved[1].payload, EntryPayload::Blank), "entry 4 is the workload's blank");
            log.blocking_append(entries(11, 11)).await.unwrap();
            moved
        };
        // The sled log is gone, and a build that reads it refuses to start.
        let backend = SledBackend::open(&dir.path().join("raft")).unwrap();
        let left = backend.range(Tree::Log, (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded)).unwrap();
        assert!(left.is_empty(), "sled's log tree is emptied");
        let err = LogStore::open(backend, Arc::new(StorageStats::default())).expect_err("older layout reader refused");
        assert!(err.to_string().contains("newer"), "unclear error for a rolled-back build: {err}");

        // A second start does not move anything again.
        let (mut log, _sm) = crate::open_on_disk(dir.path()).await.unwrap();
        let now = log.try_get_log_entries(..11).await.unwrap();
        assert_eq!(now, want);
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(log_id(1, 11)));
    });
}
