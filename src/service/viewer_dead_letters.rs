//! The dead-letters page's actions: [`crate::http::dead_letter_actions::DeadLetterActions`]
//! carried out by [`super::dead_letters`], the code `oprun dlq` runs, on the viewer's pool.
//! Taking letters from the queue and replaying them open a broker connection of their own for
//! the one request (operators act rarely; the command pipeline's connection is never borrowed),
//! closed when done; a discard only needs the database.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::PgPool;

use super::dead_letters::{self, DeadLetterError, ReplayFilter, ReplayStep};
use crate::broker::connection::Connector;
use crate::broker::dlq::DeadLetterQueue;
use crate::broker::{BrokerError, Topology};
use crate::http::dead_letter_actions::{
    DeadLetterActError, DeadLetterActions, DiscardedLetters, Letters, Replayed,
};
use crate::store::dead_letters::LetterFilter;

/// How long the page waits for the broker to answer a connection.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// The service's side of the dead-letters page.
#[derive(Clone)]
pub struct ViewerDeadLetters {
    pool: PgPool,
    broker: Arc<Connector>,
    topology: Topology,
    inbox_retention: Duration,
}

impl std::fmt::Debug for ViewerDeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewerDeadLetters")
            .field("namespace", &self.topology.namespace())
            .field("inbox_retention", &self.inbox_retention)
            .finish_non_exhaustive()
    }
}

impl ViewerDeadLetters {
    /// Actions on `pool` and on the broker's `N.commands.dlq` of `topology`; a replay refuses
    /// letters older than `inbox_retention` (the service's own: within it, the inbox makes a
    /// replayed command that was applied before a no-op).
    pub fn new(
        pool: PgPool,
        broker: Arc<Connector>,
        topology: Topology,
        inbox_retention: Duration,
    ) -> Self {
        Self {
            pool,
            broker,
            topology,
            inbox_retention,
        }
    }

    /// A reader of the queue on a connection of its own, and the connection.
    async fn open(&self) -> Result<(crate::broker::Connection, DeadLetterQueue), DeadLetterError> {
        let connection = tokio::time::timeout(
            CONNECT_WAIT,
            self.broker.connect("oprun viewer dead letters"),
        )
        .await
        .map_err(|_| BrokerError::Stopped("the broker did not answer".into()))??;
        match DeadLetterQueue::open(&connection, self.topology.clone()).await {
            Ok(dlq) => Ok((connection, dlq)),
            Err(e) => {
                let _ = connection.close(200, "done".into()).await;
                Err(e.into())
            }
        }
    }

    async fn close(connection: crate::broker::Connection, dlq: DeadLetterQueue) {
        dlq.release().await;
        let _ = connection.close(200, "done".into()).await;
    }

    async fn replay_letters(&self, letters: &Letters) -> Result<Replayed, DeadLetterError> {
        let filter = match letters {
            Letters::One(id) => ReplayFilter {
                id: Some(*id),
                max_age: Some(self.inbox_retention),
                ..ReplayFilter::default()
            },
            Letters::OfCode { code, upto } => ReplayFilter {
                code: Some(code),
                upto: Some(*upto),
                max_age: Some(self.inbox_retention),
                ..ReplayFilter::default()
            },
        };
        let (connection, dlq) = self.open().await?;
        let mut refused = Vec::new();
        let counts = dead_letters::replay(&dlq, &self.pool, &filter, false, |_, step| {
            if let ReplayStep::Refused(letter, reason) = step {
                refused.push((letter.id, reason));
            }
        })
        .await;
        Self::close(connection, dlq).await;
        let counts = counts?;
        Ok(Replayed {
            replayed: counts.replayed,
            refused,
            failed: counts.failed,
            // Letters of other codes read on the way are not this replay's business.
            skipped: match letters {
                Letters::One(_) => {
                    usize::from(counts.replayed + counts.refused + counts.failed == 0)
                }
                Letters::OfCode { .. } => 0,
            },
        })
    }
}

fn failed(e: DeadLetterError) -> DeadLetterActError {
    tracing::warn!(error = %e, "a dead-letters page action failed");
    DeadLetterActError(e.to_string())
}

impl DeadLetterActions for ViewerDeadLetters {
    fn take_from_queue(&self) -> BoxFuture<'_, Result<usize, DeadLetterActError>> {
        Box::pin(async move {
            let (connection, dlq) = self.open().await.map_err(failed)?;
            let moved = dead_letters::ingest(&dlq, &self.pool).await;
            Self::close(connection, dlq).await;
            moved.map_err(failed)
        })
    }

    fn replay<'a>(
        &'a self,
        letters: &'a Letters,
    ) -> BoxFuture<'a, Result<Replayed, DeadLetterActError>> {
        Box::pin(async move { self.replay_letters(letters).await.map_err(failed) })
    }

    fn discard<'a>(
        &'a self,
        letters: &'a Letters,
        by: Option<&'a str>,
    ) -> BoxFuture<'a, Result<DiscardedLetters, DeadLetterActError>> {
        Box::pin(async move {
            let (filter, upto) = match letters {
                Letters::One(id) => (LetterFilter::Ids(vec![*id]), None),
                Letters::OfCode { code, upto } => (
                    LetterFilter::Matching {
                        code: code.clone(),
                        kind: None,
                        failed_before: None,
                    },
                    Some(*upto),
                ),
            };
            let done = dead_letters::discard(&self.pool, &filter, upto, by, |_| {})
                .await
                .map_err(failed)?;
            Ok(DiscardedLetters {
                matching: done.matching,
                discarded: done.discarded,
            })
        })
    }
}
