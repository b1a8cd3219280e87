//! The executor side of a chaos run: the service hands every new run's job to `N.jobs`,
//! where `N.chaos.executor` (see [`crate::sandbox`]) takes every job for the whole run. For the
//! `reject-jobs` injection a second queue, bound for [`REJECTED_TYPE`] only, holds one message
//! and refuses the rest (`x-overflow: reject-publish`: the broker nacks the publish although the
//! job also reached the executor queue) for a while during the dispatches, then is deleted.
//!
//! Before phase 2 the run waits until every job has been handed off (or its run failed by the
//! service) and finds the runs the service completed on its own (`dispatch.rejected` after its
//! retries ran out, `dispatch.unroutable`): they get no progress, and the checks expect them as
//! the service left them.

use std::collections::HashMap;
use std::time::Duration;

use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::Value;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::chaos::plan::model::REJECTED_TYPE;
use crate::sandbox::BoundQueue;
use operation_runs::broker::connection::connect;
use operation_runs::broker::{BrokerError, Topology};

/// `N.chaos.executor`: bound to `N.jobs` with `#` for the whole run, so every job is routable
/// (nobody consumes it; it is deleted with the namespace).
pub const EXECUTOR_QUEUE: BoundQueue = BoundQueue {
    suffix: "executor",
    to_events: false,
    keys: &["#"],
};
/// `N.chaos.rejecting`: the executor queue that refuses publishes for a while.
pub const REJECTING_QUEUE: &str = "rejecting";
/// Messages the rejecting queue takes before it refuses.
const REJECTING_MAX_LENGTH: i64 = 1;
/// The failure codes with which the service itself completes a run whose job it could not hand
/// off.
pub const HAND_OFF_FAILURE_CODES: [&str; 2] = ["dispatch.rejected", "dispatch.unroutable"];

/// Declares `queue` (durable, classic, `x-max-length: 1`, `x-overflow: reject-publish`) and binds
/// it to `N.jobs` for [`REJECTED_TYPE`].
pub async fn bind_rejecting_queue(
    amqp_url: &str,
    topology: &Topology,
    queue: &str,
) -> Result<(), BrokerError> {
    let connection = connect(amqp_url, "oprun-lab chaos rejecting executor").await?;
    let channel = connection.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(REJECTING_MAX_LENGTH),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel.queue_declare(queue.into(), options, args).await?;
    channel
        .queue_bind(
            queue.into(),
            topology.jobs_exchange().as_str().into(),
            REJECTED_TYPE.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _ = connection.close(200, "bound".into()).await;
    Ok(())
}

/// Deletes the rejecting queue (its binding goes with it); retried until `deadline` (the broker
/// may be restarting).
pub async fn delete_rejecting_queue(
    amqp_url: &str,
    queue: &str,
    deadline: Instant,
) -> Result<(), BrokerError> {
    loop {
        let result = async {
            let connection = connect(amqp_url, "oprun-lab chaos rejecting executor").await?;
            let channel = connection.create_channel().await?;
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
            let _ = connection.close(200, "deleted".into()).await;
            Ok::<_, BrokerError>(())
        }
        .await;
        match result {
            Err(e) if Instant::now() < deadline => {
                eprintln!("chaos: deleting {queue}: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

/// Waits until no job waits in the job outbox; false at `until`.
pub async fn wait_for_hand_offs(pool: &PgPool, until: Instant) -> bool {
    loop {
        let waiting: Result<i64, _> = sqlx::query_scalar(
            "SELECT count(*) FROM operation_run_jobs WHERE published_at IS NULL",
        )
        .fetch_one(pool)
        .await;
        if waiting.is_ok_and(|n| n == 0) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A run the service completed before any progress was sent, with its failure codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedByService {
    /// The run's type.
    pub run_type: String,
    /// The codes of its failure entries.
    pub codes: Vec<String>,
}

/// The runs already completed now (before phase 2 only the service completes runs).
pub async fn completed_runs(pool: &PgPool) -> Result<HashMap<i64, ClosedByService>, sqlx::Error> {
    let rows: Vec<(i64, String, Value)> = sqlx::query_as(
        "SELECT id, type, failure_summary FROM operation_runs WHERE status = 'completed'",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, run_type, failures)| {
            let codes = failure_codes(&failures);
            (id, ClosedByService { run_type, codes })
        })
        .collect())
}

/// The `code` of every entry of a stored `failure_summary`.
pub fn failure_codes(failures: &Value) -> Vec<String> {
    failures
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            f.get("code")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned()
        })
        .collect()
}

/// True when `closed` is what the hand-off rules allow: a run of [`REJECTED_TYPE`] failed with
/// exactly one failure entry, whose code is one of [`HAND_OFF_FAILURE_CODES`].
pub fn closed_as_allowed(closed: &ClosedByService) -> bool {
    closed.run_type == REJECTED_TYPE.as_str()
        && closed.codes.len() == 1
        && HAND_OFF_FAILURE_CODES.contains(&closed.codes[0].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::BasicProperties;
    use operation_runs::broker::publisher::{ConfirmPublisher, Confirmed};
    use operation_runs::broker::topology::declare_bound_queue;

    /// Against the real broker: while the rejecting queue is bound, the broker nacks a second
    /// job of the rejected type (the first fills it) although the executor queue still takes
    /// it; other types are confirmed; once it is deleted, jobs of the type are confirmed again.
    #[tokio::test]
    async fn the_rejecting_queue_makes_the_broker_nack_jobs_of_its_type_until_it_is_deleted() {
        let url = std::env::var("AMQP_URL").expect("AMQP_URL (see .cargo/config.toml)");
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let topology = Topology::new(&format!("chaos_test_{id}")).unwrap();
        let (executor, rejecting) = (
            format!("{}.chaos.executor", topology.namespace()),
            format!("{}.chaos.rejecting", topology.namespace()),
        );
        let connection = connect(&url, "chaos executors test").await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        topology.declare(&channel).await.unwrap();
        declare_bound_queue(&channel, &executor, &topology.jobs_exchange(), &["#"])
            .await
            .unwrap();
        bind_rejecting_queue(&url, &topology, &rejecting)
            .await
            .unwrap();

        let publisher = ConfirmPublisher::open(&connection).await.unwrap();
        let job = |run_type: &'static str| {
            let (publisher, exchange) = (publisher.clone(), topology.jobs_exchange());
            async move {
                let properties = BasicProperties::default().with_delivery_mode(2);
                publisher
                    .publish(&exchange, run_type, b"{}", properties, true)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        let rejected = REJECTED_TYPE.as_str();
        assert_eq!(
            job(rejected).await,
            Ok(Confirmed::Delivered),
            "fills the queue"
        );
        assert!(job(rejected).await.is_err(), "refused: nacked");
        assert_eq!(job("policy.sync").await, Ok(Confirmed::Delivered));
        delete_rejecting_queue(&url, &rejecting, Instant::now() + Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(job(rejected).await, Ok(Confirmed::Delivered));
        let depth = channel
            .queue_declare(
                executor.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count();
        assert_eq!(depth, 4, "the nacked job reached the executor queue too");

        channel
            .queue_delete(executor.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        topology.delete(&channel).await.unwrap();
        let _ = connection.close(200, "done".into()).await;
    }
}
