//! The blob API step by step, with curl as the client, against the real
//! registry: what skip mode fakes, strips and lets through.

use std::process::Command;

use crate::support::image::sha256;
use crate::support::registry::{Registry, REGISTRY_BINARY};
use crate::support::{curl, curl_exchange, have, CurlResponse, RunningProxy};

fn proxy_for(registry: &Registry, skip_existing_layers: bool) -> RunningProxy {
    RunningProxy::for_registry(registry, skip_existing_layers)
}

/// Uploads `bytes` to `repository` the way the docker daemon does:
/// POST to open a session, PATCH the bytes, PUT with the digest. Returns
/// the digest and each step's response.
fn upload_blob(
    proxy: &RunningProxy,
    registry: &Registry,
    repository: &str,
    bytes: &[u8],
) -> (String, Vec<CurlResponse>) {
    upload_blob_with(|| curl(proxy), registry, repository, bytes)
}

fn upload_blob_with(
    curl: impl Fn() -> Command,
    registry: &Registry,
    repository: &str,
    bytes: &[u8],
) -> (String, Vec<CurlResponse>) {
    let digest = sha256(bytes);
    let start = curl_exchange(
        curl()
            .args(["--request", "POST"])
            .arg(registry.url(&format!("{repository}/blobs/uploads/"))),
    );
    let location = start
        .header("location")
        .expect("POST answers with a Location");

    let data = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(data.path(), bytes).unwrap();
    // curl waits for `100 Continue` before sending a body with this
    // header: regproxy must answer it, or the PATCH hangs.
    let patch = curl_exchange(
        curl()
            .args(["--request", "PATCH", "--header", "Expect: 100-continue"])
            .args(["--header", "Content-Type: application/octet-stream"])
            .arg("--data-binary")
            .arg(format!("@{}", data.path().display()))
            .arg(&location),
    );
    let location = patch
        .header("location")
        .expect("PATCH answers with a Location");

    let separator = if location.contains('?') { '&' } else { '?' };
    let put = curl_exchange(
        curl()
            .args(["--request", "PUT"])
            .arg(format!("{location}{separator}digest={digest}")),
    );
    (digest, vec![start, patch, put])
}

fn head(proxy: &RunningProxy, registry: &Registry, repository: &str, digest: &str) -> CurlResponse {
    curl_exchange(
        curl(proxy)
            .arg("--head")
            .arg(registry.url(&format!("{repository}/blobs/{digest}"))),
    )
}

#[test]
fn docker_blob_sequence_gets_a_real_head_after_its_own_upload() {
    if !have(&[REGISTRY_BINARY, "curl"]) {
        return;
    }
    let registry = Registry::start_tls();
    let skipping = proxy_for(&registry, true);
    let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = sha256(&bytes);

    let before = head(&skipping, &registry, "team/app", &digest);
    assert_eq!(before.status, 404);
    assert_eq!(before.header("content-length").as_deref(), Some("0"));

    let (_, steps) = upload_blob(&skipping, &registry, "team/app", &bytes);
    let statuses: Vec<u16> = steps.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [202, 202, 201], "{steps:#?}");

    // The docker daemon checks each blob right after its upload and fails
    // the push on a 404: this HEAD must be the registry's real answer.
    let after = head(&skipping, &registry, "team/app", &digest);
    assert_eq!(after.status, 200, "{after:#?}");
    assert_eq!(
        after.header("content-length"),
        Some(bytes.len().to_string())
    );
    assert_eq!(after.header("docker-content-digest"), Some(digest.clone()));

    // Another repository's HEAD of the same digest is still faked.
    assert_eq!(
        head(&skipping, &registry, "team/other", &digest).status,
        404
    );
    let stats = skipping.stats();
    assert_eq!(stats.heads_answered_not_found, 2);
    assert_eq!(stats.blobs_uploaded, 1);
    assert_eq!(stats.upload_bytes, bytes.len() as u64);
}

#[test]
fn mount_is_stripped_in_skip_mode_and_passed_through_otherwise() {
    if !have(&[REGISTRY_BINARY, "curl"]) {
        return;
    }
    let registry = Registry::start_tls();
    let passing = proxy_for(&registry, false);
    let (digest, _) = upload_blob(&passing, &registry, "team/base", b"shared layer bytes");
    let mount = |proxy: &RunningProxy, target: &str| {
        curl_exchange(
            curl(proxy)
                .args(["--request", "POST"])
                .arg(registry.url(&format!(
                    "{target}/blobs/uploads/?mount={digest}&from=team/base"
                ))),
        )
    };

    let skipping = proxy_for(&registry, true);
    let stripped = mount(&skipping, "team/one");
    assert_eq!(stripped.status, 202, "{stripped:#?}");
    assert!(stripped.header("location").is_some());
    assert_eq!(skipping.stats().mounts_stripped, 1);

    let mounted = mount(&passing, "team/two");
    assert_eq!(mounted.status, 201, "{mounted:#?}");
    assert_eq!(mounted.header("docker-content-digest"), Some(digest));
}

#[test]
fn head_passes_through_without_skip_mode() {
    if !have(&[REGISTRY_BINARY, "curl"]) {
        return;
    }
    let registry = Registry::start_tls();
    let passing = proxy_for(&registry, false);
    let (digest, _) = upload_blob(&passing, &registry, "team/app", b"some layer");
    let present = head(&passing, &registry, "team/app", &digest);
    assert_eq!(present.status, 200);
    assert_eq!(present.header("content-length").as_deref(), Some("10"));
    let missing = head(&passing, &registry, "team/app", &sha256(b"never uploaded"));
    assert_eq!(missing.status, 404);
    assert_eq!(passing.stats().heads_answered_not_found, 0);
}

#[test]
fn http2_client_uploads_and_reads_back_a_blob() {
    if !have(&[REGISTRY_BINARY, "curl"]) {
        return;
    }
    let registry = Registry::start_tls();
    let skipping = proxy_for(&registry, true);
    let h2 = || {
        let mut command = curl(&skipping);
        command.arg("--http2");
        command
    };
    // Larger than the protocol's default 64 KiB windows many times over.
    let bytes: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
    let (digest, steps) = upload_blob_with(h2, &registry, "team/h2", &bytes);
    let statuses: Vec<u16> = steps.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [202, 202, 201], "{steps:#?}");

    let pulled = tempfile::NamedTempFile::new().unwrap();
    let version = crate::support::run(
        h2().args(["--write-out", "%{http_version}", "--output"])
            .arg(pulled.path())
            .arg(registry.url(&format!("team/h2/blobs/{digest}"))),
    );
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        "2",
        "served over HTTP/2"
    );
    assert_eq!(crate::support::image::sha256_file(pulled.path()), digest);
}
