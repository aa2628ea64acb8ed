//! TLS on both sides of an intercepted tunnel.
//!
//! - [`bundle`]: a CA bundle file for clients that take one;
//! - [`ca`]: regproxy's certificate authority and leaf minting;
//! - [`leaf`]: who regproxy is to the client, one cached config per host;
//! - [`roots`]: whom regproxy trusts upstream.

pub mod bundle;
pub mod ca;
pub mod leaf;
pub mod roots;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// Socket reads are made this large on TLS connections. rustls asks its
/// transport for at most 4 KiB at a time; a buffer in between turns those
/// into a quarter as many system calls per layer, or fewer.
pub const TLS_READ_BUFFER: usize = 32 << 10;

/// The one crypto provider regproxy uses, named explicitly so no other
/// dependency's default can change it. AES-128-GCM comes first: as safe
/// for this purpose, and a third cheaper than AES-256 on every byte of
/// every layer.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    let preferred = [
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ];
    provider
        .cipher_suites
        .sort_by_key(|suite| !preferred.contains(&suite.suite()));
    Arc::new(provider)
}
