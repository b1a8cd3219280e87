//! `oprun-lab`: the benchmark and the fault-injection run of operation-runs. They drive the
//! product's `oprun` binary as child processes and use only the product's public library API;
//! nothing here ships in the product or its image.

mod bench;
mod chaos;
mod cluster;
mod error;
mod oprun;
mod pg_ha;
mod private;
mod publisher;
mod sandbox;

use clap::{Parser, Subcommand};
use operation_runs::config::Config;
use tracing_subscriber::EnvFilter;

pub use error::LabError;
pub use oprun::OprunBinary;

/// `oprun-lab`: measure operation-runs and try to break it.
#[derive(Debug, Parser)]
#[command(name = "oprun-lab", version, about)]
struct Lab {
    #[command(flatten)]
    config: Config,
    /// The `oprun` binary under test (default: the one built beside `oprun-lab`).
    #[arg(long, global = true)]
    oprun: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Measure the service against the broker's own limit (see docs/performance.md).
    Bench(bench::BenchArgs),
    /// The viewer's list latency per filter, and the detail's, on a large preloaded history
    /// under a steady progress load; p50/p99 per filter as JSON (lab/README.md).
    ViewerBench(bench::ViewerBenchArgs),
    /// Duplicate dispatches per second with few and with many active runs in the table.
    DedupeBench(bench::DedupeBenchArgs),
    /// Fault-injection run on a private broker and database of its own: kills, broker and
    /// database restarts, hostile input; checks nothing is lost.
    Chaos(chaos::ChaosArgs),
    /// A local three-node RabbitMQ cluster from the installed server (`scripts/cluster`).
    Cluster(cluster::ClusterArgs),
    /// A local PostgreSQL HA pair with automatic failover (pg_auto_failover, `scripts/pg-ha`).
    PgHa(pg_ha::PgHaArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let filter = EnvFilter::try_from_env("OPRUN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let lab = Lab::parse();
    let result = match lab.command {
        LabCommand::Cluster(args) => args.run().await,
        LabCommand::PgHa(args) => args.run().await,
        LabCommand::Bench(args) => match OprunBinary::locate(lab.oprun) {
            Ok(oprun) => args.run(&lab.config, &oprun).await,
            Err(e) => Err(e),
        },
        LabCommand::ViewerBench(args) => match OprunBinary::locate(lab.oprun) {
            Ok(oprun) => args.run(&lab.config, &oprun).await,
            Err(e) => Err(e),
        },
        LabCommand::DedupeBench(args) => match OprunBinary::locate(lab.oprun) {
            Ok(oprun) => args.run(&lab.config, &oprun).await,
            Err(e) => Err(e),
        },
        LabCommand::Chaos(args) => match OprunBinary::locate(lab.oprun) {
            Ok(oprun) => args.run(&lab.config, &oprun).await,
            Err(e) => Err(e),
        },
    };
    finish(result)
}

fn finish(result: Result<(), LabError>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
