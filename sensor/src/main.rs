//! `nhi-sensor`: see `--help`. The work happens in the modules; this file parses the command
//! line, sets up logging and maps errors to exit codes.

mod agent;
mod btf_offsets;
mod cli;
mod collector;
mod config;
mod credentials;
mod decode;
mod detect;
mod dns;
mod ebpf;
mod endpoints;
mod env_vars;
mod event;
mod export;
mod fingerprint;
mod hooks;
mod http;
mod identity;
mod metrics;
mod open_dedupe;
mod pipeline;
mod process_table;
mod procfs;
mod rules;
mod secret;
mod status;
mod transport;
mod unix_sockets;
mod workload;

use clap::{CommandFactory as _, FromArgMatches as _};
use tracing_subscriber::EnvFilter;

fn init_logging(cli: &cli::Cli) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&cli.log)
        .map_err(|e| anyhow::anyhow!("invalid --log filter {:?}: {e}", cli.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        cli::LogFormat::Text => builder.init(),
        cli::LogFormat::Json => builder.json().init(),
    }
    // aya and aya-log speak the `log` crate; route them into tracing.
    let _ = tracing_log::LogTracer::init();
    Ok(())
}

fn main() -> std::process::ExitCode {
    let matches = cli::Cli::command().get_matches();
    let cli = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Err(e) = init_logging(&cli) {
        eprintln!("nhi-sensor: {e:#}");
        return std::process::ExitCode::from(2);
    }
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("nhi-sensor")
            .build()
            .map_err(anyhow::Error::from)
    };
    let result = match cli.command {
        cli::Command::Check(args) => agent::check(&args),
        cli::Command::Run(_) => {
            let run = matches
                .subcommand_matches("run")
                .expect("the run subcommand")
                .clone();
            runtime().and_then(|rt| rt.block_on(agent::run(run)))
        }
        cli::Command::Config(cli::ConfigCommand::Check { file }) => config::check(&file),
        cli::Command::Collector(args) => {
            runtime().and_then(|rt| rt.block_on(collector::run(*args)))
        }
        cli::Command::Events(args) => collector::query::run(&args),
        cli::Command::Inventory(args) => collector::inventory::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("nhi-sensor: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
