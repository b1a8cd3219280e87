//! Retention. `oprun prune` deletes inbox rows, published events and jobs, and (with a run
//! retention) completed runs past their keep, never an unpublished row nor a run's last event
//! (it numbers the next one, late counts included), and reports every row it deleted, a run's
//! events and job included, as its `--dry-run` predicted; a run is never deleted while a command
//! on it commits; the database refuses deleting an unpublished event, and the relay skips an
//! outbox position without an event; `oprun dlq replay` refuses letters older than the inbox
//! retention unless `--force`. Rows are backdated with SQL: no waiting for time.

use chrono::{Duration as Age, SecondsFormat, Utc};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::helpers::{dispatch, dispatch_with_reply, json_properties, progress, TestApp};
use crate::operations::oprun;

/// Dispatches a `policy.sync` run of workspace 1 and returns its id.
async fn new_run(app: &TestApp, policy_id: i64) -> i64 {
    let reply = dispatch_with_reply(
        app,
        &dispatch(
            "policy.sync",
            1,
            Some(10),
            json!({ "policy_id": policy_id }),
        ),
    )
    .await;
    reply["run_id"].as_i64().expect("a run id in the reply")
}

async fn complete(app: &TestApp, run_id: i64) {
    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "running"}),
    ))
    .await;
    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "completed", "outcome": "succeeded"}),
    ))
    .await;
    app.wait_for_run(run_id, "the run to complete", |r| {
        r.status.as_str() == "completed"
    })
    .await;
}

