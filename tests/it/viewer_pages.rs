//! The pages as people read them, over real HTTP: the sign-in page speaks to whoever followed an
//! expired or broken link (and, apart, to operators); the run page names the workspace and the
//! tenant, groups failures by code with the overflow counted, shows a banner once a running run
//! has been idle longer than its type usually takes, and escapes every producer-controlled value;
//! the list's summary line counts only what the token may see; the run page lists the runs of
//! its identity in the token's scope and the dispatches deduplicated onto each.

use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{dispatch, dispatch_with_reply, seed_scopes, TestApp};
use crate::viewer_api::{insert_run, Viewer, SECRET};

/// A token of the viewer's secret that expired an hour ago.
fn expired_token() -> String {
    let exp = chrono::Utc::now().timestamp() - 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"workspace_id": 1, "exp": exp, "sub": "ada"}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[sqlx::test]
async fn an_expired_link_tells_the_reader_to_open_the_run_again_and_operators_how_to_mint_one(
    pool: PgPool,
) {
    seed_scopes(&pool).await;
    let id = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        ("running", "pending"),
        1,
        json!({}),
    )
    .await;
    let viewer = Viewer::spawn(pool).await;
    let expired = expired_token();

    // Followed as a link: the reader is told what to do, operators apart.
    let (status, _, html) = viewer
        .get(&format!("/runs/{id}?token={expired}"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(html.contains("This link has expired"), "{html}");
    assert!(
        html.contains("Open the run again from the platform"),
        "{html}"
    );
    let operators = &html[html
        .find("id=\"for-operators\"")
        .expect("an operators' part")..];
    assert!(
        operators.contains("oprun token --workspace ID"),
        "{operators}"
    );
    assert!(!html[..html.find("id=\"for-operators\"").unwrap()].contains("oprun token"));

    // A broken link: not "expired", still the way back.
    let (status, _, html) = viewer
        .get(&format!("/runs/{id}?token=not-a-token"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(html.contains("This link does not work"), "{html}");
    assert!(
        html.contains("Open the run again from the platform"),
        "{html}"
    );

    // A sign-in cookie that has run out since: said so, in the reader's words.
    let (status, _, html) = viewer
        .get_with_cookie(&format!("/runs/{id}"), &format!("oprun_token={expired}"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(html.contains("Your sign-in has expired"), "{html}");

    // The API's refusal stays its JSON error.
    let (status, headers, body) = viewer.get(&format!("/v1/runs/{id}"), Some(&expired)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert!(body.contains("expired_token"), "{body}");
}

#[sqlx::test]
async fn every_producer_controlled_value_is_escaped_on_the_run_page_and_the_list(pool: PgPool) {
    seed_scopes(&pool).await;
    let hostile = "<script>alert(1)</script>";
    let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;";
    sqlx::query("UPDATE tenants SET name = $1 WHERE id = 10")
        .bind(format!("tenant {hostile}"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE workspaces SET name = $1 WHERE id = 1")
        .bind(format!("workspace {hostile}"))
        .execute(&pool)
        .await
        .unwrap();
    let id = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        ("running", "pending"),
        1,
        json!({"initiator": format!("initiator {hostile}"),
               "context": {"policy_id": hostile, hostile: "value \" onmouseover=\"x"}}),
    )
    .await;
    sqlx::query("UPDATE operation_runs SET failure_summary = $2 WHERE id = $1")
        .bind(id)
        .bind(
            json!([{"code": "graph.denied", "message": format!("message {hostile}"),
                      "item": format!("item {hostile}")}]),
        )
        .execute(&pool)
        .await
        .unwrap();
    let viewer = Viewer::spawn(pool).await;
    let t = viewer.token(1, None);

    let (status, _, page) = viewer.get(&format!("/runs/{id}"), Some(&t)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        !page.contains(hostile),
        "an unescaped value on the run page"
    );
    assert!(
        !page.contains("\" onmouseover"),
        "an attribute broken out of"
    );
    for shown in [
        format!("tenant {escaped}"),
        format!("workspace {escaped}"),
        format!("initiator {escaped}"),
        format!("message {escaped}"),
        format!("item {escaped}"),
        format!("<th scope=\"row\">{escaped}</th>"),
    ] {
        assert!(page.contains(&shown), "{shown} in {page}");
    }
    let (status, _, list) = viewer.get("/runs", Some(&t)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!list.contains(hostile), "an unescaped value on the list");
    assert!(list.contains(&format!("tenant {escaped}")), "{list}");
}

#[sqlx::test]
async fn failures_are_grouped_by_code_counting_the_overflow_beyond_the_stored_entries(
    pool: PgPool,
) {
    seed_scopes(&pool).await;
    let id = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        ("completed", "failed"),
        5,
        json!({}),
    )
    .await;
    let entry = |code: &str, n: i32| json!({"code": code, "message": format!("{code} {n}")});
    sqlx::query(
        "UPDATE operation_runs SET failure_summary = $2, failure_overflow = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(json!([
        entry("a.code", 1),
        entry("a.code", 2),
        entry("b.code", 1)
    ]))
    .bind(json!({"a.code": 50, "c.code": 7}))
    .execute(&pool)
    .await
    .unwrap();
    let viewer = Viewer::spawn(pool).await;
    let t = viewer.token(1, None);

    let (status, _, page) = viewer.get(&format!("/runs/{id}"), Some(&t)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("60 failures (3 stored below, the rest counted by code)"),
        "{page}"
    );
    let by_code = &page[page.find("id=\"failures-by-code\"").unwrap()..];
    let by_code = &by_code[..by_code.find("</table>").unwrap()];
    let rows: Vec<&str> = by_code.split("<tr>").skip(2).collect();
    let expected = [("a.code", 52), ("c.code", 7), ("b.code", 1)];
    assert_eq!(rows.len(), expected.len(), "{by_code}");
    for (row, (code, n)) in rows.iter().zip(expected) {
        assert!(
            row.contains(&format!("<code>{code}</code></td><td>{n}</td>")),
            "{row}"
        );
    }
    // The entries follow, as stored.
    let entries = &page[page.find("id=\"run-failures\"").unwrap()..];
    assert!(entries.contains("<td>a.code 2</td>"), "{entries}");

    // The list says how many and which codes.
    let (_, _, list) = viewer.get("/runs", Some(&t)).await;
    assert!(
        list.contains("60 <span class=\"codes\">a.code, c.code, b.code</span>"),
        "{list}"
    );
}

#[sqlx::test]
async fn a_running_run_idle_past_its_expected_duration_shows_a_banner_and_a_stalled_badge(
    pool: PgPool,
) {
    seed_scopes(&pool).await;
    // A policy sync usually takes about 5 minutes.
    let stuck = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        ("running", "pending"),
        60,
        json!({}),
    )
    .await;
    let moving = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        ("running", "pending"),
        60,
        json!({}),
    )
    .await;
    sqlx::query(
        "UPDATE operation_runs SET started_at = now() - interval '60 minutes',
                updated_at = now() - (CASE WHEN id = $1 THEN interval '14 minutes' ELSE interval '1 minute' END)
         WHERE id IN ($1, $2)",
    )
    .bind(stuck)
    .bind(moving)
    .execute(&pool)
    .await
    .unwrap();
    let viewer = Viewer::spawn(pool).await;
    let t = viewer.token(1, None);

    let (_, _, page) = viewer.get(&format!("/runs/{stuck}"), Some(&t)).await;
    assert!(
        page.contains("No progress for 14 min (usually takes about 5 min)"),
        "{page}"
    );
    let (_, _, page) = viewer.get(&format!("/runs/{moving}"), Some(&t)).await;
    assert!(
        page.contains("id=\"stalled\" class=\"banner\" role=\"status\" hidden"),
        "{page}"
    );
    assert!(!page.contains("No progress for"), "{page}");

    let (_, _, list) = viewer.get("/runs", Some(&t)).await;
    let row = |id: i64| {
        let start = list.find(&format!("data-active-run=\"{id}\"")).unwrap();
        list[start..start + list[start..].find("</tr>").unwrap()].to_owned()
    };
    assert!(
        row(stuck).contains("class=\"badge stalled\""),
        "{}",
        row(stuck)
    );
    assert!(!row(moving).contains("stalled"), "{}", row(moving));
}

#[sqlx::test]
async fn the_lists_summary_line_counts_only_the_runs_in_the_tokens_scope(pool: PgPool) {
    seed_scopes(&pool).await;
    for (tenant, state) in [
        (10, ("completed", "failed")),
        (10, ("completed", "failed")),
        (10, ("running", "pending")),
        (11, ("completed", "failed")),
        (11, ("running", "pending")),
        (11, ("completed", "succeeded")),
    ] {
        insert_run(&pool, 1, Some(tenant), "policy.sync", state, 5, json!({})).await;
    }
    insert_run(
        &pool,
        2,
        Some(20),
        "policy.sync",
        ("completed", "failed"),
        5,
        json!({}),
    )
    .await;
    let viewer = Viewer::spawn(pool.clone()).await;

    let summary = |html: &str| {
        let start = html.find("id=\"summary\"").expect("a summary line");
        let start = start + html[start..].find('>').unwrap() + 1;
        html[start..start + html[start..].find('<').unwrap()].to_owned()
    };
    let (_, _, ten) = viewer
        .get("/runs", Some(&viewer.token(1, Some(vec![10]))))
        .await;
    assert_eq!(summary(&ten), "3 runs, 2 failed, 1 running");
    let (_, _, workspace) = viewer.get("/runs", Some(&viewer.token(1, None))).await;
    assert_eq!(summary(&workspace), "6 runs, 3 failed, 2 running");
    // A filter for a tenant outside the token's scope counts nothing.
    let (_, _, other) = viewer
        .get("/runs?tenant_id=11", Some(&viewer.token(1, Some(vec![10]))))
        .await;
    assert_eq!(summary(&other), "0 runs, 0 failed, 0 running");
    // And the filter's own predicates hold.
    let (_, _, failed) = viewer
        .get("/runs?outcome=failed", Some(&viewer.token(1, None)))
        .await;
    assert_eq!(summary(&failed), "3 runs, 3 failed, 0 running");

    // Past the cap the line says so; another tenant's many runs still count for nothing.
    sqlx::query(
        "INSERT INTO operation_runs (workspace_id, tenant_id, type, status, outcome, run_identity_hash)
         SELECT 1, 11, 'policy.sync', 'completed', 'succeeded', md5(g::text) || md5(g::text)
         FROM generate_series(1, $1) AS g",
    )
    .bind(operation_runs::store::viewer::SUMMARY_CAP as i32)
    .execute(&pool)
    .await
    .unwrap();
    let (_, _, workspace) = viewer.get("/runs", Some(&viewer.token(1, None))).await;
    assert!(
        summary(&workspace).starts_with("More than 1000 runs (of the newest 1000:"),
        "{}",
        summary(&workspace)
    );
    let (_, _, ten) = viewer
        .get("/runs", Some(&viewer.token(1, Some(vec![10]))))
        .await;
    assert_eq!(summary(&ten), "3 runs, 2 failed, 1 running");
}

#[sqlx::test]
async fn the_timeline_says_what_each_event_changed(pool: PgPool) {
    seed_scopes(&pool).await;
    let id = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        ("running", "pending"),
        5,
        json!({}),
    )
    .await;
    let run =
        |status: &str, outcome: &str, counts: serde_json::Value, failures: serde_json::Value| {
            json!({"data": {"run": {"status": status, "outcome": outcome, "summary_counts": counts,
                                "failure_summary": failures, "failure_overflow": {}}}})
        };
    let failure = json!({"code": "x", "message": "m"});
    let events = [
        (
            "operation_run.queued",
            run("queued", "pending", json!({}), json!([])),
        ),
        (
            "operation_run.started",
            run("running", "pending", json!({}), json!([])),
        ),
        (
            "operation_run.progressed",
            run(
                "running",
                "pending",
                json!({"total": 10, "processed": 3}),
                json!([failure.clone(), failure.clone()]),
            ),
        ),
        (
            "operation_run.completed",
            run(
                "completed",
                "failed",
                json!({"total": 10, "processed": 10}),
                json!([failure]),
            ),
        ),
    ];
    for (i, (event_type, document)) in events.iter().enumerate() {
        sqlx::query(
            "INSERT INTO operation_run_events (id, run_id, sequence, type, workspace_id, tenant_id, cloud_event)
             VALUES (gen_random_uuid(), $1, $2, $3, 1, 10, $4)",
        )
        .bind(id)
        .bind(i as i64 + 1)
        .bind(event_type)
        .bind(document)
        .execute(&pool)
        .await
        .unwrap();
    }
    let viewer = Viewer::spawn(pool).await;
    let (_, _, page) = viewer
        .get(&format!("/runs/{id}"), Some(&viewer.token(1, None)))
        .await;
    let changes: Vec<&str> = page
        .split("<span class=\"changes\">")
        .skip(1)
        .map(|s| &s[..s.find('<').unwrap()])
        .collect();
    assert_eq!(
        changes,
        [
            "status queued",
            "status running",
            "+3 processed, +10 total, +2 failures",
            "status completed, +7 processed, -1 failure, outcome failed",
        ]
    );
}

#[sqlx::test]
async fn the_lists_date_range_keeps_the_runs_created_within_it_in_utc_days(pool: PgPool) {
    seed_scopes(&pool).await;
    let old = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        ("completed", "succeeded"),
        5,
        json!({}),
    )
    .await;
    let new = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        ("completed", "succeeded"),
        5,
        json!({}),
    )
    .await;
    sqlx::query(
        "UPDATE operation_runs SET created_at = CASE WHEN id = $1 THEN timestamptz '2026-03-01 23:59:00Z'
                                                     ELSE timestamptz '2026-03-02 00:00:00Z' END
         WHERE id IN ($1, $2)",
    )
    .bind(old)
    .bind(new)
    .execute(&pool)
    .await
    .unwrap();
    let viewer = Viewer::spawn(pool).await;
    let t = viewer.token(1, None);
    let listed = |html: &str, id: i64| html.contains(&format!("href=\"/runs/{id}\""));

    let (status, _, day) = viewer
        .get("/runs?from=2026-03-02&to=2026-03-02", Some(&t))
        .await;
    assert_eq!(status, StatusCode::OK, "{day}");
    assert!(listed(&day, new) && !listed(&day, old), "{day}");
    assert!(
        day.contains("name=\"from\" value=\"2026-03-02\""),
        "the form keeps the range"
    );
    let (_, _, before) = viewer.get("/runs?to=2026-03-01", Some(&t)).await;
    assert!(listed(&before, old) && !listed(&before, new), "{before}");
    let (status, _, bad) = viewer.get("/runs?from=March", Some(&t)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(bad.contains("from must be a date (YYYY-MM-DD)"), "{bad}");
}

