//! A running node: storage, Raft, the write path and three listeners.
//!
//! The library never binds sockets or listens for signals: [`Node::start`]
//! takes already-bound listeners, and [`Node::shutdown`] is called by whoever
//! owns the process (`main.rs`, `routerd dev`, tests).

use crate::admin_http;
use crate::config::Config;
use crate::ctx::{Ctx, NodeCtx};
use crate::grpc::media::MediaService;
use crate::grpc::{admin::AdminService, directory::DirectoryService, messaging::MessagingService};
use crate::grpc::{peer::PeerService, prekeys::PrekeysService};
use crate::network::Network;
use crate::peers::{PEER_MAX_MESSAGE_BYTES, PeerPool};
use crate::tls::TlsMaterials;
use crate::writer::Writer;
use anyhow::Context;
use router_core::Command;
use router_proto::v1::admin_server::AdminServer;
use router_proto::v1::directory_server::DirectoryServer;
use router_proto::v1::media_server::MediaServer;
use router_proto::v1::messaging_server::MessagingServer;
use router_proto::v1::peer_server::PeerServer;
use router_proto::v1::prekeys_server::PrekeysServer;
use router_raft::{NodeId, Raft};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Sockets bound by the caller.
pub struct Listeners {
    pub provider: TcpListener,
    pub peer: TcpListener,
    pub admin: TcpListener,
    /// Bound when the config has a `[federation]` section.
    pub federation: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(cfg: &Config) -> anyhow::Result<Self> {
        let bind = |a| async move { TcpListener::bind(a).await.with_context(|| format!("bind {a}")) };
        Ok(Listeners {
            provider: bind(cfg.listen.provider).await?,
            peer: bind(cfg.listen.peer).await?,
            admin: bind(cfg.listen.admin).await?,
            federation: match &cfg.federation {
                Some(f) => Some(bind(f.listen).await?),
                None => None,
            },
        })
    }
}

pub struct Node {
    ctx: Ctx,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// `node{node_id}`: what the node logs runs inside it, shutdown too.
    span: tracing::Span,
}

impl Node {
    /// Starts the node. Everything it runs is inside a `node{node_id}` span
    /// (tasks keep it through `crate::spawn`), so its log lines carry
    /// `node_id` even when several nodes share a process (tests, `routerd dev`).
    pub async fn start(cfg: Config, listeners: Listeners) -> anyhow::Result<Node> {
        let span = tracing::info_span!("node", node_id = cfg.node_id);
        Self::start_in_span(cfg, listeners, span.clone()).instrument(span).await
    }

    async fn start_in_span(cfg: Config, listeners: Listeners, span: tracing::Span) -> anyhow::Result<Node> {
        let tls = Arc::new(TlsMaterials::load(&cfg.tls).context("load TLS material")?);
        std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("create {}", cfg.data_dir.display()))?;
        check_room(&cfg.data_dir)?;
        let (mut log_store, sm_store) = router_raft::open_on_disk(&cfg.data_dir).await.context("open raft storage")?;
        let fresh = has_no_raft_state(&mut log_store).await?;
        let incarnation = crate::incarnation::load(&cfg.data_dir, fresh)?;
        let state = sm_store.state();
        let applied = sm_store.applied();
        let storage_stats = sm_store.stats();

