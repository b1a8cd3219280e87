//! Least privilege and secrets: the three namespace users can do their job and nothing else,
//! and credentials in URLs never reach the logs.

use std::process::Stdio;
use std::time::Duration;

use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use operation_runs::broker::connection::connect;
use operation_runs::broker::publisher::ConfirmPublisher;
use operation_runs::client::{DispatchRequest, Producer};
use operation_runs::config::Config;
use operation_runs::service::Service;
use operation_runs::store::dead_letters;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use crate::helpers::{database_url_for, test_settings, wait_until, TestApp};

fn url_for(user: &str, password: &str) -> String {
    format!("amqp://{user}:{password}@127.0.0.1:5672/%2f")
}

fn users(namespace: &str, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_oprun"))
        .args(["topology", "users"])
        .args(extra)
        .env("OPRUN_NAMESPACE", namespace)
        .env("OPRUN_PRODUCER_PASSWORD", "producer-pw")
        .env("OPRUN_SERVICE_PASSWORD", "service-pw")
        .env("OPRUN_SUBSCRIBER_PASSWORD", "subscriber-pw")
        .output()
        .unwrap()
}

#[sqlx::test]
async fn each_namespace_user_can_do_its_job_and_nothing_else(
    _o: PgPoolOptions,
    connect_options: PgConnectOptions,
) {
    let pool = |n| {
        PgPoolOptions::new()
            .max_connections(n)
            .connect_lazy_with(connect_options.clone())
    };
    let mut app = TestApp::without_service(pool(2)).await;
    let ns = app.topology.namespace().to_owned();
    let created = users(&ns, &[]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );

    // The service runs with its own user: consume, dead-letter, reply, publish events.
    let service_config = Config {
        database_url: String::new().into(),
        amqp_url: vec![url_for(&format!("{ns}.service"), "service-pw").into()],
        namespace: ns.clone(),
        quorum_initial_group_size: None,
    };
    let service = Service::new(
        pool(3),
        app.topology.clone(),
        &service_config,
        &test_settings(),
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let (s, stop) = (service.clone(), stop.clone());
        async move { s.run(stop).await }
    });
    wait_until("the service user to consume", || async {
        service
            .health
            .consumer_running
            .load(std::sync::atomic::Ordering::Relaxed)
            .then_some(())
    })
    .await;

    // The subscriber binds its own queue to the events exchange and reads it.
    let subscriber = connect(
        &url_for(&format!("{ns}.subscriber"), "subscriber-pw"),
        "test subscriber",
    )
    .await
    .unwrap();
    let sub_channel = subscriber.create_channel().await.unwrap();
    let sub_queue = format!("{ns}.subscriber.audit");
    sub_channel
        .queue_declare(
            sub_queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    sub_channel
        .queue_bind(
            sub_queue.as_str().into(),
            app.topology.events_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    // The producer dispatches and gets its reply.
    let producer_url = url_for(&format!("{ns}.producer"), "producer-pw");
    let producer = Producer::connect(&producer_url, &ns).await.unwrap();
    let request = DispatchRequest {
        run_type: "policy.sync".into(),
        workspace_id: 1,
        tenant_id: Some(10),
        user_id: None,
        initiator_name: None,
        context: json!({"policy_id": 1}),
    };
    let reply = producer
        .dispatch_and_wait(&request, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(!reply.deduplicated);
    wait_until("the event to reach the subscriber", || async {
        let q = sub_channel
            .queue_declare(
                sub_queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        (q.message_count() >= 1).then_some(())
    })
    .await;

    // The producer cannot read commands nor publish events.
    let as_producer = connect(&producer_url, "test producer").await.unwrap();
    let denied = as_producer
        .create_channel()
        .await
        .unwrap()
        .basic_consume(
            app.topology.commands_queue().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert!(denied.unwrap_err().to_string().contains("ACCESS_REFUSED"));
    let publisher = ConfirmPublisher::open(&as_producer).await.unwrap();
    let sent = publisher
        .publish(
            &app.topology.events_exchange(),
            "",
            b"{}",
            Default::default(),
            false,
        )
        .await;
    assert!(sent.is_err(), "the producer must not publish events");

    // The subscriber cannot publish commands.
    let publisher = ConfirmPublisher::open(&subscriber).await.unwrap();
    let sent = publisher
        .publish(
            &app.topology.commands_exchange(),
            "dispatch",
            b"{}",
            Default::default(),
            false,
        )
        .await;
    assert!(sent.is_err(), "the subscriber must not publish commands");

    producer.close().await;
    stop.cancel();
    running.await.unwrap();
    let _ = subscriber.close(200, "done".into()).await;
    let _ = as_producer.close(200, "done".into()).await;
    assert!(users(&ns, &["--delete"]).status.success());
    app.stop_all().await;
    app.shutdown().await;
}

#[sqlx::test]
async fn credentials_in_urls_never_reach_the_logs(
    _o: PgPoolOptions,
    connect_options: PgConnectOptions,
) {
    let database = connect_options.get_database().unwrap().to_owned();
    let mut db_url = url::Url::parse(&database_url_for(&database)).unwrap();
    db_url.set_username("postgres").unwrap();
    db_url.set_password(Some("pg-Sup3rS3cret")).unwrap(); // trust auth: accepted and ignored
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_oprun"))
        .args(["serve", "--metrics-addr", "off", "--http-addr", "off"])
        .env("DATABASE_URL", db_url.as_str())
        .env(
            "AMQP_URL",
            "amqp://guest:amqp-Sup3rS3cret@127.0.0.1:5672/%2f",
        ) // wrong password: errors get logged
        .env("OPRUN_NAMESPACE", crate::helpers::unique_namespace())
        .env("OPRUN_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Collect both streams until the broker's refusal was logged (by then the service connected
    // to the database and tried the broker: both URLs went through the logger), rather than for
    // a fixed time.
    let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|stream| {
        let logs = logs.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut logs = logs.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        })
    })
    .collect();
    wait_until("the broker refusal in the logs", || {
        let seen = logs.lock().unwrap().contains("reconnecting");
        async move { seen.then_some(()) }
    })
    .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    for reader in readers {
        reader.await.unwrap();
    }
    let logs = logs.lock().unwrap().clone();
    assert!(
        logs.contains("reconnecting"),
        "the broker refusal was logged: {logs}"
    );
    assert!(
        !logs.contains("Sup3rS3cret"),
        "a password reached the logs:\n{logs}"
    );
}

/// Three roles of `ops/postgres/roles.sql` with names of their own (roles are the whole
/// cluster's), dropped again when this is dropped, whatever the test did.
struct DatabaseRoles {
    owner: String,
    service: String,
    reader: String,
    admin: PgConnectOptions,
}

impl DatabaseRoles {
    /// Runs `ops/postgres/roles.sql` with unique role names on the database of `admin` (a
    /// superuser's options), as an operator would with psql.
    async fn apply(admin: &PgConnectOptions) -> Self {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let roles = Self {
            owner: format!("oprun_owner_{suffix}"),
            service: format!("oprun_service_{suffix}"),
            reader: format!("oprun_reader_{suffix}"),
            admin: admin.clone(),
        };
        let mut conn = sqlx::ConnectOptions::connect(admin).await.unwrap();
        for (setting, name) in [
            ("oprun.owner_role", &roles.owner),
            ("oprun.service_role", &roles.service),
            ("oprun.reader_role", &roles.reader),
        ] {
            sqlx::query("SELECT set_config($1, $2, false)")
                .bind(setting)
                .bind(name)
                .execute(&mut conn)
                .await
                .unwrap();
        }
        // Twice: it is idempotent (what re-running it after an upgrade relies on).
        for _ in 0..2 {
            sqlx::raw_sql(include_str!("../../ops/postgres/roles.sql"))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        roles
    }

    /// The database URL of `role` on the test database.
    fn url(&self, role: &str) -> String {
        let mut url =
            url::Url::parse(&database_url_for(self.admin.get_database().unwrap())).unwrap();
        url.set_username(role).unwrap();
        url.to_string()
    }

    async fn connect(&self, role: &str) -> sqlx::PgConnection {
        sqlx::Connection::connect(&self.url(role)).await.unwrap()
    }
}

impl Drop for DatabaseRoles {
    fn drop(&mut self) {
        let (admin, owner, service, reader) = (
            self.admin.clone(),
            self.owner.clone(),
            self.service.clone(),
            self.reader.clone(),
        );
        // Drop runs inside the test's runtime: clean up on a runtime of its own.
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let mut conn: sqlx::PgConnection =
                        sqlx::ConnectOptions::connect(&admin).await.unwrap();
                    sqlx::raw_sql(&format!(
                        "REASSIGN OWNED BY \"{owner}\" TO CURRENT_USER;
                         DROP OWNED BY \"{owner}\", \"{service}\", \"{reader}\";
                         DROP ROLE \"{owner}\", \"{service}\", \"{reader}\";"
                    ))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                })
        })
        .join()
        .unwrap();
    }
}

