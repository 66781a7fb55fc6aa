//! Connections of `soramai serve`: the accept loop, caps on open connections, and the timeouts a
//! router cannot see because they happen before or between requests.
//!
//! - **Caps.** At most [`ServeLimits::max_connections`] open connections, and at most
//!   [`ServeLimits::max_connections_per_ip`] from one client address, so one client cannot hold
//!   every slot. A connection beyond a cap is answered `503` and closed at once (over TLS,
//!   closed before the handshake).
//! - **Header timeout (slow-loris).** Once a request's first byte arrives, its whole head must
//!   follow within [`ServeLimits::header_timeout`], however slowly the bytes trickle in.
//! - **Idle timeout.** A connection with no request in progress and no byte from the client for
//!   [`ServeLimits::idle_timeout`] is closed.
//! - **TLS handshakes** run concurrently, each within [`ServeLimits::handshake_timeout`].
//!
//! The request timeout and body limits are the router's (`http::router`), so they hold however the
//! router is served. Shutdown is graceful: the listener closes, open connections finish the
//! request they are on (for at most [`SHUTDOWN_GRACE`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

/// How long open connections get to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Limits on connections, before and between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Time for a request's whole head once its first byte has arrived.
    pub header_timeout: Duration,
    /// Time a connection may sit with no request in progress and nothing from the client.
    pub idle_timeout: Duration,
    /// Time for a TLS handshake.
    pub handshake_timeout: Duration,
    /// Open connections, in all.
    pub max_connections: usize,
    /// Open connections from one client address (0: no per-address cap, e.g. behind a proxy that
    /// connects from one address).
    pub max_connections_per_ip: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_ip: 128,
        }
    }
}

/// Open connections, in all and per client address.
#[derive(Default)]
struct Slots {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One connection's place under the caps, given back when dropped.
struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Slots {
    fn take(self: &Arc<Self>, ip: IpAddr, limits: &ServeLimits) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let from_ip = open.1.get(&ip).copied().unwrap_or(0);
        if open.0 >= limits.max_connections
            || (limits.max_connections_per_ip > 0 && from_ip >= limits.max_connections_per_ip)
        {
            return None;
        }
        open.0 += 1;
        open.1.insert(ip, from_ip + 1);
        Some(Slot { slots: self.clone(), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

/// What the watchdog of one connection looks at. Times are milliseconds since `opened`.
struct ConnState {
    opened: Instant,
    in_request: AtomicUsize,
    /// The last byte from the client, or the end of the last request, whichever is later.
    last_activity: AtomicU64,
    /// When the first byte of a request's head arrived, plus one; 0 while no head is under way.
    head_started: AtomicU64,
}

impl ConnState {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_request: AtomicUsize::new(0),
            last_activity: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn read_some(&self) {
        let now = self.now();
        self.last_activity.store(now, Ordering::Relaxed);
        if self.in_request.load(Ordering::Relaxed) == 0 && self.head_started.load(Ordering::Relaxed) == 0 {
            self.head_started.store(now + 1, Ordering::Relaxed);
        }
    }

    fn begin(self: &Arc<Self>) -> InRequest {
        self.in_request.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        InRequest(self.clone())
    }

    /// Resolves when the connection broke a timeout.
    async fn watchdog(&self, limits: ServeLimits) {
        let header = u64::try_from(limits.header_timeout.as_millis()).unwrap_or(u64::MAX);
        let idle = u64::try_from(limits.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let tick = (limits.header_timeout.min(limits.idle_timeout) / 8)
            .clamp(Duration::from_millis(20), Duration::from_millis(500));
        loop {
            tokio::time::sleep(tick).await;
            if self.in_request.load(Ordering::Relaxed) > 0 {
                continue;
            }
            let now = self.now();
            let head = self.head_started.load(Ordering::Relaxed);
            if head > 0 && now.saturating_sub(head - 1) > header {
                return;
            }
            if head == 0 && now.saturating_sub(self.last_activity.load(Ordering::Relaxed)) > idle {
                return;
            }
        }
    }
}

/// A request in progress on a connection, until its response body is done.
struct InRequest(Arc<ConnState>);

impl Drop for InRequest {
    fn drop(&mut self) {
        let s = &self.0;
        s.last_activity.store(s.now(), Ordering::Relaxed);
        s.head_started.store(0, Ordering::Relaxed);
        s.in_request.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that marks its request finished when it is done (dropped).
struct Tracked {
    inner: Body,
    _request: InRequest,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A socket that tells its connection's watchdog when the client sends something.
struct Watched {
    inner: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.state.read_some();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

const BUSY_BODY: &str = r#"{"error":{"message":"Too many open connections; try again later.","type":"server_error","param":null,"code":"too_many_connections"}}"#;

/// Answers a connection beyond a cap and closes it, without waiting on the client for long.
async fn refuse(mut stream: TcpStream, plain: bool) {
    if plain {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let answer = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n\
                 content-length: {}\r\n\r\n{BUSY_BODY}",
                BUSY_BODY.len()
            );
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await
        })
        .await;
    }
}

/// The address a request's connection comes from (an extension on every request served here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer(pub std::net::IpAddr);

/// Serves `app` on `listener` (TLS when a configuration is given) until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let slots = Arc::new(Slots::default());
    let graceful = GracefulShutdown::new();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (stream, addr): (TcpStream, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(_) => {
                    // Out of file descriptors and the like: back off, then go on.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = slots.take(addr.ip(), &limits) else {
            tokio::spawn(refuse(stream, acceptor.is_none()));
            continue;
        };
        let (app, acceptor, watcher) = (app.clone(), acceptor.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _slot = slot;
            let _ = stream.set_nodelay(true);
            let state = Arc::new(ConnState::new());
            let io = Watched { inner: stream, state: state.clone() };
            match acceptor {
                None => connection(io, app, addr, state, limits, watcher).await,
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        tls = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(io)) => tls,
                        // A client that sends nothing at all is idle, not handshaking.
                        () = state.watchdog(limits) => return,
                    };
                    if let Ok(Ok(tls)) = handshake {
                        connection(tls, app, addr, state, limits, watcher).await;
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    Ok(())
}

/// Runs HTTP/1.1 on one connection until it closes or breaks a timeout.
async fn connection<I>(
    io: I,
    app: Router,
    peer: SocketAddr,
    state: Arc<ConnState>,
    limits: ServeLimits,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let requests = state.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let request = requests.begin();
        let app = app.clone();
        async move {
            let mut req = req.map(Body::new);
            // The client's address, for limits kept per address (sign-in attempts).
            req.extensions_mut().insert(Peer(peer.ip()));
            let res = app.oneshot(req).await?;
            Ok::<_, Infallible>(res.map(|inner| Tracked { inner, _request: request }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        // The watchdog keeps the header and idle timeouts (hyper's own header timer would also
        // close idle keep-alive connections after the header timeout).
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(io), service);
    tokio::select! {
        _ = watcher.watch(conn) => {}
        () = state.watchdog(limits) => {}
    }
}
