//! The Docker CLI, driven with a deadline on every call, and a ledger of
//! everything a run created so that it can be removed again on every exit path.
//!
//! Every container, network and volume a run creates carries the label
//! `router-chaos.run=<prefix>` and a name starting with `<prefix>-`. Cleanup
//! removes what the ledger lists and then sweeps by that label, which also
//! catches an object whose `docker run`/`create` timed out after Docker had
//! already created it. Nothing without the label is ever touched.

use anyhow::{Context, Result, anyhow, bail};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Label key put on everything a run creates.
pub const RUN_LABEL: &str = "router-chaos.run";

/// Deadline for ordinary Docker calls (run, kill, start, inspect, rm).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Ledger {
    containers: Vec<String>,
    networks: Vec<String>,
    volumes: Vec<String>,
    cleaned: bool,
}

/// A run's handle on the Docker Engine.
pub struct Docker {
    prefix: String,
    ledger: Mutex<Ledger>,
}

/// Output of a finished `docker` call.
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Docker {
    /// `prefix` names and labels everything this run creates.
    pub fn new(prefix: &str) -> Result<Docker> {
        let valid = !prefix.is_empty()
            && prefix.len() <= 40
            && prefix.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !valid {
            bail!("prefix {prefix:?}: use 1..=40 characters [A-Za-z0-9-], starting with a letter or digit");
        }
        Ok(Docker { prefix: prefix.to_string(), ledger: Mutex::default() })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn label(&self) -> String {
        format!("{RUN_LABEL}={}", self.prefix)
    }

    /// Runs `docker args...`; the process is killed when `timeout` passes.
    pub async fn call(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        call(args, timeout).await
    }

    /// Like [`Docker::call`], but a non-zero exit is an error naming the command.
    pub async fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.call(args, CALL_TIMEOUT).await?;
        if !out.ok {
            bail!("docker {} failed: {}", args.join(" "), out.stderr.trim());
        }
        Ok(out.stdout.trim().to_string())
    }

    pub async fn create_network(&self, name: &str) -> Result<()> {
        self.ledger.lock().unwrap().networks.push(name.to_string());
        self.ok(&["network", "create", "--driver", "bridge", "--label", &self.label(), name]).await.map(drop)
    }

    pub async fn create_volume(&self, name: &str) -> Result<()> {
        self.ledger.lock().unwrap().volumes.push(name.to_string());
        self.ok(&["volume", "create", "--label", &self.label(), name]).await.map(drop)
    }

    /// `docker run -d --name <name> --label ... <args...>`; returns the container id.
    pub async fn run_detached(&self, name: &str, args: &[String]) -> Result<String> {
        self.ledger.lock().unwrap().containers.push(name.to_string());
        let label = self.label();
        let mut all: Vec<&str> = vec!["run", "-d", "--name", name, "--label", &label];
        all.extend(args.iter().map(String::as_str));
        self.ok(&all).await
    }

    /// SIGKILL, as a crash or an OOM kill would deliver it.
    pub async fn kill(&self, name: &str) -> Result<()> {
        self.ok(&["kill", "--signal", "KILL", name]).await.map(drop)
    }

    pub async fn start(&self, name: &str) -> Result<()> {
        self.ok(&["start", name]).await.map(drop)
    }

    /// `docker inspect --format <format> <name>`.
    pub async fn inspect(&self, name: &str, format: &str) -> Result<String> {
        self.ok(&["inspect", "--format", format, name]).await
    }

    /// Combined stdout and stderr of a container (routerd logs to stdout).
    pub async fn logs(&self, name: &str) -> Result<String> {
        let out = self.call(&["logs", "--timestamps", name], CALL_TIMEOUT).await?;
        Ok(format!("{}{}", out.stdout, out.stderr))
    }

    /// Removes everything this run created: the ledger first, then a sweep by label.
    /// Safe to call more than once; later calls do nothing.
    pub fn cleanup(&self) -> Vec<String> {
        let mut ledger = self.ledger.lock().unwrap();
        if ledger.cleaned {
            return Vec::new();
        }
        ledger.cleaned = true;
        let mut problems = Vec::new();
        let filter = format!("label={}", self.label());
        // Pass 1: what the ledger lists, by name. Pass 2: whatever still carries the
        // label (listed after pass 1 finished, so nothing is removed twice at once).
        let ledger_lists = [ledger.containers.clone(), ledger.networks.clone(), ledger.volumes.clone()];
        for pass in 0..2 {
            for (kind, ledger_names) in Kind::ALL.iter().zip(&ledger_lists) {
                let mut names = if pass == 0 { ledger_names.clone() } else { kind.labelled(&filter, &mut problems) };
                names.sort();
                names.dedup();
                if names.is_empty() {
                    continue;
                }
                let mut args: Vec<&str> = kind.remove_args().to_vec();
                args.extend(names.iter().map(String::as_str));
                match call_blocking(&args, CALL_TIMEOUT) {
                    // Never created (a failed create) or already gone: nothing to do.
                    Ok(o) if o.ok || o.stderr.lines().all(|l| l.contains("No such") || l.contains("not found")) => {}
                    Ok(o) => problems.push(format!("docker {}: {}", args.join(" "), o.stderr.trim())),
                    Err(e) => problems.push(format!("{e:#}")),
                }
            }
        }
        problems
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Container,
    Network,
    Volume,
}

impl Kind {
    /// In removal order: containers before the network and volumes they use.
    const ALL: [Kind; 3] = [Kind::Container, Kind::Network, Kind::Volume];

    fn remove_args(self) -> &'static [&'static str] {
        match self {
            Kind::Container => &["rm", "--force", "--volumes"],
            Kind::Network => &["network", "rm"],
            Kind::Volume => &["volume", "rm", "--force"],
        }
    }

    /// Ids of the objects of this kind that match `filter` (`label=...`).
    fn labelled(self, filter: &str, problems: &mut Vec<String>) -> Vec<String> {
        let mut args: Vec<&str> = match self {
            Kind::Container => vec!["ps", "--all"],
            Kind::Network => vec!["network", "ls"],
            Kind::Volume => vec!["volume", "ls"],
        };
        args.extend(["--quiet", "--filter", filter]);
        match call_blocking(&args, CALL_TIMEOUT) {
            Ok(o) if o.ok => o.stdout.split_whitespace().map(str::to_string).collect(),
            Ok(o) => {
                problems.push(format!("docker {}: {}", args.join(" "), o.stderr.trim()));
                Vec::new()
            }
            Err(e) => {
                problems.push(format!("{e:#}"));
                Vec::new()
            }
        }
    }
}

