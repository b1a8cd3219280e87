//! The one error type of applying commands, by what happens to the message: its variants are the
//! fates a batch can meet, decided once, where the error is made (a database error is classified
//! transient or not as it converts), and matched in one place: `batch::apply_batch`.
//!
//! | variant | the batch | the message |
//! |---|---|---|
//! | [`ApplyError::Retry`] | rolled back, tried again with backoff | redelivered to itself, never acked meanwhile |
//! | [`ApplyError::Split`] | rolled back, its commands applied one per transaction | only the culprit is dead-lettered (`database_rejected`) |
//! | [`ApplyError::DeadLetter`] | the others still apply (refusals are decided before writes) | dead-lettered with the rejection's code |

use std::error::Error;
use std::fmt::Write;

use crate::domain::{Refusal, Rejection};
use crate::store::StoreError;

/// Why a command (or its batch) was not applied, named by what happens to the message.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The command can never succeed: dead-letter it with this code.
    #[error(transparent)]
    DeadLetter(#[from] Rejection),
    /// A transient fault: retry the whole batch later.
    #[error(transparent)]
    Retry(Transient),
    /// An unexpected permanent database error: split the batch so that only the command causing
    /// it is dead-lettered.
    #[error(transparent)]
    Split(StoreError),
}

/// What made a batch worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum Transient {
    /// The database is unreachable, restarting, overloaded, or the transaction lost a race.
    #[error(transparent)]
    Store(StoreError),
    /// Concurrent dispatches kept racing on one identity.
    #[error("identity kept changing under concurrent dispatches")]
    Contended,
    /// Another consumer applied one of the batch's command ids while this transaction ran; the
    /// retry finds it in the inbox and replays its result.
    #[error("a command id was applied concurrently by another consumer")]
    AppliedConcurrently(#[source] sqlx::Error),
}

impl From<StoreError> for ApplyError {
    fn from(e: StoreError) -> Self {
        if e.is_transient() {
            Self::Retry(Transient::Store(e))
        } else {
            Self::Split(e)
        }
    }
}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::from(e).into()
    }
}

impl From<Refusal> for ApplyError {
    fn from(refusal: Refusal) -> Self {
        Self::DeadLetter(refusal.into())
    }
}

impl ApplyError {
    /// True when the same batch may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Retry(_))
    }

    /// Classifies an error of the end-of-transaction writes: a duplicate inbox key means another
    /// consumer applied the same command id meanwhile (retry: the inbox then answers), not bad
    /// data.
    pub fn from_flush(e: sqlx::Error) -> Self {
        let inbox_race = e
            .as_database_error()
            .and_then(|d| d.constraint())
            .is_some_and(|c| c == "processed_commands_pkey");
        if inbox_race {
            Self::Retry(Transient::AppliedConcurrently(e))
        } else {
            e.into()
        }
    }
}

/// `error` and its causes (`source()` chain), joined by `": "`, for the one log line at the edge.
/// A cause whose text its parent already ends with (the common `"…: {0}"` form) is not repeated.
pub fn cause_chain(error: &dyn Error) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            let _ = write!(out, ": {text}");
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ErrorCode;

    #[test]
    fn each_error_says_what_happens_to_its_message() {
        let io = || sqlx::Error::Io(std::io::Error::other("connection reset"));
        assert!(matches!(ApplyError::from(io()), ApplyError::Retry(_)));
        assert!(matches!(
            ApplyError::from(sqlx::Error::RowNotFound),
            ApplyError::Split(_)
        ));
        let unreadable = sqlx::Error::ColumnDecode {
            index: "type".into(),
            source: "unknown operation type".into(),
        };
        assert!(matches!(
            ApplyError::from(unreadable),
            ApplyError::Split(StoreError::InvalidRow { .. })
        ));
        let refused = Rejection::new(ErrorCode::RunNotFound, "no run 1");
        assert!(matches!(
            ApplyError::from(refused),
            ApplyError::DeadLetter(r) if r.code == ErrorCode::RunNotFound
        ));
        assert!(ApplyError::Retry(Transient::Contended).is_transient());
    }

    #[test]
    fn the_cause_chain_names_every_cause_once() {
        let e = ApplyError::Retry(Transient::AppliedConcurrently(sqlx::Error::Io(
            std::io::Error::other("broken pipe"),
        )));
        assert_eq!(
            cause_chain(&e),
            "a command id was applied concurrently by another consumer: \
             error communicating with database: broken pipe"
        );
        let e = ApplyError::from(sqlx::Error::Io(std::io::Error::other("reset")));
        assert_eq!(
            cause_chain(&e),
            "database error: error communicating with database: reset"
        );
    }
}
