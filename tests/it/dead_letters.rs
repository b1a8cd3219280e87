//! Dead letters: looking at them (list, summary, show) changes nothing, a replay keeps their
//! age, no delivery limit drops one, a replay's retention check is the one `serve` runs with,
//! `dlq list` says how many of how many it shows, and a discarded letter is recorded before its
//! row goes (a dry run discards nothing, a discard by code takes only that code).

use std::process::Stdio;

use chrono::{Duration as Age, SecondsFormat, Utc};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use operation_runs::broker::Topology;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{
    amqp_url, dispatch, json_properties, test_settings, unique_namespace, wait_until, TestApp,
};
use crate::operations::oprun;

/// Runs `oprun` and returns its stdout as JSON lines (it must succeed).
async fn json_lines(db: &str, ns: &str, args: &[&str]) -> Vec<Value> {
    let out = oprun(db, ns, args)
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "oprun {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// What must not change when a letter is looked at: which letter, in which place, with which
/// reason, age and delivery count.
fn identity(row: &Value) -> Value {
    json!([
        row["command_id"],
        row["code"],
        row["failed_at"],
        row["replays"],
        row["delivery_count"]
    ])
}

/// Puts a dead letter of a valid dispatch straight into the DLQ, refused `age` ago.
async fn old_dead_letter(app: &TestApp, age: Age) {
    let body = dispatch("policy.sync", 1, Some(10), json!({"policy_id": 7}));
    dead_letter_of(app, age, &body).await;
}

/// Puts a dead letter of `body` straight into the DLQ as an `unknown_workspace` refusal of
/// `age` ago.
async fn dead_letter_of(app: &TestApp, age: Age, body: &Value) {
    let mut headers = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    headers.insert("x-oprun-error-code".into(), text("unknown_workspace"));
    headers.insert("x-oprun-error-message".into(), text("no such workspace"));
    headers.insert("x-oprun-routing-key".into(), text("dispatch"));
    headers.insert(
        "x-oprun-failed-at".into(),
        text(&(Utc::now() - age).to_rfc3339_opts(SecondsFormat::Millis, true)),
    );
    app.publisher
        .publish(
            "",
            &app.topology.dead_letter_queue(),
            &serde_json::to_vec(&body).unwrap(),
            json_properties().with_headers(headers),
            true,
        )
        .await
        .unwrap();
}

#[sqlx::test]
async fn listing_dead_letters_again_and_again_leaves_their_delivery_count_order_and_age_unchanged(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let app = TestApp::spawn_on(&connect).await;
    let ns = app.topology.namespace().to_owned();
    let letters = 40;
    for i in 0..letters {
        let mut body = dispatch("policy.sync", 99, None, json!({"policy_id": i}));
        body["command_id"] = json!(format!("letter-{i:02}"));
        app.publish(&body).await; // unknown_workspace
    }
    wait_until("the dead letters", || async {
        (app.queue_depth(&app.topology.dead_letter_queue()).await == letters).then_some(())
    })
    .await;

    let first = json_lines(&db, &ns, &["dlq", "list", "--limit", "100"]).await;
    assert_eq!(first.len(), letters as usize);
    let in_order: Vec<Value> = (0..letters)
        .map(|i| json!(format!("letter-{i:02}")))
        .collect();
    assert_eq!(
        first
            .iter()
            .map(|r| r["command_id"].clone())
            .collect::<Vec<_>>(),
        in_order,
        "listed in the order they were dead-lettered"
    );
    // More listings than RabbitMQ 4's default delivery limit (20).
    for listing in 2..=25 {
        let again = json_lines(&db, &ns, &["dlq", "list", "--limit", "100"]).await;
        assert_eq!(
            again.iter().map(identity).collect::<Vec<_>>(),
            first.iter().map(identity).collect::<Vec<_>>(),
            "listing {listing} changed the letters"
        );
    }
    assert!(
        first.iter().all(|r| r["delivery_count"] == json!(0)),
        "{first:?}"
    );
    // And a replay still finds every one of them.
    let dry = json_lines(&db, &ns, &["dlq", "replay", "--dry-run"]).await;
    assert_eq!(dry.last().unwrap()["replayed"], json!(letters));
    app.shutdown().await;
}

#[sqlx::test]
async fn a_replayed_letter_refused_again_keeps_its_first_failure_time_as_its_age(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let app = TestApp::spawn_on(&connect).await;
    let ns = app.topology.namespace().to_owned();
    let dlq = app.topology.dead_letter_queue();
    app.publish(&dispatch("policy.sync", 99, None, json!({"policy_id": 1})))
        .await; // unknown_workspace
    wait_until("the dead letter", || async {
        (app.queue_depth(&dlq).await == 1).then_some(())
    })
    .await;
    let before = json_lines(&db, &ns, &["dlq", "list"]).await;
    assert_eq!(before.len(), 1);
    let first_failed_at = before[0]["failed_at"].clone();
    assert!(first_failed_at.is_string(), "{before:?}");

    // The workspace still does not exist: the replay is refused again, a new letter.
    let replayed = json_lines(&db, &ns, &["dlq", "replay"]).await;
    assert_eq!(replayed.last().unwrap()["replayed"], json!(1));
    wait_until("the replay's own dead letter", || async {
        (app.queue_depth(&dlq).await == 1).then_some(())
    })
    .await;
    let after = json_lines(&db, &ns, &["dlq", "list"]).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["replays"], json!(1));
    assert_eq!(
        after[0]["failed_at"], first_failed_at,
        "the age counts from the first refusal"
    );
    assert_ne!(
        after[0]["last_failed_at"], first_failed_at,
        "the latest refusal is the replay's"
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn no_delivery_limit_of_any_broker_version_can_drop_a_dead_letter(
    _o: PgPoolOptions,
    _connect: PgConnectOptions,
) {
    // RabbitMQ 4.0+ gives a quorum queue declared without `x-delivery-limit` a limit of 20, and
    // the DLQ has no dead-letter target: reaching a limit would drop the letter. This broker
    // (3.10) has no default, so what can be checked here is what the queue is declared with:
    // an explicit limit, which 4.x honours instead of its default. A redeclaration with
    // another value is refused, naming the one the queue has.
    let topology = Topology::new(&unique_namespace()).unwrap();
    let connection = operation_runs::broker::connection::connect(&amqp_url(), "oprun tests")
        .await
        .unwrap();
    topology.declare_on(&connection).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(20));
    let refused = channel
        .queue_declare(
            topology.dead_letter_queue().as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect_err("the DLQ already has another delivery limit")
        .to_string();
    assert!(
        refused.contains("x-delivery-limit") && refused.contains("2147483647"),
        "{refused}"
    );
    let channel = connection.create_channel().await.unwrap();
    topology.delete(&channel).await.unwrap();
}

#[sqlx::test]
async fn an_existing_dead_letter_queue_without_the_delivery_limit_is_kept_as_it_is(
    _o: PgPoolOptions,
    _connect: PgConnectOptions,
) {
    // A deployment upgraded from a version that declared the DLQ without `x-delivery-limit`:
    // RabbitMQ refuses the new argument on the existing queue, and the service must start.
    let topology = Topology::new(&unique_namespace()).unwrap();
    let connection = operation_runs::broker::connection::connect(&amqp_url(), "oprun tests")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            topology.dead_letter_queue().as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    topology.declare_on(&connection).await.unwrap();
    // Declared twice: the adoption is stable.
    topology.declare_on(&connection).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    topology.delete(&channel).await.unwrap();
}

#[sqlx::test]
async fn dlq_replay_refuses_letters_older_than_the_inbox_retention_serve_recorded(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let mut settings = test_settings();
    settings.retention.inbox_retention = std::time::Duration::from_secs(24 * 3600);
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .connect_lazy_with(connect.clone());
    let app = TestApp::spawn_with(pool, settings).await;
    let ns = app.topology.namespace().to_owned();
    app.wait_for_count(
        "SELECT count(*) FROM service_settings WHERE name = 'inbox_retention_seconds' AND value = '86400'",
        1,
    )
    .await;
    // Within the default 14 days, but older than the 1 day this serve runs with.
    old_dead_letter(&app, Age::days(2)).await;

    let lines = json_lines(&db, &ns, &["dlq", "replay"]).await;
    let summary = lines.last().unwrap();
    assert_eq!(
        (&summary["replayed"], &summary["refused"]),
        (&json!(0), &json!(1)),
        "{lines:?}"
    );
    assert!(
        lines[0]["reason"]
            .as_str()
            .unwrap()
            .contains("inbox retention of 86400 s"),
        "{lines:?}"
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn dlq_replay_refuses_to_guess_the_inbox_retention_when_no_serve_recorded_one(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .connect_lazy_with(connect.clone());
    let app = TestApp::without_service(pool).await;
    let ns = app.topology.namespace().to_owned();
    let dlq = app.topology.dead_letter_queue();
    old_dead_letter(&app, Age::days(2)).await;
    wait_until("the dead letter", || async {
        (app.queue_depth(&dlq).await == 1).then_some(())
    })
    .await;

    let out = oprun(&db, &ns, &["dlq", "replay"])
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "replayed without knowing the retention"
    );
    assert!(
        stderr.contains("--inbox-retention") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(app.queue_depth(&dlq).await, 1, "nothing was taken");

    // Given explicitly, it is used.
    let lines = json_lines(
        &db,
        &ns,
        &["dlq", "replay", "--dry-run", "--inbox-retention", "1d"],
    )
    .await;
    assert_eq!(lines.last().unwrap()["refused"], json!(1), "{lines:?}");
    let lines = json_lines(
        &db,
        &ns,
        &["dlq", "replay", "--dry-run", "--inbox-retention", "3d"],
    )
    .await;
    assert_eq!(lines.last().unwrap()["replayed"], json!(1), "{lines:?}");
    app.shutdown().await;
}

/// Publishes 3 `unknown_type` dispatches (tenant 10), 2 `run_not_found` updates (tenant 10) and
/// one body that is not JSON, and waits until the 6 are dead-lettered. Returns the bodies.
async fn mixed_letters(app: &TestApp) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    for i in 0..3 {
        let mut body = dispatch("nope.sync", 1, Some(10), json!({"policy_id": i}));
        body["command_id"] = json!(format!("unknown-type-{i}"));
        bodies.push(serde_json::to_vec(&body).unwrap());
        app.publish(&body).await;
    }
    for i in 0..2 {
        let body = crate::helpers::progress("update_run", 4242 + i, json!({"status": "running"}));
        bodies.push(serde_json::to_vec(&body).unwrap());
        app.publish(&body).await;
    }
    let garbage = b"{\"kind\": \"dispatch\",".to_vec();
    app.publish_raw("dispatch", &garbage, json_properties())
        .await;
    bodies.push(garbage);
    wait_until("the dead letters", || async {
        (app.queue_depth(&app.topology.dead_letter_queue()).await == 6).then_some(())
    })
    .await;
    bodies
}

/// Runs `oprun` (it must succeed) as the OS user `oncall`: (stdout, stderr).
pub(crate) async fn run(db: &str, ns: &str, args: &[&str]) -> (String, String) {
    let out = oprun(db, ns, args)
        .env("USER", "oncall")
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "oprun {args:?}: {stderr}");
    (stdout, stderr)
}

/// Each line of `stdout` as JSON.
pub(crate) fn lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[sqlx::test]
async fn a_summary_counts_letters_by_code_kind_tenant_and_age_and_show_prints_one_changing_none(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let app = TestApp::spawn_on(&connect).await;
    let ns = app.topology.namespace().to_owned();
    let bodies = mixed_letters(&app).await;
    let mut old = dispatch("policy.sync", 99, Some(20), json!({"policy_id": 1}));
    old["command_id"] = json!("two-days-old");
    dead_letter_of(&app, Age::days(2), &old).await;
    wait_until("the old letter", || async {
        (app.queue_depth(&app.topology.dead_letter_queue()).await == 7).then_some(())
    })
    .await;
    let before = json_lines(&db, &ns, &["dlq", "list"]).await;
    assert_eq!(before.len(), 7);

    let (out, _) = run(&db, &ns, &["dlq", "summary"]).await;
    let summary: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        summary,
        json!({
            "total": 7,
            "by_code": {"unknown_type": 3, "run_not_found": 2, "invalid_json": 1, "unknown_workspace": 1},
            "by_kind": {"dispatch": 4, "update_run": 2, "unknown": 1},
            "by_tenant": {"10": 5, "20": 1, "none": 1},
            "by_age": {"under_1h": 6, "1h_to_1d": 0, "1d_to_7d": 1, "over_7d": 0, "unknown": 0},
        })
    );
    let (table, _) = run(&db, &ns, &["dlq", "summary", "--format", "table"]).await;
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["BY", "VALUE", "LETTERS"]);
    for row in [
        &["total", "-", "7"][..],
        &["code", "unknown_type", "3"],
        &["tenant", "none", "1"],
        &["age", "1d_to_7d", "1"],
    ] {
        assert!(rows.iter().any(|r| r == row), "{row:?} in\n{table}");
    }

    let first = &before[0];
    let (shown, _) = run(&db, &ns, &["dlq", "show", &first["id"].to_string()]).await;
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["code"], "unknown_type");
    assert_eq!(shown["command_id"], "unknown-type-0");
    assert_eq!(shown["tenant_id"], 10);
    assert_eq!(
        shown["body"],
        serde_json::from_slice::<Value>(&bodies[0]).unwrap()
    );
    assert_eq!(
        shown["body_sha256"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bodies[0]))
    );
    let headers = &shown["properties"]["headers"];
    assert_eq!(headers["x-oprun-error-code"], "unknown_type", "{shown}");
    assert_eq!(headers["x-oprun-routing-key"], "dispatch", "{shown}");
    assert!(headers["x-oprun-error-message"].is_string(), "{shown}");
    assert_eq!(shown["properties"]["content_type"], "application/json");
    let garbage = before.iter().find(|l| l["code"] == "invalid_json").unwrap();
    let (shown, _) = run(&db, &ns, &["dlq", "show", &garbage["id"].to_string()]).await;
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["body_text"], "{\"kind\": \"dispatch\",");
    let missing = oprun(&db, &ns, &["dlq", "show", "999999"])
        .output()
        .await
        .unwrap();
    assert!(!missing.status.success());

    let after = json_lines(&db, &ns, &["dlq", "list"]).await;
    assert_eq!(
        after.iter().map(identity).collect::<Vec<_>>(),
        before.iter().map(identity).collect::<Vec<_>>(),
        "summary and show changed no letter"
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn dlq_list_says_how_many_of_the_total_it_shows_and_cuts_a_message_only_between_words(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let app = TestApp::spawn_on(&connect).await;
    let ns = app.topology.namespace().to_owned();
    mixed_letters(&app).await;
    let (out, err) = run(&db, &ns, &["dlq", "list", "--limit", "2"]).await;
    assert_eq!(lines(&out).len(), 2, "every line of stdout is a letter");
    assert!(err.contains("2 of 6 dead letters"), "{err}");

    let (all, _) = run(&db, &ns, &["dlq", "list"]).await;
    let messages: Vec<String> = lines(&all)
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        messages.iter().any(|m| m.chars().count() > 60),
        "a message longer than a cell: {messages:?}"
    );
    let (table, _) = run(&db, &ns, &["dlq", "list", "--format", "table"]).await;
    assert_eq!(table.lines().last().unwrap(), "6 of 6 dead letters");
    let header = table.lines().next().unwrap();
    let at = header.find("MESSAGE").unwrap();
    for (row, full) in table.lines().skip(1).zip(&messages) {
        let cell = row[at..].trim_end();
        let shown = cell.trim_end_matches('…');
        assert!(
            full.starts_with(shown),
            "{cell:?} is not the start of {full:?}"
        );
        let next = full[shown.len()..].chars().next();
        assert!(
            next.is_none_or(char::is_whitespace),
            "{cell:?} cuts {full:?} inside a word"
        );
        assert_eq!(cell.ends_with('…'), shown.len() < full.len(), "{cell:?}");
    }
    app.shutdown().await;
}

