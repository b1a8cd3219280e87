//! Advisory locks and the database's clock: the coordination primitives the service builds its
//! units of work on (batch lock order, relay leadership), kept with the rest of the SQL.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

/// Takes transaction-scoped advisory locks on `keys`, in the order given (callers sort them:
/// the global lock order). `unnest` yields the array in order.
pub async fn lock_keys_in_order(conn: &mut PgConnection, keys: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k")
        .bind(keys)
        .execute(conn)
        .await?;
    Ok(())
}

/// Tries the transaction-scoped advisory lock `key`; `false` when another session holds it.
pub async fn try_lock_key(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(key)
        .fetch_one(conn)
        .await
}

/// Tries the session-level advisory lock `key` (held until released or the session ends);
/// `false` when another session holds it. Not re-entrant by design of the caller: take it once.
pub async fn try_session_lock_key(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(conn)
        .await
}

/// The transaction's timestamp (`now()`: the same for every statement of a transaction).
pub async fn transaction_now(conn: &mut PgConnection) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT now()").fetch_one(conn).await
}

/// True when the database answers and accepts writes (the readiness probe): a standby or a
/// demoted primary, answering read-only during a failover, is not ready.
pub async fn ping(executor: impl PgExecutor<'_>) -> bool {
    sqlx::query_scalar::<_, bool>(crate::store::hosts::ACCEPTS_WRITES)
        .fetch_one(executor)
        .await
        .unwrap_or(false)
}
