//! etcd as three members on loopback with TLS on client and peer URLs
//! (client certificates required on both), driven through its native v3 gRPC
//! API with a client generated from `proto/etcd_kv.proto` by the project's
//! own tonic build: one HTTP/2 connection per benchmark client, as an etcd
//! client library would hold.

use crate::pki::Pki;
use crate::procs::{self, Group, Spec};
use crate::stats::{Event, MAX_EVENTS, now_us};
use anyhow::{Context, bail};
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::kv_client::KvClient;
use pb::maintenance_client::MaintenanceClient;
use pb::request_op::Request;

/// Bytes a prekey claim writes (a key id and the claim's record), so the
/// directory-write points compare like with like.
pub const CLAIM_SIZED_VALUE: usize = 33;

pub struct EtcdCluster {
    pub procs: Group,
    pub ports: Vec<u16>,
    pub connector: Connector,
}

/// Opens TLS connections to the members, presenting the benchmark's client certificate.
#[derive(Clone)]
pub struct Connector {
    ports: Vec<u16>,
    tls: ClientTlsConfig,
}

impl Connector {
    async fn channel(&self, i: usize, timeout: Duration) -> anyhow::Result<Channel> {
        let ep = Endpoint::from_shared(format!("https://127.0.0.1:{}", self.ports[i]))?
            .tls_config(self.tls.clone())?
            .connect_timeout(timeout)
            .timeout(timeout)
            .tcp_nodelay(true);
        Ok(ep.connect().await?)
    }

    /// A KV client on its own connection to member `i`.
    pub async fn kv(&self, i: usize, timeout: Duration) -> anyhow::Result<KvClient<Channel>> {
        Ok(KvClient::new(self.channel(i, timeout).await?))
    }
}

impl EtcdCluster {
    pub async fn start(bin: &Path, dir: &Path, base_port: u16, pki: &Pki) -> anyhow::Result<EtcdCluster> {
        let ports: Vec<u16> = (0..3).map(|i| base_port + i).collect();
        let peers: Vec<u16> = (0..3).map(|i| base_port + 100 + i).collect();
        procs::ensure_free(&ports)?;
        procs::ensure_free(&peers)?;
        let initial: Vec<String> =
            peers.iter().enumerate().map(|(i, p)| format!("e{}=https://127.0.0.1:{p}", i + 1)).collect();
        let specs = (0..3)
            .map(|i| {
                let pair = &pki.members[i];
                Spec {
                    name: format!("etcd e{}", i + 1),
                    program: bin.to_path_buf(),
                    args: vec![
                        format!("--name=e{}", i + 1),
                        format!("--data-dir={}", dir.join(format!("e{}", i + 1)).display()),
                        format!("--listen-client-urls=https://127.0.0.1:{}", ports[i]),
                        format!("--advertise-client-urls=https://127.0.0.1:{}", ports[i]),
                        format!("--listen-peer-urls=https://127.0.0.1:{}", peers[i]),
                        format!("--initial-advertise-peer-urls=https://127.0.0.1:{}", peers[i]),
                        format!("--initial-cluster={}", initial.join(",")),
                        "--initial-cluster-token=router-bench".into(),
                        "--initial-cluster-state=new".into(),
                        format!("--cert-file={}", pair.cert.display()),
                        format!("--key-file={}", pair.key.display()),
                        format!("--trusted-ca-file={}", pki.ca.display()),
                        "--client-cert-auth".into(),
                        format!("--peer-cert-file={}", pair.cert.display()),
                        format!("--peer-key-file={}", pair.key.display()),
                        format!("--peer-trusted-ca-file={}", pki.ca.display()),
                        "--peer-client-cert-auth".into(),
                        "--logger=zap".into(),
                        "--log-level=warn".into(),
                    ],
                    envs: vec![],
                    log: dir.join(format!("e{}.log", i + 1)),
                }
            })
            .collect();
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&pki.ca)?))
            .identity(Identity::from_pem(read(&pki.client.cert)?, read(&pki.client.key)?))
            .domain_name("localhost");
        let mut procs = Group::start(specs)?;
        procs::wait_ports(&ports, Duration::from_secs(20)).await?;
        procs.check_alive()?;
        let c = EtcdCluster { connector: Connector { ports: ports.clone(), tls }, procs, ports };
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.leader().await.is_err() {
            if Instant::now() > deadline {
                bail!("etcd elected no leader within 30 s (logs in {})", dir.display());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // One write through the log proves the cluster serves writes.
        c.kv(0, Duration::from_secs(2))
            .await?
            .put(pb::PutRequest { key: b"/ready".to_vec(), value: b"1".to_vec(), ..Default::default() })
            .await?;
        Ok(c)
    }

    pub async fn kv(&self, i: usize, timeout: Duration) -> anyhow::Result<KvClient<Channel>> {
        self.connector.kv(i, timeout).await
    }

    /// Index (0-based) of the leader among the running members.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for i in 0..self.ports.len() {
            if self.procs.running[i].is_none() {
                ids.push(None);
                continue;
            }
            let status = async {
                let mut m = MaintenanceClient::new(self.connector.channel(i, Duration::from_millis(500)).await?);
                anyhow::Ok(m.status(pb::StatusRequest {}).await?.into_inner())
            };
            match tokio::time::timeout(Duration::from_secs(1), status).await {
                Ok(Ok(s)) => {
                    ids.push(s.header.map(|h| h.member_id));
                    if s.leader != 0 {
                        leader = Some(s.leader);
                    }
                }
                _ => ids.push(None),
            }
        }
        let l = leader.context("no etcd leader")?;
        ids.iter().position(|id| *id == Some(l)).context("leader is not a running member")
    }
}

