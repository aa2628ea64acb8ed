//! containerd's pusher (ctr; nerdctl and BuildKit share its code) through
//! regproxy into the real registry.

use crate::support::containerd::Containerd;
use crate::support::image::{sha256_file, OciImage};
use crate::support::registry::{Registry, REGISTRY_BINARY};
use crate::support::{have, RunningProxy};

fn proxy_for(registry: &Registry, skip_existing_layers: bool) -> RunningProxy {
    RunningProxy::for_registry(registry, skip_existing_layers)
}

#[test]
fn ctr_push_uploads_nothing_twice_unless_skip_mode_forces_it() {
    if !have(&[REGISTRY_BINARY, "containerd", "ctr"]) {
        return;
    }
    let registry = Registry::start_tls();
    let containerd = Containerd::start();
    let image = OciImage::generate(11, &[8 << 10, 1 << 20, 6 << 20]);
    let blobs = image.blobs().len() as u64;
    let reference = containerd.import(&image, &registry, "team/ctr");

    let passing = proxy_for(&registry, false);
    containerd.push(&passing, &registry, &reference);
    let first = passing.stats();
    assert_eq!(first.blobs_uploaded, blobs, "{first:?}");

    containerd.push(&passing, &registry, &reference);
    let second = passing.stats();
    assert_eq!(second.blobs_uploaded, first.blobs_uploaded, "{second:?}");
    assert_eq!(second.upload_bytes, first.upload_bytes, "{second:?}");

    // The registry loses a layer; skip mode makes ctr upload it again.
    let lost = &image.layers[2];
    std::fs::remove_file(registry.blob_data(&lost.digest)).unwrap();
    let skipping = proxy_for(&registry, true);
    containerd.push(&skipping, &registry, &reference);
    let forced = skipping.stats();
    assert_eq!(forced.blobs_uploaded, blobs, "{forced:?}");
    assert!(forced.upload_bytes >= image.layer_bytes(), "{forced:?}");
    assert!(forced.heads_answered_not_found >= blobs, "{forced:?}");
    assert_eq!(sha256_file(&registry.blob_data(&lost.digest)), lost.digest);
}