        let raft_config = openraft::Config {
            cluster_name: "interop-router".into(),
            heartbeat_interval: cfg.raft.heartbeat.as_millis() as u64,
            election_timeout_min: cfg.raft.election_timeout_min.as_millis() as u64,
            election_timeout_max: cfg.raft.election_timeout_max.as_millis() as u64,
            max_payload_entries: cfg.raft.max_payload_entries,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.raft.snapshot_every_entries),
            max_in_snapshot_log_to_keep: cfg.raft.keep_logs_after_snapshot,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .context("raft config")?;
        let peers = PeerPool::new(tls.clone());
        let network = Network { peers: peers.clone(), incarnation, state: state.clone() };
        let raft =
            Raft::new(cfg.node_id, Arc::new(raft_config), network, log_store, sm_store).await.context("start raft")?;
        let writer = Writer::start(
            cfg.node_id,
            raft.clone(),
            peers.clone(),
            state.clone(),
            cfg.batching.max_commands_per_entry,
            cfg.batching.max_entries_in_flight,
        );
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let federation = match &cfg.federation {
            Some(f) => Some(Arc::new(crate::federation::Federation::load(f.clone()).context("load federation")?)),
            None => None,
        };
        let ctx: Ctx = Arc::new(NodeCtx {
            node_id: cfg.node_id,
            incarnation,
            advertise: cfg.advertise.clone(),
            raft: raft.clone(),
            writer,
            peers,
            state,
            applied,
            storage_stats,
            limits: cfg.limits.clone(),
            shutdown: shutdown_rx.clone(),
            open_streams: Default::default(),
            leader_lease: cfg.raft.election_timeout_max,
            removed: cfg.data_dir.join(crate::ctx::REMOVED_MARKER).exists().into(),
            data_dir: cfg.data_dir.clone(),
            joining: Default::default(),
            metrics: Arc::new(crate::metrics::Metrics::new(cfg.node_id)),
            ephemeral: Default::default(),
            federation: federation.clone(),
            fault: watch::Sender::new(None),
            removed_peers: crate::ctx::RemovedPeers::load(&cfg.data_dir),
        });
        if ctx.removed.load(std::sync::atomic::Ordering::SeqCst) {
            tracing::warn!(
                "this node was removed from its cluster; it serves nothing (wipe the data directory to rejoin)"
            );
            ctx.raft.runtime_config().elect(false);
        }

        let mut tasks = Vec::new();
        tasks.push(spawn_provider_server(&ctx, &tls, &cfg, listeners.provider, shutdown_rx.clone())?);
        tasks.push(spawn_peer_server(&ctx, &tls, &cfg.connections, listeners.peer, shutdown_rx.clone())?);
        if let Some(fed) = &federation {
            let listener =
                listeners.federation.context("[federation] is configured but no listener was bound for it")?;
            tasks.push(crate::federation::server::spawn(
                &ctx,
                fed.clone(),
                listener,
                cfg.connections.clone(),
                shutdown_rx.clone(),
            )?);
            tasks.push(crate::spawn(crate::federation::relay::run(ctx.clone(), fed.clone())));
        }
        let admin = admin_http::router(ctx.clone());
        let mut admin_shutdown = shutdown_rx.clone();
        tasks.push(crate::spawn(async move {
            let stop = async move {
                let _ = admin_shutdown.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listeners.admin, admin).with_graceful_shutdown(stop).await {
                tracing::error!("failed to serve admin HTTP: {e:#}");
            }
        }));

