//! Commands: decoding a message body into a validated command, or a [`Rejection`] with its code.
//!
//! Decoding is pure and total: any bytes give either a command or a typed rejection, never a
//! panic (a property test holds it to that). Unknown fields are refused rather than ignored, so a
//! misspelt `tenantId` cannot silently turn a tenant run into a workspace run.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::action::{RunAction, MAX_REASON_CHARS};
use super::error::{ErrorCode, Rejection};
use super::failure::{sanitise_message, Failure};
use super::identity::{integer_literal_digits, normalise_context, RunIdentityHash};
use super::operation_type::OperationRunType;
use super::status::{RunOutcome, RunStatus};
use super::strict_json::{self, StrictJsonError};
use super::summary_counts::SummaryCounts;
use super::trace_context::TraceContext;

/// Largest accepted body, in bytes (256 KiB).
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;
/// Deepest accepted nesting of `context` (an object holding an object is depth 2).
pub const MAX_CONTEXT_DEPTH: usize = 16;
/// Longest accepted `command_id` and `initiator_name`, in characters.
pub const MAX_ID_CHARS: usize = 200;

/// The command kinds, by their wire names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// `dispatch`
    Dispatch,
    /// `update_run`
    UpdateRun,
    /// `increment_summary_counts`
    IncrementSummaryCounts,
    /// `append_failures`
    AppendFailures,
    /// `cancel_run`: an operator action.
    CancelRun,
    /// `retry_run`: an operator action.
    RetryRun,
    /// `fail_run`: an operator action.
    FailRun,
}

impl CommandKind {
    /// Every kind.
    pub const ALL: [CommandKind; 7] = [
        Self::Dispatch,
        Self::UpdateRun,
        Self::IncrementSummaryCounts,
        Self::AppendFailures,
        Self::CancelRun,
        Self::RetryRun,
        Self::FailRun,
    ];

    /// The wire name (also the routing key producers publish with).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dispatch => "dispatch",
            Self::UpdateRun => "update_run",
            Self::IncrementSummaryCounts => "increment_summary_counts",
            Self::AppendFailures => "append_failures",
            Self::CancelRun => "cancel_run",
            Self::RetryRun => "retry_run",
            Self::FailRun => "fail_run",
        }
    }

    /// The operator action of an action kind.
    pub fn run_action(self) -> Option<RunAction> {
        match self {
            Self::CancelRun => Some(RunAction::Cancel),
            Self::RetryRun => Some(RunAction::Retry),
            Self::FailRun => Some(RunAction::Fail),
            _ => None,
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    fn fields(self) -> &'static [&'static str] {
        match self {
            Self::Dispatch => &[
                "kind",
                "command_id",
                "workspace_id",
                "tenant_id",
                "user_id",
                "initiator_name",
                "type",
                "context",
            ],
            Self::UpdateRun => &[
                "kind",
                "command_id",
                "run_id",
                "workspace_id",
                "tenant_id",
                "status",
                "outcome",
                "summary_counts",
                "failures",
            ],
            Self::IncrementSummaryCounts => &[
                "kind",
                "command_id",
                "run_id",
                "workspace_id",
                "tenant_id",
                "counts",
            ],
            Self::AppendFailures => &[
                "kind",
                "command_id",
                "run_id",
                "workspace_id",
                "tenant_id",
                "failures",
            ],
            Self::CancelRun | Self::RetryRun | Self::FailRun => &[
                "kind",
                "command_id",
                "run_id",
                "workspace_id",
                "tenant_id",
                "reason",
                "initiator_name",
                "user_id",
            ],
        }
    }
}

/// The workspace and (optional) tenant a run belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunScope {
    /// The workspace.
    pub workspace_id: i64,
    /// The tenant; `None` for a workspace-scoped run.
    pub tenant_id: Option<i64>,
}

/// A request to start tracking an operation.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchCommand {
    /// Where the run belongs.
    pub scope: RunScope,
    /// Who asked for it.
    pub user_id: Option<i64>,
    /// A display name of the initiator (a user, a scheduler).
    pub initiator_name: Option<String>,
    /// The operation type.
    pub run_type: OperationRunType,
    /// The context, identity values normalised.
    pub context: Map<String, Value>,
    /// The identity hash computed from type, scope and context.
    pub identity_hash: RunIdentityHash,
}

