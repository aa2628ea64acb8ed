//! Latency benchmark: what regproxy adds to one small request, and what
//! its certificate minting and idle connections cost.
//!
//! ```text
//! cargo bench --bench head
//! REGPROXY_BENCH_QUICK=1 cargo bench --bench head
//! ```
//!
//! Prints p50 and p99 of a blob HEAD over a keep-alive connection: direct
//! to the registry, through regproxy (intercepted, passed through), and
//! answered by skip mode itself; the first TLS handshake with a new host
//! (leaf minted) against later ones; and regproxy's memory with many
//! intercepted connections held open.

#[path = "../support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use support::daemon::Daemon;
use support::load::tls_connector;
use support::registry::{Registry, REGISTRY_BINARY};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

type Sender = SendRequest<Full<Bytes>>;

fn main() {
    if support::which(REGISTRY_BINARY).is_none() {
        println!("head benchmark skipped: {REGISTRY_BINARY} is not installed");
        return;
    }
    let quick = std::env::var_os("REGPROXY_BENCH_QUICK").is_some();
    let requests = if quick { 200 } else { 5000 };
    let held = if quick { 100 } else { 1000 };
    let registry = Registry::start_tls();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(&registry, requests, held));
}

async fn run(registry: &Registry, requests: usize, held: usize) {
    let registry_ca = registry.ca_file.clone().unwrap();
    let direct_addr: SocketAddr = ([127, 0, 0, 1], registry.port).into();
    let mut direct = connect_direct(direct_addr, &registry_ca).await;
    let digest = upload(&mut direct, b"benchmark layer").await;
    let path = format!("/v2/team/app/blobs/{digest}");
    let target = format!("registry.test:{}", registry.port);

    let passing = Daemon::start(registry, &[]);
    let skipping = Daemon::start(registry, &["--skip-existing-layers"]);
    let mut through = tunnel(passing.addr(), &passing.ca_dir().join("ca.crt"), &target).await;
    let mut faked = tunnel(skipping.addr(), &skipping.ca_dir().join("ca.crt"), &target).await;

    // Direct and intercepted requests alternate, so a registry or machine
    // that slows down for a moment slows both alike. The fake 404s, which
    // never reach the registry, are timed back to back after them.
    let mut paths = [
        ("direct to the registry", &mut direct, 200, Vec::new()),
        (
            "through regproxy, intercepted",
            &mut through,
            200,
            Vec::new(),
        ),
        (
            "answered by skip mode (fake 404)",
            &mut faked,
            404,
            Vec::new(),
        ),
    ];
    let (passed, skipped) = paths.split_at_mut(2);
    let cpu_before = (passing.cpu(), skipping.cpu());
    for batch in [passed, skipped] {
        for round in 0..WARM_UP + requests {
            for (_, sender, expect, times) in batch.iter_mut() {
                let started = Instant::now();
                let status = request(sender, "HEAD", &path, &target, Bytes::new())
                    .await
                    .0;
                if round >= WARM_UP {
                    times.push(started.elapsed());
                }
                assert_eq!(status, *expect);
            }
        }
    }
    let per_request =
        |after: Duration, before: Duration| micros((after - before) / (WARM_UP + requests) as u32);
    let cpu_passing = per_request(passing.cpu(), cpu_before.0);
    let cpu_skipping = per_request(skipping.cpu(), cpu_before.1);
    let floor = loopback_round_trips(requests);
    println!("HEAD of a blob over keep-alive, {requests} requests each:");
    println!("| path | p50 | p99 |");
    println!("|---|---|---|");
    for (name, _, _, times) in &paths {
        println!(
            "| {name} | {} | {} |",
            micros(percentile(times, 50)),
            micros(percentile(times, 99))
        );
    }
    println!(
        "| floor: 1-byte TCP round trip between two threads | {} | {} |",
        micros(percentile(&floor, 50)),
        micros(percentile(&floor, 99))
    );
    let [(_, _, _, direct_times), (_, _, _, through_times), _] = &paths;
    let added = percentile(through_times, 50).saturating_sub(percentile(direct_times, 50));
    println!("added by regproxy at p50: {}", micros(added));
    println!("regproxy CPU per request: {cpu_passing} passed through, {cpu_skipping} faked");

    let (first, again) = handshakes(&passing, 50).await;
    println!();
    println!("TLS handshake through CONNECT, median of 50:");
    println!("  new host (leaf minted): {}", micros(first));
    println!("  same host again (cached leaf): {}", micros(again));

    let before = passing.memory_kib("VmRSS:");
    let mut open = Vec::new();
    for _ in 0..held {
        let mut sender = tunnel(passing.addr(), &passing.ca_dir().join("ca.crt"), &target).await;
        request(&mut sender, "HEAD", &path, &target, Bytes::new()).await;
        open.push(sender);
    }
    let after = passing.memory_kib("VmRSS:");
    println!();
    println!(
        "{held} intercepted keep-alive connections held open: regproxy RSS {} MiB (was {} MiB)",
        after / 1024,
        before / 1024
    );
}

