//! `--soak DURATION`: the steady rate for a long time, one minute at a time, printing after each
//! minute the instances' RSS, that minute's p99 and the sizes of the inbox, events and runs
//! tables (`pg_total_relation_size`, indexes and TOAST included): with retention set short,
//! all of them should level off.

use std::time::Duration;

use lapin::Connection;
use serde_json::json;

use super::driver::{drive, Pace};
use super::instances::Instances;
use super::percentiles::Percentiles;
use super::prebuilt;
use crate::sandbox::Sandbox;
use crate::LabError;

/// How long one soak step lasts.
const STEP: Duration = Duration::from_secs(60);

/// Runs `rate` commands per second for `duration`, printing one JSON line per minute on stdout.
pub async fn run(
    connection: &Connection,
    sandbox: &Sandbox,
    events_queue: &str,
    instances: &Instances,
    rate: f64,
    duration: Duration,
) -> Result<(), LabError> {
    let minutes = duration.as_secs().div_ceil(STEP.as_secs()).max(1);
    eprintln!("bench: soak, {minutes} minute(s) at {rate:.0}/s");
    for minute in 1..=minutes {
        let step = if minute == minutes && duration.as_secs() % STEP.as_secs() != 0 {
            Duration::from_secs(duration.as_secs() % STEP.as_secs())
        } else {
            STEP
        };
        let commands = ((rate * step.as_secs_f64()) as usize).max(1);
        let plans = prebuilt::plan(&format!("soak-{minute}"), commands);
        let result = drive(
            connection,
            &sandbox.topology,
            events_queue,
            &plans,
            Pace::Rate(rate),
        )
        .await?;
        let latency = Percentiles::of(&result.latencies.end_to_end);
        let sizes: (i64, i64, i64) = sqlx::query_as(
            "SELECT pg_total_relation_size('processed_commands'),
                    pg_total_relation_size('operation_run_events'),
                    pg_total_relation_size('operation_runs')",
        )
        .fetch_one(&sandbox.pool)
        .await?;
        let mb = |bytes: i64| (bytes as f64 / 1_048_576.0 * 10.0).round() / 10.0;
        let rss = instances.rss_mb().into_iter().fold(0.0, f64::max);
        println!(
            "{}",
            json!({
                "soak_minute": minute,
                "rss_mb": (rss * 10.0).round() / 10.0,
                "p99_ms": (latency.p99 * 100.0).round() / 100.0,
                "p50_ms": (latency.p50 * 100.0).round() / 100.0,
                "achieved_per_s": (result.rate() * 10.0).round() / 10.0,
                "inbox_mb": mb(sizes.0),
                "events_mb": mb(sizes.1),
                "runs_mb": mb(sizes.2),
            })
        );
    }
    Ok(())
}
