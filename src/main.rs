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
            eprintln!("regproxy: {}", error_chain(&error));
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
            reject_check(run.check, "exec")?;
            let mut settings = run.settings(matches)?;
            // Without --listen, exec's proxy takes a free port of its own.
            if run.listen.is_none() {
                settings.listen = ([127, 0, 0, 1], 0).into();
            }
            // The wrapped client's own output matters most: only problems
            // are logged unless RUST_LOG asks for more.
            logging::init("warn", settings.log_format);
            runtime()?.block_on(regproxy::exec::run(settings, command))
        }
        Command::Env(args) => {
            reject_check(args.check, "env")?;
            let settings = args.settings(matches)?;
            logging::init("warn", settings.log_format);
            regproxy::exec::print_env(&settings)?;
            Ok(0)
        }
        Command::Har { flow_log } => {
            let (records, skipped) = read_flow_log(&flow_log)?;
            warn_skipped(skipped);
            print_out(&format!("{}\n", regproxy::flow::har::to_har(&records)))?;
            Ok(0)
        }
        Command::Report { flow_log, json } => {
            let (records, skipped) = read_flow_log(&flow_log)?;
            warn_skipped(skipped);
            let report = regproxy::flow::report::Report::from_records(&records);
            let text = if json {
                format!("{}\n", serde_json::to_string_pretty(&report)?)
            } else {
                report.to_string()
            };
            print_out(&text)?;
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

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(()),
    }
}

fn reject_check(check: bool, subcommand: &str) -> anyhow::Result<()> {
    if check {
        anyhow::bail!("--check belongs to `regproxy run`, not `regproxy {subcommand}`");
    }
    Ok(())
}

/// The error and its causes on one line, each cause only once: several
/// errors already name their cause in their own message.
fn error_chain(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
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
