//! `routerd.toml`, read in two steps: serde into [`RawConfig`] (unknown keys
//! refused), then [`Config::validate`], which destructures every raw field so
//! a new field cannot go unhandled. Parsing binds no ports.
//!
//! Overrides: `ROUTERD_NODE_ID` and `ROUTERD_DATA_DIR` environment variables
//! (and the matching `routerd` flags) replace the file's values.

use router_raft::{NodeAddr, NodeId};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parse {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("{field}: {problem}")]
    Invalid { field: &'static str, problem: String },
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, problem: problem.into() }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub listen: RawListen,
    #[serde(default)]
    pub advertise: RawAdvertise,
    pub tls: RawTls,
    #[serde(default)]
    pub cluster: RawCluster,
    #[serde(default)]
    pub raft: RawRaft,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub batching: RawBatching,
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetryConfig,
    #[serde(default)]
    pub media: RawMedia,
    #[serde(default)]
    pub connections: RawConnections,
    /// Absent: this node takes no part in federation.
    #[serde(default)]
    pub federation: Option<RawFederation>,
}

/// `[federation]`: this cluster's identity towards other clusters and the
/// listener they call. Every node of a cluster has the same `cluster_id`
/// and certificate.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFederation {
    /// This cluster's name as peers register it (1..=64 of a-z 0-9 - _ .).
    pub cluster_id: String,
    /// Where peers' nodes connect (mTLS against the CAs registered for them).
    pub listen: SocketAddr,
    /// PEM certificate of this cluster (URI SAN
    /// spiffe://interop-router/cluster/<cluster_id>), signed by `tls.ca`:
    /// presented to peers both as client and as server.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How long a remote user's resolution is trusted (default 30 s).
    pub route_cache_ttl_ms: Option<u64>,
    /// Queue entries per relay call (default 256).
    pub relay_batch: Option<usize>,
    /// Cap of the jittered reconnect backoff (default 60 s).
    pub backoff_max_ms: Option<u64>,
    /// Deadline of one call to a peer (default 5 s).
    pub request_timeout_ms: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct FederationConfig {
    pub cluster_id: router_core::ClusterId,
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub route_cache_ttl: Duration,
    pub relay_batch: usize,
    pub backoff_max: Duration,
    pub request_timeout: Duration,
}

impl FederationConfig {
    fn validate(raw: RawFederation) -> Result<Self, ConfigError> {
        let RawFederation {
            cluster_id,
            listen,
            cert,
            key,
            route_cache_ttl_ms,
            relay_batch,
            backoff_max_ms,
            request_timeout_ms,
        } = raw;
        crate::identity::check_provider_id(&cluster_id).map_err(|e| invalid("federation.cluster_id", e))?;
        let fc = FederationConfig {
            cluster_id: router_core::ClusterId::new(cluster_id),
            listen,
            cert,
            key,
            route_cache_ttl: Duration::from_millis(route_cache_ttl_ms.unwrap_or(30_000)),
            relay_batch: relay_batch.unwrap_or(256),
            backoff_max: Duration::from_millis(backoff_max_ms.unwrap_or(60_000)),
            request_timeout: Duration::from_millis(request_timeout_ms.unwrap_or(5_000)),
        };
        if !(1..=MAX_RELAY_BATCH).contains(&fc.relay_batch) {
            return Err(invalid("federation.relay_batch", format!("must be 1..={MAX_RELAY_BATCH}")));
        }
        if fc.route_cache_ttl > Duration::from_secs(3600) {
            return Err(invalid("federation.route_cache_ttl_ms", "at most 3600000 (one hour)"));
        }
        if fc.backoff_max < Duration::from_millis(100) || fc.request_timeout < Duration::from_millis(100) {
            return Err(invalid("federation", "backoff_max_ms and request_timeout_ms must be >= 100"));
        }
        Ok(fc)
    }
}

/// Items in one relay call, sent or accepted.
pub const MAX_RELAY_BATCH: usize = 1024;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub provider: SocketAddr,
    pub peer: SocketAddr,
    pub admin: SocketAddr,
}

