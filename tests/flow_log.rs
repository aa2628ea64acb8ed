//! The registry-traffic debugger: flow log, HAR export and push report,
//! from real pushes, with every secret kept out.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use regproxy::flow::report::Report;
use regproxy::flow::{read_flow_log, FlowRecord};

use crate::support::daemon::{Daemon, REGPROXY};
use crate::support::image::OciImage;
use crate::support::registry::{Registry, REGISTRY_BINARY};
use crate::support::{curl, curl_exchange, have, run, run_ok, skopeo, ProxyOptions, RunningProxy};

fn records(path: &Path) -> Vec<FlowRecord> {
    let (records, skipped) = read_flow_log(path).unwrap();
    assert_eq!(skipped, 0, "every line of the flow log parses");
    records
}

fn regproxy(args: &[&str], flow_log: &Path) -> String {
    let output = run_ok(Command::new(REGPROXY).args(args).arg(flow_log));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn flow_log_report_and_har_describe_a_forced_push() {
    if !have(&[REGISTRY_BINARY, "skopeo"]) {
        return;
    }
    let registry = Registry::start_tls();
    let image = OciImage::generate(41, &[4 << 10, 3 << 20, 9 << 20]);
    let dir = tempfile::tempdir().unwrap();
    let flow_log = dir.path().join("flow.jsonl");
    let proxy = RunningProxy::start(ProxyOptions {
        skip_existing_layers: true,
        upstream_ca: registry.ca_file.clone(),
        resolve_ports: vec![registry.port],
        flow_log: Some(flow_log.clone()),
        ..ProxyOptions::default()
    });
    skopeo::push(&proxy, &registry, &image, "team/app:1");
    drop(proxy);

    let records = records(&flow_log);
    let requests = records.iter().filter(|r| r.method != "CONNECT").count();
    assert!(requests >= 10, "{requests} requests logged");
    assert!(records
        .iter()
        .all(|r| r.tls_intercepted && r.host == registry.host()));
    let failed: Vec<_> = records.iter().filter(|r| r.error.is_some()).collect();
    assert!(
        failed.is_empty(),
        "a clean push logged failures: {failed:#?}"
    );

    let report = Report::from_records(&records);
    let blobs = &report.repositories[0].blobs;
    for layer in image.blobs() {
        let blob = blobs
            .iter()
            .find(|b| b.digest == layer.digest)
            .expect("layer reported");
        assert_eq!(blob.size, Some(layer.size), "{blob:?}");
        assert_eq!(blob.uploads, 1, "{blob:?}");
        assert_eq!(blob.bytes_uploaded, layer.size, "{blob:?}");
        assert_eq!(blob.check.as_deref(), Some("404 faked"), "{blob:?}");
        assert_eq!(blob.status, Some(201));
    }
    assert_eq!(report.manifests.len(), 1);
    assert_eq!(
        report.manifests[0].digest.as_deref(),
        Some(image.manifest.digest.as_str())
    );

    let table = regproxy(&["report"], &flow_log);
    assert!(table.contains("404 faked"), "{table}");
    assert!(table.contains(&image.layers[2].digest[..19]), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&regproxy(&["report", "--json"], &flow_log)).unwrap();
    assert_eq!(json["manifests"][0]["status"], 201);

    // An independent HAR 1.2 parser reads the export, one entry per line.
    let har_text = regproxy(&["har"], &flow_log);
    let har = har::from_str(&har_text).expect("valid HAR");
    let har::Spec::V1_2(log) = har.log else {
        panic!("HAR version is not 1.2")
    };
    assert_eq!(log.entries.len(), records.len());
    let manifest = log
        .entries
        .iter()
        .find(|e| e.request.method == "PUT" && e.request.url.contains("/manifests/"));
    let manifest = manifest.expect("manifest PUT in the HAR");
    assert_eq!(manifest.response.status, 201);
    let body = manifest
        .request
        .post_data
        .as_ref()
        .and_then(|p| p.text.clone())
        .expect("manifest body kept");
    assert_eq!(
        crate::support::image::sha256(body.as_bytes()),
        image.manifest.digest
    );
}

#[test]
fn failed_push_shows_the_registry_error_code() {
    if !have(&[REGISTRY_BINARY, "curl"]) {
        return;
    }
    let registry = Registry::start_tls();
    let dir = tempfile::tempdir().unwrap();
    let flow_log = dir.path().join("flow.jsonl");
    let proxy = RunningProxy::start(ProxyOptions {
        upstream_ca: registry.ca_file.clone(),
        resolve_ports: vec![registry.port],
        flow_log: Some(flow_log.clone()),
        ..ProxyOptions::default()
    });
    let missing = crate::support::image::sha256(b"never uploaded");
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
         \"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"{missing}\",\"size\":2}},\
         \"layers\":[]}}"
    );
    let put = curl_exchange(
        curl(&proxy)
            .args([
                "--request",
                "PUT",
                "--header",
                "Content-Type: application/vnd.oci.image.manifest.v1+json",
            ])
            .args(["--data-binary", &manifest])
            .arg(registry.url("team/app/manifests/1")),
    );
    assert_eq!(put.status, 400, "{put:#?}");
    drop(proxy);

    let table = regproxy(&["report"], &flow_log);
    assert!(table.contains("MANIFEST_BLOB_UNKNOWN"), "{table}");
    let report = Report::from_records(&records(&flow_log));
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert_eq!(report.errors[0].status, 400);
}

