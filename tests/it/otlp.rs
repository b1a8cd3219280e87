//! OTLP export of the service's spans (`--otlp-endpoint`): the real `oprun serve` binary sends
//! the span of each command to a collector (an OTLP/HTTP receiver inside the test that decodes
//! what it gets), in the trace of the command's `traceparent`; what is still queued at exit is
//! flushed; a collector that is down costs no command and one warning.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::process::Child;

use crate::helpers::{
    dispatch, dispatch_with_reply, serve_command, traced_properties, wait_until, TestApp, DEADLINE,
};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct ExportedSpan {
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    kind: i32,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with protobuf bodies, recorded decoded.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ExportedSpan>>>,
}

impl Collector {
    async fn start() -> (Self, SocketAddr) {
        let collector = Self::default();
        let app = axum::Router::new()
            .route("/v1/traces", post(receive))
            .with_state(collector.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (collector, addr)
    }

    fn spans(&self) -> Vec<ExportedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// The first span received that satisfies `wanted`, waiting for it.
    async fn wait_for(&self, what: &str, wanted: impl Fn(&ExportedSpan) -> bool) -> ExportedSpan {
        wait_until(what, || {
            let found = self.spans().into_iter().find(&wanted);
            async move { found }
        })
        .await
    }
}

async fn receive(State(collector): State<Collector>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
    let mut spans = collector.spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let resource = attributes(
            &resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default(),
        );
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            spans.push(ExportedSpan {
                service: resource.get("service.name").cloned().unwrap_or_default(),
                trace_id: hex::encode(&span.trace_id),
                span_id: hex::encode(&span.span_id),
                parent_span_id: hex::encode(&span.parent_span_id),
                kind: span.kind,
                attributes: attributes(&span.attributes),
            });
        }
    }
    // An empty body is an empty ExportTraceServiceResponse: full success.
    ""
}

fn attributes(pairs: &[KeyValue]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

async fn app_for(connect: PgConnectOptions) -> (TestApp, String) {
    let database = connect.get_database().expect("a test database").to_owned();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy_with(connect);
    (TestApp::without_service(pool).await, database)
}

/// `oprun serve` exporting to `collector`; `env` adds environment variables.
fn serve_exporting_to(
    app: &TestApp,
    database: &str,
    collector: SocketAddr,
    env: &[(&str, &str)],
) -> Child {
    serve_command(database, app.topology.namespace())
        .args(["--otlp-endpoint", &format!("http://{collector}")])
        .envs(env.iter().copied())
        .spawn()
        .expect("the oprun binary starts")
}

/// SIGTERM (a graceful stop), then the exit status and stderr (in the panic message when the
/// service does not exit in time: what it logged is the diagnosis).
async fn terminate(mut child: Child) -> (std::process::ExitStatus, String) {
    use tokio::io::AsyncReadExt;
    let mut pipe = child.stderr.take().expect("stderr is piped");
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text).await;
        text
    });
    let pid = child.id().expect("still running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    match tokio::time::timeout(DEADLINE, child.wait()).await {
        Ok(status) => (status.unwrap(), stderr.await.unwrap()),
        Err(_) => {
            child.kill().await.unwrap();
            panic!(
                "oprun serve did not exit within {DEADLINE:?} after SIGTERM; it logged:\n{}",
                stderr.await.unwrap()
            )
        }
    }
}

