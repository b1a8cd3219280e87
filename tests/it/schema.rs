//! The schema contract: columns, index predicates, constraints and the read-only legacy tables.

use sqlx::PgPool;

use crate::helpers::seed_scopes;

const HASH_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const HASH_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

async fn insert_run(
    pool: &PgPool,
    workspace: i64,
    tenant: Option<i64>,
    hash: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO operation_runs (workspace_id, tenant_id, type, run_identity_hash) VALUES ($1, $2, 'policy.sync', $3) RETURNING id",
    )
    .bind(workspace)
    .bind(tenant)
    .bind(hash)
    .fetch_one(pool)
    .await
}

async fn complete(pool: &PgPool, id: i64) {
    sqlx::query(
        "UPDATE operation_runs SET status = 'completed', outcome = 'succeeded' WHERE id = $1",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).as_deref() == Some("23505")
}

#[sqlx::test]
async fn operation_runs_has_the_contract_columns_and_defaults(pool: PgPool) {
    let columns: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text, is_nullable::text, column_default::text
         FROM information_schema.columns WHERE table_name = 'operation_runs' ORDER BY ordinal_position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let find = |name: &str| {
        columns
            .iter()
            .find(|c| c.0 == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    };
    let expected = [
        ("id", "bigint", "NO"),
        ("workspace_id", "bigint", "NO"),
        ("tenant_id", "bigint", "YES"),
        ("user_id", "bigint", "YES"),
        ("initiator_name", "text", "YES"),
        ("type", "text", "NO"),
        ("status", "text", "NO"),
        ("outcome", "text", "NO"),
        ("run_identity_hash", "text", "NO"),
        ("summary_counts", "jsonb", "NO"),
        ("failure_summary", "jsonb", "NO"),
        ("context", "jsonb", "NO"),
        ("started_at", "timestamp with time zone", "YES"),
        ("completed_at", "timestamp with time zone", "YES"),
        ("created_at", "timestamp with time zone", "NO"),
        ("updated_at", "timestamp with time zone", "NO"),
        ("dedupe_window", "text", "NO"),
        ("failure_overflow", "jsonb", "NO"),
        ("traceparent", "text", "YES"),
        ("tracestate", "text", "YES"),
        ("cancel_requested_at", "timestamp with time zone", "YES"),
    ];
    assert_eq!(columns.len(), expected.len(), "{columns:?}");
    for (name, ty, nullable) in expected {
        let c = find(name);
        assert_eq!(
            (c.1.as_str(), c.2.as_str()),
            (ty, nullable),
            "column {name}"
        );
    }
    assert!(find("status").3.as_deref().unwrap().contains("'queued'"));
    assert!(find("outcome").3.as_deref().unwrap().contains("'pending'"));
    assert!(find("summary_counts")
        .3
        .as_deref()
        .unwrap()
        .contains("'{}'"));
    assert!(find("failure_summary")
        .3
        .as_deref()
        .unwrap()
        .contains("'[]'"));
}

#[sqlx::test]
async fn the_contract_indexes_exist_with_their_predicates(pool: PgPool) {
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexname::text, indexdef FROM pg_indexes WHERE tablename = 'operation_runs'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let def = |name: &str| {
        indexes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("no index {name} in {indexes:?}"))
    };
    assert!(def("operation_runs_workspace_type_created_idx")
        .ends_with("(workspace_id, type, created_at)"));
    assert!(def("operation_runs_workspace_created_idx").ends_with("(workspace_id, created_at)"));
    assert!(
        def("operation_runs_tenant_type_created_idx").ends_with("(tenant_id, type, created_at)")
    );
    assert!(def("operation_runs_tenant_created_idx").ends_with("(tenant_id, created_at)"));
    let tenant = def("operation_runs_active_tenant_identity_idx");
    assert!(tenant.starts_with("CREATE UNIQUE INDEX"), "{tenant}");
    assert!(tenant.contains("(tenant_id, run_identity_hash) WHERE ((tenant_id IS NOT NULL) AND (status = ANY (ARRAY['queued'::text, 'running'::text])))"), "{tenant}");
    let workspace = def("operation_runs_active_workspace_identity_idx");
    assert!(workspace.starts_with("CREATE UNIQUE INDEX"), "{workspace}");
    assert!(workspace.contains("(workspace_id, run_identity_hash) WHERE ((tenant_id IS NULL) AND (status = ANY (ARRAY['queued'::text, 'running'::text])))"), "{workspace}");
    let tenant = def("operation_runs_forever_tenant_identity_idx");
    assert!(tenant.starts_with("CREATE UNIQUE INDEX"), "{tenant}");
    assert!(tenant.contains("(tenant_id, run_identity_hash) WHERE ((tenant_id IS NOT NULL) AND (dedupe_window = 'forever'::text))"), "{tenant}");
    let workspace = def("operation_runs_forever_workspace_identity_idx");
    assert!(workspace.starts_with("CREATE UNIQUE INDEX"), "{workspace}");
    assert!(workspace.contains("(workspace_id, run_identity_hash) WHERE ((tenant_id IS NULL) AND (dedupe_window = 'forever'::text))"), "{workspace}");
}

