//! Media proxy: `Media.SetMediaHosts` / `Media.Fetch` against a real HTTPS
//! media host started here (hyper 1 over tokio-rustls on 127.0.0.1:0, with a
//! certificate from the cluster's dev CA, which the nodes trust through
//! `[media] extra_ca_file`). Because that host is on loopback, most tests run
//! with `[media] allow_private_addresses = true`; the test of the address
//! filter leaves it off.

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use router_node::config::RawConfig;
use router_node::devcerts::DevPki;
use router_node::identity::Identity;
use router_proto::v1::admin_client::AdminClient;
use router_proto::v1::media_client::MediaClient;
use router_proto::v1::*;
use router_testkit::TestCluster;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Status};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const CHUNK: usize = 64 * 1024;

// ------------------------------------------------------------------ content

/// A 64 KiB block pattern; block k of a blob is the pattern with k stamped
/// into its first 8 bytes, so any length is generated on the fly by copying.
fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| (0..CHUNK as u64).map(|i| ((i.wrapping_mul(2_654_435_761) >> 11) ^ i) as u8).collect())
}

/// The blob of `len` bytes as blocks of `frame` bytes (generated lazily).
fn blocks(len: u64, frame: usize) -> impl Iterator<Item = Bytes> + Send + 'static {
    let count = len.div_ceil(CHUNK as u64);
    (0..count).flat_map(move |k| {
        let mut b = pattern().to_vec();
        b[..8].copy_from_slice(&k.to_be_bytes());
        let start = k * CHUNK as u64;
        b.truncate((len - start).min(CHUNK as u64) as usize);
        let b = Bytes::from(b);
        (0..b.len().div_ceil(frame)).map(move |i| b.slice(i * frame..((i + 1) * frame).min(b.len())))
    })
}

fn blob(len: u64) -> Vec<u8> {
    blocks(len, CHUNK).flat_map(|b| b.to_vec()).collect()
}

fn sha256_of(len: u64) -> Vec<u8> {
    let mut h = Sha256::new();
    for b in blocks(len, CHUNK) {
        h.update(&b);
    }
    h.finalize().to_vec()
}

// ------------------------------------------------------------------ media host

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Routes of the test media host (N = byte count):
/// `/blob/N` body with Content-Length; `/chunked/N` chunked (no length), 16
/// KiB frames; `/big/N` with Content-Length, generated in 64 KiB frames;
/// `/stall-body` 10 bytes then silence; `/stall-head` no answer for a minute;
/// anything else 404.
async fn serve(req: hyper::Request<hyper::body::Incoming>) -> Result<hyper::Response<Body>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (route, n) = (parts.next().unwrap_or(""), parts.next().and_then(|n| n.parse::<u64>().ok()));
    let stream_of = |it: Box<dyn Iterator<Item = Bytes> + Send>| {
        BodyExt::boxed_unsync(StreamBody::new(
            futures::stream::iter(it).map(|b| Ok::<_, std::io::Error>(Frame::data(b))),
        ))
    };
    let response = match (route, n) {
        ("blob", Some(n)) => {
            hyper::Response::new(Full::new(Bytes::from(blob(n))).map_err(|e| match e {}).boxed_unsync())
        }
        ("chunked", Some(n)) => hyper::Response::new(stream_of(Box::new(blocks(n, 16 * 1024)))),
        ("big", Some(n)) => hyper::Response::builder()
            .header(http::header::CONTENT_LENGTH, n)
            .body(stream_of(Box::new(blocks(n, CHUNK))))
            .expect("response"),
        ("stall-body", _) => {
            let first =
                futures::stream::iter([Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"0123456789")))]);
            hyper::Response::new(BodyExt::boxed_unsync(StreamBody::new(first.chain(futures::stream::pending()))))
        }
        ("stall-head", _) => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            hyper::Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed_unsync())
        }
        _ => hyper::Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"no such blob")).map_err(|e| match e {}).boxed_unsync())
            .expect("response"),
    };
    Ok(response)
}

