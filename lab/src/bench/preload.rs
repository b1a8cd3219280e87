//! `--preload-runs N`: fills the bench database with history before the loaded phase, so that
//! the cost of a command can be compared on an empty and on a full database in one run.
//!
//! Server-side `INSERT … SELECT generate_series`, in chunks, on one session with
//! `synchronous_commit = off` and `session_replication_role = replica` (no foreign-key triggers:
//! the rows are consistent by construction). Keys grow with the series, so every index is filled
//! at its right edge. The shape follows the workload: per completed run 6 events (queued,
//! started, 3 × progressed, completed) and 6 inbox rows; per active run (the newest
//! `--preload-active`, `running`) 2 of each. Everything is published (no outbox rows), recorded
//! over the last 10 days (inside the default retentions, so the pruner leaves it alone), and the
//! tables are vacuumed and analysed at the end, as a long-lived database would be, and a
//! checkpoint is taken.

use std::time::Instant;

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use super::prebuilt::{TENANTS_PER_WORKSPACE, WORKSPACES};
use crate::LabError;

/// Runs per statement.
const CHUNK: i64 = 250_000;

/// What was preloaded.
#[derive(Debug, Clone, Copy, Default)]
pub struct Preloaded {
    /// Runs inserted.
    pub runs: i64,
    /// Of which active.
    pub active: i64,
    /// Events inserted.
    pub events: i64,
    /// Inbox rows inserted.
    pub inbox: i64,
    /// Wall time, including the final VACUUM ANALYZE.
    pub seconds: f64,
}

/// A CloudEvent of typical size (the stored document is never published again: all are
/// published already).
const EVENT_DOC: &str = r#"{"specversion":"1.0","source":"/operation-runs/bench","type":"operation_run.progressed","datacontenttype":"application/json","data":{"sequence":3,"run":{"type":"policy.sync","status":"running","outcome":"pending","summary_counts":{"total":10,"processed":4},"failure_summary":[],"context":{"policy_id":"preload"}}}}"#;

/// Inserts `runs` runs (the newest `active` of them running) with their events and inbox rows
/// into the database at `database_url`.
pub async fn preload(database_url: &str, runs: i64, active: i64) -> Result<Preloaded, LabError> {
    let started = Instant::now();
    // Statements of a bulk load are slow by design: no slow-statement warnings.
    let options = PgConnectOptions::from_str(database_url)?.disable_statement_logging();
    let mut conn = PgConnection::connect_with(&options).await?;
    sqlx::raw_sql(
        "SET synchronous_commit = off; SET session_replication_role = replica;
         SET maintenance_work_mem = '256MB';",
    )
    .execute(&mut conn)
    .await?;
    let base: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM operation_runs")
        .fetch_one(&mut conn)
        .await?;
    let active_from = base + runs - active.min(runs) + 1;
    let mut done = Preloaded {
        runs,
        active: active.min(runs),
        ..Preloaded::default()
    };
    let mut lo = base + 1;
    while lo <= base + runs {
        let hi = (lo + CHUNK - 1).min(base + runs);
        insert_chunk(&mut conn, lo, hi, base, runs, active_from, &mut done).await?;
        eprintln!(
            "bench: preloaded {} of {runs} runs ({:.0} s)",
            hi - base,
            started.elapsed().as_secs_f64()
        );
        lo = hi + 1;
    }
    sqlx::query(
        "SELECT setval(pg_get_serial_sequence('operation_runs', 'id'), (SELECT max(id) FROM operation_runs))",
    )
    .execute(&mut conn)
    .await?;
    eprintln!("bench: vacuum analyze and checkpoint after the preload");
    // A checkpoint now, so that the one the preload's WAL calls for does not fall into the
    // measured phase.
    // One statement each: several in one string run as one transaction, which VACUUM refuses.
    for statement in [
        "VACUUM (ANALYZE) operation_runs, operation_run_events, processed_commands",
        "CHECKPOINT",
    ] {
        sqlx::raw_sql(statement).execute(&mut conn).await?;
    }
    conn.close().await?;
    done.seconds = started.elapsed().as_secs_f64();
    Ok(done)
}

