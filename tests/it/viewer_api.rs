//! The run viewer over real HTTP: tokens of several scopes, the list with keyset
//! paging, the run detail, events, live SSE, legacy redirects, the catalog, the pages' sign-in
//! and escaping, and the list's plans on 100,000 rows.

use std::sync::Arc;
use std::time::Duration;

use operation_runs::broker::connection::{AmqpUrls, Connector};
use operation_runs::broker::Topology;
use operation_runs::config::ServeSettings;
use operation_runs::http::auth::{Claims, TokenKeys};
use operation_runs::http::cors::AllowedOrigins;
use operation_runs::http::server::HttpLimits;
use operation_runs::http::streams::LiveLimits;
use operation_runs::service::apply::ApplySettings;
use operation_runs::service::viewer_actions::ViewerActions;
use operation_runs::service::viewer_dead_letters::ViewerDeadLetters;
use operation_runs::store::viewer::{
    explain_list_runs, ContextValue, RunListFilter, Search, ViewerScope,
};
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::{progress, seed_scopes, TestApp, DEADLINE};

pub(crate) const SECRET: &str = "viewer-test-secret-of-at-least-32-bytes";

pub(crate) struct Viewer {
    pub(crate) base: String,
    keys: TokenKeys,
    http: reqwest::Client,
    stop: CancellationToken,
}

/// The bounds of the viewer's live streams under `oprun serve`'s defaults.
pub(crate) fn default_live_limits() -> LiveLimits {
    ServeSettings::defaults().live.live_limits()
}

impl Viewer {
    pub(crate) async fn spawn(pool: PgPool) -> Self {
        Self::spawn_with(pool, default_live_limits()).await
    }

    /// A viewer whose live streams have the bounds `live` (its dead-letters page on a namespace
    /// of its own that nothing declares).
    pub(crate) async fn spawn_with(pool: PgPool, live: LiveLimits) -> Self {
        Self::spawn_full(pool, live, AllowedOrigins::default(), None).await
    }

    /// A viewer whose dead-letters page works on the queues of `topology`, replaying within an
    /// inbox retention of a day.
    pub(crate) async fn spawn_for_dead_letters(pool: PgPool, topology: Topology) -> Self {
        Self::spawn_full(
            pool,
            default_live_limits(),
            AllowedOrigins::default(),
            Some(topology),
        )
        .await
    }

    /// A viewer whose live stream the pages of `origins` may read across origins.
    pub(crate) async fn spawn_with_origins(pool: PgPool, origins: &[&str]) -> Self {
        let origins = AllowedOrigins::new(origins.iter().copied()).unwrap();
        Self::spawn_full(pool, default_live_limits(), origins, None).await
    }

    /// `topology`: the dead-letters page's queues (`None`: a namespace of its own that nothing
    /// declares).
    async fn spawn_full(
        pool: PgPool,
        live: LiveLimits,
        origins: AllowedOrigins,
        topology: Option<Topology>,
    ) -> Self {
        let topology =
            topology.unwrap_or_else(|| Topology::new(&crate::helpers::unique_namespace()).unwrap());
        let keys = TokenKeys::new(SECRET).unwrap();
        let dead_letters = ViewerDeadLetters::new(
            pool.clone(),
            Arc::new(Connector::new(AmqpUrls::unchecked([
                crate::helpers::amqp_url(),
            ]))),
            topology,
            Duration::from_secs(86_400),
        );
        let stop = CancellationToken::new();
        let actions = ViewerActions::new(
            pool.clone(),
            ApplySettings {
                event_source: "/operation-runs/viewer-tests".into(),
                hand_off_jobs: false,
                max_active_runs_per_tenant: 0,
            },
        );
        let server = operation_runs::http::viewer::spawn(
            "127.0.0.1:0".parse().unwrap(),
            pool,
            keys.clone(),
            HttpLimits {
                idle_timeout: Duration::from_secs(3),
                ..ServeSettings::defaults().http.limits()
            },
            live,
            origins,
            Arc::new(actions),
            Arc::new(dead_letters),
            stop.clone(),
        )
        .await
        .unwrap();
        Self {
            base: format!("http://{}", server.addr),
            keys,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(DEADLINE)
                .build()
                .unwrap(),
            stop,
        }
    }

    pub(crate) fn token(&self, workspace_id: i64, tenant_ids: Option<Vec<i64>>) -> String {
        self.issue(Claims {
            workspace_id,
            tenant_ids,
            run_id: None,
            exp: now() + 3600,
            sub: Some("tests".into()),
            grants: None,
        })
    }

    /// A token of workspace `workspace_id` granting `operate` for `tenant_ids` (and only `run_id`
    /// when given), whose bearer is `ada`.
    pub(crate) fn operator_token(
        &self,
        workspace_id: i64,
        tenant_ids: Option<Vec<i64>>,
        run_id: Option<i64>,
    ) -> String {
        self.issue(Claims {
            workspace_id,
            tenant_ids,
            run_id,
            exp: now() + 3600,
            sub: Some("ada".into()),
            grants: Some("operate".into()),
        })
    }

    /// A token of these claims, signed with the viewer's secret.
    pub(crate) fn issue(&self, claims: Claims) -> String {
        self.keys.issue(&claims)
    }

    /// The anti-forgery value of the pages' action forms for a browser signed in with `token`.
    pub(crate) fn action_proof(&self, token: &str) -> String {
        self.keys.action_proof(token)
    }

