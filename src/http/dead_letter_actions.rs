//! The port through which the dead-letters page has letters taken from the queue, replayed and
//! discarded: http/ neither writes to the database nor talks to the broker itself, and the
//! service implements [`DeadLetterActions`] (`service::viewer_dead_letters`) with the code
//! `oprun dlq` runs (`service::dead_letters`).

use std::fmt;

use futures_util::future::BoxFuture;

/// Which stored letters an action takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Letters {
    /// This one.
    One(i64),
    /// Every letter of this code stored up to `upto` (the highest id the confirmation counted:
    /// none stored after it is taken).
    OfCode {
        /// The reason code.
        code: String,
        /// The highest id taken.
        upto: i64,
    },
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Republished, confirmed and removed.
    pub replayed: usize,
    /// Refused (older than the inbox retention, or of unknown age): their ids and why.
    pub refused: Vec<(i64, String)>,
    /// Returned by the broker (unroutable): they stay.
    pub failed: usize,
    /// Held by another replay, or gone meanwhile.
    pub skipped: usize,
}

/// What a discard did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscardedLetters {
    /// Letters matching when it began.
    pub matching: i64,
    /// Letters recorded and removed.
    pub discarded: i64,
}

/// Why an action on dead letters could not be carried out (the database or the broker).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeadLetterActError(pub String);

/// Takes, replays and discards dead letters for the viewer (implemented by the service).
pub trait DeadLetterActions: Send + Sync + fmt::Debug {
    /// Moves the letters waiting in `N.commands.dlq` into the table (as every `oprun dlq`
    /// command does first); how many.
    fn take_from_queue(&self) -> BoxFuture<'_, Result<usize, DeadLetterActError>>;

    /// Replays `letters`: each republished with confirms and removed only once confirmed;
    /// letters older than the inbox retention are refused.
    fn replay<'a>(
        &'a self,
        letters: &'a Letters,
    ) -> BoxFuture<'a, Result<Replayed, DeadLetterActError>>;

    /// Discards `letters`, each recorded first with `by` as who discarded it.
    fn discard<'a>(
        &'a self,
        letters: &'a Letters,
        by: Option<&'a str>,
    ) -> BoxFuture<'a, Result<DiscardedLetters, DeadLetterActError>>;
}