async fn scalar(pool: &PgPool, sql: &str, run_id: i64) -> i64 {
    sqlx::query_scalar(sql)
        .bind(run_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn execute(pool: &PgPool, sql: &str, run_id: i64) {
    sqlx::query(sql).bind(run_id).execute(pool).await.unwrap();
}

/// Every table's row count, to see that a dry run changed nothing.
async fn table_sizes(pool: &PgPool) -> Vec<i64> {
    let mut sizes = Vec::new();
    for table in [
        "processed_commands",
        "operation_run_events",
        "operation_run_event_outbox",
        "operation_run_jobs",
        "operation_runs",
    ] {
        sizes.push(count(pool, &format!("SELECT count(*) FROM {table}")).await);
    }
    sizes
}

/// Runs `oprun` and parses its last stdout line as JSON.
async fn oprun_json(db: &str, ns: &str, args: &[&str]) -> Value {
    let out = oprun(db, ns, args).output().await.unwrap();
    assert!(out.status.success(), "oprun {args:?} failed");
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().expect("a summary line")).unwrap()
}

#[sqlx::test]
async fn prune_deletes_only_published_rows_past_retention_and_a_dry_run_only_counts(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let mut app = TestApp::spawn_on(&connect).await;
    let ns = app.topology.namespace().to_owned();
    // a: completed long ago, one event never published; b: active, all events old;
    // c: completed just now; d: completed long ago, all published (run retention takes it).
    // a's and b's events are recorded first: positions follow recording, and the events' pass
    // walks them in that order.
    let (a, b) = (new_run(&app, 1).await, new_run(&app, 2).await);
    app.publish(&progress("update_run", b, json!({"status": "running"})))
        .await;
    app.wait_for_run(b, "b to run", |r| r.status.as_str() == "running")
        .await;
    complete(&app, a).await;
    let (c, d) = (new_run(&app, 3).await, new_run(&app, 4).await);
    for run in [c, d] {
        complete(&app, run).await;
    }
    app.wait_for_count("SELECT count(*) FROM operation_run_event_outbox", 0)
        .await;
    app.stop_all().await;

    let pool = &app.pool;
    for run in [a, b] {
        execute(pool, "UPDATE operation_run_events SET created_at = now() - interval '40 days' WHERE run_id = $1", run).await;
    }
    // Every run was created 41 days ago (ids follow creation); d also completed long ago.
    execute(
        pool,
        "UPDATE operation_runs SET created_at = now() - interval '41 days' WHERE id >= $1",
        0,
    )
    .await;
    execute(
        pool,
        "UPDATE operation_runs SET completed_at = now() - interval '40 days' WHERE id = $1",
        d,
    )
    .await;
    execute(
        pool,
        "UPDATE processed_commands SET processed_at = now() - interval '20 days' WHERE run_id = $1",
        a,
    )
    .await;
    // a's first event was never confirmed.
    execute(pool, "INSERT INTO operation_run_event_outbox SELECT position FROM operation_run_events WHERE run_id = $1 AND sequence = 1", a).await;
    // Jobs: a's published long ago (goes), b's unpublished and old (stays), c's published now.
    for (run, age, published) in [(a, 10, true), (b, 10, false), (c, 0, true)] {
        sqlx::query(
            "INSERT INTO operation_run_jobs (run_id, type, body, created_at, published_at)
             VALUES ($1, 'policy.sync', '{}', now() - make_interval(days => $2),
                     CASE WHEN $3 THEN now() END)",
        )
        .bind(run)
        .bind(age)
        .bind(published)
        .execute(pool)
        .await
        .unwrap();
    }
    let events = |run| {
        scalar(
            pool,
            "SELECT count(*) FROM operation_run_events WHERE run_id = $1",
            run,
        )
    };
    let (events_a, events_b, events_c, events_d) = (
        events(a).await,
        events(b).await,
        events(c).await,
        events(d).await,
    );
    assert!(events_a >= 3 && events_b >= 2, "a and b have history");
    let inbox_a = scalar(
        pool,
        "SELECT count(*) FROM processed_commands WHERE run_id = $1",
        a,
    )
    .await;
    let inbox_total = count(pool, "SELECT count(*) FROM processed_commands").await;

    let expected = |dry_run: bool| {
        json!({
            "dry_run": dry_run,
            "operation_runs": 1,
            // a keeps its unpublished event and its last, b its last; d goes with its events.
            "operation_run_events": (events_a - 2) + (events_b - 1) + events_d,
            "operation_run_jobs": 1,
            "processed_commands": inbox_a,
        })
    };
    let before = table_sizes(pool).await;
    let counted = oprun_json(&db, &ns, &["prune", "--dry-run", "--run-retention", "30d"]).await;
    assert_eq!(counted, expected(true));
    assert_eq!(table_sizes(pool).await, before, "a dry run deletes nothing");

    // Small batches: the passes must go on past the first one.
    let pruned = oprun_json(
        &db,
        &ns,
        &[
            "prune",
            "--run-retention",
            "30d",
            "--prune-batch",
            "1",
            "--prune-pause",
            "0ms",
        ],
    )
    .await;
    assert_eq!(pruned, expected(false));

    // a: only its unpublished event and its last are left; b: only its last event, which numbers
    // the next one; c: untouched; d: gone with its events.
    let left = |run| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT sequence FROM operation_run_events WHERE run_id = $1 ORDER BY sequence",
        )
        .bind(run)
        .fetch_all(pool)
        .await
        .unwrap()
    };
    assert_eq!(left(a).await, [1, events_a]);
    assert_eq!(left(b).await, [events_b]);
    assert_eq!(left(c).await.len() as i64, events_c);
    assert_eq!(left(d).await, Vec::<i64>::new());
    assert_eq!(
        scalar(pool, "SELECT count(*) FROM operation_runs WHERE id = $1", d).await,
        0
    );
    let jobs: Vec<i64> =
        sqlx::query_scalar("SELECT run_id FROM operation_run_jobs ORDER BY run_id")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(jobs, [b, c]);
    assert_eq!(
        count(pool, "SELECT count(*) FROM processed_commands").await,
        inbox_total - inbox_a
    );
    // Nothing is left past retention: a second pass deletes nothing.
    let again = oprun_json(&db, &ns, &["prune", "--run-retention", "30d"]).await;
    assert_eq!(again["operation_run_events"], 0);
    assert_eq!(again["operation_runs"], 0);
    // Without --run-retention runs are kept: not pruned at all.
    let kept = oprun_json(&db, &ns, &["prune", "--dry-run"]).await;
    assert_eq!(kept["operation_runs"], Value::Null);
    app.shutdown().await;
}

