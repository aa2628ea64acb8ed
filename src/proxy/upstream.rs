//! Connections to the real registry: name resolution (with `--resolve`
//! overrides), TCP, TLS verified against the configured roots, and a pool
//! of keep-alive connections shared by every client.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::body::ProxyBody;
use super::unbracketed;

/// Giving up on a registry that does not answer: long enough for a slow
/// network, short enough that a client sees a 502 before its own timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle pooled connections are closed after this, before a registry or a
/// load balancer in front of it is likely to close them under us.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A `--resolve HOST:PORT:ADDR` rule: connect to ADDR for HOST:PORT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveRule {
    pub host: String,
    pub port: u16,
    pub addr: std::net::IpAddr,
}

impl FromStr for ResolveRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || format!("{s:?}: expected HOST:PORT:ADDR, e.g. registry.test:443:127.0.0.1");
        let (host, rest) = s.split_once(':').ok_or_else(usage)?;
        let (port, addr) = rest.split_once(':').ok_or_else(usage)?;
        let addr = super::unbracketed(addr);
        if host.is_empty() {
            return Err(usage());
        }
        Ok(ResolveRule {
            host: host.to_ascii_lowercase(),
            port: port
                .parse()
                .map_err(|_| format!("{s:?}: bad port {port:?}"))?,
            addr: addr
                .parse()
                .map_err(|_| format!("{s:?}: bad address {addr:?}"))?,
        })
    }
}

/// Why regproxy could not open a connection to a registry. Each variant
/// names the host and the step, because that is what the client's 502
/// body and the log line say.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {authority}: cannot resolve host: {source}")]
    Resolve {
        authority: String,
        source: io::Error,
    },
    #[error("upstream {authority}: connect to {addr}: {source}")]
    Connect {
        authority: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("upstream {authority}: no answer within {}s", CONNECT_TIMEOUT.as_secs())]
    Timeout { authority: String },
    #[error("upstream {authority}: TLS handshake: {source}")]
    Tls {
        authority: String,
        source: io::Error,
    },
    #[error("upstream {authority}: not a valid TLS server name")]
    ServerName { authority: String },
    #[error("upstream URI {uri} has no host")]
    NoHost { uri: String },
}

/// The pooled HTTP client every forwarded request goes through.
pub type UpstreamClient = Client<Connector, ProxyBody>;

pub fn client(connector: Connector) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        // Without a timer the idle timeout is only checked on the next
        // request to the same host, and idle sockets pile up.
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        // Never resend a request on our own: a replayed PATCH or PUT would
        // append an upload chunk twice. The forwarder retries only requests
        // without a body.
        .retry_canceled_requests(false)
        .build(connector)
}

/// Opens TCP (and TLS for `https`) connections for the pool.
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    overrides: Arc<HashMap<(String, u16), std::net::IpAddr>>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamStream>;
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, UpstreamError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(uri).await.map(TokioIo::new) })
    }
}

impl Connector {
    pub fn new(tls: Arc<ClientConfig>, resolve: &[ResolveRule]) -> Self {
        let overrides = resolve
            .iter()
            .map(|r| ((r.host.clone(), r.port), r.addr))
            .collect();
        Connector {
            tls: TlsConnector::from(tls),
            overrides: Arc::new(overrides),
        }
    }

    /// A plain TCP connection to `host:port`, `--resolve` applied, for
    /// tunnels regproxy does not intercept.
    pub async fn open_tcp(&self, host: &str, port: u16) -> Result<TcpStream, UpstreamError> {
        let host = unbracketed(host).to_ascii_lowercase();
        let authority = format!("{host}:{port}");
        tokio::time::timeout(CONNECT_TIMEOUT, self.tcp(&host, port, &authority))
            .await
            .map_err(|_| UpstreamError::Timeout {
                authority: authority.clone(),
            })?
    }

    async fn connect(self, uri: Uri) -> Result<UpstreamStream, UpstreamError> {
        let host = uri.host().ok_or_else(|| UpstreamError::NoHost {
            uri: uri.to_string(),
        })?;
        let host = unbracketed(host).to_ascii_lowercase();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = format!("{host}:{port}");
        let timeout = || UpstreamError::Timeout {
            authority: authority.clone(),
        };

        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, self.tcp(&host, port, &authority))
            .await
            .map_err(|_| timeout())??;
        if !https {
            return Ok(UpstreamStream::Plain(tcp));
        }
        let server_name =
            ServerName::try_from(host.clone()).map_err(|_| UpstreamError::ServerName {
                authority: authority.clone(),
            })?;
        let tcp = BufReader::with_capacity(crate::tls::TLS_READ_BUFFER, tcp);
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, self.tls.connect(server_name, tcp))
            .await
            .map_err(|_| timeout())?
            .map_err(|source| UpstreamError::Tls {
                authority: authority.clone(),
                source,
            })?;
        Ok(UpstreamStream::Tls(Box::new(tls)))
    }

    async fn tcp(
        &self,
        host: &str,
        port: u16,
        authority: &str,
    ) -> Result<TcpStream, UpstreamError> {
        let addrs: Vec<SocketAddr> = match self.overrides.get(&(host.to_owned(), port)) {
            Some(ip) => vec![SocketAddr::new(*ip, port)],
            None => tokio::net::lookup_host((host, port))
                .await
                .map_err(|source| UpstreamError::Resolve {
                    authority: authority.into(),
                    source,
                })?
                .collect(),
        };
        let mut last_error = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    // Small request heads (HEAD checks, upload starts) must
                    // not wait for Nagle's timer.
                    let _ = tcp.set_nodelay(true);
                    return Ok(tcp);
                }
                Err(source) => last_error = Some((addr, source)),
            }
        }
        let (addr, source) = last_error.unwrap_or_else(|| {
            let none = io::Error::new(io::ErrorKind::NotFound, "no address");
            (SocketAddr::from(([0, 0, 0, 0], port)), none)
        });
        Err(UpstreamError::Connect {
            authority: authority.into(),
            addr,
            source,
        })
    }
}

/// A connection to a registry, with or without TLS.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<BufReader<TcpStream>>>),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_rule_parses_like_curl() {
        let rule: ResolveRule = "Registry.Test:443:127.0.0.1".parse().unwrap();
        assert_eq!(rule.host, "registry.test");
        assert_eq!(rule.port, 443);
        assert_eq!(rule.addr.to_string(), "127.0.0.1");
        let v6: ResolveRule = "registry.test:5000:[::1]".parse().unwrap();
        assert_eq!(v6.addr.to_string(), "::1");
    }

    #[test]
    fn bad_resolve_rules_say_what_is_wrong() {
        assert!("registry.test"
            .parse::<ResolveRule>()
            .unwrap_err()
            .contains("HOST:PORT:ADDR"));
        assert!("r:x:127.0.0.1"
            .parse::<ResolveRule>()
            .unwrap_err()
            .contains("bad port"));
        assert!("r:1:nowhere"
            .parse::<ResolveRule>()
            .unwrap_err()
            .contains("bad address"));
        assert!(":1:127.0.0.1".parse::<ResolveRule>().is_err());
    }
}
