//! The viewer's dead-letters page over real HTTP against the real database and broker: shown
//! only to `operate` tokens of a whole workspace (everyone else gets the unknown route's page),
//! grouped by code, each letter shown with its body escaped and its secret headers redacted;
//! its forms act only with the sign-in's proof, a discard (per letter or per code) is recorded
//! with the token's `sub` before the letter goes, and a replay republishes the letter.

use chrono::{Duration as Age, Utc};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{dispatch, seed_scopes, wait_until, TestApp};
use crate::viewer_api::{insert_run, Viewer};
use crate::viewer_tokens::hidden;

/// Stores a letter of `code` and `body` straight into the table (as `oprun dlq` would have
/// taken it), first refused `age` ago, with `headers`; its id.
async fn stored_letter(
    pool: &PgPool,
    code: &str,
    kind: Option<&str>,
    body: &[u8],
    age: Age,
    headers: FieldTable,
) -> i64 {
    let properties = serde_json::to_vec(
        &BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(headers),
    )
    .unwrap();
    let at = Utc::now() - age;
    sqlx::query_scalar(
        "INSERT INTO dead_letters (code, message, kind, command_id, tenant_id, routing_key,
             first_failed_at, failed_at, replays, delivery_count, body, properties)
         VALUES ($1, 'refused', $2, $3, 10, 'dispatch', $4, $4, 0, 0, $5, $6) RETURNING id",
    )
    .bind(code)
    .bind(kind)
    .bind(format!("cmd-{}", uuid::Uuid::new_v4().simple()))
    .bind(at)
    .bind(body)
    .bind(properties)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A letter of `code` (kind dispatch) with a small JSON body and no headers.
async fn letter(pool: &PgPool, code: &str, age: Age) -> i64 {
    stored_letter(
        pool,
        code,
        Some("dispatch"),
        br#"{"kind": "dispatch"}"#,
        age,
        FieldTable::default(),
    )
    .await
}