#[sqlx::test]
async fn a_discard_by_code_takes_only_that_code_each_letter_recorded_and_a_dry_run_none(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let app = TestApp::spawn_on(&connect).await;
    let ns = app.topology.namespace().to_owned();
    let bodies = mixed_letters(&app).await;
    let held = || async {
        let codes: Vec<String> = sqlx::query_scalar("SELECT code FROM dead_letters ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
        (
            codes,
            app.queue_depth(&app.topology.dead_letter_queue()).await,
        )
    };

    let (out, err) = run(&db, &ns, &["dlq", "discard", "--code", "unknown_type"]).await;
    assert_eq!(lines(&out), [json!({"matching": 3})]);
    assert!(err.contains("--yes"), "{err}");
    let (out, _) = run(
        &db,
        &ns,
        &["dlq", "discard", "--code", "unknown_type", "--dry-run"],
    )
    .await;
    let listed = lines(&out);
    assert_eq!(listed.len(), 5, "{listed:?}");
    assert!(listed[1..4]
        .iter()
        .all(|l| l["would_discard"]["code"] == "unknown_type"));
    assert_eq!(listed[4]["listed"], 3);
    let (codes, queued) = held().await;
    assert_eq!(
        (codes.len(), queued),
        (6, 0),
        "the dry run discarded nothing"
    );
    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letter_discards")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(records, 0);

    // Another kind than the letters of the code have: nothing.
    let by_code = [
        "dlq",
        "discard",
        "--code",
        "unknown_type",
        "--yes",
        "--kind",
    ];
    let (out, _) = run(&db, &ns, &[&by_code[..], &["update_run"]].concat()).await;
    assert_eq!(lines(&out).last().unwrap()["discarded"], 0);
    let as_grace = ["dispatch", "--initiator", "grace"];
    let (out, _) = run(&db, &ns, &[&by_code[..], &as_grace].concat()).await;
    let done = lines(&out);
    assert_eq!(done.last().unwrap()["discarded"], 3, "{done:?}");
    let (codes, _) = held().await;
    assert_eq!(
        codes,
        ["run_not_found", "run_not_found", "invalid_json"],
        "the other codes are left"
    );
    // Each record as one JSON document: code, kind, command id, body digest, who.
    let recorded: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_array(code, kind, command_id, body_sha256, discarded_by)
         FROM dead_letter_discards ORDER BY letter_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let expected: Vec<Value> = (0..3)
        .map(|i| {
            json!([
                "unknown_type",
                "dispatch",
                format!("unknown-type-{i}"),
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bodies[i])),
                "grace"
            ])
        })
        .collect();
    assert_eq!(recorded, expected);

    // By id, as the OS user.
    let id: i64 = sqlx::query_scalar("SELECT min(id) FROM dead_letters")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let (out, _) = run(&db, &ns, &["dlq", "discard", &id.to_string()]).await;
    let done = lines(&out);
    assert_eq!(done[1]["discarded"]["letter_id"], id, "{done:?}");
    assert_eq!(done[1]["discarded"]["discarded_by"], "oncall");
    assert_eq!(held().await.0, ["run_not_found", "invalid_json"]);
    app.shutdown().await;
}

