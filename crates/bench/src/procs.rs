//! Processes started by the benchmark: each is killed by its own PID when its
//! guard drops (also on error paths), never by name.

use anyhow::{Context, bail};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to (re)start one process.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    pub log: PathBuf,
}

/// A running child; SIGKILLed and reaped on drop.
pub struct Guard {
    child: Child,
    pub name: String,
}

impl Guard {
    pub fn start(spec: &Spec) -> anyhow::Result<Guard> {
        let log = std::fs::File::create(&spec.log).with_context(|| format!("create {}", spec.log.display()))?;
        let child = Command::new(&spec.program)
            .args(&spec.args)
            .envs(spec.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {} ({})", spec.name, spec.program.display()))?;
        Ok(Guard { child, name: spec.name.clone() })
    }

    /// SIGKILL now (kill -9), then reap. Returns the instant of the kill.
    pub fn kill9(mut self) -> Instant {
        let at = Instant::now();
        let _ = self.child.kill();
        let _ = self.child.wait();
        at
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process already exited (crashed or refused its config).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A set of member processes (indices 0..n), any of which may be down.
pub struct Group {
    pub specs: Vec<Spec>,
    pub running: Vec<Option<Guard>>,
}

impl Group {
    pub fn start(specs: Vec<Spec>) -> anyhow::Result<Group> {
        let mut g = Group { running: specs.iter().map(|_| None).collect(), specs };
        for i in 0..g.specs.len() {
            g.restart(i)?;
        }
        Ok(g)
    }

    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.running[i].is_none() {
            self.running[i] = Some(Guard::start(&self.specs[i])?);
        }
        Ok(())
    }

    pub fn kill9(&mut self, i: usize) -> anyhow::Result<Instant> {
        let g = self.running[i].take().context("member is not running")?;
        Ok(g.kill9())
    }

    /// (name, PID) of every running member.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.running.iter().flatten().map(|g| (g.name.clone(), g.pid())).collect()
    }

    /// Fails with the log's tail if a member died on its own.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for (i, g) in self.running.iter_mut().enumerate() {
            if let Some(g) = g
                && g.exited()
            {
                let log = std::fs::read_to_string(&self.specs[i].log).unwrap_or_default();
                let tail: String =
                    log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                bail!("{} exited unexpectedly; log tail:\n{tail}", g.name);
            }
        }
        Ok(())
    }
}

/// Refuses to start when something already listens on a port we need.
pub fn ensure_free(ports: &[u16]) -> anyhow::Result<()> {
    for p in ports {
        let addr = SocketAddr::from(([127, 0, 0, 1], *p));
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            bail!("port {p} on 127.0.0.1 is in use; pick other ports (see --help)");
        }
    }
    Ok(())
}

/// Waits (bounded) until each port accepts TCP connections.
pub async fn wait_ports(ports: &[u16], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for p in ports {
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", *p)).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("port {p} did not open within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// The first executable named `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    p.is_file()
}
