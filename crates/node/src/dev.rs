//! A local cluster of in-process nodes on loopback with a generated PKI:
//! `routerd dev` runs one, and `router-testkit` builds its test clusters on
//! the same code (so the demo and the tests exercise one path).

use crate::config::{Config, RawCluster, RawConfig, RawListen, RawMember, RawTls};
use crate::devcerts::{CertPaths, DevPki};
use crate::node::{Listeners, Node};
use anyhow::Context;
use router_raft::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpListener;

pub struct LocalClusterSpec {
    pub dir: PathBuf,
    pub nodes: u64,
    pub providers: Vec<String>,
    /// `None`: ephemeral ports (tests). `Some(base)`: node i listens on
    /// base+10i+1 (provider), +2 (peer), +3 (admin).
    pub base_port: Option<u16>,
    /// Applied to every node's raw config before validation.
    pub customize: fn(&mut RawConfig),
    /// Nodes 1..=voters form the initial cluster; the others start empty,
    /// waiting to be added (default: all).
    pub voters: Option<u64>,
    /// A federation cluster id: every node gets a `[federation]` section,
    /// a federation listener (ephemeral port) and the cluster certificate
    /// `certs/cluster.pem` (test clusters that federate with each other).
    pub federation: Option<String>,
}

pub struct LocalNode {
    pub id: NodeId,
    pub config: Config,
    pub provider_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The federation listener, when the spec has a federation id.
    pub federation_addr: Option<SocketAddr>,
    pub node: Option<Node>,
}

pub struct LocalCluster {
    pub dir: PathBuf,
    /// The dev CA, kept to issue more certificates (tests: unknown providers).
    pub pki: DevPki,
    pub ca: PathBuf,
    pub provider_certs: BTreeMap<String, CertPaths>,
    pub operator_cert: CertPaths,
    pub nodes: Vec<LocalNode>,
}

fn no_customization(_: &mut RawConfig) {}

impl LocalClusterSpec {
    pub fn new(dir: &Path, nodes: u64, providers: &[&str]) -> Self {
        LocalClusterSpec {
            dir: dir.to_path_buf(),
            nodes,
            providers: providers.iter().map(|s| s.to_string()).collect(),
            base_port: None,
            customize: no_customization,
            voters: None,
            federation: None,
        }
    }
}

/// Certificates and per-node configs of a local cluster, written to disk.
pub struct DevLayout {
    pub pki: DevPki,
    pub provider_certs: BTreeMap<String, CertPaths>,
    pub operator_cert: CertPaths,
    /// Validated config of node i+1, also written as `<dir>/routerd-<i+1>.toml`.
    pub configs: Vec<Config>,
}

/// Addresses of one node: provider, peer, admin.
pub type NodeAddrs = (SocketAddr, SocketAddr, SocketAddr);

/// The loopback addresses `routerd dev` and `routerd init-dev` use: node i
/// listens on base+10i+1 (provider), +2 (peer), +3 (admin).
pub fn fixed_addrs(base_port: u16, nodes: u64) -> Vec<NodeAddrs> {
    (1..=nodes as u16)
        .map(|id| {
            let a = |k: u16| SocketAddr::from(([127, 0, 0, 1], base_port + 10 * id + k));
            (a(1), a(2), a(3))
        })
        .collect()
}

/// Generates a dev CA, node/provider/operator certificates and one config
/// per node (node 1 bootstraps and onboards the providers).
pub fn write_layout(spec: &LocalClusterSpec, addrs: &[NodeAddrs]) -> anyhow::Result<DevLayout> {
    write_layout_federated(spec, addrs, &[])
}

