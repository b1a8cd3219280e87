//! The Postgres side: connecting, migrating, and one file per table family. Functions take a
//! connection (usually a transaction owned by the caller) so that a command's effect, its inbox
//! row and its outbox rows commit together.

pub mod actions;
pub mod batch_write;
pub mod bulk;
pub mod dead_letters;
pub mod error;
pub mod events;
pub mod hosts;
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

/// Opens a pool of at most `max_connections` to `database_url`: one host, or several in
/// libpq's form, the pool then following the primary ([`hosts`]).
///
/// The pool connects lazily, so a service can start while the database is still down and
/// retry; `acquire_timeout` bounds how long one attempt waits.
pub fn connect_lazy(database_url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    hosts::parse(database_url)?.pool(
        PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5)),
        |options| options,
    )
}

/// Creates the database if it does not exist, then applies pending migrations (a no-op when
/// there are none). On several hosts, on the first that accepts writes.
///
/// An up-to-date database is recognised by reading `_sqlx_migrations` alone, before anything
/// that needs more (sqlx's migrator starts with `CREATE TABLE IF NOT EXISTS`, which PostgreSQL
/// checks against the schema's CREATE privilege even when the table exists): so `serve` can
/// run as a role that may only read and write the data (`ops/postgres/roles.sql`) on a
/// database the owner's role migrated.
pub async fn migrate(database_url: &str) -> Result<(), StoreError> {
    let primary = hosts::parse(database_url)?.primary_url().await?;
    let database_url = primary.as_str();
    match up_to_date(database_url).await {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        // No such database yet: created below.
        Err(StoreError::Database(sqlx::Error::Database(e)))
            if e.code().as_deref() == Some("3D000") => {}
        Err(e) => return Err(e),
    }
    if !Postgres::database_exists(database_url).await? {
        Postgres::create_database(database_url).await?;
    }
    let pool = connect_lazy(database_url, 2)?;
    MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(())
}

/// Whether every embedded migration is applied, successfully and with its checksum, and no
/// other is (what sqlx's migrator would then do nothing about). Reads only.
async fn up_to_date(database_url: &str) -> Result<bool, StoreError> {
    let options: PgConnectOptions = database_url.parse().map_err(StoreError::from)?;
    let mut conn: sqlx::PgConnection = sqlx::Connection::connect_with(&options).await?;
    let applied: Option<Vec<(i64, Vec<u8>, bool)>> =
        if sqlx::query_scalar::<_, bool>("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&mut conn)
            .await?
        {
            Some(
                sqlx::query_as(
                    "SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version",
                )
                .fetch_all(&mut conn)
                .await?,
            )
        } else {
            None
        };
    sqlx::Connection::close(conn).await?;
    let Some(applied) = applied else {
        return Ok(false);
    };
    let embedded: Vec<(i64, &[u8])> = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| (m.version, m.checksum.as_ref()))
        .collect();
    Ok(applied.len() == embedded.len()
        && applied
            .iter()
            .zip(&embedded)
            .all(|((version, checksum, success), (v, c))| {
                *success && version == v && checksum.as_slice() == *c
            }))
}
