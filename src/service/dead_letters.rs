//! Working with the stored dead letters, for `oprun dlq` and the viewer's dead-letters page
//! alike: moving what `N.commands.dlq` holds into the `dead_letters` table, replaying stored
//! letters (each removed only after the broker confirmed its republish, in a transaction
//! holding its row) and discarding them on the record (`store::dead_letters::discard`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::broker::dlq::{DeadLetterQueue, Republish};
use crate::broker::BrokerError;
use crate::store::dead_letters::{self, Discarded, LetterFilter, NewDeadLetter, StoredDeadLetter};

/// Letters taken from the queue per transaction.
const INGEST_BATCH: usize = 100;
/// Stored letters read, or discarded, per page (and per transaction).
pub const PAGE: i64 = 200;

/// Why working with the dead letters stopped.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The database failed.
    #[error("the database: {0}")]
    Database(#[from] sqlx::Error),
    /// The broker failed.
    #[error("the broker: {0}")]
    Broker(#[from] BrokerError),
}

/// Moves every letter now in the queue into the table: taken in batches, each committed, then
/// acked. A crash between commit and ack stores a letter twice (a replay of both is harmless:
/// the inbox dedupes); nothing is ever acked unstored.
pub async fn ingest(dlq: &DeadLetterQueue, pool: &PgPool) -> Result<usize, DeadLetterError> {
    let mut moved = 0;
    loop {
        let letters = dlq.take_batch(INGEST_BATCH).await?;
        if letters.is_empty() {
            return Ok(moved);
        }
        let rows: Vec<NewDeadLetter> = letters
            .iter()
            .map(|l| NewDeadLetter {
                code: l.code.clone(),
                message: l.message.clone(),
                kind: l.kind.clone(),
                command_id: l.command_id.clone(),
                tenant_id: l.tenant_id,
                routing_key: l.routing_key.clone(),
                first_failed_at: l.first_failed_at,
                failed_at: l.failed_at,
                replays: l.replays,
                delivery_count: l.delivery_count,
                body: l.delivery.data.clone(),
                properties: l.encoded_properties(),
            })
            .collect();
        let mut tx = pool.begin().await?;
        dead_letters::insert_all(&mut tx, &rows).await?;
        tx.commit().await?;
        dlq.ack_all(&letters).await?;
        moved += letters.len();
    }
}

/// Why a letter may not be replayed without `--force` (older than `max_age`, the inbox
/// retention, or of unknown age), if it may not.
pub fn too_old(letter: &StoredDeadLetter, now: DateTime<Utc>, max_age: Duration) -> Option<String> {
    let keep = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
    match letter.first_failed_at {
        None => Some(
            "its age is unknown (no x-oprun-failed-at or x-death time): its command id may be \
             gone from the inbox, so a replay could apply it twice; --force replays it anyway"
                .to_owned(),
        ),
        Some(at) if now - at > keep => Some(format!(
            "it was first dead-lettered {} s ago, longer than the inbox retention of {} s: its \
             command id may be gone from the inbox, so a replay could apply it twice; --force \
             replays it anyway",
            (now - at).num_seconds(),
            max_age.as_secs()
        )),
        Some(_) => None,
    }
}

/// Republishes one stored letter and deletes it once confirmed, in one transaction holding its
/// row (a concurrent replay skips it). `None` when another replay holds it or it is gone;
/// `Some(false)` when the broker returned it (unroutable: it stays).
pub async fn replay_one(
    dlq: &DeadLetterQueue,
    pool: &PgPool,
    id: i64,
) -> Result<Option<bool>, DeadLetterError> {
    let mut tx = pool.begin().await?;
    let Some(letter) = dead_letters::lock(&mut tx, id).await? else {
        return Ok(None);
    };
    let confirmed = dlq
        .republish(&Republish {
            routing_key: &letter.routing_key,
            body: &letter.body,
            properties: &letter.properties,
            replays: letter.replays,
            first_failed_at: letter.first_failed_at,
        })
        .await?;
    if confirmed {
        dead_letters::delete(&mut tx, id).await?;
        tx.commit().await?;
    }
    Ok(Some(confirmed))
}

/// Which letters a replay takes.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter<'a> {
    /// At most this many replays (`None`: every matching letter).
    pub limit: Option<usize>,
    /// Only letters with this error code.
    pub code: Option<&'a str>,
    /// Only letters of this command kind.
    pub kind: Option<&'a str>,
    /// Only this letter.
    pub id: Option<i64>,
    /// Only letters stored up to this id (none stored after a count was shown).
    pub upto: Option<i64>,
    /// The inbox retention, unless forced: older letters (and those of unknown age) are
    /// refused.
    pub max_age: Option<Duration>,
}

