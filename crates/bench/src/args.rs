//! The command line of `router-bench`.

use crate::stats::Plan;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug, Clone)]
#[command(about = "Benchmark routerd against NATS JetStream and etcd on loopback")]
pub struct Args {
    /// Results directory (results.json, results.md, plot.svg).
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// routerd binary (release build).
    #[arg(long, default_value = "target/release/routerd")]
    pub routerd: PathBuf,
    /// nats-server binary (>= 2.10); default: first on PATH.
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// etcd binary; default: first on PATH.
    #[arg(long)]
    pub etcd: Option<PathBuf>,
    /// Workloads to run (comma-separated): delivery, claims, groups, failover;
    /// or one of `backlog`, `soak`, `growth` alone (routerd only; with
    /// `--baseline-routerd`, on both builds).
    #[arg(long, value_delimiter = ',', default_value = "delivery,claims,groups,failover")]
    pub only: Vec<String>,
    /// Skip NATS and etcd (router figures only).
    #[arg(long)]
    pub skip_peers: bool,
    /// Skip routerd (peer figures only).
    #[arg(long)]
    pub skip_router: bool,
    /// Warm-up seconds before the measurement windows.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds per measurement window.
    #[arg(long, default_value_t = 5.0)]
    pub window: f64,
    /// Measurement windows (repetitions) per point.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Sends in flight in the delivery workload.
    #[arg(long, default_value_t = 256)]
    pub inflight: usize,
    /// Client connections the in-flight sends are spread over.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Envelope / value size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub payload: usize,
    /// Receive window (router) and outstanding pulled messages (NATS).
    #[arg(long, default_value_t = 4096)]
    pub receive_window: u32,
    /// Concurrent clients for the directory-write points.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub claim_concurrency: Vec<usize>,
    /// Users stocked with one-time prekeys (1,000 each) for the claims.
    #[arg(long, default_value_t = 150)]
    pub claim_users: usize,
    /// Group size (members spread evenly over providers a..e).
    #[arg(long, default_value_t = 200)]
    pub group_members: usize,
    /// Group sends in flight.
    #[arg(long, default_value_t = 64)]
    pub group_inflight: usize,
    /// Leader kills per system.
    #[arg(long, default_value_t = 3)]
    pub failover_trials: usize,
    /// Concurrent writers in the failover probe.
    #[arg(long, default_value_t = 8)]
    pub failover_writers: usize,
    /// First loopback port of routerd (node i uses base + 10 i + 1..3).
    #[arg(long, default_value_t = 17400)]
    pub router_port: u16,
    /// NATS client ports base..base+2 (routes at +100).
    #[arg(long, default_value_t = 14222)]
    pub nats_port: u16,
    /// etcd client ports base..base+2 (peers at +100).
    #[arg(long, default_value_t = 23790)]
    pub etcd_port: u16,
    /// TOML appended to every routerd's config (e.g. "[raft]\nheartbeat_ms = 30"),
    /// to measure a tuning without rebuilding.
    #[arg(long, default_value = "")]
    pub router_config: String,
    /// Sends the SDK puts in one SendBatch call at most (its `max_send_batch`;
    /// 1: one Send call per message, as before SendBatch).
    #[arg(long, default_value_t = router_sdk::client::DEFAULT_MAX_SEND_BATCH)]
    pub send_batch: usize,
    /// SendBatch calls in flight per client connection (the SDK's `max_send_batch_calls`).
    #[arg(long, default_value_t = router_sdk::client::DEFAULT_MAX_SEND_BATCH_CALLS)]
    pub send_batch_calls: usize,
    /// An earlier build's routerd: every router workload (and `backlog`) runs
    /// on it too, in the same run, and the tables compare this build with it.
    #[arg(long)]
    pub baseline_routerd: Option<PathBuf>,
    /// JetStream configurations for the delivery workload (see `nats::Variant`):
    /// a work-queue + R3 consumer + ack per message; b limits retention + R3
    /// consumer + AckAll; c = b + atomic batch publish; d = b + Nats-Msg-Id;
    /// e = b over 3 streams. All with `sync_interval: always`.
    #[arg(long, value_delimiter = ',', default_value = "a,b,c,d,e")]
    pub nats_variants: Vec<String>,
    /// Also run (b) with JetStream's default sync (no fsync per write), as a reference.
    #[arg(long)]
    pub nats_default_sync: bool,
    /// Backlog workload: envelopes queued for the absent provider.
    #[arg(long, default_value_t = 8192)]
    pub backlog_envelopes: u64,
    /// Backlog workload: bytes per envelope (192 KiB: 1.5 GiB in all by default).
    #[arg(long, default_value_t = 192 * 1024)]
    pub backlog_bytes: usize,
    /// Backlog workload: sends in flight.
    #[arg(long, default_value_t = 16)]
    pub backlog_inflight: usize,
    /// Soak: seconds per phase (saturated, then paced).
    #[arg(long, default_value_t = 600)]
    pub soak_secs: u64,
    /// Soak: offered load of the paced phase in msg/s (default: half of what
    /// the saturated phase accepted).
    #[arg(long)]
    pub soak_rate: Option<f64>,
    /// Growth: connected receive streams per level.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    pub growth_streams: Vec<usize>,
    /// Growth: users in the directory per level.
    #[arg(long, value_delimiter = ',', default_value = "0,10000,100000")]
    pub growth_users: Vec<u64>,
    /// Growth: entries queued for an absent provider per level.
    #[arg(long, value_delimiter = ',', default_value = "0,100000,1000000")]
    pub growth_queued: Vec<u64>,
    /// Keep the working directory (configs, data, logs of every process).
    #[arg(long)]
    pub keep: bool,
}

impl Args {
    pub fn plan(&self) -> Plan {
        Plan {
            warmup: Duration::from_secs_f64(self.warmup),
            window: Duration::from_secs_f64(self.window),
            reps: self.reps.max(1),
        }
    }
    /// The delivery workload as the flags describe it, for `total`, closed
    /// loop (`pace: None`) or offered at `pace` msg/s.
    pub fn delivery_opts(&self, total: Duration, pace: Option<f64>) -> crate::router::DeliveryOpts {
        crate::router::DeliveryOpts {
            pace,
            total,
            window: self.inflight,
            clients: self.clients,
            payload: self.payload,
            receive_window: self.receive_window,
        }
    }

    pub fn wants(&self, w: &str) -> bool {
        self.only.iter().any(|x| x == w)
    }
}