    /// The HTTP client (no redirects followed).
    /// POSTs the form `fields` to the page `path` as a browser signed in with `cookie_token`:
    /// the answer's status, its `Location`, and its body.
    pub(crate) async fn post_form(
        &self,
        path: &str,
        cookie_token: &str,
        fields: &[(&str, &str)],
    ) -> (StatusCode, Option<String>, String) {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", format!("oprun_token={cookie_token}"))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        (status, location, response.text().await.unwrap())
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(crate) async fn get(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, HeaderMap, String) {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        (status, headers, response.text().await.unwrap())
    }

    /// GET `path` as a browser signed in with `cookie` (`name=value`).
    pub(crate) async fn get_with_cookie(
        &self,
        path: &str,
        cookie: &str,
    ) -> (StatusCode, HeaderMap, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        (status, headers, response.text().await.unwrap())
    }

    pub(crate) async fn json(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let (status, _, body) = self.get(path, Some(token)).await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn now() -> u64 {
    chrono::Utc::now().timestamp() as u64
}

fn b64(bytes: &[u8]) -> String {
    // Unpadded base64url, as JWTs use.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Inserts a run directly (the read API does not care how it was made); returns its id.
pub(crate) async fn insert_run(
    pool: &PgPool,
    workspace: i64,
    tenant: Option<i64>,
    run_type: &str,
    (status, outcome): (&str, &str),
    minutes_ago: i64,
    extra: Value,
) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO operation_runs (workspace_id, tenant_id, type, status, outcome, run_identity_hash,
                                     context, summary_counts, initiator_name, created_at)
         VALUES ($1, $2, $3, $4, $5, md5(random()::text) || md5(random()::text),
                 coalesce($6->'context', '{}'), coalesce($6->'counts', '{}'), $6->>'initiator',
                 now() - make_interval(mins => $7::int))
         RETURNING id",
    )
    .bind(workspace)
    .bind(tenant)
    .bind(run_type)
    .bind(status)
    .bind(outcome)
    .bind(extra)
    .bind(minutes_ago as i32)
    .fetch_one(pool)
    .await
    .unwrap()
}

pub(crate) fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

#[sqlx::test]
async fn every_token_sees_its_scope_and_nothing_else(pool: PgPool) {
    seed_scopes(&pool).await;
    let t10 = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        ("queued", "pending"),
        4,
        json!({}),
    )
    .await;
    let t11 = insert_run(
        &pool,
        1,
        Some(11),
        "policy.sync",
        ("queued", "pending"),
        3,
        json!({}),
    )
    .await;
    let ws1 = insert_run(
        &pool,
        1,
        None,
        "directory_role_definitions.sync",
        ("queued", "pending"),
        2,
        json!({}),
    )
    .await;
    let t20 = insert_run(
        &pool,
        2,
        Some(20),
        "policy.sync",
        ("queued", "pending"),
        1,
        json!({}),
    )
    .await;
    let viewer = Viewer::spawn(pool).await;
    let ids = |body: &Value| -> Vec<i64> {
        body["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect()
    };

    // The whole workspace: its three runs, newest first; not workspace 2's.
    let whole = viewer.token(1, None);
    let (status, body) = viewer.json("/v1/runs", &whole).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body), vec![ws1, t11, t10]);
    assert_eq!(body["next_cursor"], Value::Null);
    for id in [t10, t11, ws1] {
        assert_eq!(
            viewer.json(&format!("/v1/runs/{id}"), &whole).await.0,
            StatusCode::OK
        );
    }

    // A tenant subset: that tenant's runs only, no workspace-scoped run.
    let only10 = viewer.token(1, Some(vec![10]));
    assert_eq!(ids(&viewer.json("/v1/runs", &only10).await.1), vec![t10]);
    assert_eq!(
        ids(&viewer.json("/v1/runs?tenant_id=11", &only10).await.1),
        Vec::<i64>::new()
    );

