//! Real pushes with skopeo through regproxy into the real registry.

use std::fs;

use crate::support::image::{sha256_file, OciImage};
use crate::support::registry::{Registry, REGISTRY_BINARY};
use crate::support::{curl, curl_status, have, skopeo, RunningProxy};

fn proxy_for(registry: &Registry, skip_existing_layers: bool) -> RunningProxy {
    RunningProxy::for_registry(registry, skip_existing_layers)
}

const REPOSITORY: &str = "team/app:1";

fn push(proxy: &RunningProxy, registry: &Registry, image: &OciImage) {
    skopeo::push(proxy, registry, image, REPOSITORY);
}

fn assert_pulls_back_identical(proxy: &RunningProxy, registry: &Registry, image: &OciImage) {
    skopeo::assert_pulls_back_identical(proxy, registry, image, REPOSITORY);
}

#[test]
fn skopeo_push_passes_through_then_skip_mode_uploads_every_layer_again() {
    if !have(&[REGISTRY_BINARY, "skopeo"]) {
        return;
    }
    let registry = Registry::start_tls();
    let image = OciImage::generate(1, &[4 << 10, 1 << 20, 64 << 20]);
    let blobs = image.blobs().len() as u64;

    // 1. Through regproxy without skip mode, a first push is a normal push.
    let passing = proxy_for(&registry, false);
    push(&passing, &registry, &image);
    let first = passing.stats();
    assert_eq!(first.heads_answered_not_found, 0);
    assert_eq!(first.blobs_uploaded, blobs);
    assert!(first.upload_bytes >= image.layer_bytes(), "{first:?}");
    assert_pulls_back_identical(&passing, &registry, &image);

    // 2. A second push finds every blob present and uploads nothing.
    let before = passing.stats();
    push(&passing, &registry, &image);
    let second = passing.stats();
    assert_eq!(second.blobs_uploaded, before.blobs_uploaded, "{second:?}");
    assert_eq!(second.upload_bytes, before.upload_bytes, "{second:?}");

    // 3. In skip mode every layer's bytes reach the registry again.
    let skipping = proxy_for(&registry, true);
    push(&skipping, &registry, &image);
    let third = skipping.stats();
    assert!(third.heads_answered_not_found >= blobs, "{third:?}");
    assert_eq!(third.blobs_uploaded, blobs, "{third:?}");
    assert!(third.upload_bytes >= image.layer_bytes(), "{third:?}");
    assert_pulls_back_identical(&skipping, &registry, &image);
}

#[test]
fn skip_mode_repairs_a_blob_the_registry_lost() {
    if !have(&[REGISTRY_BINARY, "skopeo", "curl"]) {
        return;
    }
    let registry = Registry::start_tls();
    let image = OciImage::generate(2, &[8 << 10, 3 << 20]);
    let passing = proxy_for(&registry, false);
    push(&passing, &registry, &image);

    // The storage loses a layer, but the registry's blob cache still
    // claims it: the situation regproxy exists for.
    let lost = &image.layers[1];
    fs::remove_file(registry.blob_data(&lost.digest)).unwrap();
    let head = curl_status(
        curl(&passing)
            .arg("--head")
            .arg(registry.url(&format!("team/app/blobs/{}", lost.digest))),
    );
    assert_eq!(head, 200, "the registry should still claim the lost blob");

    // A normal push believes it and leaves the blob missing.
    let before = passing.stats();
    push(&passing, &registry, &image);
    assert_eq!(passing.stats().upload_bytes, before.upload_bytes);
    assert!(!registry.blob_data(&lost.digest).exists());

    // Skip mode uploads it again, and the bytes are back, intact.
    let skipping = proxy_for(&registry, true);
    push(&skipping, &registry, &image);
    assert_eq!(sha256_file(&registry.blob_data(&lost.digest)), lost.digest);
    assert_pulls_back_identical(&skipping, &registry, &image);
}

#[test]
fn skip_mode_works_for_a_plain_http_registry_through_http_proxy() {
    if !have(&[REGISTRY_BINARY, "skopeo"]) {
        return;
    }
    let registry = Registry::start_plain();
    let image = OciImage::generate(3, &[16 << 10, 2 << 20]);
    let passing = proxy_for(&registry, false);
    push(&passing, &registry, &image);

    let skipping = proxy_for(&registry, true);
    push(&skipping, &registry, &image);
    let stats = skipping.stats();
    assert_eq!(
        stats.blobs_uploaded,
        image.blobs().len() as u64,
        "{stats:?}"
    );
    assert!(stats.upload_bytes >= image.layer_bytes(), "{stats:?}");
    assert_pulls_back_identical(&skipping, &registry, &image);
}