struct MediaHost {
    addr: SocketAddr,
    /// TCP connections accepted so far.
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MediaHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MediaHost {
    /// An HTTPS server on 127.0.0.1:0 with a certificate for localhost and
    /// 127.0.0.1 issued by the cluster's dev CA.
    async fn start(pki: &DevPki) -> MediaHost {
        let paths = pki.issue(&Identity::Operator("media-host".into()), "media-host").expect("issue certificate");
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&paths.cert).expect("read cert").collect::<Result<_, _>>().expect("cert");
        let key = PrivateKeyDer::from_pem_file(&paths.key).expect("read key");
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server certificate");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind media host");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        // Runs until the MediaHost is dropped; the JoinSet (and so every
        // connection) goes with it.
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), hyper::service::service_fn(serve))
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        MediaHost { addr, connections, task }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }
}

// ------------------------------------------------------------------ helpers

/// Test setting: the media host is on loopback, trusted through the dev CA.
fn local_media(raw: &mut RawConfig) {
    raw.media.allow_private_addresses = true;
    raw.media.extra_ca_file = Some(raw.tls.ca.clone());
    raw.media.idle_timeout_ms = Some(1_500);
}

/// Production address filter; the dev CA is still trusted.
fn strict_media(raw: &mut RawConfig) {
    raw.media.extra_ca_file = Some(raw.tls.ca.clone());
}

fn media_client(tc: &TestCluster, provider: &str, node: u64) -> MediaClient<Channel> {
    let certs = &tc.cluster.provider_certs[provider];
    MediaClient::new(tc.raw_channel(node, &certs.cert, &certs.key))
}

fn detail(st: &Status) -> ErrorDetail {
    use prost::Message;
    ErrorDetail::decode(st.details()).unwrap_or_default()
}

#[track_caller]
fn assert_status(st: &Status, code: Code, reason: &str) -> ErrorDetail {
    let d = detail(st);
    assert_eq!((st.code(), d.reason.as_str()), (code, reason), "{st:?}");
    d
}

async fn set_hosts(tc: &TestCluster, provider: &str, hosts: &[String]) {
    let resp = media_client(tc, provider, 1)
        .set_media_hosts(SetMediaHostsRequest { media_hosts: hosts.to_vec() })
        .await
        .expect("set media hosts")
        .into_inner();
    let want: Vec<String> = hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    assert_eq!(resp.media_hosts, want);
    let p = router_core::ProviderId::new(provider);
    tc.wait_until(Duration::from_secs(10), |s| s.provider(&p).is_some_and(|r| r.media_hosts == want))
        .await
        .expect("media hosts replicated");
}

fn fetch_req(url: String, sender: &str) -> FetchMediaRequest {
    FetchMediaRequest { url, sender_provider_id: sender.into(), ..Default::default() }
}

/// What a Fetch stream delivered.
#[derive(Debug, Default)]
struct Drained {
    /// The bytes, when kept.
    data: Vec<u8>,
    received: u64,
    hash: Vec<u8>,
    chunks: usize,
    largest_chunk: usize,
    last: Option<MediaChunk>,
    /// How the stream ended: OK or the status it ended with.
    end: Option<Status>,
}

