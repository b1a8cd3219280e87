//! `oprun-lab viewer-bench`: the viewer's list and detail latency on a large history. It
//! preloads `--runs` runs straight into a sandbox database (one `INSERT … SELECT
//! generate_series` per chunk, see [`preload_history`]), starts one `oprun serve` with the
//! viewer on, keeps it busy with a steady stream of progress commands (about 200 a second, on
//! one running run), and times, one request after another, `GET /v1/runs?limit=50&<query>` for
//! every filter of [`FILTERS`] (round robin; every other request of a filter pages on with the
//! previous answer's `next_cursor`) and `GET /v1/runs/{id}` of a random run.
//!
//! The last line on stdout is one JSON object: the run count, the preload's seconds, and for
//! every filter its name, query and p50/p99/max in milliseconds (see lab/README.md). With
//! `--max-p99-ms` the run fails when a filter's p99 is above it.
//!
//! A new filter is one more line in [`FILTERS`] (or `--filter NAME=QUERY` for a one-off); the
//! preloaded history has what the list's filters look at (tenants and workspace-scoped runs,
//! types, statuses, outcomes, users, initiators, contexts, failure codes, identities, spread
//! creation and update times), so a filter on any of them finds a realistic share of runs.

use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use rand::Rng;
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use super::instances::{Extra, Instances, ServeTunables};
use super::percentiles::Percentiles;
use crate::publisher::Window;
use crate::sandbox::{Purpose, Sandbox, Scopes};
use crate::{LabError, OprunBinary};
use operation_runs::broker::connection::connect;
use operation_runs::config::Config;

/// One measured filter: a name for the report and the query string it adds to
/// `GET /v1/runs?limit=50` (empty: no filter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Its name in the report.
    pub name: String,
    /// What follows `limit=50&`.
    pub query: String,
}

/// The filters measured, one line each: `(name, query)`. The preload's values: workspaces 1
/// and 2 (a token of workspace 1 reads), tenants 10, 11 (workspace 1) and 20 (workspace 2),
/// one run in four workspace-scoped; types `policy.sync`, `inventory.sync`,
/// `entra_group.sync`, `restore.execute`; about 2% running and 1% queued; one completed run in
/// 13 `failed` with failure code `graph.throttled` or `device.offline`; users 1 to 3 (one run
/// in five without); initiators `scheduler`, `alice`, `bob`; context `policy_id` `p-0` to
/// `p-999` and `scope` `all_devices` or `pilot`; created one run every 10 s back from now,
/// updated 6 s after.
pub const FILTERS: &[(&str, &str)] = &[
    ("all", ""),
    ("status", "status=completed"),
    ("status_running", "status=running"),
    ("type", "type=policy.sync"),
    ("tenant", "tenant_id=10"),
    ("outcome", "outcome=failed"),
    ("tenant_and_type", "tenant_id=11&type=inventory.sync"),
    ("context", "context.policy_id=p-42"),
    (
        "context_two_keys",
        "context.policy_id=p-42&context.scope=all_devices",
    ),
    ("failure_code", "failure_code=graph.throttled"),
    // Values no run holds: the index says so at once (a newest-first walk would read every run).
    ("context_none", "context.policy_id=p-none"),
    ("failure_code_none", "failure_code=disk.full"),
    ("initiator", "initiator=alice"),
    ("user_id", "user_id=2"),
    // The identity of run 42 (`viewer-bench-42`).
    (
        "identity",
        "identity=1971becc852b23414285ea324258db102aa941201a814b28c561d25e742e88f8",
    ),
    // Runs that stopped moving 93 days ago ([`DAYS_AGO`] is replaced when the bench starts):
    // the oldest tenth of the preloaded history.
    ("updated_before", "updated_before={93 days ago}"),
    ("q_initiator", "q=alice"),
    // Matches the labels of the sync types: one branch per type and one for the initiator.
    ("q_types", "q=sync"),
    ("q_run", "q=%23424242"),
    (
        "tenant_and_failure_code",
        "tenant_id=10&failure_code=graph.throttled",
    ),
];

/// In a filter's query, replaced by the RFC 3339 time that many days before the bench starts.
const DAYS_AGO: (&str, i64) = ("{93 days ago}", 93);

/// How long the viewer's token is valid: longer than any run.
const TOKEN_LIFETIME_SECS: u64 = 6 * 3600;
/// Runs per preload statement.
const CHUNK: i64 = 250_000;

