//! What a client sees when regproxy cannot reach or trust the registry:
//! a 502 that names the host and the reason, while the daemon carries on.

use crate::support::registry::{free_port, Registry, REGISTRY_BINARY};
use crate::support::{curl, curl_exchange, have, ProxyOptions, RunningProxy};

#[test]
fn untrusted_upstream_certificate_gives_502_naming_the_host() {
    if !have(&[REGISTRY_BINARY, "curl"]) {
        return;
    }
    let registry = Registry::start_tls();
    // No --upstream-ca: the registry's test CA is not trusted.
    let proxy = RunningProxy::start(ProxyOptions {
        skip_existing_layers: false,
        upstream_ca: None,
        resolve_ports: vec![registry.port],
        ..ProxyOptions::default()
    });
    let response = curl_exchange(curl(&proxy).arg(registry.url("")));
    assert_eq!(response.status, 502, "{response:#?}");
    assert!(
        response.body.contains(&registry.host()),
        "{}",
        response.body
    );
    assert!(response.body.contains("certificate"), "{}", response.body);
}

#[test]
fn unreachable_upstream_gives_502_and_the_daemon_serves_others() {
    if !have(&[REGISTRY_BINARY, "curl"]) {
        return;
    }
    let registry = Registry::start_tls();
    let dead_port = free_port();
    let proxy = RunningProxy::start(ProxyOptions {
        skip_existing_layers: true,
        upstream_ca: registry.ca_file.clone(),
        resolve_ports: vec![registry.port, dead_port],
        ..ProxyOptions::default()
    });
    let dead = format!("https://registry.test:{dead_port}/v2/");
    let refused = curl_exchange(curl(&proxy).arg(&dead));
    assert_eq!(refused.status, 502, "{refused:#?}");
    assert!(
        refused.body.contains(&format!("registry.test:{dead_port}")),
        "{}",
        refused.body
    );
    assert!(refused.body.contains("connect"), "{}", refused.body);

    let alive = curl_exchange(curl(&proxy).arg(registry.url("")));
    assert_eq!(alive.status, 200, "{alive:#?}");
}

#[test]
fn request_aimed_at_the_proxy_itself_gets_400() {
    let proxy = RunningProxy::start(ProxyOptions {
        skip_existing_layers: false,
        upstream_ca: None,
        resolve_ports: vec![],
        ..ProxyOptions::default()
    });
    if !have(&["curl"]) {
        return;
    }
    let response = curl_exchange(
        std::process::Command::new("curl")
            .args(["--silent", "--noproxy", "*"])
            .arg(format!("{}/v2/", proxy.url())),
    );
    assert_eq!(response.status, 400);
    assert!(response.body.contains("HTTPS_PROXY"), "{}", response.body);
}