/// `concurrency` clients putting claim-sized values under distinct keys.
pub async fn puts(c: &EtcdCluster, concurrency: usize, total: Duration) -> anyhow::Result<(u64, Vec<Event>, u64)> {
    let value = vec![0x5au8; CLAIM_SIZED_VALUE];
    run_clients(c, concurrency, total, move |mut kv, t, k| {
        let value = value.clone();
        async move {
            let key = format!("/bench/put/{t}/{k}").into_bytes();
            let ok = kv.put(pb::PutRequest { key, value, ..Default::default() }).await.is_ok();
            (kv, ok)
        }
    })
    .await
}

/// Key `k` of client `t`'s prefix (the analogue of one stocked one-time prekey).
fn claim_key(t: usize, k: u64) -> Vec<u8> {
    format!("/bench/keys/{t}/{k:09}").into_bytes()
}

/// Stocks `per_client` claim-sized keys under each client's prefix (128 puts per txn).
pub async fn stock(c: &EtcdCluster, clients: usize, per_client: u64) -> anyhow::Result<()> {
    let mut handles = Vec::new();
    for t in 0..clients {
        let mut kv = c.kv(t % c.ports.len(), Duration::from_secs(5)).await?;
        handles.push(tokio::spawn(async move {
            let mut k = 0;
            while k < per_client {
                let success = (k..(k + 128).min(per_client))
                    .map(|i| pb::RequestOp {
                        request: Some(Request::RequestPut(pb::PutRequest {
                            key: claim_key(t, i),
                            value: vec![7u8; CLAIM_SIZED_VALUE],
                            ..Default::default()
                        })),
                    })
                    .collect();
                kv.txn(pb::TxnRequest { compare: vec![], success, failure: vec![] }).await?;
                k += 128;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(())
}

/// The claim analogue: one txn that deletes the client's next key of its
/// prefix if that key still exists (compare create_revision > 0).
pub async fn txn_deletes(
    c: &EtcdCluster,
    concurrency: usize,
    total: Duration,
) -> anyhow::Result<(u64, Vec<Event>, u64)> {
    run_clients(c, concurrency, total, |mut kv, t, k| async move {
        let key = claim_key(t, k);
        let txn = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: CompareResult::Greater as i32,
                target: CompareTarget::Create as i32,
                key: key.clone(),
                target_union: Some(TargetUnion::CreateRevision(0)),
                range_end: vec![],
            }],
            success: vec![pb::RequestOp {
                request: Some(Request::RequestDeleteRange(pb::DeleteRangeRequest { key, ..Default::default() })),
            }],
            failure: vec![],
        };
        let ok = matches!(kv.txn(txn).await, Ok(r) if r.get_ref().succeeded);
        (kv, ok)
    })
    .await
}

/// Runs `concurrency` sequential clients for `total`, each on its own
/// connection; returns (start, events, failed calls).
async fn run_clients<F, Fut>(
    c: &EtcdCluster,
    concurrency: usize,
    total: Duration,
    call: F,
) -> anyhow::Result<(u64, Vec<Event>, u64)>
where
    F: Fn(KvClient<Channel>, usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = (KvClient<Channel>, bool)> + Send,
{
    let mut clients = Vec::new();
    for t in 0..concurrency {
        clients.push(c.kv(t % c.ports.len(), Duration::from_secs(5)).await?);
    }
    let start_us = now_us();
    let end = Instant::now() + total;
    let mut tasks = Vec::new();
    for (t, mut kv) in clients.into_iter().enumerate() {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ev, mut bad, mut k) = (Vec::new(), 0u64, 0u64);
            while Instant::now() < end {
                let t0 = now_us();
                let (back, ok) = call(kv, t, k).await;
                kv = back;
                k += 1;
                let at = now_us();
                if !ok {
                    bad += 1;
                } else if ev.len() < MAX_EVENTS {
                    ev.push(Event { at_us: at, lat_us: at - t0 });
                }
            }
            (ev, bad)
        }));
    }
    let (mut all, mut bad) = (Vec::new(), 0);
    for t in tasks {
        let (ev, b) = t.await?;
        all.extend(ev);
        bad += b;
    }
    Ok((start_us, all, bad))
}

/// Failover probe writer: claim-sized puts to the surviving members only.
pub struct Writer {
    pub connector: Connector,
    pub members: Vec<usize>,
    pub cur: usize,
    pub conn: Option<KvClient<Channel>>,
    pub k: u64,
}

impl Writer {
    pub async fn write(&mut self, task: usize) -> bool {
        if self.conn.is_none() {
            self.cur = (self.cur + 1) % self.members.len();
            self.conn = self.connector.kv(self.members[self.cur], Duration::from_millis(600)).await.ok();
        }
        let Some(kv) = self.conn.as_mut() else { return false };
        self.k += 1;
        let put = pb::PutRequest {
            key: format!("/bench/failover/{task}/{}", self.k).into_bytes(),
            value: vec![0x5au8; CLAIM_SIZED_VALUE],
            ..Default::default()
        };
        match kv.put(put).await {
            Ok(_) => true,
            Err(_) => {
                // The connection may point at the dead member: start over on the next one.
                self.conn = None;
                false
            }
        }
    }
}
