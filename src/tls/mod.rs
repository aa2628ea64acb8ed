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

/// The one crypto provider regproxy uses, named explicitly so no other
/// dependency's default can change it.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
