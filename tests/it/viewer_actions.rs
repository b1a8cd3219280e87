//! Operator actions through the viewer, over real HTTP against the real database: the API's
//! `POST /v1/runs/{id}/cancel|retry|fail` for bearer tokens granting `operate` only, in the
//! token's scope only, each answered with the action's result shape and recorded with the
//! token's `sub`; a read token, a cookie alone, another tenant's run change nothing. The
//! pages' forms act only with the anti-forgery value their page carried, and the list's bulk
//! actions count their runs first, act once per run under one bulk id, in scope only.

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::seed_scopes;
use crate::viewer_api::{error_code, insert_run, Viewer};
use crate::viewer_tokens::hidden;

/// A token granting `operate` for `tenants` of workspace 1 (and only `run` when given), whose
/// bearer is `ada`.
fn operator_token(viewer: &Viewer, tenants: Option<Vec<i64>>, run: Option<i64>) -> String {
    viewer.operator_token(1, tenants, run)
}

/// How a request is signed in.
enum Auth<'a> {
    Bearer(&'a str),
    Cookie(&'a str),
    None,
}

/// POSTs `body` (raw) to `path`.
async fn post(viewer: &Viewer, path: &str, auth: Auth<'_>, body: &str) -> (StatusCode, Value) {
    let mut request = viewer
        .http()
        .post(format!("{}{path}", viewer.base))
        .header("content-type", "application/json")
        .body(body.to_owned());
    request = match auth {
        Auth::Bearer(t) => request.bearer_auth(t),
        Auth::Cookie(t) => request.header("cookie", format!("oprun_token={t}")),
        Auth::None => request,
    };
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `(status, outcome)` of run `id`.
async fn state_of(pool: &PgPool, id: i64) -> (String, String) {
    sqlx::query_as("SELECT status, outcome FROM operation_runs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The recorded actions: `(run_id, action, actor_name, via, result)`, oldest first.
async fn recorded(pool: &PgPool) -> Vec<(i64, String, Option<String>, String, String)> {
    sqlx::query_as(
        "SELECT run_id, action, actor_name, via, result FROM operation_run_actions ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn each_verb_over_http_answers_the_action_result_and_records_the_tokens_sub(pool: PgPool) {
    seed_scopes(&pool).await;
    let run = |state| insert_run(&pool, 1, Some(10), "policy.sync", state, 5, json!({}));
    let queued = run(("queued", "pending")).await;
    let running = run(("running", "pending")).await;
    let failed = run(("completed", "failed")).await;
    let succeeded = run(("completed", "succeeded")).await;
    let viewer = Viewer::spawn(pool.clone()).await;
    let token = operator_token(&viewer, Some(vec![10]), None);
    let act = |id: i64, verb: &'static str, body: &'static str| {
        let (viewer, token) = (&viewer, token.clone());
        async move {
            let path = format!("/v1/runs/{id}/{verb}");
            post(viewer, &path, Auth::Bearer(&token), body).await
        }
    };

    // Cancel: a queued run completes at once; a running one is asked to stop, once.
    let (status, body) = act(queued, "cancel", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"run_id": queued, "action": "cancel", "result": "done"})
    );
    assert_eq!(
        state_of(&pool, queued).await,
        ("completed".into(), "cancelled".into())
    );
    let (_, body) = act(running, "cancel", r#"{"reason": "stuck"}"#).await;
    assert_eq!(body["result"], "requested", "{body}");
    let (_, body) = act(running, "cancel", "{}").await;
    assert_eq!(body["result"], "unchanged", "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("already requested"));

    // Fail needs a reason, which becomes the failure's message.
    let (status, body) = act(running, "fail", "").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_parameter")
    );
    assert_eq!(state_of(&pool, running).await.0, "running");
    let (_, body) = act(running, "fail", r#"{"reason": "executor gone"}"#).await;
    assert_eq!(body["result"], "done", "{body}");
    let failure: Value = sqlx::query_scalar(
        "SELECT failure_summary -> -1 FROM operation_runs WHERE id = $1 AND outcome = 'failed'",
    )
    .bind(running)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (&failure["code"], &failure["message"]),
        (&json!("run.failed_by_operator"), &json!("executor gone"))
    );
    let (_, body) = act(running, "fail", r#"{"reason": "again"}"#).await;
    assert_eq!(body["result"], "unchanged", "{body}");

    // Retry: a failed run runs again and links back; a succeeded one is refused.
    let (status, body) = act(failed, "retry", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["result"], &body["deduplicated"]),
        (&json!("done"), &json!(false))
    );
    let retry = body["new_run_id"].as_i64().unwrap();
    let retry_of: Value =
        sqlx::query_scalar("SELECT context -> 'retry_of' FROM operation_runs WHERE id = $1")
            .bind(retry)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(retry_of, json!(failed));
    let (status, body) = act(succeeded, "retry", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"], "refused", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("succeeded"),
        "{body}"
    );

    // Every action is on the record, by the token's bearer, from the API.
    let actions = recorded(&pool).await;
    let by_result: Vec<(i64, &str, &str)> = actions
        .iter()
        .map(|(run, action, _, _, result)| (*run, action.as_str(), result.as_str()))
        .collect();
    assert_eq!(
        by_result,
        vec![
            (queued, "cancel", "done"),
            (running, "cancel", "requested"),
            (running, "cancel", "unchanged"),
            (running, "fail", "done"),
            (running, "fail", "unchanged"),
            (failed, "retry", "done"),
            (succeeded, "retry", "refused"),
        ]
    );
    assert!(actions
        .iter()
        .all(|(_, _, who, via, _)| who.as_deref() == Some("ada") && via == "api"));
}

/// POSTs `body` to `path` with `token`'s bearer and `Idempotency-Key: key`.
async fn post_keyed(
    viewer: &Viewer,
    path: &str,
    token: &str,
    key: &str,
    body: &str,
) -> (StatusCode, Value) {
    let response = viewer
        .http()
        .post(format!("{}{path}", viewer.base))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[sqlx::test]
async fn a_request_sent_again_with_its_idempotency_key_gets_the_first_answer_and_acts_once(
    pool: PgPool,
) {
    seed_scopes(&pool).await;
    let run = |state| insert_run(&pool, 1, Some(10), "policy.sync", state, 5, json!({}));
    let failed = run(("completed", "failed")).await;
    let running = run(("running", "pending")).await;
    let viewer = Viewer::spawn(pool.clone()).await;
    let token = operator_token(&viewer, Some(vec![10]), None);
    let retry = format!("/v1/runs/{failed}/retry");

    // A retry sent again (its answer lost) names the same new run: one retry, one record.
    let (status, first) = post_keyed(&viewer, &retry, &token, "k-retry-1", "").await;
    assert_eq!((status, &first["result"]), (StatusCode::OK, &json!("done")));
    let (status, again) = post_keyed(&viewer, &retry, &token, "k-retry-1", "").await;
    assert_eq!((status, &again), (StatusCode::OK, &first));
    let retries: i64 =
        sqlx::query_scalar("SELECT count(*) FROM operation_runs WHERE context ->> 'retry_of' = $1")
            .bind(failed.to_string())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(retries, 1);

    // Fails sent at once under one key: all get the first answer (`done`, where a second fail
    // without the key says `unchanged`), one record.
    let path = format!("/v1/runs/{running}/fail");
    let body = r#"{"reason": "executor gone"}"#;
    let answers = futures_util::future::join_all(
        (0..4).map(|_| post_keyed(&viewer, &path, &token, "k-fail-1", body)),
    )
    .await;
    for (status, answer) in &answers {
        assert_eq!(
            (*status, answer),
            (
                StatusCode::OK,
                &json!({"run_id": running, "action": "fail", "result": "done"})
            )
        );
    }
    let records: Vec<(i64, String, Option<String>)> =
        sqlx::query_as("SELECT run_id, action, command_id FROM operation_run_actions ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        records,
        vec![
            (failed, "retry".into(), Some("api:1:k-retry-1".into())),
            (running, "fail".into(), Some("api:1:k-fail-1".into())),
        ]
    );

    // The key with another reason, action or run is refused, and does nothing.
    for (path, body) in [
        (path.as_str(), r#"{"reason": "another"}"#),
        (&format!("/v1/runs/{running}/cancel"), body),
        (&format!("/v1/runs/{failed}/fail"), body),
    ] {
        let (status, answer) = post_keyed(&viewer, path, &token, "k-fail-1", body).await;
        assert_eq!(
            (status, error_code(&answer)),
            (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            "{path} {body}"
        );
    }
    // A key that is not 1 to 200 visible ASCII characters is refused before anything is done.
    for key in ["two words".to_owned(), "k".repeat(201)] {
        let (status, answer) = post_keyed(&viewer, &retry, &token, &key, "").await;
        assert_eq!(
            (status, error_code(&answer)),
            (StatusCode::BAD_REQUEST, "invalid_parameter"),
            "{key}"
        );
    }
    assert_eq!(recorded(&pool).await.len(), 2);
}

#[sqlx::test]
async fn acting_takes_an_operate_bearer_token_and_stays_inside_its_scope(pool: PgPool) {
    seed_scopes(&pool).await;
    let queued = ("queued", "pending");
    let ten = insert_run(&pool, 1, Some(10), "policy.sync", queued, 5, json!({})).await;
    let also_ten = insert_run(&pool, 1, Some(10), "policy.sync", queued, 4, json!({})).await;
    let eleven = insert_run(&pool, 1, Some(11), "policy.sync", queued, 3, json!({})).await;
    let viewer = Viewer::spawn(pool.clone()).await;
    let cancel = |id: i64| format!("/v1/runs/{id}/cancel");

    // A token that may only read is forbidden, whatever the run (before the run is looked up,
    // so it learns nothing of runs outside its scope either).
    let reader = viewer.token(1, Some(vec![10]));
    for id in [ten, eleven, 999_999] {
        let (status, body) = post(&viewer, &cancel(id), Auth::Bearer(&reader), "").await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{body}"
        );
    }
    // The sign-in cookie alone, even of an operate token, changes nothing; nor does no token.
    let operator = operator_token(&viewer, Some(vec![10]), None);
    let (status, body) = post(&viewer, &cancel(ten), Auth::Cookie(&operator), "").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, "missing_token"),
        "{body}"
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("cookie alone"));
    let (status, _) = post(&viewer, &cancel(ten), Auth::None, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Another tenant's run, another workspace's, or none: not found, alike.
    for (token, id) in [
        (operator.clone(), eleven),
        (operator.clone(), 999_999),
        (viewer.operator_token(2, None, None), ten),
    ] {
        let (status, body) = post(&viewer, &cancel(id), Auth::Bearer(&token), "").await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{id}: {body}"
        );
    }
    // Bounds of the body: at most 8 KiB, a JSON object of `reason` alone.
    let big = format!(r#"{{"reason": "{}"}}"#, "x".repeat(9 * 1024));
    let (status, body) = post(&viewer, &cancel(ten), Auth::Bearer(&operator), &big).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );
    for bad in [
        r#"{"reason": "a", "force": true}"#,
        "not json",
        r#"{"reason": 7}"#,
    ] {
        let (status, body) = post(&viewer, &cancel(ten), Auth::Bearer(&operator), bad).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::BAD_REQUEST, "invalid_parameter"),
            "{bad}"
        );
    }
    let long = format!(r#"{{"reason": "{}"}}"#, "x".repeat(1001));
    let (status, _) = post(&viewer, &cancel(ten), Auth::Bearer(&operator), &long).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Nothing above changed a run or left a record.
    for id in [ten, also_ten, eleven] {
        assert_eq!(state_of(&pool, id).await.0, "queued", "{id}");
    }
    assert!(recorded(&pool).await.is_empty());
    // A GET of an action route is no action.
    let (status, _, _) = viewer.get(&cancel(ten), Some(&operator)).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // An operate token for one run acts on that run and on no other of its tenant.
    let one = operator_token(&viewer, Some(vec![10]), Some(ten));
    let (status, _) = post(&viewer, &cancel(also_ten), Auth::Bearer(&one), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = post(&viewer, &cancel(ten), Auth::Bearer(&one), "").await;
    assert_eq!((status, &body["result"]), (StatusCode::OK, &json!("done")));
    assert_eq!(state_of(&pool, also_ten).await.0, "queued");
    assert_eq!(state_of(&pool, eleven).await.0, "queued");
}

/// GETs the page `path` as a browser signed in with `token`.
async fn page(viewer: &Viewer, path: &str, token: &str) -> (StatusCode, String) {
    let (status, _, html) = viewer
        .get_with_cookie(path, &format!("oprun_token={token}"))
        .await;
    (status, html)
}

#[sqlx::test]
async fn the_run_pages_buttons_act_only_with_the_forms_proof_and_show_the_result(pool: PgPool) {
    seed_scopes(&pool).await;
    let queued = ("queued", "pending");
    let run = insert_run(&pool, 1, Some(10), "policy.sync", queued, 5, json!({})).await;
    let done = ("completed", "succeeded");
    let finished = insert_run(&pool, 1, Some(10), "policy.sync", done, 5, json!({})).await;
    let viewer = Viewer::spawn(pool.clone()).await;
    let operator = operator_token(&viewer, Some(vec![10]), None);
    let reader = viewer.token(1, Some(vec![10]));

    // A read token sees no buttons, on the run page or the list.
    let (_, html) = page(&viewer, &format!("/runs/{run}"), &reader).await;
    assert!(!html.contains("id=\"act\""), "{html}");
    assert!(!html.contains("action=\"/runs/"), "{html}");
    let (_, html) = page(&viewer, "/runs", &reader).await;
    assert!(!html.contains("id=\"bulk\""), "{html}");
    // An operate token sees the verbs that apply to the run's state.
    let (_, html) = page(&viewer, &format!("/runs/{run}"), &operator).await;
    for form in ["id=\"act-cancel\"", "id=\"act-fail\""] {
        assert!(html.contains(form), "{form}: {html}");
    }
    assert!(!html.contains("id=\"act-retry\""), "{html}");
    let proof = hidden(&html, "proof");
    let (_, html) = page(&viewer, &format!("/runs/{finished}"), &operator).await;
    assert!(html.contains("Nothing to do"), "{html}");
    let (_, html) = page(&viewer, "/runs", &operator).await;
    assert!(html.contains("id=\"bulk\""), "{html}");

    // The cookie without the form's proof, with a wrong one, or with another sign-in's: 403,
    // and nothing changes. A read token's own proof does not let it act either.
    let cancel = format!("/runs/{run}/cancel");
    let others = operator_token(&viewer, Some(vec![10, 11]), None);
    let foreign_proof = hidden(
        &page(&viewer, &format!("/runs/{run}"), &others).await.1,
        "proof",
    );
    for fields in [
        vec![],
        vec![("proof", "00")],
        vec![("proof", foreign_proof.as_str())],
    ] {
        let (status, _, html) = viewer.post_form(&cancel, &operator, &fields).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{fields:?}: {html}");
    }
    let (status, _, _) = viewer
        .post_form(
            &cancel,
            &reader,
            &[("proof", viewer.action_proof(&reader).as_str())],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(state_of(&pool, run).await.0, "queued");
    assert!(recorded(&pool).await.is_empty());

    // With its proof: done, and back to the run page, which says so.
    let (status, location, _) = viewer
        .post_form(
            &cancel,
            &operator,
            &[("proof", &proof), ("reason", "not needed")],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let location = location.unwrap();
    assert!(
        location.starts_with(&format!("/runs/{run}?acted=")),
        "{location}"
    );
    assert_eq!(
        state_of(&pool, run).await,
        ("completed".into(), "cancelled".into())
    );
    let (_, html) = page(&viewer, &location, &operator).await;
    assert!(html.contains("id=\"action-result\""), "{html}");
    assert!(html.contains("Cancel: done"), "{html}");
    let actions = &html[html.find("id=\"run-actions\"").unwrap()..];
    assert!(actions.contains("ada"), "{actions}");
    assert!(actions.contains("not needed"), "{actions}");
    assert_eq!(
        recorded(&pool).await,
        vec![(
            run,
            "cancel".into(),
            Some("ada".into()),
            "page".into(),
            "done".into()
        )]
    );
    // The same form once more: unchanged, said so.
    let (_, location, _) = viewer
        .post_form(&cancel, &operator, &[("proof", &proof)])
        .await;
    let (_, html) = page(&viewer, &location.unwrap(), &operator).await;
    assert!(html.contains("Cancel: unchanged"), "{html}");
    // Another tenant's run is not found; a fail without a reason is refused.
    let eleven = insert_run(&pool, 1, Some(11), "policy.sync", queued, 5, json!({})).await;
    let (status, _, _) = viewer
        .post_form(
            &format!("/runs/{eleven}/cancel"),
            &operator,
            &[("proof", &proof)],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let also = insert_run(&pool, 1, Some(10), "policy.sync", queued, 5, json!({})).await;
    let (status, _, _) = viewer
        .post_form(
            &format!("/runs/{also}/fail"),
            &operator,
            &[("proof", &proof), ("reason", " ")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(state_of(&pool, eleven).await.0, "queued");
    assert_eq!(state_of(&pool, also).await.0, "queued");
}

#[sqlx::test]
async fn a_bulk_action_counts_its_runs_then_acts_once_on_each_run_of_the_filter_in_scope(
    pool: PgPool,
) {
    seed_scopes(&pool).await;
    let failed = ("completed", "failed");
    let mut ours = Vec::new();
    for minutes in [30, 20] {
        ours.push(
            insert_run(
                &pool,
                1,
                Some(10),
                "policy.sync",
                failed,
                minutes,
                json!({}),
            )
            .await,
        );
    }
    let theirs = insert_run(&pool, 1, Some(11), "policy.sync", failed, 10, json!({})).await;
    let ok = ("completed", "succeeded");
    insert_run(&pool, 1, Some(10), "policy.sync", ok, 10, json!({})).await;
    let viewer = Viewer::spawn(pool.clone()).await;
    let operator = operator_token(&viewer, Some(vec![10]), None);

    // The confirmation counts the runs of the filter in the token's scope only.
    let (status, html) = page(&viewer, "/runs/bulk?verb=retry&outcome=failed", &operator).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("2 runs match."), "{html}");
    assert!(html.contains("Retry 2 runs"), "{html}");
    let (proof, bulk_id) = (hidden(&html, "proof"), hidden(&html, "bulk_id"));
    assert!(bulk_id.starts_with("page-"), "{bulk_id}");
    let form = |proof: &str| {
        vec![
            ("proof".to_owned(), proof.to_owned()),
            ("verb".to_owned(), "retry".to_owned()),
            ("bulk_id".to_owned(), bulk_id.clone()),
            ("outcome".to_owned(), "failed".to_owned()),
        ]
    };
    let send = |fields: Vec<(String, String)>| {
        let (viewer, operator) = (&viewer, operator.clone());
        async move {
            let fields: Vec<(&str, &str)> = fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            viewer.post_form("/runs/bulk", &operator, &fields).await
        }
    };
    let retries = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM operation_runs WHERE context ? 'retry_of'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };

    // Without the proof: nothing.
    let (status, _, _) = send(form("")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(retries().await, 0);
    // With it: each run of the filter once, under the form's bulk id, none of another tenant.
    let (status, _, html) = send(form(&proof)).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("2 runs: 2 done"), "{html}");
    assert_eq!(retries().await, 2);
    let bulk: Vec<(i64, Option<String>)> =
        sqlx::query_as("SELECT run_id, bulk_id FROM operation_run_actions ORDER BY run_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        bulk,
        ours.iter()
            .map(|r| (*r, Some(bulk_id.clone())))
            .collect::<Vec<_>>()
    );
    // The same form again (a reload, a second click) does nothing twice.
    let (_, _, html) = send(form(&proof)).await;
    assert!(html.contains("2 runs: 2 unchanged"), "{html}");
    assert!(html.contains("already done by bulk action"), "{html}");
    assert_eq!(retries().await, 2);
    let untouched: i64 =
        sqlx::query_scalar("SELECT count(*) FROM operation_run_actions WHERE run_id = $1")
            .bind(theirs)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(untouched, 0);

    // Past the cap the confirmation says how many it acts on.
    sqlx::query(
        "INSERT INTO operation_runs (workspace_id, tenant_id, type, status, outcome, run_identity_hash)
         SELECT 1, 10, 'policy.sync', 'queued', 'pending', md5(g::text) || md5(g::text)
         FROM generate_series(1, 1001) AS g",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (_, html) = page(&viewer, "/runs/bulk?verb=cancel&status=queued", &operator).await;
    assert!(
        html.contains("More than 1000 runs match: Cancel acts on the newest 1000"),
        "{html}"
    );
    // A read token gets no confirmation.
    let (status, _) = page(
        &viewer,
        "/runs/bulk?verb=cancel",
        &viewer.token(1, Some(vec![10])),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
