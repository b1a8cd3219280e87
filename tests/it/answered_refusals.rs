//! Answered refusals: a refused command whose producer asked for a reply, and whose reply the
//! broker confirmed it routed to a queue (a reply queue or direct reply-to), is acked and
//! counted, not dead-lettered; a refusal nobody was told about (no reply asked, a reply queue
//! that does not exist, an address replies may not go to) is dead-lettered as before, and
//! `--dead-letter-answered-refusals` dead-letters answered ones too.

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{
    command_with_reply, dispatch, dispatch_with_reply, json_properties, request_direct,
    test_settings_with, TestApp,
};

/// A dispatch refused `unknown_tenant` (tenant 99 does not exist).
fn unknown_tenant(policy_id: i64) -> Value {
    dispatch(
        "policy.sync",
        1,
        Some(99),
        json!({ "policy_id": policy_id }),
    )
}

fn counter(app: &TestApp, name: &str, labels: &str) -> u64 {
    app.service().metrics.counter(name, labels)
}

#[sqlx::test]
async fn a_refusal_answered_to_its_producer_is_counted_by_code_and_not_dead_lettered(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let by_queue = dispatch_with_reply(&app, &unknown_tenant(1)).await;
    assert_eq!(by_queue["error"]["code"], "unknown_tenant", "{by_queue}");
    let direct = request_direct(&app, &unknown_tenant(2)).await;
    assert_eq!(direct["error"]["code"], "unknown_tenant", "{direct}");

    let letters = app.dead_letters_through_marker(0).await;
    assert!(
        letters.is_empty(),
        "answered refusals were dead-lettered: {letters:?}"
    );
    let labels = "kind=\"dispatch\",code=\"unknown_tenant\"";
    assert_eq!(counter(&app, "oprun_refusals_answered_total", labels), 2);
    assert_eq!(
        counter(&app, "oprun_commands_refused_total", labels),
        1,
        "only the marker, which asked for no reply, is dead-lettered"
    );
    assert_eq!(
        counter(
            &app,
            "oprun_commands_total",
            "kind=\"dispatch\",result=\"refused:unknown_tenant\""
        ),
        2
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn a_refusal_whose_reply_reaches_no_queue_or_may_not_be_sent_is_dead_lettered(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ns = app.topology.namespace().to_owned();
    for (command_id, reply_to) in [
        // Allowed by the reply queue pattern, but no such queue: the reply comes back.
        ("no-queue", format!("{ns}.reply.gone")),
        // Not an address replies may go to: no reply at all.
        ("not-allowed", "someone-elses-queue".to_owned()),
    ] {
        let mut body = unknown_tenant(1);
        body["command_id"] = json!(command_id);
        let properties = json_properties()
            .with_reply_to(reply_to.as_str().into())
            .with_correlation_id("c".into());
        app.publish_raw("dispatch", &serde_json::to_vec(&body).unwrap(), properties)
            .await;
    }
    let letters = app.dead_letters_through_marker(2).await;
    assert_eq!(letters, ["no-queue", "not-allowed"]);
    assert_eq!(
        counter(
            &app,
            "oprun_refusals_answered_total",
            "kind=\"dispatch\",code=\"unknown_tenant\""
        ),
        0
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn with_dead_letter_answered_refusals_an_answered_refusal_is_dead_lettered_too(pool: PgPool) {
    let settings = test_settings_with(&["--dead-letter-answered-refusals"]);
    let app = TestApp::spawn_with(pool, settings).await;
    let mut body = unknown_tenant(1);
    body["command_id"] = json!("answered");
    let reply = dispatch_with_reply(&app, &body).await;
    assert_eq!(reply["error"]["code"], "unknown_tenant", "{reply}");
    let letters = app.dead_letters_through_marker(1).await;
    assert_eq!(letters, ["answered"]);
    let labels = "kind=\"dispatch\",code=\"unknown_tenant\"";
    assert_eq!(counter(&app, "oprun_refusals_answered_total", labels), 0);
    assert_eq!(counter(&app, "oprun_commands_refused_total", labels), 2);
    app.shutdown().await;
}

#[sqlx::test]
async fn an_answered_refusal_of_a_progress_command_is_not_dead_lettered_either(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let body = crate::helpers::progress("update_run", 4242, json!({"status": "running"}));
    let reply = command_with_reply(&app, &body).await;
    assert_eq!(reply["error"]["code"], "run_not_found", "{reply}");
    assert!(app.dead_letters_through_marker(0).await.is_empty());
    assert_eq!(
        counter(
            &app,
            "oprun_refusals_answered_total",
            "kind=\"update_run\",code=\"run_not_found\""
        ),
        1
    );
    app.shutdown().await;
}