/// A progress report on one run: `update_run`, `increment_summary_counts` and `append_failures`
/// are all this shape (the latter two with no state change).
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressCommand {
    /// The run.
    pub run_id: i64,
    /// The scope the sender claims for the run; a mismatch reads as `run_not_found`.
    pub scope: RunScope,
    /// Requested status.
    pub status: Option<RunStatus>,
    /// Requested outcome.
    pub outcome: Option<RunOutcome>,
    /// Count increments.
    pub counts: SummaryCounts,
    /// Failures to append.
    pub failures: Vec<Failure>,
    /// The operator action asked for (`cancel_run`, `retry_run`, `fail_run`: no status, counts
    /// or failures then).
    pub act: Option<ActionAsk>,
}

/// An operator action asked for by a broker command.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionAsk {
    /// What to do.
    pub action: RunAction,
    /// Why (sanitised, at most [`MAX_REASON_CHARS`] characters).
    pub reason: Option<String>,
    /// Who, by name.
    pub initiator_name: Option<String>,
    /// Who, as a platform user.
    pub user_id: Option<i64>,
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandAction {
    /// Track a new run (or find the active one of its identity).
    Dispatch(DispatchCommand),
    /// Report progress on a run.
    Progress(ProgressCommand),
}

/// A decoded, validated command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Its kind.
    pub kind: CommandKind,
    /// Its id (body field, else AMQP `message_id`); only a dispatch may lack one.
    pub command_id: Option<String>,
    /// SHA-256 of the body's canonical JSON: the inbox tells a redelivery from a reused id with it.
    pub body_hash: String,
    /// What it asks for.
    pub action: CommandAction,
    /// The W3C trace context of its delivery, when it carried a valid one (not part of the body
    /// or its hash: a redelivery with another trace is the same command).
    pub trace: Option<TraceContext>,
}

/// What a delivery carries besides its body that decoding uses: AMQP `message_id` and the
/// `traceparent` / `tracestate` headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeliveryMeta<'a> {
    /// The AMQP `message_id` (the command id when the body has none).
    pub message_id: Option<&'a str>,
    /// The `traceparent` header, as sent.
    pub traceparent: Option<&'a str>,
    /// The `tracestate` header, as sent.
    pub tracestate: Option<&'a str>,
}

/// Decodes a delivery: its body as [`decode_command`] does, and its trace context (an invalid
/// `traceparent` is ignored, never a refusal).
pub fn decode_delivery(body: &[u8], meta: DeliveryMeta<'_>) -> Result<Command, Rejection> {
    let mut command = decode_command(body, meta.message_id)?;
    command.trace = TraceContext::from_headers(meta.traceparent, meta.tracestate);
    Ok(command)
}

impl Command {
    /// The run type (dispatch) for log fields.
    pub fn run_type(&self) -> Option<OperationRunType> {
        match &self.action {
            CommandAction::Dispatch(d) => Some(d.run_type),
            CommandAction::Progress(_) => None,
        }
    }

    /// The run id (progress commands) for log fields.
    pub fn run_id(&self) -> Option<i64> {
        match &self.action {
            CommandAction::Dispatch(_) => None,
            CommandAction::Progress(p) => Some(p.run_id),
        }
    }
}

