//! Storage tests: openraft's conformance suite against both backends, then
//! the properties the router relies on beyond it (restore from snapshot,
//! re-apply after restart, crash loses only unsynced writes, format versions).

use std::collections::BTreeSet;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader, RaftSnapshotBuilder, StorageHelper};
use router_core::{Batch, Command, Outcome, ProviderId, State, UserId};
use tempfile::TempDir;

use crate::backend::{Backend, MemBackend, SledBackend, Tree};
use crate::types::{Entry, LogId, Membership, NodeAddr, StorageError, TypeConfig};
use crate::{LogStore, StateMachineStore, WalLogStore, open};

struct MemBuilder;

impl StoreBuilder<TypeConfig, LogStore<MemBackend>, StateMachineStore<MemBackend>> for MemBuilder {
    async fn build(&self) -> Result<((), LogStore<MemBackend>, StateMachineStore<MemBackend>), StorageError> {
        let (log, sm) = open(MemBackend::new())?;
        Ok(((), log, sm))
    }
}

/// What a node runs on: the segment-file log and sled.
struct DiskBuilder;

impl StoreBuilder<TypeConfig, WalLogStore, StateMachineStore<SledBackend>, TempDir> for DiskBuilder {
    async fn build(&self) -> Result<(TempDir, WalLogStore, StateMachineStore<SledBackend>), StorageError> {
        let dir = tempfile::tempdir().expect("create temp dir");
        let (log, sm) = crate::open_on_disk(dir.path()).await?;
        Ok((dir, log, sm))
    }
}

#[test]
fn conformance_mem() {
    Suite::test_all(MemBuilder).expect("openraft storage suite on MemBackend");
}

#[test]
fn conformance_disk() {
    Suite::test_all(DiskBuilder).expect("openraft storage suite on the segment log and sled");
}

pub(crate) fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

pub(crate) fn membership_entry(index: u64) -> Entry {
    let voters = BTreeSet::from([1u64]);
    let nodes = [(1u64, NodeAddr { peer: "127.0.0.1:1".into(), provider: "127.0.0.1:2".into() })];
    let m = Membership::new(vec![voters], nodes.into_iter().collect::<std::collections::BTreeMap<_, _>>());
    Entry { log_id: log_id(1, index), payload: EntryPayload::Membership(m) }
}

pub(crate) fn batch_entry(index: u64, commands: Vec<Command>) -> Entry {
    Entry { log_id: log_id(1, index), payload: EntryPayload::Normal(Batch { stamp_ms: 1_000 * index, commands }) }
}

/// A few entries that change the state visibly.
pub(crate) fn workload() -> Vec<Entry> {
    let acme = ProviderId::new("acme");
    vec![
        membership_entry(1),
        batch_entry(2, vec![Command::AddProvider { provider: acme.clone() }]),
        batch_entry(
            3,
            vec![
                Command::RegisterUser { provider: acme.clone(), user: UserId::new("alice") },
                Command::RegisterUser { provider: acme.clone(), user: UserId::new("bob") },
            ],
        ),
        Entry { log_id: log_id(2, 4), payload: EntryPayload::Blank },
    ]
}

fn snapshot_of(sm: &StateMachineStore<impl Backend>) -> State {
    sm.state().read().unwrap().clone()
}

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Applies the workload, builds a snapshot, and returns the state it covers.
async fn apply_and_snapshot<B: Backend>(sm: &mut StateMachineStore<B>) -> State {
    let replies = sm.apply(workload()).await.unwrap();
    assert_eq!(replies.len(), 4);
    assert_eq!(replies[0], Vec::<Outcome>::new(), "membership answers nothing");
    assert_eq!(replies[2].len(), 2, "one outcome per command");
    assert_eq!(*sm.applied().borrow(), 4);
    let state = snapshot_of(sm);
    assert!(state.user(&UserId::new("alice")).is_some(), "workload registered alice: {replies:?}");
    let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id, Some(log_id(2, 4)));
    state
}

async fn assert_restored<B: Backend>(sm: &mut StateMachineStore<B>, want: &State) {
    assert_eq!(&snapshot_of(sm), want, "state restored from snapshot");
    assert_eq!(*sm.applied().borrow(), 4, "applied index restored");
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(2, 4)));
    assert_eq!(membership.log_id(), &Some(log_id(1, 1)));
    let current = sm.get_current_snapshot().await.unwrap().expect("snapshot stored");
    assert_eq!(current.meta.last_log_id, Some(log_id(2, 4)));
}

