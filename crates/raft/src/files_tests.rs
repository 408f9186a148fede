//! The on-disk layout's state machine: queued ciphertexts in payload files,
//! snapshots as files built, received and installed by streaming, and the
//! move of an older build's snapshot out of sled.

use std::path::Path;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder};
use router_core::{
    Batch, Blob, Command, ContentType, DevicePart, MailboxItem, MessageId, Outcome, ProviderId, SendEnvelope, State,
    UserId,
};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::{Backend, SledBackend, Tree};
use crate::tests::{log_id, membership_entry, rt};
use crate::types::{Entry, Snapshot};
use crate::{SnapshotData, StateMachineStore, open};

const BIG: usize = 4096;

fn entry(index: u64, commands: Vec<Command>) -> Entry {
    Entry { log_id: log_id(1, index), payload: EntryPayload::Normal(Batch { stamp_ms: 1_000 * index, commands }) }
}

fn send(n: u64, bytes: usize) -> Command {
    send_from("alpha", n, bytes)
}

/// An envelope of `sender` for bob's device 1 (registration 7), message id `m-<n>`.
pub(crate) fn send_from(sender: &str, n: u64, bytes: usize) -> Command {
    Command::Send(SendEnvelope {
        sender: ProviderId::new(sender),
        sender_user: None,
        sender_device: None,
        message_id: MessageId::new(format!("m-{n}")),
        recipient: UserId::new("bob"),
        content_type: ContentType::Message,
        ttl_ms: 86_400_000,
        parts: vec![DevicePart {
            device: 1,
            registration_id: 7,
            message_type: 1,
            ciphertext: Blob::from(vec![n as u8; bytes]),
        }],
        traceparent: None,
    })
}

/// Two providers, bob at beta, and `sends` envelopes for bob (every other
/// one too short to leave memory). Answers the last applied index.
async fn apply_mail<B: Backend>(sm: &mut StateMachineStore<B>, sends: u64) -> u64 {
    let (alpha, beta) = (ProviderId::new("alpha"), ProviderId::new("beta"));
    let mut entries = vec![
        membership_entry(1),
        entry(
            2,
            vec![
                Command::AddProvider { provider: alpha },
                Command::AddProvider { provider: beta.clone() },
                Command::RegisterUser { provider: beta.clone(), user: UserId::new("bob") },
                Command::RegisterDevice { provider: beta, user: UserId::new("bob"), device: 1, registration_id: 7 },
            ],
        ),
    ];
    for n in 0..sends {
        let bytes = if n % 2 == 0 { BIG } else { 16 };
        entries.push(entry(3 + n, vec![send(n, bytes)]));
    }
    let last = entries.len() as u64;
    let replies = sm.apply(entries).await.unwrap();
    for reply in &replies[2..] {
        assert!(matches!(reply[0], Outcome::Sent { .. }), "{reply:?}");
    }
    last
}

fn queued(sm: &StateMachineStore<impl Backend>) -> Vec<Blob> {
    let state = sm.state();
    let state = state.read().unwrap();
    let mailbox = &state.mailboxes[&ProviderId::new("beta")];
    mailbox
        .entries
        .values()
        .map(|e| match &e.item {
            MailboxItem::Envelope(env) => env.parts[0].ciphertext.clone(),
            other => panic!("unexpected entry {other:?}"),
        })
        .collect()
}

fn payload_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("payloads")).map_or(0, |d| d.count())
}

/// Long ciphertexts are in files, short ones in memory, and both read back.
fn assert_placed(blobs: &[Blob]) {
    for (n, blob) in blobs.iter().enumerate() {
        let long = n % 2 == 0;
        assert_eq!(blob.inline().is_none(), long, "entry {n}: long ones leave memory, short ones stay");
        let bytes = blob.bytes().unwrap();
        assert_eq!(bytes.len(), if long { BIG } else { 16 });
        assert!(bytes.iter().all(|&b| b == n as u8));
    }
}

#[test]
fn queued_ciphertexts_leave_memory_and_come_back_after_a_restart() {
    let dir = TempDir::new().unwrap();
    let want: State = rt().block_on(async {
        let (_log, mut sm) = crate::open_on_disk(dir.path()).await.unwrap();
        apply_mail(&mut sm, 6).await;
        assert_placed(&queued(&sm));
        assert_eq!(payload_files(dir.path()), 1);
        let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert!(matches!(*snap.snapshot, SnapshotData::Deferred(..)), "bytes are made only for a peer");
        let state = sm.state().read().unwrap().clone();
        state
    });
    let state_file = current_snapshot_file(dir.path());
    assert!(state_file.ends_with("state"), "{}", state_file.display());
    let meta = std::fs::read(state_file.with_file_name("meta")).unwrap();
    assert_eq!(meta[0], crate::codec::PLACED_SNAPSHOT_FORMAT, "older builds refuse a placed snapshot's meta");
    let size = std::fs::metadata(&state_file).unwrap().len();
    assert!(size < BIG as u64, "the snapshot names the {} queued ciphertexts instead of copying them: {size} bytes", 3);
    rt().block_on(async {
        let (_log, mut sm) = crate::open_on_disk(dir.path()).await.unwrap();
        assert_eq!(*sm.state().read().unwrap(), want, "the snapshot file brings back the state");
        assert_placed(&queued(&sm));
        assert_eq!(payload_files(dir.path()), 2, "the named segment is kept, a new one is open");
        let current = sm.get_current_snapshot().await.unwrap().expect("snapshot file kept");
        assert_eq!(current.meta.last_log_id, Some(log_id(1, 8)));
    });
}