fn micros(duration: Duration) -> String {
    format!("{:.0} µs", duration.as_secs_f64() * 1e6)
}

fn percentile(times: &[Duration], p: usize) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// Requests sent down each path before timing starts: pooled upstream
/// connection, caches, branch predictors.
const WARM_UP: usize = 20;

/// What one round trip between two threads costs on this machine, with
/// no TLS and no HTTP: the part of any request no proxy can remove.
fn loopback_round_trips(count: usize) -> Vec<Duration> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut near = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut far, _) = listener.accept().unwrap();
    near.set_nodelay(true).unwrap();
    far.set_nodelay(true).unwrap();
    let echo = std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        while far.read(&mut byte).unwrap_or(0) == 1 {
            far.write_all(&byte).unwrap();
        }
    });
    let mut byte = [0u8; 1];
    let mut times = Vec::with_capacity(count);
    for _ in 0..WARM_UP + count {
        let started = Instant::now();
        near.write_all(&byte).unwrap();
        near.read_exact(&mut byte).unwrap();
        times.push(started.elapsed());
    }
    drop(near);
    echo.join().unwrap();
    times.split_off(WARM_UP)
}

/// Sends one request; returns its status and `Location` header.
async fn request(
    sender: &mut Sender,
    method: &str,
    path: &str,
    host: &str,
    body: Bytes,
) -> (u16, Option<String>) {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .header("content-length", body.len())
        .body(Full::new(body))
        .unwrap();
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let _ = response.into_body().collect().await;
    (status, location)
}

async fn upload(sender: &mut Sender, bytes: &'static [u8]) -> String {
    let digest = support::image::sha256(bytes);
    let host = "localhost";
    let (status, location) = request(
        sender,
        "POST",
        "/v2/team/app/blobs/uploads/",
        host,
        Bytes::new(),
    )
    .await;
    assert_eq!(status, 202);
    let location = location.unwrap();
    let path = &location[location.find("/v2/").unwrap()..];
    let separator = if path.contains('?') { '&' } else { '?' };
    let put = format!("{path}{separator}digest={digest}");
    let (status, _) = request(sender, "PUT", &put, host, Bytes::from_static(bytes)).await;
    assert_eq!(status, 201);
    digest
}

async fn connect_direct(addr: SocketAddr, ca: &Path) -> Sender {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let tls = tls_connector(ca)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    handshake(tls).await
}

async fn open_connect(proxy: SocketAddr, target: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

async fn tunnel(proxy: SocketAddr, ca: &Path, target: &str) -> Sender {
    let tcp = open_connect(proxy, target).await;
    let host = target.rsplit_once(':').unwrap().0.to_owned();
    let tls = tls_connector(ca)
        .connect(ServerName::try_from(host).unwrap(), tcp)
        .await
        .unwrap();
    handshake(tls).await
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S) -> Sender {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// Median TLS handshake time through a tunnel to `count` hosts regproxy
/// has not seen (each mints a leaf), then to the same hosts again.
async fn handshakes(daemon: &Daemon, count: usize) -> (Duration, Duration) {
    let connector = tls_connector(&daemon.ca_dir().join("ca.crt"));
    let mut first = Vec::new();
    let mut again = Vec::new();
    for round in 0..2 {
        for i in 0..count {
            let host = format!("new-host-{i}.test");
            let tcp = open_connect(daemon.addr(), &format!("{host}:443")).await;
            let started = Instant::now();
            let _tls = connector
                .connect(ServerName::try_from(host).unwrap(), tcp)
                .await
                .unwrap();
            let took = started.elapsed();
            if round == 0 {
                first.push(took)
            } else {
                again.push(took)
            }
        }
    }
    (percentile(&first, 50), percentile(&again, 50))
}
