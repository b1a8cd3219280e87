//! Metrics an on-call engineer uses: runs by type and outcome, refusals by code, how long runs
//! wait to start and take to complete by type, the DLQ depth, active runs and the longest-idle
//! running run per type (polled gauges); the shipped Grafana dashboard and Prometheus alert rules
//! name only metrics the service exposes, and the alert rules pass promtool's check and their
//! scenarios (`ops/prometheus/alerts.test.yml`).

use std::collections::BTreeSet;

use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{dispatch, progress, wait_until, TestApp};

const OPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ops");

#[sqlx::test]
async fn runs_are_counted_by_type_and_outcome_refusals_by_code_and_gauges_follow(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let metrics = app.service().metrics.clone();
    let body = dispatch("policy.sync", 1, Some(10), json!({"policy_id": "m"}));
    app.publish(&body).await;
    let mut again = body.clone();
    again["command_id"] = json!("metrics-duplicate");
    app.publish(&again).await;
    app.publish(&dispatch("no.such_type", 1, Some(10), json!({})))
        .await;

    let run_id = crate::helpers::wait_for_active_run(&app, "policy.sync").await;
    let read = |name: &str, labels: &str| metrics.counter(name, labels);
    wait_until("the active-run and DLQ gauges", || async {
        (read("oprun_active_runs", "type=\"policy.sync\"") == 1
            && read("oprun_dlq_depth", "") == 1
            && read("oprun_runs_deduplicated_total", "type=\"policy.sync\"") == 1)
            .then_some(())
    })
    .await;
    assert_eq!(read("oprun_runs_created_total", "type=\"policy.sync\""), 1);
    assert_eq!(
        read(
            "oprun_commands_refused_total",
            "kind=\"dispatch\",code=\"unknown_type\""
        ),
        1
    );
    assert!(
        metrics
            .render()
            .contains("oprun_active_runs{type=\"inventory.sync\"} 0"),
        "every catalog type has its series"
    );

    for fields in [
        json!({"status": "running"}),
        json!({"status": "completed", "outcome": "partially_succeeded"}),
    ] {
        app.publish(&progress("update_run", run_id, fields)).await;
    }
    wait_until("the completion counted and the gauge back to 0", || async {
        (read(
            "oprun_runs_completed_total",
            "type=\"policy.sync\",outcome=\"partially_succeeded\"",
        ) == 1
            && read("oprun_active_runs", "type=\"policy.sync\"") == 0)
            .then_some(())
    })
    .await;
    // The start and the completion were timed, for their type only.
    assert_eq!(
        read(
            "oprun_run_dispatch_to_start_seconds_count",
            "type=\"policy.sync\""
        ),
        1
    );
    assert_eq!(
        read("oprun_run_duration_seconds_count", "type=\"policy.sync\""),
        1
    );
    let text = metrics.render();
    assert!(
        !text.contains("oprun_run_duration_seconds_count{type=\"inventory.sync\"}"),
        "{text}"
    );
    app.shutdown().await;
}

/// The value of the sample `name{labels}` in the exposition `text`, if there is one.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
}