/// The ids of the stored letters, in order.
async fn stored_ids(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM dead_letters ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The discard records: `(letter_id, code, discarded_by)`, in letter order.
async fn discards(pool: &PgPool) -> Vec<(i64, String, Option<String>)> {
    sqlx::query_as(
        "SELECT letter_id, code, discarded_by FROM dead_letter_discards ORDER BY letter_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// GETs `path` as a browser signed in with `token`.
async fn page(viewer: &Viewer, path: &str, token: &str) -> (StatusCode, String) {
    let (status, _, html) = viewer
        .get_with_cookie(path, &format!("oprun_token={token}"))
        .await;
    (status, html)
}

/// POSTs the form `fields` to `path` as a browser signed in with `token`: status and body.
async fn post_form(
    viewer: &Viewer,
    path: &str,
    token: &str,
    fields: &[(&str, &str)],
) -> (StatusCode, String) {
    let (status, _, html) = viewer.post_form(path, token, fields).await;
    (status, html)
}

/// The table row (`<tr …>…</tr>`) of `html` that carries `attr`.
fn row<'a>(html: &'a str, attr: &str) -> &'a str {
    let start = html
        .find(attr)
        .unwrap_or_else(|| panic!("{attr} in {html}"));
    let end = start + html[start..].find("</tr>").unwrap();
    &html[start..end]
}

#[sqlx::test]
async fn an_operate_token_of_the_whole_workspace_sees_the_letters_grouped_by_code_and_no_one_else_does(
    pool: PgPool,
) {
    seed_scopes(&pool).await;
    for _ in 0..3 {
        letter(&pool, "unknown_type", Age::minutes(5)).await;
    }
    let old = letter(&pool, "run_not_found", Age::days(2)).await;
    stored_letter(
        &pool,
        "run_not_found",
        Some("update_run"),
        b"{}",
        Age::hours(1),
        FieldTable::default(),
    )
    .await;
    let run = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        ("running", "pending"),
        5,
        json!({}),
    )
    .await;
    let viewer = Viewer::spawn(pool.clone()).await;
    let operator = viewer.operator_token(1, None, None);

    let (status, html) = page(&viewer, "/dead-letters", &operator).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("5 dead letters"), "{html}");
    let unknown_type = row(&html, "data-code=\"unknown_type\"");
    assert!(unknown_type.contains(">3<"), "{unknown_type}");
    assert!(unknown_type.contains("dispatch"), "{unknown_type}");
    let not_found = row(&html, "data-code=\"run_not_found\"");
    assert!(not_found.contains(">2<"), "{not_found}");
    assert!(
        not_found.contains("dispatch") && not_found.contains("update_run"),
        "the group's kinds: {not_found}"
    );
    assert!(not_found.contains("2 d ago"), "its oldest: {not_found}");
    for verb in ["replay", "discard"] {
        assert!(
            unknown_type.contains(&format!("name=\"verb\" value=\"{verb}\"")),
            "{unknown_type}"
        );
    }
    // The letters, newest first, each with its own forms; "N of TOTAL".
    let letters = &html[html.find("id=\"dlq-letters\"").unwrap()..];
    assert!(
        letters.find("data-letter=\"5\"").unwrap() < letters.find("data-letter=\"1\"").unwrap()
    );
    assert!(html.contains(&format!("action=\"/dead-letters/{old}/discard\"")));
    assert!(html.contains("5 of 5 dead letters"), "{html}");
    // One group's letters.
    let (_, html) = page(&viewer, "/dead-letters?code=run_not_found", &operator).await;
    assert!(html.contains("2 of 2 dead letters"), "{html}");
    // The same summary as JSON, for the same tokens.
    let (status, _, json) = viewer.get("/v1/dead-letters", Some(&operator)).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["total"], 5, "{json}");
    assert_eq!(
        (&json["by_code"][0]["code"], &json["by_code"][0]["letters"]),
        (&json!("unknown_type"), &json!(3)),
        "{json}"
    );
    assert_eq!(
        json["by_code"][1]["kinds"],
        json!(["dispatch", "update_run"])
    );
    // The list page's header links to it, for this token only.
    let (_, runs) = page(&viewer, "/runs", &operator).await;
    assert!(runs.contains("href=\"/dead-letters\""), "{runs}");

    // Anyone else: exactly the page of an unknown route, and no link to it.
    let (unknown_status, unknown) = page(&viewer, "/no-such-page", &operator).await;
    assert_eq!(unknown_status, StatusCode::NOT_FOUND);
    let others = [
        ("a read token of the workspace", viewer.token(1, None)),
        (
            "an operate token of one tenant",
            viewer.operator_token(1, Some(vec![10]), None),
        ),
        (
            "an operate token of one run",
            viewer.operator_token(1, None, Some(run)),
        ),
        ("no sign-in", String::new()),
    ];
    for (who, token) in &others {
        for path in [
            "/dead-letters".to_owned(),
            format!("/dead-letters/{old}"),
            "/dead-letters/by-code?code=unknown_type&verb=discard".to_owned(),
        ] {
            let (status, html) = page(&viewer, &path, token).await;
            assert_eq!(
                (status, &html),
                (StatusCode::NOT_FOUND, &unknown),
                "{who}: {path}"
            );
        }
        // Nor does a method the route does not take tell them it exists.
        let deleted = viewer
            .http()
            .delete(format!("{}/dead-letters/{old}", viewer.base))
            .header("cookie", format!("oprun_token={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), StatusCode::NOT_FOUND, "{who}");
        assert_eq!(deleted.text().await.unwrap(), unknown, "{who}");
        let (status, _, json) = viewer.get("/v1/dead-letters", Some(token)).await;
        let unknown_json = viewer.get("/v1/no-such-route", Some(token)).await.2;
        assert_eq!(
            (status, &json),
            (StatusCode::NOT_FOUND, &unknown_json),
            "{who}"
        );
        let proof = viewer.action_proof(token);
        let (status, html) = post_form(
            &viewer,
            &format!("/dead-letters/{old}/discard"),
            token,
            &[("proof", &proof)],
        )
        .await;
        assert_eq!((status, &html), (StatusCode::NOT_FOUND, &unknown), "{who}");
        if !token.is_empty() {
            let (_, runs) = page(&viewer, "/runs", token).await;
            assert!(!runs.contains("/dead-letters"), "{who}: {runs}");
        }
    }
    assert_eq!(stored_ids(&pool).await.len(), 5, "nobody else discarded");
    assert!(discards(&pool).await.is_empty());
}

#[sqlx::test]
async fn a_discard_per_letter_or_per_code_takes_the_forms_proof_and_records_who_before_the_letter_goes(
    pool: PgPool,
) {
    let one = letter(&pool, "invalid_json", Age::minutes(1)).await;
    let keep = letter(&pool, "invalid_json", Age::minutes(1)).await;
    let a = letter(&pool, "unknown_type", Age::minutes(1)).await;
    let b = letter(&pool, "unknown_type", Age::minutes(1)).await;
    let viewer = Viewer::spawn(pool.clone()).await;
    let operator = viewer.operator_token(1, None, None);
    let (_, html) = page(&viewer, &format!("/dead-letters/{one}"), &operator).await;
    let proof = hidden(&html, "proof");
    let discard_one = format!("/dead-letters/{one}/discard");

    // Without the proof, with a wrong one, or with another sign-in's: 403, nothing goes.
    let other = viewer.operator_token(2, None, None);
    let foreign = viewer.action_proof(&other);
    for fields in [
        vec![],
        vec![("proof", "00")],
        vec![("proof", foreign.as_str())],
    ] {
        let (status, html) = post_form(&viewer, &discard_one, &operator, &fields).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{fields:?}: {html}");
    }
    assert_eq!(stored_ids(&pool).await, vec![one, keep, a, b]);

    // One letter: recorded with the token's sub, then gone.
    let (status, html) = post_form(&viewer, &discard_one, &operator, &[("proof", &proof)]).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("1 letter discarded"), "{html}");
    assert_eq!(
        discards(&pool).await,
        vec![(one, "invalid_json".into(), Some("ada".into()))]
    );
    assert_eq!(stored_ids(&pool).await, vec![keep, a, b]);

    // A code: the confirmation counts; a letter stored after it is left alone.
    let (status, html) = page(
        &viewer,
        "/dead-letters/by-code?code=unknown_type&verb=discard",
        &operator,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("2 letters of this code"), "{html}");
    assert!(html.contains("Discard 2 letters"), "{html}");
    let (proof, upto) = (hidden(&html, "proof"), hidden(&html, "upto"));
    let later = letter(&pool, "unknown_type", Age::minutes(0)).await;
    let group = |proof: String| {
        let (viewer, operator, upto) = (&viewer, &operator, upto.clone());
        async move {
            let fields = [
                ("proof", proof.as_str()),
                ("verb", "discard"),
                ("code", "unknown_type"),
                ("upto", upto.as_str()),
            ];
            post_form(viewer, "/dead-letters/by-code", operator, &fields).await
        }
    };
    let (status, _) = group(String::new()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(stored_ids(&pool).await, vec![keep, a, b, later]);
    let (status, html) = group(proof).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("2 letters discarded"), "{html}");
    assert_eq!(stored_ids(&pool).await, vec![keep, later]);
    assert_eq!(
        discards(&pool).await,
        vec![
            (one, "invalid_json".into(), Some("ada".into())),
            (a, "unknown_type".into(), Some("ada".into())),
            (b, "unknown_type".into(), Some("ada".into())),
        ]
    );
}

