//! The AMQP side (lapin): topology, connections, the command consumer, confirmed publishing,
//! and dead-lettering. Only this module imports lapin.

pub mod connection;
pub mod consumer;
pub mod dead_letter;
pub mod dlq;
pub mod error;
pub mod headers;
pub mod permissions;
pub mod publisher;
pub mod queue_depth;
pub mod topology;

pub use error::BrokerError;
pub use topology::Topology;
