//! One batch of deliveries, start to finish: decode, apply in one transaction, then reply and
//! dead-letter with confirms. The caller acks the batch only after this returns.

use std::time::Instant;

use lapin::message::Delivery;
use lapin::BasicProperties;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::apply::CommandResult;
use super::batch::apply_in_lanes;
use super::Service;
use crate::broker::dead_letter::dead_letter_properties;
use crate::broker::publisher::{confirm_all, ConfirmPublisher, Pending};
use crate::broker::BrokerError;
use crate::domain::{decode_command, Command, Rejection};

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSettlement {
    /// Every delivery up to this tag is settled (applied, or dead-lettered with a confirm): ack.
    AckThrough(u64),
    /// Shutdown interrupted a retry: ack nothing, the broker redelivers.
    Interrupted,
}

/// Processes `deliveries` and publishes their replies and dead letters through `publisher`.
pub async fn handle_deliveries(
    service: &Service,
    publisher: &ConfirmPublisher,
    deliveries: &[Delivery],
    shutdown: &CancellationToken,
) -> Result<BatchSettlement, BrokerError> {
    let Some(last) = deliveries.last() else {
        return Ok(BatchSettlement::Interrupted);
    };
    let received = Instant::now();
    let decoded: Vec<Result<Command, Rejection>> = deliveries
        .iter()
        .map(|d| {
            decode_command(
                &d.data,
                d.properties.message_id().as_ref().map(|m| m.as_str()),
            )
        })
        .collect();
    let commands: Vec<&Command> = decoded.iter().filter_map(|c| c.as_ref().ok()).collect();
    let lanes = service.settings.lanes;
    let Some(applied) =
        apply_in_lanes(&service.pool, &commands, &service.ctx, lanes, shutdown).await
    else {
        return Ok(BatchSettlement::Interrupted);
    };
    let mut applied = applied.into_iter();
    let mut pending = Vec::new();
    for (delivery, decoded) in deliveries.iter().zip(&decoded) {
        let outcome = match decoded {
            Ok(_) => applied.next().expect("one result per decoded command"),
            Err(rejection) => Err(rejection.clone()),
        };
        let command = decoded.as_ref().ok();
        log_outcome(service, delivery, command, &outcome);
        settle(service, publisher, delivery, &outcome, &mut pending).await?;
    }
    confirm_all(pending).await?;
    let per_command = received.elapsed();
    for _ in deliveries {
        service.metrics.observe_latency(per_command);
    }
    Ok(BatchSettlement::AckThrough(last.delivery_tag))
}

/// Starts the publishes a processed delivery needs: its dead letter when refused, its reply when
/// the producer asked for one.
async fn settle(
    service: &Service,
    publisher: &ConfirmPublisher,
    delivery: &Delivery,
    outcome: &Result<CommandResult, Rejection>,
    pending: &mut Vec<Pending>,
) -> Result<(), BrokerError> {
    let reply_body = match outcome {
        Ok(result) => result.reply.clone(),
        Err(rejection) => {
            let properties = dead_letter_properties(
                &delivery.properties,
                delivery.routing_key.as_str(),
                rejection,
            );
            let dlx = service.topology.dead_letter_exchange();
            pending.push(
                publisher
                    .start(
                        &dlx,
                        delivery.routing_key.as_str(),
                        &delivery.data,
                        properties,
                        false,
                    )
                    .await?,
            );
            json!({"error": {"code": rejection.code.as_str(), "message": rejection.message}})
        }
    };
    let props = &delivery.properties;
    if let (Some(reply_to), Some(correlation_id)) = (props.reply_to(), props.correlation_id()) {
        // Replies go through the default exchange, which can reach any queue by name: never
        // into the namespace's own queues, where a reply would pose as a command or dead letter.
        if reply_to
            .as_str()
            .starts_with(&format!("{}.", service.topology.namespace()))
        {
            tracing::warn!(
                reply_to = reply_to.as_str(),
                "refusing to reply into a queue of the service's own topology"
            );
            return Ok(());
        }
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_correlation_id(correlation_id.clone());
        let body = serde_json::to_vec(&reply_body).expect("JSON values serialise");
        pending.push(
            publisher
                .start("", reply_to.as_str(), &body, properties, false)
                .await?,
        );
    }
    Ok(())
}

fn log_outcome(
    service: &Service,
    delivery: &Delivery,
    command: Option<&Command>,
    outcome: &Result<CommandResult, Rejection>,
) {
    let kind = command.map_or("undecodable", |c| c.kind.as_str());
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
            tracing::warn!(
                command_id, kind, run_id = command.and_then(|c| c.run_id()), r#type = run_type,
                code = rejection.code.as_str(), reason = %rejection.message, "command dead-lettered"
            );
        }
    }
}
