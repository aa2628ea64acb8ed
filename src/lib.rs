//! regproxy: an intercepting HTTP(S) proxy for container registry traffic.
//!
//! It passes pushes through unchanged, or in skip mode makes clients
//! upload every layer again, for registries that claim blobs they lost.
//!
//! - [`cli`]: command-line flags and their environment variables;
//! - [`config`]: the typed configuration the daemon runs with;
//! - [`daemon`]: `regproxy run`, from bind to shutdown;
//! - [`exec`]: `regproxy exec` and `regproxy env`, pointing clients at it;
//! - [`flow`]: the flow log, and the HAR file and report made from it;
//! - [`logging`]: log output;
//! - [`proxy`]: accept, intercept, forward, respond;
//! - [`redact`]: the one place secrets are hidden before anything is written;
//! - [`registry`]: the registry API's paths and skip mode's decisions;
//! - [`stats`]: counters of what the daemon did;
//! - [`tls`]: the CA, minted leaves, and upstream trust.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod exec;
pub mod flow;
pub mod logging;
pub mod proxy;
pub mod redact;
pub mod registry;
pub mod stats;
pub mod tls;

pub use config::ProxyConfig;
pub use proxy::{serve, Proxy};
