//! Media proxy: `Media.SetMediaHosts` and `Media.Fetch`.
//!
//! A provider's envelope may carry a pointer to an encrypted blob that the
//! sending provider hosts. The recipient's provider asks the router to fetch
//! it. The router is then an HTTP client reaching out on behalf of a
//! provider, so every step is guarded against server-side request forgery:
//!
//! 1. the URL must be `https://host[:port]/…` and `host[:port]` (443 when
//!    absent) must be one of the media hosts the *sending* provider
//!    registered (replicated state), and the sender must be active;
//! 2. the host is resolved once; if any address is loopback, private,
//!    link-local (cloud metadata), CGNAT, multicast, unspecified, broadcast
//!    or reserved the fetch is refused (`[media] allow_private_addresses`
//!    turns this off for tests only);
//! 3. the connection goes to an address from that same answer (no second
//!    lookup, so DNS rebinding cannot swap in an internal address), with TLS
//!    verified against the public web roots (plus `[media] extra_ca_file`);
//! 4. one HTTP/1.1 GET, no redirects followed, with connect, idle-read and
//!    total time limits and a size limit (Content-Length checked up front,
//!    the body counted as it streams);
//! 5. the body is passed on in chunks of at most 64 KiB through a bounded
//!    channel: at most a few chunks are held per fetch, never the blob.

use super::status::{invalid_field, over_limit, with_detail};
use crate::config::MediaConfig;
use crate::ctx::Ctx;
use crate::identity::{check_provider_id, provider_of};
use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use router_core::{Command, ProviderId};
use router_proto::v1::media_server::Media;
use router_proto::v1::{ErrorDetail, FetchMediaRequest, MediaChunk, SetMediaHostsRequest, SetMediaHostsResponse};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

/// Largest `data` of one [`MediaChunk`].
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;
/// Longest accepted URL.
pub const MAX_URL_BYTES: usize = 2048;
/// Chunks buffered between the upstream reader and the gRPC stream.
const CHANNEL_CHUNKS: usize = 4;
/// Addresses tried (and checked) from one DNS answer.
const MAX_ADDRESSES: usize = 16;

pub struct MediaService {
    ctx: Ctx,
    cfg: MediaConfig,
    tls: tokio_rustls::TlsConnector,
}

impl MediaService {
    /// Builds the TLS client (public roots + the optional extra CA file).
    pub fn new(ctx: Ctx, cfg: MediaConfig) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(path) = &cfg.extra_ca_file {
            let mut added = 0;
            for cert in CertificateDer::pem_file_iter(path).with_context(|| format!("read {}", path.display()))? {
                let cert = cert.with_context(|| format!("parse {}", path.display()))?;
                roots.add(cert).with_context(|| format!("add a CA certificate from {}", path.display()))?;
                added += 1;
            }
            anyhow::ensure!(added > 0, "{}: no certificate found", path.display());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("media TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(MediaService { ctx, cfg, tls: tokio_rustls::TlsConnector::from(Arc::new(tls)) })
    }

    fn count(&self, result: &str) {
        self.ctx.metrics.media_fetches.with_label_values(&[result]).inc();
    }
}

// ------------------------------------------------------------------ statuses

fn media_status(code: Code, reason: &str, field: &str, message: impl Into<String>) -> Status {
    with_detail(code, message, ErrorDetail { reason: reason.into(), field: field.into(), ..Default::default() })
}

fn timed_out(field: &str, limit: Duration) -> Status {
    with_detail(
        Code::DeadlineExceeded,
        format!("media fetch: {field} of {} ms ran out", limit.as_millis()),
        ErrorDetail {
            reason: "MEDIA_TIMEOUT".into(),
            field: field.into(),
            limit: limit.as_millis() as u64,
            ..Default::default()
        },
    )
}

fn too_large(field: &str, limit: u64, actual: u64, what: &str) -> Status {
    with_detail(
        Code::ResourceExhausted,
        format!("media body {what} {actual} bytes; the limit is {limit}"),
        ErrorDetail { reason: "MEDIA_TOO_LARGE".into(), field: field.into(), limit, actual, ..Default::default() },
    )
}

fn unreachable(message: impl Into<String>) -> Status {
    media_status(Code::Unavailable, "MEDIA_UNREACHABLE", "url", message)
}

fn not_registered(field: &str, message: impl Into<String>) -> Status {
    media_status(Code::PermissionDenied, "MEDIA_HOST_NOT_REGISTERED", field, message)
}

/// The reason metric label of a status (its ErrorDetail reason).
fn reason_label(st: &Status) -> String {
    use prost::Message;
    ErrorDetail::decode(st.details()).map(|d| d.reason).ok().filter(|r| !r.is_empty()).unwrap_or_else(|| "OTHER".into())
}

// ------------------------------------------------------------------ URL

/// A parsed, checked media URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Lower-cased host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// The `Host` header: host, plus `:port` when the URL named one.
    pub host_header: String,
    /// Origin-form request target, at least "/".
    pub path_and_query: String,
}

