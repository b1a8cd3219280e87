//! The live stream read from a page of another origin (decision 0088): with
//! `--viewer-allowed-origins`, `GET /v1/runs/{id}/live` answers a listed origin with
//! `Access-Control-Allow-Origin` (never credentials), and takes a run-scoped token in `?token=`
//! (an `EventSource` sends no header). Every other origin, every other route, and every token
//! that reads more than one run or may act stays refused.

use operation_runs::config::ServeSettings;
use operation_runs::http::auth::Claims;
use reqwest::header::{ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_ORIGIN, VARY};
use reqwest::{Method, StatusCode};
use sqlx::PgPool;

use crate::helpers::seed_scopes;
use crate::viewer_api::{insert_run, Viewer};

const PLATFORM: &str = "https://platform.example.com";

fn run_token(viewer: &Viewer, run_id: i64, grants: Option<&str>) -> String {
    viewer.issue(Claims {
        workspace_id: 1,
        tenant_ids: Some(vec![10]),
        run_id: Some(run_id),
        exp: chrono::Utc::now().timestamp() as u64 + 600,
        sub: Some("platform-page".into()),
        grants: grants.map(str::to_owned),
    })
}

async fn running_run(pool: &PgPool) -> i64 {
    let counts = serde_json::json!({"counts": {"total": 4, "processed": 1}});
    insert_run(
        pool,
        1,
        Some(10),
        "inventory.sync",
        ("running", "pending"),
        1,
        counts,
    )
    .await
}

/// `method path` with `origin` (when given); the answer's status and headers (the body, an
/// endless stream for a running run, is not read).
async fn ask(
    viewer: &Viewer,
    method: Method,
    path: &str,
    origin: Option<&str>,
) -> (StatusCode, reqwest::header::HeaderMap) {
    let mut request = viewer
        .http()
        .request(method, format!("{}{path}", viewer.base));
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.headers().clone())
}

#[sqlx::test]
async fn a_listed_origin_reads_the_live_stream_with_a_run_scoped_token_and_no_other_origin_may(
    pool: PgPool,
) {
    seed_scopes(&pool).await;
    let run = running_run(&pool).await;
    let other = running_run(&pool).await;
    let viewer = Viewer::spawn_with_origins(pool, &[PLATFORM, "http://127.0.0.1:8000"]).await;
    let live = format!(
        "/v1/runs/{run}/live?token={}",
        run_token(&viewer, run, None)
    );

    let (status, headers) = ask(&viewer, Method::GET, &live, Some(PLATFORM)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers[ACCESS_CONTROL_ALLOW_ORIGIN], PLATFORM);
    assert!(headers.get(ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
    assert!(headers.get_all(VARY).iter().any(|v| v == "origin"));

    // Another origin, or none: answered, but the browser keeps it from the page.
    for origin in [Some("https://evil.example.com"), None] {
        let (status, headers) = ask(&viewer, Method::GET, &live, origin).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            headers.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none(),
            "{origin:?}"
        );
    }
    // Every other route stays closed to other origins.
    let token = run_token(&viewer, run, None);
    let detail = viewer
        .http()
        .get(format!("{}/v1/runs/{run}", viewer.base))
        .bearer_auth(&token)
        .header("origin", PLATFORM)
        .send()
        .await
        .unwrap();
    assert_eq!(detail.status(), StatusCode::OK);
    assert!(detail.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());

    // The preflight of a reconnecting EventSource (Last-Event-ID): allowed for a listed origin.
    let path = format!("/v1/runs/{run}/live");
    let (status, headers) = ask(&viewer, Method::OPTIONS, &path, Some(PLATFORM)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(headers[ACCESS_CONTROL_ALLOW_ORIGIN], PLATFORM);
    assert_eq!(headers["access-control-allow-headers"], "last-event-id");
    let (status, headers) = ask(
        &viewer,
        Method::OPTIONS,
        &path,
        Some("https://evil.example.com"),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(headers.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());

    // In the URL only a token that reads one run and may not act; and only that run.
    let workspace = viewer.token(1, Some(vec![10]));
    let operate = run_token(&viewer, run, Some("operate"));
    for token in [workspace, operate] {
        let (status, _) = ask(
            &viewer,
            Method::GET,
            &format!("/v1/runs/{run}/live?token={token}"),
            Some(PLATFORM),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, _) = ask(
        &viewer,
        Method::GET,
        &format!(
            "/v1/runs/{other}/live?token={}",
            run_token(&viewer, run, None)
        ),
        Some(PLATFORM),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[sqlx::test]
async fn without_allowed_origins_the_live_stream_names_no_origin(pool: PgPool) {
    seed_scopes(&pool).await;
    let run = running_run(&pool).await;
    let viewer = Viewer::spawn(pool).await;
    let live = format!(
        "/v1/runs/{run}/live?token={}",
        run_token(&viewer, run, None)
    );
    let (status, headers) = ask(&viewer, Method::GET, &live, Some(PLATFORM)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a run-scoped token in the URL reads"
    );
    assert!(headers.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    assert!(headers.get(VARY).is_none());
    let path = format!("/v1/runs/{run}/live");
    let (status, _) = ask(&viewer, Method::OPTIONS, &path, Some(PLATFORM)).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[test]
fn an_allowed_origin_is_a_scheme_a_host_and_a_port_alone() {
    let flag = |value: &str| ServeSettings::from_flags(&["--viewer-allowed-origins", value]);
    let settings = flag("https://Platform.Example.com/,http://127.0.0.1:8000").unwrap();
    assert_eq!(
        settings.live.viewer_allowed_origins,
        ["https://platform.example.com", "http://127.0.0.1:8000"]
    );
    assert!(ServeSettings::defaults()
        .live
        .viewer_allowed_origins
        .is_empty());
    for bad in [
        "*",
        "platform.example.com",
        "ftp://x",
        "https://",
        "https://x/path",
        "https://x:0",
        "https://u@x",
        "https://*.example.com",
    ] {
        assert!(flag(bad).is_err(), "{bad}");
    }
}
