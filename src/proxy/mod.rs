//! The proxy, in the order a connection meets it: [`serve`] accepts it,
//! `CONNECT` tunnels are intercepted in [`connect`], and every request is
//! sent on by [`forward`] through the pooled [`upstream`] client.

pub mod body;
pub mod connect;
pub mod exchange;
pub mod forward;
pub mod respond;
pub mod rewind;
pub mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};

use crate::config::{HostPattern, ProxyConfig};
use crate::flow::writer::FlowLog;
use crate::registry::skip::{SessionMemory, SkipMode};
use crate::stats::{Stats, StatsSnapshot};
use crate::tls::ca::{CaError, CertificateAuthority};
use crate::tls::leaf::LeafCache;
use crate::tls::roots::{self, RootsError, UpstreamTrust};

/// A client must send its request head within this time; a slow or
/// stalled client cannot hold a connection open forever. Bodies have no
/// such limit: a large layer on a slow link takes as long as it takes.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause after a failed accept (usually: out of file descriptors), so the
/// loop does not spin while connections close and free some.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Roots(#[from] RootsError),
    #[error("flow log {path}: {source}")]
    FlowLog {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Everything the connections of one daemon share.
pub struct Proxy {
    skip: SkipMode,
    /// `CONNECT` targets to intercept; empty means all.
    intercept: Vec<HostPattern>,
    leaves: LeafCache,
    /// Opens raw connections for tunnels that are not intercepted.
    connector: upstream::Connector,
    upstream: upstream::UpstreamClient,
    memory: SessionMemory,
    stats: Arc<Stats>,
    flow_log: Option<Arc<FlowLog>>,
}

impl Proxy {
    pub fn new(config: &ProxyConfig) -> Result<Arc<Self>, SetupError> {
        let ca = CertificateAuthority::load_or_create(&config.ca_dir)?;
        let trust = if config.insecure_upstream {
            UpstreamTrust::Insecure
        } else {
            UpstreamTrust::Verify {
                extra_cas: &config.upstream_cas,
            }
        };
        let tls = roots::upstream_client_config(trust)?;
        let connector = upstream::Connector::new(tls, &config.resolve);
        let flow_log = match &config.flow_log {
            Some(path) => Some(Arc::new(FlowLog::open(path).map_err(|source| {
                SetupError::FlowLog {
                    path: path.clone(),
                    source,
                }
            })?)),
            None => None,
        };
        Ok(Arc::new(Self {
            skip: SkipMode {
                layers: config.skip_existing_layers,
                manifests: config.skip_existing_manifests,
            },
            intercept: config.intercept.clone(),
            leaves: LeafCache::new(ca),
            upstream: upstream::client(connector.clone()),
            connector,
            memory: SessionMemory::default(),
            stats: Arc::default(),
            flow_log,
        }))
    }

    /// Whether a `CONNECT` to `host:port` is TLS-terminated.
    fn intercepts(&self, host: &str, port: u16) -> bool {
        self.intercept.is_empty() || self.intercept.iter().any(|p| p.matches(host, port))
    }

    /// The CA certificate clients must trust, as PEM.
    pub fn ca_cert_pem(&self) -> &str {
        self.leaves.ca().cert_pem()
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
}

/// Accepts proxy clients on `listener` until `shutdown` completes, then
/// stops accepting and gives in-flight exchanges up to `drain_timeout`
/// to finish.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => {
                    let outer = graceful.watcher();
                    let inner = graceful.watcher();
                    tokio::spawn(serve_client(proxy.clone(), stream, client, outer, inner));
                }
                Err(error) => {
                    tracing::warn!("accepting a connection failed: {error}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drain(graceful, drain_timeout).await;
}

async fn drain(graceful: GracefulShutdown, drain_timeout: Duration) {
    let open = graceful.count();
    tracing::info!(
        connections = open,
        "shutting down: no new connections, waiting up to {}s for open ones",
        drain_timeout.as_secs()
    );
    match tokio::time::timeout(drain_timeout, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections finished"),
        Err(_) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
}

/// Serves one proxy client: absolute-form requests and `CONNECT`.
/// `outer` watches this connection for graceful shutdown; `inner` is
/// handed to the tunnel if the client opens one, so shutdown also waits
/// for the requests inside it.
async fn serve_client(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    client: SocketAddr,
    outer: Watcher,
    inner: Watcher,
) {
    let _ = stream.set_nodelay(true);
    let inner = Arc::new(Mutex::new(Some(inner)));
    let service = service_fn(move |request: http::Request<_>| {
        let proxy = proxy.clone();
        let inner = inner.clone();
        async move {
            let response = if request.method() == Method::CONNECT {
                let watcher = inner.lock().unwrap_or_else(|e| e.into_inner()).take();
                connect::handle_connect(proxy, client, request, watcher).await
            } else {
                forward::forward(proxy, client, None, request).await
            };
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    if let Err(error) = outer.watch(connection).await {
        tracing::debug!(%client, "client connection ended: {error}");
    }
}
