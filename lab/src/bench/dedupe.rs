//! `oprun-lab dedupe-bench`: how fast the service answers duplicate dispatches as the table of
//! active runs grows (the identity lookup must not slow down with it). 100 runs are created
//! through the service; then, for each count of `--active-runs` (default 1,000 and 50,000),
//! the table is filled with active runs up to that count (`INSERT … SELECT generate_series`),
//! `--duplicates` dispatches repeating the 100 identities are queued with the service stopped,
//! and the service is started and timed until it has processed them all: the rate is the
//! service's, not the publisher's.
//!
//! Prints one line per count, then, as the last line, one JSON object:
//! `{"duplicates":N,"rates":[{"active_runs":A,"per_s":R},…],"ratio":R_last/R_first}`.

use std::time::{Duration, Instant};

use lapin::{BasicProperties, Channel};
use serde_json::json;
use sqlx::PgPool;

use super::instances::{Extra, Instances, ServeTunables};
use crate::publisher::Window;
use crate::sandbox::{Purpose, Sandbox, Scopes};
use crate::{LabError, OprunBinary};
use operation_runs::broker::connection::connect;
use operation_runs::config::Config;

/// Runs created through the service, whose identities the duplicates repeat.
const IDENTITIES: i64 = 100;
/// The workspace and tenant of every run.
const WORKSPACE: i64 = 1;
const TENANT: i64 = 10;
/// Longest wait for the service to process what was queued.
const DRAIN_DEADLINE: Duration = Duration::from_secs(300);

/// Arguments of `oprun-lab dedupe-bench`.
#[derive(Debug, clap::Args)]
pub struct DedupeBenchArgs {
    /// Active runs in the table for each measurement, in order (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 50_000])]
    pub active_runs: Vec<i64>,
    /// Duplicate dispatches per measurement.
    #[arg(long, default_value_t = 10_000)]
    pub duplicates: usize,
    /// Passed to `serve --lanes`.
    #[arg(long, default_value_t = 4)]
    pub lanes: u32,
    /// Keep the database and the topology at the end (for inspection).
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    tunables: ServeTunables,
}

impl DedupeBenchArgs {
    /// Runs the benchmark; the JSON line is the last line on stdout.
    pub async fn run(self, config: &Config, oprun: &OprunBinary) -> Result<(), LabError> {
        if self.duplicates == 0 || self.active_runs.iter().any(|&a| a < IDENTITIES) {
            return Err(LabError::Invalid(format!(
                "--duplicates must be positive and every --active-runs at least {IDENTITIES}"
            )));
        }
        let scopes = Scopes {
            workspaces: vec![WORKSPACE],
            tenants: vec![(TENANT, WORKSPACE)],
            users: vec![],
        };
        let sandbox = Sandbox::create(config, Purpose::Bench, &scopes, &[]).await?;
        eprintln!("dedupe-bench: database and namespace {}", sandbox.name);
        let measured = self.measure(config, oprun, &sandbox).await;
        if self.keep {
            eprintln!("dedupe-bench: kept {}", sandbox.describe());
        } else if let Err(e) = sandbox.remove().await {
            eprintln!("dedupe-bench: could not remove {}: {e}", sandbox.describe());
        }
        println!("{}", measured?);
        Ok(())
    }

    async fn start(
        &self,
        config: &Config,
        oprun: &OprunBinary,
        sandbox: &Sandbox,
        admin: &Channel,
    ) -> Result<Instances, LabError> {
        let extra = Extra {
            args: vec![
                "--max-active-runs-per-tenant".into(),
                "0".into(),
                "--lanes".into(),
                self.lanes.to_string(),
            ],
            viewer: None,
        };
        Instances::start(oprun, 1, config, sandbox, &self.tunables, admin, &extra).await
    }

