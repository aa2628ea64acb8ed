//! Pointing a client at regproxy: `regproxy exec -- CMD` runs a command
//! behind a proxy of its own, and `regproxy env` prints the variables for
//! a daemon that is already running.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::cli::Settings;
use crate::proxy::{self, Proxy};
use crate::tls::bundle::write_bundle;
use crate::tls::ca::CertificateAuthority;

/// After the command exits its requests are done: no quiet period, and a
/// short bound on the wait for a client that left a connection half open.
const EXEC_DRAIN: proxy::Drain = proxy::Drain {
    timeout: Duration::from_secs(2),
    quiet: Duration::ZERO,
};

/// Runs `command` behind a fresh proxy and returns the exit code to leave
/// with: the command's own, or 128 + the signal that killed it.
pub async fn run(settings: Settings, command: Vec<OsString>) -> anyhow::Result<u8> {
    let (program, args) = command.split_first().context("no command to run")?;
    let proxy = Proxy::new(&settings.proxy)?;
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let bundle_dir = tempfile::Builder::new()
        .prefix("regproxy-exec-")
        .tempdir()?;
    let bundle = bundle_dir.path().join("ca-bundle.pem");
    write_bundle(&bundle, proxy.ca_cert_pem()).context("writing the CA bundle")?;

    let no_proxy = std::env::var("NO_PROXY")
        .or_else(|_| std::env::var("no_proxy"))
        .ok();
    for warning in bypass_warnings(&command, no_proxy.as_deref()) {
        tracing::warn!("{warning}");
    }

    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    let server = tokio::spawn(proxy::serve(proxy.clone(), listener, shutdown, EXEC_DRAIN));
    let started = Instant::now();
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .envs(proxy_variables(addr))
        .env("SSL_CERT_FILE", &bundle)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            // As a shell would: 127 for a command not found, 126 otherwise.
            eprintln!(
                "regproxy: cannot run {}: {error}",
                program.to_string_lossy()
            );
            return Ok(if error.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    let status = wait_forwarding_signals(&mut child).await?;

    let _ = stop.send(());
    let _ = server.await;
    eprintln!(
        "regproxy: {} in {:.1}s",
        proxy.stats(),
        started.elapsed().as_secs_f64()
    );
    Ok(exit_code(status))
}

/// `regproxy env`: shell lines pointing clients at the daemon that these
/// settings describe. Writes the CA bundle beside the CA.
pub fn print_env(settings: &Settings) -> anyhow::Result<()> {
    let ca_dir = &settings.proxy.ca_dir;
    let ca = CertificateAuthority::load_or_create(ca_dir)?;
    let bundle = ca_dir.join("ca-bundle.pem");
    write_bundle(&bundle, ca.cert_pem())
        .with_context(|| format!("writing {}", bundle.display()))?;
    let addr = client_address(settings.listen);
    if TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err() {
        eprintln!("regproxy: warning: nothing is listening on {addr}; start `regproxy run` first");
    }
    print!("{}", shell_lines(addr, &bundle));
    Ok(())
}

/// The proxy variables every client reads, upper and lower case.
fn proxy_variables(addr: SocketAddr) -> Vec<(&'static str, String)> {
    let url = format!("http://{addr}");
    ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"]
        .into_iter()
        .map(|name| (name, url.clone()))
        .collect()
}

fn shell_lines(addr: SocketAddr, bundle: &Path) -> String {
    let mut lines: String = proxy_variables(addr)
        .into_iter()
        .map(|(name, value)| format!("export {name}={value}\n"))
        .collect();
    let bundle = bundle.display().to_string().replace('\'', r"'\''");
    lines.push_str(&format!("export SSL_CERT_FILE='{bundle}'\n"));
    lines
}

/// A daemon listening on every address is reached on loopback.
fn client_address(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], listen.port())),
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], listen.port()))
        }
        _ => listen,
    }
}

async fn wait_forwarding_signals(child: &mut tokio::process::Child) -> anyhow::Result<ExitStatus> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            status = child.wait() => return Ok(status?),
            _ = interrupt.recv() => forward_signal(child.id(), libc::SIGINT),
            _ = terminate.recv() => forward_signal(child.id(), libc::SIGTERM),
        }
    }
}

fn forward_signal(pid: Option<u32>, signal: libc::c_int) {
    let Some(pid) = pid.and_then(|pid| libc::pid_t::try_from(pid).ok()) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours;
    // the pid is our own child's, which we have not reaped yet.
    unsafe {
        libc::kill(pid, signal);
    }
}

fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