#[sqlx::test]
async fn a_running_run_shows_its_names_times_duration_so_far_and_an_eta_from_its_total(
    pool: PgPool,
) {
    seed_scopes(&pool).await;
    let id = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        ("running", "pending"),
        20,
        json!({"initiator": "Ada", "counts": {"total": 10, "processed": 5}}),
    )
    .await;
    sqlx::query("UPDATE operation_runs SET started_at = now() - interval '10 minutes', user_id = 5 WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let viewer = Viewer::spawn(pool).await;
    let (_, _, page) = viewer
        .get(&format!("/runs/{id}"), Some(&viewer.token(1, None)))
        .await;
    for shown in [
        "<dd id=\"workspace-name\">one</dd>",
        "<dd id=\"tenant-name\">ten</dd>",
        "<dd id=\"initiator\">Ada <small>(user 5)</small></dd>",
        "Policy sync <code>policy.sync</code>",
        "5 / 10 (50%)",
        // Half done in 10 minutes: about 10 more.
        "about 10 min left",
        " so far",
        "<dt>Usually takes</dt><dd>about 5 min</dd>",
        "<dt>Completed</dt><dd>not yet</dd>",
    ] {
        assert!(page.contains(shown), "{shown} in {page}");
    }
    let elapsed = &page[page.find("id=\"elapsed\"").unwrap()..];
    assert!(
        elapsed.contains("data-elapsed-since"),
        "the duration ticks while running"
    );
    assert!(elapsed.contains(">10 min "), "{elapsed}");
}

