//! Accept loops and per-connection serving, for the TLS listener and the
//! plain-HTTP ops listener.
//!
//! Limits live here: a semaphore caps open connections (at the cap the loop
//! stops accepting, so the kernel backlog absorbs bursts); the TLS handshake
//! has a timeout; HTTP/1 request headers must arrive within
//! `header_read_timeout` once the first byte of a request is seen; a
//! connection with nothing in flight closes after `keepalive_idle_timeout`.
//!
//! Behind a load balancer that speaks the PROXY protocol
//! (`server.client_address = "proxy_protocol"`), a connection from a trusted
//! proxy starts with a PROXY header, read before the TLS handshake and
//! within the handshake's timeout (one budget for both); a malformed or late
//! one closes the connection. The client it names is [`ConnInfo::client`].
//!
//! hyper's own `header_read_timeout` is not used: it starts as soon as a
//! keep-alive connection goes idle, which would make the idle timeout and the
//! header timeout one number.
//!
//! An HTTP/1 connection the gateway ends while the client may still be
//! sending (an answer given before the body was read: 413, 408, 401…) is
//! not simply closed: closing a socket with unread data sends a reset, and a
//! client still writing its body then loses the answer it was sent. It
//! lingers instead, as nginx does: the answer is flushed, the write side
//! closed (TLS `close_notify`, then FIN), and what the client still sends is
//! read and thrown away, up to `linger.bytes_max` and `linger.timeout`, or
//! until the client closes.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::TrustedProxies;
use crate::edge::client_addr::{Prefixed, read_proxy_header};
use crate::edge::error::Body;
use crate::metrics::Metrics;

/// What a handler learns about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The TCP peer: the client, or the load balancer in front of it.
    pub peer: SocketAddr,
    /// The client, as far as the connection tells: the source a trusted
    /// proxy's PROXY header names, else the peer's address. (A request's
    /// `X-Forwarded-For` may still name another: `api::client_ip`.)
    pub client: IpAddr,
    /// Subject common name of the verified client certificate (mTLS), if any.
    pub client_cert_cn: Option<String>,
}

/// Answers one request. Errors are already responses: it cannot fail.
pub trait Handler: Clone + Send + Sync + Unpin + 'static {
    fn call(
        &self,
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// Connection limits, from `[server]`.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub header_bytes_max: usize,
    pub idle_timeout: Duration,
    pub h2_streams_max: u32,
    pub linger: Linger,
}

/// How long an HTTP/1 connection the gateway closes keeps reading (and
/// discarding) what its client still sends (`server.linger_*`).
#[derive(Debug, Clone, Copy)]
pub struct Linger {
    pub bytes_max: u64,
    /// `Duration::ZERO`: close at once.
    pub timeout: Duration,
}

/// Serves HTTPS on `listener` until `shutdown`; connection tasks go on `tracker`.
/// With `proxy_protocol`, a connection from one of those peers must start
/// with a PROXY header, which must arrive, with the TLS handshake after it,
/// within `handshake_timeout`.
#[allow(clippy::too_many_arguments)]
pub async fn serve_tls<H: Handler>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    proxy_protocol: Option<Arc<TrustedProxies>>,
    connections_max: usize,
    limits: ConnLimits,
    handler: H,
    metrics: Metrics,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(connections_max));
    let conns = Conns::new(limits, handler, metrics, shutdown.clone());
    while let Some((permit, tcp, peer)) = accept_next(&listener, &permits, &shutdown).await {
        let _ = tcp.set_nodelay(true);
        let (acceptor, conns) = (acceptor.clone(), conns.clone());
        let proxy = proxy_protocol
            .as_ref()
            .filter(|trusted| trusted.contains(peer.ip()))
            .is_some();
        tracker.spawn(async move {
            let _permit = permit;
            let open = conns.metrics.connections_open.clone();
            open.inc();
            let deadline = tokio::time::Instant::now() + handshake_timeout;
            let tls = tokio::select! {
                _ = conns.shutdown.cancelled() => None,
                r = handshake(tcp, peer, proxy, deadline, &acceptor, &conns.metrics) => r,
            };
            if let Some((tls, client)) = tls {
                let (_, session) = tls.get_ref();
                let is_h2 = session.alpn_protocol() == Some(b"h2");
                let info = Arc::new(ConnInfo {
                    peer,
                    client,
                    client_cert_cn: session
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|cert| common_name(cert.as_ref())),
                });
                conns.serve(tls, is_h2, info).await;
            }
            open.dec();
        });
    }
    tracing::info!("TLS listener stopped accepting");
}

