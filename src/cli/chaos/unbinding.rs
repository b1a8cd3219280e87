//! The `dlq-unbind` injection (issue 9): `N.commands.dlq` unbound from `N.dlx` for a few
//! seconds, as an operator's mistake would leave it, then bound again. Dead letters published
//! meanwhile must not be lost: the service publishes them `mandatory`, waits when they come back
//! and declares its topology again (which binds the queue again before this does).

use std::time::Duration;

use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;
use tokio::time::Instant;

use crate::broker::connection::connect;
use crate::broker::{BrokerError, Topology};

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
        let connection = connect(amqp_url, "oprun chaos dlq unbinding").await?;
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
            let connection = connect(amqp_url, "oprun chaos dlq unbinding").await?;
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
