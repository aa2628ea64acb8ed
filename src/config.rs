//! The daemon's typed configuration: parsed once from flags, environment
//! and an optional TOML file, then trusted everywhere else.
//!
//! Precedence, highest first: a flag on the command line, its `REGPROXY_*`
//! environment variable, the config file, the built-in default.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::proxy::auth::ProxyCredentials;
use crate::proxy::upstream::ResolveRule;

/// How the proxy behaves, independent of where it listens.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Answer blob existence checks with 404 and strip cross-repository
    /// mounts, so clients upload every layer again.
    pub skip_existing_layers: bool,
    /// Answer manifest existence checks with 404, for clients that skip a
    /// whole image when its manifest exists (crane, oras, regctl).
    pub skip_existing_manifests: bool,
    /// Where the CA certificate and key live.
    pub ca_dir: PathBuf,
    /// Extra CA files trusted for upstream TLS, beside the system's roots.
    pub upstream_cas: Vec<PathBuf>,
    /// Accept any upstream certificate.
    pub insecure_upstream: bool,
    /// `HOST:PORT` to address overrides for upstream connections.
    pub resolve: Vec<ResolveRule>,
    /// `CONNECT` targets to intercept; empty means all. Others are
    /// tunnelled byte for byte.
    pub intercept: Vec<HostPattern>,
    /// How long in-flight exchanges may take to finish at shutdown.
    pub drain_timeout: Duration,
    /// Where to append one JSON line per exchange.
    pub flow_log: Option<PathBuf>,
    /// Credentials every client must send; required off loopback.
    pub proxy_auth: Option<ProxyCredentials>,
    /// The most client connections served at once; more wait.
    pub max_connections: usize,
}

impl ProxyConfig {
    /// A pass-through proxy keeping its CA in `ca_dir`, everything else at
    /// its default.
    pub fn new(ca_dir: PathBuf) -> Self {
        Self {
            skip_existing_layers: false,
            skip_existing_manifests: false,
            ca_dir,
            upstream_cas: Vec::new(),
            insecure_upstream: false,
            resolve: Vec::new(),
            intercept: Vec::new(),
            drain_timeout: Duration::from_secs(30),
            flow_log: None,
            proxy_auth: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }

    /// The words the startup line uses for the mode.
    pub fn mode(&self) -> &'static str {
        match (self.skip_existing_layers, self.skip_existing_manifests) {
            (false, false) => "pass-through",
            (true, false) => "skip-existing-layers",
            (false, true) => "skip-existing-manifests",
            (true, true) => "skip-existing-layers+manifests",
        }
    }
}

/// Enough for a CI runner's parallel pushes many times over, well within
/// the file descriptors a daemon can open (each connection may hold two).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The default CA directory: the user's data directory, e.g.
/// `~/.local/share/regproxy`.
pub fn default_ca_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("regproxy")
}

/// A `--intercept HOST[:PORT]` pattern. `*` in the host matches any run of
/// characters, dots included; no port matches every port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: String,
    port: Option<u16>,
}

