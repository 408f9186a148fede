//! etcd as three members on loopback, driven through its v3 JSON gateway
//! with a small keep-alive HTTP/1.1 client (one connection per client).

use crate::procs::{self, Group, Spec};
use crate::stats::{Event, MAX_EVENTS, now_us};
use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn b64(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// One keep-alive HTTP/1.1 connection.
pub struct Http {
    stream: BufReader<TcpStream>,
}

impl Http {
    pub async fn connect(port: u16, timeout: Duration) -> anyhow::Result<Http> {
        let s = tokio::time::timeout(timeout, TcpStream::connect(("127.0.0.1", port)))
            .await
            .map_err(|_| anyhow!("connect to :{port} timed out"))??;
        s.set_nodelay(true)?;
        Ok(Http { stream: BufReader::new(s) })
    }

    /// POSTs JSON; returns the status code and the body.
    pub async fn post(&mut self, path: &str, body: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.get_mut().write_all(req.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_ascii_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
        let (mut len, mut chunked) = (None, false);
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("connection closed in headers");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    len = v.parse::<usize>().ok();
                } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.stream.read_line(&mut line).await?;
                let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)?;
                let mut chunk = vec![0u8; n + 2];
                self.stream.read_exact(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = len {
            body.resize(n, 0);
            self.stream.read_exact(&mut body).await?;
        } else {
            bail!("response without length");
        }
        Ok((status, body))
    }

    pub async fn call(&mut self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let (status, b) = self.post(path, &body.to_string()).await?;
        if status != 200 {
            bail!("{path}: HTTP {status}: {}", String::from_utf8_lossy(&b));
        }
        Ok(serde_json::from_slice(&b)?)
    }
}

pub struct EtcdCluster {
    pub procs: Group,
    pub ports: Vec<u16>,
}

impl EtcdCluster {
    pub async fn start(bin: &Path, dir: &Path, base_port: u16) -> anyhow::Result<EtcdCluster> {
        let ports: Vec<u16> = (0..3).map(|i| base_port + i).collect();
        let peers: Vec<u16> = (0..3).map(|i| base_port + 100 + i).collect();
        procs::ensure_free(&ports)?;
        procs::ensure_free(&peers)?;
        let initial: Vec<String> =
            peers.iter().enumerate().map(|(i, p)| format!("e{}=http://127.0.0.1:{p}", i + 1)).collect();
        let specs = (0..3)
            .map(|i| Spec {
                name: format!("etcd e{}", i + 1),
                program: bin.to_path_buf(),
                args: vec![
                    format!("--name=e{}", i + 1),
                    format!("--data-dir={}", dir.join(format!("e{}", i + 1)).display()),
                    format!("--listen-client-urls=http://127.0.0.1:{}", ports[i]),
                    format!("--advertise-client-urls=http://127.0.0.1:{}", ports[i]),
                    format!("--listen-peer-urls=http://127.0.0.1:{}", peers[i]),
                    format!("--initial-advertise-peer-urls=http://127.0.0.1:{}", peers[i]),
                    format!("--initial-cluster={}", initial.join(",")),
                    "--initial-cluster-token=router-bench".into(),
                    "--initial-cluster-state=new".into(),
                    "--logger=zap".into(),
                    "--log-level=warn".into(),
                ],
                envs: vec![],
                log: dir.join(format!("e{}.log", i + 1)),
            })
            .collect();
        let mut procs = Group::start(specs)?;
        procs::wait_ports(&ports, Duration::from_secs(20)).await?;
        procs.check_alive()?;
        let c = EtcdCluster { procs, ports };
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.leader().await.is_err() {
            if Instant::now() > deadline {
                bail!("etcd elected no leader within 30 s (logs in {})", dir.display());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // One write through the log proves the cluster serves writes.
        Http::connect(c.ports[0], Duration::from_secs(1))
            .await?
            .call("/v3/kv/put", &json!({"key": b64(b"/ready"), "value": b64(b"1")}))
            .await?;
        Ok(c)
    }

    /// Index (0-based) of the leader among the running members.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for (i, p) in self.ports.iter().enumerate() {
            if self.procs.running[i].is_none() {
                ids.push(None);
                continue;
            }
            let v = async {
                Http::connect(*p, Duration::from_millis(500)).await?.call("/v3/maintenance/status", &json!({})).await
            };
            match tokio::time::timeout(Duration::from_secs(1), v).await {
                Ok(Ok(v)) => {
                    ids.push(v.pointer("/header/member_id").and_then(Value::as_str).map(str::to_string));
                    if let Some(l) = v.get("leader").and_then(Value::as_str)
                        && l != "0"
                    {
                        leader = Some(l.to_string());
                    }
                }
                _ => ids.push(None),
            }
        }
        let l = leader.context("no etcd leader")?;
        ids.iter().position(|id| id.as_deref() == Some(l.as_str())).context("leader is not a running member")
    }
}

/// `concurrency` clients putting 1 KiB values (distinct keys), each over its own connection.
pub async fn puts(
    c: &EtcdCluster,
    concurrency: usize,
    total: Duration,
    value_len: usize,
) -> anyhow::Result<(u64, Vec<Event>, u64)> {
    let value = b64(&vec![0x5au8; value_len]);
    run_clients(
        c,
        concurrency,
        total,
        move |t, k| json!({"key": b64(format!("/bench/put/{t}/{k}").as_bytes()), "value": value.clone()}),
        "/v3/kv/put",
        |_| true,
    )
    .await
}

/// Key `k` of client `t`'s prefix (the analogue of one stocked one-time prekey).
fn claim_key(t: usize, k: u64) -> String {
    b64(format!("/bench/keys/{t}/{k:09}").as_bytes())
}

/// Stocks `per_client` small keys under each client's prefix (128 puts per txn).
pub async fn stock(c: &EtcdCluster, clients: usize, per_client: u64) -> anyhow::Result<()> {
    let mut handles = Vec::new();
    for t in 0..clients {
        let port = c.ports[t % c.ports.len()];
        handles.push(tokio::spawn(async move {
            let mut h = Http::connect(port, Duration::from_secs(1)).await?;
            let val = b64(&[7u8; 33]);
            let mut k = 0;
            while k < per_client {
                let ops: Vec<Value> = (k..(k + 128).min(per_client))
                    .map(|i| json!({"request_put": {"key": claim_key(t, i), "value": val}}))
                    .collect();
                h.call("/v3/kv/txn", &json!({"success": ops})).await?;
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

/// Compare-and-delete: each txn deletes the client's next key if it still exists.
/// Returns (start, events, errors, misses).
pub async fn txn_deletes(
    c: &EtcdCluster,
    concurrency: usize,
    total: Duration,
) -> anyhow::Result<(u64, Vec<Event>, u64)> {
    run_clients(
        c,
        concurrency,
        total,
        |t, k| {
            let key = claim_key(t, k);
            json!({"compare": [{"key": key, "target": "CREATE", "result": "GREATER", "create_revision": "0"}],
                   "success": [{"request_delete_range": {"key": key}}]})
        },
        "/v3/kv/txn",
        |v| v.get("succeeded").and_then(Value::as_bool).unwrap_or(false),
    )
    .await
}

/// Runs `concurrency` sequential clients for `total`; returns (start, events, misses+errors).
async fn run_clients<B, S>(
    c: &EtcdCluster,
    concurrency: usize,
    total: Duration,
    body: B,
    path: &'static str,
    success: S,
) -> anyhow::Result<(u64, Vec<Event>, u64)>
where
    B: Fn(usize, u64) -> Value + Send + Sync + Clone + 'static,
    S: Fn(&Value) -> bool + Send + Sync + Copy + 'static,
{
    let start_us = now_us();
    let end = Instant::now() + total;
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let port = c.ports[t % c.ports.len()];
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Http::connect(port, Duration::from_secs(1)).await?;
            let (mut ev, mut bad, mut k) = (Vec::new(), 0u64, 0u64);
            while Instant::now() < end {
                let b = body(t, k).to_string();
                k += 1;
                let t0 = now_us();
                let r = h.post(path, &b).await?;
                let at = now_us();
                let ok = r.0 == 200 && serde_json::from_slice::<Value>(&r.1).map(|v| success(&v)).unwrap_or(false);
                if !ok {
                    bad += 1;
                    if bad <= 3 {
                        eprintln!(
                            "  etcd {path}: HTTP {} {}",
                            r.0,
                            String::from_utf8_lossy(&r.1).chars().take(200).collect::<String>()
                        );
                    }
                }
                if ok && ev.len() < MAX_EVENTS {
                    ev.push(Event { at_us: at, lat_us: at - t0 });
                }
            }
            anyhow::Ok((ev, bad))
        }));
    }
    let (mut all, mut bad) = (Vec::new(), 0);
    for t in tasks {
        let (ev, b) = t.await??;
        all.extend(ev);
        bad += b;
    }
    Ok((start_us, all, bad))
}

/// Failover probe writer: 1 KiB puts to the surviving members only.
pub struct Writer {
    pub ports: Vec<u16>,
    pub cur: usize,
    pub conn: Option<Http>,
    pub k: u64,
}

impl Writer {
    pub async fn write(&mut self, task: usize) -> bool {
        if self.conn.is_none() {
            self.cur = (self.cur + 1) % self.ports.len();
            self.conn = Http::connect(self.ports[self.cur], Duration::from_millis(300)).await.ok();
        }
        let Some(h) = self.conn.as_mut() else { return false };
        self.k += 1;
        let body =
            json!({"key": b64(format!("/bench/failover/{task}/{}", self.k).as_bytes()), "value": b64(&[0x5au8; 1024])})
                .to_string();
        match tokio::time::timeout(Duration::from_millis(600), h.post("/v3/kv/put", &body)).await {
            Ok(Ok((200, _))) => true,
            _ => {
                // A timed-out request may still be answered later: start over on a fresh connection.
                self.conn = None;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(super::b64(b""), "");
        assert_eq!(super::b64(b"f"), "Zg==");
        assert_eq!(super::b64(b"fo"), "Zm8=");
        assert_eq!(super::b64(b"foo"), "Zm9v");
        assert_eq!(super::b64(b"foobar"), "Zm9vYmFy");
    }
}