/// Decodes and validates a message body. `message_id` is the AMQP property, used when the body
/// carries no `command_id`.
pub fn decode_command(body: &[u8], message_id: Option<&str>) -> Result<Command, Rejection> {
    if body.len() > MAX_COMMAND_BYTES {
        return Err(Rejection::new(
            ErrorCode::MessageTooLarge,
            format!(
                "body is {} bytes, the limit is {MAX_COMMAND_BYTES}",
                body.len()
            ),
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        Rejection::new(
            ErrorCode::InvalidUtf8,
            format!("body is not valid UTF-8: {e}"),
        )
    })?;
    let value = strict_json::parse(text).map_err(|e| match e {
        StrictJsonError::DuplicateKey(_) => Rejection::new(ErrorCode::DuplicateKey, e.to_string()),
        StrictJsonError::NulCharacter { .. } => {
            Rejection::new(ErrorCode::InvalidString, e.to_string())
        }
        StrictJsonError::Syntax(_) if e.is_recursion_limit() => Rejection::new(
            ErrorCode::ContextTooDeep,
            "body nests deeper than 128 levels",
        ),
        StrictJsonError::Syntax(e) => {
            Rejection::new(ErrorCode::InvalidJson, format!("body is not JSON: {e}"))
        }
    })?;
    let Value::Object(object) = value else {
        return Err(Rejection::new(
            ErrorCode::NotAnObject,
            format!("body must be a JSON object, got {}", json_kind(&value)),
        ));
    };
    let fields = Fields(&object);
    let kind_name = fields.string("kind")?.ok_or_else(|| missing("kind"))?;
    let kind = CommandKind::parse(kind_name).ok_or_else(|| {
        let shown: String = kind_name.chars().take(64).collect();
        Rejection::new(
            ErrorCode::UnknownKind,
            format!("unknown kind {shown:?}; expected dispatch, update_run, increment_summary_counts, append_failures, cancel_run, retry_run or fail_run"),
        )
    })?;
    if let Some(extra) = object.keys().find(|k| !kind.fields().contains(&k.as_str())) {
        let shown: String = extra.chars().take(64).collect();
        return Err(invalid(format!(
            "field {shown:?} is not part of a {} command",
            kind.as_str()
        )));
    }
    let command_id = match fields.string("command_id")? {
        Some(id) => Some(id),
        None => message_id,
    }
    .map(|id| {
        let n = id.chars().count();
        if n == 0 || n > MAX_ID_CHARS {
            return Err(invalid(format!(
                "command_id must be 1 to {MAX_ID_CHARS} characters"
            )));
        }
        Ok(id.to_owned())
    })
    .transpose()?;
    if command_id.is_none() && kind != CommandKind::Dispatch {
        return Err(Rejection::new(
            ErrorCode::MissingCommandId,
            format!(
                "a {} command needs a command_id (body field or AMQP message_id)",
                kind.as_str()
            ),
        ));
    }
    let action = match kind {
        CommandKind::Dispatch => CommandAction::Dispatch(decode_dispatch(&fields, text)?),
        _ => match kind.run_action() {
            Some(action) => CommandAction::Progress(decode_action(action, &fields)?),
            None => CommandAction::Progress(decode_progress(kind, &fields)?),
        },
    };
    let canonical = serde_json_canonicalizer::to_vec(&object).map_err(|e| {
        Rejection::new(
            ErrorCode::InvalidJson,
            format!("body cannot be canonicalised: {e}"),
        )
    })?;
    Ok(Command {
        kind,
        command_id,
        body_hash: hex::encode(Sha256::digest(&canonical)),
        action,
        trace: None,
    })
}

fn decode_dispatch(fields: &Fields, text: &str) -> Result<DispatchCommand, Rejection> {
    let workspace_id = fields
        .id("workspace_id")?
        .ok_or_else(|| missing("workspace_id"))?;
    let tenant_id = fields.id("tenant_id")?;
    let type_name = fields.string("type")?.ok_or_else(|| missing("type"))?;
    let run_type = OperationRunType::parse(type_name)?;
    let mut context = match fields.0.get("context") {
        Some(Value::Object(c)) => c.clone(),
        None => return Err(missing("context")),
        Some(other) => {
            return Err(invalid(format!(
                "context must be an object, got {}",
                json_kind(other)
            )))
        }
    };
    let depth = depth_of(&Value::Object(context.clone()));
    if depth > MAX_CONTEXT_DEPTH {
        return Err(Rejection::new(
            ErrorCode::ContextTooDeep,
            format!("context nests {depth} levels deep, the limit is {MAX_CONTEXT_DEPTH}"),
        ));
    }
    let initiator_name = initiator_name(fields)?;
    keep_exact_integers(run_type, &mut context, text);
    normalise_context(run_type, &mut context)?;
    let identity_hash = RunIdentityHash::compute(run_type, workspace_id, tenant_id, &context)?;
    Ok(DispatchCommand {
        scope: RunScope {
            workspace_id,
            tenant_id,
        },
        user_id: fields.id("user_id")?,
        initiator_name,
        run_type,
        context,
        identity_hash,
    })
}

fn initiator_name(fields: &Fields) -> Result<Option<String>, Rejection> {
    let initiator_name = fields.string("initiator_name")?.map(str::to_owned);
    if initiator_name
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_ID_CHARS)
    {
        return Err(invalid(format!(
            "initiator_name is longer than {MAX_ID_CHARS} characters"
        )));
    }
    Ok(initiator_name)
}