#[test]
fn snapshot_restores_state_mem() {
    rt().block_on(async {
        let backend = MemBackend::new();
        let (_log, mut sm) = open(backend.clone()).unwrap();
        let want = apply_and_snapshot(&mut sm).await;
        // The snapshot was fsynced, so it survives a crash of the "disk" too.
        backend.crash();
        let (_log, mut restarted) = open(backend).unwrap();
        assert_restored(&mut restarted, &want).await;
    });
}

#[test]
fn snapshot_restores_state_sled() {
    let dir = tempfile::tempdir().unwrap();
    let want = rt().block_on(async {
        let (_log, mut sm) = open(SledBackend::open(dir.path()).unwrap()).unwrap();
        apply_and_snapshot(&mut sm).await
    });
    // Every handle on the first database is dropped here; reopen from disk.
    rt().block_on(async {
        let (_log, mut sm) = open(SledBackend::open(dir.path()).unwrap()).unwrap();
        assert_restored(&mut sm, &want).await;
    });
}

#[test]
fn install_snapshot_replaces_state_and_persists() {
    rt().block_on(async {
        let (_l, mut leader) = open(MemBackend::new()).unwrap();
        let want = apply_and_snapshot(&mut leader).await;
        let snap = leader.get_current_snapshot().await.unwrap().unwrap();

        let backend = MemBackend::new();
        let (_l, mut follower) = open(backend.clone()).unwrap();
        let rx = follower.applied();
        let mut data = follower.begin_receiving_snapshot().await.unwrap();
        *data = *snap.snapshot;
        follower.install_snapshot(&snap.meta, data).await.unwrap();
        assert!(rx.has_changed().unwrap(), "install notifies the applied watch");
        assert_restored(&mut follower, &want).await;

        backend.crash();
        let (_l, mut restarted) = open(backend).unwrap();
        assert_restored(&mut restarted, &want).await;
    });
}

#[test]
fn restart_reapplies_committed_entries() {
    rt().block_on(async {
        let backend = MemBackend::new();
        let (mut log, mut sm) = open(backend.clone()).unwrap();
        // Openraft starts a log at index 0; without a purge it reads from there.
        let first = Entry { log_id: LogId::new(CommittedLeaderId::new(0, 0), 0), payload: EntryPayload::Blank };
        let entries: Vec<Entry> = std::iter::once(first).chain(workload()).collect();
        log.blocking_append(entries.clone()).await.unwrap();
        log.save_committed(Some(log_id(2, 4))).await.unwrap();
        sm.apply(entries).await.unwrap();
        let want = snapshot_of(&sm);
        // Flush the committed id the way the next append would.
        backend.flush().await.unwrap();
        drop((log, sm));

        let (mut log, mut sm) = open(backend).unwrap();
        assert_eq!(snapshot_of(&sm), State::default(), "no snapshot: starts empty");
        StorageHelper::new(&mut log, &mut sm).get_initial_state().await.unwrap();
        assert_eq!(snapshot_of(&sm), want, "committed entries re-applied");
        assert_eq!(*sm.applied().borrow(), 4);
    });
}

#[test]
fn mem_crash_drops_only_unflushed_writes() {
    rt().block_on(async {
        let backend = MemBackend::new();
        backend.insert(Tree::Meta, b"a", b"1".to_vec()).unwrap();
        backend.flush().await.unwrap();
        backend.insert(Tree::Meta, b"b", b"2".to_vec()).unwrap();
        backend.remove(Tree::Meta, b"a").unwrap();
        assert_eq!(backend.get(Tree::Meta, b"b").unwrap(), Some(b"2".to_vec()), "reads see unflushed writes");
        assert_eq!(backend.pending_writes(), 2);

        let restarted = backend.clone();
        backend.crash();
        assert_eq!(restarted.get(Tree::Meta, b"a").unwrap(), Some(b"1".to_vec()), "flushed write kept");
        assert_eq!(restarted.get(Tree::Meta, b"b").unwrap(), None, "unflushed write lost");
        assert_eq!(restarted.pending_writes(), 0);

        // A torn crash keeps a prefix of the unflushed writes, in order.
        backend.insert(Tree::Log, b"x", b"1".to_vec()).unwrap();
        backend.insert(Tree::Log, b"y", b"2".to_vec()).unwrap();
        backend.crash_keeping(1);
        assert_eq!(
            backend.range(Tree::Log, (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded)).unwrap(),
            vec![(b"x".to_vec(), b"1".to_vec())]
        );
    });
}

