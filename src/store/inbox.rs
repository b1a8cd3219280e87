//! `processed_commands`: the inbox that makes every command take effect at most once.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::PgConnection;

/// A command already applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedCommand {
    /// SHA-256 of the body's canonical JSON when it was applied.
    pub body_hash: String,
    /// What it produced (the reply body).
    pub result: Value,
}

/// The records of those of `command_ids` that were applied, in one round trip.
pub async fn find_many(
    conn: &mut PgConnection,
    command_ids: &[String],
) -> Result<HashMap<String, ProcessedCommand>, sqlx::Error> {
    let rows: Vec<(String, String, Value)> = sqlx::query_as(
        "SELECT command_id, body_hash, result FROM processed_commands WHERE command_id = ANY($1)",
    )
    .bind(command_ids)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, body_hash, result)| (id, ProcessedCommand { body_hash, result }))
        .collect())
}

/// One inbox row to write.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxRow {
    /// The command id.
    pub command_id: String,
    /// Its kind.
    pub kind: &'static str,
    /// SHA-256 of its canonical body.
    pub body_hash: String,
    /// The run it concerned.
    pub run_id: Option<i64>,
    /// What it produced.
    pub result: Value,
}
