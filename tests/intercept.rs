//! `--intercept`: only the listed hosts are TLS-terminated; every other
//! CONNECT is a byte-for-byte tunnel and the client sees the registry's
//! own certificate.

use crate::support::registry::{Registry, REGISTRY_BINARY};
use crate::support::{curl_exchange, curl_trusting, have, ProxyOptions, RunningProxy};

fn proxy_intercepting(registry: &Registry, intercept: Vec<&'static str>) -> RunningProxy {
    RunningProxy::start(ProxyOptions {
        skip_existing_layers: true,
        intercept,
        upstream_ca: registry.ca_file.clone(),
        resolve_ports: vec![registry.port],
        ..ProxyOptions::default()
    })
}

#[test]
fn host_not_listed_is_tunnelled_with_its_own_certificate() {
    if !have(&[REGISTRY_BINARY, "curl"]) {
        return;
    }
    let registry = Registry::start_tls();
    let proxy = proxy_intercepting(&registry, vec!["auth.test", "*.cdn.test"]);
    let registry_ca = registry.ca_file.clone().unwrap();

    let with_registry_ca = curl_exchange(curl_trusting(&proxy, &registry_ca).arg(registry.url("")));
    assert_eq!(with_registry_ca.status, 200, "{with_registry_ca:#?}");

    let with_our_ca = curl_exchange(curl_trusting(&proxy, &proxy.ca_cert()).arg(registry.url("")));
    assert_eq!(
        with_our_ca.status, 0,
        "regproxy must not present its own certificate"
    );
    assert_eq!(proxy.stats().requests, 0, "a tunnel is not looked into");
}

#[test]
fn listed_host_is_intercepted() {
    if !have(&[REGISTRY_BINARY, "curl"]) {
        return;
    }
    let registry = Registry::start_tls();
    let pattern = Box::leak(format!("registry.test:{}", registry.port).into_boxed_str());
    let proxy = proxy_intercepting(&registry, vec!["other.test", pattern]);
    let response = curl_exchange(curl_trusting(&proxy, &proxy.ca_cert()).arg(registry.url("")));
    assert_eq!(response.status, 200, "{response:#?}");
    assert_eq!(proxy.stats().requests, 1);
}