#[test]
fn mem_crash_keeps_appended_log_but_not_later_unsynced_writes() {
    rt().block_on(async {
        let backend = MemBackend::new();
        let (mut log, _sm) = open(backend.clone()).unwrap();
        log.blocking_append(workload()).await.unwrap();
        log.save_committed(Some(log_id(2, 4))).await.unwrap(); // not fsynced on its own
        log.purge(log_id(1, 2)).await.unwrap(); // neither is this
        backend.crash();

        let (mut log, _sm) = open(backend).unwrap();
        assert_eq!(log.read_committed().await.unwrap(), None, "unsynced committed id lost");
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, None, "unsynced purge lost");
        assert_eq!(state.last_log_id, Some(log_id(2, 4)), "fsynced entries kept");
        assert_eq!(log.try_get_log_entries(1..5).await.unwrap().len(), 4);
    });
}

fn bump_version(bytes: &mut [u8]) {
    assert_eq!(bytes[0], crate::BASE_FORMAT, "nothing federated: the base format");
    bytes[0] = crate::FORMAT_VERSION + 1;
}

fn assert_newer_refused(result: Result<impl std::fmt::Debug, StorageError>) {
    let err = result.expect_err("newer format must be refused");
    let msg = format!("{err}");
    let expected = format!("format version {}", crate::FORMAT_VERSION + 1);
    assert!(msg.contains(&expected) && msg.contains("newer"), "unclear error: {msg}");
}

#[test]
fn newer_format_version_is_refused() {
    rt().block_on(async {
        // A log entry written by a newer build.
        let backend = MemBackend::new();
        let (mut log, _sm) = open(backend.clone()).unwrap();
        log.blocking_append(workload()).await.unwrap();
        let key = 4u64.to_be_bytes();
        let mut raw = backend.get(Tree::Log, &key).unwrap().unwrap();
        bump_version(&mut raw);
        backend.insert(Tree::Log, &key, raw).unwrap();
        assert_newer_refused(log.try_get_log_entries(4..5).await);
        assert_newer_refused(open(backend).map(|_| ()));

        // A stored snapshot written by a newer build.
        let backend = MemBackend::new();
        let (_log, mut sm) = open(backend.clone()).unwrap();
        apply_and_snapshot(&mut sm).await;
        let snap = sm.get_current_snapshot().await.unwrap().unwrap();
        let mut raw = backend.get(Tree::Snapshot, b"current").unwrap().unwrap();
        bump_version(&mut raw);
        backend.insert(Tree::Snapshot, b"current", raw).unwrap();
        assert_newer_refused(open(backend).map(|_| ()));

        // A snapshot received from a newer leader.
        let crate::SnapshotData::Memory(data) = *snap.snapshot else {
            panic!("the backend layout keeps snapshots in memory")
        };
        let mut data = data.into_inner();
        bump_version(&mut data);
        let (_log, mut follower) = open(MemBackend::new()).unwrap();
        let result = follower.install_snapshot(&snap.meta, Box::new(crate::SnapshotData::memory(data))).await;
        assert_newer_refused(result);
        assert_eq!(snapshot_of(&follower), State::default(), "refused snapshot leaves state alone");
    });
}

#[test]
fn codec_sections_and_formats() {
    use crate::codec::{decode, decode_with_section, encode_at, encode_with_section};
    // No section: exactly the base-format bytes older builds read.
    let plain = encode_with_section::<u64, String>(crate::FEDERATION_FORMAT, &7, None).unwrap();
    assert_eq!(plain, crate::codec::encode(&7u64).unwrap());
    assert_eq!(plain[0], crate::BASE_FORMAT);
    assert_eq!(decode_with_section::<u64, String>(&plain).unwrap(), (7, None));
    // With a section: version 2, the value first, then the section.
    let with = encode_with_section(crate::FEDERATION_FORMAT, &7u64, Some(&"peers".to_string())).unwrap();
    assert_eq!(with[0], crate::FEDERATION_FORMAT);
    assert_eq!(decode_with_section::<u64, String>(&with).unwrap(), (7, Some("peers".to_string())));
    assert_eq!(decode::<u64>(&with).unwrap(), 7, "the value alone still decodes");
    // Version 2 whose section is missing (cut off) is an error, not "none".
    let cut = encode_at(crate::FEDERATION_FORMAT, &7u64).unwrap();
    assert!(decode_with_section::<u64, String>(&cut).is_err());
}

