//! One batch of deliveries, start to finish: decode, apply in one transaction, then reply and
//! dead-letter with confirms. The caller acks the batch only after this returns.
//!
//! This is the one place that decides what happens to a message when applying fails
//! ([`apply_batch`] matches [`ApplyError`]): retry the batch (transient), split it (an unexpected
//! permanent database error), or dead-letter the command with its code; each failure is logged
//! here, once, with its cause chain.
//!
//! Dead letters are published `mandatory`: when one comes back (no queue bound to `N.dlx`: the
//! DLQ was unbound or deleted) or is nacked, nothing of the batch is acked. The batch waits with
//! backoff, `/readyz` reports not ready, and before each retry the service re-declares its
//! topology (which re-creates and re-binds the DLQ). A refused command is never acked before its
//! dead letter is safely stored.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::apply::{ApplyContext, CommandResult, Disposition};
use super::batch::{apply_in_one_transaction, BatchItem, Lanes};
use super::error::{cause_chain, ApplyError};
use super::Service;
use crate::broker::dead_letter::dead_letter_properties;
use crate::broker::headers::string_header;
use crate::broker::messages::reply_properties;
use crate::broker::publisher::{confirm_each, ConfirmPublisher, Confirmed};
use crate::broker::{BasicProperties, BrokerError, Connection, Delivery};
use crate::domain::command::MAX_COMMAND_BYTES;
use crate::domain::trace_context::{TraceContext, TRACEPARENT, TRACESTATE};
use crate::domain::{decode_delivery, Command, CommandKind, DeliveryMeta, ErrorCode, Rejection};
use crate::telemetry;

/// How long a batch waits for the confirms of its dead letters and replies before it replaces
/// the channel and publishes the unconfirmed ones again.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSettlement {
    /// Every delivery up to this tag is settled (applied, or dead-lettered with a confirm): ack.
    AckThrough(u64),
    /// Shutdown interrupted a retry: ack nothing, the broker redelivers.
    Interrupted,
}

/// A publish the batch needs before it may be acked.
struct Outgoing<'a> {
    exchange: String,
    routing_key: &'a str,
    body: std::borrow::Cow<'a, [u8]>,
    properties: BasicProperties,
    /// A dead letter (mandatory; must be stored) rather than a reply (best effort once confirmed
    /// or nacked: a reply queue that refuses it is the requester's problem).
    dead_letter: bool,
}

/// Processes `deliveries` and publishes their replies and dead letters through `publisher`
/// (replaced on `connection` when the broker closes it). An error means the connection is lost.
pub async fn handle_deliveries(
    service: &Service,
    connection: &Connection,
    publisher: &mut ConfirmPublisher,
    deliveries: &[Delivery],
    shutdown: &CancellationToken,
) -> Result<BatchSettlement, BrokerError> {
    let Some(last) = deliveries.last() else {
        return Ok(BatchSettlement::Interrupted);
    };
    let received = Instant::now();
    let (decoded, spans): (Vec<Result<Command, Rejection>>, Vec<tracing::Span>) = deliveries
        .iter()
        .map(|d| {
            let headers = d.properties.headers().as_ref();
            let meta = DeliveryMeta {
                message_id: d.properties.message_id().as_ref().map(|m| m.as_str()),
                traceparent: headers.and_then(|h| string_header(h, TRACEPARENT)),
                tracestate: headers.and_then(|h| string_header(h, TRACESTATE)),
            };
            let mut decoded = decode_delivery(&d.data, meta);
            let span = command_span(service, d, meta, &mut decoded);
            (decoded, span)
        })
        .unzip();
    let commands: Vec<&Command> = decoded.iter().filter_map(|c| c.as_ref().ok()).collect();
    let lanes = service.settings.lanes;
    let Some(applied) =
        apply_in_lanes(&service.pool, &commands, &service.ctx, lanes, shutdown).await
    else {
        return Ok(BatchSettlement::Interrupted);
    };
    let mut applied = applied.into_iter();
    let mut outgoing = Vec::new();
    for ((delivery, decoded), span) in deliveries.iter().zip(&decoded).zip(&spans) {
        let outcome = match decoded {
            Ok(_) => applied.next().expect("one result per decoded command"),
            Err(rejection) => Err(rejection.clone()),
        };
        let command = decoded.as_ref().ok();
        log_outcome(service, delivery, command, &outcome);
        record_outcome(span, &outcome);
        settle(service, delivery, &outcome, &mut outgoing);
    }
    let settled = publish_until_settled(service, connection, publisher, &outgoing, shutdown).await;
    service
        .health
        .dead_letters_blocked
        .store(false, Ordering::Relaxed);
    if !settled? {
        return Ok(BatchSettlement::Interrupted);
    }
    let per_command = received.elapsed();
    for _ in deliveries {
        service.metrics.observe_latency(per_command);
    }
    // The command spans end here, with their effects committed and their publishes confirmed.
    drop(spans);
    Ok(BatchSettlement::AckThrough(last.delivery_tag))
}