#[sqlx::test]
async fn a_letters_page_shows_its_body_as_escaped_text_and_its_secret_headers_redacted(
    pool: PgPool,
) {
    let mut headers = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    headers.insert("x-oprun-error-code".into(), text("invalid_command"));
    headers.insert("authorization".into(), text("Bearer abc.def.ghi"));
    headers.insert(
        "x-source".into(),
        text("amqp://svc:hunter2@broker.example/"),
    );
    let body = json!({"kind": "dispatch", "note": "<script>alert(1)</script>"});
    let id = stored_letter(
        &pool,
        "invalid_command",
        Some("dispatch"),
        &serde_json::to_vec(&body).unwrap(),
        Age::minutes(1),
        headers,
    )
    .await;
    let garbage = stored_letter(
        &pool,
        "invalid_json",
        None,
        b"<img src=x onerror=alert(2)>",
        Age::minutes(1),
        FieldTable::default(),
    )
    .await;
    let viewer = Viewer::spawn(pool.clone()).await;
    let operator = viewer.operator_token(1, None, None);

    let (status, html) = page(&viewer, &format!("/dead-letters/{id}"), &operator).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "the body as text: {html}"
    );
    assert!(
        html.contains("\n  &quot;kind&quot;: &quot;dispatch&quot;"),
        "pretty: {html}"
    );
    assert!(!html.contains("abc.def.ghi"), "{html}");
    assert!(!html.contains("hunter2"), "{html}");
    assert!(html.contains("[REDACTED]"), "{html}");
    assert!(html.contains("invalid_command"), "{html}");

    let (_, html) = page(&viewer, &format!("/dead-letters/{garbage}"), &operator).await;
    assert!(!html.contains("<img src=x"), "{html}");
    assert!(
        html.contains("&lt;img src=x onerror=alert(2)&gt;"),
        "{html}"
    );
    let (status, _) = page(&viewer, "/dead-letters/999999", &operator).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[sqlx::test]
