//! Command-line interface. Every `run` flag can also come from a
//! `REGPROXY_*` environment variable; a flag given on the command line
//! wins. Repeatable flags take a comma-separated list from the environment;
//! switches take `1`/`true`/`yes`/`on`, or `0`/`false`/`no`/`off`/empty.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::FalseyValueParser;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Parser, Subcommand};

use crate::config::{default_ca_dir, ConfigError, FileConfig, HostPattern, LogFormat, ProxyConfig};
use crate::proxy::auth::ProxyCredentials;
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
    /// Run a command with regproxy in front of it: a proxy on a free
    /// loopback port, HTTPS_PROXY/HTTP_PROXY and SSL_CERT_FILE set for
    /// the command, a summary when it exits.
    #[command(arg_required_else_help = true)]
    Exec {
        #[command(flatten)]
        run: RunArgs,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Print shell lines that point clients at a running daemon:
    /// `eval "$(regproxy env)"`.
    Env(RunArgs),
    /// Convert a flow log to HTTP Archive 1.2, for a browser's developer
    /// tools or any HAR viewer: `regproxy har flow.jsonl > push.har`.
    Har {
        /// The flow log written by `--flow-log`.
        flow_log: PathBuf,
    },
    /// Summarise a push from its flow log: each blob's existence check,
    /// mount, upload and status; manifests pushed; errors.
    Report {
        /// The flow log written by `--flow-log`.
        flow_log: PathBuf,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
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

/// Options of the proxy, shared by `run`, `exec` and `env`. Defaults live
/// in [`ProxyConfig`] and [`DEFAULT_LISTEN`], not here, so that a value
/// from the config file can tell itself apart from one the user gave.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML file with any of these options (see config/regproxy.toml).
    /// Flags and environment variables override it.
    #[arg(long, env = "REGPROXY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Check the configuration (file, CA, upstream CAs) and exit. A CA
    /// that does not exist yet is created, as `run` would.
    #[arg(long)]
    pub check: bool,

    /// Address to listen on [default: 127.0.0.1:3128]. Keep it on
    /// loopback: anyone who can reach it can use it as a proxy.
    #[arg(long, env = "REGPROXY_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Answer blob existence checks with 404 and strip cross-repository
    /// mounts, so clients upload every layer again.
    #[arg(long, env = "REGPROXY_SKIP_EXISTING_LAYERS", value_parser = FalseyValueParser::new())]
    pub skip_existing_layers: bool,

    /// Answer manifest existence checks with 404, for clients that skip a
    /// whole image when its manifest exists (crane, oras, regctl).
    #[arg(long, env = "REGPROXY_SKIP_EXISTING_MANIFESTS", value_parser = FalseyValueParser::new())]
    pub skip_existing_manifests: bool,

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
    #[arg(long, env = "REGPROXY_INSECURE_UPSTREAM", value_parser = FalseyValueParser::new())]
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

    /// Intercept only CONNECT targets matching HOST[:PORT] (`*` as a
    /// wildcard); tunnel every other host untouched. Repeatable
    /// [default: intercept all].
    #[arg(
        long,
        env = "REGPROXY_INTERCEPT",
        value_name = "HOST[:PORT]",
        value_delimiter = ','
    )]
    pub intercept: Vec<HostPattern>,

    /// Seconds that in-flight requests get to finish after SIGINT or
    /// SIGTERM [default: 30].
    #[arg(long, env = "REGPROXY_DRAIN_TIMEOUT", value_name = "SECONDS")]
    pub drain_timeout: Option<u64>,

    /// Append one JSON line per exchange to FILE (headers redacted, small
    /// JSON bodies kept), for `regproxy har` and `regproxy report`.
    #[arg(long, env = "REGPROXY_FLOW_LOG", value_name = "FILE")]
    pub flow_log: Option<PathBuf>,

    /// Require clients to send these proxy credentials (Basic). Needed to
    /// listen beyond loopback.
    #[arg(
        long,
        env = "REGPROXY_PROXY_AUTH",
        value_name = "USER:PASSWORD",
        hide_env_values = true
    )]
    pub proxy_auth: Option<ProxyCredentials>,

    /// Like --proxy-auth, read from FILE (one USER:PASSWORD line), which
    /// keeps the password out of the process list.
    #[arg(
        long,
        env = "REGPROXY_PROXY_AUTH_FILE",
        value_name = "FILE",
        conflicts_with = "proxy_auth"
    )]
    pub proxy_auth_file: Option<PathBuf>,

    /// Allow listening beyond loopback without proxy credentials. Anyone
    /// who can reach the port can then use the proxy.
    #[arg(long, env = "REGPROXY_ALLOW_UNAUTHENTICATED", value_parser = FalseyValueParser::new())]
    pub allow_unauthenticated: bool,

    /// The most client connections served at once; more wait until one
    /// closes [default: 4096].
    #[arg(long, env = "REGPROXY_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Format of the daemon's own log lines [default: text].
    #[arg(long, env = "REGPROXY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:3128";

