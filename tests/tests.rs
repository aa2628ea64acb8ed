//! One integration test binary (one link on a small machine). Tests that
//! need the real registry and clients skip with a message when they are
//! missing, and fail instead under `REGPROXY_E2E=require`.

// Shared with the benchmarks, which use parts the tests do not.
#[allow(dead_code)]
mod support;

mod blob_protocol;
mod cli;
mod containerd_push;
mod exec;
mod flow_log;
mod fuzz;
mod hardening;
mod integrity;
mod intercept;
mod manifest_shortcut;
mod skopeo_push;
mod upstream_failures;
