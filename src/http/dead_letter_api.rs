//! `GET /v1/dead-letters`: the dead-letters page's summary as JSON, for the tokens that may see
//! that page (`operate`, no tenant list, no run claim); any other token gets the answer of an
//! unknown route (404 `not_found`).

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::claims::ApiClaims;
use super::error::ApiError;
use super::state::ViewerState;
use crate::store::dead_letters as store;

/// Most code groups the summary lists (the largest; `total` counts every letter).
const CODE_GROUPS: i64 = 100;

/// A method `/v1/dead-letters` does not take: 405 for a token that may see it, the unknown
/// route's answer for any other.
pub async fn wrong_method(claims: Result<ApiClaims, ApiError>) -> ApiError {
    match claims {
        Ok(ApiClaims(c)) if c.may_work_dead_letters() => ApiError::method_not_allowed(),
        _ => ApiError::no_route(),
    }
}

/// `GET /v1/dead-letters`: `{"total", "by_code": [{"code", "letters", "kinds", "kind_count",
/// "oldest_failed_at", "newest_failed_at"}], "more_codes", "queue_unread"?}`, after taking what
/// waits in the queue into the table (`queue_unread` says why that failed, when it did).
pub async fn summary(
    State(state): State<ViewerState>,
    claims: Result<ApiClaims, ApiError>,
) -> Result<Json<Value>, ApiError> {
    match claims {
        Ok(ApiClaims(c)) if c.may_work_dead_letters() => {}
        _ => return Err(ApiError::no_route()),
    }
    let taken = state.dead_letters.take_from_queue().await;
    let (mut groups, total) = tokio::try_join!(
        store::code_groups(&state.pool, CODE_GROUPS + 1),
        store::count(&state.pool)
    )?;
    let more = groups.len() as i64 > CODE_GROUPS;
    groups.truncate(CODE_GROUPS as usize);
    let by_code: Vec<Value> = groups
        .iter()
        .map(|g| {
            json!({
                "code": g.code,
                "letters": g.letters,
                "kinds": g.kinds,
                "kind_count": g.kind_count,
                "oldest_failed_at": g.oldest,
                "newest_failed_at": g.newest,
            })
        })
        .collect();
    let mut out = json!({"total": total, "by_code": by_code, "more_codes": more});
    if let Err(e) = taken {
        out["queue_unread"] = json!(e.to_string());
    }
    Ok(Json(out))
}
