//! `operation_run_events`: the history of every run's events, and `operation_run_event_outbox`:
//! the positions of those the broker has not confirmed yet. An event row is written once and
//! never updated; publishing it deletes its outbox position.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// The columns of [`StoredEvent`]; the document comes as text, to be published without parsing.
const EVENT_COLUMNS: &str = "e.position, e.id, e.run_id, e.sequence, e.type, e.workspace_id, \
     e.tenant_id, e.cloud_event::text AS cloud_event, e.created_at, \
     NOT EXISTS (SELECT 1 FROM operation_run_event_outbox o WHERE o.position = e.position) AS published";

/// An event as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredEvent {
    /// Global insertion order; per run it follows `sequence`.
    pub position: i64,
    /// The event id (CloudEvents `id`, AMQP `message_id`).
    pub id: Uuid,
    /// The run.
    pub run_id: i64,
    /// Position in the run's history, from 1.
    pub sequence: i64,
    /// CloudEvents `type`.
    #[sqlx(rename = "type")]
    pub event_type: String,
    /// The run's workspace.
    pub workspace_id: i64,
    /// The run's tenant.
    pub tenant_id: Option<i64>,
    /// The CloudEvents document as JSON text: published as it is, never parsed again.
    pub cloud_event: String,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// Whether the broker confirmed it (false while in the outbox).
    pub published: bool,
}

/// The last sequence number of `run_id` (0 for a run with no events). The caller holds the run's
/// row lock, so no other transaction can take the next number.
pub async fn last_sequence(conn: &mut PgConnection, run_id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce(max(sequence), 0) FROM operation_run_events WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_one(conn)
    .await
}

/// A batch of the outbox, in position order: its events, and its positions whose event is gone.
#[derive(Debug, Default)]
pub struct OutboxBatch {
    /// The unpublished events, in position order.
    pub events: Vec<StoredEvent>,
    /// Positions without an event (left by a deletion before the database refused deleting an
    /// event still in the outbox): nothing to publish.
    pub orphans: Vec<i64>,
}

/// An outbox position and its event's columns (all `None`: the event is gone).
#[derive(sqlx::FromRow)]
struct OutboxRow {
    outbox_position: i64,
    id: Option<Uuid>,
    run_id: Option<i64>,
    sequence: Option<i64>,
    #[sqlx(rename = "type")]
    event_type: Option<String>,
    workspace_id: Option<i64>,
    tenant_id: Option<i64>,
    cloud_event: Option<String>,
    created_at: Option<DateTime<Utc>>,
}

/// The first `limit` positions of the outbox, with their events.
pub async fn unpublished(
    executor: impl PgExecutor<'_>,
    limit: i64,
) -> Result<OutboxBatch, sqlx::Error> {
    // The positions first, then one index probe each (`LIMIT 1` keeps the lateral subquery from
    // being flattened into a join, which the planner may run as a merge join along the events'
    // primary key from its start, reading the whole history on every round).
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "SELECT b.position AS outbox_position, e.id, e.run_id, e.sequence, e.type, e.workspace_id,
                e.tenant_id, e.cloud_event, e.created_at
         FROM (SELECT position FROM operation_run_event_outbox ORDER BY position LIMIT $1) b
         LEFT JOIN LATERAL (
             SELECT id, run_id, sequence, type, workspace_id, tenant_id,
                    cloud_event::text AS cloud_event, created_at
             FROM operation_run_events WHERE position = b.position LIMIT 1) e ON true
         ORDER BY b.position",
    )
    .bind(limit)
    .fetch_all(executor)
    .await?;
    let mut batch = OutboxBatch::default();
    for row in rows {
        let position = row.outbox_position;
        match row.into_event() {
            Some(event) => batch.events.push(event),
            None => batch.orphans.push(position),
        }
    }
    Ok(batch)
}

impl OutboxRow {
    /// The event, if it is still there (every column but `tenant_id` is `NOT NULL`).
    fn into_event(self) -> Option<StoredEvent> {
        Some(StoredEvent {
            position: self.outbox_position,
            id: self.id?,
            run_id: self.run_id?,
            sequence: self.sequence?,
            event_type: self.event_type?,
            workspace_id: self.workspace_id?,
            tenant_id: self.tenant_id,
            cloud_event: self.cloud_event?,
            created_at: self.created_at?,
            published: false,
        })
    }
}

/// Marks events as published (each one the broker confirmed; the others stay in the outbox), or
/// drops orphan positions: the positions leave the outbox, the event rows are not touched.
pub async fn mark_published(
    executor: impl PgExecutor<'_>,
    positions: &[i64],
) -> Result<(), sqlx::Error> {
    if positions.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM operation_run_event_outbox WHERE position = ANY($1)")
        .bind(positions)
        .execute(executor)
        .await?;
    Ok(())
}

/// The whole event history of a run, in sequence order.
pub async fn for_run(
    executor: impl PgExecutor<'_>,
    run_id: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {EVENT_COLUMNS} FROM operation_run_events e WHERE e.run_id = $1 ORDER BY e.sequence"
    ))
    .bind(run_id)
    .fetch_all(executor)
    .await
}

/// Events recorded at or after `since`, in position order (per-run order holds), after position
/// `after` (for paging), at most `limit`.
pub async fn since(
    executor: impl PgExecutor<'_>,
    since: DateTime<Utc>,
    after: i64,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {EVENT_COLUMNS} FROM operation_run_events e WHERE e.created_at >= $1 AND e.position > $2 ORDER BY e.position LIMIT $3"
    ))
    .bind(since)
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// The outbox backlog: unpublished events and the age in seconds of the oldest.
pub async fn backlog(executor: impl PgExecutor<'_>) -> Result<(i64, f64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*),
                coalesce(extract(epoch FROM now() - (
                    SELECT created_at FROM operation_run_events
                    WHERE position = (SELECT min(position) FROM operation_run_event_outbox)))::float8, 0)
         FROM operation_run_event_outbox",
    )
    .fetch_one(executor)
    .await
}
