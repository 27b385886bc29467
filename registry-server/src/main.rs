//! `registry-server`: parses flags, sets up logging, runs the server, and turns a
//! startup failure into one clear line on stderr.

use clap::Parser;
use registry_server::config::Config;
use registry_server::server;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match server::run(config, server::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("registry-server: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