#[sqlx::test]
async fn a_letter_whose_record_cannot_be_written_is_not_discarded(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let app = TestApp::spawn_on(&connect).await;
    let ns = app.topology.namespace().to_owned();
    mixed_letters(&app).await;
    json_lines(&db, &ns, &["dlq", "list"]).await;
    // The record of one letter is refused: none of the page may go.
    sqlx::raw_sql(
        "ALTER TABLE dead_letter_discards ADD CONSTRAINT refuse_one
             CHECK (command_id IS DISTINCT FROM 'unknown-type-1')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let out = oprun(
        &db,
        &ns,
        &["dlq", "discard", "--code", "unknown_type", "--yes"],
    )
    .output()
    .await
    .unwrap();
    assert!(
        !out.status.success(),
        "the refused record stopped the discard"
    );
    let (letters, records): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM dead_letters WHERE code = 'unknown_type'),
                (SELECT count(*) FROM dead_letter_discards)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (letters, records),
        (3, 0),
        "no letter left without its record"
    );

    sqlx::raw_sql("ALTER TABLE dead_letter_discards DROP CONSTRAINT refuse_one")
        .execute(&app.pool)
        .await
        .unwrap();
    run(
        &db,
        &ns,
        &["dlq", "discard", "--code", "unknown_type", "--yes"],
    )
    .await;
    let (letters, records): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM dead_letters WHERE code = 'unknown_type'),
                (SELECT count(*) FROM dead_letter_discards WHERE code = 'unknown_type')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((letters, records), (0, 3));
    app.shutdown().await;
}