#[sqlx::test]
async fn the_background_pruner_of_serve_deletes_old_inbox_rows(pool: PgPool) {
    let mut settings = crate::helpers::test_settings();
    settings.retention.prune_interval = std::time::Duration::from_millis(50);
    settings.retention.inbox_retention = std::time::Duration::from_secs(86_400);
    let app = TestApp::spawn_with(pool, settings).await;
    let run = new_run(&app, 1).await;
    complete(&app, run).await;
    sqlx::query("UPDATE processed_commands SET processed_at = now() - interval '2 days'")
        .execute(&app.pool)
        .await
        .unwrap();
    app.wait_for_count("SELECT count(*) FROM processed_commands", 0)
        .await;
    // Still working: a new command is applied and remembered.
    new_run(&app, 2).await;
    app.wait_for_count("SELECT count(*) FROM processed_commands", 1)
        .await;
    // Where autovacuum is off (as on this project's machines), the runs and jobs are vacuumed
    // too, although nothing was deleted from them: every progress command leaves a dead row
    // version, and nothing else would reclaim them. Where it is on, autovacuum paces them.
    let autovacuum: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    if autovacuum == "off" {
        app.wait_for_count(
            "SELECT count(*) FROM pg_stat_user_tables \
         WHERE relname IN ('operation_runs', 'operation_run_jobs') AND vacuum_count > 0",
            2,
        )
        .await;
    }
    app.shutdown().await;
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
async fn dlq_replay_refuses_a_letter_older_than_the_inbox_retention_unless_forced(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let app = TestApp::spawn_on(&connect).await;
    let ns = app.topology.namespace().to_owned();
    old_dead_letter(&app, Age::days(15)).await;
    app.wait_for_recorded_settings().await;

    let out = oprun(&db, &ns, &["dlq", "replay"]).output().await.unwrap();
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary = lines.last().unwrap();
    assert_eq!(
        (&summary["replayed"], &summary["refused"]),
        (&json!(0), &json!(1))
    );
    let reason = lines[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("inbox retention") && reason.contains("--force"),
        "{reason}"
    );
    assert_eq!(
        app.dead_letters_held().await,
        1,
        "the refused letter is kept"
    );

    // A longer retention (the service's setting) lets it through; so does --force.
    let longer = oprun_json(
        &db,
        &ns,
        &["dlq", "replay", "--dry-run", "--inbox-retention", "30d"],
    )
    .await;
    assert_eq!(
        (&longer["replayed"], &longer["refused"]),
        (&json!(1), &json!(0))
    );
    assert_eq!(app.dead_letters_held().await, 1, "the dry run leaves it");
    let forced = oprun_json(&db, &ns, &["dlq", "replay", "--force"]).await;
    assert_eq!(
        (&forced["replayed"], &forced["refused"]),
        (&json!(1), &json!(0))
    );
    app.wait_for_count("SELECT count(*) FROM operation_runs", 1)
        .await;
    assert_eq!(app.dead_letters_held().await, 0);
    app.shutdown().await;
}

const DAY_SECS: f64 = 86_400.0;

/// Settings with a one-position relay batch (a position the relay cannot get past would hold
/// back every event) and no background pruner (the test drives it).
fn one_position_relay() -> operation_runs::config::ServeSettings {
    crate::helpers::test_settings_with(&["--relay-batch", "1", "--prune-interval", "0s"])
}

/// The `data.sequence` of each event.
fn sequences(events: &[(Value, lapin::BasicProperties)]) -> Vec<i64> {
    events
        .iter()
        .map(|(e, _)| e["data"]["sequence"].as_i64().expect("a sequence"))
        .collect()
}

/// Dispatches and completes a run, waits until its events are published and returns the run
/// and how many there were.
async fn completed_and_published(app: &TestApp, policy_id: i64) -> (i64, i64) {
    let run = new_run(app, policy_id).await;
    complete(app, run).await;
    app.wait_for_count("SELECT count(*) FROM operation_run_event_outbox", 0)
        .await;
    let history = scalar(
        &app.pool,
        "SELECT count(*) FROM operation_run_events WHERE run_id = $1",
        run,
    )
    .await;
    (run, history)
}

#[sqlx::test]
async fn a_run_is_never_deleted_while_a_late_count_on_it_commits_and_the_count_is_published(
    pool: PgPool,
) {
    let app = TestApp::spawn_with(pool, one_position_relay()).await;
    let pool = &app.pool;
    let mut subscriber = app.subscribe_events().await;
    let (run, history) = completed_and_published(&app, 1).await;
    let published = subscriber.next_events(history as usize).await;
    assert_eq!(sequences(&published), (1..=history).collect::<Vec<_>>());
    execute(
        pool,
        "UPDATE operation_runs SET created_at = now() - interval '41 days',
                completed_at = now() - interval '40 days' WHERE id = $1",
        run,
    )
    .await;

    // A late count held inside its transaction after it locked the run and wrote its event: its
    // inbox row waits for a test transaction's uncommitted row of the same command id.
    let command_id = uuid::Uuid::new_v4().to_string();
    let mut holder = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO processed_commands (command_id, kind, body_hash, result)
         VALUES ($1, 'increment_summary_counts', 'held by the test', '{}')",
    )
    .bind(&command_id)
    .execute(&mut *holder)
    .await
    .unwrap();
    app.publish(&progress(
        "increment_summary_counts",
        run,
        json!({"command_id": command_id, "counts": {"total": 1}}),
    ))
    .await;
    app.wait_for_count(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'
           AND query LIKE '%WITH changed_runs AS%'",
        1,
    )
    .await;

    // Run retention (30 days) meanwhile: the run is past it.
    let mut conn = pool.acquire().await.unwrap();
    let pruner_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let prune = tokio::spawn(async move {
        let _ = operation_runs::store::retention::prune_batch(
            &mut conn,
            operation_runs::store::retention::Table::Runs,
            30.0 * DAY_SECS,
            100,
            0,
        )
        .await
        .unwrap();
    });
    // The batch either skips the run at once or waits for the count's transaction.
    crate::helpers::wait_until("the pruner to finish or wait for the run", || async {
        let waiting: Option<String> =
            sqlx::query_scalar("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1")
                .bind(pruner_pid)
                .fetch_one(pool)
                .await
                .unwrap();
        (prune.is_finished() || waiting.as_deref() == Some("Lock")).then_some(())
    })
    .await;
    holder.rollback().await.unwrap();
    prune.await.unwrap();

    // The count committed on a run that is still there, and its event is published next.
    assert_eq!(
        scalar(
            pool,
            "SELECT count(*) FROM operation_runs WHERE id = $1",
            run
        )
        .await,
        1,
        "the run is kept while a command on it commits"
    );
    let late = subscriber.next_events(1).await;
    assert_eq!(sequences(&late), [history + 1]);
    assert_eq!(late[0].0["data"]["run"]["id"], run);
    app.wait_for_count("SELECT count(*) FROM operation_run_event_outbox", 0)
        .await;
    // Published, the run goes at the next batch, with its whole history.
    let mut conn = pool.acquire().await.unwrap();
    let _ = operation_runs::store::retention::prune_batch(
        &mut conn,
        operation_runs::store::retention::Table::Runs,
        30.0 * DAY_SECS,
        100,
        0,
    )
    .await
    .unwrap();
    drop(conn);
    assert_eq!(
        scalar(
            pool,
            "SELECT count(*) FROM operation_run_events WHERE run_id = $1",
            run
        )
        .await,
        0
    );
    // The relay goes on publishing.
    let next = new_run(&app, 2).await;
    let created = subscriber.next_events(1).await;
    assert_eq!(created[0].0["data"]["run"]["id"], next);
    app.shutdown().await;
}