impl HostPattern {
    pub fn matches(&self, host: &str, port: u16) -> bool {
        self.port.is_none_or(|p| p == port) && glob_matches(&self.host, &host.to_ascii_lowercase())
    }
}

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = match s.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => {
                let port = port
                    .parse()
                    .map_err(|_| format!("{s:?}: bad port {port:?}"))?;
                (host, Some(port))
            }
            _ => (s, None),
        };
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*' | '_');
        if host.is_empty() || !host.chars().all(valid) {
            return Err(format!("{s:?}: expected HOST[:PORT], `*` allowed in HOST"));
        }
        Ok(HostPattern {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut remaining) = text.strip_prefix(first) else {
        return false;
    };
    let mut pieces: Vec<&str> = rest.split('*').collect();
    let last = pieces.pop().unwrap_or("");
    for piece in pieces {
        match remaining.find(piece) {
            Some(at) => remaining = &remaining[at + piece.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for ResolveRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The config file: every `regproxy run` option, all optional. Keys are
/// the flags' names with `_` for `-`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<std::net::SocketAddr>,
    pub skip_existing_layers: Option<bool>,
    pub skip_existing_manifests: Option<bool>,
    pub ca_dir: Option<PathBuf>,
    pub upstream_ca: Option<Vec<PathBuf>>,
    pub insecure_upstream: Option<bool>,
    pub resolve: Option<Vec<ResolveRule>>,
    pub intercept: Option<Vec<HostPattern>>,
    pub drain_timeout: Option<u64>,
    pub flow_log: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub proxy_auth: Option<String>,
    pub proxy_auth_file: Option<PathBuf>,
    pub allow_unauthenticated: Option<bool>,
    pub max_connections: Option<usize>,
}

/// How the daemon writes its own log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("proxy credentials file {path}: {source}")]
    ReadCredentials {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("proxy credentials file {path}: {message}")]
    ParseCredentials { path: PathBuf, message: String },
    #[error("{option} must be at least 1")]
    Zero { option: &'static str },
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text; the error names the key, its line and the reason.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> HostPattern {
        s.parse().unwrap()
    }

    #[test]
    fn host_patterns_match_hosts_and_ports() {
        assert!(pattern("registry.test").matches("registry.test", 443));
        assert!(pattern("registry.test").matches("Registry.Test", 5000));
        assert!(pattern("registry.test:5000").matches("registry.test", 5000));
        assert!(!pattern("registry.test:5000").matches("registry.test", 443));
        assert!(pattern("*.example.com").matches("eu.reg.example.com", 443));
        assert!(!pattern("*.example.com").matches("example.com", 443));
        assert!(pattern("reg*.test").matches("registry.test", 1));
        assert!(!pattern("reg*.test").matches("auth.test", 1));
        assert!(pattern("*").matches("anything", 1));
        assert!(pattern("a*b*c").matches("a-x-b-y-c", 1));
        assert!(!pattern("a*b*c").matches("a-c-b", 1));
    }

    #[test]
    fn bad_host_patterns_are_rejected() {
        assert!("".parse::<HostPattern>().is_err());
        assert!("reg.test:http".parse::<HostPattern>().is_err());
        assert!("reg test".parse::<HostPattern>().is_err());
    }

    #[test]
    fn file_with_an_unknown_key_names_it() {
        let error =
            FileConfig::parse("listen = \"127.0.0.1:1\"\nskip_layers = true\n").unwrap_err();
        assert!(error.contains("skip_layers"), "{error}");
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn file_with_a_bad_value_names_key_and_reason() {
        let error = FileConfig::parse("resolve = [\"registry.test\"]\n").unwrap_err();
        assert!(error.contains("resolve"), "{error}");
        assert!(error.contains("HOST:PORT:ADDR"), "{error}");
        let error = FileConfig::parse("drain_timeout = \"soon\"\n").unwrap_err();
        assert!(error.contains("drain_timeout"), "{error}");
    }

    #[test]
    fn example_config_parses_with_every_key() {
        let example = include_str!("../config/regproxy.toml");
        FileConfig::parse(example).expect("example parses as shipped");
        // Commented-out keys must be valid too, once uncommented.
        let uncommented: String = example
            .lines()
            .map(
                |line| match line.strip_prefix("# ").and_then(|r| r.split_once(" = ")) {
                    Some((key, _)) if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') => {
                        &line[2..]
                    }
                    _ => line,
                },
            )
            .collect::<Vec<_>>()
            .join("\n");
        let all = FileConfig::parse(&uncommented).expect("uncommented example parses");
        assert!(all.listen.is_some() && all.skip_existing_layers.is_some());
        assert!(all.skip_existing_manifests.is_some() && all.ca_dir.is_some());
        assert!(all.upstream_ca.is_some() && all.insecure_upstream.is_some());
        assert!(all.resolve.is_some() && all.intercept.is_some());
        assert!(all.drain_timeout.is_some() && all.flow_log.is_some());
        assert!(all.log_format.is_some() && all.proxy_auth_file.is_some());
        assert!(all.allow_unauthenticated.is_some() && all.max_connections.is_some());
    }
}