/// The part of a run page from the "Runs of this identity" heading to the next heading.
fn identity_part(html: &str) -> &str {
    let start = html.find("id=\"identity\"").expect("the identity's part");
    let end = html[start..].find("<h2").map_or(html.len(), |e| start + e);
    &html[start..end]
}

/// The run ids of the identity's table, in order.
fn identity_rows(part: &str) -> Vec<i64> {
    part.split("data-run=\"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].parse().unwrap())
        .collect()
}

#[sqlx::test]
async fn the_run_page_lists_its_identitys_runs_and_the_dispatches_deduplicated_onto_the_holder(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool.clone()).await;
    let body = dispatch("policy.sync", 1, Some(10), json!({"policy_id": 7}));
    let first = dispatch_with_reply(&app, &body).await;
    let again = dispatch("policy.sync", 1, Some(10), json!({"policy_id": 7}));
    let second = dispatch_with_reply(&app, &again).await;
    assert_eq!(second["deduplicated"], true, "{second}");
    assert_eq!(second["run_id"], first["run_id"]);
    let holder = first["run_id"].as_i64().unwrap();
    let hash = first["run_identity_hash"].as_str().unwrap().to_owned();
    // An older run of the identity in the same tenant, and another tenant's runs given the same
    // hash, one of them with a deduplicated dispatch of its own in the inbox.
    let failed = ("completed", "failed");
    let older = insert_run(&pool, 1, Some(10), "policy.sync", failed, 60, json!({})).await;
    let foreign = insert_run(&pool, 1, Some(11), "policy.sync", failed, 30, json!({})).await;
    sqlx::query("UPDATE operation_runs SET run_identity_hash = $1 WHERE id = ANY($2)")
        .bind(&hash)
        .bind(vec![older, foreign])
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO processed_commands (command_id, kind, body_hash, run_id, result)
         VALUES ('foreign-duplicate', 'dispatch', 'x', $1,
                 jsonb_build_object('run_id', $1, 'deduplicated', true))",
    )
    .bind(foreign)
    .execute(&pool)
    .await
    .unwrap();
    let viewer = Viewer::spawn(pool.clone()).await;
    let ten = viewer.token(1, Some(vec![10]));

    let (status, _, html) = viewer.get(&format!("/runs/{holder}"), Some(&ten)).await;
    assert_eq!(status, StatusCode::OK);
    let part = identity_part(&html);
    assert!(part.contains("This run holds the identity"), "{part}");
    assert!(
        part.contains("1 dispatch deduplicated onto this run"),
        "{part}"
    );
    assert_eq!(identity_rows(part), vec![holder, older], "{part}");
    assert!(!part.contains(&format!("#{foreign}")), "{part}");

    // From the older run's page: the holder is named, nothing was deduplicated onto this one.
    let (_, _, html) = viewer.get(&format!("/runs/{older}"), Some(&ten)).await;
    let part = identity_part(&html);
    assert!(
        part.contains(&format!(
            "href=\"/runs/{holder}\">#{holder}</a> holds the identity"
        )),
        "{part}"
    );
    assert!(
        part.contains("No dispatch was deduplicated onto this run"),
        "{part}"
    );
    assert_eq!(identity_rows(part), vec![holder, older]);

    // The other tenant's token: its run alone, and the holder is not its to name.
    let eleven = viewer.token(1, Some(vec![11]));
    let (_, _, html) = viewer.get(&format!("/runs/{foreign}"), Some(&eleven)).await;
    let part = identity_part(&html);
    assert_eq!(identity_rows(part), vec![foreign], "{part}");
    assert!(part.contains("No run holds the identity now"), "{part}");
    assert!(
        part.contains("1 dispatch deduplicated onto this run"),
        "{part}"
    );
    assert!(!part.contains(&format!("#{holder}")), "{part}");
    let (status, _, _) = viewer.get(&format!("/runs/{holder}"), Some(&eleven)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.shutdown().await;
}
