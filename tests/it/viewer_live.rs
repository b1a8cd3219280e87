//! The viewer's live streams are bounded: per token and per run (429 `too_many_streams` beyond,
//! the place freed when a stream ends, the client's disconnect included), in time (a lifetime,
//! then a resume with `Last-Event-ID` without a gap; and never past the token's `exp` plus the
//! leeway), and in bytes (unread streams of a large run keep `oprun serve`'s memory bounded).

use std::time::Duration;

use operation_runs::http::auth::{Claims, TokenKeys, LEEWAY_SECS};
use operation_runs::http::streams::LiveLimits;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::helpers::memory::peak_rss;
use crate::helpers::{seed_scopes, wait_until, DEADLINE};
use crate::viewer_api::{error_code, insert_run, Viewer, SECRET};
use crate::viewer_bounds::{serve_a_large_run, LargeRunServed};

/// A token of workspace 1 (every tenant) for `sub`, valid for `valid_for` seconds.
fn token_for(sub: Option<&str>, valid_for: u64) -> String {
    TokenKeys::new(SECRET).unwrap().issue(&Claims {
        workspace_id: 1,
        tenant_ids: None,
        run_id: None,
        exp: chrono::Utc::now().timestamp() as u64 + valid_for,
        sub: sub.map(str::to_owned),
        grants: None,
    })
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .unwrap()
}

async fn open_live(
    http: &reqwest::Client,
    base: &str,
    run: i64,
    token: &str,
    last_event_id: Option<i64>,
) -> reqwest::Response {
    let mut request = http
        .get(format!("{base}/v1/runs/{run}/live"))
        .bearer_auth(token);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    request.send().await.unwrap()
}

/// A refusal must be the API's 429 `too_many_streams` with a `Retry-After`.
async fn assert_too_many_streams(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "{what}");
    assert!(
        response.headers().contains_key("retry-after"),
        "{what}: Retry-After"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "too_many_streams", "{what}: {body}");
}

async fn running_run(pool: &PgPool) -> i64 {
    insert_run(
        pool,
        1,
        Some(10),
        "policy.sync",
        ("running", "pending"),
        1,
        json!({}),
    )
    .await
}

/// Records progress events on `run` every 100 ms, from sequence 1, until aborted (what a busy
/// run looks like to the viewer).
fn keep_recording(pool: PgPool, run: i64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for sequence in 1.. {
            sqlx::query(
                "INSERT INTO operation_run_events (id, run_id, sequence, type, workspace_id, tenant_id, cloud_event)
                 VALUES (gen_random_uuid(), $1, $2, 'operation_run.progressed', 1, 10,
                         jsonb_build_object('specversion', '1.0', 'id', gen_random_uuid(),
                                            'type', 'operation_run.progressed', 'time', now(),
                                            'data', jsonb_build_object('sequence', $2::bigint)))",
            )
            .bind(run)
            .bind(sequence as i64)
            .execute(&pool)
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn last_recorded(pool: &PgPool, run: i64) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(max(sequence), 0) FROM operation_run_events WHERE run_id = $1",
    )
    .bind(run)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The `id:` of every frame read from `response` until it ends, or `None` if it is still open
/// after `within`.
async fn frame_ids(mut response: reqwest::Response, within: Duration) -> Option<Vec<i64>> {
    let mut text = String::new();
    tokio::time::timeout(within, async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.strip_prefix("id:"))
            .map(|id| id.trim().parse().unwrap())
            .collect(),
    )
}

