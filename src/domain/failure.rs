//! Failure entries of a run's `failure_summary`, and the sanitising that keeps secrets out of them.
//!
//! Messages come from executors that may echo HTTP headers, connection strings or API answers, so
//! every message is sanitised before it is stored or published: bearer tokens, JWT-like strings,
//! credentials in URLs and values of secret-looking keys are replaced by `[REDACTED]`, and the
//! result is cut to [`MAX_FAILURE_MESSAGE_CHARS`] characters.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::{ErrorCode, Rejection};

/// Longest stored failure message, in characters.
pub const MAX_FAILURE_MESSAGE_CHARS: usize = 1000;
/// Most failures one command may append.
pub const MAX_FAILURES_PER_COMMAND: usize = 100;
/// Longest failure `code` and `reason_code`, in characters.
pub const MAX_FAILURE_CODE_CHARS: usize = 128;

const REDACTED: &str = "[REDACTED]";

/// What providers send as error codes (`Graph.Throttled`, `Request_ResourceNotFound`,
/// `HTTP-429`): ASCII letters of either case, digits, `_`, `.` and `-`, 1 to
/// [`MAX_FAILURE_CODE_CHARS`] of them. No spaces or other punctuation, so a code stays one token
/// in logs, metrics labels and URLs.
static CODE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(r"^[A-Za-z0-9_.\-]{{1,{MAX_FAILURE_CODE_CHARS}}}$")).unwrap()
});
static BEARER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]+=*").unwrap());
static JWT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*").unwrap()
});
static URL_CREDENTIALS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+):[^@/\s]+@").unwrap());
static SECRET_VALUE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)\b((?:client_|app_)?secret|password|passwd|pwd|(?:access_|refresh_|id_|auth_)?token|api[_-]?key|authorization|private_key|credentials?)(["']?\s*[:=]\s*["']?)([^\s"'&,;}]+)"#,
    )
    .unwrap()
});

static SECRET_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(secret|password|passwd|pwd|token|api[_-]?key|authorization|private[_-]?key|credential|cookie)",
    )
    .unwrap()
});

/// Removes secrets from `message` and cuts it to [`MAX_FAILURE_MESSAGE_CHARS`] characters.
pub fn sanitise_message(message: &str) -> String {
    redact_secrets(message)
        .chars()
        .take(MAX_FAILURE_MESSAGE_CHARS)
        .collect()
}

/// `text` with bearer tokens, JWT-like strings, credentials in URLs and values of
/// secret-looking keys replaced by `[REDACTED]`, as in failure messages, but not cut.
pub fn redact_secrets(text: &str) -> String {
    let s = BEARER.replace_all(text, format!("$1 {REDACTED}"));
    let s = JWT.replace_all(&s, REDACTED);
    let s = URL_CREDENTIALS.replace_all(&s, format!("$1:{REDACTED}@"));
    SECRET_VALUE
        .replace_all(&s, format!("$1$2{REDACTED}"))
        .into_owned()
}

/// Whether a key (a message header's name, say) looks like it holds a secret: its whole value
/// is then shown as [`REDACTED_VALUE`].
pub fn is_secret_key(key: &str) -> bool {
    SECRET_KEY.is_match(key)
}

/// What a redacted secret is shown as.
pub const REDACTED_VALUE: &str = REDACTED;

/// One entry of a run's failure summary. Its serde form is the stored one: a run read back from
/// `operation_runs` trusts what this service sanitised before storing (no second regex pass),
/// but still refuses an entry of another shape (see `store::runs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// Machine-readable code, `[A-Za-z0-9_.-]{1,128}`.
    pub code: String,
    /// Sanitised human message.
    pub message: String,
    /// Optional finer reason, same form as `code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<String>,
    /// Optional reference to the item that failed (string, number or object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<Value>,
}

impl Failure {
    /// A failure built by the service itself (e.g. `run.stale`); the message is sanitised too.
    pub fn new(code: &str, message: &str) -> Self {
        Self {
            code: code.to_owned(),
            message: sanitise_message(message),
            reason_code: None,
            item: None,
        }
    }

    /// Validates and sanitises one failure entry from a command.
    pub fn parse(value: &Value) -> Result<Self, Rejection> {
        let object = value.as_object().ok_or_else(|| {
            invalid("a failure must be an object {code, message, reason_code?, item?}")
        })?;
        if let Some(extra) = object
            .keys()
            .find(|k| !matches!(k.as_str(), "code" | "message" | "reason_code" | "item"))
        {
            let shown: String = extra.chars().take(64).collect();
            return Err(invalid(format!("unknown failure field {shown:?}")));
        }
        let code = checked_code(object.get("code"), "code")?
            .ok_or_else(|| invalid("failure.code is required"))?;
        let message = match object.get("message") {
            Some(Value::String(m)) => sanitise_message(m),
            _ => return Err(invalid("failure.message must be a string")),
        };
        let reason_code = checked_code(object.get("reason_code"), "reason_code")?;
        let item = match object.get("item") {
            None | Some(Value::Null) => None,
            Some(v @ (Value::String(_) | Value::Number(_) | Value::Object(_))) => Some(v.clone()),
            Some(_) => return Err(invalid("failure.item must be a string, number or object")),
        };
        Ok(Self {
            code,
            message,
            reason_code,
            item,
        })
    }