/// The span of one delivery, from receipt to settlement. Disabled (free) unless the binary
/// exports spans (`--otlp-endpoint`); then it is a child of the delivery's `traceparent`, and
/// the command carries the context continued from it (the service's span as parent id), or, for
/// a dispatch without one, the new trace the span starts: its run, events and job continue the
/// exported trace. A progress command without one keeps taking its run's trace.
fn command_span(
    service: &Service,
    delivery: &Delivery,
    meta: DeliveryMeta<'_>,
    decoded: &mut Result<Command, Rejection>,
) -> tracing::Span {
    let span = tracing::debug_span!(
        "process command",
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        "messaging.operation.type" = "process",
        messaging.destination.name = %service.topology.commands_queue(),
        messaging.rabbitmq.destination.routing_key = delivery.routing_key.as_str(),
        messaging.message.id = meta.message_id,
        oprun.command.kind = decoded.as_ref().ok().map(|c| c.kind.as_str()),
        oprun.run_id = tracing::field::Empty,
        oprun.result = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    let incoming = TraceContext::from_headers(meta.traceparent, meta.tracestate);
    let continued = telemetry::continue_trace(&span, incoming.as_ref());
    if let (Some(continued), Ok(command)) = (continued, decoded) {
        if incoming.is_some() || command.kind == CommandKind::Dispatch {
            command.trace = Some(continued);
        }
    }
    span
}

/// Puts what became of a command on its span: its run and result, an error status when it was
/// dead-lettered.
fn record_outcome(span: &tracing::Span, outcome: &Result<CommandResult, Rejection>) {
    match outcome {
        Ok(result) => {
            span.record("oprun.run_id", result.run_id);
            span.record("oprun.result", result.disposition.as_str());
        }
        Err(rejection) => {
            span.record("oprun.result", "dead_lettered");
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", rejection.code.as_str());
        }
    }
}

/// Applies `commands` in up to `lanes` concurrent transactions (see [`Lanes`]) and returns the
/// results in input order. `None` when shut down first (nothing was acked, the broker will
/// redeliver).
pub async fn apply_in_lanes(
    pool: &PgPool,
    commands: &[&Command],
    ctx: &ApplyContext,
    lanes: usize,
    shutdown: &CancellationToken,
) -> Option<Vec<BatchItem>> {
    if lanes <= 1 || commands.len() < 2 {
        return apply_batch(pool, commands, ctx, shutdown).await;
    }
    let lanes = Lanes::split(commands, ctx, lanes);
    let applied = futures_util::future::join_all(
        lanes
            .groups
            .iter()
            .map(|g| apply_batch(pool, g, ctx, shutdown)),
    )
    .await;
    Some(lanes.merge(applied.into_iter().collect::<Option<Vec<_>>>()?))
}

/// Applies `commands` until every one has its fate, deciding on each failure what happens to the
/// messages: the one match of [`ApplyError`].
///
/// - `Retry`: the batch is tried again after a backoff, until `shutdown` (then `None`: nothing
///   was acked, the broker will redeliver);
/// - `Split`: the commands are applied one per transaction, so only the one causing the error is
///   dead-lettered (`database_rejected`);
/// - `DeadLetter`: a command refused outside its own place in the batch (refusals are normally
///   kept in place by [`apply_in_one_transaction`]) is dead-lettered alone, after a split.
#[tracing::instrument(level = "debug", skip_all, fields(commands = commands.len()))]
pub async fn apply_batch(
    pool: &PgPool,
    commands: &[&Command],
    ctx: &ApplyContext,
    shutdown: &CancellationToken,
) -> Option<Vec<BatchItem>> {
    if commands.is_empty() {
        return Some(Vec::new());
    }
    let mut delays = crate::retry::backoff();
    loop {
        let attempt = tokio::select! {
            r = apply_in_one_transaction(pool, commands, ctx) => r,
            _ = shutdown.cancelled() => return None,
        };
        let error = match attempt {
            Ok(results) => return Some(results),
            Err(error) => error,
        };
        match error {
            ApplyError::Retry(_) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(
                    error = %cause_chain(&error),
                    size = commands.len(),
                    retry_in_ms = delay.as_millis() as u64,
                    "applying a batch failed, retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
            // Logged once, as the command's dead letter (`log_outcome`).
            ApplyError::DeadLetter(rejection) if commands.len() == 1 => {
                return Some(vec![Err(rejection)])
            }
            ApplyError::Split(_) if commands.len() == 1 => {
                return Some(vec![Err(Rejection::new(
                    ErrorCode::DatabaseRejected,
                    format!("the database refused the command: {}", cause_chain(&error)),
                ))])
            }
            ApplyError::Split(_) | ApplyError::DeadLetter(_) => {
                tracing::warn!(
                    error = %cause_chain(&error),
                    size = commands.len(),
                    "batch failed permanently, applying its commands one by one"
                );
                let mut results = Vec::with_capacity(commands.len());
                for command in commands {
                    results.extend(Box::pin(apply_batch(pool, &[*command], ctx, shutdown)).await?);
                }
                return Some(results);
            }
        }
    }
}

/// The publishes a processed delivery needs: its dead letter when refused, its reply when the
/// producer asked for one at an allowed address.
fn settle<'a>(
    service: &Service,
    delivery: &'a Delivery,
    outcome: &Result<CommandResult, Rejection>,
    outgoing: &mut Vec<Outgoing<'a>>,
) {
    let reply_body = match outcome {
        Ok(result) => result.reply.clone(),
        Err(rejection) => {
            outgoing.push(Outgoing {
                exchange: service.topology.dead_letter_exchange(),
                routing_key: delivery.routing_key.as_str(),
                body: delivery.data.as_slice().into(),
                properties: dead_letter_properties(
                    &delivery.properties,
                    delivery.routing_key.as_str(),
                    rejection,
                ),
                dead_letter: true,
            });
            json!({"error": {"code": rejection.code.as_str(), "message": rejection.message}})
        }
    };
    let props = &delivery.properties;
    if let (Some(reply_to), Some(correlation_id)) = (props.reply_to(), props.correlation_id()) {
        // Replies go through the default exchange, which can reach any queue by name: only to
        // direct reply-to and the configured reply queues (the command itself still applies).
        if !service.reply_guard.allows(reply_to.as_str()) {
            service.metrics.reply_refused();
            tracing::warn!(
                reply_to = reply_to.as_str(),
                allowed = service.reply_guard.pattern(),
                "refusing to reply: reply_to is neither direct reply-to nor a reply queue"
            );
            return;
        }
        let properties = reply_properties(correlation_id.as_str());
        outgoing.push(Outgoing {
            exchange: String::new(),
            routing_key: reply_to.as_str(),
            body: serde_json::to_vec(&reply_body)
                .expect("JSON values serialise")
                .into(),
            properties,
            dead_letter: false,
        });
    }
}

/// Publishes `outgoing` until every dead letter is stored and every reply answered by the
/// broker. Between attempts (with backoff) the service is not ready, the channel is replaced if
/// it failed, and the topology is re-declared. `Ok(false)` when shutdown came first; an error
/// when the connection is lost (the batch is redelivered after reconnecting).
async fn publish_until_settled(
    service: &Service,
    connection: &Connection,
    publisher: &mut ConfirmPublisher,
    outgoing: &[Outgoing<'_>],
    shutdown: &CancellationToken,
) -> Result<bool, BrokerError> {
    let mut todo: Vec<&Outgoing> = outgoing.iter().collect();
    let mut delays = crate::retry::backoff();
    loop {
        let attempt = publish_once(publisher, &todo).await;
        if attempt.failed.is_empty() {
            return Ok(true);
        }
        service
            .health
            .dead_letters_blocked
            .store(true, Ordering::Relaxed);
        service.metrics.dead_letter_retry();
        let delay = delays.next().unwrap_or(Duration::from_secs(10));
        tracing::warn!(
            unsettled = attempt.failed.len(),
            retry_in_ms = delay.as_millis() as u64,
            "dead letters could not be stored (is the DLQ unbound or deleted?); the batch waits unacked"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Ok(false),
        }
        if !connection.status().connected() {
            return Err(BrokerError::Stopped(
                "the connection closed while dead letters waited".into(),
            ));
        }
        if attempt.channel_failed || !publisher.channel().status().connected() {
            if publisher.channel().status().connected() {
                let _ = publisher.channel().close(200, "replaced".into()).await;
            }
            match ConfirmPublisher::open(connection).await {
                Ok(fresh) => *publisher = fresh,
                Err(e) => {
                    tracing::warn!(error = %e, "reopening the publishing channel failed");
                    continue;
                }
            }
        }
        if let Err(e) = super::redeclare_topology(connection, &service.topology).await {
            tracing::warn!(error = %e, "re-declaring the topology failed");
        }
        todo = attempt.failed;
    }
}

/// What one publishing attempt left undone.
struct Attempt<'o, 'a> {
    /// Dead letters returned, nacked or unconfirmed; replies unconfirmed.
    failed: Vec<&'o Outgoing<'a>>,
    /// The channel failed or stopped confirming: replace it.
    channel_failed: bool,
}

async fn publish_once<'o, 'a>(
    publisher: &ConfirmPublisher,
    todo: &[&'o Outgoing<'a>],
) -> Attempt<'o, 'a> {
    let mut started = Vec::with_capacity(todo.len());
    let mut channel_failed = false;
    for o in todo {
        match publisher
            .start(
                &o.exchange,
                o.routing_key,
                &o.body,
                o.properties.clone(),
                o.dead_letter,
            )
            .await
        {
            Ok(pending) => started.push(pending),
            Err(e) => {
                tracing::warn!(error = %e, "publishing failed");
                channel_failed = true;
                break;
            }
        }
    }
    let started_count = started.len();
    let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
    let confirms = confirm_each(started, deadline).await;
    let mut failed: Vec<&Outgoing> = Vec::new();
    for (o, result) in todo.iter().zip(confirms) {
        match result {
            Ok(Confirmed::Delivered) => {}
            Ok(Confirmed::Returned) => {
                tracing::warn!(
                    exchange = o.exchange,
                    "a dead letter was returned: no queue is bound to the dead-letter exchange"
                );
                failed.push(o);
            }
            Err(BrokerError::Nacked { .. }) if !o.dead_letter => {
                tracing::warn!(
                    reply_to = o.routing_key,
                    "the broker nacked a reply; it is dropped"
                );
            }
            Err(e @ BrokerError::Nacked { .. }) => {
                tracing::warn!(error = %e, "the broker nacked a dead letter");
                failed.push(o);
            }
            Err(e) => {
                tracing::warn!(error = %e, "a publish was not confirmed");
                channel_failed = true;
                failed.push(o);
            }
        }
    }
    // Those never started (the channel failed first) are still to do.
    failed.extend(todo[started_count..].iter().copied());
    Attempt {
        failed,
        channel_failed,
    }
}

/// The metrics label of a delivery's kind: the decoded command's, else the `kind` field of a
/// body that is JSON but was refused at decode (unknown type, missing identity key, …) when it
/// names one of the four kinds, else `undecodable`. The label set stays bounded.
fn kind_label(delivery: &Delivery, command: Option<&Command>) -> &'static str {
    #[derive(serde::Deserialize)]
    struct KindOnly {
        kind: Option<String>,
    }
    if let Some(command) = command {
        return command.kind.as_str();
    }
    if delivery.data.len() > MAX_COMMAND_BYTES {
        return "undecodable";
    }
    serde_json::from_slice::<KindOnly>(&delivery.data)
        .ok()
        .and_then(|k| k.kind)
        .and_then(|k| CommandKind::parse(&k))
        .map_or("undecodable", CommandKind::as_str)
}

fn log_outcome(
    service: &Service,
    delivery: &Delivery,
    command: Option<&Command>,
    outcome: &Result<CommandResult, Rejection>,
) {
    let kind = kind_label(delivery, command);
    let command_id = command.and_then(|c| c.command_id.clone()).or_else(|| {
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
    });
    let run_type = command.and_then(|c| c.run_type()).map(|t| t.as_str());
    match outcome {
        Ok(result) => {
            service.metrics.command(kind, result.disposition.as_str());
            if let Some(run_type) = run_type {
                match result.disposition {
                    Disposition::Applied => service.metrics.run_created(run_type),
                    Disposition::Deduplicated => service.metrics.run_deduplicated(run_type),
                    _ => {}
                }
            }
            tracing::debug!(
                command_id,
                kind,
                run_id = result.run_id,
                r#type = run_type,
                result = result.disposition.as_str(),
                "command applied"
            );
        }
        Err(rejection) => {
            service
                .metrics
                .command(kind, &format!("dead_lettered:{}", rejection.code));
            service.metrics.refused(kind, rejection.code.as_str());
            let run_id = command.and_then(|c| c.run_id());
            let code = rejection.code.as_str();
            let reason = &rejection.message;
            // The producer's mistake is a warning; the database refusing a valid command is ours.
            if rejection.code == ErrorCode::DatabaseRejected {
                tracing::error!(
                    command_id,
                    kind,
                    run_id,
                    r#type = run_type,
                    code,
                    reason,
                    "command dead-lettered"
                );
            } else {
                tracing::warn!(
                    command_id,
                    kind,
                    run_id,
                    r#type = run_type,
                    code,
                    reason,
                    "command dead-lettered"
                );
            }
        }
    }
}