/// [`write_layout`], and with `spec.federation` set a cluster certificate and
/// a `[federation]` section per node listening on `federation_addrs[i]`.
pub fn write_layout_federated(
    spec: &LocalClusterSpec,
    addrs: &[NodeAddrs],
    federation_addrs: &[SocketAddr],
) -> anyhow::Result<DevLayout> {
    let pki = DevPki::create(&spec.dir.join("certs")).context("create dev PKI")?;
    let cluster_cert = match &spec.federation {
        Some(id) => Some(pki.issue(&crate::identity::Identity::Cluster(router_core::ClusterId::new(id)), "cluster")?),
        None => None,
    };
    let mut provider_certs = BTreeMap::new();
    for p in &spec.providers {
        provider_certs.insert(p.clone(), pki.issue_provider(p)?);
    }
    let operator_cert = pki.issue_operator("admin")?;
    let voters = spec.voters.unwrap_or(spec.nodes) as usize;
    let members: Vec<RawMember> = addrs
        .iter()
        .take(voters)
        .enumerate()
        .map(|(i, (prov, peer, _))| RawMember { id: i as u64 + 1, peer: peer.to_string(), provider: prov.to_string() })
        .collect();
    let mut configs = Vec::new();
    for (i, (provider_addr, peer_addr, admin_addr)) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let cert = pki.issue_node(id)?;
        let mut raw = RawConfig {
            node_id: id,
            data_dir: spec.dir.join(format!("node-{id}")),
            listen: RawListen { provider: *provider_addr, peer: *peer_addr, admin: *admin_addr },
            advertise: Default::default(),
            tls: RawTls { ca: pki.ca.clone(), cert: cert.cert, key: cert.key, peer_server_name: "localhost".into() },
            cluster: RawCluster {
                bootstrap: id == 1,
                initial_members: members.clone(),
                initial_providers: spec.providers.clone(),
                seeds: Vec::new(),
            },
            raft: Default::default(),
            limits: Default::default(),
            batching: Default::default(),
            telemetry: Default::default(),
            media: Default::default(),
            connections: Default::default(),
            federation: match (&spec.federation, &cluster_cert, federation_addrs.get(i)) {
                (Some(id), Some(cert), Some(listen)) => Some(crate::config::RawFederation {
                    cluster_id: id.clone(),
                    listen: *listen,
                    cert: cert.cert.clone(),
                    key: cert.key.clone(),
                    route_cache_ttl_ms: None,
                    relay_batch: None,
                    backoff_max_ms: None,
                    request_timeout_ms: None,
                }),
                (Some(_), _, None) => anyhow::bail!("no federation listener address for node {id}"),
                _ => None,
            },
        };
        (spec.customize)(&mut raw);
        std::fs::create_dir_all(&raw.data_dir)?;
        std::fs::write(spec.dir.join(format!("routerd-{id}.toml")), render_toml(&raw))?;
        configs.push(Config::validate(raw).context("validate generated config")?);
    }
    Ok(DevLayout { pki, provider_certs, operator_cert, configs })
}

impl LocalCluster {
    /// Binds every listener, writes the layout, starts every node in this
    /// process; node 1 bootstraps the cluster and onboards the providers.
    pub async fn start(spec: LocalClusterSpec) -> anyhow::Result<LocalCluster> {
        let mut bound = Vec::new();
        let wanted = match spec.base_port {
            Some(base) => fixed_addrs(base, spec.nodes),
            None => {
                let any = SocketAddr::from(([127, 0, 0, 1], 0));
                vec![(any, any, any); spec.nodes as usize]
            }
        };
        for (p, pe, a) in wanted {
            let bind = |a: SocketAddr| async move { TcpListener::bind(a).await.with_context(|| format!("bind {a}")) };
            let federation = match &spec.federation {
                Some(_) => Some(bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?),
                None => None,
            };
            bound.push(Listeners {
                provider: bind(p).await?,
                peer: bind(pe).await?,
                admin: bind(a).await?,
                federation,
            });
        }
        let addrs: Vec<NodeAddrs> = bound
            .iter()
            .map(|l| Ok((l.provider.local_addr()?, l.peer.local_addr()?, l.admin.local_addr()?)))
            .collect::<std::io::Result<_>>()?;
        let federation_addrs: Vec<SocketAddr> = bound
            .iter()
            .filter_map(|l| l.federation.as_ref().map(TcpListener::local_addr))
            .collect::<Result<_, _>>()?;
        let layout = write_layout_federated(&spec, &addrs, &federation_addrs)?;
        let mut nodes = Vec::new();
        for ((config, listeners), (provider_addr, peer_addr, admin_addr)) in
            layout.configs.into_iter().zip(bound).zip(addrs)
        {
            let id = config.node_id;
            let federation_addr = config.federation.as_ref().map(|f| f.listen);
            let node = Node::start(config.clone(), listeners).await.with_context(|| format!("start node {id}"))?;
            nodes.push(LocalNode {
                id,
                config,
                provider_addr,
                peer_addr,
                admin_addr,
                federation_addr,
                node: Some(node),
            });
        }
        let ca = layout.pki.ca.clone();
        Ok(LocalCluster {
            dir: spec.dir,
            ca,
            pki: layout.pki,
            provider_certs: layout.provider_certs,
            operator_cert: layout.operator_cert,
            nodes,
        })
    }

    pub fn node(&self, id: NodeId) -> &LocalNode {
        &self.nodes[(id - 1) as usize]
    }