pub fn parse_url(url: &str) -> Result<Target, Status> {
    let bad = |why: &str| invalid_field("url", "BAD_URL", format!("url: {why}"));
    if url.is_empty() {
        return Err(bad("required"));
    }
    if url.len() > MAX_URL_BYTES {
        return Err(over_limit("url", MAX_URL_BYTES as u64, url.len() as u64));
    }
    if url.contains('#') {
        return Err(bad("a fragment is not allowed"));
    }
    let uri: http::Uri = url.parse().map_err(|e| bad(&format!("not a valid URL ({e})")))?;
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => {}
        Some(s) => {
            return Err(invalid_field("url", "NOT_HTTPS", format!("url: scheme {s:?} refused; only https is fetched")));
        }
        None => return Err(bad("an absolute https:// URL is required")),
    }
    let authority = uri.authority().ok_or_else(|| bad("a host is required"))?;
    if authority.as_str().contains('@') {
        return Err(bad("user info is not allowed"));
    }
    let raw_host = authority.host();
    let host = raw_host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    if host.is_empty() {
        return Err(bad("a host is required"));
    }
    let port = match authority.port_u16() {
        Some(0) => return Err(bad("port 0")),
        Some(p) => p,
        None if authority.as_str().ends_with(':') => return Err(bad("empty port")),
        // A ':' after the host (outside an IPv6 literal) with no valid u16 after it.
        None if authority.as_str()[raw_host.len()..].starts_with(':') => {
            return Err(bad("the port is not a number from 1 to 65535"));
        }
        None => 443,
    };
    let host_header = match authority.port_u16() {
        Some(p) => format!("{}:{p}", raw_host.to_ascii_lowercase()),
        None => raw_host.to_ascii_lowercase(),
    };
    let path_and_query = match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") => "/".to_string(),
        // "https://host?q" has no path: the request target still needs one.
        Some(p) if p.starts_with('?') => format!("/{p}"),
        Some(p) => p.to_string(),
    };
    Ok(Target { host, port, host_header, path_and_query })
}

/// `name[:port]` of a registered media host as (name, port), port 443 by default.
fn registered_host_port(h: &str) -> (&str, u16) {
    match h.rsplit_once(':') {
        Some((name, port)) => (name, port.parse().unwrap_or(443)),
        None => (h, 443),
    }
}

// ------------------------------------------------------------------ addresses

