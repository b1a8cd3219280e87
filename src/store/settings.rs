//! `service_settings`: the settings `oprun serve` started with, for operator tools that must
//! agree with them (`oprun dlq replay` and the inbox retention).

use std::time::Duration;

use sqlx::PgPool;

/// The name under which `serve` records its `--inbox-retention` (in whole seconds).
const INBOX_RETENTION: &str = "inbox_retention_seconds";

/// Records `retention` as the inbox retention `serve` runs with (the last start wins).
pub async fn record_inbox_retention(pool: &PgPool, retention: Duration) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO service_settings (name, value) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, recorded_at = now()",
    )
    .bind(INBOX_RETENTION)
    .bind(retention.as_secs().to_string())
    .execute(pool)
    .await?;
    Ok(())
}

/// The inbox retention the last `serve` started with, and when it recorded it; `None` when no
/// `serve` has recorded one (or the row cannot be read as seconds).
pub async fn recorded_inbox_retention(
    pool: &PgPool,
) -> Result<Option<(Duration, chrono::DateTime<chrono::Utc>)>, sqlx::Error> {
    let row: Option<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT value, recorded_at FROM service_settings WHERE name = $1")
            .bind(INBOX_RETENTION)
            .fetch_optional(pool)
            .await?;
    Ok(row.and_then(|(value, at)| Some((Duration::from_secs(value.parse().ok()?), at))))
}
