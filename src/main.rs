//! The `ftp-alg` binary: parse arguments, set up logging, dispatch. No protocol logic here.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use ftp_alg::cli::{Cli, Subcommands};
use ftp_alg::config::{LogFormat, Validated};
use ftp_alg::daemon::{Hooks, SetLogLevel};

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
            let set_log_level = init_logging(&validated);
            let hooks = Hooks {
                reload: Box::new(move || settings.load()?.validate()),
                set_log_level,
            };
            let runtime = ftp_alg::daemon::runtime().context("cannot start the async runtime")?;
            runtime.block_on(ftp_alg::daemon::run(validated, hooks))?;
        }
        Subcommands::Check(settings) => {
            let validated = settings.load()?.validate()?;
            let text = toml::to_string_pretty(&validated.config)
                .context("cannot print the effective settings")?;
            println!("# configuration is valid; effective settings:\n{text}");
            let config = &validated.config;
            for (key, name) in ftp_alg::daemon::missing_interfaces(config)
                .into_iter()
                // With wan_address set the daemon does not look at wan_interface.
                .filter(|(key, _)| *key != "wan_interface" || config.wan_address.is_none())
            {
                println!(
                    "# note, this host: {key}: no interface {name} (yet){}",
                    if key == "wan_interface" {
                        "; the daemon will not start until it exists"
                    } else {
                        "; FTP from it is intercepted only once it exists"
                    }
                );
            }
            // What the host does to the control channel's latency, where it matters.
            let idle = ftp_alg::host::IdleState::read();
            if let Some(advice) = idle.advice() {
                println!("# note, this host: CPU idle {}: {advice}", idle.summary());
            }
        }
        Subcommands::Cleanup(settings) => {
            // A file that no longer loads still leaves the daemons' records to go by.
            let config = settings.load().map_err(|e| e.to_string());
            let done = ftp_alg::daemon::cleanup(config.as_ref().map_err(Clone::clone))?;
            for item in &done {
                println!("{item}");
            }
            if done.iter().any(|item| item.failed()) {
                anyhow::bail!("some of what was left behind could not be removed (see above)");
            }
        }
        Subcommands::Rules(settings) => {
            let validated = settings.load()?.validate()?;
            print!("{}", ftp_alg::daemon::base_table(&validated).render());
        }
        Subcommands::Generate(args) => {
            for path in ftp_alg::generate::write_all(&args.out)
                .with_context(|| format!("cannot write to {}", args.out.display()))?
            {
                println!("{}", path.display());
            }
        }
        Subcommands::Status(args) => {
            let snapshot = ftp_alg::proxy::status::fetch(&args.socket)?;
            if args.json {
                println!("{snapshot}");
            } else {
                print!("{}", ftp_alg::telemetry::render_status(&snapshot));
            }
        }
        Subcommands::Lab(args) => {
            let stop = ftp_alg::watch::stop::install();
            if !ftp_alg::lab::scenario::command(&args, stop)? {
                anyhow::bail!("the lab's table does not match the physics (see UNEXPECTED above)");
            }
        }
        Subcommands::Watch(args) => {
            let stop = ftp_alg::watch::stop::install();
            ftp_alg::watch::run(&args.options(), &mut std::io::stdout().lock(), stop)
                .context("watch")?;
        }
    }
    Ok(())
}

/// Sets up logging to stderr (the journal captures it under systemd, which stamps time
/// itself) and returns how to change the filter later (SIGHUP).
fn init_logging(settings: &Validated) -> SetLogLevel {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, fmt, reload};

    let filter =
        EnvFilter::try_new(&settings.config.log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = std::io::stderr().is_terminal() && !journal;
    let registry = tracing_subscriber::registry().with(filter);
    match (settings.config.log.format, journal) {
        (LogFormat::Text, false) => registry
            .with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr))
            .init(),
        (LogFormat::Text, true) => registry
            .with(
                fmt::layer()
                    .without_time()
                    .with_ansi(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
        (LogFormat::Json, _) => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .init(),
    }
    Box::new(move |level| {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.modify(|f| *f = filter).map_err(|e| e.to_string())
    })
}