#[sqlx::test]
async fn a_run_whose_history_was_pruned_continues_its_sequence(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let app = TestApp::spawn_with(
        PgPoolOptions::new()
            .max_connections(5)
            .connect_lazy_with(connect.clone()),
        one_position_relay(),
    )
    .await;
    let ns = app.topology.namespace().to_owned();
    let pool = &app.pool;
    let mut subscriber = app.subscribe_events().await;
    let (run, history) = completed_and_published(&app, 1).await;
    let published = subscriber.next_events(history as usize).await;
    assert_eq!(sequences(&published), (1..=history).collect::<Vec<_>>());
    execute(
        pool,
        "UPDATE operation_run_events SET created_at = now() - interval '40 days' WHERE run_id = $1",
        run,
    )
    .await;

    // Event retention (30 days) takes the completed run's history but its last event.
    let pruned = oprun_json(&db, &ns, &["prune"]).await;

    // A late count (applied on a completed run) is numbered after everything published.
    app.publish(&progress(
        "increment_summary_counts",
        run,
        json!({"counts": {"total": 1}}),
    ))
    .await;
    assert_eq!(sequences(&subscriber.next_events(1).await), [history + 1]);
    assert_eq!(pruned["operation_run_events"], history - 1);
    let left: Vec<i64> = sqlx::query_scalar(
        "SELECT sequence FROM operation_run_events WHERE run_id = $1 ORDER BY sequence",
    )
    .bind(run)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(left, [history, history + 1]);
    app.shutdown().await;
}

