//! The viewer's speed benchmark (not a test: `#[ignore]`, run it with
//! `cargo test --release --test it viewer_bench -- --ignored --nocapture`): 1,000,000 runs, the
//! service consuming a steady stream of progress commands, then `GET /v1/runs` (with the page's
//! filters and cursors) and `GET /v1/runs/{id}` timed one after another; prints p50/p99.

use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{progress, TestApp};
use crate::viewer_api::Viewer;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

#[sqlx::test]
#[ignore = "benchmark: run explicitly"]
async fn viewer_latency_on_a_million_runs(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    sqlx::query(
        "INSERT INTO operation_runs (workspace_id, tenant_id, type, status, outcome, run_identity_hash, created_at, summary_counts)
         SELECT CASE WHEN i % 4 = 3 THEN 2 ELSE 1 END,
                (ARRAY[10, 11, NULL, 20])[i % 4 + 1],
                (ARRAY['policy.sync', 'inventory.sync', 'entra_group.sync', 'restore.execute'])[i % 7 % 4 + 1],
                'completed', CASE WHEN i % 13 = 0 THEN 'failed' ELSE 'succeeded' END,
                md5(i::text) || md5((i + 1)::text),
                now() - make_interval(secs => i * 10),
                '{\"total\": 10, \"processed\": 10}'
         FROM generate_series(1, 1000000) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE operation_runs")
        .execute(&pool)
        .await
        .unwrap();
    let run_id = app.create_policy_run(1).await;
    let viewer = Viewer::spawn(pool.clone()).await;
    let token = viewer.token(1, None);
    let http = reqwest::Client::new();

    // Steady load: progress commands on one run, about 200 a second, for the whole measurement.
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let stop = stop.clone();
        let app = &app;
        async move {
            while !stop.is_cancelled() {
                app.publish(&progress(
                    "increment_summary_counts",
                    run_id,
                    json!({"counts": {"processed": 1}}),
                ))
                .await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let measure = async {
        let filters = [
            "",
            "&status=completed",
            "&type=policy.sync",
            "&tenant_id=10",
            "&outcome=failed",
            "&tenant_id=11&type=inventory.sync",
        ];
        let mut list = Vec::new();
        let mut show = Vec::new();
        let mut cursor: Option<String> = None;
        for i in 0..2000 {
            let mut path = format!(
                "{}/v1/runs?limit=50{}",
                viewer.base,
                filters[i % filters.len()]
            );
            if i % filters.len() == 0 {
                if let Some(c) = &cursor {
                    path.push_str(&format!("&cursor={c}"));
                }
            }
            let started = Instant::now();
            let body: serde_json::Value = http
                .get(&path)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            list.push(started.elapsed());
            if i % filters.len() == 0 {
                cursor = body["next_cursor"].as_str().map(str::to_owned);
            }
            let id = rand::rng().random_range(1..1_000_000);
            let started = Instant::now();
            let response = http
                .get(format!("{}/v1/runs/{id}", viewer.base))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            let _ = response.bytes().await.unwrap();
            show.push(started.elapsed());
        }
        stop.cancel();
        (list, show)
    };
    let ((mut list, mut show), ()) = tokio::join!(measure, load);
    println!(
        "viewer bench (1,000,000 runs, steady progress load): GET /v1/runs p50={:?} p99={:?}; GET /v1/runs/{{id}} p50={:?} p99={:?}",
        percentile(&mut list, 0.5),
        percentile(&mut list, 0.99),
        percentile(&mut show, 0.5),
        percentile(&mut show, 0.99)
    );
    app.shutdown().await;
}
