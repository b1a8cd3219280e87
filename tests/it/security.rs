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
        database_url: String::new(),
        amqp_url: vec![url_for(&format!("{ns}.service"), "service-pw")],
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
