//! The daemon's typed configuration, parsed once from the command line and
//! environment, then trusted everywhere else.

use std::path::PathBuf;
use std::time::Duration;

use crate::proxy::upstream::ResolveRule;

/// How the proxy behaves, independent of where it listens.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Answer blob existence checks with 404 and strip cross-repository
    /// mounts, so clients upload every layer again.
    pub skip_existing_layers: bool,
    /// Where the CA certificate and key live.
    pub ca_dir: PathBuf,
    /// Extra CA files trusted for upstream TLS, beside the system's roots.
    pub upstream_cas: Vec<PathBuf>,
    /// Accept any upstream certificate.
    pub insecure_upstream: bool,
    /// `HOST:PORT` to address overrides for upstream connections.
    pub resolve: Vec<ResolveRule>,
    /// How long in-flight exchanges may take to finish at shutdown.
    pub drain_timeout: Duration,
}

impl ProxyConfig {
    /// A pass-through proxy keeping its CA in `ca_dir`, everything else at
    /// its default.
    pub fn new(ca_dir: PathBuf) -> Self {
        Self {
            skip_existing_layers: false,
            ca_dir,
            upstream_cas: Vec::new(),
            insecure_upstream: false,
            resolve: Vec::new(),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// The default CA directory: the user's data directory, e.g.
/// `~/.local/share/regproxy`.
pub fn default_ca_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("regproxy")
}