/// Why the router never connects to `ip`, or `None` for a public address.
pub fn forbidden_address(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match () {
        _ if o == [169, 254, 169, 254] => "the cloud metadata address",
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private (RFC 1918)",
        _ if ip.is_link_local() => "link-local",
        _ if ip.is_unspecified() || o[0] == 0 => "unspecified (0.0.0.0/8)",
        _ if ip.is_broadcast() => "broadcast",
        _ if ip.is_multicast() => "multicast",
        _ if o[0] == 100 && (o[1] & 0xc0) == 64 => "shared address space (CGNAT, 100.64.0.0/10)",
        _ if o[0] >= 240 => "reserved (240.0.0.0/4)",
        _ if o[0] == 192 && o[1] == 0 && o[2] == 0 => "IETF protocol assignments (192.0.0.0/24)",
        _ if o[0] == 198 && (o[1] & 0xfe) == 18 => "benchmarking (198.18.0.0/15)",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(match () {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_multicast() => "multicast",
        _ if (s[0] & 0xfe00) == 0xfc00 => "unique local (fc00::/7)",
        _ if (s[0] & 0xffc0) == 0xfe80 => "link-local (fe80::/10)",
        _ if (s[0] & 0xffc0) == 0xfec0 => "site-local (fec0::/10)",
        // ::a.b.c.d (deprecated IPv4-compatible) and other ::/96 forms.
        _ if s[..6] == [0; 6] => "IPv4-compatible (::/96)",
        // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) embed an IPv4 address.
        _ if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] => {
            let [a, b] = s[6].to_be_bytes();
            let [c, d] = s[7].to_be_bytes();
            return forbidden_v4(Ipv4Addr::new(a, b, c, d));
        }
        _ if s[0] == 0x2002 => {
            let [a, b] = s[1].to_be_bytes();
            let [c, d] = s[2].to_be_bytes();
            return forbidden_v4(Ipv4Addr::new(a, b, c, d));
        }
        _ => return None,
    })
}

// ------------------------------------------------------------------ service

#[tonic::async_trait]
impl Media for MediaService {
    async fn set_media_hosts(
        &self,
        req: Request<SetMediaHostsRequest>,
    ) -> Result<Response<SetMediaHostsResponse>, Status> {
        let provider = provider_of(&req)?;
        let media_hosts = super::admin::validate_media_hosts(req.into_inner().media_hosts)?;
        self.ctx.write(Command::SetMediaHosts { provider, media_hosts: media_hosts.clone() }).await?;
        Ok(Response::new(SetMediaHostsResponse { media_hosts }))
    }

    type FetchStream = ReceiverStream<Result<MediaChunk, Status>>;

    async fn fetch(&self, req: Request<FetchMediaRequest>) -> Result<Response<Self::FetchStream>, Status> {
        match self.open(req).await {
            Ok(stream) => Ok(Response::new(stream)),
            Err(st) => {
                self.count(&reason_label(&st));
                Err(st)
            }
        }
    }
}

/// Checked request parameters.
struct Fetch {
    target: Target,
    expected: Option<[u8; 32]>,
    limit: u64,
    limit_field: &'static str,
}

impl MediaService {
    fn check_request(&self, r: FetchMediaRequest) -> Result<(Fetch, ProviderId), Status> {
        let target = parse_url(&r.url)?;
        check_provider_id(&r.sender_provider_id)
            .map_err(|e| invalid_field("sender_provider_id", "BAD_PROVIDER_ID", format!("sender_provider_id: {e}")))?;
        let expected = match r.expected_sha256.len() {
            0 => None,
            32 => Some(<[u8; 32]>::try_from(&r.expected_sha256[..]).expect("length checked")),
            n => {
                return Err(invalid_field(
                    "expected_sha256",
                    "BAD_HASH",
                    format!("expected_sha256 must be 32 bytes (SHA-256), got {n}"),
                ));
            }
        };
        let (limit, limit_field) = match r.max_bytes {
            0 => (self.cfg.max_bytes, "media.max_bytes"),
            n if n > self.cfg.max_bytes => return Err(over_limit("max_bytes", self.cfg.max_bytes, n)),
            n => (n, "max_bytes"),
        };
        Ok((Fetch { target, expected, limit, limit_field }, ProviderId::new(r.sender_provider_id)))
    }

