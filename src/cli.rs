//! Command-line interface. Every `run` flag can also come from a
//! `REGPROXY_*` environment variable; a flag given on the command line
//! wins. Repeatable flags take a comma-separated list from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{default_ca_dir, ProxyConfig};
use crate::proxy::upstream::ResolveRule;

#[derive(Debug, Parser)]
#[command(name = "regproxy", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy daemon.
    Run(RunArgs),
    /// Show regproxy's CA certificate, the one clients must trust.
    Ca {
        #[command(subcommand)]
        action: CaAction,
        #[command(flatten)]
        dir: CaDirArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaAction {
    /// Print the path of the CA certificate (creating the CA if missing).
    Path,
    /// Print the CA certificate as PEM (creating the CA if missing).
    Show,
}

#[derive(Debug, Args)]
pub struct CaDirArg {
    /// Directory of the CA: `ca.crt`, and its key in `private/ca.key`
    /// [default: the user's data dir, e.g. ~/.local/share/regproxy]
    #[arg(long, env = "REGPROXY_CA_DIR", value_name = "DIR", global = true)]
    pub ca_dir: Option<PathBuf>,
}

impl CaDirArg {
    pub fn resolve(&self) -> PathBuf {
        self.ca_dir.clone().unwrap_or_else(default_ca_dir)
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address to listen on. Keep it on loopback: anyone who can reach it
    /// can use it as a proxy.
    #[arg(long, env = "REGPROXY_LISTEN", default_value = "127.0.0.1:3128")]
    pub listen: SocketAddr,

    /// Answer blob existence checks with 404 and strip cross-repository
    /// mounts, so clients upload every layer again.
    #[arg(long, env = "REGPROXY_SKIP_EXISTING_LAYERS")]
    pub skip_existing_layers: bool,

    #[command(flatten)]
    pub ca: CaDirArg,

    /// Extra CA certificate (PEM) to trust for upstream registries, beside
    /// the system's roots. Repeatable.
    #[arg(
        long,
        env = "REGPROXY_UPSTREAM_CA",
        value_name = "FILE",
        value_delimiter = ','
    )]
    pub upstream_ca: Vec<PathBuf>,

    /// Do not verify upstream registries' certificates. Dangerous: only for
    /// a registry you control on a network you trust.
    #[arg(long, env = "REGPROXY_INSECURE_UPSTREAM")]
    pub insecure_upstream: bool,

    /// Connect to ADDR whenever a client asks for HOST:PORT, like curl's
    /// --resolve. Repeatable.
    #[arg(
        long,
        env = "REGPROXY_RESOLVE",
        value_name = "HOST:PORT:ADDR",
        value_delimiter = ','
    )]
    pub resolve: Vec<ResolveRule>,

    /// Seconds that in-flight requests get to finish after SIGINT or
    /// SIGTERM.
    #[arg(
        long,
        env = "REGPROXY_DRAIN_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 30
    )]
    pub drain_timeout: u64,
}

impl RunArgs {
    pub fn proxy_config(&self) -> ProxyConfig {
        ProxyConfig {
            skip_existing_layers: self.skip_existing_layers,
            ca_dir: self.ca.resolve(),
            upstream_cas: self.upstream_ca.clone(),
            insecure_upstream: self.insecure_upstream,
            resolve: self.resolve.clone(),
            drain_timeout: Duration::from_secs(self.drain_timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn repeatable_flags_collect() {
        let cli = Cli::try_parse_from([
            "regproxy",
            "run",
            "--skip-existing-layers",
            "--resolve",
            "a.test:443:127.0.0.1",
            "--resolve",
            "b.test:80:::1",
            "--listen",
            "127.0.0.1:0",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert!(args.skip_existing_layers);
        assert_eq!(args.resolve.len(), 2);
        assert_eq!(args.proxy_config().resolve[1].addr.to_string(), "::1");
    }

    #[test]
    fn bad_resolve_is_rejected_at_parse_time() {
        let parsed = Cli::try_parse_from(["regproxy", "run", "--resolve", "nope"]);
        assert!(parsed.unwrap_err().to_string().contains("HOST:PORT:ADDR"));
    }
}
