//! Bad input, broken networks and aborted clients: each gets a clear
//! answer or a closed connection, nothing is passed off as complete, and
//! the daemon carries on serving everyone else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::daemon::{Daemon, REGPROXY};
use crate::support::image::sha256;
use crate::support::registry::{Registry, REGISTRY_BINARY};
use crate::support::relay::CuttingRelay;
use crate::support::{curl, curl_exchange, have, run, ProxyOptions, RunningProxy};

/// Sends raw bytes to the proxy and returns what came back before the
/// connection closed or went quiet.
fn raw_exchange(proxy: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buffer) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..n]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && !answer.starts_with(b"HTTP/1.1 200") {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_of(answer: &str) -> Option<u16> {
    answer.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A TLS ClientHello whose server name is not a valid host name.
fn client_hello_with_sni(name: &[u8]) -> Vec<u8> {
    let mut sni = vec![0x00];
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut list = (sni.len() as u16).to_be_bytes().to_vec();
    list.extend_from_slice(&sni);
    let mut extensions = vec![0x00, 0x00];
    extensions.extend_from_slice(&(list.len() as u16).to_be_bytes());
    extensions.extend_from_slice(&list);
    let mut hello = vec![0x03, 0x03];
    hello.extend_from_slice(&[7u8; 32]);
    hello.extend_from_slice(&[0x00, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
    hello.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    hello.extend_from_slice(&extensions);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&(hello.len() as u16).to_be_bytes());
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[test]
fn bad_input_gets_a_clear_answer_and_the_daemon_carries_on() {
    if !have(&[REGISTRY_BINARY]) {
        return;
    }
    let registry = Registry::start_plain();
    let proxy = RunningProxy::for_registry(&registry, false);
    let own = proxy.addr;
    let target = format!("registry.test:{}", registry.port);
    let huge_header = format!(
        "GET http://{target}/v2/ HTTP/1.1\r\nHost: {target}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(300_000)
    );
    let connect =
        |host: &str| format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes();
    let tunnel_then = |after: &[u8]| {
        let mut bytes = connect(&target);
        bytes.extend_from_slice(after);
        bytes
    };
    let corpus: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
        (
            "malformed request line",
            b"GARBAGE\r\n\r\n".to_vec(),
            Some(400),
        ),
        (
            "binary junk",
            vec![0u8, 159, 146, 150, 13, 10, 13, 10],
            Some(400),
        ),
        ("oversized headers", huge_header.into_bytes(), Some(431)),
        ("CONNECT without port", connect("registry.test"), Some(400)),
        (
            "CONNECT with invalid host",
            connect("bad..host:443"),
            Some(400),
        ),
        (
            "CONNECT to regproxy itself",
            connect(&own.to_string()),
            Some(400),
        ),
        (
            "CONNECT to localhost at regproxy's port",
            connect(&format!("localhost:{}", own.port())),
            Some(400),
        ),
        (
            "absolute-form to regproxy itself",
            format!("GET http://{own}/ HTTP/1.1\r\nHost: {own}\r\n\r\n").into_bytes(),
            Some(400),
        ),
        (
            "origin-form to the proxy port",
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Some(400),
        ),
        (
            "port out of range",
            b"GET http://127.0.0.1:65616/v2/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Some(400),
        ),
        (
            "credentials in the URL",
            format!("GET http://u:p@{target}/v2/ HTTP/1.1\r\nHost: {target}\r\n\r\n").into_bytes(),
            Some(400),
        ),
        (
            "upload with a malformed chunked body",
            format!(
                "POST http://{target}/v2/team/app/blobs/uploads/?digest=sha256:{zeros} HTTP/1.1\r\n\
                 Host: {target}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nlayer\r\n0\r\n\r\n",
                zeros = "0".repeat(64)
            )
            .into_bytes(),
            Some(400),
        ),
        (
            "cleartext HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            None,
        ),
        (
            "plain garbage inside a tunnel",
            tunnel_then(b"NOT TLS\r\n\r\n"),
            Some(200),
        ),
        (
            "TLS record that is not a ClientHello",
            tunnel_then(b"\x16\x03\x01\x00\x05hello"),
            Some(200),
        ),
        (
            "ClientHello with an invalid server name",
            tunnel_then(&client_hello_with_sni(b"bad..name")),
            Some(200),
        ),
        (
            "ClientHello with a non-ASCII server name",
            tunnel_then(&client_hello_with_sni("ex\u{e4}mple.test".as_bytes())),
            Some(200),
        ),
    ];
    for (what, bytes, expected) in corpus {
        let answer = raw_exchange(own, &bytes);
        assert_eq!(status_of(&answer), expected, "{what}: {answer:.200}");
        if expected == Some(200) {
            // The tunnel opened; what was sent through it must not have
            // been answered as a success.
            let inner = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
            assert!(!inner.contains("200 OK"), "{what}: {inner:.200}");
        }
        let alive = raw_exchange(
            own,
            format!(
                "GET http://{target}/v2/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(status_of(&alive), Some(200), "after {what}: {alive:.200}");
    }
}

#[test]
fn connect_inside_a_tunnel_is_refused_not_forwarded() {
    if !have(&[REGISTRY_BINARY]) {
        return;
    }
    let registry = Registry::start_plain();
    let proxy = RunningProxy::for_registry(&registry, false);
    let target = format!("registry.test:{}", registry.port);
    let nested = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n\
         CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"
    );
    let answer = raw_exchange(proxy.addr, nested.as_bytes());
    let inner = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    assert_eq!(status_of(inner), Some(400), "{inner:.200}");
}

#[test]
fn upstream_reset_mid_body_is_an_error_for_the_client() {
    if !have(&[REGISTRY_BINARY, "curl"]) {
        return;
    }
    let registry = Registry::start_tls();
    let direct = RunningProxy::for_registry(&registry, false);
    let blob: Vec<u8> = (0..4_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let digest = upload(&direct, &registry, &blob);

    // The same registry behind a relay that breaks off after 1 MiB.
    let relay = CuttingRelay::start(registry.port, 1 << 20);
    let broken = RunningProxy::start(ProxyOptions {
        upstream_ca: registry.ca_file.clone(),
        resolve_ports: vec![relay.port],
        ..ProxyOptions::default()
    });
    let url = format!(
        "https://registry.test:{}/v2/team/app/blobs/{digest}",
        relay.port
    );
    for http2 in [false, true] {
        let out = tempfile::NamedTempFile::new().unwrap();
        let mut command = curl(&broken);
        if http2 {
            command.arg("--http2");
        }
        let output = run(command.arg("--output").arg(out.path()).arg(&url));
        let received = std::fs::metadata(out.path()).unwrap().len();
        assert!(
            !output.status.success(),
            "http2={http2}: curl saw a complete body of {received} bytes"
        );
        assert!(received < blob.len() as u64, "http2={http2}");
    }
}

#[test]
fn a_client_dropping_a_download_is_logged_as_a_failure() {
    if !have(&[REGISTRY_BINARY, "curl"]) {
        return;
    }
    let registry = Registry::start_plain();
    let flow_log = tempfile::NamedTempFile::new().unwrap();
    let proxy = RunningProxy::start(ProxyOptions {
        resolve_ports: vec![registry.port],
        flow_log: Some(flow_log.path().to_owned()),
        ..ProxyOptions::default()
    });
    // Larger than what the kernel's socket buffers between regproxy and the
    // client can absorb (a few MiB), so a client that stops reading early
    // leaves regproxy with bytes it could not send.
    let blob: Vec<u8> = (0..16_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let digest = upload(&proxy, &registry, &blob);
    let read_whole = curl_exchange(
        curl(&proxy)
            .args(["--output", "/dev/null"])
            .arg(registry.url(&format!("team/app/blobs/{digest}"))),
    );
    assert_eq!(read_whole.status, 200);

    let target = format!("registry.test:{}", registry.port);
    let mut stream = TcpStream::connect(proxy.addr).unwrap();
    let get = format!(
        "GET http://{target}/v2/team/app/blobs/{digest} HTTP/1.1\r\nHost: {target}\r\n\r\n"
    );
    stream.write_all(get.as_bytes()).unwrap();
    let mut first = vec![0u8; 64 << 10];
    stream.read_exact(&mut first).unwrap();
    drop(stream);

    let deadline = Instant::now() + Duration::from_secs(10);
    let gets = loop {
        let (records, _) = regproxy::flow::read_flow_log(flow_log.path()).unwrap();
        let gets: Vec<_> = records.into_iter().filter(|r| r.method == "GET").collect();
        match gets.len() {
            2 => break gets,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => panic!("expected two GETs in the flow log: {gets:#?}"),
        }
    };
    let (whole, record) = (&gets[0], gets[1].clone());
    assert_eq!(whole.bytes_down, blob.len() as u64, "{whole:?}");
    assert_eq!(whole.error, None, "a complete download is no failure");
    assert_eq!(record.status, 200);
    assert!(record.bytes_down < blob.len() as u64, "{record:?}");
    let error = record.error.unwrap_or_default();
    assert!(error.contains("stopped reading"), "{error:?}");
}

fn upload(proxy: &RunningProxy, registry: &Registry, blob: &[u8]) -> String {
    let digest = sha256(blob);
    let start = curl_exchange(
        curl(proxy)
            .args(["--request", "POST"])
            .arg(registry.url("team/app/blobs/uploads/")),
    );
    let location = start.header("location").unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), blob).unwrap();
    let separator = if location.contains('?') { '&' } else { '?' };
    let put = curl_exchange(
        curl(proxy)
            .args([
                "--request",
                "PUT",
                "--header",
                "Content-Type: application/octet-stream",
            ])
            .arg("--data-binary")
            .arg(format!("@{}", file.path().display()))
            .arg(format!("{location}{separator}digest={digest}")),
    );
    assert_eq!(put.status, 201, "{put:#?}");
    digest
}

/// Opens an upload session with an absolute-form POST; returns its path.
fn open_session(proxy: std::net::SocketAddr, target: &str) -> String {
    let answer = raw_exchange(
        proxy,
        format!("POST http://{target}/v2/team/app/blobs/uploads/ HTTP/1.1\r\nHost: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(status_of(&answer), Some(202), "{answer}");
    let location = answer
        .lines()
        .find_map(|l| {
            l.strip_prefix("Location: ")
                .or_else(|| l.strip_prefix("location: "))
        })
        .expect("Location header")
        .trim()
        .to_owned();
    let path_start = location.find("/v2/").unwrap();
    location[path_start..].to_owned()
}

#[test]
fn aborted_uploads_release_everything() {
    if !have(&[REGISTRY_BINARY]) {
        return;
    }
    let registry = Registry::start_plain();
    let daemon = Daemon::start(&registry, &[]);
    let target = format!("registry.test:{}", registry.port);
    let chunk = vec![0x5a_u8; 64 << 10];

    let _ = open_session(daemon.addr(), &target);
    std::thread::sleep(Duration::from_millis(200));
    let baseline = daemon.open_fds();
    const ABORTS: usize = 1000;
    for _ in 0..ABORTS {
        let session = open_session(daemon.addr(), &target);
        let mut stream = TcpStream::connect(daemon.addr()).unwrap();
        let head = format!(
            "PATCH http://{target}{session} HTTP/1.1\r\nHost: {target}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            8 << 20
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&chunk).unwrap();
        // The client goes away with most of its upload unsent.
        drop(stream);
    }

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut open = daemon.open_fds();
    while open > baseline + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        open = daemon.open_fds();
    }
    eprintln!("aborted uploads: {ABORTS}; regproxy fds before {baseline}, after {open}");
    assert!(open <= baseline + 2, "fds before {baseline}, after {open}");
    let alive = raw_exchange(
        daemon.addr(),
        format!("GET http://{target}/v2/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(status_of(&alive), Some(200));
}

#[test]
fn listening_beyond_loopback_needs_proxy_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let refused = Command::new(REGPROXY)
        .args(["run", "--check", "--listen", "0.0.0.0:0", "--ca-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--proxy-auth"));

    let auth = dir.path().join("proxy-auth");
    std::fs::write(&auth, "ci:hunter2\n").unwrap();
    for extra in [
        vec!["--proxy-auth-file", auth.to_str().unwrap()],
        vec!["--allow-unauthenticated"],
    ] {
        let allowed = Command::new(REGPROXY)
            .args(["run", "--check", "--listen", "0.0.0.0:0", "--ca-dir"])
            .arg(dir.path())
            .args(&extra)
            .output()
            .unwrap();
        assert!(allowed.status.success(), "{extra:?}: {allowed:?}");
    }
}

#[test]
fn proxy_credentials_are_required_when_configured() {
    if !have(&[REGISTRY_BINARY]) {
        return;
    }
    let registry = Registry::start_plain();
    let daemon = Daemon::start(&registry, &["--proxy-auth", "ci:hunter2"]);
    let target = format!("registry.test:{}", registry.port);
    let request = |auth: &str| {
        raw_exchange(daemon.addr(), format!("GET http://{target}/v2/ HTTP/1.1\r\nHost: {target}\r\n{auth}Connection: close\r\n\r\n").as_bytes())
    };
    let missing = request("");
    assert_eq!(status_of(&missing), Some(407), "{missing}");
    assert!(
        missing
            .to_ascii_lowercase()
            .contains("proxy-authenticate: basic"),
        "{missing}"
    );
    assert_eq!(
        status_of(&request("Proxy-Authorization: Basic Y2k6d3Jvbmc=\r\n")),
        Some(407)
    );
    // base64("ci:hunter2")
    assert_eq!(
        status_of(&request("Proxy-Authorization: Basic Y2k6aHVudGVyMg==\r\n")),
        Some(200)
    );
    let tunnel = raw_exchange(
        daemon.addr(),
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
    );
    assert_eq!(status_of(&tunnel), Some(407));
}

#[test]
fn five_hundred_tunnels_of_keep_alive_heads_without_an_error() {
    if !have(&[REGISTRY_BINARY, "curl"]) {
        return;
    }
    let registry = Registry::start_tls();
    let seed = RunningProxy::for_registry(&registry, false);
    let digest = upload(&seed, &registry, b"a layer to check for");
    let daemon = Daemon::start(&registry, &[]);
    let path = format!("/v2/team/app/blobs/{digest}");
    let outcome = crate::support::load::keep_alive_heads(
        daemon.addr(),
        &daemon.ca_dir().join("ca.crt"),
        &format!("registry.test:{}", registry.port),
        &path,
        500,
        Duration::from_secs(5),
    );
    let rss = daemon.memory_kib("VmHWM:") / 1024;
    eprintln!(
        "load: {} tunnels, {} HEADs in 5 s, {} errors; regproxy peak RSS {rss} MiB",
        outcome.tunnels,
        outcome.heads,
        outcome.errors.len()
    );
    assert_eq!(outcome.tunnels, 500);
    assert!(
        outcome.errors.is_empty(),
        "{:?}",
        &outcome.errors[..outcome.errors.len().min(5)]
    );
    assert!(outcome.heads >= 500);
}

#[test]
fn sigterm_during_a_large_upload_lets_the_push_finish() {
    if !have(&[REGISTRY_BINARY, "skopeo"]) {
        return;
    }
    let registry = Registry::start_tls();
    let image = crate::support::image::OciImage::generate(61, &[4 << 10, 256 << 20]);
    let daemon = Daemon::start(&registry, &["--skip-existing-layers"]);
    let mut push = daemon.spawn_skopeo_push(&registry, &image);

    // Both upload sessions are open: the large layer is on its way.
    let deadline = Instant::now() + Duration::from_secs(60);
    while daemon.log().matches("/blobs/uploads/ client=").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "uploads never started:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let large_done = |log: &str| {
        log.lines()
            .any(|l| l.contains("PATCH") && l.contains("up=268"))
    };
    assert!(
        !large_done(&daemon.log()),
        "the large upload finished before SIGTERM"
    );
    let kill = Command::new("kill")
        .args(["-TERM", &daemon.child.id().to_string()])
        .status();
    assert!(kill.unwrap().success());

    assert!(
        push.wait().unwrap().success(),
        "the push failed:\n{}",
        daemon.log()
    );
    let mut daemon = daemon;
    let status = daemon.child.wait().unwrap();
    assert!(
        status.success(),
        "regproxy exit status {status}:\n{}",
        daemon.log()
    );
    assert!(large_done(&daemon.log()), "{}", daemon.log());
    assert!(daemon.log().contains("shutting down"), "{}", daemon.log());

    let verifier = RunningProxy::for_registry(&registry, false);
    crate::support::skopeo::assert_pulls_back_identical(&verifier, &registry, &image, "team/app:1");
}