/// The run and the scope the sender claims for it.
fn run_in_scope(fields: &Fields) -> Result<(i64, RunScope), Rejection> {
    let run_id = fields.id("run_id")?.ok_or_else(|| missing("run_id"))?;
    let workspace_id = fields
        .id("workspace_id")?
        .ok_or_else(|| missing("workspace_id"))?;
    if !fields.0.contains_key("tenant_id") {
        return Err(invalid(
            "tenant_id is required for commands on a run (null for a workspace-scoped run)",
        ));
    }
    let tenant_id = fields.id("tenant_id")?;
    Ok((
        run_id,
        RunScope {
            workspace_id,
            tenant_id,
        },
    ))
}

fn decode_action(action: RunAction, fields: &Fields) -> Result<ProgressCommand, Rejection> {
    let (run_id, scope) = run_in_scope(fields)?;
    let reason = fields
        .string("reason")?
        .map(sanitise_message)
        .filter(|r| !r.is_empty());
    if fields
        .string("reason")?
        .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
    {
        return Err(invalid(format!(
            "reason is longer than {MAX_REASON_CHARS} characters"
        )));
    }
    Ok(ProgressCommand {
        run_id,
        scope,
        status: None,
        outcome: None,
        counts: SummaryCounts::default(),
        failures: Vec::new(),
        act: Some(ActionAsk {
            action,
            reason,
            initiator_name: initiator_name(fields)?,
            user_id: fields.id("user_id")?,
        }),
    })
}

fn decode_progress(kind: CommandKind, fields: &Fields) -> Result<ProgressCommand, Rejection> {
    let (
        run_id,
        RunScope {
            workspace_id,
            tenant_id,
        },
    ) = run_in_scope(fields)?;
    let counts_field = if kind == CommandKind::IncrementSummaryCounts {
        "counts"
    } else {
        "summary_counts"
    };
    let counts = match fields.0.get(counts_field) {
        None | Some(Value::Null) if kind == CommandKind::IncrementSummaryCounts => {
            return Err(missing("counts"))
        }
        None | Some(Value::Null) => SummaryCounts::default(),
        Some(v) => SummaryCounts::parse(v)?,
    };
    let failures = match fields.0.get("failures") {
        None | Some(Value::Null) if kind == CommandKind::AppendFailures => {
            return Err(missing("failures"))
        }
        None | Some(Value::Null) => Vec::new(),
        Some(v) => Failure::parse_list(v)?,
    };
    let status = fields
        .string("status")?
        .map(str::parse::<RunStatus>)
        .transpose()?;
    let outcome = fields
        .string("outcome")?
        .map(str::parse::<RunOutcome>)
        .transpose()?;
    Ok(ProgressCommand {
        run_id,
        scope: RunScope {
            workspace_id,
            tenant_id,
        },
        status,
        outcome,
        counts,
        failures,
        act: None,
    })
}

