//! The viewer's reads are bounded: answers in bytes (events paged by size as well as count), the
//! memory of a running `oprun serve` under concurrent readers of a large run, the viewer's own
//! database pool (readers cannot take the pipeline's connections), and a large run's page shows
//! its newest events with links to older ones.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use operation_runs::http::auth::{Claims, TokenKeys};
use operation_runs::store::viewer::{PAGE_BYTES, VIEWER_APPLICATION_NAME};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::helpers::memory::{peak_rss, MEMORY_BOUND_BYTES};
use crate::helpers::{database_url_for, dispatch, wait_for, wait_until, TestApp, DEADLINE};
use crate::viewer_api::{insert_run, Viewer, SECRET};

/// Stores `count` events of run `run_id` (workspace 1, tenant 10) directly, each a CloudEvents
/// document padded to about `pad` bytes; the last is the completion.
async fn insert_events(pool: &PgPool, run_id: i64, count: i64, pad: i32) {
    sqlx::query(
        "INSERT INTO operation_run_events (id, run_id, sequence, type, workspace_id, tenant_id, cloud_event)
         SELECT gen_random_uuid(), $1, s, t, 1, 10,
                jsonb_build_object('specversion', '1.0', 'id', gen_random_uuid(), 'type', t,
                                   'source', '/operation-runs/test', 'time', now(),
                                   'data', jsonb_build_object('sequence', s, 'pad', repeat('x', $3)))
         FROM generate_series(1, $2::bigint) s,
              LATERAL (SELECT CASE WHEN s = $2 THEN 'operation_run.completed'
                                   ELSE 'operation_run.progressed' END AS t) ty",
    )
    .bind(run_id)
    .bind(count)
    .bind(pad)
    .execute(pool)
    .await
    .unwrap();
}

pub(crate) async fn large_run(pool: &PgPool, count: i64, pad: i32) -> i64 {
    let id = insert_run(
        pool,
        1,
        Some(10),
        "policy.sync",
        ("completed", "succeeded"),
        1,
        json!({}),
    )
    .await;
    insert_events(pool, id, count, pad).await;
    id
}

fn token(workspace_id: i64, tenant_ids: Option<Vec<i64>>) -> String {
    TokenKeys::new(SECRET).unwrap().issue(&Claims {
        workspace_id,
        tenant_ids,
        run_id: None,
        exp: chrono::Utc::now().timestamp() as u64 + 3600,
        sub: Some("tests".into()),
        grants: None,
    })
}