/// The file of the current snapshot of the node at `dir`: `state` (placed) or `data`.
fn current_snapshot_file(dir: &Path) -> std::path::PathBuf {
    let snapshots = dir.join("snapshots");
    let current = std::fs::read_dir(&snapshots).unwrap().map(|e| e.unwrap().path()).find(|p| p.join("meta").exists());
    let current = current.expect("a committed snapshot");
    [current.join("state"), current.join("data")].into_iter().find(|p| p.exists()).expect("a snapshot file")
}

#[test]
fn a_restart_drops_segments_no_snapshot_names_and_refuses_a_missing_one() {
    let dir = TempDir::new().unwrap();
    rt().block_on(snapshot_of_mail(dir.path(), 4));
    // What a crash can leave: a segment written after the snapshot (the log has its records).
    let stray = dir.path().join("payloads").join("00000042.payload");
    std::fs::write(&stray, b"records the log still holds").unwrap();
    rt().block_on(async {
        let (_log, sm) = crate::open_on_disk(dir.path()).await.unwrap();
        assert_placed(&queued(&sm));
    });
    assert!(!stray.exists(), "a segment the snapshot does not name is removed at start");
    // A segment the snapshot names is gone: the node stops instead of starting without that mail.
    for entry in std::fs::read_dir(dir.path().join("payloads")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let err = rt().block_on(crate::open_on_disk(dir.path())).map(|_| ()).expect_err("missing segment refused");
    assert!(err.to_string().contains("payload segment 1 is missing"), "unclear error: {err}");
}

#[test]
fn a_snapshot_read_after_a_restart_is_sent_with_its_bytes() {
    let (leader_dir, follower_dir) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    rt().block_on(async {
        let (_l, leader, _) = snapshot_of_mail(leader_dir.path(), 6).await;
        let want = leader.state().read().unwrap().clone();
        drop(leader);
        let (_l, mut leader) = crate::open_on_disk(leader_dir.path()).await.unwrap();
        let snap = leader.get_current_snapshot().await.unwrap().expect("current snapshot");
        let (_f, mut follower) = crate::open_on_disk(follower_dir.path()).await.unwrap();
        follower.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
        assert_eq!(*follower.state().read().unwrap(), want);
        assert_placed(&queued(&follower));
        let kept = current_snapshot_file(follower_dir.path());
        assert!(kept.ends_with("state"), "a received snapshot is kept placed: {}", kept.display());
        assert!(std::fs::metadata(&kept).unwrap().len() < BIG as u64, "its bytes are in the payload files only");
        assert!(!kept.with_file_name("data").exists());
        // A restart of the follower claims the segments the install wrote.
        drop((_f, follower));
        let (_f, follower) = crate::open_on_disk(follower_dir.path()).await.unwrap();
        assert_eq!(*follower.state().read().unwrap(), want);
        assert_placed(&queued(&follower));
    });
}

/// A node on disk at `dir` with `sends` envelopes queued, and the snapshot it built of them.
async fn snapshot_of_mail(dir: &Path, sends: u64) -> (crate::WalLogStore, StateMachineStore<SledBackend>, Snapshot) {
    let (log, mut sm) = crate::open_on_disk(dir).await.unwrap();
    apply_mail(&mut sm, sends).await;
    let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    (log, sm, snap)
}

#[test]
fn a_snapshot_sent_in_chunks_is_installed_into_files() {
    let (leader_dir, follower_dir) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    rt().block_on(async {
        let (_l, leader, mut snap) = snapshot_of_mail(leader_dir.path(), 10).await;

        let (_f, mut follower) = crate::open_on_disk(follower_dir.path()).await.unwrap();
        let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
        // As openraft's chunked sender moves it: the size first, then each
        // chunk after a seek to its offset, written to the other file.
        use tokio::io::AsyncSeekExt as _;
        let end = snap.snapshot.seek(std::io::SeekFrom::End(0)).await.unwrap();
        let mut offset = 0;
        while offset < end {
            snap.snapshot.seek(std::io::SeekFrom::Start(offset)).await.unwrap();
            let mut chunk = Vec::with_capacity(1000);
            while chunk.len() < chunk.capacity() {
                if snap.snapshot.read_buf(&mut chunk).await.unwrap() == 0 {
                    break;
                }
            }
            receiving.write_all(&chunk).await.unwrap();
            offset += chunk.len() as u64;
        }
        follower.install_snapshot(&snap.meta, receiving).await.unwrap();
        assert_eq!(*follower.state().read().unwrap(), *leader.state().read().unwrap());
        assert_placed(&queued(&follower));
        assert!(payload_files(follower_dir.path()) >= 1);
        let current = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snap.meta, "the installed snapshot is the follower's current one");
    });
}