/// The trace context run `run_id` keeps: `traceparent`, `tracestate`.
async fn stored_trace(app: &TestApp, run_id: i64) -> (String, Option<String>) {
    sqlx::query_as("SELECT traceparent, tracestate FROM operation_runs WHERE id = $1")
        .bind(run_id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn command_spans_are_exported_in_the_trace_of_their_traceparent(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (collector, addr) = Collector::start().await;
    let (app, database) = app_for(connect).await;
    let serve = serve_exporting_to(&app, &database, addr, &[]);
    let mut events = app.subscribe_events().await;

    // A dispatch that carries the producer's trace: the service's span is its child.
    let body = dispatch("policy.sync", 1, Some(10), json!({"policy_id": "traced"}));
    app.publish_raw(
        "dispatch",
        &serde_json::to_vec(&body).unwrap(),
        traced_properties(TRACEPARENT, Some("congo=t61rcWkgMzE")),
    )
    .await;
    let span = collector
        .wait_for("the span of the traced dispatch", |s| {
            s.trace_id == TRACE_ID
        })
        .await;
    assert_eq!(span.parent_span_id, PRODUCER_SPAN, "{span:?}");
    assert_eq!(span.service, "operation-runs");
    assert_eq!(span.kind, SpanKind::Consumer as i32);
    assert_eq!(span.attributes["oprun.result"], "applied", "{span:?}");
    assert_eq!(span.attributes["oprun.command.kind"], "dispatch");
    assert_eq!(span.attributes["messaging.system"], "rabbitmq");
    let run_id: i64 = span.attributes["oprun.run_id"].parse().unwrap();
    assert_eq!(
        stored_trace(&app, run_id).await,
        (
            format!("00-{TRACE_ID}-{}-01", span.span_id),
            Some("congo=t61rcWkgMzE".to_owned())
        ),
        "the run continues the producer's trace from the service's span"
    );
    let (queued, _) = events.next_events(1).await.remove(0);
    assert_eq!(
        queued["traceparent"],
        format!("00-{TRACE_ID}-{}-01", span.span_id),
        "its event too: a subscriber's span is a child of the service's"
    );

    // A dispatch without one: the service's span is the root of a new trace, and that trace is
    // the one its run keeps (and hands to its events and job).
    let reply = dispatch_with_reply(
        &app,
        &dispatch("policy.sync", 1, Some(10), json!({"policy_id": "untraced"})),
    )
    .await;
    let untraced_run = reply["run_id"].as_i64().unwrap().to_string();
    let root = collector
        .wait_for("the span of the untraced dispatch", |s| {
            s.attributes.get("oprun.run_id") == Some(&untraced_run)
        })
        .await;
    assert_eq!(root.parent_span_id, "", "a root span: {root:?}");
    assert_eq!(
        stored_trace(&app, reply["run_id"].as_i64().unwrap()).await,
        (format!("00-{}-{}-01", root.trace_id, root.span_id), None)
    );
    let (status, stderr) = terminate(serve).await;
    assert!(status.success(), "{stderr}");
    app.shutdown().await;
}

#[sqlx::test]
async fn spans_still_queued_at_exit_are_flushed(_o: PgPoolOptions, connect: PgConnectOptions) {
    let (collector, addr) = Collector::start().await;
    let (app, database) = app_for(connect).await;
    // An hour between scheduled exports: only the flush at exit can deliver the span.
    let serve = serve_exporting_to(
        &app,
        &database,
        addr,
        &[("OTEL_BSP_SCHEDULE_DELAY", "3600000")],
    );
    let reply = dispatch_with_reply(
        &app,
        &dispatch("policy.sync", 1, Some(10), json!({"policy_id": "at-exit"})),
    )
    .await;
    let run_id = reply["run_id"].as_i64().unwrap();
    assert!(collector.spans().is_empty(), "nothing exported before exit");

    let (status, stderr) = terminate(serve).await;
    assert!(status.success(), "{stderr}");
    let trace_id = stored_trace(&app, run_id).await.0[3..35].to_owned();
    let spans = collector.spans();
    assert!(
        spans
            .iter()
            .any(|s| s.trace_id == trace_id && s.attributes["oprun.run_id"] == run_id.to_string()),
        "the span was flushed at exit: {spans:?}"
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn an_unreachable_collector_costs_no_command_and_one_warning(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // A port nothing listens on: every export is refused at once.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let (app, database) = app_for(connect).await;
    let serve = serve_exporting_to(
        &app,
        &database,
        closed,
        &[("OTEL_BSP_SCHEDULE_DELAY", "20")],
    );
    for i in 0..3 {
        let reply = dispatch_with_reply(
            &app,
            &dispatch(
                "policy.sync",
                1,
                Some(10),
                json!({"policy_id": format!("p{i}")}),
            ),
        )
        .await;
        assert!(reply["run_id"].as_i64().is_some(), "{reply}");
    }
    let (status, stderr) = terminate(serve).await;
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("exporting spans failed").count(),
        1,
        "one warning for the outage:\n{stderr}"
    );
    assert_eq!(stderr.matches("WARN").count(), 1, "{stderr}");
    app.shutdown().await;
}