/// The SQLSTATE of `result`'s error (`None` when it succeeded).
fn sqlstate<T>(result: Result<T, sqlx::Error>) -> Option<String> {
    match result {
        Ok(_) => None,
        Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
        Err(e) => panic!("not a database error: {e}"),
    }
}

/// `oprun serve` connects as the service role of `ops/postgres/roles.sql` to a database the
/// owner's role migrated: it starts (the migration check needs no DDL), reads the viewer's
/// secret, applies commands, relays, answers the viewer, and its pruner deletes (and leaves
/// VACUUM, which only an owner may run, to autovacuum with one warning). That role cannot
/// change or remove the secret, nor create anything; the reader's cannot read the secret.
#[sqlx::test]
async fn serve_runs_as_the_least_privileged_service_role_and_the_secret_stays_read_only(
    _o: PgPoolOptions,
    connect_options: PgConnectOptions,
) {
    let app = TestApp::without_service(
        PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy_with(connect_options.clone()),
    )
    .await;
    let roles = DatabaseRoles::apply(&connect_options).await;

    // The owner's role: migrations already applied (a no-op) and the viewer's secret made.
    let migrated = std::process::Command::new(env!("CARGO_BIN_EXE_oprun"))
        .arg("migrate")
        .env("DATABASE_URL", roles.url(&roles.owner))
        .env("OPRUN_NAMESPACE", app.topology.namespace())
        .output()
        .unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_oprun"))
        .args(["serve", "--metrics-addr", "off", "--http-addr", &addr])
        .args(["--relay-idle", "50ms", "--hand-off-jobs", "false"])
        .args(["--run-retention", "1s", "--event-retention", "1s"])
        .args(["--inbox-retention", "1s", "--prune-interval", "300ms"])
        .env("DATABASE_URL", roles.url(&roles.service))
        .env("OPRUN_NAMESPACE", app.topology.namespace())
        .env_remove("OPRUN_API_SECRET")
        .env("OPRUN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = tokio::spawn({
        let (stream, stderr) = (serve.stderr.take().unwrap(), stderr.clone());
        async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut stderr = stderr.lock().unwrap();
                stderr.push_str(&line);
                stderr.push('\n');
            }
        }
    });

    // Commands apply: a run is created; the viewer shows it through a link `oprun token`
    // printed with the same role (it only reads the secret).
    let run_id = app.create_policy_run(3).await;
    let token = std::process::Command::new(env!("CARGO_BIN_EXE_oprun"))
        .args(["token", "--workspace", "1", "--http-addr", &addr])
        .env("DATABASE_URL", roles.url(&roles.service))
        .env_remove("OPRUN_API_SECRET")
        .output()
        .unwrap();
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let link = String::from_utf8(token.stdout)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    let (http, cookie) = crate::viewer_api::sign_in_by_link(&link).await;
    let cookie = cookie.as_str();
    let list = http
        .get(format!("http://{addr}/runs"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), reqwest::StatusCode::OK);
    assert!(list
        .text()
        .await
        .unwrap()
        .contains(&format!("href=\"/runs/{run_id}\"")));

    // The run completes; its events are relayed; the pruner deletes it, events and inbox rows.
    app.publish(&crate::helpers::progress(
        "update_run",
        run_id,
        json!({"status": "completed", "outcome": "succeeded"}),
    ))
    .await;
    app.wait_for_count(
        &format!("SELECT count(*) FROM operation_runs WHERE id = {run_id}"),
        0,
    )
    .await;
    app.wait_for_count("SELECT count(*) FROM processed_commands", 0)
        .await;
    // Two passes more at least, then: one warning about VACUUM, nothing refused.
    tokio::time::sleep(Duration::from_millis(900)).await;
    serve.start_kill().unwrap();
    serve.wait().await.unwrap();
    reader.await.unwrap();
    let stderr = stderr.lock().unwrap().clone();
    assert_eq!(
        stderr
            .matches("the pruner does not VACUUM these tables")
            .count(),
        1,
        "{stderr}"
    );
    for refused in ["permission denied", "must be owner", "skipping"] {
        assert!(!stderr.contains(refused), "{refused}: {stderr}");
    }

    // The service's role reads the secret and nothing more of it; it creates nothing.
    let mut service = roles.connect(&roles.service).await;
    let secret: String = sqlx::query_scalar("SELECT secret FROM api_secrets")
        .fetch_one(&mut service)
        .await
        .unwrap();
    for write in [
        "UPDATE api_secrets SET secret = repeat('x', 64)".to_owned(),
        "DELETE FROM api_secrets".to_owned(),
        "INSERT INTO api_secrets (name, secret) VALUES ('other', repeat('x', 64))".to_owned(),
        "TRUNCATE api_secrets".to_owned(),
        "CREATE TABLE stolen (secret text)".to_owned(),
        "DELETE FROM _sqlx_migrations".to_owned(),
        "ALTER TABLE operation_runs ADD COLUMN x int".to_owned(),
    ] {
        assert_eq!(
            sqlstate(sqlx::query(&write).execute(&mut service).await).as_deref(),
            Some("42501"),
            "the service's role may not: {write}"
        );
    }
    // What the viewer's dead-letters page does, the service's role may do: store a letter taken
    // from the queue, lock it as a replay does, discard it on the record.
    let as_service = PgPoolOptions::new()
        .max_connections(1)
        .connect(&roles.url(&roles.service))
        .await
        .unwrap();
    let mut tx = as_service.begin().await.unwrap();
    dead_letters::insert_all(
        &mut tx,
        &[dead_letters::NewDeadLetter {
            code: "invalid_json".into(),
            message: "not JSON".into(),
            kind: None,
            command_id: None,
            tenant_id: None,
            routing_key: "dispatch".into(),
            first_failed_at: None,
            failed_at: None,
            replays: 0,
            delivery_count: 0,
            body: b"{".to_vec(),
            properties: b"{}".to_vec(),
        }],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT max(id) FROM dead_letters")
        .fetch_one(&as_service)
        .await
        .unwrap();
    let mut tx = as_service.begin().await.unwrap();
    assert!(dead_letters::lock(&mut tx, stored).await.unwrap().is_some());
    tx.rollback().await.unwrap();
    let filter = dead_letters::LetterFilter::Ids(vec![stored]);
    let done = operation_runs::service::dead_letters::discard(
        &as_service,
        &filter,
        None,
        Some("ada"),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(done.discarded, 1);
    as_service.close().await;
    // The reader's role reads the data, never the secret, and writes nothing.
    let mut reader = roles.connect(&roles.reader).await;
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM operation_runs")
        .fetch_one(&mut reader)
        .await
        .unwrap();
    assert_eq!(runs, 0);
    for denied in [
        "SELECT secret FROM api_secrets",
        "SELECT count(*) FROM api_secrets",
        "DELETE FROM operation_runs",
        "INSERT INTO workspaces (id, name) VALUES (9, 'x')",
    ] {
        assert_eq!(
            sqlstate(sqlx::query(denied).execute(&mut reader).await).as_deref(),
            Some("42501"),
            "the reader's role may not: {denied}"
        );
    }
    let unchanged: String = sqlx::query_scalar("SELECT secret FROM api_secrets")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(unchanged, secret);
    drop(service);
    drop(reader);
    app.shutdown().await;
    drop(roles);
}

/// `oprun token` prints a token and a link, never the secret that signs them: not on success,
/// not in any error (a secret too short, a database URL that does not parse or does not
/// answer, a bad flag), not in `--help`, with debug logging on.
#[sqlx::test]
async fn oprun_token_never_prints_the_secret_on_success_or_on_error(
    _o: PgPoolOptions,
    connect_options: PgConnectOptions,
) {
    const SECRET: &str = "tok-Sup3rS3cret-of-at-least-32-bytes-long";
    const SHORT: &str = "short-Sup3rS3cret";
    let database = database_url_for(connect_options.get_database().unwrap());
    let stored: String = sqlx::query_scalar(
        "INSERT INTO api_secrets (name, secret) VALUES ('viewer', 'stored-' || repeat('S3cret', 8))
         RETURNING secret",
    )
    .fetch_one(
        &PgPoolOptions::new()
            .max_connections(1)
            .connect_with(connect_options)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let unreachable = "postgres://postgres:db-Sup3rS3cret@127.0.0.1:1/oprun";
    let unparsable = "postgres://postgres:db-Sup3rS3cret@[::1/oprun";
    let short_inline = format!("--api-secret={SHORT}");
    let hyphen = format!("-{SECRET}");
    // (arguments, OPRUN_API_SECRET, DATABASE_URL, succeeds)
    let cases: Vec<(Vec<&str>, Option<&str>, &str, bool)> = vec![
        (vec!["--api-secret", SECRET], None, unreachable, true),
        (vec![], Some(SECRET), unreachable, true),
        (vec!["--api-secret", &hyphen], None, unreachable, true),
        (vec![], None, &database, true),
        (vec!["--api-secret", SHORT], None, &database, false),
        (vec![], Some(SHORT), &database, false),
        (vec![&short_inline], None, &database, false),
        (vec!["--api-secret", SECRET], None, unparsable, false),
        (vec![], None, unreachable, false),
        (vec![], None, unparsable, false),
        (
            vec!["--api-secret", SECRET, "--ttl", "soon"],
            None,
            &database,
            false,
        ),
        (
            vec!["--api-secret", SECRET, "--bogus"],
            None,
            &database,
            false,
        ),
        (vec!["--api-secret"], Some(SECRET), &database, false),
        (vec!["--help"], Some(SECRET), &database, true),
    ];
    for (args, env_secret, url, succeeds) in cases {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_oprun"));
        command
            .args(["token", "--workspace", "1"])
            .args(&args)
            .env("DATABASE_URL", url)
            .env("OPRUN_LOG", "debug")
            .env_remove("OPRUN_API_SECRET");
        if let Some(secret) = env_secret {
            command.env("OPRUN_API_SECRET", secret);
        }
        let out = command.output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        let case = format!("{args:?} env {env_secret:?} url {url}");
        assert_eq!(out.status.success(), succeeds, "{case}\n{stdout}\n{stderr}");
        if succeeds && !args.contains(&"--help") {
            assert!(stdout.contains("?token="), "{case}: {stdout}");
        }
        for secret in [
            SECRET,
            SHORT,
            stored.as_str(),
            "Sup3rS3cret",
            "S3cretS3cret",
        ] {
            assert!(
                !stdout.contains(secret) && !stderr.contains(secret),
                "{case} printed a secret:\n{stdout}\n{stderr}"
            );
        }
    }
}