/// Addresses other nodes and clients use to reach this node (host:port);
/// default to the listen addresses.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdvertise {
    pub provider: Option<String>,
    pub peer: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM file with the CA that signs node, provider and operator certificates.
    pub ca: PathBuf,
    /// PEM certificate of this node (URI SAN spiffe://interop-router/node/<id>).
    pub cert: PathBuf,
    /// PEM private key of this node (a file path; never inline).
    pub key: PathBuf,
    /// DNS name or IP the node certificates are valid for, used when dialing peers.
    #[serde(default = "default_peer_server_name")]
    pub peer_server_name: String,
}

fn default_peer_server_name() -> String {
    "localhost".into()
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// Initialize a new cluster from `initial_members` when this node has no Raft state.
    #[serde(default)]
    pub bootstrap: bool,
    #[serde(default)]
    pub initial_members: Vec<RawMember>,
    /// Providers onboarded at bootstrap (more through the admin API).
    #[serde(default)]
    pub initial_providers: Vec<String>,
    /// Peer endpoints of the cluster's nodes (Kubernetes: every StatefulSet
    /// pod's DNS name). With seeds, a node without Raft state joins the
    /// cluster a seed knows (learner, then voter); node 1 with `bootstrap`
    /// initializes a new one when every seed answered and none knows a cluster.
    #[serde(default)]
    pub seeds: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMember {
    pub id: NodeId,
    pub peer: String,
    pub provider: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRaft {
    pub heartbeat_ms: Option<u64>,
    pub election_timeout_min_ms: Option<u64>,
    pub election_timeout_max_ms: Option<u64>,
    pub snapshot_every_entries: Option<u64>,
    pub max_payload_entries: Option<u64>,
    pub keep_logs_after_snapshot: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_envelope_bytes: Option<usize>,
    pub max_parts_per_send: Option<usize>,
    pub max_prekeys_per_upload: Option<usize>,
    pub max_ack_batch: Option<usize>,
    pub max_send_batch: Option<usize>,
    pub max_send_batch_bytes: Option<usize>,
    pub max_receive_window: Option<u32>,
    pub default_receive_window: Option<u32>,
    pub default_ttl_seconds: Option<u32>,
    pub max_ttl_seconds: Option<u32>,
    pub max_user_id_bytes: Option<usize>,
    pub max_message_id_bytes: Option<usize>,
    pub max_devices_per_user: Option<u32>,
    pub max_one_time_prekeys_per_device: Option<u32>,
    pub max_mailbox_entries: Option<u64>,
    pub dedup_window_seconds: Option<u64>,
    pub prekey_claim_burst: Option<u32>,
    pub prekey_claim_refill_ms: Option<u64>,
    pub low_prekey_threshold: Option<u32>,
    pub max_group_members: Option<u32>,
}

/// `[connections]`: what each listening port (provider, peer, federation)
/// accepts before a caller is authenticated, and per connection after.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConnections {
    /// Open connections per port at most (default 10000).
    pub max_connections: Option<usize>,
    /// Open connections per port from one source address (default 1000).
    pub max_connections_per_source: Option<usize>,
    /// Connections per port still in their TLS handshake (default 1024).
    pub max_handshakes: Option<usize>,
    /// Of those, from one source address (an IPv6 /64) at most (default 32).
    pub max_handshakes_per_source: Option<usize>,
    /// A TLS handshake not finished by then is dropped (default 10000 ms).
    pub handshake_timeout_ms: Option<u64>,
    /// Concurrent HTTP/2 streams (calls) per connection (default 1024).
    pub max_concurrent_streams: Option<u32>,
}

/// Validated `[connections]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionsConfig {
    pub limits: crate::accept::ConnectionLimits,
    pub max_concurrent_streams: u32,
}

