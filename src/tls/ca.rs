//! regproxy's own certificate authority: created once, kept on disk, and
//! used to mint a leaf certificate for every host a client reaches through
//! `CONNECT`.
//!
//! Layout of the CA directory:
//! - `ca.crt`: the CA certificate (PEM), the file clients trust;
//! - `private/ca.key`: its key (PEM, mode 0600, directory 0700).
//!
//! The key sits in a subdirectory because tools that read a whole
//! directory of certificates (skopeo's and podman's `--cert-dir`) take
//! every `*.key` there for a client key and fail when no matching
//! `*.cert` sits beside it.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use time::{Duration, OffsetDateTime};

/// The CA's subject. Only used when the CA is created: later loads read
/// the subject back from `ca.crt`.
const CA_COMMON_NAME: &str = "regproxy local CA";

/// Ten years: the CA is trusted once per machine and should not expire
/// under a long-lived CI image.
const CA_LIFETIME: Duration = Duration::days(3650);

/// Leaves are re-minted long before this (see the leaf cache); a short
/// life limits what a leaked leaf is good for.
pub const LEAF_LIFETIME: Duration = Duration::days(30);

/// Leaves start an hour in the past, so a client whose clock lags ours a
/// little still accepts them.
const LEAF_BACKDATE: Duration = Duration::hours(1);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "CA key {path} is readable by other users (mode {mode:o}); \
         run `chmod 600 {path}` and start again"
    )]
    KeyNotPrivate { path: PathBuf, mode: u32 },
    #[error(
        "CA key directory {path} can be written by other users (mode {mode:o}), who could \
         swap the key; run `chmod 700 {path}` and start again"
    )]
    DirNotPrivate { path: PathBuf, mode: u32 },
    #[error("CA key {key} exists but its certificate {cert} is missing")]
    CertMissing { key: PathBuf, cert: PathBuf },
    #[error(
        "CA certificate {cert} exists but its key {key} is missing: restore the key, or remove \
         the certificate to create a new CA (clients must then trust the new one)"
    )]
    KeyMissing { key: PathBuf, cert: PathBuf },
    #[error("CA key {key} does not belong to the certificate {cert}")]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("CA files in {dir}: {source}")]
    Invalid { dir: PathBuf, source: rcgen::Error },
    #[error("cannot mint a certificate for {host:?}: not a DNS name or IP address")]
    InvalidHost { host: String },
    #[error("minting a certificate for {host}: {source}")]
    Mint { host: String, source: rcgen::Error },
    #[error("TLS config for {host}: {source}")]
    ServerConfig { host: String, source: rustls::Error },
}

/// The loaded CA, ready to sign leaves.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    /// One key for every leaf: minting then costs one signature, not a
    /// key generation. Leaves differ by name and serial.
    leaf_key: KeyPair,
}

/// A minted leaf: the certificate chain to present and its key.
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_after: OffsetDateTime,
}

impl CertificateAuthority {
    /// Where the CA certificate lives in `dir`.
    pub fn cert_path(dir: &Path) -> PathBuf {
        dir.join("ca.crt")
    }

    /// Where the CA key lives in `dir`.
    pub fn key_path(dir: &Path) -> PathBuf {
        dir.join("private").join("ca.key")
    }