#[test]
fn a_damaged_snapshot_is_refused_and_changes_nothing() {
    let (leader_dir, follower_dir) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    rt().block_on(async {
        let (_l, _leader, mut snap) = snapshot_of_mail(leader_dir.path(), 4).await;
        let mut data = Vec::new();
        snap.snapshot.read_to_end(&mut data).await.unwrap();
        data.truncate(data.len() - 100);

        let (_f, mut follower) = crate::open_on_disk(follower_dir.path()).await.unwrap();
        let result = follower.install_snapshot(&snap.meta, Box::new(SnapshotData::memory(data))).await;
        assert!(result.is_err(), "a cut-off snapshot must not install");
        assert_eq!(*follower.state().read().unwrap(), State::default());
        assert!(follower.get_current_snapshot().await.unwrap().is_none(), "nothing was kept");
    });
}

#[test]
fn an_older_builds_sled_snapshot_is_moved_to_a_file_and_fenced_off() {
    let dir = TempDir::new().unwrap();
    let want = rt().block_on(async {
        // What a build with snapshots in sled left.
        let backend = SledBackend::open(&dir.path().join("raft")).unwrap();
        let (_log, mut sm) = open(backend).unwrap();
        apply_mail(&mut sm, 4).await;
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let state = sm.state().read().unwrap().clone();
        state
    });
    rt().block_on(async {
        let (_log, mut sm) = crate::open_on_disk(dir.path()).await.unwrap();
        assert_eq!(*sm.state().read().unwrap(), want);
        assert_placed(&queued(&sm));
        assert!(sm.get_current_snapshot().await.unwrap().is_some());
    });
    // sled keeps only the marker, which a build reading snapshots there refuses.
    let backend = SledBackend::open(&dir.path().join("raft")).unwrap();
    let err = StateMachineStore::open(backend.clone(), Default::default()).expect_err("rolled-back build refused");
    assert!(err.to_string().contains("newer"), "unclear error for a rolled-back build: {err}");
    let left = backend.get(Tree::Snapshot, b"current").unwrap().unwrap();
    assert!(left.len() < 16, "the sled copy is gone ({} bytes left)", left.len());
    drop(backend);
    // A second start finds the file and moves nothing.
    rt().block_on(async {
        let (_log, sm) = crate::open_on_disk(dir.path()).await.unwrap();
        assert_eq!(*sm.state().read().unwrap(), want);
    });
}

#[test]
fn a_damaged_snapshot_file_stops_the_node_instead_of_decoding_another_state() {
    let dir = TempDir::new().unwrap();
    rt().block_on(snapshot_of_mail(dir.path(), 4));
    let data = current_snapshot_file(dir.path());
    let mut bytes = std::fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&data, bytes).unwrap();
    let err = rt().block_on(crate::open_on_disk(dir.path())).map(|_| ()).expect_err("damaged snapshot refused");
    assert!(err.to_string().contains("damaged"), "unclear error: {err}");
}

fn bytes_forms(dir: &Path) -> Vec<std::path::PathBuf> {
    let snapshots = dir.join("snapshots");
    let mut found: Vec<_> = std::fs::read_dir(snapshots)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("bytes-"))
        .collect();
    found.sort();
    found
}

async fn read_all(mut snap: Snapshot) -> Vec<u8> {
    let mut bytes = Vec::new();
    snap.snapshot.read_to_end(&mut bytes).await.unwrap();
    bytes
}

#[test]
fn a_bytes_form_written_for_one_send_serves_the_next_and_goes_with_its_snapshot() {
    let dir = TempDir::new().unwrap();
    rt().block_on(async {
        let (_l, mut sm, _) = snapshot_of_mail(dir.path(), 6).await;
        assert!(bytes_forms(dir.path()).is_empty(), "nothing is written before a peer reads");
        let first = read_all(sm.get_current_snapshot().await.unwrap().unwrap()).await;
        let kept = bytes_forms(dir.path());
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(std::fs::read(&kept[0]).unwrap(), first);
        // The next send reads the kept file, not a new one.
        std::fs::write(&kept[0], b"kept").unwrap();
        let second = read_all(sm.get_current_snapshot().await.unwrap().unwrap()).await;
        assert_eq!(second, b"kept");
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert!(bytes_forms(dir.path()).is_empty(), "it goes with the snapshot it was written for");
    });
}
