//! Never a corrupted byte: many images with random layers pushed at once
//! through skip mode, each pulled back and compared.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::support::image::OciImage;
use crate::support::registry::{Registry, REGISTRY_BINARY};
use crate::support::{have, skopeo, RunningProxy};

const IMAGES: u64 = 20;
const CONCURRENT_PUSHES: u64 = 4;

/// Layer sizes for image `n`: varied, and two images carry a 64 MiB layer.
fn layer_sizes(n: u64) -> Vec<usize> {
    let mut sizes = vec![
        1 + (n as usize * 7919) % (512 << 10),
        (n as usize * 104_729) % (3 << 20),
    ];
    if n % 10 == 3 {
        sizes.push(64 << 20);
    }
    sizes
}

#[test]
fn concurrent_forced_pushes_pull_back_identical() {
    if !have(&[REGISTRY_BINARY, "skopeo"]) {
        return;
    }
    let registry = Arc::new(Registry::start_tls());
    let proxy = Arc::new(RunningProxy::for_registry(&registry, true));
    let verified = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..CONCURRENT_PUSHES)
        .map(|worker| {
            let (registry, proxy, verified) = (registry.clone(), proxy.clone(), verified.clone());
            std::thread::spawn(move || {
                for n in (worker..IMAGES).step_by(CONCURRENT_PUSHES as usize) {
                    let image = OciImage::generate(100 + n, &layer_sizes(n));
                    let repository = format!("team/image{n}:1");
                    skopeo::push(&proxy, &registry, &image, &repository);
                    skopeo::assert_pulls_back_identical(&proxy, &registry, &image, &repository);
                    verified.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let panics = workers
        .into_iter()
        .map(|w| w.join())
        .filter(Result::is_err)
        .count();
    let verified = verified.load(Ordering::Relaxed);
    eprintln!(
        "integrity: {verified} of {IMAGES} images pulled back identical, {panics} workers failed"
    );
    assert_eq!(panics, 0);
    assert_eq!(verified as u64, IMAGES);
}