    /// Loads the CA from `dir`, creating it there on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        let key_path = Self::key_path(dir);
        let cert_path = Self::cert_path(dir);
        if !key_path.exists() {
            if cert_path.exists() {
                return Err(CaError::KeyMissing {
                    key: key_path,
                    cert: cert_path,
                });
            }
            create(dir)?;
        }
        check_private(&key_path)?;
        if !cert_path.exists() {
            return Err(CaError::CertMissing {
                key: key_path,
                cert: cert_path,
            });
        }
        let key_pem = read(&key_path)?;
        let cert_pem = read(&cert_path)?;
        let invalid = |source| CaError::Invalid {
            dir: dir.to_owned(),
            source,
        };
        let key = KeyPair::from_pem(&key_pem).map_err(invalid)?;
        if !key_matches_certificate(&key, &cert_pem) {
            return Err(CaError::KeyMismatch {
                key: key_path,
                cert: cert_path,
            });
        }
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(invalid)?;
        let leaf_key = KeyPair::generate().map_err(invalid)?;
        Ok(Self {
            issuer,
            cert_pem,
            leaf_key,
        })
    }

    /// The CA certificate as PEM, for clients to trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Mints a server certificate for `host`: a DNS SAN for a name, an IP
    /// SAN for an address. The host comes from a client, so anything that
    /// is not a valid name is an error, never a panic.
    pub fn mint_leaf(&self, host: &str) -> Result<Leaf, CaError> {
        let san = subject_alt_name(host)?;
        let mint_error = |source| CaError::Mint {
            host: host.to_owned(),
            source,
        };
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(host);
        params.subject_alt_names = vec![san];
        params.serial_number = Some(random_serial());
        params.not_before = now - LEAF_BACKDATE;
        params.not_after = now + LEAF_LIFETIME;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(mint_error)?;
        let key = PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der());
        Ok(Leaf {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(key),
            not_after: params.not_after,
        })
    }
}

/// Whether the certificate's public key is this key's: a mismatched pair
/// would sign leaves that no client can verify.
fn key_matches_certificate(key: &KeyPair, cert_pem: &str) -> bool {
    use rcgen::PublicKeyData;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Ok(pem) = pem::parse(cert_pem) else {
        return false;
    };
    let Ok((_, cert)) = X509Certificate::from_der(pem.contents()) else {
        return false;
    };
    cert.public_key().subject_public_key.data.as_ref() == key.der_bytes()
}

