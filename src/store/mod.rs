//! The Postgres side: connecting, migrating, and one file per table family. Functions take a
//! connection (usually a transaction owned by the caller) so that a command's effect, its inbox
//! row and its outbox rows commit together.

pub mod batch_write;
pub mod dead_letters;
pub mod error;
pub mod events;
pub mod inbox;
pub mod jobs;
pub mod legacy;
pub mod locks;
pub mod retention;
pub mod runs;
pub mod scope;
pub mod settings;
pub mod viewer;

use std::time::Duration;

use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

pub use error::StoreError;

/// The embedded migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool of at most `max_connections` to `database_url`.
///
/// The pool connects lazily, so a service can start while the database is still down and
/// retry; `acquire_timeout` bounds how long one attempt waits.
pub fn connect_lazy(database_url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let options: PgConnectOptions = database_url.parse().map_err(StoreError::from)?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// Creates the database if it does not exist, then applies pending migrations (a no-op when
/// there are none).
pub async fn migrate(database_url: &str) -> Result<(), StoreError> {
    if !Postgres::database_exists(database_url).await? {
        Postgres::create_database(database_url).await?;
    }
    let pool = connect_lazy(database_url, 2)?;
    MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(())
}