/// What `run` works with once flags, environment and file are merged.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Listening beyond loopback without proxy credentials was asked for.
    pub allow_unauthenticated: bool,
    pub log_format: LogFormat,
    pub proxy: ProxyConfig,
}

impl RunArgs {
    /// Merges the config file (if any) under the flags and environment.
    /// `matches` are this subcommand's, to tell a value the user gave
    /// from a default.
    pub fn settings(&self, matches: &ArgMatches) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let given = |id: &str| {
            matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        let flag = |id: &str, value: bool, from_file: Option<bool>| match from_file {
            Some(from_file) if !given(id) => from_file,
            _ => value,
        };
        fn list<T: Clone>(given: bool, value: &[T], from_file: Option<Vec<T>>) -> Vec<T> {
            match from_file {
                Some(from_file) if !given => from_file,
                _ => value.to_vec(),
            }
        }
        let default_listen = DEFAULT_LISTEN
            .parse()
            .expect("default listen address parses");
        let defaults = ProxyConfig::new(default_ca_dir());
        let proxy = ProxyConfig {
            skip_existing_layers: flag(
                "skip_existing_layers",
                self.skip_existing_layers,
                file.skip_existing_layers,
            ),
            skip_existing_manifests: flag(
                "skip_existing_manifests",
                self.skip_existing_manifests,
                file.skip_existing_manifests,
            ),
            ca_dir: self
                .ca
                .ca_dir
                .clone()
                .or(file.ca_dir)
                .unwrap_or(defaults.ca_dir),
            upstream_cas: list(given("upstream_ca"), &self.upstream_ca, file.upstream_ca),
            insecure_upstream: flag(
                "insecure_upstream",
                self.insecure_upstream,
                file.insecure_upstream,
            ),
            resolve: list(given("resolve"), &self.resolve, file.resolve),
            intercept: list(given("intercept"), &self.intercept, file.intercept),
            drain_timeout: self
                .drain_timeout
                .or(file.drain_timeout)
                .map(Duration::from_secs)
                .unwrap_or(defaults.drain_timeout),
            flow_log: self.flow_log.clone().or(file.flow_log),
            proxy_auth: self.credentials(file.proxy_auth, file.proxy_auth_file)?,
            max_connections: self
                .max_connections
                .or(file.max_connections)
                .unwrap_or(defaults.max_connections),
        };
        if proxy.max_connections == 0 {
            // No connection could ever be served: refuse rather than hang.
            return Err(ConfigError::Zero {
                option: "max_connections",
            });
        }
        Ok(Settings {
            listen: self.listen.or(file.listen).unwrap_or(default_listen),
            log_format: self.log_format.or(file.log_format).unwrap_or_default(),
            allow_unauthenticated: flag(
                "allow_unauthenticated",
                self.allow_unauthenticated,
                file.allow_unauthenticated,
            ),
            proxy,
        })
    }
}

