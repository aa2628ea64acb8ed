//! The real CNCF distribution registry (Debian's `docker-registry`), with
//! TLS under a test CA made here, on a free loopback port.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use super::REGISTRY_HOST;

/// The registry binary: Debian names it `docker-registry`, upstream
/// builds name it `registry`.
pub const REGISTRY_BINARY: &str = "docker-registry";

pub struct Registry {
    pub port: u16,
    /// The test CA that signed the registry's certificate (TLS only).
    pub ca_file: Option<PathBuf>,
    dir: tempfile::TempDir,
    child: Child,
}

/// A CA made for one test, and a certificate for `registry.test` under it.
struct TestTls {
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl Registry {
    /// A registry serving HTTPS for `registry.test` under a fresh test CA.
    pub fn start_tls() -> Registry {
        Self::start(true)
    }

    /// A registry serving plain HTTP.
    pub fn start_plain() -> Registry {
        Self::start(false)
    }

    /// A TLS registry that wants HTTP basic auth: `htpasswd` is a line of
    /// an htpasswd file (`user:bcrypt-hash`).
    pub fn start_with_basic_auth(htpasswd: &str) -> Registry {
        Self::start_with(true, Some(htpasswd))
    }

    fn start(tls: bool) -> Registry {
        Self::start_with(tls, None)
    }

    fn start_with(tls: bool, htpasswd: Option<&str>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let test_tls = tls.then(|| make_test_tls(dir.path()));
        let port = free_port();
        let mut config = config_yaml(dir.path(), port, test_tls.as_ref());
        if let Some(line) = htpasswd {
            let file = dir.path().join("htpasswd");
            fs::write(&file, format!("{line}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: regproxy-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_file = dir.path().join("config.yml");
        fs::write(&config_file, config).unwrap();
        let log = fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(&config_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("registry starts");
        let mut registry = Registry {
            port,
            ca_file: test_tls.map(|t| t.ca_file),
            dir,
            child,
        };
        registry.wait_until_listening();
        registry
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("registry exited ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("registry not listening after 15s:\n{}", self.log());
    }

    /// `registry.test:<port>`, as clients name it.
    pub fn host(&self) -> String {
        format!("{REGISTRY_HOST}:{}", self.port)
    }

    pub fn scheme(&self) -> &'static str {
        if self.ca_file.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// `https://registry.test:<port>/v2/<rest>`
    pub fn url(&self, rest: &str) -> String {
        format!("{}://{}/v2/{rest}", self.scheme(), self.host())
    }

    /// A directory holding only the test CA as `ca.crt`, for clients that
    /// connect to the registry directly (`--dest-cert-dir`, `--hosts-dir`).
    pub fn client_cert_dir(&self) -> PathBuf {
        let dir = self.dir.path().join("client-certs");
        if let Some(ca) = &self.ca_file {
            fs::create_dir_all(&dir).unwrap();
            fs::copy(ca, dir.join("ca.crt")).unwrap();
        }
        dir
    }

    /// Where the registry keeps a blob's bytes on disk.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The registry's configuration. The in-memory blob descriptor cache is
/// the one the official image ships with, and the reason registries can
/// claim blobs whose files are gone.
fn config_yaml(dir: &Path, port: u16, tls: Option<&TestTls>) -> String {
    let tls = tls
        .map(|t| {
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                t.cert_file.display(),
                t.key_file.display()
            )
        })
        .unwrap_or_default();
    format!(
        "version: 0.1\n\
         log:\n  level: info\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  cache:\n    blobdescriptor: inmemory\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n{tls}",
        dir.join("storage").display()
    )
}

fn make_test_tls(dir: &Path) -> TestTls {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "regproxy test registry CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().unwrap();
    // `localhost` too, for benchmarks that push directly, without regproxy.
    let params =
        CertificateParams::new(vec![REGISTRY_HOST.to_owned(), "localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();

    let tls = TestTls {
        ca_file: dir.join("test-ca.crt"),
        cert_file: dir.join("registry.crt"),
        key_file: dir.join("registry.key"),
    };
    fs::write(&tls.ca_file, ca_cert.pem()).unwrap();
    fs::write(&tls.cert_file, cert.pem()).unwrap();
    fs::write(&tls.key_file, key.serialize_pem()).unwrap();
    tls
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
