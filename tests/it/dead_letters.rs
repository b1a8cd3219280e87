//! Dead letters: looking at them changes nothing, a replay keeps their age, no delivery limit
//! drops one, and a replay's retention check is the one `serve` runs with.

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
    let mut headers = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    headers.insert("x-oprun-error-code".into(), text("unknown_workspace"));
    headers.insert("x-oprun-error-message".into(), text("no such workspace"));
    headers.insert("x-oprun-routing-key".into(), text("dispatch"));
    headers.insert(
        "x-oprun-failed-at".into(),
        text(&(Utc::now() - age).to_rfc3339_opts(SecondsFormat::Millis, true)),
    );
    let body = dispatch("policy.sync", 1, Some(10), json!({"policy_id": 7}));
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