#[sqlx::test]
async fn a_discard_older_than_an_age_keeps_younger_letters_and_a_replayed_old_letter_keeps_its_age(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let app = TestApp::spawn_on(&connect).await;
    let ns = app.topology.namespace().to_owned();
    app.wait_for_recorded_settings().await;
    let unknown = |id: &str| {
        let mut body = dispatch("policy.sync", 99, None, json!({"policy_id": 1}));
        body["command_id"] = json!(id);
        body
    };
    dead_letter_of(&app, Age::days(3), &unknown("three-days")).await;
    dead_letter_of(&app, Age::days(2), &unknown("two-days")).await;
    dead_letter_of(&app, Age::minutes(5), &unknown("fresh")).await;
    wait_until("the letters", || async {
        (app.queue_depth(&app.topology.dead_letter_queue()).await == 3).then_some(())
    })
    .await;
    let before = json_lines(&db, &ns, &["dlq", "list"]).await;
    // Replayed (workspace 99 still does not exist): refused again, it keeps its first failure
    // time, so it is still two days old.
    let filter = [
        "dlq",
        "replay",
        "--code",
        "unknown_workspace",
        "--limit",
        "1",
    ];
    let (out, _) = run(&db, &ns, &filter).await;
    assert_eq!(lines(&out).last().unwrap()["replayed"], 1, "{out}");
    wait_until("the replay's own dead letter", || async {
        (app.queue_depth(&app.topology.dead_letter_queue()).await == 1).then_some(())
    })
    .await;
    let after = json_lines(&db, &ns, &["dlq", "list"]).await;
    let replayed = after.iter().find(|l| l["replays"] == 1).unwrap();
    let original = before
        .iter()
        .find(|l| l["command_id"] == replayed["command_id"])
        .unwrap();
    assert_eq!(replayed["failed_at"], original["failed_at"], "{after:?}");

    let (out, _) = run(
        &db,
        &ns,
        &[
            "dlq",
            "discard",
            "--code",
            "unknown_workspace",
            "--older-than",
            "1d",
            "--yes",
        ],
    )
    .await;
    assert_eq!(lines(&out).last().unwrap()["discarded"], 2, "{out}");
    let left: Vec<String> = sqlx::query_scalar("SELECT command_id FROM dead_letters")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, ["fresh"]);
    app.shutdown().await;
}
