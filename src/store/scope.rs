//! Checks that dispatches' workspaces, tenants and users exist and fit together, for a whole
//! batch in one round trip, before anything is written (so a refusal never aborts the
//! surrounding transaction).

use sqlx::PgConnection;

use crate::domain::{ErrorCode, Rejection, RunScope};

/// For each `(scope, user)`, `Ok(())` when valid or the rejection, in input order.
pub async fn check_many(
    conn: &mut PgConnection,
    scopes: &[(RunScope, Option<i64>)],
) -> Result<Vec<Result<(), Rejection>>, sqlx::Error> {
    let rows: Vec<(bool, Option<i64>, bool)> = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM workspaces w WHERE w.id = s.workspace_id),
                (SELECT t.workspace_id FROM tenants t WHERE t.id = s.tenant_id),
                s.user_id IS NULL OR EXISTS (SELECT 1 FROM users u WHERE u.id = s.user_id)
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) WITH ORDINALITY AS s(workspace_id, tenant_id, user_id, n)
         ORDER BY s.n",
    )
    .bind(scopes.iter().map(|(s, _)| s.workspace_id).collect::<Vec<i64>>())
    .bind(scopes.iter().map(|(s, _)| s.tenant_id).collect::<Vec<Option<i64>>>())
    .bind(scopes.iter().map(|(_, u)| *u).collect::<Vec<Option<i64>>>())
    .fetch_all(conn)
    .await?;
    Ok(scopes
        .iter()
        .zip(rows)
        .map(
            |((scope, user), (workspace_exists, tenant_workspace, user_exists))| {
                judge(
                    *scope,
                    *user,
                    workspace_exists,
                    tenant_workspace,
                    user_exists,
                )
            },
        )
        .collect())
}

fn judge(
    scope: RunScope,
    user_id: Option<i64>,
    workspace_exists: bool,
    tenant_workspace: Option<i64>,
    user_exists: bool,
) -> Result<(), Rejection> {
    if !workspace_exists {
        return Err(Rejection::new(
            ErrorCode::UnknownWorkspace,
            format!("workspace {} does not exist", scope.workspace_id),
        ));
    }
    // A tenant of another workspace is refused exactly like a tenant that does not exist (same
    // code, same message): telling them apart would let a producer probe other workspaces'
    // tenant ids.
    if let Some(tenant_id) = scope.tenant_id {
        if tenant_workspace != Some(scope.workspace_id) {
            return Err(Rejection::new(
                ErrorCode::UnknownTenant,
                format!(
                    "tenant {tenant_id} does not exist in workspace {}",
                    scope.workspace_id
                ),
            ));
        }
    }
    if !user_exists {
        return Err(Rejection::new(
            ErrorCode::UnknownUser,
            format!("user {} does not exist", user_id.unwrap_or_default()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_of_another_workspace_reads_exactly_like_a_missing_one() {
        let scope = RunScope {
            workspace_id: 1,
            tenant_id: Some(20),
        };
        let elsewhere = judge(scope, None, true, Some(2), true).unwrap_err();
        let missing = judge(scope, None, true, None, true).unwrap_err();
        assert_eq!(elsewhere, missing);
        assert_eq!(elsewhere.code, ErrorCode::UnknownTenant);
        judge(scope, None, true, Some(1), true).unwrap();
    }
}
