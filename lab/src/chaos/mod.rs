//! `oprun-lab chaos`: the fault-injection run. On a broker and a database of its own (private
//! instances, see [`faults::infra`]), in a sandbox of its own ([`crate::sandbox`]), it
//! publishes a seeded workload while killing the service, restarting the broker and the
//! database, running a second instance, injecting hostile input and operator mistakes, pruning
//! on a short window, sending progress to completed runs and reading a large run through the
//! viewer, then checks that nothing was lost, applied twice, duplicated, left unpublished,
//! numbered out of order or delivered twice without cause.
//!
//! Reading order, in one direction (`plan` ← `faults` ← `verification` ← the run):
//!
//! - [`scenario`]: the flags and the run from set-up to clean-up; [`drive`]: the phases.
//! - [`plan`]: what is sent, planned from the seed (pure): the workload, its bad messages and
//!   the switchable injections.
//! - [`faults`]: what breaks things: the fault schedule, the service's processes, the broker
//!   and database restarts, and the injections that act on the service.
//! - [`verification`]: the subscriber, quiescence, the checks and the closing figures.
//! - The producer is [`crate::publisher::Reconnecting`], which survives a broker restart.

pub mod drive;
pub mod faults;
pub mod plan;
pub mod scenario;
pub mod verification;

pub use scenario::ChaosArgs;
