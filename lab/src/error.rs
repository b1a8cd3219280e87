//! The lab's own error: one line for the person running a bench or a fault-injection run.

use operation_runs::broker::BrokerError;
use operation_runs::store::StoreError;

/// A failed lab run.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The arguments are not valid.
    #[error("{0}")]
    Invalid(String),
    /// The run found what it was built to find: a broken guarantee, or a set-up it cannot use.
    #[error("{0}")]
    Failed(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A child process, a file or the terminal failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<sqlx::Error> for LabError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<lapin::Error> for LabError {
    fn from(e: lapin::Error) -> Self {
        Self::Broker(e.into())
    }
}