impl ConnectionsConfig {
    fn validate(raw: RawConnections) -> Result<Self, ConfigError> {
        let RawConnections {
            max_connections,
            max_connections_per_source,
            max_handshakes,
            max_handshakes_per_source,
            handshake_timeout_ms,
            max_concurrent_streams,
        } = raw;
        let d = crate::accept::ConnectionLimits::default();
        let limits = crate::accept::ConnectionLimits {
            max_connections: max_connections.unwrap_or(d.max_connections),
            max_connections_per_source: max_connections_per_source.unwrap_or(d.max_connections_per_source),
            max_handshakes: max_handshakes.unwrap_or(d.max_handshakes),
            max_handshakes_per_source: max_handshakes_per_source.unwrap_or(d.max_handshakes_per_source),
            handshake_timeout: handshake_timeout_ms.map_or(d.handshake_timeout, Duration::from_millis),
        };
        for (field, v) in [
            ("connections.max_connections", limits.max_connections),
            ("connections.max_connections_per_source", limits.max_connections_per_source),
            ("connections.max_handshakes", limits.max_handshakes),
            ("connections.max_handshakes_per_source", limits.max_handshakes_per_source),
            ("connections.handshake_timeout_ms", limits.handshake_timeout.as_millis() as usize),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be >= 1"));
            }
        }
        let max_concurrent_streams = max_concurrent_streams.unwrap_or(1_024);
        if max_concurrent_streams == 0 {
            return Err(invalid("connections.max_concurrent_streams", "must be >= 1"));
        }
        Ok(ConnectionsConfig { limits, max_concurrent_streams })
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatching {
    pub max_commands_per_entry: Option<usize>,
    pub max_entries_in_flight: Option<usize>,
}

/// `[media]`: the media proxy (`Media.Fetch`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMedia {
    /// Largest blob the proxy passes through (default 100 MiB).
    pub max_bytes: Option<u64>,
    /// TCP connect plus TLS handshake, per address (default 5000).
    pub connect_timeout_ms: Option<u64>,
    /// Longest wait for the response head or for the next piece of the body (default 10000).
    pub idle_timeout_ms: Option<u64>,
    /// Whole fetch, first byte to last (default 120000).
    pub total_timeout_ms: Option<u64>,
    /// TEST SETTING: also fetch from loopback, private, link-local and other
    /// internal addresses. Never set this in production: it lets a provider
    /// make the router reach internal services (SSRF).
    #[serde(default)]
    pub allow_private_addresses: bool,
    /// PEM file with extra CA certificates trusted for media hosts, on top of
    /// the public web roots (tests, private deployments).
    pub extra_ca_file: Option<PathBuf>,
}

/// Validated `[media]` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaConfig {
    pub max_bytes: u64,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub total_timeout: Duration,
    pub allow_private_addresses: bool,
    pub extra_ca_file: Option<PathBuf>,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            max_bytes: 100 * 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(120),
            allow_private_addresses: false,
            extra_ca_file: None,
        }
    }
}

impl MediaConfig {
    fn validate(raw: RawMedia) -> Result<MediaConfig, ConfigError> {
        let RawMedia {
            max_bytes,
            connect_timeout_ms,
            idle_timeout_ms,
            total_timeout_ms,
            allow_private_addresses,
            extra_ca_file,
        } = raw;
        let d = MediaConfig::default();
        let ms = |field: &'static str, v: Option<u64>, default: Duration| match v {
            None => Ok(default),
            Some(0) => Err(invalid(field, "must be >= 1")),
            Some(v) if v > 24 * 3600 * 1000 => Err(invalid(field, "must be at most one day")),
            Some(v) => Ok(Duration::from_millis(v)),
        };
        let cfg = MediaConfig {
            max_bytes: max_bytes.unwrap_or(d.max_bytes),
            connect_timeout: ms("media.connect_timeout_ms", connect_timeout_ms, d.connect_timeout)?,
            idle_timeout: ms("media.idle_timeout_ms", idle_timeout_ms, d.idle_timeout)?,
            total_timeout: ms("media.total_timeout_ms", total_timeout_ms, d.total_timeout)?,
            allow_private_addresses,
            extra_ca_file,
        };
        if !(1..=1 << 40).contains(&cfg.max_bytes) {
            return Err(invalid("media.max_bytes", "must be 1..=1099511627776"));
        }
        if cfg.connect_timeout > cfg.total_timeout || cfg.idle_timeout > cfg.total_timeout {
            return Err(invalid("media.total_timeout_ms", "must be at least connect_timeout_ms and idle_timeout_ms"));
        }
        Ok(cfg)
    }
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub listen: RawListen,
    pub advertise: NodeAddr,
    pub tls: RawTls,
    pub bootstrap: bool,
    pub initial_members: BTreeMap<NodeId, NodeAddr>,
    pub initial_providers: Vec<String>,
    pub seeds: Vec<String>,
    pub raft: RaftTuning,
    pub limits: EdgeLimits,
    pub replicated_limits: router_core::Limits,
    pub batching: Batching,
    pub telemetry: crate::telemetry::TelemetryConfig,
    pub media: MediaConfig,
    pub connections: ConnectionsConfig,
    pub federation: Option<FederationConfig>,
}

