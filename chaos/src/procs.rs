//! A cluster of real `routerd` processes on 127.0.0.1, started from the
//! configs `routerd init-dev --nodes N --base-port P` writes (every config
//! lists the members; node 1 bootstraps). Faults are signals to processes this
//! module started, addressed by PID: SIGKILL, SIGTERM, SIGSTOP/SIGCONT, plus
//! wiping a stopped node's data directory. Every child is killed again when
//! the cluster is dropped, so an error or panic leaves nothing running.

use crate::cluster::ClusterView;
use crate::diskfault::{LoopDisk, PowerCutLoss};
use anyhow::{Context, Result, bail};
use router_sdk::admin::AdminConnector;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Settings put into every node's config on top of what `init-dev` wrote.
/// Claims must not be rate-limited (the claimer tests exactly-once, not the
/// bucket), and snapshots come early so that a node that lost its disk has to
/// be sent a snapshot (the leader's log no longer starts at index 1).
pub const OVERRIDES: [(&str, &str, &str); 4] = [
    ("limits", "prekey_claim_burst", "1000000"),
    ("limits", "prekey_claim_refill_ms", "1"),
    ("raft", "snapshot_every_entries", "100"),
    ("raft", "keep_logs_after_snapshot", "20"),
];

struct Proc {
    id: u64,
    /// The routerd binary this node runs from its next start on (a rolling
    /// upgrade switches it); `None` runs the cluster's binary.
    binary: Option<PathBuf>,
    config: PathBuf,
    data_dir: PathBuf,
    child: Option<Child>,
    starts: u32,
    /// Extra environment for the process (a fault's preloaded library).
    env: Vec<(String, String)>,
}

pub struct ProcCluster {
    /// Run each node under its own group id (`netfault::node_gid`), so
    /// network faults can tell the nodes' packets apart.
    pub own_gids: bool,
    pub dir: PathBuf,
    pub base_port: u16,
    routerd: PathBuf,
    procs: Vec<Proc>,
    rust_log: String,
    /// Per-node filesystems for power-loss faults ([`ProcCluster::use_loop_disks`]).
    /// Declared last: dropped (unmounted) after `Drop` killed the processes.
    disks: BTreeMap<u64, LoopDisk>,
}

/// One signal to one PID, through the `kill` utility (no libc binding needed).
fn signal(pid: u32, sig: &str) -> Result<()> {
    let st =
        Command::new("kill").args(["-s", sig, &pid.to_string()]).stderr(Stdio::null()).status().context("run kill")?;
    if !st.success() {
        bail!("kill -s {sig} {pid} failed ({st})");
    }
    Ok(())
}

impl ProcCluster {
    /// `routerd init-dev` into `dir`, the overrides applied. Nothing started yet.
    pub fn prepare(routerd: &Path, dir: &Path, nodes: u64, base_port: u16, rust_log: &str) -> Result<ProcCluster> {
        let out = Command::new(routerd)
            .args(["init-dev", "--dir"])
            .arg(dir)
            .args(["--nodes", &nodes.to_string(), "--base-port", &base_port.to_string(), "--providers", "alpha,beta"])
            .stdout(Stdio::null())
            .output()
            .with_context(|| format!("run {} init-dev", routerd.display()))?;
        if !out.status.success() {
            bail!("routerd init-dev failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let mut procs = Vec::new();
        for id in 1..=nodes {
            let config = dir.join(format!("routerd-{id}.toml"));
            let text = std::fs::read_to_string(&config).with_context(|| format!("read {}", config.display()))?;
            std::fs::write(&config, apply_overrides(&text, &OVERRIDES))?;
            let data_dir = data_dir_of(&text).with_context(|| format!("no data_dir in {}", config.display()))?;
            procs.push(Proc { id, binary: None, config, data_dir, child: None, starts: 0, env: Vec::new() });
        }
        Ok(ProcCluster {
            own_gids: false,
            dir: dir.to_path_buf(),
            base_port,
            routerd: routerd.to_path_buf(),
            procs,
            rust_log: rust_log.into(),
            disks: BTreeMap::new(),
        })
    }

    pub fn ids(&self) -> Vec<u64> {
        self.procs.iter().map(|p| p.id).collect()
    }

    /// init-dev's fixed layout: node i listens on base + 10 i + {1 provider, 2 peer, 3 admin}.
    pub fn provider_endpoint(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.base_port + 10 * id as u16 + 1)
    }

    pub fn peer_port(&self, id: u64) -> u16 {
        self.base_port + 10 * id as u16 + 2
    }

    /// The admin HTTP listener (`/metrics`, `/readyz`).
    pub fn admin_endpoint(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.base_port + 10 * id as u16 + 3)
    }

