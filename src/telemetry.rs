//! Optional export of the service's spans to an OpenTelemetry collector over OTLP/HTTP
//! (protobuf), `--otlp-endpoint`. Off by default: without the setting nothing here runs (no
//! exporter, no thread, no socket) and the spans of [`command_span`] are disabled.
//!
//! With it, a tracing layer ([`Telemetry::layer`]) turns the crate's spans into OpenTelemetry
//! spans (service name `operation-runs`); a batch processor (the SDK's, on a thread of its own)
//! queues them (at most 2,048; beyond that new spans are dropped, never waited for) and POSTs
//! them every 5 s to `<endpoint>/v1/traces` through [`ExportClient`], which runs each request on
//! the service's Tokio runtime with a 10 s timeout. A collector that is down or refuses costs
//! the dropped spans and one warning per outage, never a command. [`Telemetry::shutdown`]
//! flushes what is queued at exit, bounded.
//!
//! The span of a command is a child of the command's W3C `traceparent` (the producer's span),
//! and the context the service passes on (stored with the run, stamped on its events and job)
//! names the service's span as parent, so a collector shows one trace from the producer through
//! the service to subscribers and executors; a dispatch without one starts its trace at the
//! service's span.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full, Limited};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::domain::trace_context::TraceContext;
use crate::secret::redact_url;

/// The `service.name` resource attribute of every exported span.
pub const SERVICE_NAME: &str = "operation-runs";
/// Bound on one export request, connecting and reading the answer included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the flush at exit (a collector that does not answer must not hold the exit).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of a collector's answer read (a success is empty or a few bytes of protobuf).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Spans queued for export at most; beyond it new spans are dropped.
const MAX_QUEUED_SPANS: usize = 2048;

/// A bad `--otlp-endpoint`, or an exporter that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The endpoint is not an `http://` URL with a host.
    #[error("--otlp-endpoint {url}: {reason}")]
    Endpoint {
        /// The endpoint, password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The OTLP exporter refused its configuration.
    #[error("the OTLP exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The running exporter: keep it for the life of the process and [`Telemetry::shutdown`] it at
/// exit.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Telemetry {
    /// Starts exporting to the collector at `endpoint` (a base URL: spans go to
    /// `<endpoint>/v1/traces`). Nothing is sent until there are spans; an unreachable
    /// collector is not an error here.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime: the export requests run on the one it is called on.
    pub fn start(endpoint: &str) -> Result<Self, TelemetryError> {
        let target = ExportTarget::parse(endpoint)?;
        let client = ExportClient {
            runtime: tokio::runtime::Handle::current(),
            authorization: target.authorization,
            shown_url: redact_url(endpoint),
            failing: Arc::new(AtomicBool::new(false)),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(target.traces_url)
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(client)
            .build()?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(MAX_QUEUED_SPANS)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(
                opentelemetry_sdk::Resource::builder_empty()
                    .with_service_name(SERVICE_NAME)
                    .build(),
            )
            .build();
        let tracer = provider.tracer(SERVICE_NAME);
        Ok(Self { provider, tracer })
    }

    /// The tracing layer that exports this crate's spans (only spans, only `operation_runs`:
    /// the log filter `--log` does not apply to it, and no log line becomes a span event).
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.clone())
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_span() && meta.target().starts_with("operation_runs")
            }))
    }

    /// Exports what is still queued and stops the exporter, waiting at most 5 s. Blocks: call it
    /// off the runtime's worker threads (`spawn_blocking`), which the export requests need.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "flushing the spans at exit failed; the rest are dropped");
        }
    }
}

/// Starts `span` (not yet entered) in the exported trace and returns the context to pass on
/// for the work it covers: with `incoming` (the W3C context the message came with) the span is
/// its child and the context is `incoming` with the span as parent id; without, the span starts
/// a new trace and the context names it. `None` when the span is disabled (no exporter).
pub fn continue_trace(
    span: &tracing::Span,
    incoming: Option<&TraceContext>,
) -> Option<TraceContext> {
    if span.is_disabled() {
        return None;
    }
    if let Some(parent) = incoming.and_then(remote_span_context) {
        // Only fails when the span is disabled or already started: checked and not yet.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
    let context = span.context();
    let otel_span = context.span();
    let own = otel_span.span_context();
    if !own.is_valid() {
        return None;
    }
    let span_id = u64::from_be_bytes(own.span_id().to_bytes());
    match incoming {
        Some(incoming) => incoming.with_parent_id(span_id),
        None => TraceContext::new_root(u128::from_be_bytes(own.trace_id().to_bytes()), span_id),
    }
}

/// The sender's span, as OpenTelemetry's remote parent.
fn remote_span_context(trace: &TraceContext) -> Option<SpanContext> {
    let trace_id = TraceId::from_hex(trace.trace_id()).ok()?;
    let span_id = SpanId::from_hex(trace.parent_id()).ok()?;
    let state = trace
        .tracestate()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(trace.flags()),
        true,
        state,
    ))
}

