//! The daemon's own log: lines on stderr, for people (`text`) or for log
//! collectors (`json`), filtered by `RUST_LOG`.
//!
//! Secrets stay out by construction: regproxy logs named fields (method,
//! host, path without its query, status, sizes), never a header map or a
//! query string, so `Authorization`, cookies and tokens never reach a log.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Starts logging at `default_level` unless `RUST_LOG` says otherwise.
pub fn init(default_level: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}
