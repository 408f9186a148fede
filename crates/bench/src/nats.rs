//! A minimal NATS client over TLS (text protocol: CONNECT, PUB/HPUB, SUB,
//! MSG/HMSG, PING/PONG, +OK/-ERR) and JetStream through its JSON API on
//! `$JS.API.*`, plus a three-server JetStream cluster on loopback with TLS on
//! client and route connections (client certificates verified on both).

use crate::pki::Pki;
use crate::procs::{self, Group, Spec};
use crate::router::DeliveryRun;
use crate::stats::{Event, MAX_EVENTS, now_us};
use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// One message from the server. `status` is set for JetStream status
/// messages (HMSG whose header line is `NATS/1.0 <code> ...`).
#[derive(Debug)]
pub struct Msg {
    pub subject: String,
    pub reply: Option<String>,
    pub status: Option<u16>,
    pub payload: Vec<u8>,
}

#[derive(Default)]
struct Shared {
    subs: Mutex<HashMap<u64, mpsc::UnboundedSender<Msg>>>,
    pending: Mutex<HashMap<String, oneshot::Sender<Msg>>>,
    closed: AtomicBool,
}

const INBOX_SID: u64 = 1;

/// How the benchmark's connections reach the servers: the server's INFO
/// arrives in plain text, then the connection upgrades to TLS (the NATS
/// protocol's order), presenting the client certificate.
#[derive(Clone)]
pub struct Tls {
    config: Arc<rustls::ClientConfig>,
}

type Halves = (BufReader<Box<dyn AsyncRead + Send + Unpin>>, Box<dyn AsyncWrite + Send + Unpin>);

impl Tls {
    pub fn new(config: Arc<rustls::ClientConfig>) -> Tls {
        Tls { config }
    }

    async fn connect(&self, port: u16) -> anyhow::Result<Halves> {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        // Byte by byte up to the INFO line's end: nothing after it may be
        // swallowed before the TLS handshake starts.
        let mut info = Vec::new();
        let mut byte = [0u8; 1];
        while !info.ends_with(b"\r\n") {
            if tcp.read(&mut byte).await? == 0 || info.len() > 64 * 1024 {
                bail!("NATS :{port} closed before its INFO line");
            }
            info.push(byte[0]);
        }
        if !info.starts_with(b"INFO") {
            bail!("unexpected NATS greeting: {:?}", String::from_utf8_lossy(&info));
        }
        if !contains(&info, b"\"tls_required\":true") {
            bail!("NATS :{port} does not require TLS; the benchmark runs every system with TLS");
        }
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let stream = tokio_rustls::TlsConnector::from(self.config.clone()).connect(name, tcp).await?;
        let (r, w) = tokio::io::split(stream);
        let r: Box<dyn AsyncRead + Send + Unpin> = Box::new(r);
        Ok((BufReader::with_capacity(256 * 1024, r), Box::new(w)))
    }
}