/// `Value` holds an integer literal beyond 64 bits as a double, which loses digits. An identity
/// value must keep every digit (the identity rule hashes an integer as its decimal string), so such
/// a top-level identity value is replaced by its exact decimal string, read from the body text:
/// that string is both what is hashed and what is stored (a number that size could not be stored
/// exactly anyway). Every other value keeps the form it was sent in.
fn keep_exact_integers(run_type: OperationRunType, context: &mut Map<String, Value>, text: &str) {
    let lossy = |v: &Value| matches!(v, Value::Number(n) if !n.is_i64() && !n.is_u64());
    let keys = run_type.catalog().identity_keys;
    if !keys.iter().any(|k| context.get(*k).is_some_and(lossy)) {
        return; // the common case: no second look at the text
    }
    let Some(raw) = strict_json::raw_context_values(text) else {
        return;
    };
    for key in keys {
        if !context.get(*key).is_some_and(lossy) {
            continue;
        }
        if let Some(digits) = raw.get(*key).and_then(|r| integer_literal_digits(r)) {
            context.insert((*key).to_owned(), Value::String(digits));
        }
    }
}

/// Typed access to the body's fields, with rejections that name the field.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn string(&self, name: &str) -> Result<Option<&str>, Rejection> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(invalid(format!(
                "{name} must be a string, got {}",
                json_kind(other)
            ))),
        }
    }

    fn id(&self, name: &str) -> Result<Option<i64>, Rejection> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(id) if id > 0 => Ok(Some(id)),
                _ => Err(invalid(format!(
                    "{name} must be a positive integer id, got {n}"
                ))),
            },
            Some(other) => Err(invalid(format!(
                "{name} must be a positive integer id, got {}",
                json_kind(other)
            ))),
        }
    }
}

