//! `--skip-existing-manifests`, for clients that skip a whole image when
//! its manifest exists (crane, oras, regctl), checked with curl.

use crate::support::image::{sha256, OciImage};
use crate::support::registry::{Registry, REGISTRY_BINARY};
use crate::support::{curl, curl_exchange, have, skopeo, CurlResponse, ProxyOptions, RunningProxy};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

fn head_manifest(proxy: &RunningProxy, registry: &Registry, reference: &str) -> CurlResponse {
    curl_exchange(
        curl(proxy)
            .arg("--head")
            .args(["--header", &format!("Accept: {MANIFEST_TYPE}")])
            .arg(registry.url(&format!("team/app/manifests/{reference}"))),
    )
}

#[test]
fn manifest_heads_are_faked_except_referrers_tags_and_this_sessions_pushes() {
    if !have(&[REGISTRY_BINARY, "skopeo", "curl"]) {
        return;
    }
    let registry = Registry::start_tls();
    let image = OciImage::generate(31, &[4 << 10]);
    let referrers_tag = sha256(b"subject").replace(':', "-");
    let passing = RunningProxy::for_registry(&registry, false);
    skopeo::push(&passing, &registry, &image, "team/app:1");
    skopeo::push(
        &passing,
        &registry,
        &image,
        &format!("team/app:{referrers_tag}"),
    );
    assert_eq!(head_manifest(&passing, &registry, "1").status, 200);

    let skipping = RunningProxy::start(ProxyOptions {
        skip_existing_manifests: true,
        upstream_ca: registry.ca_file.clone(),
        resolve_ports: vec![registry.port],
        ..ProxyOptions::default()
    });
    let faked = head_manifest(&skipping, &registry, "1");
    assert_eq!(faked.status, 404, "{faked:#?}");
    assert_eq!(
        head_manifest(&skipping, &registry, &image.manifest.digest).status,
        404
    );
    assert_eq!(
        head_manifest(&skipping, &registry, &referrers_tag).status,
        200
    );

    // A manifest pushed through this daemon is checked for real.
    let manifest = std::fs::read(
        image
            .layout()
            .join("blobs/sha256")
            .join(&image.manifest.digest[7..]),
    )
    .unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &manifest).unwrap();
    let put = curl_exchange(
        curl(&skipping)
            .args([
                "--request",
                "PUT",
                "--header",
                &format!("Content-Type: {MANIFEST_TYPE}"),
            ])
            .arg("--data-binary")
            .arg(format!("@{}", file.path().display()))
            .arg(registry.url("team/app/manifests/2")),
    );
    assert_eq!(put.status, 201, "{put:#?}");
    assert_eq!(head_manifest(&skipping, &registry, "2").status, 200);
    assert_eq!(
        head_manifest(&skipping, &registry, &image.manifest.digest).status,
        200
    );
    assert_eq!(head_manifest(&skipping, &registry, "1").status, 404);
}
