//! `registry-server`: parses flags, sets up logging, runs the server, and turns a
//! startup failure into one clear line on stderr.

use clap::Parser;
use registry_server::config::{Config, LogFormat};
use registry_server::server;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// jemalloc, not glibc's malloc: with glibc a leader holding a million instances served
/// reads at about 0.6x of its empty rate and a change woken at 10,000 blocking queries
/// took over 200 ms to reach them all; with jemalloc neither slowed, for about the same
/// memory per instance (README, "Scale", has the side-by-side runs). Its settings are
/// fixed when it is built (`.cargo/config.toml`); `_RJEM_MALLOC_CONF` in a server's
/// environment overrides them.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    // hickory-server logs two info lines per DNS query (--dns-listen).
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=error,hickory_server=warn"));
    // openraft logs every failed replication call (twice a second per unreachable
    // peer); the peer client logs a peer that stops answering once, and then once a
    // minute (`raft::network`), so openraft's line is dropped.
    let quiet_replication = filter_fn(|meta| {
        !(meta.target().starts_with("openraft::replication")
            && meta.fields().field("err").is_some())
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match config.log_format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    // The level filter is the subscriber's, not the layer's: a callsite it disables (every
    // debug span openraft opens per write, the per-request debug line) is then never
    // asked about again. As a per-layer filter nested in another, it was asked at every
    // span and event, and each span was allocated and tracked: about a tenth of the
    // server's own CPU under load.
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt.with_filter(quiet_replication))
        .init();
    match server::run(config, server::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("registry-server: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
