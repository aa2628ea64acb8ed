//! The proxy, in the order a connection meets it: [`listener`] accepts it
//! (and [`auth`] checks it), `CONNECT` tunnels are intercepted in
//! [`connect`], and every request is sent on by [`forward`] through the
//! pooled [`upstream`] client. [`exchange`] records each request, [`body`]
//! streams it, [`respond`] writes regproxy's own answers.

pub mod auth;
pub mod body;
pub mod connect;
pub mod exchange;
pub mod forward;
pub mod listener;
pub mod respond;
pub mod rewind;
pub mod socket;
pub mod upstream;
pub mod wait;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::config::{HostPattern, ProxyConfig};
use crate::flow::writer::FlowLog;
use crate::registry::skip::{SessionMemory, SkipMode};
use crate::stats::{Stats, StatsSnapshot};
use crate::tls::ca::{CaError, CertificateAuthority};
use crate::tls::leaf::LeafCache;
use crate::tls::roots::{self, RootsError, UpstreamTrust};
use upstream::ResolveRule;

pub use listener::{serve, Drain};

/// A client must send its request head within this time; a slow or
/// stalled client cannot hold a connection open forever. Bodies have no
/// such limit: a large layer on a slow link takes as long as it takes.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// hyper's read buffer: large reads of a body mean fewer calls per layer.
/// It also bounds a request head: one larger gets 431. Registry requests
/// carry heads of a few KiB.
pub const MAX_HEAD_BYTES: usize = 256 << 10;

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

/// A host as it is resolved and named in certificates: an IPv6 literal
/// without the brackets it wears in URLs and `CONNECT` targets.
pub fn unbracketed(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Everything the connections of one daemon share.
pub struct Proxy {
    skip: SkipMode,
    /// Credentials clients must send; `None`: no proxy authentication.
    auth: Option<auth::ProxyCredentials>,
    max_connections: usize,
    /// Where regproxy itself listens, to refuse requests that loop back.
    own_addr: OnceLock<SocketAddr>,
    resolve: Vec<ResolveRule>,
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
            auth: config.proxy_auth.clone(),
            max_connections: config.max_connections,
            own_addr: OnceLock::new(),
            resolve: config.resolve.clone(),
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

    /// Whether `host:port` is regproxy's own listening address, where a
    /// forwarded request would come straight back in.
    fn is_own_address(&self, host: &str, port: u16) -> bool {
        let Some(own) = self.own_addr.get() else {
            return false;
        };
        if port != own.port() {
            return false;
        }
        let host = unbracketed(host).to_ascii_lowercase();
        let overridden = self
            .resolve
            .iter()
            .find(|r| r.host == host && r.port == port);
        let ip: Option<IpAddr> = overridden.map(|r| r.addr).or_else(|| host.parse().ok());
        match ip {
            Some(ip) => ip == own.ip() || ip.is_loopback() || ip.is_unspecified(),
            None => host == "localhost",
        }
    }
}