#[test]
fn a_federation_entry_is_written_in_the_newer_format_and_others_in_the_base_one() {
    let entry = |commands| openraft::Entry::<crate::TypeConfig> {
        log_id: log_id(1, 1),
        payload: openraft::EntryPayload::Normal(router_core::Batch { stamp_ms: 1, commands }),
    };
    let plain = entry(vec![router_core::Command::AddProvider { provider: router_core::ProviderId::new("p") }]);
    assert_eq!(crate::entry_format(&plain), crate::BASE_FORMAT);
    let federated = entry(vec![router_core::Command::RemovePeer { peer: router_core::ClusterId::new("b") }]);
    assert_eq!(crate::entry_format(&federated), crate::FEDERATION_FORMAT);
}

#[test]
fn codec_rejects_empty_and_unknown() {
    assert!(matches!(crate::codec::decode::<u64>(&[]), Err(crate::FormatError::Empty)));
    assert!(matches!(crate::codec::decode::<u64>(&[0, 1]), Err(crate::FormatError::Unknown { found: 0 })));
    let bytes = crate::codec::encode(&7u64).unwrap();
    assert_eq!(crate::codec::decode::<u64>(&bytes).unwrap(), 7);
}

#[test]
fn a_snapshot_in_the_legacy_place_is_moved_and_older_builds_are_fenced_off() {
    rt().block_on(async {
        // Lay the data out the way builds before the snapshot tree did.
        let backend = MemBackend::new();
        let (_log, mut sm) = open(backend.clone()).unwrap();
        apply_and_snapshot(&mut sm).await;
        let expected = snapshot_of(&sm);
        let current = backend.get(Tree::Snapshot, b"current").unwrap().unwrap();
        backend.insert(Tree::Meta, b"snapshot", current).unwrap();
        backend.remove_range(Tree::Snapshot, (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded)).unwrap();

        let (_log, sm) = open(backend.clone()).unwrap();
        assert_eq!(snapshot_of(&sm), expected, "state restored from the legacy place");
        assert!(backend.get(Tree::Snapshot, b"current").unwrap().is_some(), "moved to the snapshot tree");
        let marker = backend.get(Tree::Meta, b"snapshot").unwrap().unwrap();
        assert_eq!(marker, crate::state_machine::MOVED_MARKER);
        // Builds before the move read only the base format: to them the
        // marker is a newer format, refused.
        assert!(marker[0] > crate::BASE_FORMAT);
        // And it opens again from the new place.
        let (_log, sm) = open(backend).unwrap();
        assert_eq!(snapshot_of(&sm), expected);
    });
}

#[test]
fn federation_peers_survive_a_snapshot_and_plain_snapshots_keep_the_base_format() {
    rt().block_on(async {
        let backend = MemBackend::new();
        let (_log, mut sm) = open(backend.clone()).unwrap();
        apply_and_snapshot(&mut sm).await;
        let plain = backend.get(Tree::Snapshot, b"current").unwrap().unwrap();
        let stored: (crate::types::SnapshotMeta, Vec<u8>) = crate::codec::decode(&plain).unwrap();
        assert_eq!(stored.1[0], crate::BASE_FORMAT, "a cluster that never federated writes the old layout");

        let peer = router_core::ClusterId::new("eu-hub");
        let register = Command::RegisterPeer {
            peer: peer.clone(),
            endpoints: vec!["127.0.0.1:9".into()],
            ca_pem: "CA".into(),
            providers: vec![ProviderId::new("beta")],
            max_queue: 0,
        };
        let entry = Entry {
            log_id: log_id(2, 5),
            payload: EntryPayload::Normal(Batch { stamp_ms: 5_000, commands: vec![register] }),
        };
        sm.apply(vec![entry]).await.unwrap();
        let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(2, 5)));
        let want = snapshot_of(&sm);
        assert!(want.peer(&peer).is_some());

        let (_log, restarted) = open(backend).unwrap();
        assert_eq!(snapshot_of(&restarted), want, "the federation section came back with the state");
    });
}

