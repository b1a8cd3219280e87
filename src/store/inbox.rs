//! `processed_commands`: the inbox that makes every command take effect at most once.

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

/// The record of `command_id`, if it was applied.
pub async fn find(
    conn: &mut PgConnection,
    command_id: &str,
) -> Result<Option<ProcessedCommand>, sqlx::Error> {
    let row: Option<(String, Value)> =
        sqlx::query_as("SELECT body_hash, result FROM processed_commands WHERE command_id = $1")
            .bind(command_id)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(body_hash, result)| ProcessedCommand { body_hash, result }))
}

/// Records `command_id` as applied, in the transaction of its effect.
pub async fn record(
    conn: &mut PgConnection,
    command_id: &str,
    kind: &str,
    body_hash: &str,
    run_id: Option<i64>,
    result: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO processed_commands (command_id, kind, body_hash, run_id, result)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(command_id)
    .bind(kind)
    .bind(body_hash)
    .bind(run_id)
    .bind(result)
    .execute(conn)
    .await?;
    Ok(())
}
