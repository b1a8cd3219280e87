//! The tracker: `oprun serve`. Consumes commands in batches, applies each batch in one
//! transaction, replies and dead-letters with confirms, acks; relays the outbox; reaps stale runs;
//! prunes history past its retention; reconnects after broker or database faults; shuts down
//! cleanly on a token.
//!
//! One command goes one way down: [`serve`] (the service, its reconnect and consume loop) →
//! [`deliveries`] (decode, settle, the one ack decision) → [`batch`] (lanes, the retry/split
//! loop, the transaction) → [`command`] (one command: the inbox, then [`apply`] or
//! [`actions`]) → [`tx_buffer`] (what the transaction writes).

pub mod actions;
pub mod apply;
pub mod batch;
pub mod command;
pub mod dead_letters;
pub mod deliveries;
pub mod error;
pub mod health;
pub mod metrics;
pub mod pruner;
pub mod reaper;
pub mod relay;
pub mod reply_guard;
pub mod serve;
pub mod tx_buffer;
pub mod viewer_actions;
pub mod viewer_dead_letters;

pub use serve::{serve, viewer_keys, ServeError, Service};

/// The batch path's former home, for callers that import [`batch::apply_batch`] from here.
pub mod handler {
    pub use super::batch::apply_batch;
}