        if !cfg.seeds.is_empty() {
            tasks.push(crate::spawn(crate::join::run(ctx.clone(), cfg.clone())));
            tasks.push(crate::spawn(crate::join::reconcile(ctx.clone(), cfg.clone())));
        } else {
            if cfg.bootstrap {
                tasks.push(crate::spawn(bootstrap(ctx.clone(), cfg.clone())));
            }
            tasks.push(crate::spawn(crate::join::rejoin_if_replaced(ctx.clone(), cfg.clone())));
        }
        tasks.push(crate::spawn(watch_raft_role(ctx.clone(), shutdown_tx.clone())));
        tasks.push(crate::spawn(raise_cluster_version(ctx.clone())));
        tasks.push(crate::spawn(crate::incarnation::record_members(ctx.clone())));
        tracing::info!(provider_addr = %cfg.advertise.provider, peer_addr = %cfg.advertise.peer, "node started");
        Ok(Node { ctx, shutdown: shutdown_tx, tasks, span })
    }

    pub fn id(&self) -> NodeId {
        self.ctx.node_id
    }

    pub fn raft(&self) -> &Raft {
        &self.ctx.raft
    }

    pub fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    /// Resolves with the reason once this node failed closed (its Raft core
    /// stopped on a storage error: see `watch_raft_role`). It no longer
    /// serves anything; the process should exit so a supervisor restarts it.
    pub async fn failed(&self) -> String {
        let mut fault = self.ctx.fault.subscribe();
        match fault.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    /// This node is in the cluster's membership (as this node sees it).
    pub fn is_member(&self) -> bool {
        self.ctx.is_member()
    }

    /// Graceful stop: receive streams end with UNAVAILABLE (providers
    /// reconnect elsewhere), listeners drain, Raft stops.
    pub async fn shutdown(self, grace: Duration) {
        let span = self.span.clone();
        self.shutdown_in_span(grace).instrument(span).await
    }

    async fn shutdown_in_span(self, grace: Duration) {
        // A leader hands over first, so the cluster does not wait out an
        // election timeout (openraft 0.9 has no transfer API; see
        // grpc::admin::transfer_leadership).
        let is_leader = self.ctx.raft.metrics().borrow().current_leader == Some(self.ctx.node_id);
        if is_leader {
            match crate::grpc::admin::transfer_leadership(&self.ctx, None).await {
                Ok(to) => tracing::info!(leader_id = to, "handed leadership over before shutdown"),
                Err(e) => tracing::warn!("failed to hand leadership over: {}", e.message()),
            }
        }
        let _ = self.shutdown.send(true);
        let all = futures::future::join_all(self.tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("listeners did not drain within {grace:?}");
        }
        if let Err(e) = self.ctx.raft.shutdown().await {
            tracing::warn!("failed to stop raft cleanly: {e}");
        }
    }

    /// Stops at once, without draining: the in-process stand-in for kill -9
    /// used by tests. Durable state is whatever was fsynced.
    pub async fn crash(self) {
        let span = self.span.clone();
        self.crash_in_span().instrument(span).await
    }

    async fn crash_in_span(self) {
        let _ = self.shutdown.send(true);
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.ctx.raft.shutdown().await;
    }
}

fn spawn_provider_server(
    ctx: &Ctx,
    tls: &TlsMaterials,
    cfg: &Config,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    let (media, connections) = (&cfg.media, &cfg.connections);
    let max_msg = ctx.limits.max_envelope_bytes + 64 * 1024;
    // A SendBatch carries many envelopes; each is then held to max_envelope_bytes.
    let max_messaging_msg = ctx.limits.max_send_batch_bytes;
    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(router_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("build reflection service")?;
    let incoming = crate::accept::tls_incoming(
        listener,
        tls.acceptor().context("provider TLS config")?,
        connections.limits.clone(),
        "provider",
        ctx.metrics.clone(),
        shutdown.clone(),
    );
    let router = crate::accept::bounded_server(connections.max_concurrent_streams)
        .trace_fn(crate::telemetry::server_span(ctx.node_id))
        .layer(crate::metrics::GrpcMetricsLayer(ctx.metrics.clone()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(DirectoryServer::new(DirectoryService { ctx: ctx.clone() }))
        .add_service(PrekeysServer::new(PrekeysService { ctx: ctx.clone() }))
        .add_service(
            router_proto::v1::groups_server::GroupsServer::new(crate::grpc::groups::GroupsService { ctx: ctx.clone() })
                .max_decoding_message_size(max_msg),
        )
        .add_service(MediaServer::new(MediaService::new(ctx.clone(), media.clone()).context("media proxy")?))
        .add_service(
            MessagingServer::new(MessagingService { ctx: ctx.clone() }).max_decoding_message_size(max_messaging_msg),
        );
    Ok(crate::spawn(async move {
        health.set_serving::<DirectoryServer<DirectoryService>>().await;
        health.set_serving::<PrekeysServer<PrekeysService>>().await;
        health.set_serving::<MediaServer<MediaService>>().await;
        health.set_serving::<MessagingServer<MessagingService>>().await;
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
            tracing::error!("failed to serve provider API: {e:#}");
        }
    }))
}

fn spawn_peer_server(
    ctx: &Ctx,
    tls: &TlsMaterials,
    connections: &crate::config::ConnectionsConfig,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    let (_health, health_service) = tonic_health::server::health_reporter();
    let incoming = crate::accept::tls_incoming(
        listener,
        tls.acceptor().context("peer TLS config")?,
        connections.limits.clone(),
        "peer",
        ctx.metrics.clone(),
        shutdown.clone(),
    );
    let router = crate::accept::bounded_server(connections.max_concurrent_streams)
        .trace_fn(crate::telemetry::server_span(ctx.node_id))
        .add_service(health_service)
        .add_service(
            PeerServer::new(PeerService { ctx: ctx.clone() })
                .max_decoding_message_size(PEER_MAX_MESSAGE_BYTES)
                .max_encoding_message_size(PEER_MAX_MESSAGE_BYTES),
        )
        .add_service(AdminServer::new(AdminService { ctx: ctx.clone() }));
    Ok(crate::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
            tracing::error!("failed to serve peer API: {e:#}");
        }
    }))
}

