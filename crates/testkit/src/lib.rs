//! `router-testkit`: test-only helpers. Never a dependency of anything a user
//! runs.
//!
//! - [`TestCluster`]: an in-process cluster of real nodes (openraft + sled in
//!   a temp dir, tonic over mTLS on `127.0.0.1:0`), built on the same
//!   `router_node::dev::LocalCluster` that `routerd dev` runs.
//! - [`fixtures`]: valid Signal key material (XEdDSA-signed) for uploads.
//!
//! Must not be used outside `[dev-dependencies]`.

pub mod fixtures;

use anyhow::Context;
use router_node::config::RawConfig;
use router_node::dev::{LocalCluster, LocalClusterSpec};
use router_proto::v1::admin_client::AdminClient;
use router_sdk::{ClientConfig, RouterClient};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub const PROVIDERS: [&str; 3] = ["alpha", "beta", "gamma"];

pub struct TestCluster {
    pub cluster: LocalCluster,
    _dir: tempfile::TempDir,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,openraft=error".into()),
        )
        .with_test_writer()
        .try_init();
    router_node::install_crypto_provider();
}

impl TestCluster {
    pub async fn start(nodes: u64) -> anyhow::Result<Self> {
        Self::start_with(nodes, |_| {}).await
    }

    /// Starts `nodes` nodes with `customize` applied to each raw config, and
    /// waits until a leader is agreed and the test providers are onboarded
    /// on every node.
    pub async fn start_with(nodes: u64, customize: fn(&mut RawConfig)) -> anyhow::Result<Self> {
        Self::start_spec(nodes, None, customize).await
    }

    /// `nodes` nodes of which the first `voters` (default all) form the
    /// cluster; the rest run empty until added.
    pub async fn start_spec(nodes: u64, voters: Option<u64>, customize: fn(&mut RawConfig)) -> anyhow::Result<Self> {
        init_tracing();
        let dir = tempfile::tempdir().context("tempdir")?;
        let spec = LocalClusterSpec { customize, voters, ..LocalClusterSpec::new(dir.path(), nodes, &PROVIDERS) };
        Self::start_local(spec, dir).await
    }

    /// A cluster that takes part in federation as `cluster_id`, serving
    /// `providers` (each node has a federation listener and the cluster
    /// certificate `certs/cluster.pem`).
    pub async fn start_federated(
        nodes: u64,
        cluster_id: &str,
        providers: &[&str],
        customize: fn(&mut RawConfig),
    ) -> anyhow::Result<Self> {
        init_tracing();
        let dir = tempfile::tempdir().context("tempdir")?;
        let spec = LocalClusterSpec {
            customize,
            federation: Some(cluster_id.to_string()),
            ..LocalClusterSpec::new(dir.path(), nodes, providers)
        };
        Self::start_local(spec, dir).await
    }

    async fn start_local(spec: LocalClusterSpec, dir: tempfile::TempDir) -> anyhow::Result<Self> {
        let providers: Vec<router_core::ProviderId> = spec.providers.iter().map(|p| router_core_provider(p)).collect();
        let cluster = LocalCluster::start(spec).await?;
        let tc = TestCluster { cluster, _dir: dir };
        tc.cluster.wait_for_leader(Duration::from_secs(15)).await?;
        tc.wait_until(Duration::from_secs(15), |s| providers.iter().all(|p| s.is_onboarded(p)))
            .await
            .context("providers onboarded")?;
        Ok(tc)
    }

    /// Federation listener addresses of the given nodes.
    pub fn federation_endpoints(&self, nodes: &[u64]) -> Vec<String> {
        nodes.iter().filter_map(|id| self.cluster.node(*id).federation_addr.map(|a| a.to_string())).collect()
    }

    /// The cluster's CA (PEM), what a peer registers to trust this cluster.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(&self.cluster.ca).expect("read CA")
    }

    /// Waits until `pred` holds on the state of every running node.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&router_core::State) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let all = self
                .cluster
                .nodes
                .iter()
                .filter_map(|n| n.node.as_ref())
                .filter(|n| n.is_member())
                .all(|n| n.ctx().read(|s| pred(s)));
            if all {
                return Ok(());
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "condition not reached within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn endpoints(&self, nodes: &[u64]) -> Vec<String> {
        nodes.iter().map(|id| self.cluster.node(*id).provider_addr.to_string()).collect()
    }

    pub fn all_nodes(&self) -> Vec<u64> {
        self.cluster.nodes.iter().map(|n| n.id).collect()
    }

    /// A provider client that may use every node.
    pub fn client(&self, provider: &str) -> RouterClient {
        self.client_on(provider, &self.all_nodes())
    }

    /// A provider client pinned to the given nodes, first one first.
    pub fn client_on(&self, provider: &str, nodes: &[u64]) -> RouterClient {
        let certs = &self.cluster.provider_certs[provider];
        let read = |p: &std::path::Path| std::fs::read(p).expect("read test certificate");
        let mut cfg =
            ClientConfig::new(self.endpoints(nodes), read(&self.cluster.ca), read(&certs.cert), read(&certs.key));
        cfg.attempt_timeout = Duration::from_secs(3);
        cfg.call_deadline = Duration::from_secs(20);
        let client = RouterClient::connect(cfg).expect("client config");
        client.prefer(0);
        client
    }

    /// A raw channel to a node's provider port with any certificate pair.
    pub fn raw_channel(&self, node: u64, cert: &std::path::Path, key: &std::path::Path) -> Channel {
        let read = |p: &std::path::Path| std::fs::read(p).expect("read test certificate");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.cluster.ca)))
            .identity(Identity::from_pem(read(cert), read(key)))
            .domain_name("localhost");
        Endpoint::from_shared(format!("https://{}", self.cluster.node(node).provider_addr))
            .expect("endpoint")
            .tls_config(tls)
            .expect("tls")
            .connect_lazy()
    }

    /// An admin client (operator certificate) on a node's peer port.
    pub fn admin(&self, node: u64) -> AdminClient<Channel> {
        let read = |p: &std::path::Path| std::fs::read(p).expect("read test certificate");
        let op = &self.cluster.operator_cert;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.cluster.ca)))
            .identity(Identity::from_pem(read(&op.cert), read(&op.key)))
            .domain_name("localhost");
        let ch = Endpoint::from_shared(format!("https://{}", self.cluster.node(node).peer_addr))
            .expect("endpoint")
            .tls_config(tls)
            .expect("tls")
            .connect_lazy();
        AdminClient::new(ch)
    }

    pub async fn shutdown(self) {
        self.cluster.shutdown().await;
    }
}

fn router_core_provider(p: &str) -> router_core::ProviderId {
    router_core::ProviderId::new(p)
}