#[derive(Clone, Debug)]
pub struct RaftTuning {
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    pub snapshot_every_entries: u64,
    pub max_payload_entries: u64,
    /// Log entries kept behind a snapshot, so a briefly lagging follower
    /// catches up from the log instead of a full snapshot.
    pub keep_logs_after_snapshot: u64,
}

/// Limits checked at the API edge, before anything enters the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeLimits {
    /// Sum of ciphertext bytes in one send.
    pub max_envelope_bytes: usize,
    /// Device ciphertexts in one send.
    pub max_parts_per_send: usize,
    /// Keys of each kind in one upload.
    pub max_prekeys_per_upload: usize,
    pub max_ack_batch: usize,
    /// Sends in one `SendBatch` call.
    pub max_send_batch: usize,
    /// Largest encoded request the Messaging service decodes (a `SendBatch`
    /// is the only large one); at least one largest send plus 64 KiB.
    pub max_send_batch_bytes: usize,
    pub max_receive_window: u32,
    pub default_receive_window: u32,
    pub default_ttl_seconds: u32,
    pub max_ttl_seconds: u32,
    pub max_user_id_bytes: usize,
    pub max_message_id_bytes: usize,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits {
            max_envelope_bytes: 256 * 1024,
            max_parts_per_send: 16,
            max_prekeys_per_upload: 100,
            max_ack_batch: 1024,
            max_send_batch: 256,
            max_send_batch_bytes: 4 * 1024 * 1024,
            max_receive_window: 4096,
            default_receive_window: 256,
            default_ttl_seconds: 30 * 24 * 3600,
            max_ttl_seconds: 30 * 24 * 3600,
            max_user_id_bytes: 128,
            max_message_id_bytes: 64,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Batching {
    /// Client commands folded into one Raft entry.
    pub max_commands_per_entry: usize,
    /// Raft entries proposed and not yet committed at once (pipelining).
    pub max_entries_in_flight: usize,
}

impl Config {
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let raw: RawConfig = toml::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.into(), source: Box::new(source) })?;
        Config::validate(raw)
    }

    pub fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let RawConfig {
            node_id,
            data_dir,
            listen,
            advertise,
            tls,
            cluster,
            raft,
            limits,
            batching,
            telemetry,
            media,
            connections,
            federation,
        } = raw;
        if node_id == 0 {
            return Err(invalid("node_id", "must be >= 1"));
        }
        let RawAdvertise { provider: adv_provider, peer: adv_peer } = advertise;
        let advertise = NodeAddr {
            provider: adv_provider.unwrap_or_else(|| listen.provider.to_string()),
            peer: adv_peer.unwrap_or_else(|| listen.peer.to_string()),
        };

        let RawCluster { bootstrap, initial_members, initial_providers, seeds } = cluster;
        let mut members = BTreeMap::new();
        for m in initial_members {
            let RawMember { id, peer, provider } = m;
            if members.insert(id, NodeAddr { peer, provider }).is_some() {
                return Err(invalid("cluster.initial_members", format!("node id {id} listed twice")));
            }
        }
        if bootstrap && seeds.is_empty() && !members.contains_key(&node_id) {
            return Err(invalid("cluster.initial_members", "bootstrap is set but this node is not listed"));
        }
        if !seeds.is_empty() && !members.is_empty() {
            return Err(invalid("cluster.seeds", "use either seeds (join/bootstrap through seeds) or initial_members"));
        }
        for p in &initial_providers {
            crate::identity::check_provider_id(p).map_err(|e| invalid("cluster.initial_providers", e))?;
        }

        let RawRaft {
            heartbeat_ms,
            election_timeout_min_ms,
            election_timeout_max_ms,
            snapshot_every_entries,
            max_payload_entries,
            keep_logs_after_snapshot,
        } = raft;
        let raft = RaftTuning {
            heartbeat: Duration::from_millis(heartbeat_ms.unwrap_or(30)),
            election_timeout_min: Duration::from_millis(election_timeout_min_ms.unwrap_or(100)),
            election_timeout_max: Duration::from_millis(election_timeout_max_ms.unwrap_or(200)),
            snapshot_every_entries: snapshot_every_entries.unwrap_or(5_000),
            max_payload_entries: max_payload_entries.unwrap_or(64),
            keep_logs_after_snapshot: keep_logs_after_snapshot.unwrap_or(1_000),
        };
        if raft.election_timeout_min <= raft.heartbeat * 2 {
            return Err(invalid("raft.election_timeout_min_ms", "must exceed twice heartbeat_ms"));
        }
        if raft.election_timeout_max <= raft.election_timeout_min {
            return Err(invalid("raft.election_timeout_max_ms", "must exceed election_timeout_min_ms"));
        }

        let RawLimits {
            max_envelope_bytes,
            max_parts_per_send,
            max_prekeys_per_upload,
            max_ack_batch,
            max_send_batch,
            max_send_batch_bytes,
            max_receive_window,
            default_receive_window,
            default_ttl_seconds,
            max_ttl_seconds,
            max_user_id_bytes,
            max_message_id_bytes,
            max_devices_per_user,
            max_one_time_prekeys_per_device,
            max_mailbox_entries,
            dedup_window_seconds,
            prekey_claim_burst,
            prekey_claim_refill_ms,
            low_prekey_threshold,
            max_group_members,
        } = limits;
        let d = EdgeLimits::default();
        let edge = EdgeLimits {
            max_envelope_bytes: max_envelope_bytes.unwrap_or(d.max_envelope_bytes),
            max_parts_per_send: max_parts_per_send.unwrap_or(d.max_parts_per_send),
            max_prekeys_per_upload: max_prekeys_per_upload.unwrap_or(d.max_prekeys_per_upload),
            max_ack_batch: max_ack_batch.unwrap_or(d.max_ack_batch),
            max_send_batch: max_send_batch.unwrap_or(d.max_send_batch),
            // Unset: room for one largest send at least.
            max_send_batch_bytes: max_send_batch_bytes.unwrap_or_else(|| {
                d.max_send_batch_bytes.max(max_envelope_bytes.unwrap_or(d.max_envelope_bytes).saturating_add(64 * 1024))
            }),
            max_receive_window: max_receive_window.unwrap_or(d.max_receive_window),
            default_receive_window: default_receive_window.unwrap_or(d.default_receive_window),
            default_ttl_seconds: default_ttl_seconds.unwrap_or(d.default_ttl_seconds),
            max_ttl_seconds: max_ttl_seconds.unwrap_or(d.max_ttl_seconds),
            max_user_id_bytes: max_user_id_bytes.unwrap_or(d.max_user_id_bytes),
            max_message_id_bytes: max_message_id_bytes.unwrap_or(d.max_message_id_bytes),
        };
        // The gRPC message size cap is derived from this; keep it sane.
        if !(1..=16 * 1024 * 1024).contains(&edge.max_envelope_bytes) {
            return Err(invalid("limits.max_envelope_bytes", "must be 1..=16777216"));
        }
        if edge.max_send_batch_bytes < edge.max_envelope_bytes + 64 * 1024
            || edge.max_send_batch_bytes > 64 * 1024 * 1024
        {
            return Err(invalid(
                "limits.max_send_batch_bytes",
                "must be at least max_envelope_bytes + 65536 (one largest send) and at most 67108864",
            ));
        }
        if edge.default_receive_window == 0 || edge.default_receive_window > edge.max_receive_window {
            return Err(invalid("limits.default_receive_window", "must be 1..=max_receive_window"));
        }
        if edge.default_ttl_seconds == 0 || edge.default_ttl_seconds > edge.max_ttl_seconds {
            return Err(invalid("limits.default_ttl_seconds", "must be 1..=max_ttl_seconds"));
        }
        for (field, v) in [
            ("limits.max_parts_per_send", edge.max_parts_per_send),
            ("limits.max_prekeys_per_upload", edge.max_prekeys_per_upload),
            ("limits.max_ack_batch", edge.max_ack_batch),
            ("limits.max_send_batch", edge.max_send_batch),
            ("limits.max_user_id_bytes", edge.max_user_id_bytes),
            ("limits.max_message_id_bytes", edge.max_message_id_bytes),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be >= 1"));
            }
        }
        let dl = router_core::Limits::default();
        let replicated_limits = router_core::Limits {
            max_devices_per_user: max_devices_per_user.unwrap_or(dl.max_devices_per_user),
            max_one_time_prekeys_per_device: max_one_time_prekeys_per_device
                .unwrap_or(dl.max_one_time_prekeys_per_device),
            max_mailbox_entries: max_mailbox_entries.unwrap_or(dl.max_mailbox_entries),
            dedup_window_ms: match dedup_window_seconds {
                None => dl.dedup_window_ms,
                Some(s) => s
                    .checked_mul(1000)
                    .ok_or_else(|| invalid("limits.dedup_window_seconds", "too large (overflows milliseconds)"))?,
            },
            claim_burst: prekey_claim_burst.unwrap_or(dl.claim_burst),
            claim_refill_ms: prekey_claim_refill_ms.unwrap_or(dl.claim_refill_ms),
            low_prekey_threshold: low_prekey_threshold.unwrap_or(dl.low_prekey_threshold),
            max_group_members: max_group_members.unwrap_or(dl.max_group_members),
            ..dl
        };
        if replicated_limits.claim_burst == 0 || replicated_limits.claim_refill_ms == 0 {
            return Err(invalid("limits.prekey_claim_burst", "burst and refill must be >= 1"));
        }

        let RawBatching { max_commands_per_entry, max_entries_in_flight } = batching;
        let batching = Batching {
            max_commands_per_entry: max_commands_per_entry.unwrap_or(1024),
            max_entries_in_flight: max_entries_in_flight.unwrap_or(2),
        };
        if batching.max_commands_per_entry == 0 || batching.max_entries_in_flight == 0 {
            return Err(invalid("batching", "values must be >= 1"));
        }

        let media = MediaConfig::validate(media)?;
        let connections = ConnectionsConfig::validate(connections)?;
        let federation = federation.map(FederationConfig::validate).transpose()?;

        Ok(Config {
            node_id,
            data_dir,
            listen,
            advertise,
            tls,
            bootstrap,
            initial_members: members,
            initial_providers,
            seeds,
            raft,
            limits: edge,
            replicated_limits,
            batching,
            telemetry,
            media,
            connections,
            federation,
        })
    }

    /// Applies environment / flag overrides (see [`Overrides`]).
    pub fn with_overrides(mut self, o: Overrides) -> Result<Self, ConfigError> {
        let from_pod = match o.pod_index {
            Some(i) => Some(i.checked_add(1).ok_or_else(|| invalid("pod_index", "too large"))?),
            None => None,
        };
        if let Some(id) = o.node_id.or(from_pod) {
            if id == 0 {
                return Err(invalid("node_id", "must be >= 1"));
            }
            self.node_id = id;
        }
        if let Some(d) = o.data_dir {
            self.data_dir = d;
        }
        if let Some(p) = o.advertise_peer {
            self.advertise.peer = p;
        }
        if let Some(p) = o.advertise_provider {
            self.advertise.provider = p;
        }
        if let Some(p) = o.tls_ca {
            self.tls.ca = p;
        }
        if let Some(p) = o.tls_cert {
            self.tls.cert = p;
        }
        if let Some(p) = o.tls_key {
            self.tls.key = p;
        }
        Ok(self)
    }
}

