//! `regproxy exec`: a client wrapped by regproxy works on the first try.

use std::process::Command;

use crate::support::daemon::REGPROXY;
use crate::support::image::{sha256_file, OciImage};
use crate::support::registry::{Registry, REGISTRY_BINARY};
use crate::support::{have, run, without_proxy_settings, RunningProxy};

/// `regproxy exec` with its CA in a temporary directory and the test
/// registry's name and CA known to it.
fn exec(registry: &Registry, ca_dir: &std::path::Path) -> Command {
    let mut command = Command::new(REGPROXY);
    without_proxy_settings(&mut command);
    command
        .args(["exec", "--skip-existing-layers", "--ca-dir"])
        .arg(ca_dir)
        .arg("--upstream-ca")
        .arg(registry.ca_file.as_ref().unwrap())
        .arg("--resolve")
        .arg(format!("registry.test:{}:127.0.0.1", registry.port));
    command
}

#[test]
fn exec_wraps_skopeo_and_forces_a_full_reupload() {
    if !have(&[REGISTRY_BINARY, "skopeo"]) {
        return;
    }
    let registry = Registry::start_tls();
    let image = OciImage::generate(21, &[4 << 10, 2 << 20]);
    let destination = format!("docker://{}/team/app:1", registry.host());
    let passing = RunningProxy::for_registry(&registry, false);
    crate::support::skopeo::push(&passing, &registry, &image, "team/app:1");
    let lost = &image.layers[1];
    std::fs::remove_file(registry.blob_data(&lost.digest)).unwrap();

    // No --dest-cert-dir: the wrapped skopeo trusts regproxy through the
    // SSL_CERT_FILE bundle that exec sets up.
    let ca_dir = tempfile::tempdir().unwrap();
    let output = run(exec(&registry, ca_dir.path())
        .args(["--", "skopeo", "copy", "--quiet"])
        .arg(image.reference())
        .arg(&destination));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let blobs = image.blobs().len();
    assert!(
        stderr.contains(&format!("{blobs} blobs uploaded")),
        "{stderr}"
    );
    assert!(
        count_before(&stderr, " HEADs answered 404") >= blobs,
        "{stderr}"
    );
    assert_eq!(sha256_file(&registry.blob_data(&lost.digest)), lost.digest);
}

#[test]
fn exec_passes_the_exit_status_and_the_environment_through() {
    if !have(&[REGISTRY_BINARY]) {
        return;
    }
    let registry = Registry::start_tls();
    let ca_dir = tempfile::tempdir().unwrap();
    let script = "test -n \"$HTTPS_PROXY\" && test \"$https_proxy\" = \"$HTTP_PROXY\" \
                  && grep -q \"$(sed -n 2p \"$CA_CERT\")\" \"$SSL_CERT_FILE\" && exit 7";
    let output = run(exec(&registry, ca_dir.path())
        .env("CA_CERT", ca_dir.path().join("ca.crt"))
        .args(["--", "sh", "-c", script]));
    assert_eq!(output.status.code(), Some(7), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("0 requests"), "{stderr}");
}

#[test]
fn exec_warns_when_the_registry_is_on_localhost() {
    if !have(&[REGISTRY_BINARY]) {
        return;
    }
    let registry = Registry::start_tls();
    let ca_dir = tempfile::tempdir().unwrap();
    let output = run(exec(&registry, ca_dir.path()).args([
        "--",
        "true",
        "docker://localhost:5000/team/app:1",
    ]));
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--resolve registry.test:5000:127.0.0.1"),
        "{stderr}"
    );
}

/// The number just before `label` in the summary line.
fn count_before(text: &str, label: &str) -> usize {
    let before = &text[..text
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in {text}"))];
    let digits = before.rsplit(|c: char| !c.is_ascii_digit()).next().unwrap();
    digits.parse().unwrap()
}
