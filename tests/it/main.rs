//! One integration-test binary: every test talks to the real Postgres and RabbitMQ, each with a
//! fresh database (`#[sqlx::test]`) and its own topology namespace.

mod helpers;

mod actions;
mod answered_refusals;
mod broker_addresses;
mod broker_limits;
mod bulk_actions;
mod cli;
mod clients;
mod concurrency;
mod contract;
mod corpus;
mod database_hosts;
mod dead_letters;
mod decoding;
mod dedupe;
mod dispatch;
mod http_connections;
mod lifecycle;
mod observability;
mod operations;
mod otlp;
mod poison;
mod producer;
mod properties;
mod relay;
mod restart;
mod retention;
mod schema;
mod security;
mod trace_context;
mod viewer_actions;
mod viewer_api;
mod viewer_bounds;
mod viewer_browser;
mod viewer_cross_origin;
mod viewer_dead_letters;
mod viewer_live;
mod viewer_pages;
mod viewer_tokens;
mod worker;
