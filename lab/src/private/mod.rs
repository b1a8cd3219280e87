//! Private instances of RabbitMQ and PostgreSQL for runs that break things on purpose.
//!
//! A fault-injection run kills and restarts its broker and database. It must never do that to the
//! machine's own services (a developer's work, other tests, a docker compose stack), so it starts
//! its own: a RabbitMQ node ([`PrivateBroker`]) and a PostgreSQL cluster ([`PrivateDatabase`]),
//! each with its own ports, names and data directory under a temporary folder, from the binaries
//! installed on the machine. Both are stopped and their folders removed when dropped.
//!
//! A run on a RabbitMQ cluster uses [`PrivateCluster`]: three nodes started the same way
//! ([`node`] is the one place that starts a node), also behind `scripts/cluster`. A PostgreSQL
//! HA pair with automatic failover is [`PgHaPair`] (pg_auto_failover), behind `scripts/pg-ha`.

mod broker;
pub mod cluster;
mod database;
mod node;
pub mod pg_ha;
mod tool;

pub use broker::PrivateBroker;
pub use cluster::PrivateCluster;
pub use database::PrivateDatabase;
pub use pg_ha::PgHaPair;

use std::net::TcpListener;

use crate::LabError;

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> Result<u16, LabError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// True when this process runs as root: the servers then run as their own system users
/// (`rabbitmq`, `postgres`), as the packages expect; otherwise as the current user.
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A fresh folder under the system's temporary directory, named `prefix` plus a random part.
fn temp_folder(prefix: &str) -> Result<std::path::PathBuf, LabError> {
    let dir = std::env::temp_dir().join(format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
