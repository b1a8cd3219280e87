//! The AMQP side (lapin): topology, connections, the command consumer, confirmed publishing,
//! dead-lettering, and the shape of every published message (`messages.rs`). Only this module
//! (and the client library, which speaks AMQP for its users) imports lapin.

pub mod connection;
pub mod consumer;
pub mod dead_letter;
pub mod dlq;
pub mod error;
pub mod headers;
pub mod messages;
pub mod permissions;
pub mod publisher;
pub mod queue_depth;
pub mod topology;

pub use error::BrokerError;
/// The AMQP types other layers hold (a delivery, its properties, a connection); only this module
/// builds and publishes them.
pub use lapin::message::Delivery;
pub use lapin::{BasicProperties, Connection};
pub use topology::Topology;
