//! containerd, run as the test's own daemon (root, state and socket in a
//! temporary directory), and its `ctr` client, whose push code is the one
//! nerdctl and BuildKit use.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::image::OciImage;
use super::registry::Registry;
use super::{run, run_ok, RunningProxy};

pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    pub fn start() -> Containerd {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        // Only the content and image services are needed: the CRI plugin
        // would want a full node.
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{0}/containerd.sock\"\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd starts");
        let mut containerd = Containerd { dir, child };
        containerd.wait_until_serving();
        containerd
    }

    fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if run(self.ctr().arg("version")).status.success() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("containerd exited ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("containerd not serving after 20s:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// `ctr` talking to this containerd, with no proxy settings of its own.
    pub fn ctr(&self) -> Command {
        let mut command = Command::new("ctr");
        super::without_proxy_settings(&mut command);
        command.arg("--address").arg(self.socket());
        command
    }

    /// Imports `image` as `<registry>/<repository>:1`, without unpacking.
    pub fn import(&self, image: &OciImage, registry: &Registry, repository: &str) -> String {
        self.import_as(image, &format!("{}/{repository}", registry.host()))
    }

    /// Imports `image` as `<base>:1`, without unpacking.
    pub fn import_as(&self, image: &OciImage, base: &str) -> String {
        let archive = self.dir.path().join("image.tar");
        let mut tar = tar::Builder::new(std::fs::File::create(&archive).unwrap());
        tar.append_dir_all(".", image.layout()).unwrap();
        tar.finish().unwrap();
        run_ok(
            self.ctr()
                .args(["images", "import", "--no-unpack", "--base-name", base])
                .arg(&archive),
        );
        format!("{base}:1")
    }

    /// A scratch directory that lives as long as this containerd.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ctr images push` through `proxy`, trusting regproxy's CA for the
    /// registry host through a hosts directory, as nerdctl users do.
    pub fn push(&self, proxy: &RunningProxy, registry: &Registry, reference: &str) {
        let hosts = self.hosts_dir(proxy, registry);
        run_ok(
            self.ctr()
                .env("HTTPS_PROXY", proxy.url())
                .args(["images", "push", "--hosts-dir"])
                .arg(&hosts)
                .arg(reference),
        );
    }

    fn hosts_dir(&self, proxy: &RunningProxy, registry: &Registry) -> PathBuf {
        let hosts = self.dir.path().join("hosts");
        let host_dir = hosts.join(registry.host());
        std::fs::create_dir_all(&host_dir).unwrap();
        copy(&proxy.ca_cert(), &host_dir.join("ca.crt"));
        hosts
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
