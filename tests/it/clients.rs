//! The PHP and Python clients against the real service: each test starts the service in-process
//! (its own database and namespace), then runs the client's own test suite (PHPUnit, pytest) or
//! an example script as a child process, pointed at that service through the environment.
//!
//! The interpreters are `phpunit`, `php` and `python3` from `PATH` (override with
//! `OPRUN_PHPUNIT`, `OPRUN_PHP`, `OPRUN_PYTHON`); `.ci/run` installs them and pika/pytest.
//! The Python package is imported from the working tree (`PYTHONPATH=clients/python`), so the
//! tests never run a stale installed copy.
//!
//! The suites' connection tests (`ConnectionTest.php`, `test_connection.py`) drop the client's
//! connection from the broker's side with `rabbitmqctl close_connection`, found by the
//! client-provided connection name each test gives its client (never another test's), and use
//! URL lists whose other nodes are closed local ports: `rabbitmqctl` must run on this host.

use std::time::Duration;

use sqlx::PgPool;

use crate::helpers::TestApp;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// A client suite is a few dozen round trips; this bound only stops a hung child.
const CHILD_DEADLINE: Duration = Duration::from_secs(180);

fn program(env_var: &str, default: &str) -> String {
    std::env::var(env_var).unwrap_or_else(|_| default.to_owned())
}

/// Runs `program args` with the service's coordinates in its environment; fails the test with
/// the child's output unless it exits 0. Returns its stdout.
async fn run_against(app: &TestApp, program: &str, args: &[&str]) -> String {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(ROOT)
        .env("AMQP_URL", app.config.amqp_url_list())
        .env("OPRUN_NAMESPACE", app.topology.namespace())
        // seed_scopes: workspace 1 holds tenants 10 and 11; user 5.
        .env("OPRUN_WORKSPACE_ID", "1")
        .env("OPRUN_TENANT_ID", "10")
        .env("OPRUN_OTHER_TENANT_ID", "11")
        .env("PYTHONPATH", format!("{ROOT}/clients/python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // For the Python client's check of its catalog copy against `oprun catalog`.
        .env("OPRUN_BIN", env!("CARGO_BIN_EXE_oprun"))
        .kill_on_drop(true);
    let output = tokio::time::timeout(CHILD_DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish in {CHILD_DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("cannot run {program} (is it installed? see .ci/run): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{program} {args:?} exited {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    stdout
}

#[sqlx::test]
async fn the_php_client_passes_its_phpunit_suite_against_the_service(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let out = run_against(
        &app,
        &program("OPRUN_PHPUNIT", "phpunit"),
        &["-c", "clients/php/phpunit.xml"],
    )
    .await;
    // Skipped or incomplete tests also exit 0: insist on a clean run.
    assert!(out.contains("OK ("), "{out}");
    app.shutdown().await;
}

#[sqlx::test]
async fn the_python_client_passes_its_pytest_suite_against_the_service(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let out = run_against(
        &app,
        &program("OPRUN_PYTHON", "python3"),
        &[
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "clients/python/tests",
        ],
    )
    .await;
    assert!(out.contains(" passed") && !out.contains("skipped"), "{out}");
    app.shutdown().await;
}

#[sqlx::test]
async fn the_example_scripts_dispatch_report_progress_complete_and_receive_their_events(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    for (program, script) in [
        (
            program("OPRUN_PHP", "php"),
            "clients/php/examples/SyncInventoryJob.php",
        ),
        (
            program("OPRUN_PYTHON", "python3"),
            "clients/python/examples/sync_inventory.py",
        ),
    ] {
        let out = run_against(&app, &program, &[script]).await;
        assert!(
            out.contains("operation_run.queued #1")
                && out.contains("operation_run.completed #")
                && out.contains("outcome: partially_succeeded"),
            "{script}: {out}"
        );
    }
    let outcomes: Vec<(String, String)> =
        sqlx::query_as("SELECT status, outcome FROM operation_runs WHERE type = 'inventory.sync'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        outcomes,
        vec![("completed".into(), "partially_succeeded".into()); 2]
    );
    app.shutdown().await;
}

/// `oprun catalog --format php` writes files PHP loads, with every type of the registry.
#[tokio::test]
async fn the_php_catalog_output_is_valid_php_with_every_type() {
    let dir = std::env::temp_dir().join(format!("oprun-catalog-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_oprun"))
        .args(["catalog", "--format", "php", "--out-dir"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    let script = format!(
        "require '{0}/OperationRunType.php'; require '{0}/OperationCatalog.php';
         foreach (App\\Support\\OperationRunType::cases() as $t) {{
             echo $t->value, '|', App\\Support\\OperationCatalog::label($t), '|',
                  implode(',', App\\Support\\OperationCatalog::identityKeys($t)), '|',
                  App\\Support\\OperationCatalog::expectedDurationSeconds($t), \"\\n\";
         }}",
        dir.display()
    );
    let output = tokio::process::Command::new(program("OPRUN_PHP", "php"))
        .args(["-r", &script])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected: String = operation_runs::domain::OPERATION_CATALOG
        .iter()
        .map(|e| {
            format!(
                "{}|{}|{}|{}\n",
                e.name,
                e.label,
                e.identity_keys.join(","),
                e.expected_duration.as_secs()
            )
        })
        .collect();
    assert_eq!(stdout, expected);
    std::fs::remove_dir_all(&dir).unwrap();
}