/// Every event of run `id`, paged with `after` / `next_after`: the sequences in order, and the
/// largest answer's size in bytes.
async fn read_all_events(
    http: &reqwest::Client,
    base: &str,
    id: i64,
    token: &str,
) -> (Vec<i64>, usize) {
    let (mut seen, mut largest, mut after) = (Vec::new(), 0, 0);
    loop {
        let response = http
            .get(format!("{base}/v1/runs/{id}/events?after={after}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response.bytes().await.unwrap();
        largest = largest.max(bytes.len());
        let page: Value = serde_json::from_slice(&bytes).unwrap();
        let events = page["events"].as_array().unwrap();
        assert!(
            !events.is_empty(),
            "a page after {after} has at least one event"
        );
        seen.extend(
            events
                .iter()
                .map(|e| e["data"]["sequence"].as_i64().unwrap()),
        );
        match page["next_after"].as_i64() {
            Some(next) => {
                assert_eq!(
                    Some(&next),
                    seen.last(),
                    "next_after is the page's last sequence"
                );
                after = next;
            }
            None => return (seen, largest),
        }
    }
}

#[sqlx::test]
async fn an_events_answer_is_bounded_in_bytes_and_pages_on_with_next_after(pool: PgPool) {
    crate::helpers::seed_scopes(&pool).await;
    // 60 events of about 50 KB: 3 MB of history, within every bound a producer has.
    let id = large_run(&pool, 60, 50_000).await;
    let viewer = Viewer::spawn(pool).await;
    let t = viewer.token(1, None);
    let http = reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .unwrap();
    let (seen, largest) = read_all_events(&http, &viewer.base, id, &t).await;
    assert_eq!(
        seen,
        (1..=60).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(
        largest as i64 <= PAGE_BYTES + 1024,
        "the largest answer is {largest} bytes, over the {PAGE_BYTES}-byte budget"
    );
    // The count bound still holds for small events, and the last page says there is no more.
    let (status, body) = viewer
        .json(&format!("/v1/runs/{id}/events?after=59"), &t)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["events"].as_array().unwrap().len(), 1);
    assert_eq!(body["next_after"], Value::Null);
}

/// The real binary with default settings and a viewer on a free port, signing with [`SECRET`].
pub(crate) fn spawn_serve_with_viewer(
    database: &str,
    namespace: &str,
) -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_oprun"))
        .args(["serve", "--metrics-addr", "off", "--http-addr", &addr])
        .args(["--hand-off-jobs", "false", "--reaper-interval", "0s"])
        .env("DATABASE_URL", database_url_for(database))
        .env("OPRUN_NAMESPACE", namespace)
        .env("OPRUN_API_SECRET", SECRET)
        .env("OPRUN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the oprun binary starts");
    (child, format!("http://{addr}"))
}

pub(crate) async fn wait_for_viewer(http: &reqwest::Client, base: &str) {
    wait_until("the viewer to listen", || {
        let (http, url) = (http.clone(), format!("{base}/v1/catalog"));
        async move {
            let response = http
                .get(url)
                .bearer_auth(token(1, None))
                .send()
                .await
                .ok()?;
            (response.status() == StatusCode::OK).then_some(())
        }
    })
    .await;
}

/// A run within every documented bound (482 events of about 50 KB, 24 MB of history) and an
/// `oprun serve` process whose viewer answers, for the memory tests.
pub(crate) struct LargeRunServed {
    pub app: TestApp,
    pub id: i64,
    pub serve: tokio::process::Child,
    pub pid: u32,
    pub base: String,
    pub http: reqwest::Client,
}

/// See [`LargeRunServed`].
pub(crate) async fn serve_a_large_run(connect: PgConnectOptions) -> LargeRunServed {
    let database = connect.get_database().expect("test database").to_owned();
    let app = TestApp::without_service(
        PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy_with(connect),
    )
    .await;
    let id = large_run(&app.pool, 482, 50_000).await;
    let (serve, base) = spawn_serve_with_viewer(&database, app.topology.namespace());
    let pid = serve.id().expect("running");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    wait_for_viewer(&http, &base).await;
    LargeRunServed {
        app,
        id,
        serve,
        pid,
        base,
        http,
    }
}

#[sqlx::test]
async fn concurrent_readers_of_a_large_run_keep_serves_peak_memory_under_the_documented_bound(
    _opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let LargeRunServed {
        app,
        id,
        mut serve,
        pid,
        base,
        http,
    } = serve_a_large_run(connect).await;

    // 16 readers at once (the reproduction had 6), each reading the whole history.
    let t = token(1, Some(vec![10]));
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let (http, base, t) = (http.clone(), base.clone(), t.clone());
            tokio::spawn(async move {
                let (seen, _) = read_all_events(&http, &base, id, &t).await;
                assert_eq!(seen.len(), 482, "every event is read");
            })
        })
        .collect();
    for reader in readers {
        reader.await.unwrap();
    }
    assert!(
        serve.try_wait().unwrap().is_none(),
        "serve is still running"
    );
    let peak = peak_rss(pid);
    serve.kill().await.unwrap();
    println!("peak RSS of serve with 16 concurrent readers: {peak} bytes");
    assert!(
        peak < MEMORY_BOUND_BYTES,
        "peak resident memory {peak} bytes exceeds the documented bound {MEMORY_BOUND_BYTES}"
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn readers_stuck_in_the_database_take_only_the_viewers_own_connections_and_dispatches_still_commit(
    _opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let database = connect.get_database().expect("test database").to_owned();
    let app = TestApp::without_service(
        PgPoolOptions::new()
            .max_connections(4)
            .connect_lazy_with(connect),
    )
    .await;
    let run = insert_run(
        &app.pool,
        1,
        Some(10),
        "policy.sync",
        ("running", "pending"),
        1,
        json!({}),
    )
    .await;
    let (_serve, base) = spawn_serve_with_viewer(&database, app.topology.namespace());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    wait_for_viewer(&http, &base).await;

    // Readers that wait in the database for as long as the test wants: a run's detail reads
    // the legacy tables, which the test holds locked (the pipeline never touches them).
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE inventory_sync_runs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let t = token(1, Some(vec![10]));
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let (http, url, t) = (http.clone(), format!("{base}/v1/runs/{run}"), t.clone());
            tokio::spawn(async move { http.get(url).bearer_auth(t).send().await })
        })
        .collect();
    let viewer_sessions = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
           AND application_name = '{VIEWER_APPLICATION_NAME}' AND wait_event_type = 'Lock'"
    );
    // The viewer's own connections fill up with stuck readers: exactly its pool, no more.
    app.wait_for_count(&viewer_sessions, 4).await;

    // Another tenant's dispatch still commits while every viewer connection is stuck.
    app.publish(&dispatch(
        "policy.sync",
        1,
        Some(11),
        json!({"policy_id": 7}),
    ))
    .await;
    wait_for(
        "another tenant's dispatch to commit while the viewer's readers are stuck",
        Duration::from_secs(60),
        || {
            let pool = app.pool.clone();
            async move {
                let n: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM operation_runs WHERE tenant_id = 11")
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                (n == 1)
                    .then_some(())
                    .ok_or(format!("{n} runs of tenant 11"))
            }
        },
    )
    .await;
    let stuck: i64 = sqlx::query_scalar(&viewer_sessions)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stuck, 4, "the viewer never uses more than its own pool");
    lock.rollback().await.unwrap();
    for reader in readers {
        // Once the lock is gone every reader is answered (or told the viewer is busy).
        let status = reader.await.unwrap().unwrap().status();
        assert!(
            status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
            "{status}"
        );
    }
    app.shutdown().await;
}

