//! Push benchmark: a forced re-push through regproxy against a direct push
//! of the same image, in the same run, to the real registry over TLS.
//!
//! ```text
//! cargo bench --bench push                          # 4 layers of 256 MiB, 3 runs
//! REGPROXY_BENCH_QUICK=1 cargo bench --bench push   # 2 layers of 8 MiB, 1 run
//! ```
//!
//! `REGPROXY_BENCH_LAYERS`, `REGPROXY_BENCH_LAYER_MIB` and
//! `REGPROXY_BENCH_RUNS` override the shape; `REGPROXY_BENCH_ONLY`
//! (`skopeo`, `mitmproxy`, `ctr`, comma-separated) picks the clients.
//! Scenarios alternate run by run, so a machine that slows down
//! mid-benchmark slows all of them.
//! Every push goes to a fresh registry: a direct push uploads every layer
//! as new; a forced push goes to a registry that already holds the image
//! and uploads every layer again because of skip mode. Rows for ctr and
//! mitmproxy appear when containerd and mitmdump are installed.

#[path = "../support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::containerd::Containerd;
use support::daemon::{self, Daemon};
use support::image::OciImage;
use support::registry::{free_port, Registry, REGISTRY_BINARY};

fn main() {
    let quick = std::env::var_os("REGPROXY_BENCH_QUICK").is_some();
    let layers = env_number("REGPROXY_BENCH_LAYERS", if quick { 2 } else { 4 });
    let layer_mib = env_number("REGPROXY_BENCH_LAYER_MIB", if quick { 8 } else { 256 });
    let runs = env_number("REGPROXY_BENCH_RUNS", if quick { 1 } else { 3 });
    for binary in [REGISTRY_BINARY, "skopeo"] {
        if support::which(binary).is_none() {
            println!("push benchmark skipped: {binary} is not installed");
            return;
        }
    }
    let image = OciImage::generate(7, &vec![layer_mib << 20; layers]);
    let gib = image.layer_bytes() as f64 / (1u64 << 30) as f64;
    println!("image: {layers} layers of {layer_mib} MiB ({gib:.2} GiB), {runs} runs per scenario");

    let only = std::env::var("REGPROXY_BENCH_ONLY").unwrap_or_default();
    let wanted = |client: &str| only.is_empty() || only.split(',').any(|c| c.trim() == client);
    let ctr = if wanted("ctr") { Ctr::start() } else { None };
    let mitm = wanted("mitmproxy") && support::which("mitmdump").is_some();
    let skopeo = wanted("skopeo");
    let mut rows: Vec<Row> = Vec::new();
    let mut add = |name: &str, sample: Sample| match rows.iter_mut().find(|r| r.name == name) {
        Some(row) => row.samples.push(sample),
        None => rows.push(Row {
            name: name.to_owned(),
            samples: vec![sample],
        }),
    };
    let mut floors = Vec::new();
    for _ in 0..runs {
        floors.push(Floor::measure(if quick { 16 } else { 256 }));
        if skopeo || mitm {
            add("skopeo direct push, all layers new", skopeo_direct(&image));
        }
        if skopeo {
            add(
                "skopeo through regproxy, forced re-push",
                skopeo_through_regproxy(&image),
            );
        }
        if mitm {
            add(
                "skopeo through mitmproxy + addon, forced",
                skopeo_through_mitmproxy(&image),
            );
        }
        if let Some(ctr) = &ctr {
            add("ctr direct push, all layers new", ctr.push_direct(&image));
            add(
                "ctr through regproxy, forced re-push",
                ctr.push_through_regproxy(&image),
            );
        }
    }
    if !mitm && wanted("mitmproxy") {
        println!("(mitmdump not installed: mitmproxy row skipped)");
    }
    if ctr.is_none() && wanted("ctr") {
        println!("(containerd or ctr not installed: ctr rows skipped)");
    }
    print_table(&rows, gib);
    print_floor(&floors);
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One timed push, and what the proxy (if any) spent on it.
struct Sample {
    wall: Duration,
    proxy_cpu: Option<Duration>,
    proxy_peak_rss_kib: Option<u64>,
}

struct Row {
    name: String,
    samples: Vec<Sample>,
}

fn skopeo_direct(image: &OciImage) -> Sample {
    let registry = Registry::start_tls();
    let wall = time(&mut skopeo_push(
        image,
        &registry,
        "localhost",
        None,
        &registry.client_cert_dir(),
    ));
    Sample {
        wall,
        proxy_cpu: None,
        proxy_peak_rss_kib: None,
    }
}

/// A fresh registry that already holds `image`, pushed directly: what a
/// forced re-push is timed against.
fn registry_holding(image: &OciImage) -> Registry {
    let registry = Registry::start_tls();
    let cert_dir = registry.client_cert_dir();
    time(&mut skopeo_push(
        image,
        &registry,
        "localhost",
        None,
        &cert_dir,
    ));
    registry
}

/// A fresh regproxy in skip mode for each timed push, so that its peak
/// memory belongs to that push alone.
fn skopeo_through_regproxy(image: &OciImage) -> Sample {
    let registry = registry_holding(image);
    let proxy = Daemon::start(&registry, &["--skip-existing-layers"]);
    let cpu_before = proxy.cpu();
    let mut push = skopeo_push(
        image,
        &registry,
        "registry.test",
        Some(proxy.port),
        &proxy.ca_dir(),
    );
    let wall = time(&mut push);
    measured(proxy.child.id(), wall, cpu_before)
}

fn skopeo_push(
    image: &OciImage,
    registry: &Registry,
    host: &str,
    proxy_port: Option<u16>,
    cert_dir: &Path,
) -> Command {
    let mut command = Command::new("skopeo");
    command.env_remove("HTTPS_PROXY").env_remove("https_proxy");
    if let Some(port) = proxy_port {
        command.env("HTTPS_PROXY", format!("http://127.0.0.1:{port}"));
    }
    command
        .args(["copy", "--quiet", "--dest-cert-dir"])
        .arg(cert_dir)
        .arg(image.reference())
        .arg(format!("docker://{host}:{}/team/app:1", registry.port));
    command
}

fn time(command: &mut Command) -> Duration {
    let started = Instant::now();
    let output = command.output().expect("client runs");
    let wall = started.elapsed();
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    wall
}

/// What a proxy process spent on one push, once it is over.
fn measured(pid: u32, wall: Duration, cpu_before: Duration) -> Sample {
    Sample {
        wall,
        proxy_cpu: Some(daemon::cpu(pid) - cpu_before),
        proxy_peak_rss_kib: Some(daemon::memory_kib(pid, "VmHWM:")),
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// mitmproxy with a small addon doing what skip mode does, streaming
/// bodies (its default buffers them whole), for comparison.
fn skopeo_through_mitmproxy(image: &OciImage) -> Sample {
    const ADDON: &str = r#"
import re
from mitmproxy import http

BLOB = re.compile(r"^/v2/.+/blobs/[a-z0-9]+:[0-9a-f]+$")

def requestheaders(flow):
    flow.request.stream = True
    # registry.test resolves nowhere: connect to localhost, keep the Host.
    host_header = flow.request.host_header
    flow.request.host = "localhost"
    flow.request.host_header = host_header

def responseheaders(flow):
    flow.response.stream = True

def request(flow):
    path = flow.request.path.split("?")[0]
    if flow.request.method == "HEAD" and BLOB.match(path):
        flow.response = http.Response.make(404, b"", {"Content-Length": "0"})
    elif flow.request.method == "POST" and path.endswith("/blobs/uploads/"):
        for key in ("mount", "from", "origin"):
            flow.request.query.pop(key, None)
"#;
    let registry = registry_holding(image);
    let dir = tempfile::tempdir().unwrap();
    let addon = dir.path().join("skip.py");
    std::fs::write(&addon, ADDON).unwrap();
    let port = free_port();
    let child = Command::new("mitmdump")
        .args([
            "--quiet",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            &port.to_string(),
        ])
        .arg("--set")
        .arg(format!("confdir={}", dir.path().display()))
        .arg("--set")
        .arg(format!(
            "ssl_verify_upstream_trusted_ca={}",
            registry.ca_file.as_ref().unwrap().display()
        ))
        .args(["--set", "connection_strategy=lazy"])
        .arg("-s")
        .arg(&addon)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port);
    let cert_dir = dir.path().join("client");
    std::fs::create_dir_all(&cert_dir).unwrap();
    std::fs::copy(
        dir.path().join("mitmproxy-ca-cert.pem"),
        cert_dir.join("ca.crt"),
    )
    .unwrap();
    let mut mitmdump = child;
    let cpu_before = daemon::cpu(mitmdump.id());
    let wall = time(&mut skopeo_push(
        image,
        &registry,
        "registry.test",
        Some(port),
        &cert_dir,
    ));
    let sample = measured(mitmdump.id(), wall, cpu_before);
    let _ = mitmdump.kill();
    let _ = mitmdump.wait();
    sample
}

/// containerd's pusher, when containerd is installed: one daemon for
/// every ctr row, the image imported once.
struct Ctr {
    containerd: Containerd,
    imported: std::cell::OnceCell<String>,
}

impl Ctr {
    fn start() -> Option<Ctr> {
        if support::which("containerd").is_none() || support::which("ctr").is_none() {
            return None;
        }
        Some(Ctr {
            containerd: Containerd::start(),
            imported: std::cell::OnceCell::new(),
        })
    }

    fn local_reference(&self, image: &OciImage) -> &str {
        self.imported
            .get_or_init(|| self.containerd.import_as(image, "bench.local/app"))
    }

    /// A hosts directory trusting `ca` for `host`. containerd speaks
    /// plain HTTP to `localhost` unless told otherwise, hence the explicit
    /// https server.
    fn hosts_dir(&self, host: &str, ca: &Path) -> PathBuf {
        let hosts = self.containerd.dir().join(format!("hosts-{host}"));
        let dir = hosts.join(host);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(ca, dir.join("ca.crt")).unwrap();
        let toml = format!(
            "server = \"https://{host}\"\n[host.\"https://{host}\"]\n  ca = \"{}\"\n",
            dir.join("ca.crt").display()
        );
        std::fs::write(dir.join("hosts.toml"), toml).unwrap();
        hosts
    }

    fn push(
        &self,
        image: &OciImage,
        host: &str,
        hosts_dir: &Path,
        proxy: Option<&Daemon>,
    ) -> Command {
        let mut command = self.containerd.ctr();
        if let Some(proxy) = proxy {
            command.env("HTTPS_PROXY", proxy.url());
        }
        command
            .args(["images", "push", "--hosts-dir"])
            .arg(hosts_dir)
            .arg(format!("{host}/team/app:1"))
            .arg(self.local_reference(image))
            .stdout(Stdio::null());
        command
    }

    fn push_direct(&self, image: &OciImage) -> Sample {
        let registry = Registry::start_tls();
        let host = format!("localhost:{}", registry.port);
        let hosts = self.hosts_dir(&host, registry.ca_file.as_ref().unwrap());
        let wall = time(&mut self.push(image, &host, &hosts, None));
        Sample {
            wall,
            proxy_cpu: None,
            proxy_peak_rss_kib: None,
        }
    }

    fn push_through_regproxy(&self, image: &OciImage) -> Sample {
        let registry = Registry::start_tls();
        let direct = format!("localhost:{}", registry.port);
        let hosts = self.hosts_dir(&direct, registry.ca_file.as_ref().unwrap());
        time(&mut self.push(image, &direct, &hosts, None));
        let proxy = Daemon::start(&registry, &["--skip-existing-layers"]);
        let host = format!("registry.test:{}", registry.port);
        let hosts = self.hosts_dir(&host, &proxy.ca_dir().join("ca.crt"));
        let cpu_before = proxy.cpu();
        let wall = time(&mut self.push(image, &host, &hosts, Some(&proxy)));
        measured(proxy.child.id(), wall, cpu_before)
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let middle = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

fn print_table(rows: &[Row], gib: f64) {
    let wall = |row: &Row| median(row.samples.iter().map(|s| s.wall.as_secs_f64()).collect());
    let baseline = |prefix: &str| {
        rows.iter()
            .find(|r| r.name.starts_with(prefix) && r.name.contains("direct"))
            .map(wall)
    };
    println!();
    println!(
        "| scenario | wall time (median) | vs direct | proxy CPU per push | CPU s per GiB | proxy peak RSS |"
    );
    println!("|---|---|---|---|---|---|");
    for row in rows {
        let median_wall = wall(row);
        let client = row.name.split(' ').next().unwrap_or("");
        let ratio = match baseline(client) {
            Some(direct) if !row.name.contains("direct") => format!("{:.2}×", median_wall / direct),
            _ => "—".to_owned(),
        };
        let cpu: Vec<f64> = row
            .samples
            .iter()
            .filter_map(|s| s.proxy_cpu)
            .map(|c| c.as_secs_f64())
            .collect();
        let rss: Vec<f64> = row
            .samples
            .iter()
            .filter_map(|s| s.proxy_peak_rss_kib)
            .map(|k| k as f64 / 1024.0)
            .collect();
        let (cpu_text, per_gib, rss_text) = if cpu.is_empty() {
            ("—".to_owned(), "—".to_owned(), "—".to_owned())
        } else {
            let cpu = median(cpu);
            (
                format!("{cpu:.2} s"),
                format!("{:.2} s", cpu / gib),
                format!("{:.0} MiB", median(rss)),
            )
        };
        println!(
            "| {} | {median_wall:.2} s | {ratio} | {cpu_text} | {per_gib} | {rss_text} |",
            row.name
        );
    }
}

/// What any TLS-intercepting proxy spends per GiB on this machine before
/// it does anything of its own, to read the proxy's CPU figure against.
/// Taken once per run, between the pushes, because a virtual machine's
/// CPU time varies with its neighbours' load.
struct Floor {
    crypto: f64,
    relay: f64,
}

impl Floor {
    fn measure(mib: usize) -> Floor {
        Floor {
            crypto: crypto_per_gib(mib),
            relay: relay_per_gib(mib),
        }
    }
}

fn print_floor(floors: &[Floor]) {
    let crypto = median(floors.iter().map(|f| f.crypto).collect());
    let relay = median(floors.iter().map(|f| f.relay).collect());
    println!();
    println!("floor on this machine, CPU per GiB through a proxy (median of runs):");
    println!("  AES-128-GCM open + seal of every byte, one core: {crypto:.2} s");
    println!("  kernel: receive and send every byte over loopback TCP: {relay:.2} s");
    println!("  together: {:.2} s", crypto + relay);
}

/// Every byte opened (the client's TLS) and sealed again (the registry's
/// TLS) with AES-128-GCM in full 16 KiB records, in memory.
fn crypto_per_gib(mib: usize) -> f64 {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
    const RECORD: usize = 16 << 10;
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[7; 16]).unwrap());
    let mut record = vec![0x5au8; RECORD];
    let records = (mib << 20) / RECORD;
    let started = Instant::now();
    for sequence in 0..records as u64 {
        let nonce = || {
            let mut bytes = [0u8; 12];
            bytes[4..].copy_from_slice(&sequence.to_be_bytes());
            Nonce::assume_unique_for_key(bytes)
        };
        let tag = key
            .seal_in_place_separate_tag(nonce(), Aad::empty(), &mut record)
            .unwrap();
        record.extend_from_slice(tag.as_ref());
        key.open_in_place(nonce(), Aad::empty(), &mut record)
            .unwrap();
        record.truncate(RECORD);
    }
    started.elapsed().as_secs_f64() * 1024.0 / mib as f64
}

/// The CPU a thread spends relaying bytes from one loopback TCP
/// connection to another with 256 KiB reads and writes: the system calls
/// a proxy cannot avoid, with no TLS and no HTTP.
fn relay_per_gib(mib: usize) -> f64 {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let pair = || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (near, listener.accept().unwrap().0)
    };
    let (mut source, mut relay_in) = pair();
    let (mut relay_out, mut sink) = pair();
    let total = mib << 20;
    let sender = std::thread::spawn(move || {
        let chunk = vec![0x5au8; 256 << 10];
        for _ in 0..total / chunk.len() {
            source.write_all(&chunk).unwrap();
        }
    });
    let receiver = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 << 10];
        while sink.read(&mut buf).unwrap() > 0 {}
    });
    let cpu_before = thread_cpu();
    let mut buf = vec![0u8; 256 << 10];
    let mut relayed = 0;
    while relayed < total {
        let n = relay_in.read(&mut buf).unwrap();
        relay_out.write_all(&buf[..n]).unwrap();
        relayed += n;
    }
    let cpu = thread_cpu() - cpu_before;
    drop(relay_out);
    sender.join().unwrap();
    receiver.join().unwrap();
    cpu.as_secs_f64() * 1024.0 / mib as f64
}

fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}