/// Where the spans go, from `--otlp-endpoint`.
struct ExportTarget {
    /// `<endpoint>/v1/traces`, without credentials.
    traces_url: String,
    /// `Basic …` from the URL's user and password, if it had them.
    authorization: Option<http::HeaderValue>,
}

impl ExportTarget {
    fn parse(endpoint: &str) -> Result<Self, TelemetryError> {
        let invalid = |reason: String| TelemetryError::Endpoint {
            url: redact_url(endpoint),
            reason,
        };
        let mut url = url::Url::parse(endpoint).map_err(|e| invalid(e.to_string()))?;
        if url.scheme() != "http" {
            return Err(invalid(
                "only http:// is supported (export to a collector or agent next to the service)"
                    .into(),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("no host".into()));
        }
        let authorization = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            let user = percent_decoded(url.username());
            let password = percent_decoded(url.password().unwrap_or(""));
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            let mut value = http::HeaderValue::from_str(&format!("Basic {token}"))
                .map_err(|e| invalid(e.to_string()))?;
            value.set_sensitive(true);
            Some(value)
        };
        let _ = url.set_username("");
        let _ = url.set_password(None);
        // The OTLP rule for a base endpoint: the signal's path is appended to it.
        let path = format!("{}/v1/traces", url.path().trim_end_matches('/'));
        url.set_path(&path);
        Ok(Self {
            traces_url: url.to_string(),
            authorization,
        })
    }
}

fn percent_decoded(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The exporter's HTTP client: HTTP/1.1 over plain TCP with hyper (already the service's HTTP
/// server), one connection per export (at most one every few seconds). The SDK's batch thread
/// calls it outside any runtime, so each request runs on the service's runtime. Failures are
/// logged once per outage, at warn, with the recovery at info.
struct ExportClient {
    runtime: tokio::runtime::Handle,
    authorization: Option<http::HeaderValue>,
    shown_url: String,
    failing: Arc<AtomicBool>,
}

impl fmt::Debug for ExportClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportClient")
            .field("endpoint", &self.shown_url)
            .finish_non_exhaustive()
    }
}

impl HttpClient for ExportClient {
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        mut request: Request<Bytes>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<Response<Bytes>, HttpError>>
                + Send
                + 'async_trait,
        >,
    >
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        if let Some(authorization) = &self.authorization {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, authorization.clone());
        }
        // Built on the runtime: a timer made on the batch thread would find no runtime.
        let sent = self
            .runtime
            .spawn(async move { tokio::time::timeout(EXPORT_TIMEOUT, post(request)).await });
        let failing = self.failing.clone();
        let shown_url = self.shown_url.clone();
        Box::pin(async move {
            let result = match sent.await {
                Ok(Ok(result)) => result,
                Ok(Err(_elapsed)) => Err("no answer within the export timeout".into()),
                Err(e) => Err(e.into()),
            };
            let failure = match &result {
                Ok(response) if response.status().is_success() => None,
                Ok(response) => Some(format!("the collector answered {}", response.status())),
                Err(e) => Some(e.to_string()),
            };
            match failure {
                Some(error) if !failing.swap(true, Ordering::Relaxed) => tracing::warn!(
                    endpoint = shown_url,
                    error,
                    "exporting spans failed; spans are dropped until the collector answers"
                ),
                None if failing.swap(false, Ordering::Relaxed) => {
                    tracing::info!(endpoint = shown_url, "exporting spans works again")
                }
                _ => {}
            }
            result
        })
    }
}

/// One POST on a fresh HTTP/1.1 connection.
async fn post(request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    let (mut parts, body) = request.into_parts();
    let authority = parts
        .uri
        .authority()
        .cloned()
        .ok_or("the export URL has no host")?;
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((authority.host(), port)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    parts
        .headers
        .insert(http::header::HOST, authority.as_str().parse()?);
    // HTTP/1.1 asks for the origin form (path and query) on the request line.
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()?;
    let response = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await?
        .to_bytes();
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_appended_and_credentials_become_basic_auth() {
        let t = ExportTarget::parse("http://otel:s%40cret@collector:4318/").unwrap();
        assert_eq!(t.traces_url, "http://collector:4318/v1/traces");
        let expected = base64::engine::general_purpose::STANDARD.encode("otel:s@cret");
        assert_eq!(
            t.authorization.unwrap().to_str().unwrap(),
            format!("Basic {expected}")
        );
        let t = ExportTarget::parse("http://collector:4318/otlp").unwrap();
        assert_eq!(t.traces_url, "http://collector:4318/otlp/v1/traces");
        assert!(t.authorization.is_none());
    }

    #[test]
    fn only_plain_http_urls_with_a_host_are_accepted() {
        for bad in ["https://collector:4318", "collector:4318", "not a url"] {
            let e = ExportTarget::parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.to_string().contains("--otlp-endpoint"), "{e}");
        }
        let e = ExportTarget::parse("https://u:hunter2@collector")
            .err()
            .unwrap();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