pub struct Nats {
    out: mpsc::UnboundedSender<Vec<u8>>,
    shared: Arc<Shared>,
    inbox: String,
    next: AtomicU64,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Nats {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Nats {
    pub async fn connect(port: u16, tls: &Tls, timeout: Duration) -> anyhow::Result<Nats> {
        let (mut r, mut w) = tokio::time::timeout(timeout, tls.connect(port))
            .await
            .map_err(|_| anyhow!("connect to NATS :{port} timed out"))??;
        let mut line = String::new();
        let handshake = async {
            let connect = json!({"verbose": false, "pedantic": false, "tls_required": true, "headers": true, "no_responders": true,
                                 "protocol": 1, "lang": "router-bench", "version": "0.1"});
            w.write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes()).await?;
            loop {
                line.clear();
                if r.read_line(&mut line).await? == 0 {
                    bail!("NATS closed the connection during the handshake");
                }
                if line.starts_with("PONG") {
                    return Ok(());
                }
                if line.starts_with("-ERR") {
                    bail!("NATS refused CONNECT: {}", line.trim());
                }
            }
        };
        tokio::time::timeout(timeout, handshake).await.map_err(|_| anyhow!("NATS handshake timed out"))??;
        let shared = Arc::new(Shared::default());
        let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(async move {
            let mut buf = Vec::with_capacity(256 * 1024);
            while let Some(first) = out_rx.recv().await {
                buf.clear();
                buf.extend_from_slice(&first);
                while buf.len() < 256 * 1024 {
                    match out_rx.try_recv() {
                        Ok(more) => buf.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                if w.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        let reader = tokio::spawn(read_loop(r, shared.clone(), out.clone()));
        let inbox = format!("_INBOX.{}", token());
        let c = Nats { out, shared, inbox, next: AtomicU64::new(INBOX_SID + 1), tasks: vec![writer, reader] };
        c.send(format!("SUB {}.* {INBOX_SID}\r\n", c.inbox).into_bytes())?;
        Ok(c)
    }

    fn send(&self, bytes: Vec<u8>) -> anyhow::Result<()> {
        if self.shared.closed.load(Ordering::Relaxed) {
            bail!("NATS connection closed");
        }
        self.out.send(bytes).map_err(|_| anyhow!("NATS connection closed"))
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed)
    }

    pub fn publish(&self, subject: &str, reply: Option<&str>, payload: &[u8]) -> anyhow::Result<()> {
        let head = match reply {
            Some(r) => format!("PUB {subject} {r} {}\r\n", payload.len()),
            None => format!("PUB {subject} {}\r\n", payload.len()),
        };
        let mut b = Vec::with_capacity(head.len() + payload.len() + 2);
        b.extend_from_slice(head.as_bytes());
        b.extend_from_slice(payload);
        b.extend_from_slice(b"\r\n");
        self.send(b)
    }

    /// HPUB: a publish with NATS headers (`headers` as `Key: value` pairs).
    pub fn publish_with_headers(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> anyhow::Result<()> {
        let mut h = String::from("NATS/1.0\r\n");
        for (k, v) in headers {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("\r\n");
        let total = h.len() + payload.len();
        let head = match reply {
            Some(r) => format!("HPUB {subject} {r} {} {total}\r\n", h.len()),
            None => format!("HPUB {subject} {} {total}\r\n", h.len()),
        };
        let mut b = Vec::with_capacity(head.len() + total + 2);
        b.extend_from_slice(head.as_bytes());
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(payload);
        b.extend_from_slice(b"\r\n");
        self.send(b)
    }

    pub fn subscribe(&self, subject: &str) -> anyhow::Result<mpsc::UnboundedReceiver<Msg>> {
        let sid = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared.subs.lock().expect("subs lock").insert(sid, tx);
        self.send(format!("SUB {subject} {sid}\r\n").into_bytes())?;
        Ok(rx)
    }

    /// Publishes with a unique reply subject and waits for the single reply.
    pub async fn request(&self, subject: &str, payload: &[u8], timeout: Duration) -> anyhow::Result<Msg> {
        self.request_with_headers(subject, &[], payload, timeout).await
    }

    /// `request` with NATS headers (none: a plain PUB).
    pub async fn request_with_headers(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: &[u8],
        timeout: Duration,
    ) -> anyhow::Result<Msg> {
        let reply = format!("{}.{}", self.inbox, self.next.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        self.shared.pending.lock().expect("pending lock").insert(reply.clone(), tx);
        let res = async {
            if headers.is_empty() {
                self.publish(subject, Some(&reply), payload)?;
            } else {
                self.publish_with_headers(subject, Some(&reply), headers, payload)?;
            }
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(m)) => Ok(m),
                Ok(Err(_)) => Err(anyhow!("NATS connection closed")),
                Err(_) => Err(anyhow!("no reply on {subject} within {timeout:?}")),
            }
        }
        .await;
        self.shared.pending.lock().expect("pending lock").remove(&reply);
        res
    }

    /// A JetStream API call; fails when the answer carries an `error`.
    pub async fn js(&self, api: &str, body: &Value) -> anyhow::Result<Value> {
        let m = self.request(&format!("$JS.API.{api}"), body.to_string().as_bytes(), Duration::from_secs(5)).await?;
        if let Some(code) = m.status {
            bail!("$JS.API.{api}: status {code}");
        }
        let v: Value = serde_json::from_slice(&m.payload).with_context(|| format!("$JS.API.{api} answer"))?;
        if let Some(e) = v.get("error") {
            bail!("$JS.API.{api}: {e}");
        }
        Ok(v)
    }
}

async fn read_loop(
    mut r: BufReader<Box<dyn AsyncRead + Send + Unpin>>,
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Vec<u8>>,
) {
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut parts = line.split_ascii_whitespace();
        let op = parts.next().unwrap_or("");
        let args: Vec<&str> = parts.collect();
        let (subject, sid, reply, hdr, total) = match (op, args.len()) {
            ("MSG", 3) => (args[0], args[1], None, 0, args[2]),
            ("MSG", 4) => (args[0], args[1], Some(args[2]), 0, args[3]),
            ("HMSG", 4) => (args[0], args[1], None, args[2].parse().unwrap_or(0), args[3]),
            ("HMSG", 5) => (args[0], args[1], Some(args[2]), args[3].parse().unwrap_or(0), args[4]),
            ("PING", _) => {
                let _ = out.send(b"PONG\r\n".to_vec());
                continue;
            }
            ("-ERR", _) => {
                eprintln!("  nats: {}", line.trim());
                continue;
            }
            _ => continue, // +OK, PONG, INFO
        };
        let total: usize = total.parse().unwrap_or(0);
        let mut data = vec![0u8; total + 2];
        if r.read_exact(&mut data).await.is_err() {
            break;
        }
        data.truncate(total);
        let status = if hdr > 0 {
            let h = String::from_utf8_lossy(&data[..hdr.min(total)]);
            h.lines().next().and_then(|l| l.split_ascii_whitespace().nth(1)).and_then(|c| c.parse().ok())
        } else {
            None
        };
        let payload = data.split_off(hdr.min(total));
        let sid: u64 = sid.parse().unwrap_or(0);
        let msg = Msg { subject: subject.to_string(), reply: reply.map(str::to_string), status, payload };
        if sid == INBOX_SID {
            if let Some(tx) = shared.pending.lock().expect("pending lock").remove(&msg.subject) {
                let _ = tx.send(msg);
            }
        } else if let Some(tx) = shared.subs.lock().expect("subs lock").get(&sid) {
            let _ = tx.send(msg);
        }
    }
    shared.closed.store(true, Ordering::Relaxed);
    shared.pending.lock().expect("pending lock").clear();
    shared.subs.lock().expect("subs lock").clear();
}

/// One labelled JetStream configuration of the delivery workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// (a) Work-queue retention (a message is removed once acked, the closest
    /// semantics to a mailbox), an R3 consumer, `+ACK` for every message.
    WorkQueue,
    /// (b) Limits retention (messages kept by age and size, the consumer's
    /// position tracked), an R3 consumer with `AckAll`: one ack covers every
    /// message before it.
    LimitsAckAll,
    /// (c) (b) with atomic batch publish: 64 messages per batch, one PubAck
    /// for the batch's commit.
    Batched,
    /// (d) (b) with `Nats-Msg-Id` on every publish (deduplicated within the
    /// stream's window, as the router deduplicates every send).
    Dedup,
    /// (e) (b) over three streams, their leaders spread over the servers
    /// (what a sharded router would be compared with).
    ThreeStreams,
}

/// Messages per atomic batch in [`Variant::Batched`] (the server allows 1,000).
pub const BATCH: usize = 64;

impl Variant {
    pub const ALL: [Variant; 5] =
        [Variant::WorkQueue, Variant::LimitsAckAll, Variant::Batched, Variant::Dedup, Variant::ThreeStreams];

    pub fn key(self) -> &'static str {
        match self {
            Variant::WorkQueue => "a",
            Variant::LimitsAckAll => "b",
            Variant::Batched => "c",
            Variant::Dedup => "d",
            Variant::ThreeStreams => "e",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::WorkQueue => "JetStream (a) work-queue, R3 consumer, +ACK per message",
            Variant::LimitsAckAll => "JetStream (b) limits retention, R3 consumer, AckAll",
            Variant::Batched => "JetStream (c) = (b) + atomic batch publish (64 per batch)",
            Variant::Dedup => "JetStream (d) = (b) + Nats-Msg-Id dedup",
            Variant::ThreeStreams => "JetStream (e) = (b) over 3 streams, leaders spread",
        }
    }

    fn streams(self) -> usize {
        if self == Variant::ThreeStreams { 3 } else { 1 }
    }

    fn ack_all(self) -> bool {
        self != Variant::WorkQueue
    }
}

pub struct NatsCluster {
    pub procs: Group,
    pub ports: Vec<u16>,
    pub tls: Tls,
}

impl NatsCluster {
    /// Three JetStream servers clustered over loopback routes, TLS with
    /// verified client certificates on client and route ports.
    /// `sync_always` sets `sync_interval: always` (fsync before every ack).
    pub async fn start(
        bin: &Path,
        dir: &Path,
        base_port: u16,
        sync_always: bool,
        pki: &Pki,
    ) -> anyhow::Result<NatsCluster> {
        let n = 3u16;
        let ports: Vec<u16> = (0..n).map(|i| base_port + i).collect();
        let routes: Vec<u16> = (0..n).map(|i| base_port + 100 + i).collect();
        procs::ensure_free(&ports)?;
        procs::ensure_free(&routes)?;
        let mut specs = Vec::new();
        for i in 0..n as usize {
            let store = dir.join(format!("n{}", i + 1));
            std::fs::create_dir_all(&store)?;
            let route_list: Vec<String> = routes.iter().map(|p| format!("\"nats-route://127.0.0.1:{p}\"")).collect();
            let tls = format!(
                "tls {{\n    cert_file: \"{}\"\n    key_file: \"{}\"\n    ca_file: \"{}\"\n    verify: true\n  }}",
                pki.members[i].cert.display(),
                pki.members[i].key.display(),
                pki.ca.display()
            );
            let conf = format!(
                "server_name: n{id}\nlisten: \"127.0.0.1:{port}\"\nmax_payload: 1048576\n\
                 {tls}\n\
                 jetstream {{\n  store_dir: \"{store}\"\n{sync}}}\n\
                 cluster {{\n  name: bench\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n  {tls}\n}}\n",
                id = i + 1,
                port = ports[i],
                store = store.display(),
                sync = if sync_always { "  sync_interval: always\n" } else { "" },
                route = routes[i],
                routes = route_list.join(", "),
            );
            let path = dir.join(format!("n{}.conf", i + 1));
            std::fs::write(&path, conf)?;
            specs.push(Spec {
                name: format!("nats-server n{}", i + 1),
                program: bin.to_path_buf(),
                args: vec!["-c".into(), path.display().to_string()],
                envs: vec![],
                log: dir.join(format!("n{}.log", i + 1)),
            });
        }
        let mut procs = Group::start(specs)?;
        procs::wait_ports(&ports, Duration::from_secs(20)).await?;
        procs.check_alive()?;
        Ok(NatsCluster { procs, ports, tls: Tls::new(pki.rustls_client()?) })
    }

    pub async fn connect(&self, i: usize, timeout: Duration) -> anyhow::Result<Nats> {
        Nats::connect(self.ports[i % self.ports.len()], &self.tls, timeout).await
    }

    /// Creates the R3 file streams of `variant` and a durable pull consumer
    /// on each, retrying until the JetStream meta leader is elected
    /// (bounded); with several streams, moves their leaders onto different
    /// servers. Returns the stream names.
    pub async fn create_streams(&self, variant: Variant, max_ack_pending: u32) -> anyhow::Result<Vec<String>> {
        let c = self.connect(0, Duration::from_secs(2)).await?;
        let deadline = Instant::now() + Duration::from_secs(40);
        let names: Vec<String> = (0..variant.streams()).map(|k| format!("BENCH{k}")).collect();
        for name in &names {
            let mut cfg = json!({"name": name, "subjects": [format!("{}.>", name.to_lowercase())],
                                 "storage": "file", "num_replicas": 3, "discard": "old", "max_msgs": -1});
            if variant == Variant::WorkQueue {
                cfg["retention"] = json!("workqueue");
                cfg["max_bytes"] = json!(-1);
            } else {
                // Kept by age and size: an hour, 8 GiB, far beyond one run.
                cfg["retention"] = json!("limits");
                cfg["max_age"] = json!(3_600_000_000_000u64);
                cfg["max_bytes"] = json!(8u64 << 30);
            }
            if variant == Variant::Batched {
                cfg["allow_atomic"] = json!(true);
            }
            let api = format!("STREAM.CREATE.{name}");
            retry(deadline, "create JetStream stream", || c.js(&api, &cfg)).await?;
            let ack_policy = if variant.ack_all() { "all" } else { "explicit" };
            let ccfg = json!({"stream_name": name, "config": {"name": "C", "durable_name": "C",
                              "ack_policy": ack_policy, "max_ack_pending": max_ack_pending,
                              "ack_wait": 30_000_000_000u64, "num_replicas": 0}});
            let api = format!("CONSUMER.CREATE.{name}.C");
            retry(deadline, "create JetStream consumer", || c.js(&api, &ccfg)).await?;
        }
        if names.len() > 1 {
            self.spread_leaders(&c, &names).await;
        }
        Ok(names)
    }

    /// Asks stream `k`'s leader to step down in favour of server `k` (a
    /// preferred placement, nats-server >= 2.11). Best effort: the placement
    /// reached is printed either way.
    async fn spread_leaders(&self, c: &Nats, names: &[String]) {
        for (k, name) in names.iter().enumerate() {
            let want = format!("n{}", k % self.ports.len() + 1);
            for _ in 0..5 {
                if self.stream_leader(name).await.ok() == Some(k % self.ports.len()) {
                    break;
                }
                let body = json!({"placement": {"preferred": want}});
                if let Err(e) = c.js(&format!("STREAM.LEADER.STEPDOWN.{name}"), &body).await {
                    tracing_like(&format!("  stepdown {name}: {e}"));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        let mut placed = Vec::new();
        for name in names {
            placed.push(format!(
                "{name} on {}",
                self.stream_leader(name).await.map_or("?".into(), |l| format!("n{}", l + 1))
            ));
        }
        println!("   stream leaders: {}", placed.join(", "));
    }

    /// Index (0-based) of the server leading `stream`'s Raft group.
    pub async fn stream_leader(&self, stream: &str) -> anyhow::Result<usize> {
        for i in 0..self.ports.len() {
            let Ok(c) = self.connect(i, Duration::from_secs(1)).await else { continue };
            if let Ok(v) = c.js(&format!("STREAM.INFO.{stream}"), &json!({})).await
                && let Some(l) = v.pointer("/cluster/leader").and_then(Value::as_str)
                && let Some(i) = l.strip_prefix('n').and_then(|x| x.parse::<usize>().ok())
            {
                return Ok(i - 1);
            }
        }
        bail!("no stream leader reported for {stream}")
    }
}

async fn retry<F, Fut>(deadline: Instant, what: &str, mut call: F) -> anyhow::Result<Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Value>>,
{
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline => {
                tracing_like(&format!("  {what}: {e}"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.context(what.to_string())),
        }
    }
}

fn tracing_like(s: &str) {
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!("{s}");
    }
}

fn stamped(len: usize) -> Vec<u8> {
    let mut v = vec![0x5au8; len.max(8)];
    v[..8].copy_from_slice(&now_us().to_le_bytes());
    v
}

fn pub_ack_ok(m: &anyhow::Result<Msg>) -> bool {
    matches!(m, Ok(m) if m.status.is_none() && !contains(&m.payload, b"\"error\""))
}

/// The delivery workload on JetStream: `window` messages in flight over
/// `clients` connections (each publish waits for its PubAck; with
/// [`Variant::Batched`], each batch waits for its commit's), one pull
/// consumer per stream, with up to `pull_outstanding` messages requested.
pub async fn delivery(
    cluster: &NatsCluster,
    variant: Variant,
    streams: &[String],
    total: Duration,
    window: usize,
    clients: usize,
    payload: usize,
    pull_outstanding: u32,
) -> anyhow::Result<DeliveryRun> {
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for (k, stream) in streams.iter().enumerate() {
        let c = cluster.connect(1 + k, Duration::from_secs(2)).await?;
        consumers.push(tokio::spawn(consume(
            c,
            stream.clone(),
            variant.ack_all(),
            pull_outstanding,
            stop.clone(),
            delivered.clone(),
        )));
    }
    let mut conns = Vec::new();
    for i in 0..clients.max(1) {
        conns.push(Arc::new(cluster.connect(i, Duration::from_secs(2)).await?));
    }
    let subjects: Arc<Vec<String>> = Arc::new(streams.iter().map(|s| format!("{}.m", s.to_lowercase())).collect());
    let start_us = now_us();
    let end = Instant::now() + total;
    let mut tasks = Vec::new();
    let publishers = if variant == Variant::Batched { window.div_ceil(BATCH) } else { window };
    for t in 0..publishers {
        let c = conns[t % conns.len()].clone();
        let subjects = subjects.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ev, mut errors, mut n) = (Vec::new(), 0u64, 0u64);
            while Instant::now() < end {
                n += 1;
                let subject = &subjects[(t + n as usize) % subjects.len()];
                let t0 = now_us();
                let (answer, messages) = match variant {
                    Variant::Batched => (publish_batch(&c, subject, payload).await, BATCH),
                    Variant::Dedup => {
                        let id = format!("{t}-{n}-{}", token());
                        let h = [("Nats-Msg-Id", id.as_str())];
                        (c.request_with_headers(subject, &h, &stamped(payload), Duration::from_secs(5)).await, 1)
                    }
                    _ => (c.request(subject, &stamped(payload), Duration::from_secs(5)).await, 1),
                };
                if pub_ack_ok(&answer) {
                    let at = now_us();
                    for _ in 0..messages {
                        if ev.len() < MAX_EVENTS {
                            ev.push(Event { at_us: at, lat_us: at - t0 });
                        }
                    }
                } else {
                    errors += 1;
                    if errors <= 3 {
                        eprintln!(
                            "  publish failed: {:?}",
                            answer.map(|m| String::from_utf8_lossy(&m.payload).into_owned())
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            (ev, errors)
        }));
    }
    let mut run = DeliveryRun { start_us, ..Default::default() };
    for t in tasks {
        let (ev, e) = t.await?;
        run.acks.extend(ev);
        run.errors += e;
    }
    let accepted = run.acks.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered.load(Ordering::Relaxed) < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    run.undelivered = accepted.saturating_sub(delivered.load(Ordering::Relaxed));
    for c in consumers {
        run.deliveries.extend(c.await??);
    }
    Ok(run)
}

/// One atomic batch of [`BATCH`] messages: all but the last published without
/// a reply, the last carrying the commit marker and awaiting the PubAck.
async fn publish_batch(c: &Nats, subject: &str, payload: usize) -> anyhow::Result<Msg> {
    let id = token();
    for seq in 1..BATCH {
        let seq = seq.to_string();
        c.publish_with_headers(
            subject,
            None,
            &[("Nats-Batch-Id", &id), ("Nats-Batch-Sequence", &seq)],
            &stamped(payload),
        )?;
    }
    let seq = BATCH.to_string();
    let h = [("Nats-Batch-Id", id.as_str()), ("Nats-Batch-Sequence", seq.as_str()), ("Nats-Batch-Commit", "1")];
    c.request_with_headers(subject, &h, &stamped(payload), Duration::from_secs(5)).await
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Messages between two acks of an `AckAll` consumer (each acks all before it).
const ACK_ALL_EVERY: u64 = 128;

/// Pull consumer: keeps `outstanding` messages requested in pulls of up to
/// 1,024 (1 s expiry); acks every message with `+ACK`, or with `ack_all`
/// every [`ACK_ALL_EVERY`]th message and the last one before going idle.
async fn consume(
    c: Nats,
    stream: String,
    ack_all: bool,
    outstanding: u32,
    stop: Arc<AtomicBool>,
    delivered: Arc<AtomicU64>,
) -> anyhow::Result<Vec<Event>> {
    let prefix = format!("_PULL.{}", token());
    let mut rx = c.subscribe(&format!("{prefix}.*"))?;
    let batch = outstanding.clamp(1, 1024);
    let pulls = outstanding.div_ceil(batch).max(1);
    let next_subject = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.C");
    let body = json!({"batch": batch, "expires": 1_000_000_000u64}).to_string();
    // Pulls in the order they were issued: JetStream fills them in that order,
    // and a pulled message carries the stream subject, not the pull's inbox.
    let mut remaining: std::collections::VecDeque<(String, u32)> = std::collections::VecDeque::new();
    let mut req_no = 0u64;
    let mut ev = Vec::new();
    let (mut unacked, mut last_reply): (u64, Option<String>) = (0, None);
    while !stop.load(Ordering::Relaxed) {
        while (remaining.len() as u32) < pulls {
            req_no += 1;
            let reply = format!("{prefix}.{req_no}");
            c.publish(&next_subject, Some(&reply), body.as_bytes())?;
            remaining.push_back((reply, batch));
        }
        let m = match tokio::time::timeout(Duration::from_millis(20), rx.recv()).await {
            Err(_) => {
                if let Some(r) = last_reply.take() {
                    c.publish(&r, None, b"+ACK")?;
                    unacked = 0;
                }
                continue;
            }
            Ok(None) => bail!("consumer connection closed"),
            Ok(Some(m)) => m,
        };
        if let Some(code) = m.status {
            tracing_like(&format!("  pull {} ended: status {code}", m.subject));
            // 408 request expired, 409 limits, 404 no messages: that pull is over.
            remaining.retain(|(r, _)| *r != m.subject);
            continue;
        }
        if let Some(front) = remaining.front_mut() {
            front.1 -= 1;
            if front.1 == 0 {
                remaining.pop_front();
            }
        }
        if let Some(reply) = m.reply {
            if ack_all {
                unacked += 1;
                if unacked >= ACK_ALL_EVERY {
                    c.publish(&reply, None, b"+ACK")?;
                    (unacked, last_reply) = (0, None);
                } else {
                    last_reply = Some(reply);
                }
            } else {
                c.publish(&reply, None, b"+ACK")?;
            }
        }
        if m.payload.len() >= 8 {
            let t = u64::from_le_bytes(m.payload[..8].try_into().expect("8 bytes"));
            let at = now_us();
            delivered.fetch_add(1, Ordering::Relaxed);
            if ev.len() < MAX_EVENTS {
                ev.push(Event { at_us: at, lat_us: at.saturating_sub(t) });
            }
        }
    }
    Ok(ev)
}

/// Failover probe writer: publishes with ack to the surviving servers only.
pub struct Writer {
    pub ports: Vec<u16>,
    pub tls: Tls,
    pub cur: usize,
    pub conn: Option<Nats>,
}

impl Writer {
    pub async fn write(&mut self) -> bool {
        if self.conn.as_ref().is_none_or(Nats::is_closed) {
            self.cur = (self.cur + 1) % self.ports.len();
            self.conn = Nats::connect(self.ports[self.cur], &self.tls, Duration::from_millis(300)).await.ok();
        }
        let Some(c) = &self.conn else { return false };
        pub_ack_ok(&c.request("bench0.f", &stamped(1024), Duration::from_millis(600)).await)
    }
}

pub fn dir_for(base: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let d = base.join(name);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
