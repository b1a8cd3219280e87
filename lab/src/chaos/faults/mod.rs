//! What breaks things, and the service it breaks: [`schedule`] plans the faults from the seed
//! and injects them (each logged as a disruption); [`fleet`] starts, SIGKILLs and watches the
//! `oprun serve` child processes; [`infra`] restarts the broker and the database (or fails the
//! database pair over) and brings them back whatever happens, [`db_probe`] measures how long
//! the pair took no writes; [`progress`] says how far the service has got, which paces the
//! faults and the publishing. The switchable injections: [`executors`] (a queue refusing one
//! type's jobs), [`unbinding`] (the DLQ unbound), [`idle`] (idle HTTP connections),
//! [`retention`] (the service prunes on a short window), [`viewers`] (readers and live streams
//! of a large run), [`operator_api`] (the operator's actions over the API). Imports from `plan/`
//! only, never from `verification/`.

pub mod db_probe;
pub mod executors;
pub mod fleet;
pub mod idle;
pub mod infra;
pub mod operator_api;
pub mod progress;
pub mod retention;
pub mod schedule;
pub mod unbinding;
pub mod viewers;