impl Drop for Docker {
    /// Last resort (an early return or a panic unwinding past the explicit cleanup).
    fn drop(&mut self) {
        for p in self.cleanup() {
            eprintln!("docker-cluster-test: cleanup: {p}");
        }
    }
}

/// Runs `docker args...` with a deadline (async).
pub async fn call(args: &[&str], timeout: Duration) -> Result<Output> {
    let child = tokio::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawn docker (is the Docker CLI installed?)")?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("docker {} did not finish within {timeout:?}", args.join(" ")))?
        .context("wait for docker")?;
    Ok(Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs `docker args...` with a deadline, without an async runtime (cleanup in `Drop`).
pub fn call_blocking(args: &[&str], timeout: Duration) -> Result<Output> {
    let dir = std::env::temp_dir();
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tag = format!("router-chaos-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
    // Files instead of pipes: a full pipe would block docker while we only poll its exit.
    let out_path = dir.join(format!("{tag}.out"));
    let err_path = dir.join(format!("{tag}.err"));
    let result = (|| {
        let mut child = std::process::Command::new("docker")
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path)?)
            .stderr(std::fs::File::create(&err_path)?)
            .spawn()?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::io::Error::other(format!("did not finish within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(Output {
            ok: status.success(),
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        })
    })();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    result.with_context(|| format!("docker {}", args.join(" ")))
}

/// `Ok(server version)` when a Docker Engine answers `docker version`, else why not.
pub async fn engine_version() -> std::result::Result<String, String> {
    match call(&["version", "--format", "{{.Server.Version}}"], Duration::from_secs(20)).await {
        Ok(o) if o.ok && !o.stdout.trim().is_empty() => Ok(o.stdout.trim().to_string()),
        Ok(o) => Err(format!("`docker version` failed: {}", o.stderr.trim())),
        Err(e) => Err(format!("{e:#}")),
    }
}