    /// The current leader as seen by any running node.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes.iter().filter_map(|n| n.node.as_ref()).find_map(|n| n.raft().metrics().borrow().current_leader)
    }

    /// Waits until a leader exists and every running node knows it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<NodeId> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Nodes waiting to be added (not members yet) have no leader to agree on.
            let views: Vec<Option<NodeId>> = self
                .nodes
                .iter()
                .filter_map(|n| n.node.as_ref())
                .filter(|n| n.is_member())
                .map(|n| n.raft().metrics().borrow().current_leader)
                .collect();
            if let Some(Some(l)) = views.first() {
                let running = self.nodes.iter().any(|n| n.id == *l && n.node.is_some());
                if running && views.iter().all(|v| *v == Some(*l)) {
                    return Ok(*l);
                }
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "no agreed leader within {timeout:?}: {views:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops a node at once (its data directory stays).
    pub async fn crash(&mut self, id: NodeId) {
        if let Some(node) = self.nodes[(id - 1) as usize].node.take() {
            node.crash().await;
        }
    }

    /// Stops a node gracefully (a leader hands leadership over first).
    pub async fn stop(&mut self, id: NodeId) {
        if let Some(node) = self.nodes[(id - 1) as usize].node.take() {
            node.shutdown(Duration::from_secs(5)).await;
        }
    }

    /// Starts a stopped node again on the same addresses and data directory
    /// (with bootstrapping turned off).
    pub async fn restart(&mut self, id: NodeId) -> anyhow::Result<()> {
        self.restart_with(id, false).await
    }

    /// Starts a stopped node again with its original config, `bootstrap`
    /// included: what a supervisor restarting the process would do.
    pub async fn restart_as_configured(&mut self, id: NodeId) -> anyhow::Result<()> {
        self.restart_with(id, true).await
    }

    async fn restart_with(&mut self, id: NodeId, keep_bootstrap: bool) -> anyhow::Result<()> {
        let n = &mut self.nodes[(id - 1) as usize];
        anyhow::ensure!(n.node.is_none(), "node {id} is running");
        let mut config = n.config.clone();
        config.bootstrap &= keep_bootstrap;
        // A crashed node's storage and sockets are released by its tasks
        // shortly after `crash` returns (later on a loaded machine); until then
        // sled's directory lock refuses a reopen and the ports are in use.
        let mut attempt = 0;
        loop {
            let started = async {
                let listeners = Listeners {
                    provider: TcpListener::bind(n.provider_addr).await?,
                    peer: TcpListener::bind(n.peer_addr).await?,
                    admin: TcpListener::bind(n.admin_addr).await?,
                    federation: match n.federation_addr {
                        Some(a) => Some(TcpListener::bind(a).await?),
                        None => None,
                    },
                };
                Node::start(config.clone(), listeners).await
            };
            match started.await {
                Ok(node) => {
                    n.node = Some(node);
                    return Ok(());
                }
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    tracing::debug!("restart of node {id} failed ({e:#}); retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Deletes a stopped node's data directory (disk loss).
    pub fn wipe(&mut self, id: NodeId) -> anyhow::Result<()> {
        let n = &self.nodes[(id - 1) as usize];
        anyhow::ensure!(n.node.is_none(), "node {id} is running");
        std::fs::remove_dir_all(&n.config.data_dir).context("wipe data dir")?;
        std::fs::create_dir_all(&n.config.data_dir)?;
        Ok(())
    }

    pub async fn shutdown(mut self) {
        for n in &mut self.nodes {
            if let Some(node) = n.node.take() {
                node.shutdown(Duration::from_secs(2)).await;
            }
        }
    }
}

/// The generated per-node config as TOML, so a node can also be run as its
/// own process: `routerd --config <dir>/routerd-1.toml`.
fn render_toml(raw: &RawConfig) -> String {
    let members: String = raw
        .cluster
        .initial_members
        .iter()
        .map(|m| format!("  {{ id = {}, peer = \"{}\", provider = \"{}\" }},\n", m.id, m.peer, m.provider))
        .collect();
    let providers: Vec<String> = raw.cluster.initial_providers.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "node_id = {id}\ndata_dir = \"{data}\"\n\n[listen]\nprovider = \"{lp}\"\npeer = \"{lpe}\"\nadmin = \"{la}\"\n\n\
         [tls]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\n\
         [cluster]\nbootstrap = {boot}\ninitial_providers = [{providers}]\ninitial_members = [\n{members}]\n",
        id = raw.node_id,
        data = raw.data_dir.display(),
        lp = raw.listen.provider,
        lpe = raw.listen.peer,
        la = raw.listen.admin,
        ca = raw.tls.ca.display(),
        cert = raw.tls.cert.display(),
        key = raw.tls.key.display(),
        boot = raw.cluster.bootstrap,
        providers = providers.join(", "),
    ) + &match &raw.federation {
        Some(f) => format!(
            "\n[federation]\ncluster_id = \"{}\"\nlisten = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            f.cluster_id,
            f.listen,
            f.cert.display(),
            f.key.display()
        ),
        None => String::new(),
    }
}