    /// Validates a list of failures from a command.
    pub fn parse_list(value: &Value) -> Result<Vec<Self>, Rejection> {
        let list = value
            .as_array()
            .ok_or_else(|| invalid("failures must be an array"))?;
        if list.len() > MAX_FAILURES_PER_COMMAND {
            return Err(invalid(format!(
                "at most {MAX_FAILURES_PER_COMMAND} failures per command, got {}",
                list.len()
            )));
        }
        list.iter().map(Self::parse).collect()
    }

    /// The stored JSON form.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"code": self.code, "message": self.message});
        if let Some(r) = &self.reason_code {
            v["reason_code"] = json!(r);
        }
        if let Some(i) = &self.item {
            v["item"] = i.clone();
        }
        v
    }
}

/// True when `code` is a valid failure `code` or `reason_code` (`[A-Za-z0-9_.-]{1,128}`).
pub fn is_valid_code(code: &str) -> bool {
    CODE.is_match(code)
}

fn checked_code(value: Option<&Value>, field: &str) -> Result<Option<String>, Rejection> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if is_valid_code(s) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(format!(
            "failure.{field} must match [A-Za-z0-9_.-]{{1,{MAX_FAILURE_CODE_CHARS}}}, got {}",
            other.to_string().chars().take(80).collect::<String>()
        ))),
    }
}

fn invalid(message: impl Into<String>) -> Rejection {
    Rejection::new(ErrorCode::InvalidFailure, message)
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_redacted_in_any_text_without_cutting_it_and_secret_names_are_known() {
        let long = format!(
            "Bearer abc.def amqp://u:hunter2@h/ password=pw {}",
            "x".repeat(2_000)
        );
        let out = redact_secrets(&long);
        assert!(!out.contains("abc.def") && !out.contains("hunter2") && !out.contains("=pw "));
        assert!(out.len() > 2_000, "not cut");
        for name in ["authorization", "X-Api-Key", "cookie", "x-client-secret"] {
            assert!(is_secret_key(name), "{name}");
        }
        for name in ["x-oprun-error-code", "x-death", "content_type"] {
            assert!(!is_secret_key(name), "{name}");
        }
    }

    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let cases = [
            (
                "HTTP 401 with Authorization: Bearer abc.def-123",
                "abc.def-123",
            ),
            (
                "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sgn-abc_12 leaked",
                "eyJhbGciOiJIUzI1NiJ9",
            ),
            ("login failed password=hunter2 for bob", "hunter2"),
            (r#"{"client_secret": "s3cr3t-value"}"#, "s3cr3t-value"),
            ("api_key: AKIA1234 refused", "AKIA1234"),
            (
                "connect postgres://app:pa55word@db:5432/x failed",
                "pa55word",
            ),
            ("refresh_token=rt-999&x=1", "rt-999"),
        ];
        for (input, secret) in cases {
            let out = sanitise_message(input);
            assert!(!out.contains(secret), "{input} -> {out}");
            assert!(out.contains(REDACTED), "{input} -> {out}");
        }
    }

    #[test]
    fn ordinary_messages_are_kept_and_long_ones_cut() {
        assert_eq!(
            sanitise_message("device 42 not reachable"),
            "device 42 not reachable"
        );
        let long = "é".repeat(5000);
        assert_eq!(
            sanitise_message(&long).chars().count(),
            MAX_FAILURE_MESSAGE_CHARS
        );
    }

    #[test]
    fn provider_style_codes_are_accepted() {
        let longest = "A".repeat(MAX_FAILURE_CODE_CHARS);
        for code in [
            "Graph.Throttled",
            "Request_ResourceNotFound",
            "HTTP-429",
            "graph.throttled",
            "0",
            longest.as_str(),
        ] {
            let parsed =
                Failure::parse(&json!({"code": code, "message": "x", "reason_code": code}))
                    .unwrap_or_else(|e| panic!("{code}: {e:?}"));
            assert_eq!(parsed.code, code);
            assert_eq!(parsed.reason_code.as_deref(), Some(code));
        }
    }

    #[test]
    fn failure_entries_are_validated() {
        let ok = Failure::parse(
            &json!({"code": "graph.throttled", "message": "slow down", "item": "dev-1"}),
        )
        .unwrap();
        assert_eq!(
            ok.to_json(),
            json!({"code": "graph.throttled", "message": "slow down", "item": "dev-1"})
        );
        for bad in [
            json!({"code": "Bad Code", "message": "x"}),
            json!({"code": "", "message": "x"}),
            json!({"code": "a".repeat(MAX_FAILURE_CODE_CHARS + 1), "message": "x"}),
            json!({"code": "Not Valid!", "message": "x"}),
            json!({"code": "graph/throttled", "message": "x"}),
            json!({"code": "Graph\u{0}", "message": "x"}),
            json!({"code": "ok", "message": 3}),
            json!({"code": "ok", "message": "x", "extra": 1}),
            json!({"code": "ok", "message": "x", "reason_code": "NO PE"}),
            json!("just text"),
        ] {
            assert_eq!(
                Failure::parse(&bad).unwrap_err().code,
                ErrorCode::InvalidFailure,
                "{bad}"
            );
        }
    }
}
