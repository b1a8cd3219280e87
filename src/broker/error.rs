//! Broker errors. All of them are treated as transient by the service: it reconnects with
//! backoff, and unacked commands are redelivered.

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
    /// A namespace or queue name is not valid.
    #[error("{0}")]
    InvalidName(String),
}
