//! Accepting proxy clients: the connection limit, proxy authentication,
//! loop detection, and the drain at shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::body::ProxyBody;
use super::connect::TunnelHold;
use super::socket::ClientStream;
use super::{connect, forward, respond, Proxy, HEADER_READ_TIMEOUT, MAX_HEAD_BYTES};

/// Pause after a failed accept (usually: out of file descriptors), so the
/// loop does not spin while connections close and free some.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How a shutdown drains.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    /// The longest the drain may take; then remaining connections close.
    pub timeout: Duration,
    /// The drain ends once no exchange has been in flight for this long.
    pub quiet: Duration,
}

impl Drain {
    /// A drain of up to `timeout` that ends after two quiet seconds.
    pub fn within(timeout: Duration) -> Drain {
        Drain {
            timeout,
            quiet: Duration::from_secs(2),
        }
    }
}

/// Accepts proxy clients on `listener` until `shutdown` completes, then
/// drains (see [`drain`]) and returns.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    drain_policy: Drain,
) {
    if let Ok(addr) = listener.local_addr() {
        let _ = proxy.own_addr.set(addr);
    }
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(proxy.max_connections));
    let warned_full = AtomicBool::new(false);
    tokio::pin!(shutdown);
    loop {
        // Past the limit, new clients wait in the kernel's accept queue
        // instead of becoming tasks.
        if slots.available_permits() == 0 && !warned_full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                limit = proxy.max_connections,
                "connection limit reached; new clients wait until one closes"
            );
        }
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("semaphore is never closed"),
            () = &mut shutdown => break,
        };
        tokio::select! {
            accepted = listener.accept() => accept(&proxy, &graceful, accepted, slot).await,
            () = &mut shutdown => break,
        }
    }
    drain(&proxy, listener, graceful, slots, drain_policy).await;
}

async fn accept(
    proxy: &Arc<Proxy>,
    graceful: &GracefulShutdown,
    accepted: std::io::Result<(TcpStream, SocketAddr)>,
    slot: OwnedSemaphorePermit,
) {
    match accepted {
        Ok((stream, client)) => {
            let (outer, inner) = (graceful.watcher(), graceful.watcher());
            tokio::spawn(serve_client(
                proxy.clone(),
                stream,
                client,
                outer,
                inner,
                slot,
            ));
        }
        Err(error) => {
            tracing::warn!("accepting a connection failed: {error}");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
        }
    }
}

/// The drain: keep answering while a push is still running, then close.
///
/// Clients such as skopeo open a new connection for every request of a
/// push, so refusing new connections at once would fail every push in
/// flight. Instead new connections are still served while exchanges are
/// in flight, and the listener closes once none has been for
/// `drain.quiet`, or when `drain.timeout` runs out.
async fn drain(
    proxy: &Arc<Proxy>,
    listener: TcpListener,
    graceful: GracefulShutdown,
    slots: Arc<Semaphore>,
    policy: Drain,
) {
    // A timeout too large to add to the clock means "as long as it takes".
    let deadline = Instant::now()
        .checked_add(policy.timeout)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600));
    tracing::info!(
        in_flight = proxy.stats.in_flight(),
        "shutting down: finishing in-flight pushes, up to {}s",
        policy.timeout.as_secs()
    );
    let recheck = Duration::from_millis(50);
    while proxy.stats.busy_within(policy.quiet) {
        // The connection limit still holds: at it, new clients wait.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::select! {
                () = tokio::time::sleep(recheck) => continue,
                () = tokio::time::sleep_until(deadline) => break,
            }
        };
        tokio::select! {
            accepted = listener.accept() => accept(proxy, &graceful, accepted, slot).await,
            () = tokio::time::sleep(recheck) => {}
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "no longer accepting; closing connections"
    );
    match tokio::time::timeout_at(deadline, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections finished"),
        Err(_) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
}

/// Serves one proxy client: absolute-form requests and `CONNECT`.
/// `outer` watches this connection for graceful shutdown; `inner` is
/// handed to the tunnel if the client opens one, so shutdown also waits
/// for the requests inside it. `slot` is held for the connection's life.
async fn serve_client(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    client: SocketAddr,
    outer: Watcher,
    inner: Watcher,
    slot: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    if !speaks_http1(&stream).await {
        tracing::debug!(%client, "closed: no HTTP/1 request head in time");
        return;
    }
    let stream = ClientStream::new(stream, client);
    // The slot moves into a tunnel if the client opens one, so tunnels
    // count against the limit for as long as they live.
    let hold = Arc::new(Mutex::new(Some(TunnelHold {
        watcher: inner,
        slot,
        low_water: stream.low_water(),
    })));
    let service = service_fn(move |request: Request<Incoming>| {
        let proxy = proxy.clone();
        let hold = hold.clone();
        async move {
            let take = || hold.lock().unwrap_or_else(|e| e.into_inner()).take();
            Ok::<_, Infallible>(route_proxy_request(proxy, client, request, take).await)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    if let Err(error) = outer.watch(connection).await {
        tracing::debug!(%client, "client connection ended: {error}");
    }
}

/// Waits for the client's first bytes. A client that sends nothing within
/// the head timeout is let go (hyper's own timeout starts only with the
/// first byte), and cleartext HTTP/2, which no proxy client speaks and
/// which would bypass the HTTP/1 head limits, is refused.
async fn speaks_http1(stream: &TcpStream) -> bool {
    const H2_PREFACE_START: &[u8] = b"PRI";
    let deadline = Instant::now() + HEADER_READ_TIMEOUT;
    let mut first = [0u8; 3];
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)).await;
        let n = match peeked {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        if first[..n] != H2_PREFACE_START[..n] {
            return true;
        }
        if n == H2_PREFACE_START.len() {
            return false;
        }
        // A prefix of "PRI" so far: wait for the rest without spinning.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What a request to the proxy port gets: 407 without valid proxy
/// credentials, 400 if it would loop back into regproxy, otherwise a
/// tunnel or a forwarded exchange.
async fn route_proxy_request(
    proxy: Arc<Proxy>,
    client: SocketAddr,
    request: Request<Incoming>,
    tunnel_hold: impl FnOnce() -> Option<TunnelHold>,
) -> Response<ProxyBody> {
    if let Some(credentials) = &proxy.auth {
        if !credentials.accepts(request.headers()) {
            tracing::debug!(%client, "proxy authentication missing or wrong");
            return respond::proxy_auth_required();
        }
    }
    let target = request
        .uri()
        .authority()
        .map(|a| (a.host().to_owned(), a.port_u16()));
    if let Some((host, port)) = target {
        let default_port = if request.method() == Method::CONNECT {
            443
        } else {
            80
        };
        if proxy.is_own_address(&host, port.unwrap_or(default_port)) {
            tracing::debug!(%client, "request to regproxy's own address refused");
            return respond::bad_request("the target is regproxy itself; this request would loop");
        }
    }
    if request.method() == Method::CONNECT {
        connect::handle_connect(proxy, client, request, tunnel_hold()).await
    } else {
        forward::forward(proxy, client, None, request).await
    }
}
