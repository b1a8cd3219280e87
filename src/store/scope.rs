//! Checks that a dispatch's workspace, tenant and user exist and fit together, in one round trip,
//! before anything is written (so a refusal never aborts the surrounding transaction).

use sqlx::PgConnection;

use crate::domain::{ErrorCode, Rejection, RunScope};

/// `Ok(Ok(()))` when the scope is valid, `Ok(Err(rejection))` when it is not.
pub async fn check(
    conn: &mut PgConnection,
    scope: RunScope,
    user_id: Option<i64>,
) -> Result<Result<(), Rejection>, sqlx::Error> {
    let (workspace_exists, tenant_workspace, user_exists): (bool, Option<i64>, bool) =
        sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM workspaces WHERE id = $1),
                (SELECT workspace_id FROM tenants WHERE id = $2),
                $3::bigint IS NULL OR EXISTS (SELECT 1 FROM users WHERE id = $3)",
        )
        .bind(scope.workspace_id)
        .bind(scope.tenant_id)
        .bind(user_id)
        .fetch_one(conn)
        .await?;
    if !workspace_exists {
        return Ok(Err(Rejection::new(
            ErrorCode::UnknownWorkspace,
            format!("workspace {} does not exist", scope.workspace_id),
        )));
    }
    if let Some(tenant_id) = scope.tenant_id {
        match tenant_workspace {
            None => {
                return Ok(Err(Rejection::new(
                    ErrorCode::UnknownTenant,
                    format!("tenant {tenant_id} does not exist"),
                )))
            }
            Some(ws) if ws != scope.workspace_id => {
                return Ok(Err(Rejection::new(
                    ErrorCode::TenantNotInWorkspace,
                    format!(
                        "tenant {tenant_id} does not belong to workspace {}",
                        scope.workspace_id
                    ),
                )))
            }
            Some(_) => {}
        }
    }
    if !user_exists {
        return Ok(Err(Rejection::new(
            ErrorCode::UnknownUser,
            format!("user {} does not exist", user_id.unwrap_or_default()),
        )));
    }
    Ok(Ok(()))
}