fn subject_alt_name(host: &str) -> Result<SanType, CaError> {
    let invalid = || CaError::InvalidHost {
        host: host.to_owned(),
    };
    match ServerName::try_from(host).map_err(|_| invalid())? {
        ServerName::IpAddress(ip) => Ok(SanType::IpAddress(std::net::IpAddr::from(ip))),
        ServerName::DnsName(name) => {
            let ia5 = name.as_ref().try_into().map_err(|_| invalid())?;
            Ok(SanType::DnsName(ia5))
        }
        _ => Err(invalid()),
    }
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// 16 random bytes with the top bit clear, so the DER integer stays
/// positive. Unique serials matter: some clients reject two certificates
/// from one issuer with the same serial.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // The system RNG failing is not something a proxy can recover from;
    // a fixed serial would still produce a working certificate.
    let _ = SystemRandom::new().fill(&mut bytes);
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn create(dir: &Path) -> Result<(), CaError> {
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| CaError::Io { path, source }
    };
    let private = dir.join("private");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&private)
        .map_err(io_error(&private))?;
    let invalid = |source| CaError::Invalid {
        dir: dir.to_owned(),
        source,
    };

    let key = KeyPair::generate().map_err(invalid)?;
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    params.not_before = now - LEAF_BACKDATE;
    params.not_after = now + CA_LIFETIME;
    let cert = params.self_signed(&key).map_err(invalid)?;

    // The key first, created 0600 from the start: it is never readable by
    // others, not even for a moment.
    let key_path = CertificateAuthority::key_path(dir);
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(io_error(&key_path))?;
    let cert_path = CertificateAuthority::cert_path(dir);
    write_new(&cert_path, cert.pem().as_bytes(), 0o644).map_err(io_error(&cert_path))
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// The key must be readable by its owner alone, and its directory
/// writable by its owner alone.
fn check_private(key_path: &Path) -> Result<(), CaError> {
    let mode = mode_of(key_path)?;
    if mode & 0o077 != 0 {
        return Err(CaError::KeyNotPrivate {
            path: key_path.to_owned(),
            mode,
        });
    }
    let Some(dir) = key_path.parent() else {
        return Ok(());
    };
    let mode = mode_of(dir)?;
    if mode & 0o022 != 0 {
        return Err(CaError::DirNotPrivate {
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

fn mode_of(path: &Path) -> Result<u32, CaError> {
    let metadata = fs::metadata(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(metadata.permissions().mode() & 0o777)
}

fn read(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

    fn parse<'a>(der: &'a CertificateDer<'_>) -> X509Certificate<'a> {
        X509Certificate::from_der(der.as_ref())
            .expect("minted DER parses")
            .1
    }

    fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
        let ext = cert.subject_alternative_name().unwrap().expect("has SAN");
        ext.value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => format!("dns:{dns}"),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn ca_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let second = CertificateAuthority::load_or_create(dir.path()).unwrap();
        assert_eq!(first.cert_pem(), second.cert_pem());
    }

    #[test]
    fn ca_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(dir.path()).unwrap();
        let key = CertificateAuthority::key_path(dir.path());
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let private = fs::metadata(key.parent().unwrap()).unwrap();
        assert_eq!(private.permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(dir.path()).unwrap();
        let key = CertificateAuthority::key_path(dir.path());
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let error = CertificateAuthority::load_or_create(dir.path())
            .err()
            .unwrap();
        assert!(matches!(error, CaError::KeyNotPrivate { .. }), "{error}");
        assert!(error.to_string().contains("chmod 600"), "{error}");
    }

    #[test]
    fn key_directory_writable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(dir.path()).unwrap();
        let private = CertificateAuthority::key_path(dir.path())
            .parent()
            .unwrap()
            .to_owned();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o777)).unwrap();
        let error = CertificateAuthority::load_or_create(dir.path())
            .err()
            .unwrap();
        assert!(matches!(error, CaError::DirNotPrivate { .. }), "{error}");
        assert!(error.to_string().contains("chmod 700"), "{error}");
        // Readable by others is fine for a directory: the key is 0600.
        fs::set_permissions(&private, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(CertificateAuthority::load_or_create(dir.path()).is_ok());
    }

    #[test]
    fn a_key_from_another_ca_is_refused() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        CertificateAuthority::load_or_create(one.path()).unwrap();
        CertificateAuthority::load_or_create(two.path()).unwrap();
        let key = CertificateAuthority::key_path(one.path());
        fs::copy(CertificateAuthority::key_path(two.path()), &key).unwrap();
        let error = CertificateAuthority::load_or_create(one.path())
            .err()
            .unwrap();
        assert!(matches!(error, CaError::KeyMismatch { .. }), "{error}");
        fs::remove_file(&key).unwrap();
        let error = CertificateAuthority::load_or_create(one.path())
            .err()
            .unwrap();
        assert!(matches!(error, CaError::KeyMissing { .. }), "{error}");
    }

    #[test]
    fn leaf_for_a_name_has_a_dns_san_and_is_signed_by_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let leaf = ca.mint_leaf("registry.test").unwrap();
        let cert = parse(&leaf.chain[0]);
        assert_eq!(sans(&cert), ["dns:registry.test"]);
        assert_eq!(cert.issuer().to_string(), format!("CN={CA_COMMON_NAME}"));
        assert!(cert.validity().is_valid());
        assert!(!cert.is_ca());
    }

    #[test]
    fn leaf_for_an_ip_has_an_ip_san() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let leaf = ca.mint_leaf("10.1.2.3").unwrap();
        assert_eq!(sans(&parse(&leaf.chain[0])), ["ip:[10, 1, 2, 3]"]);
    }

    #[test]
    fn leaves_have_unique_serials() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let a = ca.mint_leaf("a.test").unwrap();
        let b = ca.mint_leaf("a.test").unwrap();
        assert_ne!(parse(&a.chain[0]).serial, parse(&b.chain[0]).serial);
    }

    #[test]
    fn invalid_host_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        for host in ["", "bad host", "ex\u{e4}mple.test", "a..b", "-"] {
            assert!(ca.mint_leaf(host).is_err(), "{host:?}");
        }
    }
}
