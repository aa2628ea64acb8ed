//! The regproxy binary run as a daemon on a free port, as a user runs it:
//! for tests that signal it, kill it or read its file descriptors, and for
//! the benchmarks, which measure its CPU time and memory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::image::OciImage;
use super::registry::{free_port, Registry};

pub const REGPROXY: &str = env!("CARGO_BIN_EXE_regproxy");

pub struct Daemon {
    pub child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// `regproxy run` for `registry` (name resolved, test CA trusted when
    /// it has one) with `extra` arguments; its log goes to a file.
    pub fn start(registry: &Registry, extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        let mut command = Command::new(REGPROXY);
        command
            .args(["run", "--listen", &format!("127.0.0.1:{port}"), "--ca-dir"])
            .arg(dir.path().join("ca"))
            .arg("--resolve")
            .arg(format!("registry.test:{}:127.0.0.1", registry.port))
            .args(extra)
            .stderr(log);
        if let Some(ca) = &registry.ca_file {
            command.arg("--upstream-ca").arg(ca);
        }
        let child = command.spawn().expect("regproxy starts");
        let daemon = Daemon { child, port, dir };
        daemon.wait_until_listening();
        daemon
    }

    fn wait_until_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(self.addr()).is_err() {
            assert!(
                Instant::now() < deadline,
                "regproxy not listening:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The CA directory, as skopeo's `--cert-dir` wants it.
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    pub fn memory_kib(&self, field: &str) -> u64 {
        memory_kib(self.child.id(), field)
    }

    pub fn cpu(&self) -> Duration {
        cpu(self.child.id())
    }

    /// Starts `skopeo copy` of `image` to `registry`'s `team/app:1`
    /// through this daemon and leaves it running, for tests that signal
    /// or kill the daemon mid-push.
    pub fn spawn_skopeo_push(&self, registry: &Registry, image: &OciImage) -> Child {
        Command::new("skopeo")
            .env("HTTPS_PROXY", self.url())
            .args(["copy", "--quiet", "--dest-cert-dir"])
            .arg(self.ca_dir())
            .arg(image.reference())
            .arg(format!("docker://{}/team/app:1", registry.host()))
            .spawn()
            .expect("skopeo starts")
    }
}

/// A `/proc/<pid>/status` memory figure in KiB: `VmRSS` (now) or `VmHWM`
/// (the peak).
pub fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A process's user plus system CPU time so far.
pub fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which sits in parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
