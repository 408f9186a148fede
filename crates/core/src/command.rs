//! Commands: what a client request becomes once validated at the edge. Each
//! names the key it touches (provider, user or mailbox), so that the log can
//! later be partitioned by key.

use crate::federation::{ClusterId, PeerStatus, RelayedItem};
use crate::ids::{DeviceId, ProviderId, RegistrationId, Seq, UserId};
use crate::limits::Limits;
pub use crate::payload::{DevicePart, PrekeyUpload, RequestId, SendEnvelope};
use serde::{Deserialize, Serialize};

/// One Raft entry's payload: many client commands sharing one append and one
/// fsync (group commit), stamped with the leader's clock when it was formed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Leader wall-clock milliseconds. `apply` never goes backwards: it uses
    /// max(stamp, previous stamp), so a leader with a slow clock cannot
    /// un-expire anything.
    pub stamp_ms: u64,
    pub commands: Vec<Command>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Operator: onboard a provider directly (active), e.g. at bootstrap.
    AddProvider {
        provider: ProviderId,
    },
    /// A provider asks for interoperability (or the operator files it).
    /// Starts the three-month clock. Idempotent while the request is open.
    RequestProvider {
        provider: ProviderId,
        name: String,
        contact: String,
        media_hosts: Vec<String>,
    },
    /// Operator: move a provider through its lifecycle.
    SetProviderStatus {
        provider: ProviderId,
        action: crate::provider::ProviderAction,
    },
    /// The provider replaces its media hosts.
    SetMediaHosts {
        provider: ProviderId,
        media_hosts: Vec<String>,
    },
    /// Operator: replace the replicated limits.
    SetLimits {
        limits: Limits,
    },
    RegisterUser {
        provider: ProviderId,
        user: UserId,
    },
    DeregisterUser {
        provider: ProviderId,
        user: UserId,
    },
    RegisterDevice {
        provider: ProviderId,
        user: UserId,
        device: DeviceId,
        registration_id: RegistrationId,
    },
    RemoveDevice {
        provider: ProviderId,
        user: UserId,
        device: DeviceId,
    },
    /// Signatures were verified at the edge before this entered the log.
    UploadPrekeys {
        provider: ProviderId,
        user: UserId,
        device: DeviceId,
        upload: PrekeyUpload,
    },
    /// Take one bundle per device (or for one device); consumes one-time keys.
    ClaimPrekeys {
        requester: ProviderId,
        user: UserId,
        device: Option<DeviceId>,
    },
    Send(SendEnvelope),
    Ack {
        provider: ProviderId,
        seqs: Vec<Seq>,
    },
    /// Operator: load a backup into an empty cluster (disaster recovery).
    Restore {
        state: Box<crate::state::State>,
    },
    /// Creates a group; `creator` (a user of `provider`) becomes its admin.
    CreateGroup {
        provider: ProviderId,
        creator: UserId,
        group: crate::group::GroupId,
        members: Vec<(UserId, crate::group::Role)>,
    },
    /// An admin (a user of `provider`) adds, removes or re-roles members.
    ChangeGroup {
        provider: ProviderId,
        actor: UserId,
        group: crate::group::GroupId,
        set: Vec<(UserId, crate::group::Role)>,
        remove: Vec<UserId>,
    },
    SendGroup(crate::group::GroupSend),
    /// Operator: register a federation peer, or update its endpoints, CA and providers.
    RegisterPeer {
        peer: ClusterId,
        endpoints: Vec<String>,
        ca_pem: String,
        providers: Vec<ProviderId>,
        /// Outbound queue quota (0: the cluster's mailbox limit).
        max_queue: u64,
    },
    /// Operator: the peer's suspend switch.
    SetPeerStatus {
        peer: ClusterId,
        status: PeerStatus,
    },
    /// Operator: forget a peer; refused while its outbound queue holds entries.
    RemovePeer {
        peer: ClusterId,
    },
    /// A provider's 1:1 send to a user that `peer` serves (resolved there as a
    /// user of `recipient_provider`): queued for relay.
    RelaySend {
        peer: ClusterId,
        recipient_provider: ProviderId,
        envelope: SendEnvelope,
    },
    /// Items `origin` relayed from its outbound queue, to store here.
    AcceptRelayed {
        origin: ClusterId,
        items: Vec<RelayedItem>,
    },
    /// `peer` answered for entries of its outbound queue: stored there
    /// (`delivered`) or refused with (reason, detail).
    RelayAcked {
        peer: ClusterId,
        delivered: Vec<Seq>,
        refused: Vec<(Seq, String, String)>,
    },
    /// Creates (`create`) or changes a group homed here whose new members
    /// include users of federation peers (`remote`: user, its cluster).
    FederatedGroup {
        provider: ProviderId,
        actor: UserId,
        group: crate::group::GroupId,
        create: bool,
        set: Vec<(UserId, crate::group::Role)>,
        remote: Vec<(UserId, ClusterId)>,
        remove: Vec<UserId>,
    },
    /// A member at federation peer `origin` sends to a group homed here;
    /// `send.sender` is its provider as `origin` names it.
    SendGroupFromPeer {
        origin: ClusterId,
        send: crate::group::GroupSend,
    },
    /// Operator: the federation section of a backup, right after its
    /// `Restore` (which carries the rest of the state in the older format).
    RestoreFederation {
        federation: Box<crate::federation::Federation>,
    },
    /// Leader: every member now runs a build that applies the log by the
    /// rules of `version` ([`crate::version`]); raises the state's cluster
    /// version (never lowers it).
    SetClusterVersion {
        version: u32,
    },
    /// `command`, applied at most once: a retry carrying the same `request`
    /// (a write whose first attempt's outcome was lost with the connection)
    /// gets the first attempt's outcome back instead of applying again.
    /// Used for commands that are not idempotent (prekey claims and uploads),
    /// from cluster version 2 on.
    Once {
        request: RequestId,
        command: Box<Command>,
    },
    /// Operator: start loading a backup into an empty cluster, in parts
    /// (cluster version 3; `state::restore`). Until the restore finishes,
    /// every other write is refused.
    RestoreBegin {
        id: u64,
    },
    /// The next part of restore `id`: items of the backup's state.
    RestoreItems {
        id: u64,
        part: u32,
        items: Vec<crate::state::restore::StateItem>,
    },
    /// Restore `id` is complete after `parts` parts; writes resume.
    RestoreFinish {
        id: u64,
        parts: u32,
    },
    /// Leader: Raft member `node` runs as `incarnation` (cluster version 4;
    /// docs/design/incarnations.md). Votes and appends from, and answers by,
    /// another incarnation under that node id do not count.
    SetIncarnation {
        node: u64,
        incarnation: u64,
    },
}

