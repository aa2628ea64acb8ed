//! Log output: human-readable lines on stderr, filtered by `RUST_LOG`
//! (default `info`, `warn` under `exec`).
//!
//! Secrets stay out by construction: regproxy logs named fields (method,
//! host, path without its query, status, sizes), never a header map or a
//! query string, so `Authorization`, cookies and tokens never reach a log.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Starts logging at `default_level` unless `RUST_LOG` says otherwise.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