    pub fn peer_endpoint(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.base_port + 10 * id as u16 + 2)
    }

    pub fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// (certificate, key) of `provider-alpha`, `operator-admin`, ...
    pub fn identity(&self, name: &str) -> Result<(Vec<u8>, Vec<u8>)> {
        let c = self.certs();
        Ok((
            std::fs::read(c.join(format!("{name}.pem"))).with_context(|| format!("read {name}.pem"))?,
            std::fs::read(c.join(format!("{name}.key"))).with_context(|| format!("read {name}.key"))?,
        ))
    }

    pub fn ca_pem(&self) -> Result<Vec<u8>> {
        std::fs::read(self.certs().join("ca.pem")).context("read ca.pem")
    }

    pub fn view(&self) -> Result<ClusterView> {
        let (cert, key) = self.identity("operator-admin")?;
        let mut admin = AdminConnector::new(&self.ca_pem()?, &cert, &key, "localhost");
        admin.timeout = Duration::from_secs(2);
        Ok(ClusterView::with_endpoints(admin, self.ids().into_iter().map(|id| (id, self.peer_endpoint(id))).collect()))
    }

    fn proc_mut(&mut self, id: u64) -> Result<&mut Proc> {
        self.procs.iter_mut().find(|p| p.id == id).with_context(|| format!("no node {id}"))
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.procs.iter().find(|p| p.id == id).and_then(|p| p.child.as_ref()).map(Child::id)
    }

    /// Runs node `id` from `binary` from its next start on (a rolling upgrade).
    pub fn set_binary(&mut self, id: u64, binary: &Path) -> Result<()> {
        self.proc_mut(id)?.binary = Some(binary.to_path_buf());
        Ok(())
    }

    /// Starts node `id` (its log is appended to `node-<id>.log`).
    pub fn start(&mut self, id: u64) -> Result<u32> {
        let (dir, rust_log, self_gids) = (self.dir.clone(), self.rust_log.clone(), self.own_gids);
        let cluster_binary = self.routerd.clone();
        let p = self.proc_mut(id)?;
        if p.child.is_some() {
            bail!("node {id} is already running");
        }
        let routerd = p.binary.clone().unwrap_or(cluster_binary);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("node-{id}.log")))?;
        let mut cmd = Command::new(routerd);
        if self_gids {
            std::os::unix::process::CommandExt::gid(&mut cmd, crate::netfault::node_gid(id));
        }
        let child = cmd
            .arg("--config")
            .arg(&p.config)
            .env("RUST_LOG", rust_log)
            .envs(p.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start node {id}"))?;
        p.starts += 1;
        let pid = child.id();
        p.child = Some(child);
        Ok(pid)
    }

    /// SIGKILL, then reaps the process.
    pub fn kill9(&mut self, id: u64) -> Result<()> {
        let p = self.proc_mut(id)?;
        let mut child = p.child.take().with_context(|| format!("node {id} is not running"))?;
        child.kill().with_context(|| format!("SIGKILL node {id}"))?;
        let _ = child.wait();
        Ok(())
    }

    /// SIGTERM (graceful: a leader hands over first), waits up to `grace`,
    /// then SIGKILL. Returns whether the process exited on its own.
    pub async fn terminate(&mut self, id: u64, grace: Duration) -> Result<bool> {
        let p = self.proc_mut(id)?;
        let mut child = p.child.take().with_context(|| format!("node {id} is not running"))?;
        signal(child.id(), "TERM")?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        Ok(false)
    }

    /// Sets an environment variable for node `id`'s next starts.
    pub fn set_env(&mut self, id: u64, key: &str, value: &str) -> Result<()> {
        self.proc_mut(id)?.env.push((key.to_string(), value.to_string()));
        Ok(())
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.procs.iter().find(|p| p.id == id).map(|p| p.data_dir.clone()).unwrap_or_default()
    }

    /// Waits up to `within` for node `id`'s process to exit on its own;
    /// its exit code once it did (reaped), `None` if it still runs.
    pub async fn wait_exit(&mut self, id: u64, within: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + within;
        loop {
            let p = self.proc_mut(id)?;
            let child = p.child.as_mut().with_context(|| format!("node {id} is not running"))?;
            if let Some(status) = child.try_wait()? {
                p.child = None;
                return Ok(Some(status.code().unwrap_or(-1)));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pause(&self, id: u64) -> Result<()> {
        signal(self.pid(id).with_context(|| format!("node {id} is not running"))?, "STOP")
    }

    pub fn resume(&self, id: u64) -> Result<()> {
        signal(self.pid(id).with_context(|| format!("node {id} is not running"))?, "CONT")
    }

    /// Removes the data directory of a node that is down (its disk is lost).
    pub fn wipe(&mut self, id: u64) -> Result<()> {
        let p = self.proc_mut(id)?;
        if p.child.is_some() {
            bail!("node {id} must be down before its disk is wiped");
        }
        if p.data_dir.exists() {
            std::fs::remove_dir_all(&p.data_dir).with_context(|| format!("remove {}", p.data_dir.display()))?;
        }
        std::fs::create_dir_all(&p.data_dir)?;
        Ok(())
    }

    /// Puts every node's data directory on its own loop-mounted ext4
    /// filesystem (image `disk-<id>.img` in the cluster directory), so that
    /// [`power_cut`](Self::power_cut) can roll it back. Before any start.
    pub fn use_loop_disks(&mut self) -> Result<()> {
        for p in &self.procs {
            if p.child.is_some() {
                bail!("node {} is running: loop disks go under a node before it starts", p.id);
            }
            let image = self.dir.join(format!("disk-{}.img", p.id));
            self.disks.insert(p.id, LoopDisk::create(&image, &p.data_dir)?);
        }
        Ok(())
    }

    /// Loses the unsynced writes of node `id`, which must be down (SIGKILLed):
    /// its data directory comes back as its disk holds it.
    pub fn power_cut(&mut self, id: u64) -> Result<PowerCutLoss> {
        if self.pid(id).is_some() {
            bail!("node {id} must be down before its power is cut");
        }
        self.disks.get_mut(&id).with_context(|| format!("node {id} has no loop disk"))?.power_cut()
    }

    /// Graceful stop of everything still running (bounded), SIGKILL as the fallback.
    pub async fn stop_all(&mut self) {
        for id in self.ids() {
            if self.pid(id).is_some() {
                let _ = self.resume(id); // a paused process cannot act on SIGTERM
                let _ = self.terminate(id, Duration::from_secs(5)).await;
            }
        }
    }

    /// The last `lines` lines of node `id`'s log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join(format!("node-{id}.log"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The first line of node `id`'s log that contains `needle`.
    pub fn log_line(&self, id: u64, needle: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join(format!("node-{id}.log"))).ok()?;
        text.lines().find(|l| l.contains(needle)).map(|l| l.trim().to_string())
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(mut child) = p.child.take() {
                let _ = child.kill(); // SIGKILL also ends a SIGSTOPped process
                let _ = child.wait();
            }
        }
    }
}