/// Arguments of `oprun-lab viewer-bench`.
#[derive(Debug, clap::Args)]
pub struct ViewerBenchArgs {
    /// Runs preloaded before the measurement.
    #[arg(long, default_value_t = 1_000_000)]
    pub runs: i64,
    /// Requests timed per filter (and for `GET /v1/runs/{id}`).
    #[arg(long, default_value_t = 300)]
    pub samples: usize,
    /// One more filter, `NAME=QUERY` (e.g. `--filter 'initiator=initiator=alice'`); repeatable.
    #[arg(long = "filter", value_parser = parse_filter)]
    pub extra_filters: Vec<Filter>,
    /// Fail when a filter's p99 is above this many milliseconds.
    #[arg(long)]
    pub max_p99_ms: Option<f64>,
    /// Keep the database and the topology at the end (for inspection).
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    tunables: ServeTunables,
}

fn parse_filter(s: &str) -> Result<Filter, String> {
    let (name, query) = s
        .split_once('=')
        .ok_or_else(|| "a filter is NAME=QUERY".to_owned())?;
    Ok(Filter {
        name: name.to_owned(),
        query: query.to_owned(),
    })
}

impl ViewerBenchArgs {
    /// Runs the benchmark; the JSON line is the last line on stdout.
    pub async fn run(self, config: &Config, oprun: &OprunBinary) -> Result<(), LabError> {
        if self.runs < 1 || self.samples == 0 {
            return Err(LabError::Invalid(
                "--runs and --samples must be positive".into(),
            ));
        }
        let mut filters: Vec<Filter> = FILTERS
            .iter()
            .map(|(name, query)| Filter {
                name: (*name).to_owned(),
                query: query.replace(
                    DAYS_AGO.0,
                    &(chrono::Utc::now() - chrono::Duration::days(DAYS_AGO.1))
                        .format("%Y-%m-%dT%H:%M:%SZ")
                        .to_string(),
                ),
            })
            .collect();
        filters.extend(self.extra_filters.iter().cloned());
        let scopes = Scopes {
            workspaces: vec![1, 2],
            tenants: vec![(10, 1), (11, 1), (20, 2)],
            users: vec![1, 2, 3],
        };
        let sandbox = Sandbox::create(config, Purpose::Bench, &scopes, &[]).await?;
        eprintln!("viewer-bench: database and namespace {}", sandbox.name);
        let measured = self.measure(config, oprun, &sandbox, &filters).await;
        if self.keep {
            eprintln!("viewer-bench: kept {}", sandbox.describe());
        } else if let Err(e) = sandbox.remove().await {
            eprintln!("viewer-bench: could not remove {}: {e}", sandbox.describe());
        }
        let report = measured?;
        println!("{report}");
        if let Some(limit) = self.max_p99_ms {
            let slow: Vec<String> = report["filters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| f["p99_ms"].as_f64().is_some_and(|p| p > limit))
                .map(|f| format!("{} ({} ms)", f["name"], f["p99_ms"]))
                .collect();
            if !slow.is_empty() {
                return Err(LabError::Failed(format!(
                    "viewer-bench: p99 above {limit} ms: {}",
                    slow.join(", ")
                )));
            }
        }
        Ok(())
    }

    async fn measure(
        &self,
        config: &Config,
        oprun: &OprunBinary,
        sandbox: &Sandbox,
        filters: &[Filter],
    ) -> Result<Value, LabError> {
        let preload_secs = preload_history(&sandbox.database_url, self.runs).await?;
        eprintln!(
            "viewer-bench: preloaded {} runs in {preload_secs:.1} s",
            self.runs
        );
        let secret = operation_runs::http::auth::random_secret();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, crate::private::free_port()?));
        let connection = connect(&config.amqp_url_list(), "oprun-lab viewer-bench").await?;
        let admin = connection.create_channel().await?;
        let instances = Instances::start(
            oprun,
            1,
            config,
            sandbox,
            &self.tunables,
            &admin,
            &Extra {
                viewer: Some((addr, secret.clone())),
                ..Extra::default()
            },
        )
        .await?;
        let token = crate::oprun::viewer_token(
            &secret,
            1,
            None,
            "oprun-lab viewer-bench",
            TOKEN_LIFETIME_SECS,
            None,
        )
        .map_err(LabError::Invalid)?;
        let base = format!("http://{addr}");
        let load_run: (i64, i64, Option<i64>) = sqlx::query_as(
            "SELECT id, workspace_id, tenant_id FROM operation_runs
             WHERE status = 'running' ORDER BY id DESC LIMIT 1",
        )
        .fetch_one(&sandbox.pool)
        .await?;
        let stop = CancellationToken::new();
        let load = steady_progress(
            &connection,
            sandbox.topology.commands_exchange(),
            load_run,
            stop.clone(),
        );
        let timed = async {
            let timed = time_requests(&base, &token, filters, self.samples, self.runs).await;
            stop.cancel();
            timed
        };
        let (timed, published) = tokio::join!(timed, load);
        instances.stop().await;
        let _ = connection.close(200, "viewer-bench done".into()).await;
        let (lists, show) = timed?;
        let published = published?;
        let mut rows = Vec::new();
        eprintln!("viewer-bench: filter                 p50 ms   p99 ms   max ms  query");
        for (filter, samples) in filters.iter().zip(&lists) {
            let p = Percentiles::of(samples);
            eprintln!(
                "viewer-bench: {:<20} {:>8.2} {:>8.2} {:>8.2}  {}",
                filter.name, p.p50, p.p99, p.max, filter.query
            );
            rows.push(json!({
                "name": filter.name, "query": filter.query,
                "p50_ms": round2(p.p50), "p99_ms": round2(p.p99), "max_ms": round2(p.max),
            }));
        }
        let show = Percentiles::of(&show);
        eprintln!(
            "viewer-bench: {:<20} {:>8.2} {:>8.2} {:>8.2}  GET /v1/runs/{{id}}",
            "show", show.p50, show.p99, show.max
        );
        Ok(json!({
            "runs": self.runs,
            "preload_secs": round2(preload_secs),
            "samples": self.samples,
            "progress_commands": published,
            "filters": rows,
            "show": {"p50_ms": round2(show.p50), "p99_ms": round2(show.p99), "max_ms": round2(show.max)},
        }))
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Times the requests: per round, one list request of each filter, then one detail request.
async fn time_requests(
    base: &str,
    token: &str,
    filters: &[Filter],
    samples: usize,
    runs: i64,
) -> Result<(Vec<Vec<Duration>>, Vec<Duration>), LabError> {
    let http = reqwest::Client::new();
    let get = |url: String| {
        let request = http.get(url).bearer_auth(token);
        async move {
            let response = request
                .send()
                .await
                .map_err(|e| LabError::Failed(format!("viewer-bench: {e}")))?;
            let status = response.status();
            let body = response
                .bytes()
                .await
                .map_err(|e| LabError::Failed(format!("viewer-bench: {e}")))?;
            if !status.is_success() {
                return Err(LabError::Failed(format!(
                    "viewer-bench: {status}: {}",
                    String::from_utf8_lossy(&body)
                )));
            }
            Ok(body)
        }
    };
    let mut lists = vec![Vec::with_capacity(samples); filters.len()];
    let mut cursors: Vec<Option<String>> = vec![None; filters.len()];
    let mut show = Vec::with_capacity(samples);
    for i in 0..samples {
        for (f, filter) in filters.iter().enumerate() {
            let mut url = format!("{base}/v1/runs?limit=50");
            if !filter.query.is_empty() {
                url.push('&');
                url.push_str(&filter.query);
            }
            let paging = i % 2 == 1;
            if let (true, Some(cursor)) = (paging, &cursors[f]) {
                url.push_str("&cursor=");
                url.push_str(cursor);
            }
            let started = Instant::now();
            let body = get(url).await?;
            lists[f].push(started.elapsed());
            let page: Value = serde_json::from_slice(&body)
                .map_err(|e| LabError::Failed(format!("viewer-bench: a list page: {e}")))?;
            if paging || cursors[f].is_none() {
                cursors[f] = page["next_cursor"].as_str().map(str::to_owned);
            }
        }
        let id = rand::rng().random_range(1..=runs);
        let started = Instant::now();
        // A run of workspace 2 answers 404 to this token: as fast as a found one, and fine.
        let _ = http
            .get(format!("{base}/v1/runs/{id}"))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| LabError::Failed(format!("viewer-bench: {e}")))?
            .bytes()
            .await;
        show.push(started.elapsed());
    }
    Ok((lists, show))
}