impl Command {
    /// Every ciphertext the command carries into the state, for the storage
    /// layer to place before it is applied (a ciphertext the state stores
    /// always comes from a command or a snapshot). Missing one here costs
    /// memory, not correctness.
    pub fn blobs_mut<'a>(&'a mut self, out: &mut Vec<&'a mut crate::blob::Blob>) {
        use crate::federation::RelayedKind;
        match self {
            Command::Send(env) | Command::RelaySend { envelope: env, .. } => env.blobs_mut(out),
            Command::SendGroup(g) | Command::SendGroupFromPeer { send: g, .. } => g.blobs_mut(out),
            Command::AcceptRelayed { items, .. } => {
                for item in items {
                    match &mut item.item {
                        RelayedKind::Envelope(env) => env.blobs_mut(out),
                        RelayedKind::Group(g) => g.blobs_mut(out),
                        RelayedKind::Undeliverable { .. } => {}
                    }
                }
            }
            Command::Restore { state } => {
                for mailbox in state.mailboxes.values_mut() {
                    for entry in mailbox.entries.values_mut() {
                        std::sync::Arc::make_mut(entry).item.blobs_mut(out);
                    }
                }
            }
            Command::Once { command, .. } => command.blobs_mut(out),
            Command::RestoreItems { items, .. } => {
                for item in items {
                    item.blobs_mut(out);
                }
            }
            _ => {}
        }
    }

    /// The provider on whose behalf the command runs (for metrics and logs).
    pub fn actor(&self) -> Option<&ProviderId> {
        match self {
            Command::AddProvider { .. }
            | Command::SetLimits { .. }
            | Command::Restore { .. }
            | Command::RestoreBegin { .. }
            | Command::RestoreItems { .. }
            | Command::RestoreFinish { .. }
            | Command::SetProviderStatus { .. } => None,
            Command::RequestProvider { provider, .. } | Command::SetMediaHosts { provider, .. } => Some(provider),
            Command::RegisterUser { provider, .. }
            | Command::DeregisterUser { provider, .. }
            | Command::RegisterDevice { provider, .. }
            | Command::RemoveDevice { provider, .. }
            | Command::UploadPrekeys { provider, .. }
            | Command::Ack { provider, .. } => Some(provider),
            Command::ClaimPrekeys { requester, .. } => Some(requester),
            Command::Send(s) => Some(&s.sender),
            Command::CreateGroup { provider, .. } | Command::ChangeGroup { provider, .. } => Some(provider),
            Command::SendGroup(g) => Some(&g.sender),
            Command::RelaySend { envelope, .. } => Some(&envelope.sender),
            Command::RegisterPeer { .. }
            | Command::SetPeerStatus { .. }
            | Command::RemovePeer { .. }
            | Command::AcceptRelayed { .. }
            | Command::RelayAcked { .. }
            | Command::SendGroupFromPeer { .. }
            | Command::RestoreFederation { .. }
            | Command::SetClusterVersion { .. }
            | Command::SetIncarnation { .. } => None,
            Command::FederatedGroup { provider, .. } => Some(provider),
            Command::Once { command, .. } => command.actor(),
        }
    }

    /// Commands whose second application differs from the first (a claim
    /// hands out another key; an upload answers differently once the keys
    /// are there): the writer wraps them in [`Command::Once`].
    pub fn is_not_idempotent(&self) -> bool {
        // A finished restore refuses a second finish.
        matches!(self, Command::ClaimPrekeys { .. } | Command::UploadPrekeys { .. } | Command::RestoreFinish { .. })
    }

    /// Commands applied while a restore is under way; every other write is
    /// refused then (`state::restore`).
    pub fn runs_during_restore(&self) -> bool {
        match self {
            Command::RestoreBegin { .. }
            | Command::RestoreItems { .. }
            | Command::RestoreFinish { .. }
            | Command::SetClusterVersion { .. }
            | Command::SetIncarnation { .. } => true,
            Command::Once { command, .. } => command.runs_during_restore(),
            _ => false,
        }
    }

    /// Commands only builds that apply cluster version 4 can decode: a log
    /// entry holding one is written in format version 5 (`router-raft`).
    pub fn needs_incarnation_format(&self) -> bool {
        match self {
            Command::SetIncarnation { .. } => true,
            Command::Once { command, .. } => command.needs_incarnation_format(),
            _ => false,
        }
    }

    /// Commands only builds that apply cluster version 5 can decode (a
    /// restore part holding send answers kept by digest): a log entry holding
    /// one is written in format version 6 (`router-raft`).
    pub fn needs_sender_windows_format(&self) -> bool {
        match self {
            Command::RestoreItems { items, .. } => items.iter().any(crate::StateItem::needs_sender_windows),
            Command::Once { command, .. } => command.needs_sender_windows_format(),
            _ => false,
        }
    }

    /// Commands only builds that apply cluster version 3 can decode: a log
    /// entry holding one is written in format version 4 (`router-raft`).
    pub fn needs_parted_restore_format(&self) -> bool {
        match self {
            Command::RestoreBegin { .. } | Command::RestoreItems { .. } | Command::RestoreFinish { .. } => true,
            Command::Once { command, .. } => command.needs_parted_restore_format(),
            _ => false,
        }
    }

    /// Commands that builds before cluster versions cannot decode: a log
    /// entry holding one is written in format version 3 (`router-raft`).
    pub fn needs_cluster_version_format(&self) -> bool {
        matches!(self, Command::SetClusterVersion { .. } | Command::Once { .. })
    }

    /// Commands only builds that know federation can decode: a log entry
    /// holding one is written in the newer format version (`router-raft`).
    pub fn is_federation(&self) -> bool {
        matches!(
            self,
            Command::RegisterPeer { .. }
                | Command::SetPeerStatus { .. }
                | Command::RemovePeer { .. }
                | Command::RelaySend { .. }
                | Command::AcceptRelayed { .. }
                | Command::RelayAcked { .. }
                | Command::FederatedGroup { .. }
                | Command::SendGroupFromPeer { .. }
                | Command::RestoreFederation { .. }
        ) || matches!(self, Command::Once { command, .. } if command.is_federation())
    }
}

impl Batch {
    /// True if any command needs a federation-aware build ([`Command::is_federation`]).
    pub fn has_federation(&self) -> bool {
        self.commands.iter().any(Command::is_federation)
    }

    /// True if any command needs a build that knows cluster versions
    /// ([`Command::needs_cluster_version_format`]).
    pub fn needs_cluster_version_format(&self) -> bool {
        self.commands.iter().any(Command::needs_cluster_version_format)
    }
}
