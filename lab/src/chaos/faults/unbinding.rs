//! The `dlq-unbind` injection: `N.commands.dlq` unbound from `N.dlx` for a few
//! seconds, as an operator's mistake would leave it, then bound again. Dead letters published
//! meanwhile must not be lost: the service publishes them `mandatory`, waits when they come back
//! and declares its topology again (which binds the queue again before this does).

use std::time::Duration;

use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;
use tokio::time::Instant;

use operation_runs::broker::connection::connect;
use operation_runs::broker::{BrokerError, Topology};

/// How long binding again is retried (the broker may be restarting).
const REBIND_FOR: Duration = Duration::from_secs(120);

/// Unbinds the dead-letter queue, waits `unbound_for`, binds it again.
pub async fn unbind_dead_letters(
    amqp_url: &str,
    topology: &Topology,
    unbound_for: Duration,
) -> Result<(), String> {
    let dlq = topology.dead_letter_queue();
    let dlx = topology.dead_letter_exchange();
    let unbind = async {
        let connection = connect(amqp_url, "oprun-lab chaos dlq unbinding").await?;
        let channel = connection.create_channel().await?;
        channel
            .queue_unbind(
                dlq.as_str().into(),
                dlx.as_str().into(),
                "".into(),
                FieldTable::default(),
            )
            .await?;
        let _ = connection.close(200, "unbound".into()).await;
        Ok::<_, BrokerError>(())
    };
    unbind
        .await
        .map_err(|e| format!("cannot unbind {dlq}: {e}"))?;
    tokio::time::sleep(unbound_for).await;
    let until = Instant::now() + REBIND_FOR;
    loop {
        let rebind = async {
            let connection = connect(amqp_url, "oprun-lab chaos dlq unbinding").await?;
            let channel = connection.create_channel().await?;
            channel
                .queue_bind(
                    dlq.as_str().into(),
                    dlx.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let _ = connection.close(200, "bound".into()).await;
            Ok::<_, BrokerError>(())
        };
        match rebind.await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < until => {
                eprintln!("chaos: binding {dlq} again: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(format!("cannot bind {dlq} again: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::BasicProperties;
    use operation_runs::broker::publisher::{ConfirmPublisher, Confirmed};

    /// Against the real broker: a mandatory dead letter comes back while the queue is unbound,
    /// and is routed once it is bound again.
    #[tokio::test]
    async fn the_dead_letter_queue_is_unroutable_for_the_stretch_and_bound_again_after() {
        let url = std::env::var("AMQP_URL").expect("AMQP_URL (see .cargo/config.toml)");
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let topology = Topology::new(&format!("chaos_test_{id}")).unwrap();
        let connection = connect(&url, "chaos unbinding test").await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        topology.declare(&channel).await.unwrap();
        let publisher = ConfirmPublisher::open(&connection).await.unwrap();
        let dead_letter = || {
            let (publisher, exchange) = (publisher.clone(), topology.dead_letter_exchange());
            async move {
                publisher
                    .publish(&exchange, "", b"{}", BasicProperties::default(), true)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(dead_letter().await, Confirmed::Delivered);
        let stretch = tokio::spawn({
            let (url, topology) = (url.clone(), topology.clone());
            async move { unbind_dead_letters(&url, &topology, Duration::from_secs(2)).await }
        });
        let unbound_until = Instant::now() + Duration::from_secs(10);
        while dead_letter().await != Confirmed::Returned {
            assert!(
                Instant::now() < unbound_until,
                "the queue was never unbound"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stretch.await.unwrap().unwrap();
        assert_eq!(dead_letter().await, Confirmed::Delivered);

        topology.delete(&channel).await.unwrap();
        let _ = connection.close(200, "done".into()).await;
    }
}