    /// Everything up to the response head; then hands the body to a pump task.
    async fn open(
        &self,
        req: Request<FetchMediaRequest>,
    ) -> Result<ReceiverStream<Result<MediaChunk, Status>>, Status> {
        let caller = provider_of(&req)?;
        self.ctx.require_onboarded(&caller).await?;
        let (fetch, sender) = self.check_request(req.into_inner())?;
        let target = &fetch.target;

        // 1. Only the sender's registered media hosts, and only while it is active.
        let hosts = self.ctx.read(|s| match s.provider_refusal(&sender) {
            Some(_) => Err(not_registered(
                "sender_provider_id",
                format!("provider {sender} is not an active provider; its media is not fetched"),
            )),
            None => Ok(s.provider(&sender).map(|p| p.media_hosts.clone()).unwrap_or_default()),
        })?;
        let wanted = (target.host.as_str(), target.port);
        if !hosts.iter().any(|h| registered_host_port(h) == wanted) {
            return Err(not_registered(
                "url",
                format!("{}:{} is not a registered media host of provider {sender}", target.host, target.port),
            ));
        }

        let started = Instant::now();
        let deadline = started + self.cfg.total_timeout;
        let total = self.cfg.total_timeout;
        let (body, conn) = match tokio::time::timeout_at(deadline, self.request(&fetch)).await {
            Ok(r) => r?,
            Err(_) => return Err(timed_out("media.total_timeout_ms", total)),
        };

        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let idle = self.cfg.idle_timeout;
        let ctx = self.ctx.clone();
        crate::spawn(async move {
            let _conn = conn;
            let mut shutdown = ctx.shutdown.clone();
            let pumped = tokio::select! {
                r = tokio::time::timeout_at(deadline, pump(body, &tx, &fetch, idle)) => match r {
                    Ok(r) => r,
                    Err(_) => Err(PumpEnd::Failed(timed_out("media.total_timeout_ms", total))),
                },
                _ = shutdown.wait_for(|s| *s) => Err(PumpEnd::Failed(media_status(
                    Code::Unavailable, "SHUTTING_DOWN", "", "node is shutting down; fetch again from another node",
                ))),
            };
            let result = match pumped {
                Ok(bytes) => {
                    ctx.metrics.media_bytes.inc_by(bytes);
                    "ok".to_string()
                }
                Err(PumpEnd::ClientGone) => "CANCELLED".to_string(),
                Err(PumpEnd::Failed(st)) => {
                    let label = reason_label(&st);
                    // Bounded: a client that stopped reading does not hold the task.
                    let _ = tokio::time::timeout(idle, tx.send(Err(st))).await;
                    label
                }
            };
            ctx.metrics.media_fetches.with_label_values(&[result.as_str()]).inc();
        });
        Ok(ReceiverStream::new(rx))
    }

    /// Resolves, checks, connects, sends the GET and checks the response head.
    async fn request(&self, fetch: &Fetch) -> Result<(hyper::body::Incoming, AbortOnDrop), Status> {
        let target = &fetch.target;
        let addrs = self.resolve(target).await?;
        let tls = self.connect(target, &addrs).await?;

        let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(format!("HTTP handshake with {}: {e}", target.host)))?;
        let conn = AbortOnDrop(crate::spawn(async move {
            let _ = conn.await;
        }));
        let request = http::Request::get(target.path_and_query.as_str())
            .header(http::header::HOST, target.host_header.as_str())
            .header(http::header::USER_AGENT, "interop-router-media/1")
            .header(http::header::ACCEPT_ENCODING, "identity")
            .body(Empty::<Bytes>::new())
            .map_err(|e| invalid_field("url", "BAD_URL", format!("url: {e}")))?;
        let response = match tokio::time::timeout(self.cfg.idle_timeout, send.send_request(request)).await {
            Err(_) => return Err(timed_out("media.idle_timeout_ms", self.cfg.idle_timeout)),
            Ok(Err(e)) => return Err(unreachable(format!("no HTTP response from {}: {e}", target.host))),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if status != http::StatusCode::OK {
            return Err(with_detail(
                Code::FailedPrecondition,
                format!("the media host answered HTTP {status}"),
                ErrorDetail {
                    reason: "MEDIA_HTTP_STATUS".into(),
                    field: "url".into(),
                    actual: u64::from(status.as_u16()),
                    ..Default::default()
                },
            ));
        }
        let length =
            response.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(n) = length
            && n > fetch.limit
        {
            return Err(too_large(fetch.limit_field, fetch.limit, n, "announces"));
        }
        Ok((response.into_body(), conn))
    }

