//! The hostile-input corpus (tests/corpus/): every bad message is dead-lettered with its code,
//! every good message around them is applied, and the service never restarts.

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{dispatch, header, progress, wait_for_active_run, TestApp};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");

#[sqlx::test]
async fn every_corpus_message_is_dead_lettered_with_its_code_and_good_ones_still_apply(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    app.publish(&dispatch(
        "policy.sync",
        1,
        Some(10),
        json!({"policy_id": "corpus"}),
    ))
    .await;
    let run_id = wait_for_active_run(&app, "policy.sync").await;
    let mut reused = progress(
        "increment_summary_counts",
        run_id,
        json!({"counts": {"items": 1}}),
    );
    reused["command_id"] = json!("corpus-reused");
    app.publish(&reused).await;

    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{CORPUS}/manifest.json")).unwrap())
            .unwrap();
    let messages = manifest["messages"].as_array().unwrap();
    assert!(
        messages.len() >= 40,
        "the corpus holds at least 40 messages"
    );
    let bodies = messages.iter().enumerate().map(|(i, m)| {
        let raw = std::fs::read(format!("{CORPUS}/{}", m["file"].as_str().unwrap())).unwrap();
        (
            format!("corpus.{i}"),
            replace(&raw, b"__RUN_ID__", run_id.to_string().as_bytes()),
        )
    });
    let good = app.publish_interleaved_with_good(run_id, bodies).await;

    let letters = app.take_dead_letters(messages.len()).await;
    let mut wrong = Vec::new();
    for letter in &letters {
        let i: usize = header(&letter.properties, "x-oprun-routing-key")
            .unwrap()
            .strip_prefix("corpus.")
            .unwrap()
            .parse()
            .unwrap();
        let got = header(&letter.properties, "x-oprun-error-code").unwrap();
        if got != messages[i]["code"].as_str().unwrap() {
            wrong.push(format!(
                "{}: expected {}, got {got} ({})",
                messages[i]["file"],
                messages[i]["code"],
                header(&letter.properties, "x-oprun-error-message").unwrap_or_default()
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    let run = app
        .wait_for_run(run_id, "every good command", |r| {
            r.summary_counts.get("total") == good
        })
        .await;
    assert_eq!(run.summary_counts.get("items"), 1);
    assert_eq!(
        run.status.as_str(),
        "queued",
        "no bad transition got through"
    );
    assert_eq!(
        app.service().metrics.counter("oprun_reconnects_total", ""),
        0,
        "the service never restarted"
    );
    app.shutdown().await;
}

fn replace(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}