type Tls = tokio_rustls::server::TlsStream<Prefixed<TcpStream>>;

/// What comes before HTTP on a TLS connection: the PROXY header when `proxy`
/// (the peer is a trusted proxy), then the TLS handshake, both by
/// `deadline`. `None`, counted, when either fails.
async fn handshake(
    mut tcp: TcpStream,
    peer: SocketAddr,
    proxy: bool,
    deadline: tokio::time::Instant,
    acceptor: &TlsAcceptor,
    metrics: &Metrics,
) -> Option<(Tls, IpAddr)> {
    let (io, client) = if proxy {
        match tokio::time::timeout_at(deadline, read_proxy_header(&mut tcp)).await {
            Ok(Ok(header)) => (
                Prefixed::new(tcp, header.rest),
                header.client.unwrap_or(peer.ip()),
            ),
            Ok(Err(e)) => {
                tracing::debug!(%peer, reason = e.reason(), "PROXY header refused");
                metrics
                    .connections_refused
                    .with_label_values(&[e.reason()])
                    .inc();
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "PROXY header timed out");
                metrics
                    .connections_refused
                    .with_label_values(&["proxy_header_timeout"])
                    .inc();
                return None;
            }
        }
    } else {
        (Prefixed::new(tcp, Vec::new()), peer.ip())
    };
    match tokio::time::timeout_at(deadline, acceptor.accept(io)).await {
        Ok(Ok(tls)) => Some((tls, client)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, %client, error = %e, "TLS handshake failed");
            metrics
                .tls_handshake_failures
                .with_label_values(&["error"])
                .inc();
            None
        }
        Err(_) => {
            tracing::debug!(%peer, %client, "TLS handshake timed out");
            metrics
                .tls_handshake_failures
                .with_label_values(&["timeout"])
                .inc();
            None
        }
    }
}

/// Serves plain HTTP (the ops listener) until `shutdown`.
pub async fn serve_plain<H: Handler>(
    listener: TcpListener,
    connections_max: usize,
    limits: ConnLimits,
    handler: H,
    metrics: Metrics,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(connections_max));
    let conns = Conns::new(limits, handler, metrics, shutdown.clone());
    while let Some((permit, tcp, peer)) = accept_next(&listener, &permits, &shutdown).await {
        let conns = conns.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let info = Arc::new(ConnInfo {
                peer,
                client: peer.ip(),
                client_cert_cn: None,
            });
            conns.serve(tcp, false, info).await;
        });
    }
}

/// What every connection of one listener shares, cloned into its task.
#[derive(Clone)]
struct Conns<H> {
    protocols: Arc<Protocols>,
    limits: ConnLimits,
    handler: H,
    metrics: Metrics,
    shutdown: CancellationToken,
}

impl<H: Handler> Conns<H> {
    fn new(limits: ConnLimits, handler: H, metrics: Metrics, shutdown: CancellationToken) -> Self {
        Self {
            protocols: Arc::new(http_builder(&limits)),
            limits,
            handler,
            metrics,
            shutdown,
        }
    }

    async fn serve<IO>(self, io: IO, is_h2: bool, info: Arc<ConnInfo>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        serve_connection(
            io,
            is_h2,
            info,
            &self.protocols,
            &self.limits,
            self.handler,
            &self.metrics,
            self.shutdown,
        )
        .await;
    }
}