    /// One DNS answer, every address checked.
    async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, Status> {
        let addrs: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, target.port)],
            Err(_) => {
                let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
                match tokio::time::timeout(self.cfg.connect_timeout, lookup).await {
                    Err(_) => return Err(timed_out("media.connect_timeout_ms", self.cfg.connect_timeout)),
                    Ok(Err(e)) => return Err(unreachable(format!("cannot resolve {}: {e}", target.host))),
                    Ok(Ok(found)) => {
                        let mut v: Vec<SocketAddr> = Vec::new();
                        for a in found {
                            if !v.contains(&a) {
                                v.push(a);
                            }
                        }
                        v
                    }
                }
            }
        };
        if addrs.is_empty() {
            return Err(unreachable(format!("{} has no address", target.host)));
        }
        if !self.cfg.allow_private_addresses {
            // Any bad address refuses the whole name: a host that answers
            // with a mix is not trusted with the good ones either.
            for a in &addrs {
                if let Some(why) = forbidden_address(a.ip()) {
                    return Err(media_status(
                        Code::PermissionDenied,
                        "FORBIDDEN_ADDRESS",
                        "url",
                        format!(
                            "{} resolves to {} ({why}); the router never fetches from such addresses",
                            target.host,
                            a.ip()
                        ),
                    ));
                }
            }
        }
        Ok(addrs.into_iter().take(MAX_ADDRESSES).collect())
    }

    /// TCP + TLS to the checked addresses in order, each within the connect timeout.
    async fn connect(
        &self,
        target: &Target,
        addrs: &[SocketAddr],
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Status> {
        let name = ServerName::try_from(target.host.clone())
            .map_err(|e| invalid_field("url", "BAD_URL", format!("url: host {:?}: {e}", target.host)))?;
        let mut last = unreachable(format!("{} has no address", target.host));
        for addr in addrs {
            let attempt = async {
                let tcp = TcpStream::connect(addr)
                    .await
                    .map_err(|e| unreachable(format!("connect to {addr} ({}): {e}", target.host)))?;
                let _ = tcp.set_nodelay(true);
                self.tls.connect(name.clone(), tcp).await.map_err(|e| {
                    media_status(
                        Code::Unavailable,
                        "MEDIA_TLS_ERROR",
                        "url",
                        format!("TLS with {} at {addr}: {e}", target.host),
                    )
                })
            };
            match tokio::time::timeout(self.cfg.connect_timeout, attempt).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(st)) => last = st,
                Err(_) => last = timed_out("media.connect_timeout_ms", self.cfg.connect_timeout),
            }
        }
        Err(last)
    }
}

/// Aborts the HTTP connection task when the fetch ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum PumpEnd {
    /// The gRPC client went away; nothing more to tell it.
    ClientGone,
    Failed(Status),
}

