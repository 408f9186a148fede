//! Accepting TLS connections on a listening port, bounded before anyone is
//! authenticated.
//!
//! ```text
//!  listener.accept ─> caps (total, per source, handshakes in progress) ─> refused: closed at once
//!                  └─> TLS handshake (own task, at most handshake_timeout) ─> tonic serves it
//! ```
//!
//! A connection counts against the caps from accept until it closes: a
//! flood of idle TCP connections costs one small task each for at most
//! `handshake_timeout`, and never more than `max_handshakes` of them at once,
//! while connections that finished their handshake (mutual TLS: the caller
//! holds a certificate of the cluster CA) keep being served. The provider,
//! peer and federation listeners all accept through here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How often a server pings an idle HTTP/2 connection; one that does not
/// answer within tonic's keepalive timeout (20 s) is closed, so a client
/// that vanished (a NAT dropping state, a dead host) does not hold its place
/// in the caps for ever.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// The bounds of one listener (`[connections]` in the config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections at most, handshaking or established.
    pub max_connections: usize,
    /// Open connections from one source address at most.
    pub max_connections_per_source: usize,
    /// Connections still in their TLS handshake at most.
    pub max_handshakes: usize,
    /// Connections from one source address still in their handshake at most
    /// (well under `max_handshakes`, so that a few sources cannot take every
    /// handshake slot).
    pub max_handshakes_per_source: usize,
    /// A handshake not finished by then is dropped.
    pub handshake_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 10_000,
            max_connections_per_source: 1_000,
            max_handshakes: 1_024,
            max_handshakes_per_source: 32,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a connection was closed before it was served (the `reason` label of
/// `router_connections_refused_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    MaxPerSource,
    MaxHandshakes,
    MaxHandshakesPerSource,
    HandshakeTimeout,
    HandshakeFailed,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxPerSource => "max_connections_per_source",
            Refusal::MaxHandshakes => "max_handshakes",
            Refusal::MaxHandshakesPerSource => "max_handshakes_per_source",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::HandshakeFailed => "handshake_failed",
        }
    }
}

/// What the accept loop tells the metrics.
pub trait AcceptObserver: Send + Sync + 'static {
    fn refused(&self, port: &'static str, why: Refusal);
    fn open(&self, port: &'static str, connections: usize);
}

/// Where a connection comes from, for the per-source caps: an IPv4
/// address, or an IPv6 /64 (one subscriber's prefix; a single host can use
/// many addresses of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Source(u128);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(u128::from(u32::from(v4))),
                None => Source((u128::from(v6) >> 64 << 64) | (1 << 32)),
            },
        }
    }
}

#[derive(Default)]
struct Counts {
    open: usize,
    handshaking: usize,
    /// Per source: (open, handshaking).
    by_source: HashMap<Source, (usize, usize)>,
}

/// The open connections of one listener.
struct Tally {
    limits: ConnectionLimits,
    counts: Mutex<Counts>,
    port: &'static str,
    observer: Arc<dyn AcceptObserver>,
}

impl Tally {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a place for a new connection from `ip`, in its handshake.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let source = Source::of(ip);
        let mut c = self.lock();
        let (open_from, handshaking_from) = c.by_source.get(&source).copied().unwrap_or((0, 0));
        if c.open >= self.limits.max_connections {
            return Err(Refusal::MaxConnections);
        }
        if open_from >= self.limits.max_connections_per_source {
            return Err(Refusal::MaxPerSource);
        }
        if handshaking_from >= self.limits.max_handshakes_per_source {
            return Err(Refusal::MaxHandshakesPerSource);
        }
        if c.handshaking >= self.limits.max_handshakes {
            return Err(Refusal::MaxHandshakes);
        }
        c.open += 1;
        c.handshaking += 1;
        let from = c.by_source.entry(source).or_default();
        from.0 += 1;
        from.1 += 1;
        self.observer.open(self.port, c.open);
        Ok(Slot { tally: self.clone(), source, handshaking: true })
    }
}

/// A connection's place in the tally, given back when it closes.
struct Slot {
    tally: Arc<Tally>,
    source: Source,
    handshaking: bool,
}

