//! A CA bundle for clients that take one file of trusted roots (Go's
//! `SSL_CERT_FILE`): the system's roots plus regproxy's CA, so the client
//! trusts intercepted hosts and still trusts every other host.

use std::io;
use std::path::Path;

/// Writes the bundle to `path`.
pub fn write_bundle(path: &Path, ca_pem: &str) -> io::Result<()> {
    std::fs::write(path, bundle(ca_pem))
}

fn bundle(ca_pem: &str) -> String {
    // Certificates the system store cannot parse are left out, as every
    // TLS client that reads the store does.
    let system = rustls_native_certs::load_native_certs();
    let mut text = String::new();
    for cert in system.certs {
        text.push_str(&pem::encode(&pem::Pem::new(
            "CERTIFICATE",
            cert.as_ref().to_vec(),
        )));
    }
    text.push_str(ca_pem);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_ends_with_our_ca() {
        let ca = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----";
        let text = bundle(ca);
        assert!(text.ends_with(&format!("{ca}\n")));
    }
}