/// Builds a snapshot and answers the format version byte of its stored data.
async fn snapshot_format_after_build(sm: &mut StateMachineStore<MemBackend>, backend: &MemBackend) -> u8 {
    sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let stored = backend.get(Tree::Snapshot, b"current").unwrap().unwrap();
    let stored: (crate::types::SnapshotMeta, Vec<u8>) = crate::codec::decode(&stored).unwrap();
    stored.1[0]
}

/// The last cluster version whose snapshots keep the send answers in the
/// state's own encoding: the formats 3 to 5 are written up to it.
const BEFORE_SENDER_WINDOWS: u32 = router_core::dedup::SENDER_WINDOWS_VERSION - 1;

#[test]
fn a_raised_cluster_version_and_once_answers_survive_a_snapshot_in_format_3() {
    rt().block_on(async {
        let backend = MemBackend::new();
        let (_log, mut sm) = open(backend.clone()).unwrap();
        apply_and_snapshot(&mut sm).await;
        let raise = Command::SetClusterVersion { version: BEFORE_SENDER_WINDOWS };
        let once = Command::Once {
            request: router_core::RequestId { origin: 9, seq: 1 },
            command: Box::new(Command::AddProvider { provider: ProviderId::new("gamma") }),
        };
        let entry = Entry {
            log_id: log_id(2, 5),
            payload: EntryPayload::Normal(Batch { stamp_ms: 5_000, commands: vec![raise, once] }),
        };
        assert_eq!(crate::entry_format(&entry), crate::CLUSTER_VERSION_FORMAT);
        sm.apply(vec![entry]).await.unwrap();
        assert_eq!(snapshot_format_after_build(&mut sm, &backend).await, crate::CLUSTER_VERSION_FORMAT);
        let want = snapshot_of(&sm);
        assert_eq!(want.cluster_version(), BEFORE_SENDER_WINDOWS);

        let (_log, restarted) = open(backend).unwrap();
        let got = snapshot_of(&restarted);
        assert_eq!(got, want, "version and Once answers came back with the state");
    });
}

#[test]
fn a_restore_under_way_survives_a_snapshot_in_format_4() {
    rt().block_on(async {
        let backend = MemBackend::new();
        let (_log, mut sm) = open(backend.clone()).unwrap();
        let commands = vec![
            Command::SetClusterVersion { version: BEFORE_SENDER_WINDOWS },
            Command::RestoreBegin { id: 42 },
            Command::RestoreItems {
                id: 42,
                part: 0,
                items: vec![router_core::StateItem::Mailbox { owner: ProviderId::new("beta"), next_seq: 9 }],
            },
        ];
        let entry = Entry { log_id: log_id(2, 5), payload: EntryPayload::Normal(Batch { stamp_ms: 5_000, commands }) };
        assert_eq!(crate::entry_format(&entry), crate::PARTED_RESTORE_FORMAT);
        sm.apply(vec![entry]).await.unwrap();
        assert_eq!(snapshot_format_after_build(&mut sm, &backend).await, crate::PARTED_RESTORE_FORMAT);
        let want = snapshot_of(&sm);
        assert_eq!(want.restore_progress().map(|p| (p.id, p.next_part)), Some((42, 1)));

        let (_log, restarted) = open(backend).unwrap();
        assert_eq!(snapshot_of(&restarted), want, "the restore's progress came back with the state");
    });
}

#[test]
fn an_entry_raising_the_cluster_version_past_this_build_stops_apply() {
    rt().block_on(async {
        let (_log, mut sm) = open(MemBackend::new()).unwrap();
        let before = snapshot_of(&sm);
        let entry = Entry {
            log_id: log_id(1, 1),
            payload: EntryPayload::Normal(Batch {
                stamp_ms: 5_000,
                commands: vec![Command::SetClusterVersion { version: router_core::CLUSTER_VERSION + 1 }],
            }),
        };
        let err = sm.apply(vec![entry]).await.expect_err("a storage error: the node stops");
        assert!(err.to_string().contains("upgrade this node"), "{err}");
        assert_eq!(snapshot_of(&sm), before, "nothing applied");
        assert_eq!(sm.applied_state().await.unwrap().0, None, "not counted as applied");
    });
}