#[sqlx::test]
async fn a_second_active_run_of_an_identity_is_refused_until_the_first_completes(pool: PgPool) {
    seed_scopes(&pool).await;
    let first = insert_run(&pool, 1, Some(10), HASH_A).await.unwrap();
    let err = insert_run(&pool, 1, Some(10), HASH_A).await.unwrap_err();
    assert!(is_unique_violation(&err), "{err}");
    complete(&pool, first).await;
    insert_run(&pool, 1, Some(10), HASH_A)
        .await
        .expect("completion frees the identity");
}

#[sqlx::test]
async fn tenant_and_workspace_scoped_identities_are_independent(pool: PgPool) {
    seed_scopes(&pool).await;
    insert_run(&pool, 1, Some(10), HASH_A).await.unwrap();
    insert_run(&pool, 1, Some(11), HASH_A)
        .await
        .expect("another tenant, same hash");
    insert_run(&pool, 1, None, HASH_A)
        .await
        .expect("workspace scope is separate");
    let err = insert_run(&pool, 1, None, HASH_A).await.unwrap_err();
    assert!(is_unique_violation(&err), "{err}");
    insert_run(&pool, 2, None, HASH_A)
        .await
        .expect("another workspace");
    insert_run(&pool, 1, None, HASH_B)
        .await
        .expect("another hash");
}

#[sqlx::test]
async fn a_tenant_of_another_workspace_is_refused(pool: PgPool) {
    seed_scopes(&pool).await;
    let err = insert_run(&pool, 1, Some(20), HASH_A).await.unwrap_err();
    assert_eq!(
        err.as_database_error().unwrap().constraint(),
        Some("operation_runs_tenant_in_workspace")
    );
}

#[sqlx::test]
async fn check_constraints_hold(pool: PgPool) {
    seed_scopes(&pool).await;
    let id = insert_run(&pool, 1, Some(10), HASH_A).await.unwrap();
    let cases = [
        (
            "UPDATE operation_runs SET status = 'completed' WHERE id = $1",
            "operation_runs_completed_has_outcome",
        ),
        (
            "UPDATE operation_runs SET outcome = 'failed' WHERE id = $1",
            "operation_runs_completed_has_outcome",
        ),
        (
            "UPDATE operation_runs SET status = 'done' WHERE id = $1",
            "operation_runs_status_check",
        ),
        (
            "UPDATE operation_runs SET status = 'completed', outcome = 'great' WHERE id = $1",
            "operation_runs_outcome_check",
        ),
        (
            "UPDATE operation_runs SET run_identity_hash = 'ABC' WHERE id = $1",
            "operation_runs_identity_hash_check",
        ),
        (
            "UPDATE operation_runs SET summary_counts = '[]' WHERE id = $1",
            "operation_runs_summary_counts_object",
        ),
        (
            "UPDATE operation_runs SET failure_summary = '{}' WHERE id = $1",
            "operation_runs_failure_summary_array",
        ),
        (
            "UPDATE operation_runs SET context = '1' WHERE id = $1",
            "operation_runs_context_object",
        ),
    ];
    for (sql, constraint) in cases {
        let err = sqlx::query(sql).bind(id).execute(&pool).await.unwrap_err();
        assert_eq!(
            err.as_database_error().unwrap().constraint(),
            Some(constraint),
            "{sql}"
        );
    }
}

#[sqlx::test]
async fn legacy_tables_refuse_writes_but_accept_the_redirect(pool: PgPool) {
    seed_scopes(&pool).await;
    let run = insert_run(&pool, 1, Some(10), HASH_A).await.unwrap();
    let insert = "INSERT INTO backup_schedule_runs (id, backup_schedule_id, tenant_id, scheduled_for, status)
                  VALUES (7, 3, 10, now(), 'succeeded')";
    let err = sqlx::query(insert).execute(&pool).await.unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL operation_runs.legacy_import = 'on'")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(insert)
        .execute(&mut *tx)
        .await
        .expect("import switch allows INSERT");
    tx.commit().await.unwrap();

    let err = sqlx::query("UPDATE backup_schedule_runs SET status = 'failed' WHERE id = 7")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("only operation_run_id may be updated"),
        "{err}"
    );
    sqlx::query("UPDATE backup_schedule_runs SET operation_run_id = $1 WHERE id = 7")
        .bind(run)
        .execute(&pool)
        .await
        .expect("the redirect may be set");
    let err = sqlx::query("DELETE FROM backup_schedule_runs WHERE id = 7")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    let err = sqlx::query("TRUNCATE inventory_sync_runs")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    for insert in [
        "INSERT INTO inventory_sync_runs (tenant_id, selection_hash, status) VALUES (10, 'h', 'done')",
        "INSERT INTO entra_group_sync_runs (tenant_id, selection_key, status) VALUES (10, 'k', 'done')",
    ] {
        let err = sqlx::query(insert).execute(&pool).await.unwrap_err();
        assert!(err.to_string().contains("read-only"), "{err}");
    }
}
