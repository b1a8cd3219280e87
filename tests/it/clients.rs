//! The PHP and Python clients against the real service: each test starts the service in-process
//! (its own database and namespace), then runs the client's own test suite (PHPUnit, pytest) or
//! an example script as a child process, pointed at that service through the environment.
//!
//! The interpreters are `phpunit`, `php` and `python3` from `PATH` (override with
//! `OPRUN_PHPUNIT`, `OPRUN_PHP`, `OPRUN_PYTHON`); `.ci/run` installs them and pika/pytest.
//! The Python package is imported from the working tree (`PYTHONPATH=clients/python`), so the
//! tests never run a stale installed copy.
//!
//! The workers' tests (PHPUnit group `worker`, pytest mark `worker`) run apart, against a service
//! that hands jobs off; the rest of each suite runs against one that does not (its runs are
//! executed in-line by the tests, which a hand-off would race).
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

/// `program args` with the service's coordinates in its environment, in the repository's root.
fn command_against(app: &TestApp, program: &str, args: &[&str]) -> tokio::process::Command {
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
    command
}

/// Fails the test with the child's output unless it exited 0; returns its stdout.
fn succeeded(program: &str, args: &[&str], output: std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{program} {args:?} exited {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    stdout
}

/// Runs `program args` with the service's coordinates in its environment; fails the test with
/// the child's output unless it exits 0. Returns its stdout.
async fn run_against(app: &TestApp, program: &str, args: &[&str]) -> String {
    let output = tokio::time::timeout(CHILD_DEADLINE, command_against(app, program, args).output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish in {CHILD_DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("cannot run {program} (is it installed? see .ci/run): {e}"));
    succeeded(program, args, output)
}

/// Runs the Python client's tests selected by the mark expression `marks` against `app`.
async fn pytest(app: &TestApp, marks: &str) -> String {
    let args = [
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        marks,
        "clients/python/tests",
    ];
    run_against(app, &program("OPRUN_PYTHON", "python3"), &args).await
}

#[sqlx::test]
async fn the_php_client_passes_its_phpunit_suite_against_the_service(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let out = run_against(
        &app,
        &program("OPRUN_PHPUNIT", "phpunit"),
        &["-c", "clients/php/phpunit.xml", "--exclude-group", "worker"],
    )
    .await;
    // Skipped or incomplete tests also exit 0: insist on a clean run.
    assert!(out.contains("OK ("), "{out}");
    app.shutdown().await;
}

/// A service that hands jobs off to executors (the workers' suites need one; the other suites
/// execute their runs in-line, which a hand-off would race).
async fn app_with_hand_off(pool: PgPool) -> TestApp {
    let mut settings = crate::helpers::test_settings();
    settings.jobs.hand_off_jobs = true;
    TestApp::spawn_with(pool, settings).await
}

/// Each client's `Worker` (the `worker` group of PHPUnit, the `worker` mark of pytest): a job
/// executed once with its progress and acked after its completion, a cancel that reaches the
/// running handler and completes the run `cancelled`, a queued run's cancel that never reaches
/// the handler, failures and a throwing handler.
#[sqlx::test]
async fn the_php_and_python_workers_execute_each_job_once_and_honour_a_cancel(pool: PgPool) {
    let app = app_with_hand_off(pool).await;
    let php = run_against(
        &app,
        &program("OPRUN_PHPUNIT", "phpunit"),
        &["-c", "clients/php/phpunit.xml", "--group", "worker"],
    )
    .await;
    assert!(php.contains("OK (4 tests"), "{php}");
    let python = pytest(&app, "worker").await;
    assert!(
        python.contains("4 passed") && !python.contains("skipped"),
        "{python}"
    );
    let unfinished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM operation_runs WHERE status <> 'completed'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(unfinished, 0, "every run the workers took is completed");
    app.shutdown().await;
}

/// Runs PHPUnit with `config` against `app` and a viewer whose live stream the platform's
/// origin (`http://platform.test`, as `OPRUN_VIEWER_ALLOWED_ORIGIN`) may read; returns its output.
async fn phpunit_with_viewer(app: &TestApp, config: &str) -> String {
    use crate::viewer_api::{Viewer, SECRET};
    let platform = "http://platform.test";
    let viewer = Viewer::spawn_with_origins(app.pool.clone(), &[platform]).await;
    let (phpunit, args) = (program("OPRUN_PHPUNIT", "phpunit"), ["-c", config]);
    let mut command = command_against(app, &phpunit, &args);
    command
        .env("OPRUN_VIEWER_URL", format!("{}/", viewer.base))
        .env("OPRUN_VIEWER_SECRET", SECRET)
        .env("OPRUN_VIEWER_ALLOWED_ORIGIN", platform);
    let output = tokio::time::timeout(CHILD_DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("{config} did not finish in {CHILD_DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("cannot run {phpunit}: {e}"));
    succeeded(&phpunit, &args, output)
}

/// The Laravel package (clients/laravel) inside a minimal Laravel application booted from
/// Debian's php-laravel-framework: its config merged and publishable, the facade over the
/// container's service, a dispatch and a refusal through it, a dispatch by the generated
/// `OperationRunType`, a job executed by `operation-runs:work` whose events
/// `operation-runs:listen` dispatches as Laravel events, `operation-runs:status` read from the
/// viewer, and the progress component rendered, its stream read as the platform's origin. The
/// service hands jobs off (the suite's worker executes them).
#[sqlx::test]
async fn the_laravel_package_passes_its_phpunit_suite_in_a_laravel_application(pool: PgPool) {
    let app = app_with_hand_off(pool).await;
    let out = phpunit_with_viewer(&app, "clients/laravel/phpunit.xml").await;
    assert!(out.contains("OK (10 tests"), "{out}");
    app.shutdown().await;
}

/// The example application (clients/laravel/example-app), booted as an application is (its
/// `bootstrap/app.php`, the console kernel, the package discovered from
/// `vendor/composer/installed.json`): its feature tests dispatch through the facade, execute
/// through `operation-runs:work` with progress, hear the completion as a Laravel event, cancel a
/// running run and see the handler stop, and render the progress component in a page.
#[sqlx::test]
async fn the_example_application_passes_its_feature_tests(pool: PgPool) {
    let app = app_with_hand_off(pool).await;
    let out = phpunit_with_viewer(&app, "clients/laravel/example-app/phpunit.xml").await;
    assert!(out.contains("OK (4 tests"), "{out}");
    app.shutdown().await;
}

#[sqlx::test]
async fn the_python_client_passes_its_pytest_suite_against_the_service(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let out = pytest(&app, "not worker").await;
    assert!(out.contains(" passed") && !out.contains("skipped"), "{out}");
    app.shutdown().await;
}

/// Each client's examples as documented (decision 0087): its executor (`InventoryWorker.php`,
/// `inventory_worker.py`) is started first and told how many jobs to execute, then its
/// dispatching examples (`SyncInventoryJob.php`; `sync_inventory.py` and the asyncio
/// `sync_inventory_async.py`) dispatch and follow their run's events until the executor completed
/// it. None of them both dispatches and executes: each run is executed once, its counts not
/// doubled.
#[sqlx::test]
async fn the_examples_dispatch_and_their_executor_executes_each_run_once(pool: PgPool) {
    use tokio::io::AsyncBufReadExt;

    let app = app_with_hand_off(pool).await;
    let php = program("OPRUN_PHP", "php");
    let python = program("OPRUN_PYTHON", "python3");
    let clients: [(&str, Vec<&str>, Vec<&str>); 2] = [
        (
            &php,
            vec!["clients/php/examples/InventoryWorker.php", "1"],
            vec!["clients/php/examples/SyncInventoryJob.php"],
        ),
        (
            &python,
            vec![
                "clients/python/examples/inventory_worker.py",
                "--max-jobs",
                "2",
            ],
            vec![
                "clients/python/examples/sync_inventory.py",
                "clients/python/examples/sync_inventory_async.py",
            ],
        ),
    ];
    for (program, executor, dispatchers) in clients {
        let mut command = command_against(&app, program, &executor);
        command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut worker = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        // Its job queue is declared once it says so: the dispatches' jobs wait in it.
        let mut lines = tokio::io::BufReader::new(worker.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(CHILD_DEADLINE, lines.next_line())
            .await
            .expect("the executor did not get ready")
            .unwrap();
        assert_eq!(first.as_deref(), Some("ready"), "{executor:?}");
        for script in &dispatchers {
            let out = run_against(&app, program, &[script]).await;
            assert!(
                out.contains("operation_run.queued #1")
                    && out.contains("operation_run.completed #")
                    && out.contains("outcome: partially_succeeded"),
                "{script}: {out}"
            );
        }
        let rest = tokio::time::timeout(CHILD_DEADLINE, async {
            let mut rest = String::new();
            while let Some(line) = lines.next_line().await.unwrap() {
                rest.push_str(&line);
                rest.push('\n');
            }
            rest
        })
        .await
        .expect("the executor did not exit after its jobs");
        let status = worker.wait().await.unwrap();
        assert!(status.success(), "{executor:?} exited {status}: {rest}");
        assert!(
            rest.contains(&format!("executed {} job(s)", dispatchers.len())),
            "{executor:?}: {rest}"
        );
    }
    let runs: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
        "SELECT status, outcome, summary_counts FROM operation_runs WHERE type = 'inventory.sync'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let once = serde_json::json!({"total": 3, "processed": 3, "succeeded": 2, "failed": 1});
    assert_eq!(
        runs,
        vec![("completed".into(), "partially_succeeded".into(), once); 3]
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

/// The Laravel package's `OperationRunType` and `OperationCatalog` (clients/laravel/src/Catalog)
/// are what `oprun catalog --format php --php-namespace 'OperationRuns\Laravel\Catalog'` writes
/// now: a type added to the registry and not to the package's copy fails here. A namespace that
/// is not one is refused.
#[tokio::test]
async fn the_laravel_packages_enum_and_catalog_are_the_current_catalog_output() {
    let dir = std::env::temp_dir().join(format!("oprun-catalog-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_oprun"))
        .args(["catalog", "--format", "php", "--php-namespace"])
        .arg("OperationRuns\\Laravel\\Catalog")
        .arg("--out-dir")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    for file in ["OperationRunType.php", "OperationCatalog.php"] {
        let current = std::fs::read_to_string(dir.join(file)).unwrap();
        let committed =
            std::fs::read_to_string(format!("{ROOT}/clients/laravel/src/Catalog/{file}")).unwrap();
        assert!(
            committed == current,
            "clients/laravel/src/Catalog/{file} is stale: regenerate it with `cargo run -q -- \
             catalog --format php --php-namespace 'OperationRuns\\Laravel\\Catalog' --out-dir \
             clients/laravel/src/Catalog`"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_oprun"))
        .args(["catalog", "--format", "php", "--php-namespace", "App;echo"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is not a PHP namespace"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// What each client's "View run" link is: a one-line program that prints
/// `viewUrl`/`view_url` for run `OPRUN_RUN_ID` of tenant 10, configured with the viewer's URL and
/// secret from the environment.
fn view_url_programs() -> [(String, Vec<String>); 2] {
    [
        (
            program("OPRUN_PHP", "php"),
            vec![
                "-r".into(),
                "require 'clients/php/autoload.php';
                 $s = new OperationRuns\\OperationRunService('amqp://127.0.0.1', 'operation_runs',
                     'view-url', getenv('OPRUN_VIEWER_URL'), getenv('OPRUN_VIEWER_SECRET'));
                 echo $s->viewUrl((int) getenv('OPRUN_RUN_ID'), 1, [10]);"
                    .into(),
            ],
        ),
        (
            program("OPRUN_PYTHON", "python3"),
            vec![
                "-c".into(),
                "import os
from operation_runs_client import Client
c = Client('amqp://127.0.0.1', viewer_url=os.environ['OPRUN_VIEWER_URL'],
           viewer_secret=os.environ['OPRUN_VIEWER_SECRET'])
print(c.view_url(int(os.environ['OPRUN_RUN_ID']), 1, [10]), end='')"
                    .into(),
            ],
        ),
    ]
}

/// A link minted by the PHP client's `viewUrl` and by the Python client's `view_url` signs a
/// browser in to its run's page; with that sign-in, another run of the same tenant is not found
/// and the list holds the link's run alone.
#[sqlx::test]
async fn a_view_link_minted_by_each_client_opens_its_run_and_no_other(pool: PgPool) {
    use crate::viewer_api::{insert_run, Viewer, SECRET};
    crate::helpers::seed_scopes(&pool).await;
    let runs = ("running", "pending");
    let run = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        runs,
        2,
        serde_json::json!({}),
    )
    .await;
    let other = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        runs,
        1,
        serde_json::json!({}),
    )
    .await;
    let viewer = Viewer::spawn(pool).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (program, args) in view_url_programs() {
        let output = tokio::process::Command::new(&program)
            .args(&args)
            .current_dir(ROOT)
            .env("PYTHONPATH", format!("{ROOT}/clients/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("OPRUN_VIEWER_URL", format!("{}/", viewer.base))
            .env("OPRUN_VIEWER_SECRET", SECRET)
            .env("OPRUN_RUN_ID", run.to_string())
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        let url = String::from_utf8(output.stdout).unwrap();
        assert!(
            output.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (path, _) = url.split_once("?token=").unwrap_or_else(|| panic!("{url}"));
        assert_eq!(path, format!("{}/runs/{run}", viewer.base));

        let signed_in = http.get(&url).send().await.unwrap();
        assert!(signed_in.status().is_redirection(), "{program}: {url}");
        let cookie = signed_in.headers()[reqwest::header::SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let get = |path: String| {
            http.get(format!("{}{path}", viewer.base))
                .header("cookie", &cookie)
                .send()
        };
        let page = get(format!("/runs/{run}")).await.unwrap();
        assert_eq!(page.status(), reqwest::StatusCode::OK, "{program}");
        for path in [format!("/runs/{other}"), format!("/v1/runs/{other}")] {
            let status = get(path.clone()).await.unwrap().status();
            assert_eq!(status, reqwest::StatusCode::NOT_FOUND, "{program} {path}");
        }
        let list: serde_json::Value = get("/v1/runs".into()).await.unwrap().json().await.unwrap();
        let ids: Vec<i64> = list["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, vec![run], "{program}");
    }
}