    // Outside the scope is indistinguishable from absent.
    let (_, absent) = viewer.json("/v1/runs/999999", &whole).await;
    for (token, id) in [
        (&only10, t11),
        (&only10, ws1),
        (&whole, t20),
        (&viewer.token(2, None), t10),
    ] {
        let (status, body) = viewer.json(&format!("/v1/runs/{id}"), token).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, absent);
        for sub in ["events", "live"] {
            let (status, _) = viewer.json(&format!("/v1/runs/{id}/{sub}"), token).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{sub}");
        }
    }
    assert_eq!(error_code(&absent), "not_found");

    // Missing, malformed, expired, foreign, unsigned: 401.
    let (status, _, body) = viewer.get("/v1/runs", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        error_code(&serde_json::from_str(&body).unwrap()),
        "missing_token"
    );
    let expired = viewer.keys.issue(&Claims {
        workspace_id: 1,
        tenant_ids: None,
        run_id: None,
        exp: now() - 600,
        sub: None,
        grants: None,
    });
    let foreign = TokenKeys::new("another-secret-that-is-also-32-bytes-long")
        .unwrap()
        .issue(&Claims {
            workspace_id: 1,
            tenant_ids: None,
            run_id: None,
            exp: now() + 600,
            sub: None,
            grants: None,
        });
    let claims = format!(r#"{{"workspace_id":1,"exp":{}}}"#, now() + 600);
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.as_bytes())
    );
    let no_exp = format!(
        "{}.{}.{}",
        b64(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64(br#"{"workspace_id":1}"#),
        "sig"
    );
    for (token, code) in [
        (expired.as_str(), "expired_token"),
        (foreign.as_str(), "invalid_token"),
        (alg_none.as_str(), "invalid_token"),
        (no_exp.as_str(), "invalid_token"),
        ("not-a-token", "invalid_token"),
    ] {
        let (status, body) = viewer.json("/v1/runs", token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token}");
        assert_eq!(error_code(&body), code, "{token}: {body}");
        let (status, _) = viewer.json(&format!("/v1/runs/{t10}"), token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}

#[sqlx::test]
async fn the_list_pages_by_cursor_and_filters(pool: PgPool) {
    seed_scopes(&pool).await;
    let mut expected = Vec::new();
    for i in 0..7 {
        let (status, outcome) = if i % 2 == 0 {
            ("completed", "failed")
        } else {
            ("running", "pending")
        };
        expected.push(
            insert_run(
                &pool,
                1,
                Some(10),
                "policy.sync",
                (status, outcome),
                100 - i,
                json!({}),
            )
            .await,
        );
    }
    // Two runs with the same creation time: the cursor breaks the tie by id.
    sqlx::query("UPDATE operation_runs SET created_at = (SELECT created_at FROM operation_runs WHERE id = $1) WHERE id = $2")
        .bind(expected[3])
        .bind(expected[4])
        .execute(&pool)
        .await
        .unwrap();
    let inventory = insert_run(
        &pool,
        1,
        Some(11),
        "inventory.sync",
        ("queued", "pending"),
        200,
        json!({}),
    )
    .await;
    let viewer = Viewer::spawn(pool).await;
    let token = viewer.token(1, None);

    let mut seen = Vec::new();
    let mut path = "/v1/runs?limit=3".to_owned();
    loop {
        let (status, body) = viewer.json(&path, &token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let page: Vec<i64> = body["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        assert!(page.len() <= 3);
        seen.extend(page);
        match body["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/runs?limit=3&cursor={c}"),
            None => break,
        }
    }
    let mut newest_first: Vec<i64> = expected.clone();
    newest_first.reverse();
    // Runs 4 and 5 share a creation time: the higher id comes first, as already in this order.
    newest_first.push(inventory);
    assert_eq!(seen, newest_first);

    let count = |body: &Value| body["runs"].as_array().unwrap().len();
    assert_eq!(
        count(&viewer.json("/v1/runs?status=completed", &token).await.1),
        4
    );
    assert_eq!(
        count(
            &viewer
                .json("/v1/runs?outcome=pending&status=running", &token)
                .await
                .1
        ),
        3
    );
    assert_eq!(
        count(&viewer.json("/v1/runs?type=inventory.sync", &token).await.1),
        1
    );
    assert_eq!(
        count(&viewer.json("/v1/runs?tenant_id=11", &token).await.1),
        1
    );
    let after = (chrono::Utc::now() - chrono::Duration::seconds(97 * 60 + 30)).to_rfc3339();
    let (_, body) = viewer
        .json(
            &format!("/v1/runs?created_after={}", urlencode(&after)),
            &token,
        )
        .await;
    assert_eq!(count(&body), 4, "{body}");
    let (_, body) = viewer
        .json(
            &format!("/v1/runs?created_before={}", urlencode(&after)),
            &token,
        )
        .await;
    assert_eq!(count(&body), 4, "{body}");

    for bad in [
        "limit=0",
        "limit=201",
        "status=done",
        "outcome=ok",
        "type=nope",
        "tenant_id=x",
        "created_after=yesterday",
        "cursor=zz",
    ] {
        let (status, body) = viewer.json(&format!("/v1/runs?{bad}"), &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error_code(&body), "invalid_parameter", "{bad}");
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[sqlx::test]
async fn a_run_shows_label_related_links_legacy_rows_and_progress(pool: PgPool) {
    seed_scopes(&pool).await;
    sqlx::query(
        "INSERT INTO restore_runs (id, tenant_id, backup_set_id) VALUES (7, 10, 1), (8, 11, 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let own = insert_run(&pool, 1, Some(10), "restore.execute", ("running", "pending"), 1,
        json!({"context": {"restore_run_id": 7, "backup_set_id": 3}, "counts": {"total": 8, "processed": 2}})).await;
    let foreign = insert_run(
        &pool,
        1,
        Some(10),
        "backup_schedule.run_now",
        ("running", "pending"),
        1,
        json!({"context": {"restore_run_id": 8, "backup_schedule_id": "77"}}),
    )
    .await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL operation_runs.legacy_import = 'on'")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO backup_schedule_runs (id, backup_schedule_id, tenant_id, scheduled_for, status, operation_run_id)
         VALUES (41, 77, 10, now(), 'completed', $1), (42, 77, 10, now(), 'failed', NULL), (43, 78, 20, now(), 'failed', NULL)",
    )
    .bind(foreign)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let viewer = Viewer::spawn(pool).await;
    let token = viewer.token(1, None);

    let (status, run) = viewer.json(&format!("/v1/runs/{own}"), &token).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["label"], "Restore");
    assert_eq!(run["type"], "restore.execute");
    assert_eq!(
        run["progress"],
        json!({"processed": 2, "total": 8, "percent": 25.0})
    );
    let related: Vec<&str> = run["related"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["key"].as_str().unwrap())
        .collect();
    assert_eq!(related, vec!["backup_set_id", "restore_run_id"]);
    assert_eq!(
        run["related"][1],
        json!({"key": "restore_run_id", "id": 7, "label": "Restore run 7"})
    );
    assert_eq!(run["legacy"], json!([]));

    // Restore 8 belongs to tenant 11: not shown on a tenant-10 run.
    let (_, run) = viewer.json(&format!("/v1/runs/{foreign}"), &token).await;
    let related: Vec<&str> = run["related"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["key"].as_str().unwrap())
        .collect();
    assert_eq!(related, vec!["backup_schedule_id"]);
    assert_eq!(run["legacy"][0]["table"], "backup_schedule_runs");
    assert_eq!(run["legacy"][0]["row"]["id"], 41);
    assert_eq!(run["progress"]["percent"], Value::Null);

    // Legacy redirects.
    let (status, headers, _) = viewer
        .get("/v1/legacy/backup_schedule_runs/41", Some(&token))
        .await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(headers[LOCATION], format!("/v1/runs/{foreign}").as_str());
    let (status, body) = viewer
        .json("/v1/legacy/backup_schedule_runs/42", &token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "legacy_unmapped");
    assert_eq!(body["error"]["legacy"]["id"], 42);
    let (status, body) = viewer.json("/v1/legacy/operation_runs/1", &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "unknown_legacy_table");
    // Another workspace's row, mapped or not, and a missing row: plain not_found.
    for path in [
        "/v1/legacy/backup_schedule_runs/43",
        "/v1/legacy/backup_schedule_runs/999",
    ] {
        let (status, body) = viewer.json(path, &token).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{path}"
        );
    }
    let (status, _) = viewer
        .json("/v1/legacy/backup_schedule_runs/41", &viewer.token(2, None))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The page redirects to the run's page.
    let (status, headers, _) = viewer
        .get("/legacy/backup_schedule_runs/41", Some(&token))
        .await;
    assert!(status.is_redirection());
    assert_eq!(headers[LOCATION], format!("/runs/{foreign}").as_str());

    // The catalog.
    let (status, catalog) = viewer.json("/v1/catalog", &token).await;
    assert_eq!(status, StatusCode::OK);
    let types = catalog["types"].as_array().unwrap();
    assert_eq!(types.len(), operation_runs::domain::OPERATION_CATALOG.len());
    assert!(types.contains(&json!({"type": "backup_schedule.retry", "label": "Backup (retry)",
        "identity_keys": ["backup_schedule_id", "backup_schedule_run_id"], "expected_duration_seconds": 1800})));
}

/// Reads SSE frames from `response` until the stream ends: `(id, event, data)`.
async fn read_sse(mut response: reqwest::Response) -> Vec<(i64, String, Value)> {
    let mut text = String::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the live stream ends after the completion event");
    text.split("\n\n")
        .filter_map(|frame| {
            let field = |name: &str| {
                frame
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}:")))
                    .map(|v| v.trim_start().to_owned())
            };
            Some((
                field("id")?.parse().ok()?,
                field("event")?,
                serde_json::from_str(&field("data")?).ok()?,
            ))
        })
        .collect()
}

#[sqlx::test]
async fn the_live_stream_follows_a_run_resumes_from_last_event_id_and_ends_at_completion(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool.clone()).await;
    let viewer = Viewer::spawn(pool).await;
    let token = viewer.token(1, Some(vec![10]));
    let run_id = app.create_policy_run(1).await;
    let live = viewer
        .http
        .get(format!("{}/v1/runs/{run_id}/live", viewer.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    assert_eq!(live.headers()["content-type"], "text/event-stream");
    let reading = tokio::spawn(read_sse(live));
    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "running"}),
    ))
    .await;
    for _ in 0..3 {
        app.publish(&progress(
            "increment_summary_counts",
            run_id,
            json!({"counts": {"processed": 1}}),
        ))
        .await;
    }
    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "completed", "outcome": "succeeded"}),
    ))
    .await;
    let frames = reading.await.unwrap();
    let sequences: Vec<i64> = frames.iter().map(|f| f.0).collect();
    assert_eq!(sequences, (1..=sequences.len() as i64).collect::<Vec<_>>());
    assert_eq!(frames[0].1, "operation_run.queued");
    let last = frames.last().unwrap();
    assert_eq!(last.1, "operation_run.completed");
    assert_eq!(last.2["data"]["run"]["outcome"], "succeeded");
    assert_eq!(last.2["data"]["sequence"], last.0);

    // Resuming after event 2 sends the rest, then ends (the run is complete).
    let resumed = viewer
        .http
        .get(format!("{}/v1/runs/{run_id}/live", viewer.base))
        .bearer_auth(&token)
        .header("last-event-id", "2")
        .send()
        .await
        .unwrap();
    let rest = read_sse(resumed).await;
    assert_eq!(rest, frames[2..].to_vec());
    // And after the completion event, nothing: the stream ends at once.
    let done = viewer
        .http
        .get(format!("{}/v1/runs/{run_id}/live", viewer.base))
        .bearer_auth(&token)
        .header("last-event-id", last.0.to_string())
        .send()
        .await
        .unwrap();
    assert!(read_sse(done).await.is_empty());

    // The events endpoint gives the same history.
    let (_, events) = viewer
        .json(&format!("/v1/runs/{run_id}/events?after=1"), &token)
        .await;
    let types: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = frames[1..].iter().map(|f| f.1.as_str()).collect();
    assert_eq!(types, expected);
    app.shutdown().await;
}

