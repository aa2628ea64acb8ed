//! skopeo, the real client most tests push with.

use super::image::{read_layout, OciImage};
use super::registry::Registry;
use super::{run_ok, skopeo, RunningProxy};

/// `docker://registry.test:<port>/<repository>`
pub fn destination(registry: &Registry, repository: &str) -> String {
    format!("docker://{}/{repository}", registry.host())
}

/// Pushes `image` to `repository` (with its tag) through `proxy`,
/// trusting regproxy's CA for the registry.
pub fn push(proxy: &RunningProxy, registry: &Registry, image: &OciImage, repository: &str) {
    let mut command = skopeo(proxy);
    command.args(["copy", "--quiet"]);
    if registry.ca_file.is_some() {
        command.arg("--dest-cert-dir").arg(proxy.cert_dir());
    } else {
        command.arg("--dest-tls-verify=false");
    }
    run_ok(
        command
            .arg(image.reference())
            .arg(destination(registry, repository)),
    );
}

/// Pulls `repository` back through the proxy into a fresh layout and
/// checks that the manifest and every layer are byte-identical to `image`.
pub fn assert_pulls_back_identical(
    proxy: &RunningProxy,
    registry: &Registry,
    image: &OciImage,
    repository: &str,
) {
    let pulled = tempfile::tempdir().unwrap();
    let mut command = skopeo(proxy);
    command.args(["copy", "--quiet"]);
    if registry.ca_file.is_some() {
        command.arg("--src-cert-dir").arg(proxy.cert_dir());
    } else {
        command.arg("--src-tls-verify=false");
    }
    let target = format!("oci:{}:1", pulled.path().join("image").display());
    run_ok(command.arg(destination(registry, repository)).arg(target));
    let (manifest, layers) = read_layout(&pulled.path().join("image"));
    assert_eq!(manifest, image.manifest, "pulled manifest differs");
    assert_eq!(layers, image.layers, "pulled layers differ");
}
