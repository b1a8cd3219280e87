//! `oprun-lab chaos`: the fault-injection run. On a broker and a database of its own (private
//! instances, see [`infra`]), in a namespace and database of its own, it publishes a seeded
//! workload while killing the service, restarting the broker and the database, running a second
//! instance, injecting hostile input and operator mistakes, pruning on a short window, sending
//! progress to completed runs and reading a large run through the viewer, then checks that
//! nothing was lost, applied twice, duplicated, left unpublished, numbered out of order or
//! delivered twice without cause.
//!
//! Reading order:
//!
//! - [`scenario`]: the flags and the run from set-up to clean-up; [`drive`]: the phases;
//!   [`figures`]: the closing line.
//! - [`workload`]: the seeded plan of commands and what each run must end up as (pure), worded
//!   by [`dispatches`], [`steps`] and [`bad_messages`]; [`shuffled_json`] writes the bodies
//!   with keys in random order.
//! - [`crate::sandbox`]: the run's own database and namespace, created and removed.
//! - [`fleet`]: the `oprun serve` child processes (start, SIGKILL, watch).
//! - [`faults`]: the fault plan and its injection; [`infra`] restarts the broker and the
//!   database, and brings them back whatever happens.
//! - [`crate::publisher::Reconnecting`] and [`subscriber`]: the producer and the event
//!   subscriber, both surviving a broker restart (at-least-once in both directions).
//! - [`progress`]: how far the service has got, which paces publishing and the faults.
//! - [`quiescence`]: waiting until everything has settled, with a deadline.
//! - [`check`]: the checks behind the closing figures; [`deliveries`]: which duplicate
//!   deliveries a disruption explains.
//! - The injections, each switchable ([`injections`]): [`executors`] (a queue refusing one
//!   type's jobs), [`unbinding`] (the DLQ unbound), [`idle`] (idle HTTP connections),
//!   [`retention`] (the service prunes on a short window), [`viewers`] (readers and live
//!   streams of a large run); the bursts of bad messages, the failure flood and the late
//!   progress on completed runs are part of the workload.

pub mod bad_messages;
pub mod check;
pub mod deliveries;
pub mod dispatches;
pub mod drive;
pub mod executors;
pub mod faults;
pub mod figures;
pub mod fleet;
pub mod idle;
pub mod infra;
pub mod injections;
pub mod progress;
pub mod quiescence;
pub mod retention;
pub mod scenario;
pub mod shuffled_json;
pub mod steps;
pub mod subscriber;
pub mod unbinding;
pub mod viewers;
pub mod workload;

pub use scenario::ChaosArgs;
