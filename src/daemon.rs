//! `regproxy run`: bind, say what we are, serve until a signal.

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::cli::Settings;
use crate::proxy::{self, Proxy};
use crate::tls::ca::CertificateAuthority;

/// Validates the settings as `run` would (CA, upstream trust), then stops.
pub fn check(settings: &Settings) -> anyhow::Result<()> {
    check_exposure(settings)?;
    Proxy::new(&settings.proxy)?;
    println!(
        "configuration OK: listen {}, mode {}, CA {}",
        settings.listen,
        settings.proxy.mode(),
        CertificateAuthority::cert_path(&settings.proxy.ca_dir).display()
    );
    Ok(())
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    check_exposure(&settings)?;
    raise_open_file_limit();
    let signals = Signals::install().context("cannot install signal handlers")?;
    let config = settings.proxy;
    let proxy = Proxy::new(&config)?;
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %listener.local_addr()?,
        mode = config.mode(),
        ca = %CertificateAuthority::cert_path(&config.ca_dir).display(),
        "regproxy started"
    );
    if !config.intercept.is_empty() {
        let hosts: Vec<String> = config.intercept.iter().map(ToString::to_string).collect();
        tracing::info!(
            "intercepting only {}; tunnelling every other host untouched",
            hosts.join(", ")
        );
    }
    if config.insecure_upstream {
        tracing::warn!(
            "--insecure-upstream: upstream registry certificates are NOT verified; \
             anyone on the network path can read and alter this traffic"
        );
    }
    let drain = proxy::Drain::within(config.drain_timeout);
    proxy::serve(proxy, listener, shutdown_signal(signals), drain).await;
    Ok(())
}

/// Off loopback, regproxy would be an open proxy to anyone who can reach
/// it: that needs proxy credentials, or an explicit say-so.
fn check_exposure(settings: &Settings) -> anyhow::Result<()> {
    if settings.listen.ip().is_loopback() || settings.proxy.proxy_auth.is_some() {
        return Ok(());
    }
    if !settings.allow_unauthenticated {
        anyhow::bail!(
            "refusing to listen on {} without --proxy-auth: anyone who can reach it could use \
             it as a proxy (give --proxy-auth or --proxy-auth-file, or \
             --allow-unauthenticated to accept that)",
            settings.listen
        );
    }
    tracing::warn!(
        "listening on {} without proxy authentication: anyone who can reach it can use it",
        settings.listen
    );
    Ok(())
}

/// Each proxied connection can hold two file descriptors; the soft limit
/// is often far below what the system allows this process.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we
    // pass, which lives on this stack frame.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// SIGINT and SIGTERM, caught from before the daemon says it started, so
/// a signal that comes right after the banner still drains gracefully.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// Completes on the first signal. A second one during the drain ends the
/// process at once.
async fn shutdown_signal(mut signals: Signals) {
    let first = signals.next().await;
    tracing::info!("{first} received");
    tokio::spawn(async move {
        let second = signals.next().await;
        tracing::warn!("second {second}: exiting without draining");
        std::process::exit(130);
    });
}
