//! Whom regproxy trusts when it connects to the real registry: the
//! system's roots plus any CA files the operator names, or nobody checked
//! at all when verification is turned off.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("upstream CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("no trusted root certificates: the system has none and no --upstream-ca was given")]
    Empty,
    #[error("upstream TLS config: {0}")]
    Config(#[from] rustls::Error),
}

/// How upstream certificates are checked.
pub enum UpstreamTrust<'a> {
    /// The system's roots plus these extra CA files (PEM).
    Verify { extra_cas: &'a [PathBuf] },
    /// Accept any certificate. Only for registries the operator controls.
    Insecure,
}

/// The TLS client config for connections to registries. Upstream speaks
/// HTTP/1.1 only: one pooled connection per concurrent request keeps
/// large uploads from sharing one TCP window.
pub fn upstream_client_config(trust: UpstreamTrust<'_>) -> Result<Arc<ClientConfig>, RootsError> {
    let provider = super::crypto_provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = match trust {
        UpstreamTrust::Verify { extra_cas } => builder
            .with_root_certificates(root_store(extra_cas)?)
            .with_no_client_auth(),
        UpstreamTrust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn root_store(extra_cas: &[PathBuf]) -> Result<RootCertStore, RootsError> {
    let mut roots = RootCertStore::empty();
    // Unreadable system certificates are skipped, as every TLS client does;
    // what matters is that the registry's chain verifies.
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    for path in extra_cas {
        for cert in read_ca_file(path)? {
            roots.add(cert).map_err(|e| ca_file_error(path, e))?;
        }
    }
    if roots.is_empty() {
        return Err(RootsError::Empty);
    }
    Ok(roots)
}

fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, RootsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| ca_file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_file_error(path, e))?;
    if certs.is_empty() {
        return Err(ca_file_error(path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn ca_file_error(path: &Path, reason: impl std::fmt::Display) -> RootsError {
    RootsError::CaFile {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// `--insecure-upstream`: the chain is not checked, but handshake
/// signatures still are, so the session keys belong to whoever presented
/// the certificate.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