#[sqlx::test]
async fn a_token_link_signs_the_browser_in_and_pages_escape_every_value(pool: PgPool) {
    seed_scopes(&pool).await;
    let hostile = "<script>alert('x')</script>";
    let id = insert_run(&pool, 1, Some(10), "policy.sync", ("running", "pending"), 1,
        json!({"initiator": hostile, "context": {"policy_id": hostile}, "counts": {"total": 4, "processed": 1}})).await;
    let viewer = Viewer::spawn(pool).await;
    let token = viewer.token(1, None);

    let (status, headers, _) = viewer
        .get(&format!("/runs/{id}?token={token}&x=1"), None)
        .await;
    assert!(status.is_redirection(), "{status}");
    assert_eq!(headers[LOCATION], format!("/runs/{id}?x=1").as_str());
    let cookie = headers[SET_COOKIE].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let (name_value, _) = cookie.split_once(';').unwrap();

    let page = viewer
        .http
        .get(format!("{}/runs/{id}", viewer.base))
        .header("cookie", name_value)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(!html.contains(hostile), "unescaped value in the page");
    assert!(html.contains("&lt;script&gt;alert('x')&lt;/script&gt;"));
    assert!(html.contains("<progress id=\"progress-bar\" max=\"100\" value=\"25\">"));
    assert!(html.contains("data-live=\"true\""));

    let list = viewer
        .http
        .get(format!("{}/runs", viewer.base))
        .header("cookie", name_value)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(list.contains(&format!("href=\"/runs/{id}\"")), "{list}");
    assert!(list.contains("min ago"));

    // No token: a sign-in page, not the data; a bad token link: the same.
    let (status, _, body) = viewer.get(&format!("/runs/{id}"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!body.contains("policy.sync"));
    let (status, headers, _) = viewer.get(&format!("/runs/{id}?token=forged"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.get(SET_COOKIE).is_none());
}

/// Every filter combination of the page (the search filters too: context, failure code,
/// initiator, user, identity, last change, text), for a whole-workspace token, tenant-subset
/// tokens and a token for one run,
/// with and without a cursor, on 100,000 runs: no sequential scan, in custom and generic plans,
/// and a search filter never walks the active runs apart.
#[sqlx::test]
async fn every_list_filter_combination_is_answered_from_an_index(pool: PgPool) {
    seed_scopes(&pool).await;
    sqlx::query(
        "INSERT INTO operation_runs (workspace_id, tenant_id, type, status, outcome, run_identity_hash, created_at,
                                     context, failure_summary, failure_overflow, initiator_name, user_id, updated_at)
         SELECT CASE WHEN i % 4 = 3 THEN 2 ELSE 1 END,
                (ARRAY[10, 11, NULL, 20])[i % 4 + 1],
                (ARRAY['policy.sync', 'inventory.sync', 'entra_group.sync', 'restore.execute'])[i % 7 % 4 + 1],
                CASE WHEN i % 50 = 0 THEN 'running' ELSE 'completed' END,
                CASE WHEN i % 50 = 0 THEN 'pending' WHEN i % 13 = 0 THEN 'failed' ELSE 'succeeded' END,
                md5(i::text) || md5((i + 1)::text),
                now() - make_interval(secs => i * 60),
                jsonb_build_object('policy_id', i % 5000, 'provider', 'graph'),
                CASE WHEN i % 13 = 0 THEN jsonb_build_array(jsonb_build_object(
                    'code', 'code.' || (i % 300), 'message', 'failed')) ELSE '[]' END,
                CASE WHEN i % 1000 = 0 THEN '{\"graph.throttled\": 3}'::jsonb ELSE '{}' END,
                'initiator ' || (i % 2000),
                CASE WHEN i % 3 = 0 THEN 5 END,
                now() - make_interval(secs => i * 60 - 30)
         FROM generate_series(1, 100000) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE operation_runs")
        .execute(&pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let week_ago = chrono::Utc::now() - chrono::Duration::days(7);
    let cursor = Some((chrono::Utc::now() - chrono::Duration::days(3), 50_000));
    let filters = |tenant: Option<i64>| {
        let base = RunListFilter::default();
        vec![
            base.clone(),
            RunListFilter {
                tenant_id: tenant,
                ..base.clone()
            },
            RunListFilter {
                run_type: Some("policy.sync".into()),
                ..base.clone()
            },
            RunListFilter {
                status: Some("running".into()),
                ..base.clone()
            },
            RunListFilter {
                outcome: Some("failed".into()),
                ..base.clone()
            },
            RunListFilter {
                status: Some("completed".into()),
                outcome: Some("failed".into()),
                ..base.clone()
            },
            RunListFilter {
                tenant_id: tenant,
                run_type: Some("inventory.sync".into()),
                ..base.clone()
            },
            RunListFilter {
                tenant_id: tenant,
                status: Some("running".into()),
                ..base.clone()
            },
            RunListFilter {
                created_after: Some(week_ago),
                ..base.clone()
            },
            RunListFilter {
                created_before: Some(week_ago),
                run_type: Some("policy.sync".into()),
                ..base.clone()
            },
            RunListFilter {
                tenant_id: tenant,
                run_type: Some("policy.sync".into()),
                status: Some("completed".into()),
                outcome: Some("succeeded".into()),
                created_after: Some(week_ago - chrono::Duration::days(30)),
                created_before: Some(week_ago),
                ..base.clone()
            },
            // The search filters, alone and with the others.
            RunListFilter {
                context: vec![("policy_id".into(), ContextValue::parse("7"))],
                ..base.clone()
            },
            RunListFilter {
                context: vec![
                    ("policy_id".into(), ContextValue::parse("7")),
                    ("provider".into(), ContextValue::parse("graph")),
                ],
                tenant_id: tenant,
                ..base.clone()
            },
            RunListFilter {
                failure_code: Some("graph.throttled".into()),
                ..base.clone()
            },
            RunListFilter {
                failure_code: Some("graph.throttled".into()),
                run_type: Some("policy.sync".into()),
                outcome: Some("failed".into()),
                ..base.clone()
            },
            RunListFilter {
                initiator: Some("Ada".into()),
                ..base.clone()
            },
            RunListFilter {
                user_id: Some(5),
                status: Some("completed".into()),
                ..base.clone()
            },
            RunListFilter {
                identity: Some(format!("{:064x}", 42)),
                ..base.clone()
            },
            RunListFilter {
                updated_before: Some(week_ago),
                ..base.clone()
            },
            RunListFilter {
                updated_before: Some(week_ago),
                status: Some("running".into()),
                tenant_id: tenant,
                ..base.clone()
            },
            RunListFilter {
                q: Some(Search::Run(50_000)),
                ..base.clone()
            },
            RunListFilter {
                q: Some(Search::Text {
                    text: "policy".into(),
                    types: vec!["policy.sync".into()],
                }),
                ..base.clone()
            },
            RunListFilter {
                q: Some(Search::Text {
                    text: "Ada".into(),
                    types: vec![],
                }),
                created_after: Some(week_ago - chrono::Duration::days(30)),
                ..base.clone()
            },
        ]
    };
    let scopes = [
        ViewerScope {
            workspace_id: 1,
            tenant_ids: None,
            run_id: None,
        },
        ViewerScope {
            workspace_id: 1,
            tenant_ids: Some(vec![10]),
            run_id: None,
        },
        ViewerScope {
            workspace_id: 1,
            tenant_ids: Some(vec![10, 11]),
            run_id: None,
        },
        ViewerScope {
            workspace_id: 1,
            tenant_ids: Some(vec![10]),
            run_id: Some(50_000),
        },
    ];
    let mut checked = 0;
    for mode in ["auto", "force_generic_plan"] {
        sqlx::query(&format!("SET plan_cache_mode = {mode}"))
            .execute(&mut *conn)
            .await
            .unwrap();
        for scope in &scopes {
            for filter in filters(Some(10)) {
                for after in [None, cursor] {
                    let plan = explain_list_runs(&mut *conn, scope, &filter, after, 51)
                        .await
                        .unwrap();
                    let text = plan.to_string();
                    assert!(
                        !text.contains("Seq Scan") && text.contains("Index"),
                        "{mode} {scope:?} {filter:?} {after:?}: {text}"
                    );
                    // A search filter reads its own index for active runs too, never every
                    // active run of the workspace from the index of active runs.
                    let searches = !filter.context.is_empty()
                        || filter.failure_code.is_some()
                        || filter.initiator.is_some()
                        || filter.user_id.is_some()
                        || filter.identity.is_some();
                    assert!(
                        !(searches && text.contains("operation_runs_active_idx")),
                        "{mode} {scope:?} {filter:?} {after:?}: {text}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 2 * 4 * 23 * 2);
}

/// `oprun token` with no configured secret: creates the database's secret once, prints a token
/// and the viewer link; a second token is signed with the same secret, and `serve` would verify
/// both (it reads the same row).
#[sqlx::test]
async fn oprun_token_prints_a_token_and_a_link_signed_with_the_stored_secret(
    _o: sqlx::postgres::PgPoolOptions,
    connect: sqlx::postgres::PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_oprun"))
            .args(args)
            .env("DATABASE_URL", crate::helpers::database_url_for(&db))
            .env_remove("OPRUN_API_SECRET")
            .env_remove("OPRUN_HTTP_ADDR")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run(&[
        "token",
        "--workspace",
        "1",
        "--tenant",
        "10",
        "--tenant",
        "11",
        "--ttl",
        "2h",
        "--sub",
        "ada",
    ]);
    let second = run(&["token", "--workspace", "2", "--operate"]);
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(lines.len(), 2, "{first}");
    assert_eq!(
        lines[1],
        format!("http://127.0.0.1:8080/runs?token={}", lines[0])
    );

    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_with(connect)
        .await
        .unwrap();
    let keys = operation_runs::service::viewer_keys(&pool, None)
        .await
        .unwrap();
    let claims = keys.verify(lines[0]).unwrap();
    // Tokens only read, unless minted with --operate.
    assert!(!claims.may_operate());
    assert_eq!(
        (
            claims.workspace_id,
            claims.tenant_ids,
            claims.sub.as_deref()
        ),
        (1, Some(vec![10, 11]), Some("ada"))
    );
    let lifetime = claims.exp as i64 - chrono::Utc::now().timestamp();
    assert!((7100..=7200).contains(&lifetime), "{lifetime}");
    let claims = keys.verify(second.lines().next().unwrap()).unwrap();
    assert_eq!((claims.workspace_id, claims.tenant_ids), (2, None));
    assert_eq!(claims.grants.as_deref(), Some("operate"));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM api_secrets")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);
}

/// `oprun token --run ID`: a token for that one run, scoped to the run's own workspace and
/// tenant read from the database, and a link to its page; a `--tenant` that does not hold the
/// run, or a run that does not exist, mints nothing.
#[sqlx::test]
async fn oprun_token_for_a_run_is_scoped_to_that_run_and_its_tenant(
    _o: sqlx::postgres::PgPoolOptions,
    connect: sqlx::postgres::PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_with(connect)
        .await
        .unwrap();
    seed_scopes(&pool).await;
    let run = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        ("queued", "pending"),
        1,
        json!({}),
    )
    .await;
    let oprun = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_oprun"))
            .args(args)
            .env("DATABASE_URL", crate::helpers::database_url_for(&db))
            .env("OPRUN_API_SECRET", SECRET)
            .env_remove("OPRUN_HTTP_ADDR")
            .output()
            .unwrap()
    };
    let out = oprun(&["token", "--run", &run.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[1],
        format!("http://127.0.0.1:8080/runs/{run}?token={}", lines[0])
    );
    let claims = TokenKeys::new(SECRET).unwrap().verify(lines[0]).unwrap();
    assert_eq!(
        (claims.workspace_id, claims.tenant_ids, claims.run_id),
        (1, Some(vec![10]), Some(run))
    );
    for refused in [
        vec!["token", "--run", &*run.to_string(), "--tenant", "11"],
        vec!["token", "--run", &*run.to_string(), "--workspace", "2"],
        vec!["token", "--run", "999999"],
    ] {
        let out = oprun(&refused);
        assert!(!out.status.success(), "{refused:?}");
        assert!(out.stdout.is_empty(), "{refused:?}");
    }
}

/// The newcomer's path: `oprun serve` (no secret configured) serves the viewer, a run is
/// dispatched, `oprun token --workspace 1` prints a link, and that link shows the run.
#[sqlx::test]
async fn serve_shows_a_dispatched_run_through_the_link_oprun_token_prints(
    _o: sqlx::postgres::PgPoolOptions,
    connect: sqlx::postgres::PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let app = TestApp::without_service(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy_with(connect),
    )
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let _serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_oprun"))
        .args(["serve", "--metrics-addr", "off", "--http-addr", &addr])
        .args(["--hand-off-jobs", "false", "--reaper-interval", "0s"])
        .env("DATABASE_URL", crate::helpers::database_url_for(&db))
        .env("OPRUN_NAMESPACE", app.topology.namespace())
        .env_remove("OPRUN_API_SECRET")
        .env("OPRUN_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let run_id = app.create_policy_run(3).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oprun"))
        .args(["token", "--workspace", "1", "--http-addr", &addr])
        .env("DATABASE_URL", crate::helpers::database_url_for(&db))
        .env_remove("OPRUN_API_SECRET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let link = stdout.lines().nth(1).unwrap().to_owned();
    assert!(
        link.starts_with(&format!("http://{addr}/runs?token=")),
        "{link}"
    );

    let (http, cookie) = sign_in_by_link(&link).await;
    let cookie = cookie.as_str();
    let list = http
        .get(format!("http://{addr}/runs"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::OK);
    assert!(list
        .text()
        .await
        .unwrap()
        .contains(&format!("href=\"/runs/{run_id}\"")));
    app.shutdown().await;
}

#[sqlx::test]
async fn a_cursor_or_time_outside_postgresqls_range_is_a_bad_parameter(pool: PgPool) {
    seed_scopes(&pool).await;
    let viewer = Viewer::spawn(pool).await;
    let t = viewer.token(1, None);
    // Well-formed cursors (hex of `micros.id`) whose time PostgreSQL cannot hold: 100,000 BC
    // is within chrono's range, not within timestamptz's.
    let ancient = hex::encode(format!("{}.1", -3_217_000_000_000_000_000i64));
    let (status, body) = viewer.json(&format!("/v1/runs?cursor={ancient}"), &t).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(&body), "invalid_parameter");
    let (status, _, page) = viewer
        .get(&format!("/runs?cursor={ancient}"), Some(&t))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("invalid_parameter"), "{page}");
    // The edges PostgreSQL does hold are answered.
    let oldest = hex::encode(format!("{}.1", -210_866_803_200_000_000i64));
    let (status, body) = viewer.json(&format!("/v1/runs?cursor={oldest}"), &t).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = viewer
        .json(
            "/v1/runs?created_after=0000-01-01T00:00:00Z&created_before=9999-12-31T23:59:59Z",
            &t,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[sqlx::test]
async fn every_refusal_is_the_apis_json_error_under_v1_and_the_error_page_elsewhere(pool: PgPool) {
    seed_scopes(&pool).await;
    let viewer = Viewer::spawn(pool).await;
    let t = viewer.token(1, None);
    let http = reqwest::Client::new();
    let is_json_error = |status: StatusCode, headers: &HeaderMap, body: &str, code: &str| {
        let content_type = headers["content-type"].to_str().unwrap().to_owned();
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}: {body}"
        );
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(error_code(&v), code, "{status}: {body}");
        assert!(v["error"]["message"].is_string(), "{body}");
    };
    let is_error_page = |status: StatusCode, headers: &HeaderMap, body: &str, code: &str| {
        let content_type = headers["content-type"].to_str().unwrap().to_owned();
        assert!(
            content_type.starts_with("text/html"),
            "{status} {content_type}: {body}"
        );
        assert!(body.contains(&format!("<h1>{code}</h1>")), "{body}");
    };
    for path in [
        "/v1/runs/%FF",
        "/v1/runs/%FF/events",
        "/v1/runs/%FF/live",
        "/v1/legacy/inventory_sync_runs/%C3%28",
    ] {
        let (status, headers, body) = viewer.get(path, Some(&t)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        is_json_error(status, &headers, &body, "invalid_parameter");
    }
    for path in ["/v1/nothing", "/v1/runs/1/nothing", "/v1"] {
        let (status, headers, body) = viewer.get(path, Some(&t)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        is_json_error(status, &headers, &body, "not_found");
    }
    let posted = http
        .post(format!("{}/v1/runs", viewer.base))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    let (status, headers) = (posted.status(), posted.headers().clone());
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(
        headers.contains_key("allow"),
        "405 names the allowed methods"
    );
    is_json_error(
        status,
        &headers,
        &posted.text().await.unwrap(),
        "method_not_allowed",
    );

    // Pages answer with their error page.
    for path in ["/runs/%FF", "/legacy/inventory_sync_runs/%FF"] {
        let (status, headers, body) = viewer.get(path, Some(&t)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        is_error_page(status, &headers, &body, "invalid_parameter");
    }
    let (status, headers, body) = viewer.get("/runs/1/nothing", Some(&t)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    is_error_page(status, &headers, &body, "not_found");
    let posted = http
        .post(format!("{}/runs", viewer.base))
        .send()
        .await
        .unwrap();
    let (status, headers) = (posted.status(), posted.headers().clone());
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    is_error_page(
        status,
        &headers,
        &posted.text().await.unwrap(),
        "method_not_allowed",
    );
}

/// Follows a token link `oprun token` printed, once the viewer listens: the sign-in's redirect
/// and its cookie (`name=value`), with a client that does not follow redirects.
pub(crate) async fn sign_in_by_link(link: &str) -> (reqwest::Client, String) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(DEADLINE)
        .build()
        .unwrap();
    let signed_in = crate::helpers::wait_until("the viewer to answer", || {
        let (http, link) = (http.clone(), link.to_owned());
        async move { http.get(&link).send().await.ok() }
    })
    .await;
    assert!(
        signed_in.status().is_redirection(),
        "{}",
        signed_in.status()
    );
    let cookie = signed_in.headers()[SET_COOKIE].to_str().unwrap();
    let (cookie, _) = cookie.split_once(';').unwrap();
    (http, cookie.to_owned())
}

/// Sets a run's times (minutes ago; `None` leaves the column null) and failures directly.
async fn set_times_and_failures(
    pool: &PgPool,
    run: i64,
    (started, completed, updated): (Option<i64>, Option<i64>, i64),
    failures: Value,
    overflow: Value,
) {
    sqlx::query(
        "UPDATE operation_runs SET
             started_at = now() - make_interval(mins => $2::int),
             completed_at = now() - make_interval(mins => $3::int),
             updated_at = now() - make_interval(mins => $4::int),
             failure_summary = $5, failure_overflow = $6
         WHERE id = $1",
    )
    .bind(run)
    .bind(started.map(|m| m as i32))
    .bind(completed.map(|m| m as i32))
    .bind(updated as i32)
    .bind(failures)
    .bind(overflow)
    .execute(pool)
    .await
    .unwrap();
}

fn failure(code: &str) -> Value {
    json!({"code": code, "message": "it failed"})
}

/// The detail names the run's workspace and tenant, says when it started and completed, how
/// long it ran (so far, while running), how long its type usually takes, how long it has not
/// changed and whether it stalled, and counts its failures per code, overflow included.
#[sqlx::test]
async fn a_runs_detail_names_its_scope_times_its_run_and_counts_failures_per_code(pool: PgPool) {
    seed_scopes(&pool).await;
    let running = ("running", "pending");
    let stuck = insert_run(&pool, 1, Some(10), "policy.sync", running, 40, json!({})).await;
    set_times_and_failures(
        &pool,
        stuck,
        (Some(30), None, 20),
        json!([
            failure("graph.throttled"),
            failure("item.missing"),
            failure("graph.throttled")
        ]),
        json!({"item.missing": 150, "graph.throttled": 4}),
    )
    .await;
    let moving = insert_run(&pool, 1, None, "inventory.sync", running, 5, json!({})).await;
    set_times_and_failures(&pool, moving, (Some(4), None, 1), json!([]), json!({})).await;
    let done = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        ("completed", "succeeded"),
        90,
        json!({}),
    )
    .await;
    set_times_and_failures(&pool, done, (Some(80), Some(50), 50), json!([]), json!({})).await;
    let viewer = Viewer::spawn(pool).await;
    let token = viewer.token(1, None);

    let (status, run) = viewer.json(&format!("/v1/runs/{stuck}"), &token).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(
        (run["workspace_name"].as_str(), run["tenant_name"].as_str()),
        (Some("one"), Some("ten"))
    );
    assert!(
        run["started_at"].is_string() && run["completed_at"].is_null(),
        "{run}"
    );
    let near = |v: &Value, secs: i64| (v.as_i64().unwrap() - secs).abs() <= 5;
    assert!(near(&run["duration_seconds"], 30 * 60), "{run}");
    assert!(near(&run["idle_seconds"], 20 * 60), "{run}");
    assert_eq!(run["expected_duration_seconds"], 300);
    assert_eq!(run["stalled"], true);
    assert_eq!(
        run["failures_by_code"],
        json!([{"code": "item.missing", "count": 151}, {"code": "graph.throttled", "count": 6}])
    );
    // The existing fields keep their names and meaning.
    for field in [
        "id",
        "type",
        "status",
        "outcome",
        "label",
        "progress",
        "related",
        "legacy",
        "failure_summary",
        "failure_overflow",
    ] {
        assert!(run.get(field).is_some(), "{field}: {run}");
    }

    let (_, run) = viewer.json(&format!("/v1/runs/{moving}"), &token).await;
    assert_eq!(
        (run["tenant_name"].clone(), run["stalled"].clone()),
        (Value::Null, json!(false))
    );
    assert_eq!(run["failures_by_code"], json!([]));

    let (_, run) = viewer.json(&format!("/v1/runs/{done}"), &token).await;
    assert!(near(&run["duration_seconds"], 30 * 60), "{run}");
    assert_eq!(run["stalled"], false, "a completed run never stalls");
}

fn listed_ids(body: &Value) -> Vec<i64> {
    body["runs"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

/// The search filters find runs by context value (an integer and its decimal string alike,
/// every filter holding), failure code (stored or overflow), initiator, user, identity, last
/// change and free text, completed or active; a token never lists, names or counts another
/// tenant's run through them.
#[sqlx::test]
async fn the_search_filters_find_runs_within_the_tokens_scope_only(pool: PgPool) {
    seed_scopes(&pool).await;
    let done = ("completed", "failed");
    let running = ("running", "pending");
    let by_number = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        done,
        30,
        json!({"context": {"policy_id": 7, "provider": "graph"}, "initiator": "Ada"}),
    )
    .await;
    let by_string = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        running,
        20,
        json!({"context": {"policy_id": "7", "provider": "intune"}, "initiator": "ada"}),
    )
    .await;
    // Another tenant's run that matches every filter.
    let foreign = insert_run(
        &pool,
        1,
        Some(11),
        "policy.sync",
        done,
        10,
        json!({"context": {"policy_id": 7, "provider": "graph"}, "initiator": "Ada"}),
    )
    .await;
    set_times_and_failures(
        &pool,
        by_number,
        (Some(30), Some(29), 29),
        json!([failure("graph.throttled")]),
        json!({}),
    )
    .await;
    set_times_and_failures(
        &pool,
        by_string,
        (Some(20), None, 15),
        json!([failure("a")]),
        json!({"graph.throttled": 2}),
    )
    .await;
    set_times_and_failures(
        &pool,
        foreign,
        (Some(10), Some(9), 9),
        json!([failure("graph.throttled")]),
        json!({}),
    )
    .await;
    sqlx::query("UPDATE operation_runs SET user_id = 5")
        .execute(&pool)
        .await
        .unwrap();
    let hash: String =
        sqlx::query_scalar("SELECT run_identity_hash FROM operation_runs WHERE id = $1")
            .bind(by_number)
            .fetch_one(&pool)
            .await
            .unwrap();
    sqlx::query("UPDATE operation_runs SET run_identity_hash = $1")
        .bind(&hash)
        .execute(&pool)
        .await
        .unwrap();
    let viewer = Viewer::spawn(pool).await;
    let token = viewer.token(1, Some(vec![10]));
    let twelve_minutes_ago = (chrono::Utc::now() - chrono::Duration::minutes(12)).to_rfc3339();
    // (query, what the tenant-10 token lists, whether the whole-workspace token also lists the
    // other tenant's run: the filter does find it, the tenant token just never sees it)
    let cases: Vec<(String, Vec<i64>, bool)> = vec![
        (
            "context.policy_id=7".into(),
            vec![by_string, by_number],
            true,
        ),
        (
            "context.policy_id=7&context.provider=graph".into(),
            vec![by_number],
            true,
        ),
        ("context.provider=intune".into(), vec![by_string], false),
        ("context.policy_id=07".into(), vec![], false),
        ("context.missing=7".into(), vec![], false),
        (
            "failure_code=graph.throttled".into(),
            vec![by_string, by_number],
            true,
        ),
        ("failure_code=a".into(), vec![by_string], false),
        ("initiator=Ada".into(), vec![by_number], true),
        ("user_id=5".into(), vec![by_string, by_number], true),
        ("user_id=6".into(), vec![], false),
        (format!("identity={hash}"), vec![by_string, by_number], true),
        (
            format!("updated_before={}", urlencode(&twelve_minutes_ago)),
            vec![by_string, by_number],
            false,
        ),
        (format!("q=%23{by_number}"), vec![by_number], false),
        (format!("q={foreign}"), vec![], true),
        ("q=policy".into(), vec![by_string, by_number], true),
        ("q=ADA".into(), vec![by_string, by_number], true),
        ("q=nobody".into(), vec![], false),
        (
            "context.policy_id=7&status=running".into(),
            vec![by_string],
            false,
        ),
    ];
    let wide_token = viewer.token(1, None);
    for (query, expected, foreign_matches) in cases {
        let (status, body) = viewer.json(&format!("/v1/runs?{query}"), &token).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        assert_eq!(listed_ids(&body), expected, "{query}");
        assert!(!body.to_string().contains("eleven"), "{query}: {body}");
        let (_, wide) = viewer.json(&format!("/v1/runs?{query}"), &wide_token).await;
        assert_eq!(
            listed_ids(&wide).contains(&foreign),
            foreign_matches,
            "{query}: {wide}"
        );
    }

    // Each listed run carries its tenant's name, times and failure codes.
    let (_, body) = viewer.json("/v1/runs?context.policy_id=7", &token).await;
    let listed = &body["runs"][0];
    assert_eq!(listed["id"], by_string);
    assert_eq!(listed["tenant_name"], "ten");
    assert_eq!(listed["failure_codes"], json!(["a", "graph.throttled"]));
    for field in [
        "started_at",
        "completed_at",
        "updated_at",
        "duration_seconds",
        "stalled",
    ] {
        assert!(listed.get(field).is_some(), "{field}: {listed}");
    }

    for (query, named) in [
        ("tenant=10".to_owned(), "tenant"),
        ("context.=1".to_owned(), "context."),
        ("q=".to_owned() + &"x".repeat(201), "q"),
        (format!("context.k={}", "v".repeat(257)), "context.k"),
        ("failure_code=not%20a%20code".to_owned(), "failure_code"),
        ("identity=abc".to_owned(), "identity"),
        ("updated_before=yesterday".to_owned(), "updated_before"),
        (
            (1..=9)
                .map(|i| format!("context.k{i}=1"))
                .collect::<Vec<_>>()
                .join("&"),
            "context",
        ),
    ] {
        let (status, body) = viewer.json(&format!("/v1/runs?{query}"), &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(error_code(&body), "invalid_parameter", "{query}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(named),
            "{query}: {body}"
        );
    }
    // The list page shares the parser: a misspelt filter is refused there too.
    let (status, _, _) = viewer.get("/runs?tenant=10", Some(&token)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// An identity's history: its type, its window, the run holding it and its runs newest first,
/// within the token's scope; an identity with no run in scope is not found, like one that
/// does not exist.
#[sqlx::test]
async fn an_identitys_history_lists_its_runs_and_holder_within_the_scope(pool: PgPool) {
    seed_scopes(&pool).await;
    let done = ("completed", "succeeded");
    let older = insert_run(&pool, 1, Some(10), "policy.sync", done, 30, json!({})).await;
    let holder = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        ("running", "pending"),
        20,
        json!({}),
    )
    .await;
    let foreign = insert_run(&pool, 1, Some(11), "policy.sync", done, 10, json!({})).await;
    let hash = format!("{:064x}", 7);
    sqlx::query("UPDATE operation_runs SET run_identity_hash = $1")
        .bind(&hash)
        .execute(&pool)
        .await
        .unwrap();
    let viewer = Viewer::spawn(pool).await;
    let token = viewer.token(1, Some(vec![10]));
    let (status, body) = viewer.json(&format!("/v1/identities/{hash}"), &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["identity_hash"], hash.as_str());
    assert_eq!(
        (body["type"].as_str(), body["dedupe_window"].as_str()),
        (Some("policy.sync"), Some("active"))
    );
    assert_eq!(body["holder"]["id"], holder);
    assert_eq!(listed_ids(&body), vec![holder, older]);
    assert_eq!(body["more"], false);
    assert!(!body.to_string().contains("eleven"), "{body}");

    let (_, wide) = viewer
        .json(&format!("/v1/identities/{hash}"), &viewer.token(1, None))
        .await;
    assert_eq!(listed_ids(&wide), vec![foreign, holder, older]);
    // Only the other tenant's run in scope's reach: not found; so is a hash of nothing, or none.
    let (status, body) = viewer
        .json(
            &format!("/v1/identities/{hash}"),
            &viewer.token(1, Some(vec![11])),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (listed_ids(&body), body["holder"].clone()),
        (vec![foreign], Value::Null)
    );
    for path in [
        format!("/v1/identities/{:064x}", 8),
        "/v1/identities/nothex".into(),
    ] {
        let (status, body) = viewer.json(&path, &token).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{path}"
        );
    }
    let (status, _) = viewer
        .json(&format!("/v1/identities/{hash}"), &viewer.token(2, None))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