async fn replaying_a_letter_from_the_page_republishes_it_and_a_code_group_replays_each(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool.clone()).await;
    let dlq = app.topology.dead_letter_queue();
    for policy in [1, 2, 3] {
        // Workspace 99 does not exist: each is refused `unknown_workspace`.
        app.publish(&dispatch(
            "policy.sync",
            99,
            None,
            json!({"policy_id": policy}),
        ))
        .await;
    }
    wait_until("the dead letters", || async {
        (app.queue_depth(&dlq).await == 3).then_some(())
    })
    .await;
    let viewer = Viewer::spawn_for_dead_letters(pool.clone(), app.topology.clone()).await;
    let operator = viewer.operator_token(1, None, None);

    // The page takes what waits in the queue first.
    let (status, html) = page(&viewer, "/dead-letters", &operator).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(!html.contains("dlq-queue-unread"), "{html}");
    assert!(html.contains("3 of 3 dead letters"), "{html}");
    assert_eq!(app.queue_depth(&dlq).await, 0);
    let proof = hidden(&html, "proof");
    let ids = stored_ids(&pool).await;

    // One letter: republished (and refused again, so back in the queue once more, replayed
    // once), removed from the table once the broker confirmed it.
    let (status, html) = post_form(
        &viewer,
        &format!("/dead-letters/{}/replay", ids[0]),
        &operator,
        &[("proof", &proof)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("1 letter replayed"), "{html}");
    assert_eq!(stored_ids(&pool).await, ids[1..].to_vec());
    wait_until("the replay's own dead letter", || async {
        (app.queue_depth(&dlq).await == 1).then_some(())
    })
    .await;

    // The group (the page taking the new letter from the queue first): every letter of the
    // code counted, each replayed.
    let (_, html) = page(&viewer, "/dead-letters", &operator).await;
    assert!(html.contains("3 of 3 dead letters"), "{html}");
    let (_, html) = page(
        &viewer,
        "/dead-letters/by-code?code=unknown_workspace&verb=replay",
        &operator,
    )
    .await;
    assert!(html.contains("3 letters of this code"), "{html}");
    let upto = hidden(&html, "upto");
    let (status, html) = post_form(
        &viewer,
        "/dead-letters/by-code",
        &operator,
        &[
            ("proof", proof.as_str()),
            ("verb", "replay"),
            ("code", "unknown_workspace"),
            ("upto", upto.as_str()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("3 letters replayed"), "{html}");
    assert!(stored_ids(&pool).await.is_empty());
    wait_until("the replays' own dead letters", || async {
        (app.queue_depth(&dlq).await == 3).then_some(())
    })
    .await;
    let (_, html) = page(&viewer, "/dead-letters", &operator).await;
    assert!(html.contains("3 of 3 dead letters"), "{html}");
    let replays: Vec<i64> = sqlx::query_scalar("SELECT replays FROM dead_letters ORDER BY replays")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(replays, vec![1, 1, 2], "each replay counted on its letter");
    app.shutdown().await;
}

#[sqlx::test]
async fn a_letter_older_than_the_inbox_retention_is_refused_by_the_pages_replay(pool: PgPool) {
    let old = letter(&pool, "unknown_workspace", Age::days(3)).await;
    let viewer = Viewer::spawn(pool.clone()).await;
    let operator = viewer.operator_token(1, None, None);
    let (_, html) = page(&viewer, &format!("/dead-letters/{old}"), &operator).await;
    let proof = hidden(&html, "proof");
    let (status, html) = post_form(
        &viewer,
        &format!("/dead-letters/{old}/replay"),
        &operator,
        &[("proof", &proof)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("0 letters replayed, 1 refused"), "{html}");
    assert!(html.contains("longer than the inbox retention"), "{html}");
    assert_eq!(stored_ids(&pool).await, vec![old], "{html}");
}
