//! regproxy: an intercepting proxy for container registry pushes.
//!
//! Try it:
//!
//! ```text
//! regproxy run --skip-existing-layers        # listens on 127.0.0.1:3128
//! HTTPS_PROXY=http://127.0.0.1:3128 skopeo copy \
//!     --dest-cert-dir "$(dirname "$(regproxy ca path)")" \
//!     oci:./image:1 docker://registry.example.com/team/app:1
//! ```
//!
//! or let regproxy set up the client's environment itself:
//!
//! ```text
//! regproxy exec --skip-existing-layers -- crane copy src dst
//! ```

use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use regproxy::cli::{CaAction, Cli, Command};
use regproxy::tls::ca::CertificateAuthority;

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Under `exec` the client's own output matters most: only problems are
    // logged unless RUST_LOG asks for more.
    let quiet = matches!(cli.command, Command::Exec { .. } | Command::Env(_));
    regproxy::logging::init(if quiet { "warn" } else { "info" });
    let subcommand = matches.subcommand().map(|(_, m)| m).unwrap_or(&matches);
    match run(cli, subcommand) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("regproxy: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, matches: &ArgMatches) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run(args) => {
            let settings = args.settings(matches)?;
            if args.check {
                regproxy::daemon::check(&settings)?;
                return Ok(0);
            }
            runtime()?.block_on(regproxy::daemon::run(settings))?;
            Ok(0)
        }
        Command::Exec { run, command } => {
            let settings = run.settings(matches)?;
            runtime()?.block_on(regproxy::exec::run(settings, command))
        }
        Command::Env(args) => {
            regproxy::exec::print_env(&args.settings(matches)?)?;
            Ok(0)
        }
        Command::Ca { action, dir } => {
            let dir = dir.resolve();
            let ca = CertificateAuthority::load_or_create(&dir)?;
            match action {
                CaAction::Path => println!("{}", CertificateAuthority::cert_path(&dir).display()),
                CaAction::Show => print!("{}", ca.cert_pem()),
            }
            Ok(0)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
