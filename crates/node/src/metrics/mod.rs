//! Prometheus metrics of one node. A registry per node (tests run several
//! nodes in one process). Counters and histograms are updated on the
//! request path; gauges describing the replica (Raft indexes, mailbox
//! depth, prekey stock) are computed when `/metrics` is scraped.
//!
//! Label values are provider ids, command kinds, rejection reasons and gRPC
//! methods: all bounded sets. The scrape (`render`, which reads the node
//! context) is in `render.rs`, so this file does not depend on `ctx`.

use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use router_core::{Command, Outcome};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

mod render;

/// A device whose one-time prekey stock is below this counts as low.
pub const LOW_STOCK_THRESHOLD: usize = 10;

pub struct Metrics {
    registry: Registry,
    pub grpc_requests: IntCounterVec,
    pub grpc_seconds: HistogramVec,
    /// The sends inside `SendBatch` calls, by their own status code (the
    /// call's code is in `grpc_requests`).
    pub send_batch_items: IntCounterVec,
    pub commands: IntCounterVec,
    pub rejections: IntCounterVec,
    pub commit_seconds: HistogramVec,
    pub delivered: IntCounterVec,
    pub delivery_seconds: HistogramVec,
    pub acked: IntCounterVec,
    pub claims: IntCounterVec,
    /// Media proxy fetches by result ("ok" or the error reason).
    pub media_fetches: IntCounterVec,
    /// Media bytes streamed through by completed fetches.
    pub media_bytes: prometheus::IntCounter,
    raft: IntGaugeVec,
    /// Snapshots built here or installed from a leader (`origin`).
    snapshots: IntCounterVec,
    snapshot_last_bytes: IntGauge,
    snapshot_last_build_seconds: prometheus::Gauge,
    snapshot_last_pause_seconds: prometheus::Gauge,
    payload_bytes: IntGauge,
    payload_segments: IntGauge,
    payload_write_errors: prometheus::IntCounter,
    log_compactions: prometheus::IntCounter,
    log_entries_purged: prometheus::IntCounter,
    /// Serializes the catch-up of the counters above in `render`: two
    /// concurrent scrapes would otherwise both add the same difference.
    storage_catch_up: std::sync::Mutex<()>,
    open_streams: IntGauge,
    /// Connections closed before they were served, by listener and reason.
    connections_refused: IntCounterVec,
    /// Open connections (handshaking or served), by listener.
    open_connections: IntGaugeVec,
    mailbox_depth: IntGaugeVec,
    mailbox_oldest: GaugeVec,
    send_answers: IntGaugeVec,
    prekey_stock: IntGaugeVec,
    low_stock_devices: IntGaugeVec,
    /// Relay calls to a federation peer, by how they ended.
    pub relay_seconds: HistogramVec,
    /// Relayed queue items by the peer's answer: stored, refused, retry_later, failed.
    pub relayed_items: IntCounterVec,
    federation_queue_depth: IntGaugeVec,
    federation_queue_oldest: GaugeVec,
    federation_link: IntGaugeVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

/// 0.5 ms .. 16 s.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0005, 2.0, 16).expect("valid buckets")
}