/// One builder per protocol: with TLS, ALPN already says which one a
/// connection speaks, and serving HTTP/1 through hyper-util's `auto`
/// connection would size every connection for HTTP/2's state too.
pub struct Protocols {
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

/// Waits for a connection slot, then the next connection; `None` once
/// shutdown begins. At the cap the listener stops accepting rather than
/// accepting and dropping: the kernel backlog holds the rest.
async fn accept_next(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    let permit = tokio::select! {
        _ = shutdown.cancelled() => return None,
        p = permits.clone().acquire_owned() => p.ok()?,
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = listener.accept() => match r {
                Ok((tcp, peer)) => return Some((permit, tcp, peer)),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

fn http_builder(limits: &ConnLimits) -> Protocols {
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(limits.header_bytes_max);
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_streams_max)
        .max_header_list_size(limits.header_bytes_max as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    Protocols { h1, h2 }
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection<IO, H>(
    io: IO,
    is_h2: bool,
    info: Arc<ConnInfo>,
    protocols: &Protocols,
    limits: &ConnLimits,
    handler: H,
    metrics: &Metrics,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(ActivityIo {
        inner: io,
        activity: activity.clone(),
    });
    let service_activity = activity.clone();
    let service = hyper::service::service_fn(move |req| {
        let handler = handler.clone();
        let info = info.clone();
        let guard = service_activity.request_started();
        // Boxed: hyper keeps a slot the size of the service future in every
        // connection, idle or not. Unboxed, the whole request state machine
        // made an idle HTTP/1 connection cost ~10 KB more (benches/run.sh
        // memory). Boxed whole, it is also `Unpin`, which taking an HTTP/1
        // connection's socket back to linger needs.
        let fut: ServiceFuture = Box::pin(async move {
            let resp = handler.call(req, info).await;
            drop(guard);
            Ok(resp)
        });
        fut
    });
    let watch = activity.clone().watch(limits.clone(), is_h2);
    if is_h2 {
        // Boxed so HTTP/2's larger state is paid only by HTTP/2 connections.
        // HTTP/2 needs no linger: an answer before the body ends is followed
        // by RST_STREAM(NO_ERROR), which clients read as "stop sending".
        let conn = protocols.h2.serve_connection(io, service);
        Box::pin(drive(conn, watch, metrics, shutdown)).await;
    } else {
        // On the heap, handed on by pointer: moved by value through
        // `drive_h1` and `close_idle`, each future would keep room for a
        // connection of its own, and every idle connection would pay for
        // it (benches/run.sh memory: +8 KB each).
        let conn = Box::new(protocols.h1.serve_connection(io, service));
        // The socket back, boxed at once for the same reason.
        let closed = drive_h1(conn, &activity, watch, metrics, shutdown)
            .await
            .map(|io| Box::new(io.into_inner()));
        if let Some(io) = closed {
            linger(io, &activity, limits.linger, metrics).await;
        }
    }
}

type ServiceFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// Runs a connection until it ends, the server shuts down, or its watch
/// says it idled or trickled too long.
async fn drive<C>(
    conn: C,
    watch: impl Future<Output = Verdict>,
    metrics: &Metrics,
    shutdown: CancellationToken,
) where
    C: GracefulConnection<Error = hyper::Error>,
{
    tokio::pin!(conn);
    tokio::pin!(watch);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        _ = shutdown.cancelled() => {}
        verdict = &mut watch => match verdict {
            Verdict::Idle => {
                metrics.connections_refused.with_label_values(&["idle_timeout"]).inc();
            }
            Verdict::HeaderTimeout => {
                // A client trickling headers gets no graceful goodbye.
                metrics.connections_refused.with_label_values(&["header_timeout"]).inc();
                return;
            }
        },
    }
    // Let in-flight requests finish; the app's grace period bounds this wait.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// [`drive`] for HTTP/1, which hands the socket back instead of closing it
/// when the connection may have to linger; `None` when it is closed already
/// or has nothing to linger for (a client trickling headers, an idle one).
async fn drive_h1<IO, S>(
    mut conn: Box<hyper::server::conn::http1::Connection<IO, S>>,
    activity: &Activity,
    watch: impl Future<Output = Verdict>,
    metrics: &Metrics,
    shutdown: CancellationToken,
) -> Option<IO>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = Body> + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(watch);
    let ended = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx));
    tokio::select! {
        r = ended => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return Some((*conn).into_parts().io);
        }
        _ = shutdown.cancelled() => {}
        verdict = &mut watch => match verdict {
            Verdict::Idle => {
                metrics.connections_refused.with_label_values(&["idle_timeout"]).inc();
                close_idle(conn).await;
                return None;
            }
            Verdict::HeaderTimeout => {
                // A client trickling headers gets no graceful goodbye.
                metrics.connections_refused.with_label_values(&["header_timeout"]).inc();
                return None;
            }
        },
    }
    if !activity.busy() {
        close_idle(conn).await;
        return None;
    }
    // Let in-flight requests finish; the app's grace period bounds this wait.
    Pin::new(&mut *conn).graceful_shutdown();
    if let Err(e) = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
    Some((*conn).into_parts().io)
}

/// Closes an HTTP/1 connection with nothing in flight at once (hyper ends
/// an idle connection on `graceful_shutdown`), and its socket with it.
async fn close_idle<IO, S>(mut conn: Box<hyper::server::conn::http1::Connection<IO, S>>)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = Body> + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Pin::new(&mut *conn).graceful_shutdown();
    let _ = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)).await;
    let mut io = (*conn).into_parts().io;
    let _ = std::future::poll_fn(|cx| hyper::rt::Write::poll_shutdown(Pin::new(&mut io), cx)).await;
}

