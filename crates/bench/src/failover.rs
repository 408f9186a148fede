//! The failover probe: writers in a steady loop against the surviving
//! members; the gap is the time from the leader's SIGKILL to the first
//! success of a write issued after it.

use crate::stats::now_us;
use crate::{etcd, nats};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub enum FWriter {
    Router(router_sdk::RouterClient),
    Nats(nats::Writer),
    Etcd(etcd::Writer),
}

impl FWriter {
    async fn write(&mut self, task: usize, k: u64) -> bool {
        match self {
            FWriter::Router(c) => crate::router::failover_writer(c.clone(), task, k).await,
            FWriter::Nats(w) => w.write().await,
            FWriter::Etcd(w) => w.write(task).await,
        }
    }
}

/// Concurrent writers recording (start, end) of each success, in µs.
struct Probe {
    stop: Arc<AtomicBool>,
    ok: Arc<Mutex<Vec<(u64, u64)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Probe {
    fn start(writers: Vec<FWriter>) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(Mutex::new(Vec::new()));
        let tasks = writers
            .into_iter()
            .enumerate()
            .map(|(t, mut w)| {
                let (stop, ok) = (stop.clone(), ok.clone());
                tokio::spawn(async move {
                    let mut k = 0u64;
                    // Bounded: at most 120 s or until stopped.
                    let end = Instant::now() + Duration::from_secs(120);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                        k += 1;
                        let t0 = now_us();
                        if w.write(t, k).await {
                            ok.lock().expect("probe lock").push((t0, now_us()));
                        } else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                })
            })
            .collect();
        Probe { stop, ok, tasks }
    }

    fn successes(&self) -> usize {
        self.ok.lock().expect("probe lock").len()
    }

    /// Seconds from `kill_us` to the first success of a write issued after it.
    async fn gap(self, kill_us: u64, limit: Duration) -> Option<f64> {
        let deadline = Instant::now() + limit;
        let mut found = None;
        while Instant::now() < deadline {
            found = self.ok.lock().expect("probe lock").iter().filter(|(s, _)| *s >= kill_us).map(|(_, e)| *e).min();
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
        }
        found.map(|e| (e - kill_us) as f64 / 1e6)
    }
}

/// One trial: 2 s of steady writes, `kill`, then the gap (none within 30 s: `None`).
pub async fn trial(writers: Vec<FWriter>, kill: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Option<f64>> {
    let probe = Probe::start(writers);
    tokio::time::sleep(Duration::from_secs(2)).await;
    anyhow::ensure!(probe.successes() > 0, "no successful write before the kill");
    let kill_us = now_us();
    kill()?;
    Ok(probe.gap(kill_us, Duration::from_secs(30)).await)
}

pub fn show(gap: Option<f64>) -> String {
    gap.map(|g| format!("{g:.3} s")).unwrap_or_else(|| "none within 30 s".into())
}

pub async fn wait_nats_leader(nc: &nats::NatsCluster, stream: &str) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match nc.stream_leader(stream).await {
            Ok(l) if nc.procs.running[l].is_some() => return Ok(l),
            _ if Instant::now() > deadline => anyhow::bail!("no NATS stream leader within 30 s"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