/// Warnings for pushes that would go around the proxy: a registry on
/// `localhost` or a loopback IP (Go clients never proxy those), or one
/// that `NO_PROXY` sends direct.
pub fn bypass_warnings(command: &[OsString], no_proxy: Option<&str>) -> Vec<String> {
    let mut warnings = Vec::new();
    for (host, port) in command
        .iter()
        .filter_map(|arg| registry_host(&arg.to_string_lossy()))
    {
        let shown = port.map_or(host.clone(), |p| format!("{host}:{p}"));
        if is_loopback(&host) {
            let port = port.unwrap_or(443);
            warnings.push(format!(
                "{shown} is a loopback address: Go clients connect to localhost and \
                 loopback IPs directly, never through a proxy, so regproxy will not \
                 see this push. Give the registry a name and map it, e.g. \
                 registry.test:{port} with --resolve registry.test:{port}:127.0.0.1"
            ));
        }
        if let Some(entry) = no_proxy.and_then(|list| no_proxy_match(list, &host, port)) {
            warnings.push(format!(
                "NO_PROXY entry {entry:?} matches {shown}: the client will connect to it \
                 directly, around regproxy. Remove the entry for this command."
            ));
        }
    }
    warnings
}

/// The registry host of an image reference argument (`docker://h/r:t`,
/// `h:5000/r:t`), using docker's rule: the first path component is a host
/// when it has a `.` or a `:`, or is `localhost`.
fn registry_host(arg: &str) -> Option<(String, Option<u16>)> {
    if arg.starts_with('-') {
        return None;
    }
    let reference = arg.strip_prefix("docker://").unwrap_or(arg);
    if reference.contains("://") {
        return None;
    }
    let (first, _) = reference.split_once('/')?;
    let (host, port) = match first.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port.parse().ok()?)),
        _ => (first, None),
    };
    let host = crate::proxy::unbracketed(host);
    let hostlike = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    let registry =
        host.contains('.') || port.is_some() || host == "localhost" || host.contains(':');
    (hostlike && registry && !host.is_empty()).then(|| (host.to_ascii_lowercase(), port))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The `NO_PROXY` entry that sends `host` direct, as Go reads the list:
/// `*`, an exact host, `host:port`, or a domain suffix (`.example.com`
/// or `example.com` both match `reg.example.com`).
fn no_proxy_match(list: &str, host: &str, port: Option<u16>) -> Option<String> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .find_map(|entry| {
            let (name, entry_port) = match entry.rsplit_once(':') {
                Some((name, p)) if !name.contains(':') => (name, p.parse::<u16>().ok()),
                _ => (entry, None),
            };
            if entry_port.is_some_and(|p| Some(p) != port) {
                return None;
            }
            let name = name
                .trim_start_matches("*.")
                .trim_start_matches('.')
                .to_ascii_lowercase();
            let matches = entry == "*" || host == name || host.ends_with(&format!(".{name}"));
            matches.then(|| entry.to_owned())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn registry_hosts_are_found_in_references() {
        assert_eq!(
            registry_host("docker://reg.test:5000/a/b:1"),
            Some(("reg.test".into(), Some(5000)))
        );
        assert_eq!(
            registry_host("reg.test/a:1"),
            Some(("reg.test".into(), None))
        );
        assert_eq!(
            registry_host("localhost/a"),
            Some(("localhost".into(), None))
        );
        assert_eq!(
            registry_host("127.0.0.1:5000/a"),
            Some(("127.0.0.1".into(), Some(5000)))
        );
        assert_eq!(registry_host("team/app:1"), None);
        assert_eq!(registry_host("oci:./image:1"), None);
        assert_eq!(registry_host("--dest-cert-dir=/x/y"), None);
        assert_eq!(registry_host("https://reg.test/v2/"), None);
    }

    #[test]
    fn loopback_registry_gets_a_resolve_hint() {
        let warnings = bypass_warnings(
            &args(&["skopeo", "copy", "oci:x:1", "docker://localhost:5000/a:1"]),
            None,
        );
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("--resolve registry.test:5000:127.0.0.1"),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn no_proxy_entries_that_bypass_are_named() {
        let command = args(&["crane", "push", "x.tar", "eu.reg.example.com/app:1"]);
        for list in [
            "*",
            ".example.com",
            "example.com",
            "other.test,eu.reg.example.com",
        ] {
            let warnings = bypass_warnings(&command, Some(list));
            assert_eq!(warnings.len(), 1, "{list}");
            assert!(warnings[0].contains("NO_PROXY"), "{}", warnings[0]);
        }
        for list in ["", "other.test", "xample.com", "eu.reg.example.com:5000"] {
            assert!(bypass_warnings(&command, Some(list)).is_empty(), "{list}");
        }
    }

    #[test]
    fn shell_lines_export_proxy_and_bundle() {
        let lines = shell_lines("127.0.0.1:3128".parse().unwrap(), Path::new("/x/it's.pem"));
        assert!(lines.contains("export HTTPS_PROXY=http://127.0.0.1:3128\n"));
        assert!(lines.contains("export http_proxy=http://127.0.0.1:3128\n"));
        assert!(lines.contains(r"export SSL_CERT_FILE='/x/it'\''s.pem'"));
    }

    #[test]
    fn unspecified_listen_address_is_reached_on_loopback() {
        assert_eq!(
            client_address("0.0.0.0:3128".parse().unwrap()).to_string(),
            "127.0.0.1:3128"
        );
        assert_eq!(
            client_address("[::]:1".parse().unwrap()).to_string(),
            "[::1]:1"
        );
    }
}
