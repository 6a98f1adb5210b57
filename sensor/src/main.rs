//! `nhi-sensor`: see `--help`. The work happens in the modules; this file parses the command
//! line, sets up logging and maps errors to exit codes.

mod agent;
mod btf_offsets;
mod cli;
mod config;
mod credentials;
mod decode;
mod ebpf;
mod endpoints;
mod env_vars;
mod event;
mod fingerprint;
mod hooks;
mod identity;
mod pipeline;
mod process_table;
mod procfs;
mod rules;
mod secret;
mod unix_sockets;
mod workload;

use clap::Parser as _;
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
    let cli = cli::Cli::parse();
    if let Err(e) = init_logging(&cli) {
        eprintln!("nhi-sensor: {e:#}");
        return std::process::ExitCode::from(2);
    }
    let result = match cli.command {
        cli::Command::Check(args) => agent::check(&args),
        cli::Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("nhi-sensor")
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(agent::run(*args))),
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
