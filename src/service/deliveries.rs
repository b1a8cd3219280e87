//! One batch of deliveries, start to finish: decode, apply (in [`super::batch`]), then reply and
//! dead-letter with confirms, and the one ack decision: the batch is acked only when every
//! command in it has its fate and every dead letter and reply is settled by the broker.
//!
//! A refusal whose producer asked for a reply at an address the service may reply to is answered
//! first, the reply published `mandatory`: once the broker confirms it reached a queue, the
//! producer knows, and the command is acked without a dead letter (counted in
//! `oprun_refusals_answered_total`); a reply returned, nacked or unanswered falls back to the dead
//! letter. `--dead-letter-answered-refusals` dead-letters every refusal, answered or not, and a
//! `database_rejected` one (the service's failure, not the producer's) always is.
//!
//! Dead letters are published `mandatory`: when one comes back (no queue bound to `N.dlx`: the
//! DLQ was unbound or deleted) or is nacked, nothing of the batch is acked. The batch waits with
//! backoff, `/readyz` reports not ready, and before each retry the service re-declares its
//! topology (which re-creates and re-binds the DLQ). A refused command is never acked before its
//! dead letter is safely stored.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::apply::{ApplySettings, CommandResult, Disposition};
use super::batch::apply_in_lanes;
use super::health::Health;
use super::metrics::{Metrics, Stage};
use super::reply_guard::{is_direct_reply_to, ReplyGuard};
use crate::broker::dead_letter::dead_letter_properties;
use crate::broker::headers::string_header;
use crate::broker::messages::reply_properties;
use crate::broker::publisher::{publish_round, Answer, ConfirmPublisher, Confirmed, Outgoing};
use crate::broker::{BrokerError, Connection, Delivery, Topology};
use crate::domain::command::MAX_COMMAND_BYTES;
use crate::domain::trace_context::{TraceContext, TRACEPARENT, TRACESTATE};
use crate::domain::{decode_delivery, Command, CommandKind, DeliveryMeta, ErrorCode, Rejection};
use crate::telemetry;

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSettlement {
    /// Every delivery up to this tag is settled (applied, or dead-lettered with a confirm): ack.
    AckThrough(u64),
    /// Shutdown interrupted a retry: ack nothing, the broker redelivers.
    Interrupted,
}

/// What handling a batch of deliveries needs from the service, and no more: where commands
/// apply, where dead letters and replies go, and what it reports.
#[derive(Clone, Copy)]
pub struct DeliveryHandler<'s> {
    /// The database pool.
    pub pool: &'s PgPool,
    /// What applied commands write.
    pub ctx: &'s ApplySettings,
    /// Concurrent transactions per batch (`--lanes`).
    pub lanes: usize,
    /// The topology names (the dead-letter exchange, the commands queue).
    pub topology: &'s Topology,
    /// Where replies may be sent.
    pub reply_guard: &'s ReplyGuard,
    /// The metrics.
    pub metrics: &'s Metrics,
    /// The probes' state (`/readyz` while dead letters wait).
    pub health: &'s Health,
    /// Dead-letter refusals answered to their producer too (`--dead-letter-answered-refusals`).
    pub dead_letter_answered_refusals: bool,
}

/// What settling one processed delivery publishes.
enum Settle<'a> {
    /// These (its dead letter, its reply: either, both or none).
    Publish(Vec<Outgoing<'a>>),
    /// A refusal to answer: its reply first, and its dead letter only if the reply is not
    /// taken.
    Answer {
        /// The reply.
        reply: Box<Outgoing<'a>>,
        /// The dead letter.
        dead_letter: Box<Outgoing<'a>>,
    },
}

