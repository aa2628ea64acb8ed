//! `CONNECT host:port`: answer 200, then look at what the client sends
//! through the tunnel. TLS is terminated with a leaf minted for the host
//! and served as HTTP/2 or HTTP/1.1, as ALPN decided; plain HTTP is
//! served as it is. Either way each request goes to [`forward`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, BufReader};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::LazyConfigAcceptor;

use super::body::{self, ProxyBody};
use super::exchange::{Direction, Exchange, ExchangeStart};
use super::forward::{forward, Target};
use super::rewind::Rewind;
use super::socket::LowWater;
use super::unbracketed;
use super::{respond, Proxy, HEADER_READ_TIMEOUT, MAX_HEAD_BYTES};
use crate::registry::route::Route;

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// A client that opens a tunnel and sends nothing is let go after this.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// HTTP/2 flow-control windows. The protocol's 64 KiB default lets one
/// stream carry only 64 KiB per round trip, which throttles a multi-GB
/// layer upload to a crawl on any real link; these let a stream run at
/// line rate while bounding what one connection can make regproxy hold.
const H2_STREAM_WINDOW: u32 = 8 << 20;
const H2_CONNECTION_WINDOW: u32 = 16 << 20;
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Larger DATA frames mean fewer frame headers and wake-ups per layer.
const H2_MAX_FRAME_SIZE: u32 = 256 << 10;

/// Answers a `CONNECT`. Intercepted targets get 200 at once and are
/// served in the background; others are tunnelled byte for byte once the
/// upstream connection is open, or get a 502 saying why it is not.
pub async fn handle_connect(
    proxy: Arc<Proxy>,
    client: SocketAddr,
    request: Request<Incoming>,
    hold: Option<TunnelHold>,
) -> Response<ProxyBody> {
    let Some(authority) = tunnel_authority(&request) else {
        return respond::bad_request("CONNECT needs a host:port target");
    };
    let port = authority.port_u16().unwrap_or(443);
    if !proxy.intercepts(authority.host(), port) {
        return tunnel_untouched(proxy, client, request, authority, hold).await;
    }
    tracing::debug!(%client, target = %authority, "tunnel opened");
    tokio::spawn(async move {
        let Some(upgraded) = upgrade(request, client).await else {
            return;
        };
        let tunnel = Tunnel {
            proxy,
            client,
            authority,
            hold,
        };
        if let Err(error) = tunnel.intercept(TokioIo::new(upgraded)).await {
            tracing::debug!(%client, "tunnel closed: {error}");
        }
    });
    connection_established()
}

/// A tunnel to a host that is not intercepted: bytes are copied both ways
/// untouched, so the client sees the host's own certificate.
async fn tunnel_untouched(
    proxy: Arc<Proxy>,
    client: SocketAddr,
    request: Request<Incoming>,
    authority: Authority,
    hold: Option<TunnelHold>,
) -> Response<ProxyBody> {
    let port = authority.port_u16().unwrap_or(443);
    let mut upstream = match proxy.connector.open_tcp(authority.host(), port).await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::warn!(%client, "{error}");
            return respond::bad_gateway(error.to_string());
        }
    };
    let exchange = tunnel_exchange(&proxy, client, &request, &authority);
    let response = connection_established();
    exchange.responded(response.status().as_u16(), response.headers());
    tokio::spawn(async move {
        // Held until the tunnel closes: a graceful shutdown waits for it,
        // and it keeps its place under the connection limit.
        let _hold = hold;
        let Some(upgraded) = upgrade(request, client).await else {
            return;
        };
        let mut downstream = TokioIo::new(upgraded);
        let copied = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
        if let Err(error) = &copied {
            exchange.fail(format!("tunnel: {error}"));
        }
        let (up, down) = copied.unwrap_or_default();
        exchange.count(Direction::Up, up);
        exchange.count(Direction::Down, down);
    });
    response
}

/// A tunnel as the log and flow log record it: one `CONNECT` exchange
/// with the bytes that went through, unseen.
fn tunnel_exchange(
    proxy: &Proxy,
    client: SocketAddr,
    request: &Request<Incoming>,
    authority: &Authority,
) -> Arc<Exchange> {
    let start = ExchangeStart {
        client,
        method: Method::CONNECT,
        scheme: "tcp".to_owned(),
        host: authority.as_str().to_ascii_lowercase(),
        path: String::new(),
        query: None,
        version: request.version(),
        tls_intercepted: false,
        route: Route::Other,
        action: "tunnel",
    };
    Exchange::begin(
        start,
        request.headers(),
        proxy.stats.clone(),
        proxy.flow_log.clone(),
    )
}

async fn upgrade(
    request: Request<Incoming>,
    client: SocketAddr,
) -> Option<hyper::upgrade::Upgraded> {
    match hyper::upgrade::on(request).await {
        Ok(upgraded) => Some(upgraded),
        Err(error) => {
            tracing::debug!(%client, "tunnel upgrade failed: {error}");
            None
        }
    }
}

