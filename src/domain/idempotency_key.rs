//! The `Idempotency-Key` of an action asked over the API: what a key may be, the inbox id it is
//! kept under, and the hash that tells a repeat from a reuse. A client that lost the answer to a
//! `POST /v1/runs/{id}/cancel|retry|fail` sends the request again with the same key and gets the
//! first answer back, with no second effect and no second record — the inbox does for the API
//! what it does for broker commands (a redelivered command id).

use serde_json::json;
use sha2::{Digest, Sha256};

use super::action::RunAction;

/// Longest accepted key, in characters (a UUID is 36).
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;

/// Prefix of the inbox ids of API actions; the workspace and the key follow.
const PREFIX: &str = "api:";

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Empty or longer than [`MAX_IDEMPOTENCY_KEY_CHARS`].
    #[error("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters")]
    Length,
    /// A character outside visible ASCII (`!` to `~`).
    #[error("Idempotency-Key may hold visible ASCII characters only (no spaces)")]
    Characters,
}

/// Checks a key as sent: 1 to [`MAX_IDEMPOTENCY_KEY_CHARS`] visible ASCII characters.
pub fn check_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_CHARS {
        return Err(KeyError::Length);
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KeyError::Characters);
    }
    Ok(())
}

/// The inbox id of an action asked with `key` by a token of `workspace_id`: keys of different
/// workspaces never meet.
pub fn inbox_id(workspace_id: i64, key: &str) -> String {
    format!("{PREFIX}{workspace_id}:{key}")
}

/// The key of an inbox id made by [`inbox_id`]; `None` for any other id.
pub fn key_of(inbox_id: &str) -> Option<&str> {
    let rest = inbox_id.strip_prefix(PREFIX)?;
    let (workspace, key) = rest.split_once(':')?;
    workspace.parse::<i64>().ok()?;
    Some(key)
}

/// What a repeat must ask again to get the first answer: the action, the run and the reason
/// (lowercase hex SHA-256 of their JSON, in a fixed order). The same key with another of these
/// is a reuse, refused.
pub fn request_hash(action: RunAction, run_id: i64, reason: Option<&str>) -> String {
    let request = json!([action.as_str(), run_id, reason]);
    hex::encode(Sha256::digest(request.to_string().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_one_to_two_hundred_visible_ascii_characters() {
        assert_eq!(check_key("0b4f7c1e-6a2d-4c55-9a43-1f2b3c4d5e6f"), Ok(()));
        assert_eq!(check_key(&"k".repeat(MAX_IDEMPOTENCY_KEY_CHARS)), Ok(()));
        assert_eq!(
            check_key(&"k".repeat(MAX_IDEMPOTENCY_KEY_CHARS + 1)),
            Err(KeyError::Length)
        );
        assert_eq!(check_key(""), Err(KeyError::Length));
        assert_eq!(check_key("two words"), Err(KeyError::Characters));
        assert_eq!(check_key("clé"), Err(KeyError::Characters));
    }

    #[test]
    fn the_inbox_id_keeps_workspaces_apart_and_gives_its_key_back() {
        assert_ne!(inbox_id(1, "k"), inbox_id(2, "k"));
        assert_eq!(key_of(&inbox_id(7, "a:b")), Some("a:b"));
        assert_eq!(key_of("p-12-3"), None);
        assert_eq!(key_of("api:x:k"), None);
    }

    #[test]
    fn another_action_run_or_reason_is_another_request() {
        let once = request_hash(RunAction::Fail, 5, Some("gone"));
        assert_eq!(once, request_hash(RunAction::Fail, 5, Some("gone")));
        assert_ne!(once, request_hash(RunAction::Cancel, 5, Some("gone")));
        assert_ne!(once, request_hash(RunAction::Fail, 6, Some("gone")));
        assert_ne!(once, request_hash(RunAction::Fail, 5, None));
    }
}