impl RunArgs {
    /// Proxy credentials from the flag or its file, else from the config
    /// file's `proxy_auth` or `proxy_auth_file`.
    fn credentials(
        &self,
        from_file: Option<String>,
        file_from_file: Option<PathBuf>,
    ) -> Result<Option<ProxyCredentials>, ConfigError> {
        if let Some(credentials) = &self.proxy_auth {
            return Ok(Some(credentials.clone()));
        }
        let invalid = |path: &std::path::Path, message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        if let Some(path) = self.proxy_auth_file.as_ref().or(file_from_file.as_ref()) {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::ReadCredentials {
                    path: path.clone(),
                    source,
                })?;
            return text
                .parse()
                .map(Some)
                .map_err(|message| ConfigError::ParseCredentials {
                    path: path.clone(),
                    message,
                });
        }
        let config = self.config.clone().unwrap_or_default();
        from_file
            .map(|text| {
                text.parse()
                    .map_err(|e| invalid(&config, format!("proxy_auth: {e}")))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

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
        assert_eq!(args.resolve[1].addr.to_string(), "::1");
    }

    fn settings_from(args: &[&str], file: &str) -> Settings {
        try_settings_from(args, file).unwrap()
    }

    fn try_settings_from(args: &[&str], file: &str) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("regproxy.toml");
        std::fs::write(&path, file).unwrap();
        let mut argv = vec!["regproxy", "run", "--config", path.to_str().unwrap()];
        argv.extend_from_slice(args);
        let matches = Cli::command().try_get_matches_from(argv).unwrap();
        let run = matches.subcommand_matches("run").unwrap();
        let Command::Run(parsed) = Cli::from_arg_matches(&matches).unwrap().command else {
            panic!("not run")
        };
        parsed.settings(run)
    }

    #[test]
    fn file_fills_in_what_flags_leave_out() {
        let file = "listen = \"127.0.0.1:4000\"\nskip_existing_layers = true\n\
                    resolve = [\"r.test:443:127.0.0.1\"]\ndrain_timeout = 5\n";
        let settings = settings_from(&[], file);
        assert_eq!(settings.listen.port(), 4000);
        assert!(settings.proxy.skip_existing_layers);
        assert_eq!(settings.proxy.resolve.len(), 1);
        assert_eq!(settings.proxy.drain_timeout, Duration::from_secs(5));
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = "listen = \"127.0.0.1:4000\"\nresolve = [\"r.test:443:127.0.0.1\"]\n";
        let flags = [
            "--listen",
            "127.0.0.1:5000",
            "--resolve",
            "s.test:1:::1",
            "--resolve",
            "t.test:1:::1",
        ];
        let settings = settings_from(&flags, file);
        assert_eq!(settings.listen.port(), 5000);
        assert_eq!(settings.proxy.resolve.len(), 2);
    }

    #[test]
    fn defaults_apply_without_file_or_flags() {
        let settings = settings_from(&[], "");
        assert_eq!(settings.listen.to_string(), DEFAULT_LISTEN);
        assert!(!settings.proxy.skip_existing_layers);
        assert!(settings.proxy.intercept.is_empty());
        assert_eq!(settings.proxy.drain_timeout, Duration::from_secs(30));
    }

    #[test]
    fn exec_takes_run_options_and_a_command() {
        let cli = Cli::try_parse_from([
            "regproxy",
            "exec",
            "--skip-existing-layers",
            "--",
            "skopeo",
            "copy",
            "--all",
        ])
        .unwrap();
        let Command::Exec { run, command } = cli.command else {
            panic!("not exec")
        };
        assert!(run.skip_existing_layers);
        assert_eq!(command, ["skopeo", "copy", "--all"]);
    }

    #[test]
    fn zero_connections_is_refused_from_flag_or_file() {
        for (flags, file) in [
            (&["--max-connections", "0"][..], ""),
            (&[][..], "max_connections = 0\n"),
        ] {
            let error = try_settings_from(flags, file).expect_err("refused");
            assert_eq!(error.to_string(), "max_connections must be at least 1");
        }
    }

    #[test]
    fn a_bad_credentials_file_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth");
        std::fs::write(&path, "no colon here\n").unwrap();
        let flags = ["--proxy-auth-file", path.to_str().unwrap()];
        let error = try_settings_from(&flags, "").expect_err("refused");
        let text = error.to_string();
        assert!(text.starts_with("proxy credentials file "), "{text}");
        let missing = dir.path().join("missing");
        let flags = ["--proxy-auth-file", missing.to_str().unwrap()];
        let error = try_settings_from(&flags, "").expect_err("refused");
        assert!(error.to_string().starts_with("proxy credentials file "));
    }

    #[test]
    fn bad_resolve_is_rejected_at_parse_time() {
        let parsed = Cli::try_parse_from(["regproxy", "run", "--resolve", "nope"]);
        assert!(parsed.unwrap_err().to_string().contains("HOST:PORT:ADDR"));
    }
}
