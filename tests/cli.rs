//! The `regproxy` binary as a user runs it.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

const REGPROXY: &str = env!("CARGO_BIN_EXE_regproxy");

#[test]
fn ca_show_creates_the_ca_and_prints_it_as_pem() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(REGPROXY)
        .args(["ca", "show", "--ca-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let pem = String::from_utf8(output.stdout).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert_eq!(
        pem,
        std::fs::read_to_string(dir.path().join("ca.crt")).unwrap()
    );

    let key = dir.path().join("private/ca.key");
    assert_eq!(
        std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn ca_path_prints_where_the_certificate_is() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(REGPROXY)
        .args(["ca", "path"])
        .env("REGPROXY_CA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let path = String::from_utf8(output.stdout).unwrap();
    assert_eq!(path.trim(), dir.path().join("ca.crt").display().to_string());
    assert!(dir.path().join("ca.crt").is_file());
}

#[test]
fn run_logs_its_startup_line_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Command::new(REGPROXY)
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--skip-existing-layers",
            "--ca-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(daemon.stderr.take().unwrap()).lines();
    let started = lines.next().unwrap().unwrap();
    assert!(started.contains("regproxy started"), "{started}");
    assert!(started.contains("skip-existing-layers"), "{started}");
    assert!(started.contains("ca.crt"), "{started}");

    let kill = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    assert!(kill.unwrap().success());
    let status = daemon.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn readable_ca_key_is_refused_with_the_chmod_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let created = Command::new(REGPROXY)
        .args(["ca", "path", "--ca-dir"])
        .arg(dir.path())
        .status();
    assert!(created.unwrap().success());
    let key = dir.path().join("private/ca.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = Command::new(REGPROXY)
        .args(["run", "--listen", "127.0.0.1:0", "--ca-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

#[test]
fn check_accepts_the_example_config() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/regproxy.toml");
    let output = Command::new(REGPROXY)
        .args(["run", "--check", "--config", example, "--ca-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains("127.0.0.1:3128"), "{stdout}");
}

#[test]
fn bad_config_file_fails_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1\"\nintercept = [\"no spaces allowed\"]\n",
    )
    .unwrap();
    let output = Command::new(REGPROXY)
        .args(["run", "--check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    assert!(stderr.contains("intercept"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
}

#[test]
fn env_prints_shell_lines_for_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(REGPROXY)
        .args(["env", "--listen", "127.0.0.1:3999", "--ca-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("export HTTPS_PROXY=http://127.0.0.1:3999"),
        "{stdout}"
    );
    let bundle = dir.path().join("ca-bundle.pem");
    assert!(
        stdout.contains(&format!("export SSL_CERT_FILE='{}'", bundle.display())),
        "{stdout}"
    );
    let ca = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
    assert!(std::fs::read_to_string(bundle).unwrap().ends_with(&ca));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nothing is listening"), "{stderr}");
}