/// Closes an HTTP/1 connection the nginx way (see the module docs): flush,
/// close the write side, then read and discard within `linger`'s bounds
/// until the client closes too. A client that closed first is closed at once.
async fn linger<IO>(
    mut io: Box<ActivityIo<IO>>,
    activity: &Activity,
    linger: Linger,
    metrics: &Metrics,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let closing = async {
        io.flush().await?;
        io.shutdown().await
    };
    // The write side gets the linger's time too: a client that reads
    // nothing must not hold the slot longer.
    let deadline = tokio::time::Instant::now() + linger.timeout.max(Duration::from_millis(100));
    if !matches!(tokio::time::timeout_at(deadline, closing).await, Ok(Ok(()))) {
        return;
    }
    if activity.client_closed() || linger.timeout.is_zero() {
        return;
    }
    // On the heap: a buffer in the future would be paid by every connection.
    let mut buf = vec![0u8; 8 * 1024];
    let mut discarded: u64 = 0;
    let reason = loop {
        match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => {
                discarded = discarded.saturating_add(n as u64);
                if discarded >= linger.bytes_max {
                    break "linger_bytes";
                }
            }
            Err(_) => break "linger_timeout",
        }
    };
    tracing::debug!(
        discarded,
        reason,
        "closed a connection whose client kept sending"
    );
    metrics
        .connections_refused
        .with_label_values(&[reason])
        .inc();
}

/// Milliseconds since the process started; a cheap monotonic clock for atomics.
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

const NONE_MS: u64 = u64::MAX;

/// What a connection has been doing, updated from its IO and its service.
struct Activity {
    in_flight: AtomicUsize,
    /// Last time a request finished or the connection opened.
    idle_since_ms: AtomicU64,
    /// First byte read while no request was in flight, or `NONE_MS`.
    request_bytes_since_ms: AtomicU64,
    /// The client closed its side (a read returned end of file).
    client_closed: std::sync::atomic::AtomicBool,
}

enum Verdict {
    Idle,
    HeaderTimeout,
}

struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.idle_since_ms.store(now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(now_ms()),
            request_bytes_since_ms: AtomicU64::new(NONE_MS),
            client_closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn client_closed(&self) -> bool {
        self.client_closed.load(Ordering::Relaxed)
    }

    /// A request is in flight, or one has begun to arrive.
    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
            || self.request_bytes_since_ms.load(Ordering::Relaxed) != NONE_MS
    }

    fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.request_bytes_since_ms
            .store(NONE_MS, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ = self.request_bytes_since_ms.compare_exchange(
                NONE_MS,
                now_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Resolves when the connection should close. HTTP/2 connections carry
    /// pings and window updates between requests, so only HTTP/1 gets the
    /// header timeout.
    async fn watch(self: Arc<Self>, limits: ConnLimits, is_h2: bool) -> Verdict {
        let header_ms = limits.header_read_timeout.as_millis() as u64;
        let idle_ms = limits.idle_timeout.as_millis() as u64;
        // Checking at a fraction of the smaller limit keeps the overshoot small.
        let tick = Duration::from_millis((header_ms.min(idle_ms) / 4).clamp(10, 1000));
        loop {
            tokio::time::sleep(tick).await;
            if self.in_flight.load(Ordering::Relaxed) > 0 {
                continue;
            }
            let now = now_ms();
            let bytes_since = self.request_bytes_since_ms.load(Ordering::Relaxed);
            if !is_h2 && bytes_since != NONE_MS {
                if now.saturating_sub(bytes_since) >= header_ms {
                    return Verdict::HeaderTimeout;
                }
                continue;
            }
            if now.saturating_sub(self.idle_since_ms.load(Ordering::Relaxed)) >= idle_ms {
                return Verdict::Idle;
            }
        }
    }
}

/// An IO wrapper that reports reads to [`Activity`].
struct ActivityIo<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for ActivityIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) {
            if buf.filled().len() > before {
                self.activity.bytes_read();
            } else if buf.remaining() > 0 {
                self.activity.client_closed.store(true, Ordering::Relaxed);
            }
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ActivityIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Binds a TCP listener with a deep accept backlog.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// The subject common name of a DER certificate rustls already verified.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