/// Streams the body as chunks; the last chunk (held back one step) carries
/// `complete` and the SHA-256. Returns the bytes passed on.
async fn pump(
    mut body: hyper::body::Incoming,
    tx: &mpsc::Sender<Result<MediaChunk, Status>>,
    fetch: &Fetch,
    idle: Duration,
) -> Result<u64, PumpEnd> {
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut offset: u64 = 0;
    let mut held: Option<Bytes> = None;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(PumpEnd::Failed(timed_out("media.idle_timeout_ms", idle))),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(PumpEnd::Failed(unreachable(format!(
                    "the media body broke off after {received} bytes: {e}"
                ))));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(mut data) = frame.into_data() else { continue };
        received += data.len() as u64;
        if received > fetch.limit {
            return Err(PumpEnd::Failed(too_large(fetch.limit_field, fetch.limit, received, "ran past")));
        }
        hasher.update(&data);
        while !data.is_empty() {
            let piece = data.split_to(data.len().min(MAX_CHUNK_BYTES));
            if let Some(prev) = held.replace(piece) {
                let len = prev.len() as u64;
                let chunk = MediaChunk { data: prev, offset, complete: false, sha256: Bytes::new() };
                tx.send(Ok(chunk)).await.map_err(|_| PumpEnd::ClientGone)?;
                offset += len;
            }
        }
    }
    let digest: [u8; 32] = hasher.finalize().into();
    if let Some(expected) = fetch.expected
        && expected != digest
    {
        return Err(PumpEnd::Failed(media_status(
            Code::DataLoss,
            "MEDIA_HASH_MISMATCH",
            "expected_sha256",
            format!("the media body ({received} bytes) does not match expected_sha256; discard what was received"),
        )));
    }
    let last =
        MediaChunk { data: held.unwrap_or_default(), offset, complete: true, sha256: Bytes::copy_from_slice(&digest) };
    tx.send(Ok(last)).await.map_err(|_| PumpEnd::ClientGone)?;
    Ok(received)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_forbidden() {
        for a in [
            "127.0.0.1",
            "127.5.6.7",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:c0a8:0101::1",
            "fec0::1",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert!(forbidden_address(ip).is_some(), "{a} must be forbidden");
        }
        for a in ["93.184.216.34", "8.8.8.8", "100.128.0.1", "172.32.0.1", "2606:2800:220:1::1", "64:ff9b::808:808"] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(forbidden_address(ip), None, "{a} is public");
        }
    }

    #[test]
    fn urls_are_parsed_strictly() {
        let t = parse_url("https://Media.Example.net/a/b?c=d").unwrap();
        assert_eq!(
            t,
            Target {
                host: "media.example.net".into(),
                port: 443,
                host_header: "media.example.net".into(),
                path_and_query: "/a/b?c=d".into()
            }
        );
        let t = parse_url("https://cdn.example.net:8443").unwrap();
        assert_eq!((t.port, t.host_header.as_str(), t.path_and_query.as_str()), (8443, "cdn.example.net:8443", "/"));
        let reason = |u: &str| {
            use prost::Message;
            let st = parse_url(u).unwrap_err();
            assert_eq!(st.code(), Code::InvalidArgument, "{u}");
            ErrorDetail::decode(st.details()).unwrap().reason
        };
        assert_eq!(reason("http://media.example.net/x"), "NOT_HTTPS");
        assert_eq!(reason("ftp://media.example.net/x"), "NOT_HTTPS");
        assert_eq!(reason("https://user:pw@media.example.net/x"), "BAD_URL");
        assert_eq!(reason("https://media.example.net/x#frag"), "BAD_URL");
        assert_eq!(reason("/relative"), "BAD_URL");
        assert_eq!(reason(""), "BAD_URL");
        assert_eq!(reason(&format!("https://a.net/{}", "x".repeat(MAX_URL_BYTES))), "TOO_LARGE");
        // Found by the proto_decode fuzz target: a query without a path, ports that are not ports.
        assert_eq!(parse_url("https://cdn.example.net?sig=1").unwrap().path_and_query, "/?sig=1");
        assert_eq!(reason("https://cdn.example.net:80abc/x"), "BAD_URL");
        assert_eq!(reason("https://cdn.example.net:99999/x"), "BAD_URL");
        assert_eq!(parse_url("https://[2001:db8::1]:8443/x").unwrap().port, 8443);
        assert_eq!(registered_host_port("a.net"), ("a.net", 443));
        assert_eq!(registered_host_port("a.net:8443"), ("a.net", 8443));
    }
}
