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
use regproxy::flow::read_flow_log;
use regproxy::logging;
use regproxy::tls::ca::CertificateAuthority;

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
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
            logging::init("info", settings.log_format);
            if args.check {
                regproxy::daemon::check(&settings)?;
                return Ok(0);
            }
            runtime()?.block_on(regproxy::daemon::run(settings))?;
            Ok(0)
        }
        Command::Exec { run, command } => {
            let settings = run.settings(matches)?;
            // The wrapped client's own output matters most: only problems
            // are logged unless RUST_LOG asks for more.
            logging::init("warn", settings.log_format);
            runtime()?.block_on(regproxy::exec::run(settings, command))
        }
        Command::Env(args) => {
            let settings = args.settings(matches)?;
            logging::init("warn", settings.log_format);
            regproxy::exec::print_env(&settings)?;
            Ok(0)
        }
        Command::Har { flow_log } => {
            let (records, skipped) = read_flow_log(&flow_log)?;
            warn_skipped(skipped);
            println!("{}", regproxy::flow::har::to_har(&records));
            Ok(0)
        }
        Command::Report { flow_log, json } => {
            let (records, skipped) = read_flow_log(&flow_log)?;
            warn_skipped(skipped);
            let report = regproxy::flow::report::Report::from_records(&records);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
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

fn warn_skipped(skipped: usize) {
    if skipped > 0 {
        eprintln!("regproxy: skipped {skipped} incomplete line(s) of the flow log");
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
