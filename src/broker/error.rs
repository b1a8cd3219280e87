//! Broker errors. None is a reason to drop a command: a lost connection makes the service
//! reconnect with backoff (unacked commands are redelivered); nacks and channels closed by the
//! broker are handled where the publish happened (the outbox relay reopens its channel, a batch
//! waits for its dead letters) without tearing down the consumer.

/// An error on the AMQP side.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The connection, a channel or an operation failed.
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused to take responsibility for a published message.
    #[error("the broker nacked a publish to {exchange:?}")]
    Nacked {
        /// Where it was published.
        exchange: String,
    },
    /// The connection or a consumer stopped (the broker cancelled it, or a task using it failed).
    #[error("{0}")]
    Stopped(String),
    /// The AMQP URL list is empty, too long or holds something else than AMQP URLs.
    #[error("{0}")]
    InvalidUrl(String),
    /// A namespace or queue name is not valid.
    #[error("{0}")]
    InvalidName(String),
}
