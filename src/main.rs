//! The `ftp-alg` binary: parse arguments, set up logging, dispatch. No protocol logic here.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use ftp_alg::cli::{Cli, Subcommands};
use ftp_alg::config::{LogFormat, Validated};

fn main() {
    if let Err(e) = real_main() {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Subcommands::Run(settings) => {
            let validated = settings.load()?.validate()?;
            init_logging(&validated);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(ftp_alg::daemon::run(validated))?;
        }
        Subcommands::Check(settings) => {
            let validated = settings.load()?.validate()?;
            let text = toml::to_string_pretty(&validated.config)
                .context("cannot print the effective settings")?;
            println!("# configuration is valid; effective settings:\n{text}");
        }
        Subcommands::Rules(settings) => {
            let validated = settings.load()?.validate()?;
            print!("{}", ftp_alg::daemon::base_table(&validated).render());
        }
    }
    Ok(())
}

fn init_logging(settings: &Validated) {
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match settings.config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