/// Per-process values that do not belong in a shared config file
/// (Kubernetes sets them per pod). Precedence: explicit node id, then pod
/// index (node id = index + 1), then the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub node_id: Option<NodeId>,
    pub pod_index: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub advertise_peer: Option<String>,
    pub advertise_provider: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Config {
    /// Whether this node bootstraps: explicitly configured, or node 1 in seed mode.
    pub fn bootstraps(&self) -> bool {
        self.bootstrap && (self.seeds.is_empty() || self.node_id == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(extra: &str) -> Result<RawConfig, toml::de::Error> {
        toml::from_str(&format!(
            r#"
node_id = 1
data_dir = "/tmp/x"
[listen]
provider = "127.0.0.1:1"
peer = "127.0.0.1:2"
admin = "127.0.0.1:3"
[tls]
ca = "ca.pem"
cert = "node.pem"
key = "node.key"
{extra}
"#
        ))
    }

    #[test]
    fn values_that_overflow_are_refused_not_wrapped() {
        // Found with the config fuzz target: seconds * 1000 overflowed u64.
        let err = Config::validate(raw("[limits]\ndedup_window_seconds = 18446744073709552").unwrap()).unwrap_err();
        assert!(err.to_string().contains("dedup_window_seconds"), "{err}");
        let cfg = Config::validate(raw("").unwrap()).unwrap();
        let err = cfg.with_overrides(Overrides { pod_index: Some(u64::MAX), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("pod_index"), "{err}");
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let cfg = Config::validate(raw("").unwrap()).unwrap();
        assert_eq!(cfg.limits, EdgeLimits::default());
        assert_eq!(cfg.advertise.provider, "127.0.0.1:1");
        assert_eq!(cfg.replicated_limits, router_core::Limits::default());
    }

    #[test]
    fn the_send_batch_byte_limit_makes_room_for_one_largest_send() {
        let big = Config::validate(raw("[limits]\nmax_envelope_bytes = 8388608").unwrap()).unwrap();
        assert_eq!(big.limits.max_send_batch_bytes, 8 * 1024 * 1024 + 64 * 1024);
        let e =
            Config::validate(raw("[limits]\nmax_envelope_bytes = 8388608\nmax_send_batch_bytes = 4194304").unwrap())
                .unwrap_err();
        assert!(e.to_string().starts_with("limits.max_send_batch_bytes"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = raw("[limits]\nmax_envelope_byte = 3").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = Config::validate(raw("[limits]\ndefault_receive_window = 0").unwrap()).unwrap_err();
        assert!(e.to_string().starts_with("limits.default_receive_window"), "{e}");
        let e = Config::validate(raw("[cluster]\nbootstrap = true").unwrap()).unwrap_err();
        assert!(e.to_string().starts_with("cluster.initial_members"), "{e}");
        let e = Config::validate(
            raw("[cluster]\nseeds = [\"a:1\"]\ninitial_members = [{ id = 1, peer = \"a:1\", provider = \"a:2\" }]")
                .unwrap(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("cluster.seeds"), "{e}");
        let e = Config::validate(raw("[raft]\nheartbeat_ms = 200").unwrap()).unwrap_err();
        assert!(e.to_string().starts_with("raft.election_timeout_min_ms"), "{e}");
    }

    #[test]
    fn media_section_defaults_and_checks() {
        assert_eq!(Config::validate(raw("").unwrap()).unwrap().media, MediaConfig::default());
        let cfg = Config::validate(
            raw("[media]\nmax_bytes = 1024\nidle_timeout_ms = 50\nallow_private_addresses = true\nextra_ca_file = \"x.pem\"")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(cfg.media.max_bytes, 1024);
        assert_eq!(cfg.media.idle_timeout, Duration::from_millis(50));
        assert!(cfg.media.allow_private_addresses);
        assert!(raw("[media]\nmax_byte = 3").unwrap_err().to_string().contains("unknown field"));
        let e = Config::validate(raw("[media]\nconnect_timeout_ms = 0").unwrap()).unwrap_err();
        assert!(e.to_string().starts_with("media.connect_timeout_ms"), "{e}");
        let e = Config::validate(raw("[media]\nmax_bytes = 0").unwrap()).unwrap_err();
        assert!(e.to_string().starts_with("media.max_bytes"), "{e}");
    }
}

#[cfg(test)]
mod override_tests {
    use super::*;

    #[test]
    fn pod_index_gives_node_id_and_explicit_id_wins() {
        let raw: RawConfig = toml::from_str(
            "node_id = 1\ndata_dir = \"/d\"\n[listen]\nprovider = \"0.0.0.0:1\"\npeer = \"0.0.0.0:2\"\nadmin = \"0.0.0.0:3\"\n[tls]\nca = \"c\"\ncert = \"n\"\nkey = \"k\"\n[cluster]\nbootstrap = true\nseeds = [\"r-0.p:2\", \"r-1.p:2\"]\n",
        )
        .unwrap();
        let cfg = Config::validate(raw).unwrap();
        let o = Overrides { pod_index: Some(2), advertise_peer: Some("r-2.p:2".into()), ..Default::default() };
        let c = cfg.clone().with_overrides(o).unwrap();
        assert_eq!((c.node_id, c.advertise.peer.as_str()), (3, "r-2.p:2"));
        assert!(!c.bootstraps(), "only node 1 bootstraps in seed mode");
        let c = cfg
            .clone()
            .with_overrides(Overrides { node_id: Some(7), pod_index: Some(2), ..Default::default() })
            .unwrap();
        assert_eq!(c.node_id, 7);
        assert!(cfg.bootstraps());
    }
}