/// The node's one watcher of its Raft role, term and known leader (openraft's
/// metrics change on every apply; only these three matter here). On each
/// change it logs them (with `term` and `leader_id`, the lines an operator
/// reads after an incident) and tells the writer whether a leader is known.
///
/// It also fails the node closed: when openraft's core stops on its own (a
/// storage error: disk full, EIO, a record that does not decode), the replica
/// can no longer advance, so the node must not keep answering from it. It
/// records the fault (readiness fails at once, `Node::failed` resolves) and
/// starts the shutdown (receive streams end with UNAVAILABLE, listeners close).
async fn watch_raft_role(ctx: Ctx, stop: watch::Sender<bool>) {
    let mut metrics = ctx.raft.metrics();
    let mut shutdown = ctx.shutdown.clone();
    let mut last = None;
    let mut members: Option<std::collections::BTreeSet<NodeId>> = None;
    loop {
        let (now, fatal, nodes) = {
            let m = metrics.borrow_and_update();
            let nodes: std::collections::BTreeSet<NodeId> =
                m.membership_config.membership().nodes().map(|(id, _)| *id).collect();
            ((m.state, m.current_term, m.current_leader), m.running_state.as_ref().err().map(|e| e.to_string()), nodes)
        };
        if !nodes.is_empty() && members.as_ref() != Some(&nodes) {
            let before = members.replace(nodes.clone()).unwrap_or_default();
            ctx.removed_peers.observe(&before, &nodes);
        }
        if let Some(fatal) = fatal {
            if !*shutdown.borrow() {
                tracing::error!(
                    "raft stopped: {fatal}; this node stops serving (a storage fault: check the data directory's \
                     disk, then restart it)"
                );
                ctx.fault.send_replace(Some(format!("raft stopped: {fatal}")));
                let _ = stop.send(true);
            }
            return;
        }
        if last != Some(now) {
            let (state, term, leader) = now;
            ctx.writer.observe_leader(leader.is_some());
            let role = crate::admin_http::role_name(state);
            match leader {
                Some(leader_id) => tracing::info!(term, leader_id, role, "raft: role, term or leader changed"),
                None => tracing::info!(term, role, "raft: role or term changed; no leader known"),
            }
            last = Some(now);
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Initializes a new cluster (only when this node has no Raft state), then
/// makes sure the configured limits and providers are in the replicated state.
pub(crate) async fn bootstrap(ctx: Ctx, cfg: Config) {
    let fresh = match ctx.raft.is_initialized().await {
        Ok(initialized) => !initialized,
        Err(e) => {
            tracing::error!("failed to read raft state: {e}");
            return;
        }
    };
    // An empty disk does not mean a new cluster: this node may have lost its
    // data while the others carry on. Initialize only when every other
    // initial member answered and none knows a cluster; otherwise leave it
    // to `join::rejoin_if_replaced` (a forming cluster's leader catches this
    // node up; one that records another incarnation of it is rejoined).
    if fresh && !no_member_knows_a_cluster(&ctx, &cfg).await {
        tracing::info!("another member knows a cluster: not initializing; joining it");
        crate::join::onboard_initial_providers(&ctx, &cfg).await;
        return;
    }
    if fresh {
        if let Err(e) = ctx.raft.initialize(cfg.initial_members.clone()).await {
            tracing::error!("failed to initialize cluster: {e}");
            return;
        }
        tracing::info!(members = ?cfg.initial_members.keys().collect::<Vec<_>>(), "cluster initialized");
        // Every initial member answered above: a cluster of this build starts
        // at its cluster version (otherwise `raise_cluster_version` waits).
        if crate::grpc::admin_peers::every_member_applies(&ctx, router_core::CLUSTER_VERSION).await.is_ok() {
            let raise = Command::SetClusterVersion { version: router_core::CLUSTER_VERSION };
            if let Err(e) = ctx.writer.submit_patiently(raise).await {
                tracing::error!("failed to set the cluster version: {e}");
            }
            crate::incarnation::record_missing(&ctx).await;
        }
        if let Err(e) = ctx.writer.submit_patiently(Command::SetLimits { limits: cfg.replicated_limits.clone() }).await
        {
            tracing::error!("failed to set replicated limits: {e}");
        }
    }
    crate::join::onboard_initial_providers(&ctx, &cfg).await;
}

/// Polls the other initial members until all of them answer: true when none
/// of them is part of a cluster, false as soon as one is. Gives up waiting
/// only on shutdown (then: false).
async fn no_member_knows_a_cluster(ctx: &Ctx, cfg: &Config) -> bool {
    let mut shutdown = ctx.shutdown.clone();
    let others: Vec<String> =
        cfg.initial_members.iter().filter(|(id, _)| **id != cfg.node_id).map(|(_, a)| a.peer.clone()).collect();
    loop {
        let (answers, all_answered) = crate::join::survey(ctx, others.clone()).await;
        if answers.iter().any(|s| !s.voters.is_empty()) {
            return false;
        }
        if all_answered {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.wait_for(|s| *s) => return false,
        }
    }
}

/// Raises the replicated cluster version to this build's once every member
/// runs a build that applies it (admin `Status`; the leader proposes
/// it; a rolling upgrade raises it when its last node is upgraded). Ends
/// when the local replica is at this build's version.
async fn raise_cluster_version(ctx: Ctx) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        if ctx.read(|s| s.cluster_version()) >= router_core::CLUSTER_VERSION {
            return;
        }
        let is_leader = ctx.raft.metrics().borrow().current_leader == Some(ctx.node_id);
        if is_leader {
            match crate::grpc::admin_peers::every_member_applies(&ctx, router_core::CLUSTER_VERSION).await {
                Ok(()) => {
                    let raise = Command::SetClusterVersion { version: router_core::CLUSTER_VERSION };
                    match ctx.writer.submit(raise).await {
                        Ok(_) => tracing::info!(version = router_core::CLUSTER_VERSION, "raised the cluster version"),
                        Err(e) => tracing::warn!("failed to raise the cluster version: {e}"),
                    }
                }
                Err(e) => tracing::debug!("cluster version stays: {}", e.message()),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// No vote and no log entry (nor a snapshot in their place) on disk: this
/// node never took part in a cluster, or lost what it knew.
async fn has_no_raft_state(log_store: &mut router_raft::WalLogStore) -> anyhow::Result<bool> {
    use openraft::storage::RaftLogStorage as _;
    let vote = log_store.read_vote().await.context("read the stored vote")?;
    let log = log_store.get_log_state().await.context("read the log state")?;
    Ok(vote.is_none() && log.last_log_id.is_none())
}

/// Refuses to start on a data directory whose disk has no room: a node that
/// starts anyway would stop at its first append (`watch_raft_role`).
fn check_room(data_dir: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    const PROBE_BYTES: usize = 1 << 20;
    let probe = data_dir.join(".room-check");
    let written = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(&vec![0u8; PROBE_BYTES])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    written.with_context(|| {
        format!(
            "the data directory {} cannot take a 1 MiB write (is its disk full?): free space there, then start again",
            data_dir.display()
        )
    })
}
