//! `dead_letters`: the dead letters taken from `N.commands.dlq`, read and replayed from here so
//! that looking at them changes nothing (see `broker::dlq`).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

/// At most this many characters of a text column (code, message, kind, command id, routing
/// key) are kept: they come from the message, the body and the headers keep the rest.
pub const TEXT_COLUMN_CHARS: usize = 1_000;

/// A dead letter to store, as taken from the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeadLetter {
    /// The reason code.
    pub code: String,
    /// The reason message.
    pub message: String,
    /// The command kind, when the body says.
    pub kind: Option<String>,
    /// The command id (body field or message_id).
    pub command_id: Option<String>,
    /// The routing key it was first published with.
    pub routing_key: String,
    /// When it was first refused (kept across replays).
    pub first_failed_at: Option<DateTime<Utc>>,
    /// When this letter was refused.
    pub failed_at: Option<DateTime<Utc>>,
    /// How often it was replayed before.
    pub replays: i64,
    /// The broker's delivery count when it was taken.
    pub delivery_count: i64,
    /// The message body.
    pub body: Vec<u8>,
    /// The message properties, encoded by the broker layer.
    pub properties: Vec<u8>,
}

/// A stored dead letter.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredDeadLetter {
    /// Its id: the order letters were taken from the queue in.
    pub id: i64,
    /// The reason code.
    pub code: String,
    /// The reason message.
    pub message: String,
    /// The command kind, when the body says.
    pub kind: Option<String>,
    /// The command id.
    pub command_id: Option<String>,
    /// The routing key it was first published with.
    pub routing_key: String,
    /// When it was first refused (kept across replays): its age.
    pub first_failed_at: Option<DateTime<Utc>>,
    /// When this letter was refused.
    pub failed_at: Option<DateTime<Utc>>,
    /// How often it was replayed before.
    pub replays: i64,
    /// The broker's delivery count when it was taken.
    pub delivery_count: i64,
    /// The message body.
    pub body: Vec<u8>,
    /// The message properties, encoded by the broker layer.
    pub properties: Vec<u8>,
    /// When it was stored here.
    pub stored_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, code, message, kind, command_id, routing_key, first_failed_at, \
    failed_at, replays, delivery_count, body, properties, stored_at";

/// Text Postgres can store: NUL (which a `text` column refuses) replaced, at most
/// [`TEXT_COLUMN_CHARS`] characters.
fn storable(text: &str) -> String {
    text.chars()
        .take(TEXT_COLUMN_CHARS)
        .map(|c| if c == '\0' { '\u{FFFD}' } else { c })
        .collect()
}

/// Inserts `letters` in order (ids follow it).
pub async fn insert_all(
    conn: &mut PgConnection,
    letters: &[NewDeadLetter],
) -> Result<(), sqlx::Error> {
    for l in letters {
        sqlx::query(
            "INSERT INTO dead_letters (code, message, kind, command_id, routing_key,
                 first_failed_at, failed_at, replays, delivery_count, body, properties)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(storable(&l.code))
        .bind(storable(&l.message))
        .bind(l.kind.as_deref().map(storable))
        .bind(l.command_id.as_deref().map(storable))
        .bind(storable(&l.routing_key))
        .bind(l.first_failed_at)
        .bind(l.failed_at)
        .bind(l.replays)
        .bind(l.delivery_count)
        .bind(&l.body)
        .bind(&l.properties)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Up to `limit` letters with an id above `after`, oldest first.
pub async fn page(
    pool: &PgPool,
    after: i64,
    limit: i64,
) -> Result<Vec<StoredDeadLetter>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM dead_letters WHERE id > $1 ORDER BY id LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Locks letter `id` for this transaction; `None` if it is gone or another replay holds it.
pub async fn lock(
    conn: &mut PgConnection,
    id: i64,
) -> Result<Option<StoredDeadLetter>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM dead_letters WHERE id = $1 FOR UPDATE SKIP LOCKED"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Deletes letter `id` (after its replay was confirmed).
pub async fn delete(conn: &mut PgConnection, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM dead_letters WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// How many letters are stored.
pub async fn count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(pool)
        .await
}