#[sqlx::test]
async fn a_run_page_shows_the_newest_events_and_the_completion_with_links_to_older_ones(
    pool: PgPool,
) {
    crate::helpers::seed_scopes(&pool).await;
    let id = large_run(&pool, 620, 10).await;
    let viewer = Viewer::spawn(pool).await;
    let t = viewer.token(1, None);
    let sequences = |html: &str| -> BTreeSet<i64> {
        html.split("<li value=\"")
            .skip(1)
            .filter_map(|s| s.split('"').next()?.parse().ok())
            .collect()
    };

    let (status, _, newest) = viewer.get(&format!("/runs/{id}"), Some(&t)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        newest.contains("#620 operation_run.completed"),
        "the completion is on the page"
    );
    let shown = sequences(&newest);
    assert_eq!(shown.last(), Some(&620), "the newest event is shown");
    assert!(!shown.contains(&1), "not the oldest: {shown:?}");
    let first = *shown.first().unwrap();
    let older = format!("href=\"/runs/{id}?before={first}\"");
    assert!(newest.contains(&older), "a link to older events: {older}");

    // Older pages, by plain links, down to the first event.
    let mut before = first;
    let mut pages = 0;
    loop {
        let (status, _, html) = viewer
            .get(&format!("/runs/{id}?before={before}"), Some(&t))
            .await;
        assert_eq!(status, StatusCode::OK);
        let part = sequences(&html);
        assert_eq!(part.last(), Some(&(before - 1)), "the events just before");
        assert!(html.contains(&format!("href=\"/runs/{id}?after={}\"", before - 1)));
        assert!(html.contains("data-live=\"false\""));
        before = *part.first().unwrap();
        pages += 1;
        if !html.contains(&format!("?before={before}\"")) {
            break;
        }
        assert!(pages < 20, "paging ends");
    }
    assert_eq!(before, 1, "the oldest page starts at the first event");
}
