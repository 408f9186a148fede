//! Three `routerd` processes on loopback, started from the configs that
//! `routerd init-dev` writes, stopped by PID (only the ones started here).

use anyhow::{Context, bail};
use router_proto::v1::StatusRequest;
use router_proto::v1::admin_client::AdminClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

pub struct ProcessCluster {
    pub dir: PathBuf,
    routerd: PathBuf,
    base_port: u16,
    children: Vec<Option<Child>>,
    admin: Vec<AdminClient<Channel>>,
}

impl ProcessCluster {
    pub fn provider_endpoint(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.base_port + 10 * id as u16 + 1)
    }

    fn peer_endpoint(base_port: u16, id: u64) -> String {
        format!("127.0.0.1:{}", base_port + 10 * id as u16 + 2)
    }

    pub fn nodes(&self) -> u64 {
        self.children.len() as u64
    }

    /// Writes the layout with `routerd init-dev` and starts every node.
    pub async fn start(routerd: &Path, dir: &Path, base_port: u16, nodes: u64) -> anyhow::Result<Self> {
        let status = Command::new(routerd)
            .args(["init-dev", "--dir"])
            .arg(dir)
            .args(["--nodes", &nodes.to_string(), "--base-port", &base_port.to_string(), "--providers", "alpha,beta"])
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("run {} init-dev", routerd.display()))?;
        if !status.success() {
            bail!("routerd init-dev failed: {status}");
        }
        let certs = dir.join("certs");
        let mut connector = router_sdk::admin::AdminConnector::from_files(
            &certs.join("ca.pem"),
            &certs.join("operator-admin.pem"),
            &certs.join("operator-admin.key"),
            "localhost",
        )?;
        connector.timeout = Duration::from_secs(2);
        connector.connect_timeout = Duration::from_millis(500);
        let mut admin = Vec::new();
        for id in 1..=nodes {
            admin.push(connector.client(&Self::peer_endpoint(base_port, id))?);
        }
        let mut cluster = ProcessCluster {
            dir: dir.to_path_buf(),
            routerd: routerd.to_path_buf(),
            base_port,
            children: (0..nodes).map(|_| None).collect(),
            admin,
        };
        for id in 1..=nodes {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("node-{id}.log")))?;
        let child = Command::new(&self.routerd)
            .arg("--config")
            .arg(self.dir.join(format!("routerd-{id}.toml")))
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start routerd node {id}"))?;
        self.children[(id - 1) as usize] = Some(child);
        Ok(())
    }

    /// SIGKILL: no shutdown, no flush beyond what was fsynced.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<u32> {
        let mut child = self.children[(id - 1) as usize].take().context("node is not running")?;
        let pid = child.id();
        child.kill().context("kill -9")?;
        child.wait()?;
        Ok(pid)
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.children[(id - 1) as usize].as_ref().map(Child::id)
    }

    /// (node, role, term, leader) from one node's admin API.
    pub async fn status(&self, id: u64) -> Option<(String, u64, u64)> {
        let mut c = self.admin[(id - 1) as usize].clone();
        let s = c.status(StatusRequest {}).await.ok()?.into_inner();
        s.has_leader.then_some((s.role, s.current_term, s.leader_id))
    }

    /// The leader every running node agrees on.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            for id in 1..=self.nodes() {
                if self.children[(id - 1) as usize].is_some() {
                    leaders.push(self.status(id).await.map(|s| s.2));
                }
            }
            if let Some(Some(l)) = leaders.first()
                && leaders.iter().all(|x| *x == Some(*l))
                && self.children[(*l - 1) as usize].is_some()
            {
                return Ok(*l);
            }
            if Instant::now() > deadline {
                bail!(
                    "no agreed leader within {timeout:?} (views: {leaders:?}); see {}/node-*.log",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Total bytes under the nodes' data directories and how often `needle` occurs.
    pub fn scan_storage(&self, needles: &[Vec<u8>]) -> (u64, usize) {
        let (mut bytes, mut hits) = (0u64, 0usize);
        let mut dirs: Vec<PathBuf> = (1..=self.nodes()).map(|id| self.dir.join(format!("node-{id}"))).collect();
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if let Ok(data) = std::fs::read(&p) {
                    bytes += data.len() as u64;
                    for n in needles {
                        hits += data.windows(n.len()).filter(|w| w == n).count();
                    }
                }
            }
        }
        (bytes, hits)
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