impl ReplayFilter<'_> {
    fn matches(&self, letter: &StoredDeadLetter) -> bool {
        self.code.is_none_or(|c| letter.code == c)
            && self.kind.is_none_or(|k| letter.kind.as_deref() == Some(k))
            && self.id.is_none_or(|id| letter.id == id)
    }
}

/// What a replay did with one letter.
#[derive(Debug)]
pub enum ReplayStep<'a> {
    /// Not taken: it does not match, or another replay holds it (or it is gone).
    Skipped,
    /// Refused, and why: older than the inbox retention, or of unknown age.
    Refused(&'a StoredDeadLetter, String),
    /// A dry run would replay it.
    WouldReplay(&'a StoredDeadLetter),
    /// Republished, confirmed and removed.
    Replayed(&'a StoredDeadLetter),
    /// Returned by the broker (unroutable): it stays.
    Failed(&'a StoredDeadLetter),
}

/// Counts of a replay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayCounts {
    /// Republished and removed (or, in a dry run, that would be).
    pub replayed: usize,
    /// Not matching, or held by another replay.
    pub skipped: usize,
    /// Too old to replay without forcing.
    pub refused: usize,
    /// Returned by the broker.
    pub failed: usize,
}

/// Replays the stored letters `filter` takes, oldest first, telling `step` what became of each
/// letter looked at.
pub async fn replay(
    dlq: &DeadLetterQueue,
    pool: &PgPool,
    filter: &ReplayFilter<'_>,
    dry_run: bool,
    mut step: impl FnMut(&ReplayCounts, ReplayStep<'_>),
) -> Result<ReplayCounts, DeadLetterError> {
    let now = Utc::now();
    let limit = filter.limit.unwrap_or(usize::MAX);
    let mut counts = ReplayCounts::default();
    // One letter: read it alone rather than every page before it.
    let mut after = filter.id.map_or(0, |id| id - 1);
    'pages: loop {
        let page = dead_letters::page(pool, after, PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.id;
        for letter in &page {
            if counts.replayed >= limit
                || filter.upto.is_some_and(|u| letter.id > u)
                || filter.id.is_some_and(|id| letter.id > id)
            {
                break 'pages;
            }
            let refusal = filter.max_age.and_then(|max| too_old(letter, now, max));
            let done = if !filter.matches(letter) {
                counts.skipped += 1;
                ReplayStep::Skipped
            } else if let Some(reason) = refusal {
                counts.refused += 1;
                ReplayStep::Refused(letter, reason)
            } else if dry_run {
                counts.replayed += 1;
                ReplayStep::WouldReplay(letter)
            } else {
                match replay_one(dlq, pool, letter.id).await? {
                    Some(true) => {
                        counts.replayed += 1;
                        ReplayStep::Replayed(letter)
                    }
                    Some(false) => {
                        counts.failed += 1;
                        ReplayStep::Failed(letter)
                    }
                    None => {
                        counts.skipped += 1;
                        ReplayStep::Skipped
                    }
                }
            };
            step(&counts, done);
        }
    }
    Ok(counts)
}

/// How a discard went: how many letters matched when it began, and the records of those it
/// discarded (the others were held by a replay, or went meanwhile).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscardCounts {
    /// Letters matching at the start (stored up to `upto`).
    pub matching: i64,
    /// Letters discarded.
    pub discarded: i64,
}

/// Discards every letter `filter` matches that is stored up to `upto` (default: the highest
/// matching id now, so none stored after the count is taken), in transactions of [`PAGE`]
/// letters, each recorded first with `by` as who discarded it; `page` is told each page's
/// records, in id order.
pub async fn discard(
    pool: &PgPool,
    filter: &LetterFilter,
    upto: Option<i64>,
    by: Option<&str>,
    mut page: impl FnMut(&[Discarded]),
) -> Result<DiscardCounts, DeadLetterError> {
    let (matching, last) = dead_letters::count_matching(pool, filter).await?;
    let upto = match upto {
        Some(u) => u.min(last.unwrap_or(0)),
        None => last.unwrap_or(0),
    };
    let mut counts = DiscardCounts {
        matching,
        discarded: 0,
    };
    let mut after = 0;
    loop {
        let mut tx = pool.begin().await?;
        let mut gone = dead_letters::discard(&mut tx, filter, after, upto, PAGE, by).await?;
        tx.commit().await?;
        gone.sort_by_key(|d| d.letter_id);
        let Some(tail) = gone.last() else { break };
        after = tail.letter_id;
        page(&gone);
        counts.discarded += gone.len() as i64;
    }
    Ok(counts)
}
