//! The `oprun` binary: one-line errors and non-zero exits, identity vectors, legacy redirects.

use std::io::Write;
use std::process::{Command, Stdio};

use operation_runs::domain::{decode_command, CommandAction};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::helpers::{database_url_for, seed_scopes};

fn oprun(database: &str, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_oprun"))
        .args(args)
        .env("DATABASE_URL", database_url_for(database))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_published_identity_vectors_match() {
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/run_identity_hash.json"
    ))
    .unwrap();
    let doc: Value = serde_json::from_str(&file).unwrap();
    let vectors = doc["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 16);
    // Each command exactly as written in the file: re-serialising a parsed Value would round an
    // integer beyond 64 bits to a double, which is not what a producer sends.
    #[derive(serde::Deserialize)]
    struct RawVectors<'a> {
        #[serde(borrow)]
        vectors: Vec<RawVector<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct RawVector<'a> {
        #[serde(borrow)]
        command: &'a serde_json::value::RawValue,
    }
    let raw: RawVectors = serde_json::from_str(&file).unwrap();
    assert_eq!(raw.vectors.len(), vectors.len());
    for (v, raw) in vectors.iter().zip(&raw.vectors) {
        let body = raw.command.get().as_bytes();
        let command = decode_command(body, None).unwrap_or_else(|e| panic!("{}: {e}", v["name"]));
        let CommandAction::Dispatch(d) = command.action else {
            panic!("{} is not a dispatch", v["name"])
        };
        let canonical = operation_runs::domain::identity::canonical_identity_json(
            d.run_type,
            d.scope.workspace_id,
            d.scope.tenant_id,
            &d.context,
        )
        .unwrap();
        assert_eq!(canonical, v["canonical"].as_str().unwrap(), "{}", v["name"]);
        assert_eq!(
            d.identity_hash.as_str(),
            v["run_identity_hash"].as_str().unwrap(),
            "{}",
            v["name"]
        );
    }
    let (code, out, _) = oprun(
        "unused",
        &["identity-hash"],
        Some(&vectors[0]["command"].to_string()),
    );
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        vectors[0]["run_identity_hash"].as_str().unwrap()
    );
}

/// `oprun serve` with `args` and `env`, the old and new time variables of the environment
/// removed first: its exit code and stderr (it exits at argument parsing, before connecting).
fn serve_refusing(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_oprun"));
    command.arg("serve").args(args);
    for var in [
        "OPRUN_BATCH_WINDOW",
        "OPRUN_BATCH_WINDOW_MS",
        "OPRUN_RELAY_IDLE",
        "OPRUN_RELAY_IDLE_MS",
    ] {
        command.env_remove(var);
    }
    let out = command.envs(env.iter().copied()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_old_time_setting_and_its_new_name_together_are_refused_from_flags_or_the_environment() {
    for (args, env) in [
        (
            &["--batch-window", "5ms"][..],
            &[("OPRUN_BATCH_WINDOW_MS", "5")][..],
        ),
        (
            &[][..],
            &[
                ("OPRUN_BATCH_WINDOW", "5ms"),
                ("OPRUN_BATCH_WINDOW_MS", "5"),
            ][..],
        ),
        (
            &["--batch-window-ms", "5", "--batch-window", "5ms"][..],
            &[][..],
        ),
    ] {
        let (code, err) = serve_refusing(args, env);
        assert_eq!(code, 2, "{args:?} {env:?}: {err}");
        assert!(
            err.contains("cannot be used with")
                && err.contains("--batch-window <")
                && err.contains("--batch-window-ms <"),
            "{args:?} {env:?}: {err}"
        );
    }
    // The old variable alone is read, in its old unit: a bad value is refused under its name.
    let (code, err) = serve_refusing(&[], &[("OPRUN_RELAY_IDLE_MS", "50ms")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--relay-idle-ms"), "{err}");
    // The new one takes a unit and refuses a bare number.
    let (code, err) = serve_refusing(&[], &[("OPRUN_RELAY_IDLE", "50")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing unit"), "{err}");
}

#[sqlx::test]
async fn unknown_ids_and_bad_arguments_give_one_line_and_a_non_zero_exit(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    for args in [
        vec!["runs", "show", "424242"],
        vec!["runs", "list", "--status", "finished"],
        vec!["runs", "list", "--type", "nope.sync"],
        vec!["runs", "list", "--limit", "0"],
        vec!["legacy", "resolve", "backup_schedule_runs", "9"],
        vec!["legacy", "resolve", "users", "1"],
    ] {
        let (code, out, err) = oprun(&db, &args, None);
        assert_ne!(code, 0, "{args:?}");
        assert!(out.is_empty(), "{args:?}: {out}");
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains(" INFO "))
            .collect();
        assert!(!lines.is_empty() && lines.len() <= 3, "{args:?}: {err}");
    }
    let (code, _, err) = oprun(&db, &["identity-hash"], Some("{\"kind\": \"dispatch\"}"));
    assert_ne!(code, 0);
    assert!(err.contains("invalid_field"), "{err}");
}

#[sqlx::test]
async fn runs_list_and_legacy_resolve_read_the_database(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let pool: PgPool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(connect)
        .await
        .unwrap();
    seed_scopes(&pool).await;
    let hash = "c".repeat(64);
    let run: i64 = sqlx::query_scalar(
        "INSERT INTO operation_runs (workspace_id, tenant_id, type, run_identity_hash, context)
         VALUES (1, 10, 'backup_schedule.run_now', $1, '{\"backup_schedule_id\": 3}') RETURNING id",
    )
    .bind(&hash)
    .fetch_one(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO operation_runs (workspace_id, type, run_identity_hash) VALUES (2, 'policy.sync', $1)")
        .bind(&hash)
        .execute(&pool)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL operation_runs.legacy_import = 'on'")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO backup_schedule_runs (id, backup_schedule_id, tenant_id, scheduled_for, status, operation_run_id) VALUES (1, 3, 10, now(), 'ok', $1), (2, 3, 10, now(), 'old', NULL)")
        .bind(run)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    pool.close().await;

    let (code, out, err) = oprun(&db, &["runs", "list", "--workspace", "1"], None);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], run);
    let (_, table, _) = oprun(&db, &["runs", "list", "--format", "table"], None);
    assert!(table.lines().next().unwrap().starts_with("ID"), "{table}");
    assert_eq!(table.lines().count(), 3);

    let (_, show, _) = oprun(&db, &["runs", "show", &run.to_string()], None);
    let show: Value = serde_json::from_str(&show).unwrap();
    assert_eq!(show["related"], json!({"backup_schedule_id": 3}));
    assert_eq!(show["label"], "Backup (run now)");

    let (_, resolved, _) = oprun(
        &db,
        &["legacy", "resolve", "backup_schedule_runs", "1"],
        None,
    );
    let resolved: Value = serde_json::from_str(&resolved).unwrap();
    assert_eq!(
        (
            resolved["resolved"].as_str(),
            resolved["run"]["id"].as_i64()
        ),
        (Some("operation_run"), Some(run))
    );
    let (_, legacy, _) = oprun(
        &db,
        &["legacy", "resolve", "backup_schedule_runs", "2"],
        None,
    );
    let legacy: Value = serde_json::from_str(&legacy).unwrap();
    assert_eq!(legacy["resolved"], "legacy");
    assert_eq!(legacy["record"]["status"], "old");
}