#[sqlx::test]
async fn a_run_idle_past_its_expected_duration_raises_its_types_idle_ratio_above_one(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let metrics = app.service().metrics.clone();
    // policy.sync is expected to take 5 minutes; inventory.sync 10.
    app.publish(&dispatch(
        "policy.sync",
        1,
        Some(10),
        json!({"policy_id": "idle"}),
    ))
    .await;
    app.publish(&dispatch(
        "inventory.sync",
        1,
        Some(10),
        json!({"selection": "queued"}),
    ))
    .await;
    let run_id = crate::helpers::wait_for_active_run(&app, "policy.sync").await;
    crate::helpers::wait_for_active_run(&app, "inventory.sync").await;
    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "running"}),
    ))
    .await;
    let ratio = |run_type: &'static str| {
        let metrics = metrics.clone();
        move || {
            let text = metrics.render();
            sample(
                &text,
                "oprun_run_idle_ratio_max",
                &format!("type=\"{run_type}\""),
            )
        }
    };
    wait_until("the running run seen, just changed", || async {
        let running =
            sqlx::query_scalar::<_, String>("SELECT status FROM operation_runs WHERE id = $1")
                .bind(run_id)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        (running == "running").then_some(())
    })
    .await;
    // Ten minutes without a change: twice its type's expected duration. A queued run's idle
    // time is not counted (its wait is the dispatch-to-start histogram's).
    sqlx::query(
        "UPDATE operation_runs SET updated_at = now() - interval '10 minutes'
         WHERE type IN ('policy.sync', 'inventory.sync')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let idle = wait_until("the idle ratio polled", || async {
        ratio("policy.sync")().filter(|r| *r > 1.0)
    })
    .await;
    assert!((1.9..2.2).contains(&idle), "ratio {idle}");
    assert_eq!(ratio("inventory.sync")(), Some(0.0));
    assert_eq!(ratio("restore.execute")(), Some(0.0), "every catalog type");

    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "completed", "outcome": "succeeded"}),
    ))
    .await;
    wait_until(
        "the ratio back to 0 once no run of the type runs",
        || async { (ratio("policy.sync")() == Some(0.0)).then_some(()) },
    )
    .await;
    app.shutdown().await;
}

/// The metric names a Prometheus server sees, from the `# TYPE` lines of the exposition.
fn exposed_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

fn referenced_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("oprun_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_dashboard_and_alert_rules_name_only_metrics_the_service_exposes() {
    // Labelled families appear once they have a series: give each one.
    let metrics = operation_runs::service::metrics::Metrics::default();
    metrics.command("dispatch", "applied");
    metrics.refused("dispatch", "unknown_type");
    metrics.run_created("policy.sync");
    metrics.run_deduplicated("policy.sync");
    metrics.run_completed("policy.sync", "failed");
    metrics.relay_published("event", 1);
    metrics.relay_nacked("event", 1);
    metrics.active_runs([("policy.sync", 0)]);
    metrics.idle_ratios([("policy.sync", 0.0)]);
    metrics.dlq_depth(0);
    metrics.observe_dispatch_to_start("policy.sync", std::time::Duration::from_secs(1));
    metrics.observe_run_duration("policy.sync", std::time::Duration::from_secs(1));
    let exposed = exposed_names(&metrics.render());
    assert!(exposed.contains("oprun_commands_total"), "{exposed:?}");
    let dashboard = std::fs::read_to_string(format!("{OPS}/grafana/operation-runs.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(!parsed["panels"].as_array().unwrap().is_empty());
    let alerts = std::fs::read_to_string(format!("{OPS}/prometheus/alerts.yml")).unwrap();
    for (file, text) in [("dashboard", &dashboard), ("alerts", &alerts)] {
        let unknown: Vec<String> = referenced_names(text)
            .into_iter()
            // Alert names are OprunXxx (capitalised), so every oprun_ word is a metric.
            .filter(|n| !exposed.contains(n))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} names unknown metrics: {unknown:?}"
        );
    }
    // The situations on-call is paged for.
    for needle in [
        "oprun_dlq_depth",
        "oprun_outbox_oldest_age_seconds",
        "oprun_consumer_running",
        "oprun_reconnects_total",
        "oprun_reaped_runs_total",
        "oprun_run_idle_ratio_max",
    ] {
        assert!(alerts.contains(needle), "an alert on {needle}");
    }
}

/// Runs `promtool ARGS…` in ops/prometheus; panics with its output unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(format!("{OPS}/prometheus"))
        .output()
        .expect("promtool is installed (apt-get install prometheus; scripts/test does it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_pass_promtools_check_and_their_paging_scenarios() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let scenarios = std::fs::read_to_string(format!("{OPS}/prometheus/alerts.test.yml")).unwrap();
    for alert in ["OprunDeadLetterQueueGrowing", "OprunRunIdle"] {
        assert!(
            scenarios.contains(&format!("alertname: {alert}")),
            "a scenario for {alert}"
        );
    }
    let tested = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}
