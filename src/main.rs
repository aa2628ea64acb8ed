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

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use regproxy::cli::{CaAction, Cli, Command};
use regproxy::tls::ca::CertificateAuthority;

fn main() -> ExitCode {
    let cli = Cli::parse();
    regproxy::logging::init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("regproxy: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(regproxy::daemon::run(args)),
        Command::Ca { action, dir } => {
            let dir = dir.resolve();
            let ca = CertificateAuthority::load_or_create(&dir)?;
            match action {
                CaAction::Path => println!("{}", CertificateAuthority::cert_path(&dir).display()),
                CaAction::Show => print!("{}", ca.cert_pem()),
            }
            Ok(())
        }
    }
}