impl Slot {
    fn handshake_done(&mut self) {
        if std::mem::replace(&mut self.handshaking, false) {
            let mut c = self.tally.lock();
            c.handshaking -= 1;
            if let Some(from) = c.by_source.get_mut(&self.source) {
                from.1 -= 1;
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.tally.lock();
        c.open -= 1;
        if self.handshaking {
            c.handshaking -= 1;
        }
        if let Some(from) = c.by_source.get_mut(&self.source) {
            from.0 -= 1;
            if self.handshaking {
                from.1 -= 1;
            }
            if from.0 == 0 {
                c.by_source.remove(&self.source);
            }
        }
        self.tally.observer.open(self.tally.port, c.open);
    }
}

/// A TCP connection holding its place in the tally. To tonic it is the TCP
/// stream it wraps (same connect info), so `Request::peer_certs` works on
/// the TLS stream around it.
pub struct Counted {
    tcp: TcpStream,
    slot: Slot,
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// A gRPC server with the per-connection bounds of `[connections]`: streams
/// per connection, and pings of idle connections (the provider, peer and
/// federation listeners are built from it).
///
/// A client may cancel as many calls before the server took them up as it
/// may have open (`max_concurrent_streams`) before the connection is closed
/// with GOAWAY. h2's default of 20 guards against the rapid-reset attack,
/// but callers that time out under load (openraft cancels an AppendEntries
/// after its per-call timeout, the SDK an attempt after `attempt_timeout`)
/// reach it in normal operation, and the GOAWAY then fails every call on the
/// connection at once: replication stalls, elections churn and providers see
/// `RESOURCE_EXHAUSTED` "h2 protocol error". The bound stays per connection.
pub fn bounded_server(max_concurrent_streams: u32) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(max_concurrent_streams)
        .http2_max_pending_accept_reset_streams(Some(max_concurrent_streams as usize))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
}

pub type Incoming = tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<Counted>>>;

/// Accepts on `listener` until `shutdown`, and yields the connections whose
/// TLS handshake finished in time; `port` names the listener in metrics and
/// logs. Nagle is off on every accepted socket (small gRPC frames would
/// otherwise wait for the peer's delayed ACK).
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: ConnectionLimits,
    port: &'static str,
    observer: Arc<dyn AcceptObserver>,
    mut shutdown: watch::Receiver<bool>,
) -> Incoming {
    let (tx, rx) = mpsc::channel(64);
    let tally = Arc::new(Tally { limits, counts: Mutex::default(), port, observer });
    crate::spawn(async move {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => Some(r),
                _ = shutdown.wait_for(|s| *s) => None,
            };
            let (tcp, addr) = match accepted {
                None => return,
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    // Out of file descriptors, most likely: wait, do not spin.
                    tracing::warn!(port, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let slot = match tally.admit(addr.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    tally.observer.refused(port, why);
                    tracing::debug!(port, %addr, reason = why.as_str(), "connection refused");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, timeout, observer) =
                (acceptor.clone(), tx.clone(), tally.limits.handshake_timeout, tally.observer.clone());
            crate::spawn(async move {
                match tokio::time::timeout(timeout, acceptor.accept(Counted { tcp, slot })).await {
                    Ok(Ok(mut stream)) => {
                        stream.get_mut().0.slot.handshake_done();
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        observer.refused(port, Refusal::HandshakeFailed);
                        tracing::debug!(port, %addr, "TLS handshake refused: {e}");
                    }
                    Err(_) => {
                        observer.refused(port, Refusal::HandshakeTimeout);
                        tracing::debug!(port, %addr, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen(Mutex<Vec<Refusal>>);

    impl AcceptObserver for Seen {
        fn refused(&self, _: &'static str, why: Refusal) {
            self.0.lock().unwrap().push(why);
        }
        fn open(&self, _: &'static str, _: usize) {}
    }

    fn tally(limits: ConnectionLimits) -> Arc<Tally> {
        Arc::new(Tally { limits, counts: Mutex::default(), port: "test", observer: Arc::new(Seen::default()) })
    }

    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];
    const C: [u8; 4] = [10, 0, 0, 3];

    #[test]
    fn handshakes_are_capped_per_source_and_in_all() {
        let t = tally(ConnectionLimits {
            max_connections: 10,
            max_connections_per_source: 5,
            max_handshakes: 3,
            max_handshakes_per_source: 2,
            handshake_timeout: Duration::from_secs(1),
        });
        let mut a1 = t.admit(A.into()).unwrap();
        let _a2 = t.admit(A.into()).unwrap();
        assert_eq!(t.admit(A.into()).err(), Some(Refusal::MaxHandshakesPerSource));
        let _b1 = t.admit(B.into()).unwrap();
        assert_eq!(t.admit(C.into()).err(), Some(Refusal::MaxHandshakes));
        a1.handshake_done();
        let _c1 = t.admit(C.into()).unwrap();
        assert_eq!(t.admit(A.into()).err(), Some(Refusal::MaxHandshakes), "a may again, but nobody may");
        assert_eq!(t.lock().by_source.get(&Source::of(A.into())), Some(&(2, 1)));
        drop(a1);
        assert_eq!(t.lock().by_source.get(&Source::of(A.into())), Some(&(1, 1)));
        let c = t.lock();
        assert_eq!((c.open, c.handshaking), (3, 3));
    }

    #[test]
    fn connections_are_capped_per_source_and_in_all_and_come_back() {
        let t = tally(ConnectionLimits {
            max_connections: 3,
            max_connections_per_source: 2,
            max_handshakes: 10,
            max_handshakes_per_source: 10,
            handshake_timeout: Duration::from_secs(1),
        });
        let a1 = t.admit(A.into()).unwrap();
        let mut a2 = t.admit(A.into()).unwrap();
        a2.handshake_done();
        assert_eq!(t.admit(A.into()).err(), Some(Refusal::MaxPerSource));
        let b1 = t.admit(B.into()).unwrap();
        assert_eq!(t.admit(B.into()).err(), Some(Refusal::MaxConnections));
        drop(b1);
        drop(a1);
        drop(a2);
        {
            let c = t.lock();
            assert_eq!((c.open, c.handshaking), (0, 0));
            assert!(c.by_source.is_empty(), "a source with no connection is forgotten");
        }
        t.admit(B.into()).unwrap();
    }

    #[test]
    fn an_ipv6_source_is_its_slash_64() {
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let next: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(one), Source::of(other));
        assert_ne!(Source::of(one), Source::of(next));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(Source::of(mapped), Source::of([10, 0, 0, 1].into()));
    }
}
