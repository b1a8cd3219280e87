//! # operation-runs
//!
//! The single source of truth for long-running operations. Producers publish commands to
//! RabbitMQ; the service dedupes dispatches on a run identity hash, persists runs to Postgres,
//! applies progress, and publishes events through a transactional outbox.
//!
//! Read in this order:
//!
//! - [`domain`]: pure types and rules (run, status and outcome transitions, type catalog, identity
//!   hash, command decoding, failure sanitising). No I/O.
//! - [`store`]: the Postgres side. Functions take the caller's transaction.
//! - [`broker`]: the AMQP side (lapin): topology, consumer, confirmed publishing, dead letters.
//! - [`service`]: `oprun serve`, which joins the two: one batch of commands is one transaction.
//! - [`http`]: the HTTP server (probes, metrics) with its timeouts and connection cap.
//! - [`client`]: the producer library and the worker for executors.
//! - [`cli`]: the `oprun` commands.
//! - [`telemetry`]: the optional OTLP export of the service's spans (`--otlp-endpoint`).
//! - [`config`], [`secret`] and [`retry`]: configuration, secrets in it, and backoff, shared by all.

pub mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod domain;
pub mod http;
pub mod retry;
pub mod secret;
pub mod service;
pub mod store;
pub mod telemetry;