/// Reads a Fetch to its end, checking offsets are contiguous. `on_chunk` runs
/// after every chunk (memory sampling).
async fn drain(
    client: &mut MediaClient<Channel>,
    req: FetchMediaRequest,
    keep: bool,
    mut on_chunk: impl FnMut(),
) -> Result<Drained, Status> {
    let mut stream = client.fetch(req).await?.into_inner();
    let mut out = Drained::default();
    let mut hasher = Sha256::new();
    // Bounded: the router ends every fetch within its total timeout.
    let end = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let item = tokio::time::timeout_at(end, stream.message()).await.expect("stream ends in time");
        match item {
            Ok(Some(chunk)) => {
                assert_eq!(chunk.offset, out.received, "chunks are contiguous");
                assert!(out.last.as_ref().is_none_or(|l| !l.complete), "nothing after the complete chunk");
                out.received += chunk.data.len() as u64;
                out.chunks += 1;
                out.largest_chunk = out.largest_chunk.max(chunk.data.len());
                hasher.update(&chunk.data);
                if keep {
                    out.data.extend_from_slice(&chunk.data);
                }
                out.last = Some(MediaChunk { data: Bytes::new(), ..chunk });
                on_chunk();
            }
            Ok(None) => break,
            Err(st) => {
                out.end = Some(st);
                break;
            }
        }
    }
    out.hash = hasher.finalize().to_vec();
    Ok(out)
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_streams_media_from_the_senders_host_and_verifies_it() {
    let tc = TestCluster::start_with(3, local_media).await.unwrap();
    let host = MediaHost::start(&tc.cluster.pki).await;
    set_hosts(&tc, "alpha", &[format!("LOCALHOST:{}", host.port()), "cdn.alpha.example:8443".into()]).await;
    let base = format!("https://localhost:{}", host.port());

    // 300 KiB + 7 bytes with its hash: content, chunking and the final chunk checked.
    let len = 300 * KIB + 7;
    let expected = sha256_of(len);
    for node in [1, 3] {
        let mut beta = media_client(&tc, "beta", node);
        let mut req = fetch_req(format!("{base}/blob/{len}?v=1"), "alpha");
        req.expected_sha256 = expected.clone().into();
        let got = drain(&mut beta, req, true, || {}).await.expect("fetch");
        assert!(got.end.is_none(), "stream ended OK: {:?}", got.end);
        assert_eq!(got.data, blob(len));
        assert_eq!(got.hash, expected);
        assert!(got.largest_chunk <= CHUNK && got.chunks >= 5, "{} chunks, largest {}", got.chunks, got.largest_chunk);
        let last = got.last.unwrap();
        assert!(last.complete);
        assert_eq!(last.sha256.to_vec(), expected);
    }

    // Without expected_sha256 the last chunk still reports the hash; a
    // chunked (no Content-Length) body streams the same way; an empty body
    // is one empty, complete chunk.
    let mut gamma = media_client(&tc, "gamma", 2);
    let got =
        drain(&mut gamma, fetch_req(format!("{base}/chunked/{}", 100 * KIB), "alpha"), true, || {}).await.unwrap();
    assert!(got.end.is_none(), "{:?}", got.end);
    assert_eq!(got.data, blob(100 * KIB));
    assert_eq!(got.last.unwrap().sha256.to_vec(), sha256_of(100 * KIB));
    let got = drain(&mut gamma, fetch_req(format!("{base}/blob/0"), "alpha"), true, || {}).await.unwrap();
    assert!(got.end.is_none() && got.chunks == 1 && got.received == 0 && got.last.unwrap().complete);

    // A wrong hash: the stream ends with DATA_LOSS and never says complete.
    let mut req = fetch_req(format!("{base}/blob/{len}"), "alpha");
    req.expected_sha256 = vec![7u8; 32].into();
    let got = drain(&mut gamma, req, false, || {}).await.unwrap();
    assert_status(got.end.as_ref().expect("stream error"), Code::DataLoss, "MEDIA_HASH_MISMATCH");
    assert!(got.last.is_none_or(|l| !l.complete));

    // A status other than 200 is reported with the status.
    let st = drain(&mut gamma, fetch_req(format!("{base}/nothing-here"), "alpha"), false, || {}).await.unwrap_err();
    assert_eq!(assert_status(&st, Code::FailedPrecondition, "MEDIA_HTTP_STATUS").actual, 404);

    // Plain http is refused before anything else.
    let st = gamma.fetch(fetch_req(format!("http://localhost:{}/blob/1", host.port()), "alpha")).await.unwrap_err();
    assert_eq!(assert_status(&st, Code::InvalidArgument, "NOT_HTTPS").field, "url");
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_only_from_hosts_the_sender_registered() {
    let tc = TestCluster::start_with(3, local_media).await.unwrap();
    let host = MediaHost::start(&tc.cluster.pki).await;
    let other = MediaHost::start(&tc.cluster.pki).await;
    set_hosts(&tc, "alpha", &[format!("localhost:{}", host.port())]).await;
    let mut beta = media_client(&tc, "beta", 2);
    let url = |h: &MediaHost, name: &str| format!("https://{name}:{}/blob/100", h.port());

    // Registered: works.
    let ok = drain(&mut beta, fetch_req(url(&host, "localhost"), "alpha"), false, || {}).await.unwrap();
    assert!(ok.end.is_none() && ok.received == 100);

    // Another port, another spelling of the same address, the default port:
    // none of them is the registered host[:port].
    for u in [url(&other, "localhost"), url(&host, "127.0.0.1"), "https://localhost/blob/100".to_string()] {
        let st = beta.fetch(fetch_req(u.clone(), "alpha")).await.unwrap_err();
        assert_eq!(assert_status(&st, Code::PermissionDenied, "MEDIA_HOST_NOT_REGISTERED").field, "url", "{u}");
    }
    // The pointer came from beta's envelope, but the host is alpha's: refused.
    let st = beta.fetch(fetch_req(url(&host, "localhost"), "beta")).await.unwrap_err();
    assert_status(&st, Code::PermissionDenied, "MEDIA_HOST_NOT_REGISTERED");
    // An unknown sender.
    let st = beta.fetch(fetch_req(url(&host, "localhost"), "nobody")).await.unwrap_err();
    assert_eq!(assert_status(&st, Code::PermissionDenied, "MEDIA_HOST_NOT_REGISTERED").field, "sender_provider_id");
    assert_eq!(other.connections.load(Ordering::SeqCst), 0, "the unregistered host was never contacted");

    // Malformed requests.
    let bad = |u: &str, sender: &str, hash: Vec<u8>, max: u64| FetchMediaRequest {
        url: u.into(),
        sender_provider_id: sender.into(),
        expected_sha256: hash.into(),
        max_bytes: max,
    };
    let u = url(&host, "localhost");
    for (req, reason, field) in [
        (bad(&u, "Alpha!", vec![], 0), "BAD_PROVIDER_ID", "sender_provider_id"),
        (bad(&u, "alpha", vec![1; 31], 0), "BAD_HASH", "expected_sha256"),
        (bad(&u, "alpha", vec![], 200 * MIB), "TOO_LARGE", "max_bytes"),
        (bad("https://user@localhost/x", "alpha", vec![], 0), "BAD_URL", "url"),
        (bad("localhost/x", "alpha", vec![], 0), "BAD_URL", "url"),
    ] {
        let st = beta.fetch(req).await.unwrap_err();
        assert_eq!(assert_status(&st, Code::InvalidArgument, reason).field, field);
    }

    // SetMediaHosts validates, and replaces the list.
    let st = media_client(&tc, "alpha", 1)
        .set_media_hosts(SetMediaHostsRequest { media_hosts: vec!["https://x".into()] })
        .await
        .unwrap_err();
    assert_status(&st, Code::InvalidArgument, "BAD_HOST");
    set_hosts(&tc, "alpha", &[]).await;
    let st = beta.fetch(fetch_req(u.clone(), "alpha")).await.unwrap_err();
    assert_status(&st, Code::PermissionDenied, "MEDIA_HOST_NOT_REGISTERED");

    // A suspended sender's hosts are not fetched from.
    set_hosts(&tc, "gamma", &[format!("localhost:{}", host.port())]).await;
    let gamma_id = router_core::ProviderId::new("gamma");
    let mut admin: AdminClient<Channel> = tc.admin(1);
    admin
        .set_provider_status(SetProviderStatusRequest {
            provider_id: "gamma".into(),
            action: ProviderAction::Suspend as i32,
        })
        .await
        .unwrap();
    tc.wait_until(Duration::from_secs(10), |s| s.provider_refusal(&gamma_id).is_some()).await.unwrap();
    let st = beta.fetch(fetch_req(u.clone(), "gamma")).await.unwrap_err();
    assert_eq!(assert_status(&st, Code::PermissionDenied, "MEDIA_HOST_NOT_REGISTERED").field, "sender_provider_id");
    // ...and a suspended caller may not fetch at all.
    let st = media_client(&tc, "gamma", 1).fetch(fetch_req(u, "beta")).await.unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_addresses_are_never_fetched() {
    let tc = TestCluster::start_with(3, strict_media).await.unwrap();
    let host = MediaHost::start(&tc.cluster.pki).await;
    let p = host.port();
    set_hosts(
        &tc,
        "alpha",
        &[
            format!("localhost:{p}"),
            format!("127.0.0.1:{p}"),
            "10.20.30.40".into(),
            "192.168.1.10:8443".into(),
            "169.254.169.254".into(),
            "100.64.0.1".into(),
            "0.0.0.0".into(),
        ],
    )
    .await;
    let mut beta = media_client(&tc, "beta", 1);
    for u in [
        format!("https://localhost:{p}/blob/10"),
        format!("https://127.0.0.1:{p}/blob/10"),
        "https://10.20.30.40/blob/10".into(),
        "https://192.168.1.10:8443/blob/10".into(),
        "https://169.254.169.254/latest/meta-data/".into(),
        "https://100.64.0.1/blob/10".into(),
        "https://0.0.0.0/blob/10".into(),
    ] {
        let st = beta.fetch(fetch_req(u.clone(), "alpha")).await.unwrap_err();
        assert_eq!(assert_status(&st, Code::PermissionDenied, "FORBIDDEN_ADDRESS").field, "url", "{u}");
    }
    // Refused before connecting: the (real, reachable) loopback host saw nothing.
    assert_eq!(host.connections.load(Ordering::SeqCst), 0);
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_stalled_bodies_are_cut_off() {
    let tc = TestCluster::start_with(3, local_media).await.unwrap();
    let host = MediaHost::start(&tc.cluster.pki).await;
    set_hosts(&tc, "alpha", &[format!("localhost:{}", host.port())]).await;
    let base = format!("https://localhost:{}", host.port());
    let mut beta = media_client(&tc, "beta", 1);
    let limited =
        |path: &str, max: u64| FetchMediaRequest { max_bytes: max, ..fetch_req(format!("{base}{path}"), "alpha") };

    // Content-Length over the limit: refused before any chunk.
    let st = beta.fetch(limited(&format!("/blob/{}", 5 * KIB), 1000)).await.unwrap_err();
    let d = assert_status(&st, Code::ResourceExhausted, "MEDIA_TOO_LARGE");
    assert_eq!((d.limit, d.actual, d.field.as_str()), (1000, 5 * KIB, "max_bytes"));

    // No Content-Length: the body is counted and cut off mid-stream.
    let limit = 200 * KIB;
    let got = drain(&mut beta, limited(&format!("/chunked/{}", 4 * MIB), limit), false, || {}).await.unwrap();
    let st = got.end.expect("stream ends with an error");
    let d = assert_status(&st, Code::ResourceExhausted, "MEDIA_TOO_LARGE");
    assert_eq!(d.limit, limit);
    assert!(d.actual > limit, "{d:?}");
    assert!(got.received > 0 && got.received <= limit, "some data passed, never more than the limit: {}", got.received);
    assert!(got.last.is_none_or(|l| !l.complete));
    // At the limit exactly is fine.
    let got = drain(&mut beta, limited(&format!("/chunked/{limit}"), limit), false, || {}).await.unwrap();
    assert!(got.end.is_none() && got.received == limit, "{:?}", got.end);

    // A host that stops sending mid-body: idle timeout, mid-stream.
    let started = std::time::Instant::now();
    let got = drain(&mut beta, limited("/stall-body", 0), false, || {}).await.unwrap();
    let d = assert_status(got.end.as_ref().expect("timeout"), Code::DeadlineExceeded, "MEDIA_TIMEOUT");
    assert_eq!((d.field.as_str(), d.limit), ("media.idle_timeout_ms", 1500));
    assert!(got.received <= 10);
    // A host that never answers: idle timeout before the first chunk.
    let st = beta.fetch(limited("/stall-head", 0)).await.unwrap_err();
    assert_status(&st, Code::DeadlineExceeded, "MEDIA_TIMEOUT");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "timeouts took {took:?}");
    tc.shutdown().await;
}

/// Resident set size of this process, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("statm resident");
    pages * 4096
}

const BIG: u64 = 64 * MIB;

/// A 64 MiB blob (generated on the fly by the media host) streams through
/// in bounded memory. Runs in a child process of its own (this test binary,
/// only that test), so that other tests running in parallel do not move the
/// RSS being measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blob_streams_through_in_bounded_memory() {
    let exe = std::env::current_exe().expect("test binary");
    let child = tokio::process::Command::new(exe)
        .args(["media::large_blob_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("ROUTER_MEDIA_RSS_CHILD", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(400), child).await.expect("child finished in time").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "child failed: {stdout}\n{stderr}");
    assert!(stdout.contains("large blob: ok"), "the child ran the test: {stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by large_blob_streams_through_in_bounded_memory in a child process"]
async fn large_blob_child() {
    if std::env::var_os("ROUTER_MEDIA_RSS_CHILD").is_none() {
        return;
    }
    let tc = TestCluster::start_with(3, local_media).await.unwrap();
    let host = MediaHost::start(&tc.cluster.pki).await;
    set_hosts(&tc, "alpha", &[format!("localhost:{}", host.port())]).await;
    let base = format!("https://localhost:{}", host.port());
    let expected = sha256_of(BIG);
    let mut beta = media_client(&tc, "beta", 2);

    // Warm up every path (TLS, hyper, h2 windows, allocator arenas) first.
    let warm = drain(&mut beta, fetch_req(format!("{base}/big/{}", 4 * MIB), "alpha"), false, || {}).await.unwrap();
    assert!(warm.end.is_none(), "{:?}", warm.end);
    let before = rss_bytes();
    let mut peak = before;
    let mut req = fetch_req(format!("{base}/big/{BIG}"), "alpha");
    req.expected_sha256 = expected.clone().into();
    let started = std::time::Instant::now();
    let got = drain(&mut beta, req, false, || peak = peak.max(rss_bytes())).await.unwrap();
    let took = started.elapsed();
    assert!(got.end.is_none(), "stream ended OK: {:?}", got.end);
    assert_eq!(got.received, BIG);
    assert_eq!(got.hash, expected);
    assert!(got.largest_chunk <= CHUNK, "chunk of {} bytes", got.largest_chunk);
    assert!(got.chunks >= (BIG / CHUNK as u64) as usize);
    let last = got.last.unwrap();
    assert!(last.complete && last.sha256.to_vec() == expected);
    let grew = peak.saturating_sub(before);
    println!(
        "large blob: {} MiB in {} chunks, {took:?}; RSS {} MiB -> peak {} MiB (+{} KiB)",
        BIG / MIB,
        got.chunks,
        before / MIB,
        peak / MIB,
        grew / KIB
    );
    assert!(grew < BIG / 4, "RSS grew by {grew} bytes while streaming {BIG}");
    println!("large blob: ok");
    tc.shutdown().await;
}