#[sqlx::test]
async fn prune_reports_every_row_it_deleted_cascades_included_as_its_dry_run_predicted(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let mut app = TestApp::spawn_on(&connect).await;
    let ns = app.topology.namespace().to_owned();
    // gone1, gone2: completed long ago (run retention takes them, events and job); kept: completed
    // long ago too, but its history is only old (event retention keeps its last event).
    let (gone1, gone2, kept) = (
        new_run(&app, 1).await,
        new_run(&app, 2).await,
        new_run(&app, 3).await,
    );
    for run in [gone1, gone2, kept] {
        complete(&app, run).await;
    }
    app.wait_for_count("SELECT count(*) FROM operation_run_event_outbox", 0)
        .await;
    app.stop_all().await;
    let pool = &app.pool;
    execute(
        pool,
        "UPDATE operation_runs SET created_at = now() - interval '41 days' WHERE id >= $1",
        0,
    )
    .await;
    execute(
        pool,
        "UPDATE operation_run_events SET created_at = now() - interval '40 days' WHERE run_id >= $1",
        0,
    )
    .await;
    for run in [gone1, gone2] {
        execute(
            pool,
            "UPDATE operation_runs SET completed_at = now() - interval '40 days' WHERE id = $1",
            run,
        )
        .await;
    }
    // A published job each, old enough for job retention too.
    for run in [gone1, gone2, kept] {
        execute(
            pool,
            "INSERT INTO operation_run_jobs (run_id, type, body, created_at, published_at)
             VALUES ($1, 'policy.sync', '{}', now() - interval '10 days', now())",
            run,
        )
        .await;
    }
    execute(
        pool,
        "UPDATE processed_commands SET processed_at = now() - interval '20 days' WHERE run_id = $1",
        kept,
    )
    .await;

    let tables = [
        "processed_commands",
        "operation_run_events",
        "operation_run_jobs",
        "operation_runs",
    ];
    let args = [
        "prune",
        "--run-retention",
        "30d",
        "--prune-batch",
        "1",
        "--prune-pause",
        "0ms",
    ];
    let before = table_sizes(pool).await;
    let mut dry_args = args.to_vec();
    dry_args.push("--dry-run");
    let predicted = oprun_json(&db, &ns, &dry_args).await;
    assert_eq!(table_sizes(pool).await, before, "a dry run deletes nothing");
    let pruned = oprun_json(&db, &ns, &args).await;
    let after = table_sizes(pool).await;

    let mut deleted = serde_json::Map::new();
    deleted.insert("dry_run".into(), false.into());
    for table in tables {
        let n = |sizes: &[i64]| {
            sizes[[
                "processed_commands",
                "operation_run_events",
                "operation_run_event_outbox",
                "operation_run_jobs",
                "operation_runs",
            ]
            .iter()
            .position(|t| *t == table)
            .unwrap()]
        };
        deleted.insert(table.into(), (n(&before) - n(&after)).into());
    }
    assert_eq!(
        pruned,
        Value::Object(deleted.clone()),
        "the report counts every row deleted"
    );
    deleted.insert("dry_run".into(), true.into());
    assert_eq!(
        predicted,
        Value::Object(deleted),
        "the dry run predicted it"
    );
    // The runs' events and jobs went with them: every job, every event but kept's last.
    assert_eq!(pruned["operation_runs"], 2);
    assert_eq!(pruned["operation_run_jobs"], 3);
    assert_eq!(
        count(pool, "SELECT count(*) FROM operation_run_events").await,
        1
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn the_relay_skips_and_counts_outbox_positions_without_an_event_and_publishes_on(
    pool: PgPool,
) {
    let app = TestApp::spawn_with(pool, one_position_relay()).await;
    let mut subscriber = app.subscribe_events().await;
    // Positions at the head of the outbox whose event is gone (as an earlier pruner left them).
    sqlx::query("INSERT INTO operation_run_event_outbox (position) VALUES (-2), (-1)")
        .execute(&app.pool)
        .await
        .unwrap();
    let run = new_run(&app, 1).await;
    let created = subscriber.next_events(1).await;
    assert_eq!(created[0].0["data"]["run"]["id"], run);
    app.wait_for_count("SELECT count(*) FROM operation_run_event_outbox", 0)
        .await;
    assert_eq!(
        app.service()
            .metrics
            .counter("oprun_relay_orphan_positions_total", ""),
        2
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn an_event_still_in_the_outbox_cannot_be_deleted_with_or_without_its_run(pool: PgPool) {
    let mut app = TestApp::spawn(pool).await;
    let run = new_run(&app, 1).await;
    complete(&app, run).await;
    app.wait_for_count("SELECT count(*) FROM operation_run_event_outbox", 0)
        .await;
    app.stop_all().await;
    let pool = &app.pool;
    // Its last event not published (yet): in the outbox again.
    execute(
        pool,
        "INSERT INTO operation_run_event_outbox
         SELECT max(position) FROM operation_run_events WHERE run_id = $1",
        run,
    )
    .await;
    for delete in [
        "DELETE FROM operation_run_events WHERE run_id = $1",
        "DELETE FROM operation_runs WHERE id = $1",
    ] {
        let err = sqlx::query(delete)
            .bind(run)
            .execute(pool)
            .await
            .expect_err("an unpublished event cannot be deleted");
        let code = err.as_database_error().and_then(|e| e.code());
        assert_eq!(code.as_deref(), Some("23503"), "{delete}: {err}");
    }
    // Published (its position gone), the run can go.
    execute(pool, "DELETE FROM operation_run_event_outbox", 0).await;
    execute(pool, "DELETE FROM operation_runs WHERE id = $1", run).await;
    assert_eq!(
        count(pool, "SELECT count(*) FROM operation_run_events").await,
        0
    );
    app.shutdown().await;
}
