//! The test harness: a real broker and a real database per test. `#[sqlx::test]` gives each
//! test a fresh migrated database; [`TestApp::spawn`] adds a random topology namespace and runs
//! the service in-process on that pool. Waits use deadlines, never bare sleeps.
//!
//! By concern: [`spawn`] (the app, its service instances, the test settings), [`broker`]
//! (publishing, queues, subscribers, dead letters, replies), [`waiting`] (deadline-bound polls of
//! the database) and [`bodies`] (command bodies, built with the client's own types where it has
//! them).

mod bodies;
mod broker;
pub mod memory;
mod spawn;
mod waiting;

use std::time::Duration;

pub use bodies::{dispatch, progress};
pub use broker::{
    command_with_reply, dispatch_with_reply, event_types, header, json_properties, request_direct,
    traced_properties,
};
pub use spawn::{
    amqp_url, database_url_for, seed_scopes, serve_command, test_settings, test_settings_with,
    unique_namespace, TestApp,
};
pub use waiting::{wait_for, wait_for_active_run, wait_until};

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);