#[sqlx::test]
async fn a_token_holds_at_most_eight_live_streams_and_gets_them_back_when_they_close(pool: PgPool) {
    seed_scopes(&pool).await;
    let run = running_run(&pool).await;
    let viewer = Viewer::spawn(pool).await;
    let http = http();
    let ada = token_for(Some("ada"), 3600);

    let mut open = Vec::new();
    for _ in 0..8 {
        let live = open_live(&http, &viewer.base, run, &ada, None).await;
        assert_eq!(live.status(), StatusCode::OK);
        open.push(live);
    }
    // Another token of the same person counts with the first; another person does not.
    assert_too_many_streams(
        open_live(
            &http,
            &viewer.base,
            run,
            &token_for(Some("ada"), 1800),
            None,
        )
        .await,
        "a ninth stream of the same sub",
    )
    .await;
    let bob = open_live(
        &http,
        &viewer.base,
        run,
        &token_for(Some("bob"), 3600),
        None,
    )
    .await;
    assert_eq!(
        bob.status(),
        StatusCode::OK,
        "another sub has its own streams"
    );
    // A token without `sub` counts alone.
    let anonymous = open_live(&http, &viewer.base, run, &token_for(None, 3600), None).await;
    assert_eq!(anonymous.status(), StatusCode::OK);

    // The clients go away: their places come back (within a heartbeat), eight of them.
    drop(open);
    let first = wait_until("a closed stream's place to be freed", || {
        let (http, base, ada) = (http.clone(), viewer.base.clone(), ada.clone());
        async move {
            let live = open_live(&http, &base, run, &ada, None).await;
            (live.status() == StatusCode::OK).then_some(live)
        }
    })
    .await;
    let mut reopened = vec![first];
    let deadline = Instant::now() + DEADLINE;
    while reopened.len() < 8 {
        let live = open_live(&http, &viewer.base, run, &ada, None).await;
        if live.status() == StatusCode::OK {
            reopened.push(live);
        } else {
            assert!(
                Instant::now() < deadline,
                "only {} places came back",
                reopened.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_too_many_streams(
        open_live(&http, &viewer.base, run, &ada, None).await,
        "a ninth stream again",
    )
    .await;
}

#[sqlx::test]
async fn a_run_has_at_most_thirty_two_live_streams_whoever_opens_them(pool: PgPool) {
    seed_scopes(&pool).await;
    let run = running_run(&pool).await;
    let other = running_run(&pool).await;
    let viewer = Viewer::spawn(pool).await;
    let http = http();
    let mut open = Vec::new();
    for i in 0..32 {
        let sub = format!("reader-{}", i / 4);
        let live = open_live(&http, &viewer.base, run, &token_for(Some(&sub), 3600), None).await;
        assert_eq!(live.status(), StatusCode::OK, "stream {i}");
        open.push(live);
    }
    let fresh = token_for(Some("somebody-else"), 3600);
    assert_too_many_streams(
        open_live(&http, &viewer.base, run, &fresh, None).await,
        "a 33rd stream on one run",
    )
    .await;
    let elsewhere = open_live(&http, &viewer.base, other, &fresh, None).await;
    assert_eq!(
        elsewhere.status(),
        StatusCode::OK,
        "another run has its own"
    );
}

#[sqlx::test]
async fn a_live_stream_ends_at_its_tokens_expiry_plus_the_leeway_while_the_run_still_records_events(
    pool: PgPool,
) {
    seed_scopes(&pool).await;
    let run = running_run(&pool).await;
    let viewer = Viewer::spawn(pool.clone()).await;
    let http = http();
    let recording = keep_recording(pool.clone(), run);
    let valid_for = 2;
    let token = token_for(Some("short-lived"), valid_for);
    let opened = Instant::now();
    let live = open_live(&http, &viewer.base, run, &token, None).await;
    assert_eq!(live.status(), StatusCode::OK);

    let expiry = Duration::from_secs(valid_for + LEEWAY_SECS);
    let slack = Duration::from_secs(3);
    let ids = frame_ids(live, expiry + slack).await.unwrap_or_else(|| {
        panic!("the stream still delivers {expiry:?} + {slack:?} after it opened")
    });
    let lasted = opened.elapsed();
    assert!(
        lasted + Duration::from_secs(2) >= expiry,
        "the stream ended after {lasted:?}, well before the token expired"
    );
    assert!(
        !ids.is_empty(),
        "events were delivered while the token was valid"
    );
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>(), "in order");
    // The run went on recording: the stream ended for the token, not for the run. (A second
    // later the API refuses the token too: it checks `exp` in whole seconds.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(last_recorded(&pool, run).await > *ids.last().unwrap());
    recording.abort();
    let again = open_live(&http, &viewer.base, run, &token, ids.last().copied()).await;
    assert_eq!(
        again.status(),
        StatusCode::UNAUTHORIZED,
        "the expired token cannot reopen it"
    );
}

#[sqlx::test]
async fn a_live_stream_ends_after_its_lifetime_and_resumes_from_last_event_id_without_a_gap(
    pool: PgPool,
) {
    seed_scopes(&pool).await;
    let run = running_run(&pool).await;
    let lifetime = Duration::from_secs(2);
    let viewer = Viewer::spawn_with(
        pool.clone(),
        LiveLimits {
            lifetime,
            ..crate::viewer_api::default_live_limits()
        },
    )
    .await;
    let http = http();
    let recording = keep_recording(pool.clone(), run);
    let token = token_for(Some("ada"), 3600);

    let mut seen: Vec<i64> = Vec::new();
    for round in 0..3 {
        let opened = Instant::now();
        let live = open_live(&http, &viewer.base, run, &token, seen.last().copied()).await;
        assert_eq!(live.status(), StatusCode::OK, "round {round}");
        let ids = frame_ids(live, lifetime + Duration::from_secs(3))
            .await
            .unwrap_or_else(|| panic!("round {round}: the stream outlived its lifetime"));
        assert!(
            opened.elapsed() + Duration::from_millis(500) >= lifetime,
            "round {round}: ended after {:?}",
            opened.elapsed()
        );
        assert!(!ids.is_empty(), "round {round}: events were delivered");
        seen.extend(ids);
    }
    recording.abort();
    assert_eq!(
        seen,
        (1..=seen.len() as i64).collect::<Vec<_>>(),
        "each stream resumed right after the last event of the one before"
    );
}

#[sqlx::test]
async fn a_live_stream_ends_when_its_run_is_deleted(pool: PgPool) {
    seed_scopes(&pool).await;
    let run = running_run(&pool).await;
    let viewer = Viewer::spawn(pool.clone()).await;
    let live = open_live(
        &http(),
        &viewer.base,
        run,
        &token_for(Some("ada"), 3600),
        None,
    )
    .await;
    assert_eq!(live.status(), StatusCode::OK);
    sqlx::query("DELETE FROM operation_runs WHERE id = $1")
        .bind(run)
        .execute(&pool)
        .await
        .unwrap();
    let ids = frame_ids(live, Duration::from_secs(5))
        .await
        .expect("the stream of a deleted run ends");
    assert!(ids.is_empty());
}

/// Peak resident memory 16 unread live streams may add to `oprun serve` (docs/configuration.md, "Bounds"):
/// each holds one fetch (4 events, 256 KiB) and hyper's write buffer (about 400 KiB).
const LIVE_STREAMS_GROWTH_BOUND: u64 = 48 * 1024 * 1024;

#[sqlx::test]
async fn sixteen_unread_live_streams_of_a_large_run_keep_serves_peak_memory_bounded(
    _opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let LargeRunServed {
        app,
        id,
        mut serve,
        pid,
        base,
        ..
    } = serve_a_large_run(connect).await;
    let before = peak_rss(pid);

    // 16 clients (of 16 people, so no per-token cap applies) that ask for the whole history
    // and never read it: each stream fills its socket, then waits with what it fetched.
    let addr = base.trim_start_matches("http://").to_owned();
    let mut streams = Vec::new();
    for i in 0..16 {
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let token = token_for(Some(&format!("reader-{i}")), 3600);
        socket
            .write_all(
                format!(
                    "GET /v1/runs/{id}/live HTTP/1.1\r\nHost: {addr}\r\n\
                     Authorization: Bearer {token}\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut status = [0u8; 12];
        socket.read_exact(&mut status).await.unwrap();
        assert_eq!(&status, b"HTTP/1.1 200", "stream {i} is open");
        streams.push(socket);
    }
    // Long enough for every stream to fill its socket and stall, shorter than the idle timeout
    // that would close them.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        serve.try_wait().unwrap().is_none(),
        "serve is still running"
    );
    let peak = peak_rss(pid);
    drop(streams);
    serve.kill().await.unwrap();
    println!(
        "peak RSS of serve: {before} bytes before, {peak} bytes with 16 unread live streams \
         (+{} bytes)",
        peak.saturating_sub(before)
    );
    assert!(
        peak.saturating_sub(before) < LIVE_STREAMS_GROWTH_BOUND,
        "16 unread live streams raised peak resident memory from {before} to {peak} bytes, \
         more than {LIVE_STREAMS_GROWTH_BOUND}"
    );
    app.shutdown().await;
}