async fn insert_chunk(
    conn: &mut PgConnection,
    lo: i64,
    hi: i64,
    base: i64,
    runs: i64,
    active_from: i64,
    done: &mut Preloaded,
) -> Result<(), LabError> {
    let mut tx = conn.begin().await?;
    // Created from 10 days ago up to 1 hour ago, in id order.
    sqlx::query(
        "INSERT INTO operation_runs (id, workspace_id, tenant_id, user_id, type, status, outcome,
             run_identity_hash, summary_counts, context, started_at, completed_at, created_at,
             updated_at)
         OVERRIDING SYSTEM VALUE
         SELECT g, w,
                CASE WHEN g % 8 = 0 THEN NULL ELSE 100 + $6 * (w - 1) + (g / 4) % $6 + 1 END,
                1,
                CASE WHEN g % 2 = 0 THEN 'inventory.sync' ELSE 'policy.sync' END,
                CASE WHEN g >= $4 THEN 'running' ELSE 'completed' END,
                CASE WHEN g >= $4 THEN 'pending' ELSE 'succeeded' END,
                encode(sha256(convert_to('preload-' || g, 'UTF8')), 'hex'),
                '{\"total\": 10, \"processed\": 10, \"succeeded\": 10}',
                jsonb_build_object('policy_id', 'preload-' || g),
                t + interval '1 second',
                CASE WHEN g >= $4 THEN NULL ELSE t + interval '6 seconds' END,
                t, t + interval '6 seconds'
         FROM (SELECT g, (g % $5) + 1 AS w,
                      now() - interval '1 hour' - (interval '10 days' * (1 - (g - $3)::float8 / $7)) AS t
               FROM generate_series($1::bigint, $2::bigint) g) s",
    )
    .bind(lo)
    .bind(hi)
    .bind(base)
    .bind(active_from)
    .bind(WORKSPACES)
    .bind(TENANTS_PER_WORKSPACE)
    .bind(runs as f64)
    .execute(&mut *tx)
    .await?;
    let events = sqlx::query(
        "INSERT INTO operation_run_events (id, run_id, sequence, type, workspace_id, tenant_id,
             cloud_event, created_at)
         SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(r.id * 8 + s), 12, '0'))::uuid,
                r.id, s,
                CASE WHEN s = 1 THEN 'operation_run.queued' WHEN s = 2 THEN 'operation_run.started'
                     WHEN s = 6 THEN 'operation_run.completed' ELSE 'operation_run.progressed' END,
                r.workspace_id, r.tenant_id, $3::jsonb, r.created_at + s * interval '1 second'
         FROM operation_runs r,
              LATERAL generate_series(1, CASE WHEN r.status = 'completed' THEN 6 ELSE 2 END) s
         WHERE r.id BETWEEN $1 AND $2
         ORDER BY r.id, s",
    )
    .bind(lo)
    .bind(hi)
    .bind(EVENT_DOC)
    .execute(&mut *tx)
    .await?;
    let inbox = sqlx::query(
        "INSERT INTO processed_commands (command_id, kind, body_hash, run_id, result, processed_at)
         SELECT '00000000-0000-4000-8000-' || lpad(to_hex(r.id * 8 + s), 12, '0'),
                CASE WHEN s = 1 THEN 'dispatch' WHEN s IN (2, 6) THEN 'update_run'
                     ELSE 'increment_summary_counts' END,
                lpad(to_hex(r.id * 8 + s), 64, '0'), r.id,
                CASE WHEN s = 1 THEN jsonb_build_object('ok', true, 'run_id', r.id, 'deduplicated', false)
                     ELSE '{\"ok\": true}'::jsonb END,
                r.created_at + s * interval '1 second'
         FROM operation_runs r,
              LATERAL generate_series(1, CASE WHEN r.status = 'completed' THEN 6 ELSE 2 END) s
         WHERE r.id BETWEEN $1 AND $2
         ORDER BY r.id, s",
    )
    .bind(lo)
    .bind(hi)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    done.events += events.rows_affected() as i64;
    done.inbox += inbox.rows_affected() as i64;
    Ok(())
}