#[test]
fn credentials_never_reach_logs_flow_log_har_or_report() {
    if !have(&[REGISTRY_BINARY, "skopeo"]) {
        return;
    }
    let (user, password) = ("pusher", "s3cret-Pa55word-73");
    let hash = bcrypt::hash(password, 4).unwrap();
    let registry = Registry::start_with_basic_auth(&format!("{user}:{hash}"));
    let image = OciImage::generate(42, &[4 << 10, 1 << 20]);
    let dir = tempfile::tempdir().unwrap();
    let flow_log = dir.path().join("flow.jsonl");

    let output = run(Command::new(REGPROXY)
        .env("RUST_LOG", "trace")
        .args(["exec", "--skip-existing-layers", "--ca-dir"])
        .arg(dir.path().join("ca"))
        .arg("--upstream-ca")
        .arg(registry.ca_file.as_ref().unwrap())
        .arg("--resolve")
        .arg(format!("registry.test:{}:127.0.0.1", registry.port))
        .arg("--flow-log")
        .arg(&flow_log)
        .args([
            "--",
            "skopeo",
            "copy",
            "--quiet",
            "--dest-creds",
            &format!("{user}:{password}"),
        ])
        .arg(image.reference())
        .arg(format!("docker://{}/team/app:1", registry.host())));
    let daemon_log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{daemon_log}");

    let records = records(&flow_log);
    let authorized = records
        .iter()
        .filter(|r| r.request_header("authorization").is_some())
        .count();
    assert!(authorized > 0, "the push authenticated");
    assert!(records
        .iter()
        .filter_map(|r| r.request_header("authorization"))
        .all(|value| value == "Basic <redacted>"));

    let basic = base64_of(&format!("{user}:{password}"));
    let outputs = [
        ("daemon log", daemon_log),
        ("flow log", std::fs::read_to_string(&flow_log).unwrap()),
        ("HAR", regproxy(&["har"], &flow_log)),
        ("report", regproxy(&["report"], &flow_log)),
        ("JSON report", regproxy(&["report", "--json"], &flow_log)),
    ];
    for (what, text) in outputs {
        assert!(!text.is_empty(), "{what} is empty");
        assert!(!text.contains(password), "password in the {what}");
        assert!(!text.contains(&basic), "credentials in the {what}");
    }
}

#[test]
fn sigkill_mid_push_leaves_only_whole_lines() {
    if !have(&[REGISTRY_BINARY, "skopeo"]) {
        return;
    }
    let registry = Registry::start_tls();
    let image = OciImage::generate(43, &[1 << 20; 12]);
    let dir = tempfile::tempdir().unwrap();
    let flow_log = dir.path().join("flow.jsonl");
    let mut daemon = Daemon::start(
        &registry,
        &[
            "--skip-existing-layers",
            "--flow-log",
            flow_log.to_str().unwrap(),
        ],
    );
    let mut push = daemon.spawn_skopeo_push(&registry, &image);
    let deadline = Instant::now() + Duration::from_secs(60);
    while line_count(&flow_log) < 8 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let _ = push.wait();

    let text = std::fs::read_to_string(&flow_log).unwrap();
    let complete: Vec<&str> = text
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .collect();
    assert!(
        complete.len() >= 8,
        "{} lines before the kill:\n{}",
        complete.len(),
        daemon.log()
    );
    for line in complete {
        serde_json::from_str::<FlowRecord>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
}

fn line_count(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}
