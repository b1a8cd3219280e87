//! `oprun`: parse the command line, set up logging (and span export when asked), run the
//! command.

use clap::Parser;
use operation_runs::cli::Cli;
use operation_runs::config::DEFAULT_LOG_FILTER;
use operation_runs::telemetry::Telemetry;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let log = cli.log_settings();
    let filter =
        EnvFilter::try_new(&log.filter).unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if log.format == "json" {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    // Off by default: without --otlp-endpoint there is no exporter at all.
    let telemetry = match log.otlp_endpoint().map(Telemetry::start) {
        None => None,
        Some(Ok(telemetry)) => Some(telemetry),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(telemetry.as_ref().map(Telemetry::layer))
        .init();
    // Idle sockets, the pool and the broker all take descriptors; the soft limit (often 1024)
    // is the one that bites, so take what the hard limit allows.
    match operation_runs::http::server::raise_open_file_limit() {
        Ok(limit) => tracing::debug!(limit, "open-file limit raised to the hard limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let result = cli.run().await;
    if let Some(telemetry) = telemetry {
        // The flush blocks until the batch thread is done, and its requests run on this
        // runtime: wait for it off the async workers.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