fn connection_established() -> Response<ProxyBody> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::OK;
    response
}

/// The `CONNECT` target, which must name both host and port.
fn tunnel_authority(request: &Request<Incoming>) -> Option<Authority> {
    tunnel_target(request.uri().authority()?.as_str())
}

/// Parses a `CONNECT` target: `host:port` with a DNS name or IP address
/// (IPv6 in brackets) and a non-zero port. Anything else is refused
/// before regproxy would mint a certificate or dial out for it.
pub fn tunnel_target(text: &str) -> Option<Authority> {
    let authority: Authority = text.parse().ok()?;
    let port = authority.port_u16().filter(|p| *p != 0)?;
    let host = unbracketed(authority.host());
    let valid_host = rustls::pki_types::ServerName::try_from(host).is_ok();
    (valid_host && port > 0 && !authority.as_str().contains('@')).then_some(authority)
}

/// What an intercepted or tunnelled connection holds for as long as it
/// lives: its place in the graceful shutdown, its connection slot, and
/// the low-water mark of the client's socket beneath it.
pub struct TunnelHold {
    pub watcher: Watcher,
    pub slot: OwnedSemaphorePermit,
    pub low_water: LowWater,
}

struct Tunnel {
    proxy: Arc<Proxy>,
    client: SocketAddr,
    authority: Authority,
    /// Keeps graceful shutdown waiting for this tunnel's requests, and
    /// the tunnel counted under the connection limit.
    hold: Option<TunnelHold>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Tunnel {
    async fn intercept<S>(self, stream: S) -> Result<(), BoxError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut stream = BufReader::with_capacity(crate::tls::TLS_READ_BUFFER, stream);
        let mut first = vec![0u8; 4096];
        let read = tokio::time::timeout(FIRST_BYTES_TIMEOUT, stream.read(&mut first)).await;
        let n = read.map_err(|_| "client sent nothing")??;
        if n == 0 {
            return Ok(());
        }
        first.truncate(n);
        let is_tls = first[0] == TLS_HANDSHAKE_RECORD;
        let stream = Rewind::new(Bytes::from(first), stream);
        if is_tls {
            self.serve_tls(stream).await
        } else {
            self.serve(stream, Scheme::HTTP, false).await
        }
    }

    async fn serve_tls<S>(self, stream: S) -> Result<(), BoxError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let handshake = tokio::time::timeout(FIRST_BYTES_TIMEOUT, acceptor)
            .await
            .map_err(|_| "TLS ClientHello timed out")??;
        // Mint for the name the client verifies: SNI when it sent one,
        // the CONNECT host when it did not (clients omit SNI for IPs).
        let name = handshake
            .client_hello()
            .server_name()
            .unwrap_or(unbracketed(self.authority.host()))
            .to_owned();
        let config = self.proxy.leaves.server_config(&name)?;
        let tls = tokio::time::timeout(FIRST_BYTES_TIMEOUT, handshake.into_stream(config))
            .await
            .map_err(|_| "TLS handshake timed out")??;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        tracing::debug!(client = %self.client, %name, h2, "TLS intercepted");
        self.serve(tls, Scheme::HTTPS, h2).await
    }

    async fn serve<S>(self, stream: S, scheme: Scheme, h2: bool) -> Result<(), BoxError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Tunnel {
            proxy,
            client,
            authority,
            hold,
        } = self;
        // An HTTP/1.1 connection carries one body at a time, so a body may
        // batch the connection's reads; HTTP/2 interleaves streams.
        let low_water = match &hold {
            Some(hold) if !h2 => Some(hold.low_water.clone()),
            _ => None,
        };
        let target = Target {
            scheme,
            authority,
            low_water,
        };
        let service = service_fn(move |request| {
            let (proxy, target) = (proxy.clone(), target.clone());
            async move { Ok::<_, Infallible>(forward(proxy, client, Some(target), request).await) }
        });
        let builder = tunnel_server(h2);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        match hold {
            Some(TunnelHold { watcher, slot, .. }) => {
                let _slot = slot;
                watcher.watch(connection).await
            }
            None => connection.await,
        }
    }
}

fn tunnel_server(h2: bool) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if h2 {
        builder = builder.http2_only();
        builder
            .http2()
            .timer(TokioTimer::new())
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .max_frame_size(H2_MAX_FRAME_SIZE)
            // Pings find dead idle connections, which h2 would keep forever.
            .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    } else {
        builder = builder.http1_only();
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEAD_BYTES);
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_targets_need_a_host_and_a_port() {
        assert!(tunnel_target("registry.test:443").is_some());
        assert!(tunnel_target("10.0.0.1:5000").is_some());
        assert!(tunnel_target("[::1]:5000").is_some());
        for bad in [
            "registry.test",
            ":443",
            "registry.test:0",
            "registry.test:99999",
            "a b:1",
            "user@host:1",
            "bad..name:1",
            "",
        ] {
            assert!(tunnel_target(bad).is_none(), "{bad:?}");
        }
    }
}
