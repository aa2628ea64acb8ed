//! The real parts the end-to-end tests run: the registry, regproxy itself
//! (in-process, on port 0), and real clients (skopeo, curl). Each starts
//! on a free port and stops when dropped.

pub mod containerd;
pub mod daemon;
pub mod image;
pub mod load;
pub mod registry;
pub mod relay;
pub mod skopeo;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::thread::JoinHandle;

use regproxy::proxy::upstream::ResolveRule;
use regproxy::stats::StatsSnapshot;
use regproxy::{Proxy, ProxyConfig};
use tokio::sync::oneshot;

/// The name the test registry goes by. Go clients never proxy `localhost`
/// or loopback addresses, so the registry gets a name that only regproxy
/// resolves (with `--resolve`).
pub const REGISTRY_HOST: &str = "registry.test";

/// Whether the binaries an end-to-end test needs are installed. When one
/// is missing the test is skipped with a message, unless
/// `REGPROXY_E2E=require`, where a missing binary fails the test.
pub fn have(binaries: &[&str]) -> bool {
    let missing: Vec<&str> = binaries
        .iter()
        .copied()
        .filter(|b| which(b).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "end-to-end test needs {} (not installed)",
        missing.join(", ")
    );
    if std::env::var("REGPROXY_E2E").as_deref() == Ok("require") {
        panic!("{message}; REGPROXY_E2E=require makes this a failure");
    }
    eprintln!("SKIPPED: {message}; set REGPROXY_E2E=require to fail instead");
    false
}

pub fn which(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

/// regproxy running in-process on `127.0.0.1:0`, with its own CA in a
/// temporary directory. Stops when dropped.
pub struct RunningProxy {
    pub addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    pub ca_dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
pub struct ProxyOptions {
    pub skip_existing_layers: bool,
    pub skip_existing_manifests: bool,
    /// `--intercept` patterns; empty intercepts every host.
    pub intercept: Vec<&'static str>,
    pub upstream_ca: Option<PathBuf>,
    /// Ports of `registry.test` that regproxy resolves to 127.0.0.1.
    pub resolve_ports: Vec<u16>,
    pub flow_log: Option<PathBuf>,
}

impl RunningProxy {
    pub fn start(options: ProxyOptions) -> RunningProxy {
        let ca_dir = tempfile::tempdir().unwrap();
        let mut config = ProxyConfig::new(ca_dir.path().to_owned());
        config.skip_existing_layers = options.skip_existing_layers;
        config.skip_existing_manifests = options.skip_existing_manifests;
        config.intercept = options
            .intercept
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        config.upstream_cas = options.upstream_ca.into_iter().collect();
        config.flow_log = options.flow_log;
        config.resolve = options
            .resolve_ports
            .iter()
            .map(|port| ResolveRule {
                host: REGISTRY_HOST.into(),
                port: *port,
                addr: "127.0.0.1".parse().unwrap(),
            })
            .collect();
        let proxy = Proxy::new(&config).expect("proxy starts");
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = proxy.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let shutdown = async move {
                    let _ = stopped.await;
                };
                let drain = regproxy::proxy::Drain::within(std::time::Duration::from_secs(5));
                regproxy::serve(serving, listener, shutdown, drain).await;
            });
        });
        RunningProxy {
            addr,
            proxy,
            ca_dir,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The directory holding only `ca.crt`, as skopeo's `--cert-dir` wants.
    pub fn cert_dir(&self) -> &Path {
        self.ca_dir.path()
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.ca_dir.path().join("ca.crt")
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.proxy.stats()
    }

    /// A proxy for `registry`: its name resolved, its test CA trusted.
    pub fn for_registry(registry: &registry::Registry, skip_existing_layers: bool) -> RunningProxy {
        RunningProxy::start(ProxyOptions {
            skip_existing_layers,
            upstream_ca: registry.ca_file.clone(),
            resolve_ports: vec![registry.port],
            ..ProxyOptions::default()
        })
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs a command, returning its output; panics with its stderr if it
/// could not start at all.
pub fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// Runs a command that must succeed.
pub fn run_ok(command: &mut Command) -> Output {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `skopeo` with the proxy in its environment (and nothing of the test
/// process's own proxy settings).
pub fn skopeo(proxy: &RunningProxy) -> Command {
    let mut command = Command::new("skopeo");
    without_proxy_settings(&mut command);
    command
        .env("HTTPS_PROXY", proxy.url())
        .env("HTTP_PROXY", proxy.url());
    command
}

/// Clears the proxy variables a client would inherit from the test run,
/// so that only the ones a test sets apply.
pub fn without_proxy_settings(command: &mut Command) -> &mut Command {
    for var in [
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "https_proxy",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        command.env_remove(var);
    }
    command
}

/// `curl` through the proxy, trusting regproxy's CA, printing only the
/// status code unless asked for more.
pub fn curl(proxy: &RunningProxy) -> Command {
    curl_trusting(proxy, &proxy.ca_cert())
}

/// `curl` through the proxy, trusting only the CA in `ca_file`.
pub fn curl_trusting(proxy: &RunningProxy, ca_file: &Path) -> Command {
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--show-error", "--noproxy", ""])
        .arg("--proxy")
        .arg(proxy.url())
        .arg("--cacert")
        .arg(ca_file);
    command
}

/// What curl got back.
#[derive(Debug)]
pub struct CurlResponse {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl CurlResponse {
    /// The value of the last response header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .lines()
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|line| line.split_once(':'))
            .filter(|(key, _)| key.trim().eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim().to_owned())
            .next_back()
    }
}

/// Runs curl, capturing status, the final response's headers and body.
pub fn curl_exchange(command: &mut Command) -> CurlResponse {
    let dir = tempfile::tempdir().unwrap();
    let (headers, body) = (dir.path().join("headers"), dir.path().join("body"));
    command
        .arg("--dump-header")
        .arg(&headers)
        .arg("--output")
        .arg(&body)
        .args(["--write-out", "%{http_code}"]);
    let output = run(command);
    let status = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| {
            panic!(
                "curl printed no status: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let headers = std::fs::read_to_string(headers).unwrap_or_default();
    // Only the last response's headers: curl also dumps `100 Continue`.
    let last = headers
        .rsplit("\r\n\r\n")
        .find(|h| !h.trim().is_empty())
        .unwrap_or("");
    CurlResponse {
        status,
        headers: last.to_owned(),
        body: std::fs::read_to_string(body).unwrap_or_default(),
    }
}

/// Runs curl with `-w '%{http_code}'` and returns the status code.
pub fn curl_status(command: &mut Command) -> u16 {
    command.args(["--output", "/dev/null", "--write-out", "%{http_code}"]);
    let output = run(command);
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl printed no status: {output:?}"))
}