/// `increment_summary_counts` on `run` about 200 times a second until `stop`; how many.
async fn steady_progress(
    connection: &lapin::Connection,
    exchange: String,
    (run_id, workspace_id, tenant_id): (i64, i64, Option<i64>),
    stop: CancellationToken,
) -> Result<u64, LabError> {
    let window = Window::open(connection, 100).await?;
    let mut sent = 0;
    while !stop.is_cancelled() {
        let command_id = uuid::Uuid::new_v4().to_string();
        let body = json!({
            "kind": "increment_summary_counts", "command_id": command_id, "run_id": run_id,
            "workspace_id": workspace_id, "tenant_id": tenant_id, "counts": {"processed": 1},
        });
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(command_id.as_str().into());
        window
            .publish(
                &exchange,
                "increment_summary_counts",
                &serde_json::to_vec(&body).expect("JSON values serialise"),
                properties,
            )
            .await?;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    window.drain().await;
    window.close().await;
    Ok(sent)
}

/// Inserts `runs` runs with the shape [`FILTERS`] describes, in chunks of [`CHUNK`] on one
/// session with `synchronous_commit = off` and `session_replication_role = replica` (no
/// foreign-key triggers: the rows are consistent by construction), then `VACUUM (ANALYZE)`;
/// returns the seconds it took. No events: the list and the detail do not read them.
pub async fn preload_history(database_url: &str, runs: i64) -> Result<f64, LabError> {
    let started = Instant::now();
    // Statements of a bulk load are slow by design: no slow-statement warnings.
    let options = PgConnectOptions::from_str(database_url)?.disable_statement_logging();
    let mut conn = PgConnection::connect_with(&options).await?;
    sqlx::raw_sql(
        "SET synchronous_commit = off; SET session_replication_role = replica;
         SET maintenance_work_mem = '256MB';",
    )
    .execute(&mut conn)
    .await?;
    let mut lo = 1;
    while lo <= runs {
        let hi = (lo + CHUNK - 1).min(runs);
        sqlx::query(
            "INSERT INTO operation_runs (id, workspace_id, tenant_id, user_id, initiator_name, type,
                 status, outcome, run_identity_hash, summary_counts, failure_summary, context,
                 started_at, completed_at, created_at, updated_at)
             OVERRIDING SYSTEM VALUE
             SELECT i,
                    CASE WHEN i % 4 = 3 THEN 2 ELSE 1 END,
                    (ARRAY[10, 11, NULL, 20])[i % 4 + 1],
                    CASE WHEN i % 5 = 0 THEN NULL ELSE i % 3 + 1 END,
                    (ARRAY['scheduler', 'alice', 'bob'])[i % 3 + 1],
                    (ARRAY['policy.sync', 'inventory.sync', 'entra_group.sync', 'restore.execute'])[i % 7 % 4 + 1],
                    s.status,
                    CASE WHEN s.status <> 'completed' THEN 'pending'
                         WHEN i % 13 = 0 THEN 'failed' ELSE 'succeeded' END,
                    encode(sha256(convert_to('viewer-bench-' || i, 'UTF8')), 'hex'),
                    '{\"total\": 10, \"processed\": 10}',
                    CASE WHEN s.status = 'completed' AND i % 13 = 0 THEN
                         jsonb_build_array(jsonb_build_object(
                             'code', (ARRAY['graph.throttled', 'device.offline'])[i % 2 + 1],
                             'message', 'the lab made this run fail', 'item', 'device-' || i))
                         ELSE '[]'::jsonb END,
                    jsonb_build_object('policy_id', 'p-' || (i % 1000),
                                       'scope', (ARRAY['all_devices', 'pilot'])[i % 2 + 1]),
                    s.created + interval '1 second',
                    CASE WHEN s.status = 'completed' THEN s.created + interval '6 seconds' END,
                    s.created, s.created + interval '6 seconds'
             FROM (SELECT i, now() - make_interval(secs => i * 10) AS created,
                          CASE WHEN i % 97 = 0 THEN 'queued' WHEN i % 50 = 0 THEN 'running'
                               ELSE 'completed' END AS status
                   FROM generate_series($1::bigint, $2::bigint) i) s",
        )
        .bind(lo)
        .bind(hi)
        .execute(&mut conn)
        .await?;
        eprintln!(
            "viewer-bench: preloaded {hi} of {runs} runs ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
        lo = hi + 1;
    }
    sqlx::query(
        "SELECT setval(pg_get_serial_sequence('operation_runs', 'id'), (SELECT max(id) FROM operation_runs))",
    )
    .execute(&mut conn)
    .await?;
    sqlx::raw_sql("VACUUM (ANALYZE) operation_runs")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_flag_is_a_name_and_the_query_after_the_first_equals_sign() {
        assert_eq!(
            parse_filter("initiator=initiator=alice").unwrap(),
            Filter {
                name: "initiator".into(),
                query: "initiator=alice".into()
            }
        );
        assert!(parse_filter("no-equals-sign").is_err());
    }

    #[test]
    fn every_filter_has_a_distinct_name() {
        let mut names: Vec<&str> = FILTERS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FILTERS.len());
    }
}