impl DeliveryHandler<'_> {
    /// Processes `deliveries` and publishes their replies and dead letters through `publisher`
    /// (replaced on `connection` when the broker closes it); `committed` (the relay's wake) is
    /// notified as soon as the batch's transactions are committed. An error means the
    /// connection is lost.
    pub async fn handle(
        &self,
        connection: &Connection,
        publisher: &mut ConfirmPublisher,
        deliveries: &[Delivery],
        committed: &Notify,
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
                let span = self.command_span(d, meta, &mut decoded);
                (decoded, span)
            })
            .unzip();
        let commands: Vec<&Command> = decoded.iter().filter_map(|c| c.as_ref().ok()).collect();
        let Some(applied) = apply_in_lanes(
            self.pool,
            &commands,
            self.ctx,
            self.lanes,
            shutdown,
            self.metrics,
        )
        .await
        else {
            return Ok(BatchSettlement::Interrupted);
        };
        // The batch's events are committed: the relay may publish them while the replies and
        // dead letters settle (an event depends on its commit, never on the ack).
        committed.notify_one();
        let applied_at = Instant::now();
        let mut applied = applied.into_iter();
        let fates: Vec<Result<CommandResult, Rejection>> = decoded
            .iter()
            .map(|decoded| match decoded {
                Ok(_) => applied.next().expect("one result per decoded command"),
                Err(rejection) => Err(rejection.clone()),
            })
            .collect();
        let dead_letter_exchange = self.topology.dead_letter_exchange();
        let (outgoing, answered) = self
            .settle_all(publisher, deliveries, &fates, &dead_letter_exchange)
            .await;
        for (index, ((delivery, decoded), span)) in
            deliveries.iter().zip(&decoded).zip(&spans).enumerate()
        {
            let answered = answered.contains(&index);
            self.log_fate(delivery, decoded.as_ref().ok(), &fates[index], answered);
            record_fate(span, &fates[index], answered);
        }
        let settled = self
            .publish_until_settled(connection, publisher, &outgoing, shutdown)
            .await;
        self.health
            .dead_letters_blocked
            .store(false, Ordering::Relaxed);
        if !settled? {
            return Ok(BatchSettlement::Interrupted);
        }
        let per_command = received.elapsed();
        for _ in deliveries {
            self.metrics.observe_latency(per_command);
        }
        self.metrics
            .stage(Stage::Settle, applied_at.elapsed(), deliveries.len());
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
        &self,
        delivery: &Delivery,
        meta: DeliveryMeta<'_>,
        decoded: &mut Result<Command, Rejection>,
    ) -> tracing::Span {
        let span = tracing::debug_span!(
            "process command",
            otel.kind = "consumer",
            messaging.system = "rabbitmq",
            "messaging.operation.type" = "process",
            messaging.destination.name = %self.topology.commands_queue(),
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

    /// What a batch's fates publish, in delivery order, after the refusals that may be answered
    /// were (one round of their replies): the dead letters and replies still to settle, and the
    /// indexes of the deliveries whose refusal was answered.
    async fn settle_all<'a>(
        &self,
        publisher: &ConfirmPublisher,
        deliveries: &'a [Delivery],
        fates: &[Result<CommandResult, Rejection>],
        dead_letter_exchange: &'a str,
    ) -> (Vec<Outgoing<'a>>, HashSet<usize>) {
        let plans: Vec<Settle> = deliveries
            .iter()
            .zip(fates)
            .map(|(delivery, fate)| self.settle(delivery, fate, dead_letter_exchange))
            .collect();
        let answered = answer_refusals(publisher, &plans).await;
        let mut outgoing = Vec::new();
        for (index, plan) in plans.into_iter().enumerate() {
            match plan {
                Settle::Publish(publishes) => outgoing.extend(publishes),
                Settle::Answer { dead_letter, .. } if !answered.contains(&index) => {
                    outgoing.push(*dead_letter)
                }
                Settle::Answer { .. } => {}
            }
        }
        (outgoing, answered)
    }

    /// The publishes a processed delivery needs: its dead letter when refused, its reply when
    /// the producer asked for one at an allowed address; or, for a refusal that may be answered
    /// instead of dead-lettered, its reply to try first and its dead letter should the reply
    /// not be taken.
    fn settle<'a>(
        &self,
        delivery: &'a Delivery,
        fate: &Result<CommandResult, Rejection>,
        dead_letter_exchange: &'a str,
    ) -> Settle<'a> {
        let rejection = match fate {
            Ok(result) => {
                return Settle::Publish(self.reply(delivery, &result.reply).into_iter().collect())
            }
            Err(rejection) => rejection,
        };
        // Mandatory: a dead letter must be stored, so an unroutable one comes back.
        let dead_letter = Outgoing {
            exchange: dead_letter_exchange,
            routing_key: delivery.routing_key.as_str(),
            body: delivery.data.as_slice().into(),
            properties: dead_letter_properties(
                &delivery.properties,
                delivery.routing_key.as_str(),
                rejection,
            ),
            mandatory: true,
        };
        let body =
            json!({"error": {"code": rejection.code.as_str(), "message": rejection.message}});
        match self.reply(delivery, &body) {
            Some(mut reply)
                if !self.dead_letter_answered_refusals
                    && rejection.code != ErrorCode::DatabaseRejected =>
            {
                // Answered means a queue took it: mandatory, so a reply queue that does not exist
                // returns it. Direct reply-to returns every mandatory publish, delivered or not,
                // so there the broker's confirm is all that can be known.
                reply.mandatory = !is_direct_reply_to(reply.routing_key);
                Settle::Answer {
                    reply: Box::new(reply),
                    dead_letter: Box::new(dead_letter),
                }
            }
            reply => Settle::Publish([Some(dead_letter), reply].into_iter().flatten().collect()),
        }
    }

    /// The reply to `delivery` with `body`, when the producer asked for one (`reply_to` and
    /// `correlation_id`) at an address replies may go to.
    fn reply<'a>(&self, delivery: &'a Delivery, body: &serde_json::Value) -> Option<Outgoing<'a>> {
        let props = &delivery.properties;
        let (Some(reply_to), Some(correlation_id)) = (props.reply_to(), props.correlation_id())
        else {
            return None;
        };
        // Replies go through the default exchange, which can reach any queue by name: only to
        // direct reply-to and the configured reply queues (the command itself still applies).
        if !self.reply_guard.allows(reply_to.as_str()) {
            self.metrics.reply_refused();
            tracing::warn!(
                reply_to = reply_to.as_str(),
                allowed = self.reply_guard.pattern(),
                "refusing to reply: reply_to is neither direct reply-to nor a reply queue"
            );
            return None;
        }
        // Not mandatory: a reply is best effort once confirmed or nacked (a reply queue that
        // refuses it is the requester's problem).
        Some(Outgoing {
            exchange: "",
            routing_key: reply_to.as_str(),
            body: serde_json::to_vec(body)
                .expect("JSON values serialise")
                .into(),
            properties: reply_properties(correlation_id.as_str()),
            mandatory: false,
        })
    }

    /// Publishes `outgoing` until every dead letter is stored and every reply answered by the
    /// broker. Between attempts (with backoff) the service is not ready, the channel is replaced
    /// if it failed, and the topology is re-declared. `Ok(false)` when shutdown came first; an
    /// error when the connection is lost (the batch is redelivered after reconnecting).
    async fn publish_until_settled(
        &self,
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
            self.health
                .dead_letters_blocked
                .store(true, Ordering::Relaxed);
            self.metrics.dead_letter_retry();
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
            if let Err(e) = self.topology.declare_on(connection).await {
                tracing::warn!(error = %e, "re-declaring the topology failed");
            }
            todo = attempt.failed;
        }
    }

    /// Counts what became of a command and logs it: a dead-lettered command is logged here, once
    /// (an error when the database refused it, a warning when the producer is at fault); a
    /// refusal answered to its producer is counted apart and logged at info.
    fn log_fate(
        &self,
        delivery: &Delivery,
        command: Option<&Command>,
        fate: &Result<CommandResult, Rejection>,
        answered: bool,
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
        match fate {
            Ok(result) => {
                self.metrics.command(kind, result.disposition.as_str());
                if let Some(run_type) = run_type {
                    match result.disposition {
                        Disposition::Applied => self.metrics.run_created(run_type),
                        Disposition::Deduplicated => self.metrics.run_deduplicated(run_type),
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
            Err(rejection) if answered => {
                let code = rejection.code.as_str();
                self.metrics.command(kind, &format!("refused:{code}"));
                self.metrics.refusal_answered(kind, code);
                tracing::info!(
                    command_id,
                    kind,
                    run_id = command.and_then(|c| c.run_id()),
                    r#type = run_type,
                    code,
                    reason = rejection.message,
                    "command refused; the refusal was answered to its producer"
                );
            }
            Err(rejection) => {
                self.metrics
                    .command(kind, &format!("dead_lettered:{}", rejection.code));
                self.metrics.refused(kind, rejection.code.as_str());
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
}

/// Puts what became of a command on its span: its run and result, an error status when it was
/// refused (answered, or dead-lettered).
fn record_fate(span: &tracing::Span, fate: &Result<CommandResult, Rejection>, answered: bool) {
    match fate {
        Ok(result) => {
            span.record("oprun.run_id", result.run_id);
            span.record("oprun.result", result.disposition.as_str());
        }
        Err(rejection) => {
            let result = if answered { "refused" } else { "dead_lettered" };
            span.record("oprun.result", result);
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", rejection.code.as_str());
        }
    }
}

/// Publishes the replies of the refusals that may be answered (`Settle::Answer`) in one round:
/// the indexes of the deliveries whose reply the broker took (confirmed; for a reply queue, also
/// not returned). Any other one (returned: no such queue; nacked; unanswered) is dead-lettered.
async fn answer_refusals(publisher: &ConfirmPublisher, plans: &[Settle<'_>]) -> HashSet<usize> {
    let replies: Vec<(usize, &Outgoing)> = plans
        .iter()
        .enumerate()
        .filter_map(|(i, plan)| match plan {
            Settle::Answer { reply, .. } => Some((i, reply.as_ref())),
            Settle::Publish(_) => None,
        })
        .collect();
    if replies.is_empty() {
        return HashSet::new();
    }
    let round = publish_round(publisher, &replies, |(_, reply)| reply.reborrow()).await;
    if let Some(e) = &round.channel_error {
        tracing::warn!(error = %e, "a refusal's reply was not confirmed; it is dead-lettered");
    }
    round
        .answers
        .into_iter()
        .filter(|(_, answer)| matches!(answer, Answer::Confirmed(Confirmed::Delivered)))
        .map(|((index, _), _)| *index)
        .collect()
}

/// What one publishing attempt left undone.
struct Attempt<'o, 'a> {
    /// Dead letters returned, nacked or unanswered; replies unanswered.
    failed: Vec<&'o Outgoing<'a>>,
    /// The channel failed or stopped confirming: replace it.
    channel_failed: bool,
}

/// One round of `todo` (see [`publish_round`]): what still needs publishing afterwards.
async fn publish_once<'o, 'a>(
    publisher: &ConfirmPublisher,
    todo: &[&'o Outgoing<'a>],
) -> Attempt<'o, 'a> {
    let round = publish_round(publisher, todo, |o| o.reborrow()).await;
    if let Some(e) = &round.channel_error {
        tracing::warn!(error = %e, "a publish was not confirmed");
    }
    let mut failed: Vec<&Outgoing> = Vec::new();
    for (o, answer) in round.answers {
        match answer {
            Answer::Confirmed(Confirmed::Delivered) => {}
            Answer::Confirmed(Confirmed::Returned) => {
                tracing::warn!(
                    exchange = o.exchange,
                    "a dead letter was returned: no queue is bound to the dead-letter exchange"
                );
                failed.push(o);
            }
            Answer::Nacked(_) if !o.mandatory => {
                tracing::warn!(
                    reply_to = o.routing_key,
                    "the broker nacked a reply; it is dropped"
                );
            }
            Answer::Nacked(e) => {
                tracing::warn!(error = %e, "the broker nacked a dead letter");
                failed.push(o);
            }
            Answer::Unanswered => failed.push(o),
        }
    }
    Attempt {
        failed,
        channel_failed: round.channel_error.is_some(),
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
