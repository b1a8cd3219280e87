//! The number of ready messages in a queue, read with a passive declare (which never creates
//! or changes the queue).

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::Connection;

use super::BrokerError;

/// Ready messages in `queue`. Uses a channel of its own: a passive declare of a missing queue
/// closes its channel (404), which must not take a working channel with it.
pub async fn message_count(connection: &Connection, queue: &str) -> Result<u32, BrokerError> {
    let channel = connection.create_channel().await?;
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await;
    if channel.status().connected() {
        let _ = channel.close(200, "probed".into()).await;
    }
    Ok(declared?.message_count())
}
