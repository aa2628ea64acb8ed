//! Server-side TLS configs for intercepted hosts, one per host name,
//! minted on first use and kept until the leaf nears its expiry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::ServerConfig;
use time::{Duration, OffsetDateTime};

use super::ca::{CaError, CertificateAuthority};

/// A cached leaf is replaced once it has less than this left to live, so
/// a long-running daemon never presents an expired certificate.
const RENEW_BEFORE_EXPIRY: Duration = Duration::days(7);

/// At most this many hosts keep a minted leaf. Any client can make
/// regproxy mint for any name, so the cache must not grow without bound;
/// past it, the entry closest to renewal makes room.
const MAX_CACHED_HOSTS: usize = 1024;

/// ALPN protocols offered to clients, in order of preference. Go clients
/// that enable HTTP/2 (crane, oras, regctl) pick `h2`.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

struct CachedConfig {
    config: Arc<ServerConfig>,
    renew_at: OffsetDateTime,
}

pub struct LeafCache {
    ca: CertificateAuthority,
    configs: Mutex<HashMap<String, CachedConfig>>,
}

impl LeafCache {
    pub fn new(ca: CertificateAuthority) -> Self {
        Self {
            ca,
            configs: Mutex::new(HashMap::new()),
        }
    }

    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The TLS config presenting a certificate for `host`.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        let host = host.to_ascii_lowercase();
        let now = OffsetDateTime::now_utc();
        if let Some(cached) = self.lock().get(&host) {
            if now < cached.renew_at {
                return Ok(cached.config.clone());
            }
        }
        // Minted outside the lock: two first requests for one host may
        // both mint, which is harmless, while other hosts never wait.
        let leaf = self.ca.mint_leaf(&host)?;
        let mint_error = |source| CaError::ServerConfig {
            host: host.clone(),
            source,
        };
        let mut config = ServerConfig::builder_with_provider(super::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(mint_error)?
            .with_no_client_auth()
            .with_single_cert(leaf.chain, leaf.key)
            .map_err(mint_error)?;
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        let config = Arc::new(config);
        let renew_at = leaf.not_after - RENEW_BEFORE_EXPIRY;
        let mut configs = self.lock();
        if configs.len() >= MAX_CACHED_HOSTS && !configs.contains_key(&host) {
            let oldest = configs
                .iter()
                .min_by_key(|(_, c)| c.renew_at)
                .map(|(h, _)| h.clone());
            if let Some(oldest) = oldest {
                configs.remove(&oldest);
            }
        }
        configs.insert(
            host,
            CachedConfig {
                config: config.clone(),
                renew_at,
            },
        );
        Ok(config)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedConfig>> {
        // Entries are inserted whole, so a poisoned map is still consistent.
        self.configs.lock().unwrap_or_else(|e| e.into_inner())
    }
}
