//! Store errors, classified: transient (retry with backoff) or permanent (the data is refused).

use sqlx::error::DatabaseError;

/// An error from the database layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A query or connection failed.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// A stored row does not parse into its domain type (a type this version does not know, a
    /// malformed failure entry, …). Permanent: reading it again gives the same answer.
    #[error("unreadable row, column {column}: {source}")]
    InvalidRow {
        /// The column that did not parse.
        column: String,
        /// Why.
        source: sqlx::error::BoxDynError,
    },
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// No host of the database URL answered as a primary (they were down, or read-only: a
    /// failover under way). Transient.
    #[error("no database host accepts writes (hosts {0})")]
    NoPrimary(String),
}

impl From<sqlx::Error> for StoreError {
    /// A column that did not decode (the row mappers of `store/` report every value that does
    /// not parse into its domain type this way) is an [`StoreError::InvalidRow`].
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::ColumnDecode { index, source } => Self::InvalidRow {
                column: index,
                source,
            },
            e => Self::Database(e),
        }
    }
}

/// A stored value of a run that does not parse (the source of a column decode error).
#[derive(Debug, thiserror::Error)]
#[error("operation run {run_id}: {reason}")]
pub struct UnparsableValue {
    /// The run's id.
    pub run_id: i64,
    /// What is wrong with the value.
    pub reason: String,
}

impl StoreError {
    /// True when trying again later can succeed: the database is unreachable, restarting,
    /// overloaded, read-only (a demoted primary during a failover: the pool reconnects to the
    /// new one), or the transaction lost a race (serialization failure, deadlock).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => is_transient_sqlx(e),
            StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => is_transient_sqlx(e),
            StoreError::NoPrimary(_) => true,
            StoreError::Migrate(_) | StoreError::InvalidRow { .. } => false,
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
    // 53: insufficient resources; 57P01-57P03: shutdown / cannot connect now; 55P03 lock not
    // available; 25006 read-only transaction: the server was demoted (a failover), and the
    // following pool closes its connections to it (store/hosts.rs).
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code.as_ref(),
            "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "55P03" | "25006"
        )
}
