//! `oprun`: parse the command line, set up logging, run the command.

use clap::Parser;
use operation_runs::cli::Cli;
use operation_runs::config::DEFAULT_LOG_FILTER;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let log = cli.log_settings();
    let filter =
        EnvFilter::try_new(&log.filter).unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let json = log.format == "json";
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    // Idle sockets, the pool and the broker all take descriptors; the soft limit (often 1024)
    // is the one that bites, so take what the hard limit allows.
    match operation_runs::http::server::raise_open_file_limit() {
        Ok(limit) => tracing::debug!(limit, "open-file limit raised to the hard limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    match cli.run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
