//! Store errors, classified: transient (retry with backoff) or permanent (the data is refused).

use sqlx::error::DatabaseError;

/// An error from the database layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A query or connection failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// True when trying again later can succeed: the database is unreachable, restarting,
    /// overloaded, or the transaction lost a race (serialization failure, deadlock).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => is_transient_sqlx(e),
            StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => is_transient_sqlx(e),
            StoreError::Migrate(_) => false,
        }
    }
}

fn is_transient_sqlx(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => is_transient_sqlstate(db.as_ref()),
        _ => false,
    }
}

fn is_transient_sqlstate(db: &dyn DatabaseError) -> bool {
    let Some(code) = db.code() else { return false };
    // 08: connection exceptions; 40001 serialization failure; 40P01 deadlock;
    // 53: insufficient resources; 57P01-57P03: shutdown / cannot connect now; 55P03 lock not available.
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code.as_ref(),
            "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "55P03"
        )
}