impl Metrics {
    pub fn new(node_id: u64) -> Self {
        let registry = Registry::new_custom(Some("router".into()), None).expect("registry");
        let _ = node_id;
        let open_streams =
            IntGauge::new("open_receive_streams", "Provider receive streams open on this node.").expect("valid metric");
        registry.register(Box::new(open_streams.clone())).expect("unique metric");
        let mailbox_oldest = GaugeVec::new(
            Opts::new("mailbox_oldest_entry_age_seconds", "Age of the oldest unacked entry, by the replica's clock."),
            &["provider"],
        )
        .expect("valid metric");
        registry.register(Box::new(mailbox_oldest.clone())).expect("unique metric");
        let federation_queue_oldest = GaugeVec::new(
            Opts::new(
                "federation_queue_oldest_entry_age_seconds",
                "Age of the oldest entry waiting to be relayed to a federation peer, by the replica's clock.",
            ),
            &["peer"],
        )
        .expect("valid metric");
        registry.register(Box::new(federation_queue_oldest.clone())).expect("unique metric");
        let snapshot_last_bytes = IntGauge::new(
            "snapshot_last_size_bytes",
            "Size of the last snapshot this node built or installed (encoded state).",
        )
        .expect("valid metric");
        registry.register(Box::new(snapshot_last_bytes.clone())).expect("unique metric");
        let snapshot_last_build_seconds = prometheus::Gauge::new(
            "snapshot_last_build_seconds",
            "How long building this node's last snapshot took (encode and fsync).",
        )
        .expect("valid metric");
        registry.register(Box::new(snapshot_last_build_seconds.clone())).expect("unique metric");
        let snapshot_last_pause_seconds = prometheus::Gauge::new(
            "snapshot_last_pause_seconds",
            "How long this node's last snapshot build held apply off (the state copy; the encode runs after).",
        )
        .expect("valid metric");
        registry.register(Box::new(snapshot_last_pause_seconds.clone())).expect("unique metric");
        let plain_counter = |name: &str, help: &str| {
            let c = prometheus::IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let log_compactions =
            plain_counter("log_compactions_total", "Raft log purges after a snapshot (log compaction) on this node.");
        let log_entries_purged =
            plain_counter("log_entries_purged_total", "Raft log entries removed by log compaction on this node.");
        let plain_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let payload_bytes = plain_gauge(
            "payload_bytes",
            "Bytes in this node's payload files (queued ciphertexts, and records reclaimed with their segment).",
        );
        let payload_segments = plain_gauge("payload_segments", "Payload segment files on this node.");
        let payload_write_errors = plain_counter(
            "payload_write_errors_total",
            "Writes to the payload files that failed; those ciphertexts stayed in memory.",
        );
        Metrics {
            snapshots: counter(
                &registry,
                "snapshots_total",
                "Snapshots of the state machine on this node, by origin: built here, or installed from the leader.",
                &["origin"],
            ),
            snapshot_last_bytes,
            snapshot_last_build_seconds,
            snapshot_last_pause_seconds,
            payload_bytes,
            payload_segments,
            payload_write_errors,
            log_compactions,
            log_entries_purged,
            storage_catch_up: std::sync::Mutex::new(()),
            connections_refused: counter(
                &registry,
                "connections_refused_total",
                "Connections closed before they were served, by listener (provider, peer, federation) and reason: max_connections, max_connections_per_source, max_handshakes, handshake_timeout, handshake_failed.",
                &["port", "reason"],
            ),
            open_connections: gauge(
                &registry,
                "open_connections",
                "Open connections (in their TLS handshake or served), by listener.",
                &["port"],
            ),
            relay_seconds: histogram(
                &registry,
                "federation_relay_duration_seconds",
                "One relay call to a federation peer (the leader's relay task).",
                &["peer"],
                latency_buckets(),
            ),
            relayed_items: counter(
                &registry,
                "federation_relayed_items_total",
                "Outbound queue items relayed, by the peer's answer: stored, refused, retry_later; failed when the call failed.",
                &["peer", "result"],
            ),
            federation_queue_depth: gauge(
                &registry,
                "federation_queue_depth",
                "Entries in the outbound queue to a federation peer.",
                &["peer"],
            ),
            federation_queue_oldest,
            federation_link: gauge(
                &registry,
                "federation_link_up",
                "1 when this node's last relay call to the peer succeeded, 0 when it failed, -1 before any (only the leader relays).",
                &["peer"],
            ),
            grpc_requests: counter(
                &registry,
                "grpc_requests_total",
                "gRPC requests by method and status code.",
                &["service", "method", "code"],
            ),
            grpc_seconds: histogram(
                &registry,
                "grpc_request_duration_seconds",
                "gRPC request handling time (stream open time for streams).",
                &["service", "method"],
                latency_buckets(),
            ),
            send_batch_items: counter(
                &registry,
                "send_batch_items_total",
                "Sends inside SendBatch calls, by their own gRPC status code.",
                &["code"],
            ),
            commands: counter(
                &registry,
                "commands_total",
                "Commands committed through Raft, by kind, acting provider and result.",
                &["kind", "provider", "result"],
            ),
            rejections: counter(
                &registry,
                "rejections_total",
                "Commands rejected by the state machine, by reason.",
                &["reason"],
            ),
            commit_seconds: histogram(
                &registry,
                "commit_duration_seconds",
                "Submit to quorum commit and apply (includes forwarding and batching).",
                &["kind"],
                latency_buckets(),
            ),
            delivered: counter(
                &registry,
                "delivered_total",
                "Mailbox entries sent on receive streams of this node.",
                &["provider"],
            ),
            delivery_seconds: histogram(
                &registry,
                "delivery_latency_seconds",
                "Acceptance (leader stamp) to hand-off on a receive stream.",
                &["provider"],
                latency_buckets(),
            ),
            acked: counter(&registry, "acked_total", "Mailbox entries removed by acks.", &["provider"]),
            claims: counter(
                &registry,
                "prekey_claims_total",
                "Bundles handed out, by whether a one-time prekey was left.",
                &["requester", "one_time"],
            ),
            media_fetches: counter(
                &registry,
                "media_fetches_total",
                "Media proxy fetches by result: ok or the error reason.",
                &["result"],
            ),
            media_bytes: {
                let c = prometheus::IntCounter::new(
                    "media_bytes_total",
                    "Media bytes passed on by fetches that completed.",
                )
                .expect("valid metric");
                registry.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            raft: gauge(
                &registry,
                "raft",
                "Raft state of this node: term, is_leader, leader_id, last_log_index, commit_index, applied_index, apply_lag (commit_index - applied_index), snapshot_index, purged_index, voters, learners, is_member, cluster_version (the rules the replica applies the log by), clock_offset_ms (this node's wall clock minus the last applied leader stamp; includes up to one idle tick).",
                &["field"],
            ),
            open_streams,
            mailbox_depth: gauge(&registry, "mailbox_depth", "Entries awaiting the provider's ack.", &["provider"]),
            send_answers: gauge(
                &registry,
                "send_answers",
                "Send answers remembered for retries (the dedup window), per sender provider against the max_dedup_entries limit; sender=\"*\" for the window all senders shared below cluster version 5.",
                &["sender"],
            ),
            mailbox_oldest,
            prekey_stock: gauge(
                &registry,
                "prekey_one_time_stock",
                "One-time EC prekeys stocked over all devices of the provider.",
                &["provider"],
            ),
            low_stock_devices: gauge(
                &registry,
                "prekey_low_stock_devices",
                "Devices with fewer than 10 one-time EC prekeys.",
                &["provider"],
            ),
            registry,
        }
    }

    /// Counts a committed command and its outcome.
    pub fn observe_command(&self, kind: &str, provider: &str, outcome: &Outcome, started: Instant) {
        self.commit_seconds.with_label_values(&[kind]).observe(started.elapsed().as_secs_f64());
        let result = match outcome {
            Outcome::Rejected(r) => {
                self.rejections.with_label_values(&[r.reason()]).inc();
                "rejected"
            }
            _ => "accepted",
        };
        self.commands.with_label_values(&[kind, provider, result]).inc();
        match outcome {
            Outcome::Bundles { bundles, .. } => {
                for b in bundles {
                    self.claims.with_label_values(&[provider, if b.one_time.is_some() { "yes" } else { "no" }]).inc();
                }
            }
            Outcome::Acked { removed, .. } => {
                self.acked.with_label_values(&[provider]).inc_by(u64::from(*removed));
            }
            _ => {}
        }
    }
}

impl crate::accept::AcceptObserver for Metrics {
    fn refused(&self, port: &'static str, why: crate::accept::Refusal) {
        self.connections_refused.with_label_values(&[port, why.as_str()]).inc();
    }

    fn open(&self, port: &'static str, connections: usize) {
        self.open_connections.with_label_values(&[port]).set(connections as i64);
    }
}

pub fn command_kind(c: &Command) -> &'static str {
    match c {
        Command::AddProvider { .. } => "add_provider",
        Command::RequestProvider { .. } => "request_provider",
        Command::SetProviderStatus { .. } => "set_provider_status",
        Command::SetMediaHosts { .. } => "set_media_hosts",
        Command::SetLimits { .. } => "set_limits",
        Command::RegisterUser { .. } => "register_user",
        Command::DeregisterUser { .. } => "deregister_user",
        Command::RegisterDevice { .. } => "register_device",
        Command::RemoveDevice { .. } => "remove_device",
        Command::UploadPrekeys { .. } => "upload_prekeys",
        Command::ClaimPrekeys { .. } => "claim_prekeys",
        Command::Send(_) => "send",
        Command::Ack { .. } => "ack",
        Command::Restore { .. } => "restore",
        Command::RestoreBegin { .. } => "restore_begin",
        Command::RestoreItems { .. } => "restore_items",
        Command::RestoreFinish { .. } => "restore_finish",
        Command::CreateGroup { .. } => "create_group",
        Command::ChangeGroup { .. } => "change_group",
        Command::SendGroup(_) => "send_group",
        Command::RegisterPeer { .. } => "register_peer",
        Command::SetPeerStatus { .. } => "set_peer_status",
        Command::RemovePeer { .. } => "remove_peer",
        Command::RelaySend { .. } => "relay_send",
        Command::AcceptRelayed { .. } => "accept_relayed",
        Command::RelayAcked { .. } => "relay_acked",
        Command::FederatedGroup { .. } => "federated_group",
        Command::SendGroupFromPeer { .. } => "send_group_from_peer",
        Command::RestoreFederation { .. } => "restore_federation",
        Command::SetClusterVersion { .. } => "set_cluster_version",
        Command::SetIncarnation { .. } => "set_incarnation",
        Command::Once { command, .. } => command_kind(command),
    }
}

/// Tower layer counting gRPC requests by method and status code. Errors
/// returned by handlers are "trailers-only" responses, so their
/// `grpc-status` is in the response headers; a response without it is OK.
#[derive(Clone)]
pub struct GrpcMetricsLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner, metrics: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or(("unknown", "unknown"));
        let service = service.rsplit('.').next().unwrap_or(service).to_string();
        let method = method.to_string();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            if let Ok(resp) = &result {
                let code = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32);
                let code = code_label(code);
                metrics.grpc_requests.with_label_values(&[&service, &method, &code]).inc();
                metrics.grpc_seconds.with_label_values(&[&service, &method]).observe(started.elapsed().as_secs_f64());
            }
            result
        })
    }
}

/// A status code as the `code` label of `grpc_requests_total` and
/// `send_batch_items_total`: "OK", else the code's name ("InvalidArgument").
pub fn code_label(code: tonic::Code) -> String {
    if code == tonic::Code::Ok { "OK".to_string() } else { format!("{code:?}") }
}
