//! The product binary the lab drives: `--oprun PATH`, else `oprun` beside `oprun-lab`.

use std::path::{Path, PathBuf};

use crate::LabError;

/// The path of the `oprun` binary under test.
#[derive(Debug, Clone)]
pub struct OprunBinary(PathBuf);

impl OprunBinary {
    /// `explicit`, else the `oprun` in the directory of the running `oprun-lab`; it must exist.
    pub fn locate(explicit: Option<PathBuf>) -> Result<Self, LabError> {
        let path = match explicit {
            Some(p) => p,
            None => std::env::current_exe()?
                .parent()
                .map(|dir| dir.join("oprun"))
                .ok_or_else(|| LabError::Invalid("cannot locate oprun-lab's directory".into()))?,
        };
        if !path.is_file() {
            return Err(LabError::Invalid(format!(
                "no oprun binary at {} (build it with `cargo build --release --bin oprun`, or pass --oprun PATH)",
                path.display()
            )));
        }
        Ok(Self(path))
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// A bearer token for the viewer of an `oprun serve` started with `secret`: the workspace
/// `workspace_id`, only `tenant_id` when given, valid for `lifetime_secs`, with `sub` as its
/// subject; read-only, or with `scope` `Some("operate")` allowed to act on the runs it reads.
pub fn viewer_token(
    secret: &str,
    workspace_id: i64,
    tenant_id: Option<i64>,
    sub: &str,
    lifetime_secs: u64,
    scope: Option<&str>,
) -> Result<String, String> {
    use operation_runs::http::auth::{Claims, TokenKeys};
    let keys = TokenKeys::new(secret).map_err(|e| e.to_string())?;
    let exp = chrono::Utc::now().timestamp() as u64 + lifetime_secs;
    // Built from JSON so that claims the service adds later, with defaults, need nothing
    // here; a workspace token names no tenants (absent, never null).
    let mut claims = serde_json::json!({"workspace_id": workspace_id, "exp": exp, "sub": sub});
    if let Some(tenant) = tenant_id {
        claims["tenant_ids"] = serde_json::json!([tenant]);
    }
    if let Some(scope) = scope {
        claims["scope"] = serde_json::json!(scope);
    }
    let claims: Claims = serde_json::from_value(claims).map_err(|e| e.to_string())?;
    Ok(keys.issue(&claims))
}