fn data_dir_of(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "data_dir").then(|| PathBuf::from(v.trim().trim_matches('"')))
    })
}

/// Sets `key = value` in `[section]`: replaces the key if the section has it,
/// adds it under an existing header, or appends the section.
pub fn apply_overrides(text: &str, overrides: &[(&str, &str, &str)]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for (section, key, value) in overrides {
        let header = format!("[{section}]");
        let setting = format!("{key} = {value}");
        match lines.iter().position(|l| l.trim() == header) {
            Some(h) => {
                let end = lines[h + 1..]
                    .iter()
                    .position(|l| l.trim_start().starts_with('['))
                    .map_or(lines.len(), |e| h + 1 + e);
                let existing = (h + 1..end).find(|&i| lines[i].split('=').next().is_some_and(|k| k.trim() == *key));
                match existing {
                    Some(i) => lines[i] = setting,
                    None => lines.insert(end, setting),
                }
            }
            None => {
                lines.push(String::new());
                lines.push(header);
                lines.push(setting);
            }
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// A base port P such that P + 10 i + {1, 2, 3} is free on 127.0.0.1 for every
/// node i (checked by binding; bounded number of tries).
pub fn free_base_port(nodes: u64, seed: u64) -> Result<u16> {
    for attempt in 0..64u64 {
        let base = 20_000 + ((seed.wrapping_mul(7919).wrapping_add(attempt * 104_729)) % 400) as u16 * 100;
        let ok = (1..=nodes)
            .all(|i| (1..=3).all(|k| std::net::TcpListener::bind(("127.0.0.1", base + 10 * i as u16 + k)).is_ok()));
        if ok {
            return Ok(base);
        }
    }
    bail!("no free port block found on 127.0.0.1 after 64 tries")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_add_or_append() {
        let text = "node_id = 1\ndata_dir = \"/d/node-1\"\n[limits]\nprekey_claim_burst = 5\n[tls]\nca = \"x\"\n";
        let out = apply_overrides(text, &OVERRIDES);
        assert!(out.contains("[limits]\nprekey_claim_burst = 1000000\nprekey_claim_refill_ms = 1\n[tls]"), "{out}");
        assert!(out.ends_with("[raft]\nsnapshot_every_entries = 100\nkeep_logs_after_snapshot = 20\n"), "{out}");
        assert_eq!(data_dir_of(text), Some(PathBuf::from("/d/node-1")));
    }
}