    async fn measure(
        &self,
        config: &Config,
        oprun: &OprunBinary,
        sandbox: &Sandbox,
    ) -> Result<serde_json::Value, LabError> {
        let connection = connect(&config.amqp_url_list(), "oprun-lab dedupe-bench").await?;
        let admin = connection.create_channel().await?;
        let window = Window::open(&connection, 1_000).await?;
        let exchange = sandbox.topology.commands_exchange();
        let instance = self.start(config, oprun, sandbox, &admin).await?;
        for i in 0..IDENTITIES {
            publish_dispatch(&window, &exchange, i).await?;
        }
        wait_processed(&sandbox.pool, IDENTITIES).await?;
        instance.stop().await;
        let mut filled = 0;
        let mut rates = Vec::new();
        for &target in &self.active_runs {
            if target - IDENTITIES > filled {
                sqlx::query(
                    "INSERT INTO operation_runs (workspace_id, tenant_id, type, run_identity_hash)
                     SELECT $3, $4, 'policy.sync', encode(sha256(('filler' || i)::bytea), 'hex')
                     FROM generate_series($1::bigint, $2::bigint) AS i",
                )
                .bind(filled + 1)
                .bind(target - IDENTITIES)
                .bind(WORKSPACE)
                .bind(TENANT)
                .execute(&sandbox.pool)
                .await?;
                filled = target - IDENTITIES;
            }
            sqlx::query("ANALYZE operation_runs")
                .execute(&sandbox.pool)
                .await?;
            let before = processed(&sandbox.pool).await?;
            // Queued first, then drained: the rate is the service's, not the publisher's.
            for i in 0..self.duplicates {
                publish_dispatch(&window, &exchange, i as i64 % IDENTITIES).await?;
            }
            window.drain().await;
            let started = Instant::now();
            let instance = self.start(config, oprun, sandbox, &admin).await?;
            wait_processed(&sandbox.pool, before + self.duplicates as i64).await?;
            let rate = self.duplicates as f64 / started.elapsed().as_secs_f64();
            instance.stop().await;
            let active: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM operation_runs WHERE status <> 'completed'",
            )
            .fetch_one(&sandbox.pool)
            .await?;
            eprintln!(
                "dedupe-bench: active runs {active}: {} duplicate dispatches at {rate:.0}/s",
                self.duplicates
            );
            rates.push(json!({"active_runs": active, "per_s": rate.round()}));
        }
        window.close().await;
        let _ = connection.close(200, "dedupe-bench done".into()).await;
        let per_s = |r: Option<&serde_json::Value>| r.and_then(|r| r["per_s"].as_f64());
        let ratio = match (per_s(rates.first()), per_s(rates.last())) {
            (Some(first), Some(last)) if first > 0.0 => {
                Some((last / first * 100.0).round() / 100.0)
            }
            _ => None,
        };
        Ok(json!({"duplicates": self.duplicates, "rates": rates, "ratio": ratio}))
    }
}

/// A `policy.sync` dispatch of identity `policy_id`, in the bench's tenant.
async fn publish_dispatch(window: &Window, exchange: &str, policy_id: i64) -> Result<(), LabError> {
    let command_id = uuid::Uuid::new_v4().to_string();
    let body = json!({
        "kind": "dispatch", "command_id": command_id, "type": "policy.sync",
        "workspace_id": WORKSPACE, "tenant_id": TENANT, "context": {"policy_id": policy_id},
    });
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(command_id.as_str().into());
    window
        .publish(
            exchange,
            "dispatch",
            &serde_json::to_vec(&body).expect("JSON values serialise"),
            properties,
        )
        .await?;
    Ok(())
}

async fn processed(pool: &PgPool) -> Result<i64, LabError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM processed_commands")
            .fetch_one(pool)
            .await?,
    )
}

/// Waits until the inbox holds `count` commands.
async fn wait_processed(pool: &PgPool, count: i64) -> Result<(), LabError> {
    let deadline = Instant::now() + DRAIN_DEADLINE;
    loop {
        let done = processed(pool).await?;
        if done >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::Failed(format!(
                "dedupe-bench: {done} of {count} commands processed after {} s",
                DRAIN_DEADLINE.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
