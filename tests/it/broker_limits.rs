//! Edges of the broker contract: the shipped broker limit refuses oversized messages at the door,
//! and a flood of the largest messages the broker accepts keeps the service's peak memory under
//! the documented bound (docs/configuration.md, "Bounds").

use std::process::Stdio;
use std::time::Duration;

use lapin::types::AMQPValue;
use operation_runs::broker::publisher::{confirm_all, ConfirmPublisher};
use operation_runs::domain::command::MAX_COMMAND_BYTES;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::process::{Child, Command};

use crate::helpers::memory::{proc_status_bytes, MEMORY_BOUND_BYTES};
use crate::helpers::{database_url_for, json_properties, wait_for, TestApp};

/// The `max_message_size` the repository ships in `topology/rabbitmq.conf`.
fn shipped_max_message_size() -> usize {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/topology/rabbitmq.conf");
    let conf = std::fs::read_to_string(path).expect("topology/rabbitmq.conf is shipped");
    conf.lines()
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == "max_message_size")
        .map(|(_, value)| value.trim().parse().expect("max_message_size is a number"))
        .expect("topology/rabbitmq.conf sets max_message_size")
}

fn rabbitmqctl_eval(expression: &str) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["eval", expression])
        .output()
        .expect("rabbitmqctl runs on the broker host");
    assert!(
        out.status.success(),
        "rabbitmqctl eval {expression}: {out:?}"
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Makes the machine's broker enforce the shipped limit, as a broker configured with
/// `topology/rabbitmq.conf` does (`.ci/run` applies it at start too). Only ever lowers the limit
/// to the shipped one, which every other test respects (the largest message they publish is
/// the service's own limit plus one byte), so it is safe while other tests run.
fn apply_shipped_broker_limit() -> usize {
    let shipped = shipped_max_message_size();
    let current = rabbitmqctl_eval("application:get_env(rabbit, max_message_size).");
    let current: Option<usize> = current
        .trim_start_matches("{ok,")
        .trim_end_matches('}')
        .parse()
        .ok();
    if current != Some(shipped) {
        rabbitmqctl_eval(&format!(
            "application:set_env(rabbit, max_message_size, {shipped})."
        ));
    }
    shipped
}

/// The real binary with default settings (prefetch 500, batches of 200), as deployed.
fn spawn_serve(database: &str, namespace: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_oprun"))
        .args(["serve", "--metrics-addr", "off", "--hand-off-jobs", "false"])
        .env("DATABASE_URL", database_url_for(database))
        .env("OPRUN_NAMESPACE", namespace)
        .env("OPRUN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the oprun binary starts")
}

/// A JSON string body of exactly `len` bytes (a dispatch whose context pads it out).
fn body_of(len: usize) -> Vec<u8> {
    let head = br#"{"kind":"dispatch","workspace_id":1,"tenant_id":10,"type":"policy.sync","context":{"policy_id":1,"pad":""#;
    let tail = br#""}}"#;
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(head);
    body.resize(len - tail.len(), b'x');
    body.extend_from_slice(tail);
    body
}

#[sqlx::test]
async fn the_shipped_broker_limit_refuses_oversized_publishes_at_the_door(pool: sqlx::PgPool) {
    let limit = apply_shipped_broker_limit();
    assert!(
        limit > MAX_COMMAND_BYTES,
        "bodies just over the service's limit still reach it, to be refused with a clear code"
    );
    let app = TestApp::without_service(pool).await;
    let exchange = app.topology.commands_exchange();

    // The reproduction: 60 commands of 10 MB. Each one is refused by the broker (406 closes the
    // publishing channel), so none reaches the queue, or the service.
    let ten_mb = body_of(10 * 1024 * 1024);
    for i in 0..60 {
        let publisher = ConfirmPublisher::open(&app.connection).await.unwrap();
        let sent = publisher
            .publish(&exchange, "dispatch", &ten_mb, json_properties(), true)
            .await;
        assert!(sent.is_err(), "10 MB publish {i} was accepted");
    }
    let publisher = ConfirmPublisher::open(&app.connection).await.unwrap();
    let over = publisher
        .publish(
            &exchange,
            "dispatch",
            &body_of(limit + 1),
            json_properties(),
            true,
        )
        .await;
    assert!(over.is_err(), "one byte over the limit is refused");

    // Exactly the limit is accepted: that is the largest message the service can ever receive.
    let publisher = ConfirmPublisher::open(&app.connection).await.unwrap();
    publisher
        .publish(
            &exchange,
            "dispatch",
            &body_of(limit),
            json_properties(),
            true,
        )
        .await
        .expect("a body of exactly max_message_size is accepted");
    assert_eq!(app.queue_depth(&app.topology.commands_queue()).await, 1);
    app.shutdown().await;
}

#[sqlx::test]
async fn a_flood_of_maximum_size_messages_keeps_peak_memory_under_the_documented_bound(
    _opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let limit = apply_shipped_broker_limit();
    let database = connect.get_database().expect("test database").to_owned();
    let app = TestApp::without_service(
        PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy_with(connect),
    )
    .await;
    let namespace = app.topology.namespace().to_owned();

    let exchange = app.topology.commands_exchange();
    // The reproduction first: 60 commands of 10 MB. With the shipped broker limit each is
    // refused at the door; a broker without it queues them all (the defect: 22 MB -> 559 MB).
    let ten_mb = body_of(10 * 1024 * 1024);
    let mut accepted_10mb = 0;
    for _ in 0..60 {
        let publisher = ConfirmPublisher::open(&app.connection).await.unwrap();
        let sent = publisher
            .publish(&exchange, "dispatch", &ten_mb, json_properties(), true)
            .await;
        accepted_10mb += u32::from(sent.is_ok());
    }
    drop(ten_mb);

    // Then more messages of the largest accepted size than the default prefetch (500), queued
    // before the service starts, so the broker sends it a full prefetch window at once: the
    // worst case the bound is computed for.
    let body = body_of(limit);
    let batches = 14;
    for _ in 0..batches {
        let mut pending = Vec::new();
        for _ in 0..50 {
            pending.push(
                app.publisher
                    .start(&exchange, "dispatch", &body, json_properties(), true)
                    .await
                    .unwrap(),
            );
        }
        confirm_all(pending).await.unwrap();
    }
    let flood = batches * 50 + accepted_10mb;

    let mut serve = spawn_serve(&database, &namespace);
    let pid = serve.id().expect("running");

    // Every one is refused by the service itself with a readable code, and dead-lettered.
    let dlq = app.topology.dead_letter_queue();
    wait_for(
        "the flood to be dead-lettered",
        Duration::from_secs(180),
        || {
            assert!(
                serve.try_wait().unwrap().is_none(),
                "the service exited during the flood"
            );
            let (app, dlq) = (&app, &dlq);
            async move {
                let settled = app.queue_depth(dlq).await;
                (settled == flood)
                    .then_some(())
                    .ok_or(format!("{settled} of {flood} dead-lettered"))
            }
        },
    )
    .await;
    let peak = proc_status_bytes(pid, "VmHWM");
    let now = proc_status_bytes(pid, "VmRSS");
    serve.kill().await.unwrap();
    println!(
        "peak RSS {peak} bytes, RSS after the flood {now} bytes, 10 MB messages accepted by the broker: {accepted_10mb}"
    );
    assert!(
        peak < MEMORY_BOUND_BYTES,
        "peak resident memory {peak} bytes exceeds the documented bound {MEMORY_BOUND_BYTES} \
         (10 MB messages accepted by the broker: {accepted_10mb})"
    );
    let letter = &app.take_dead_letters(1).await[0];
    let code = letter
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-oprun-error-code").cloned());
    assert_eq!(
        code,
        Some(AMQPValue::LongString("message_too_large".into())),
        "refused by the service with its code"
    );
    assert_eq!(
        letter.data.len(),
        limit,
        "the dead letter keeps the whole body"
    );

    app.shutdown().await;
}