fn depth_of(value: &Value) -> usize {
    match value {
        Value::Object(o) => 1 + o.values().map(depth_of).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn missing(name: &str) -> Rejection {
    invalid(format!("{name} is required"))
}

fn invalid(message: impl Into<String>) -> Rejection {
    Rejection::new(ErrorCode::InvalidField, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code_of(body: &[u8]) -> ErrorCode {
        decode_command(body, None).unwrap_err().code
    }

    fn dispatch_body() -> Value {
        json!({"kind": "dispatch", "workspace_id": 1, "tenant_id": 2, "type": "policy.sync", "context": {"policy_id": "p1"}})
    }

    #[test]
    fn a_dispatch_decodes_with_its_identity() {
        let c = decode_command(dispatch_body().to_string().as_bytes(), Some("m-1")).unwrap();
        assert_eq!(c.kind, CommandKind::Dispatch);
        assert_eq!(c.command_id.as_deref(), Some("m-1"));
        let CommandAction::Dispatch(d) = c.action else {
            panic!()
        };
        assert_eq!(
            d.scope,
            RunScope {
                workspace_id: 1,
                tenant_id: Some(2)
            }
        );
        assert_eq!(d.identity_hash.as_str().len(), 64);
    }

    #[test]
    fn body_command_id_wins_over_message_id_and_progress_needs_one() {
        let body = json!({"kind": "append_failures", "command_id": "c-1", "run_id": 3, "workspace_id": 1, "tenant_id": null, "failures": []});
        let c = decode_command(body.to_string().as_bytes(), Some("m")).unwrap();
        assert_eq!(c.command_id.as_deref(), Some("c-1"));
        let mut no_id = body.clone();
        no_id.as_object_mut().unwrap().remove("command_id");
        assert_eq!(
            code_of(no_id.to_string().as_bytes()),
            ErrorCode::MissingCommandId
        );
    }

    #[test]
    fn malformed_bodies_get_specific_codes() {
        let mut deep = json!(1);
        for _ in 0..20 {
            deep = json!({"a": deep});
        }
        let mut deep_ctx = dispatch_body();
        deep_ctx["context"]["nest"] = deep;
        let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
            (vec![0xff, 0xfe], ErrorCode::InvalidUtf8),
            (b"{not json".to_vec(), ErrorCode::InvalidJson),
            (b"[1,2]".to_vec(), ErrorCode::NotAnObject),
            (br#"{"kind": 5}"#.to_vec(), ErrorCode::InvalidField),
            (br#"{"kind": "explode"}"#.to_vec(), ErrorCode::UnknownKind),
            (json!({"kind": "dispatch", "workspace_id": "1", "type": "policy.sync", "context": {}}).to_string().into_bytes(), ErrorCode::InvalidField),
            (json!({"kind": "dispatch", "workspace_id": 1, "type": "nope", "context": {}}).to_string().into_bytes(), ErrorCode::UnknownType),
            (json!({"kind": "dispatch", "workspace_id": 1, "type": "policy.sync", "context": {}}).to_string().into_bytes(), ErrorCode::MissingIdentityKey),
            (json!({"kind": "dispatch", "workspace_id": 1, "tenantId": 2, "type": "policy.sync", "context": {"policy_id": 1}}).to_string().into_bytes(), ErrorCode::InvalidField),
            (deep_ctx.to_string().into_bytes(), ErrorCode::ContextTooDeep),
            (vec![b' '; MAX_COMMAND_BYTES + 1], ErrorCode::MessageTooLarge),
            (json!({"kind": "increment_summary_counts", "command_id": "x", "run_id": 1, "workspace_id": 1, "tenant_id": null, "counts": {"total": -1}}).to_string().into_bytes(), ErrorCode::InvalidSummaryValue),
            (json!({"kind": "increment_summary_counts", "command_id": "x", "run_id": 1, "workspace_id": 1, "tenant_id": null, "counts": {"nope": 1}}).to_string().into_bytes(), ErrorCode::InvalidSummaryKey),
            (json!({"kind": "update_run", "command_id": "x", "run_id": 1, "workspace_id": 1, "tenant_id": null, "status": "done"}).to_string().into_bytes(), ErrorCode::InvalidField),
            (json!({"kind": "update_run", "command_id": "x", "run_id": 1, "workspace_id": 1, "status": "running"}).to_string().into_bytes(), ErrorCode::InvalidField),
        ];
        for (body, code) in cases {
            assert_eq!(code_of(&body), code, "{}", String::from_utf8_lossy(&body));
        }
    }

    fn rejection_of(body: &str) -> Rejection {
        decode_command(body.as_bytes(), Some("m")).unwrap_err()
    }

    #[test]
    fn a_repeated_top_level_tenant_id_is_refused_not_last_wins() {
        // Last-wins would make this a workspace-scoped run (tenant_id null).
        let body = r#"{"kind": "dispatch", "workspace_id": 1, "tenant_id": 10, "type": "policy.sync", "context": {"policy_id": "p"}, "tenant_id": null}"#;
        let r = rejection_of(body);
        assert_eq!(r.code, ErrorCode::DuplicateKey);
        assert!(r.message.contains("\"tenant_id\""), "{}", r.message);
    }

    #[test]
    fn a_repeated_key_inside_context_counts_or_failures_is_refused() {
        for (body, key) in [
            (
                r#"{"kind": "dispatch", "workspace_id": 1, "type": "policy.sync", "context": {"policy_id": "p", "policy_id": "q"}}"#,
                "policy_id",
            ),
            (
                r#"{"kind": "dispatch", "workspace_id": 1, "type": "policy.sync", "context": {"policy_id": "p", "a": {"b": [{"c": 1, "c": 1}]}}}"#,
                "c",
            ),
            (
                r#"{"kind": "increment_summary_counts", "command_id": "x", "run_id": 1, "workspace_id": 1, "tenant_id": null, "counts": {"items": 1, "items": 2}}"#,
                "items",
            ),
            (
                r#"{"kind": "append_failures", "command_id": "x", "run_id": 1, "workspace_id": 1, "tenant_id": null, "failures": [{"code": "a", "message": "b", "message": "c"}]}"#,
                "message",
            ),
            (
                r#"{"kind": "dispatch", "kind": "dispatch", "workspace_id": 1, "type": "policy.sync", "context": {"policy_id": "p"}}"#,
                "kind",
            ),
        ] {
            let r = rejection_of(body);
            assert_eq!(r.code, ErrorCode::DuplicateKey, "{body}");
            assert!(r.message.contains(&format!("{key:?}")), "{}", r.message);
        }
    }

    #[test]
    fn a_nul_character_anywhere_is_refused_at_decode() {
        for body in [
            // in a context value
            r#"{"kind": "dispatch", "workspace_id": 1, "type": "policy.sync", "context": {"policy_id": "p", "note": "a\u0000b"}}"#,
            // in a context key
            r#"{"kind": "dispatch", "workspace_id": 1, "type": "policy.sync", "context": {"policy_id": "p", "n\u0000te": 1}}"#,
            // in an identity value
            r#"{"kind": "dispatch", "workspace_id": 1, "type": "policy.sync", "context": {"policy_id": "\u0000"}}"#,
            // in initiator_name
            r#"{"kind": "dispatch", "workspace_id": 1, "initiator_name": "Ada\u0000", "type": "policy.sync", "context": {"policy_id": "p"}}"#,
            // in a failure message
            r#"{"kind": "append_failures", "command_id": "x", "run_id": 1, "workspace_id": 1, "tenant_id": null, "failures": [{"code": "a", "message": "b\u0000"}]}"#,
            // in the command id
            r#"{"kind": "update_run", "command_id": "x\u0000", "run_id": 1, "workspace_id": 1, "tenant_id": null, "status": "running"}"#,
        ] {
            let r = rejection_of(body);
            assert_eq!(r.code, ErrorCode::InvalidString, "{body}");
            assert!(r.message.contains("U+0000"), "{}", r.message);
        }
    }

    #[test]
    fn an_identity_integer_beyond_64_bits_keeps_every_digit() {
        let dispatch = |id: &str| {
            let body = format!(
                r#"{{"kind": "dispatch", "workspace_id": 1, "type": "restore.execute", "context": {{"restore_run_id": {id}, "other": 123456789012345678901234567890}}}}"#
            );
            match decode_command(body.as_bytes(), None).unwrap().action {
                CommandAction::Dispatch(d) => d,
                CommandAction::Progress(_) => panic!(),
            }
        };
        let literal = dispatch("123456789012345678901234567890");
        let string = dispatch(r#""123456789012345678901234567890""#);
        let next = dispatch("123456789012345678901234567891");
        assert_eq!(literal.identity_hash, string.identity_hash);
        assert_ne!(
            literal.identity_hash, next.identity_hash,
            "equal as doubles, different ids"
        );
        assert_eq!(
            literal.context["restore_run_id"],
            json!("123456789012345678901234567890")
        );
        assert!(
            literal.context["other"].is_f64(),
            "only identity values are rewritten"
        );
        // A fraction or exponent is a number, not an integer literal: JCS rules.
        let exp = dispatch("1.2345678901234568e29");
        assert_ne!(exp.identity_hash, literal.identity_hash);
        assert!(exp.context["restore_run_id"].is_f64());
    }

    #[test]
    fn an_integer_id_is_stored_as_sent_and_hashed_as_its_decimal_string() {
        let dispatch = |id: Value| {
            let body = json!({"kind": "dispatch", "workspace_id": 1, "tenant_id": 2, "type": "backup_schedule.run_now", "context": {"backup_schedule_id": id}});
            match decode_command(body.to_string().as_bytes(), None)
                .unwrap()
                .action
            {
                CommandAction::Dispatch(d) => d,
                CommandAction::Progress(_) => panic!(),
            }
        };
        let number = dispatch(json!(77));
        let string = dispatch(json!("77"));
        assert_eq!(number.identity_hash, string.identity_hash);
        assert_eq!(number.context["backup_schedule_id"], json!(77));
        assert_eq!(string.context["backup_schedule_id"], json!("77"));
        assert_ne!(dispatch(json!("077")).identity_hash, number.identity_hash);
    }

    #[test]
    fn the_body_hash_ignores_key_order() {
        let a = decode_command(br#"{"kind":"dispatch","workspace_id":1,"type":"policy.sync","context":{"policy_id":1}}"#, None).unwrap();
        let b = decode_command(br#"{"context":{"policy_id":1},"type":"policy.sync","workspace_id":1,"kind":"dispatch"}"#, None).unwrap();
        assert_eq!(a.body_hash, b.body_hash);
    }
}