#[test]
fn members_incarnations_survive_a_snapshot_in_format_5() {
    rt().block_on(async {
        let backend = MemBackend::new();
        let (_log, mut sm) = open(backend.clone()).unwrap();
        let commands = vec![
            Command::SetClusterVersion { version: BEFORE_SENDER_WINDOWS },
            Command::SetIncarnation { node: 1, incarnation: 0xfeed },
            Command::SetIncarnation { node: 2, incarnation: 0xbeef },
        ];
        let entry = Entry { log_id: log_id(2, 5), payload: EntryPayload::Normal(Batch { stamp_ms: 5_000, commands }) };
        assert_eq!(crate::entry_format(&entry), crate::INCARNATION_FORMAT);
        sm.apply(vec![entry]).await.unwrap();
        assert_eq!(snapshot_format_after_build(&mut sm, &backend).await, crate::INCARNATION_FORMAT);
        let want = snapshot_of(&sm);
        assert_eq!(want.incarnation_of(2), Some(0xbeef));

        let (_log, restarted) = open(backend).unwrap();
        assert_eq!(snapshot_of(&restarted), want, "the incarnations came back with the state");
    });
}

#[test]
fn send_answers_kept_per_sender_survive_a_snapshot_in_format_6() {
    use router_core::MessageId;
    rt().block_on(async {
        let backend = MemBackend::new();
        let (_log, mut sm) = open(backend.clone()).unwrap();
        apply_and_snapshot(&mut sm).await;
        let acme = ProviderId::new("acme");
        let send = crate::files_tests::send_from("acme", 1, 8);
        let commands = vec![
            Command::SetClusterVersion { version: router_core::CLUSTER_VERSION },
            Command::RegisterDevice { provider: acme.clone(), user: UserId::new("bob"), device: 1, registration_id: 7 },
            send,
        ];
        let entry = Entry { log_id: log_id(2, 5), payload: EntryPayload::Normal(Batch { stamp_ms: 5_000, commands }) };
        let replies = sm.apply(vec![entry]).await.unwrap();
        assert!(matches!(replies[0][2], Outcome::Sent { .. }), "{replies:?}");
        assert_eq!(snapshot_format_after_build(&mut sm, &backend).await, crate::SENDER_WINDOWS_FORMAT);
        let want = snapshot_of(&sm);
        let answer = want.dedup_answer(&acme, &MessageId::new("m-1"));
        assert!(answer.is_some() && want.send_answers().sender_windows().is_some());

        let (_log, restarted) = open(backend).unwrap();
        let got = snapshot_of(&restarted);
        assert_eq!(got, want, "the per-sender windows came back with the state");
        assert_eq!(got.dedup_answer(&acme, &MessageId::new("m-1")), answer);

        // A state read back from a backup (offline) holds per-sender windows
        // at version 0; its encoding must keep them all the same.
        let offline = State::from_items(want.into_items());
        assert_eq!(offline.cluster_version(), router_core::version::BASE_CLUSTER_VERSION);
        let back = crate::decode_state(&crate::encode_state(&offline).unwrap()).unwrap();
        assert_eq!(back.dedup_answer(&acme, &MessageId::new("m-1")), answer);
    });
}

#[test]
fn a_restore_part_with_answers_by_digest_is_written_in_format_6() {
    use router_core::dedup::{Answer, Digest};
    use router_core::{MessageId, StateItem};
    let by_digest = StateItem::SenderAnswer {
        stamp_ms: 1,
        sender: ProviderId::new("acme"),
        digest: Digest::of(&MessageId::new("m-1")),
        answer: Answer::Done,
    };
    let part = Command::RestoreItems { id: 1, part: 0, items: vec![by_digest] };
    assert_eq!(crate::commands_format([&part]), crate::SENDER_WINDOWS_FORMAT);
    let plain = Command::RestoreItems {
        id: 1,
        part: 0,
        items: vec![StateItem::Mailbox { owner: ProviderId::new("acme"), next_seq: 1 }],
    };
    assert_eq!(crate::commands_format([&plain]), crate::PARTED_RESTORE_FORMAT);
}
