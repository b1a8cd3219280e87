//! The reason codes of refused commands: a stable, documented vocabulary that operators read in the
//! dead-letter queue (`x-oprun-error-code`) and producers read in replies.

use std::fmt;

/// Why a command was refused. Every variant is permanent: retrying the same message cannot succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorCode {
    /// The body exceeds [`crate::domain::command::MAX_COMMAND_BYTES`].
    MessageTooLarge,
    /// The body is not valid UTF-8.
    InvalidUtf8,
    /// The body is not JSON.
    InvalidJson,
    /// The body is JSON but not an object.
    NotAnObject,
    /// An object in the body holds the same key twice (last-wins would silently drop a value).
    DuplicateKey,
    /// A string (key or value) holds U+0000, which Postgres `text`/`jsonb` cannot store.
    InvalidString,
    /// A field is missing, has the wrong type, or is not part of the contract.
    InvalidField,
    /// `kind` is not one of the command kinds.
    UnknownKind,
    /// `type` is not in the operation type catalog.
    UnknownType,
    /// The context lacks a key that the type's identity needs.
    MissingIdentityKey,
    /// An identity value has the wrong form (e.g. `scheduled_for` is not RFC 3339).
    InvalidIdentityValue,
    /// The context nests deeper than [`crate::domain::command::MAX_CONTEXT_DEPTH`].
    ContextTooDeep,
    /// The context's JSON is larger than [`crate::domain::event_size::MAX_CONTEXT_BYTES`] (every
    /// event carries it).
    ContextTooLarge,
    /// A progress command without `command_id` (body field or AMQP `message_id`).
    MissingCommandId,
    /// A summary count key outside the registry.
    InvalidSummaryKey,
    /// A summary count value that is not a non-negative integer within bounds.
    InvalidSummaryValue,
    /// A failure entry that does not match the failure schema.
    InvalidFailure,
    /// The workspace does not exist.
    UnknownWorkspace,
    /// The tenant does not exist in the command's workspace (whether it exists in another one is
    /// not told, so producers cannot probe other workspaces' tenant ids).
    UnknownTenant,
    /// The user does not exist.
    UnknownUser,
    /// No run with that id exists in the command's workspace and tenant.
    RunNotFound,
    /// The requested status/outcome change is not allowed.
    InvalidTransition,
    /// The command id was already used by a command with a different body.
    CommandIdConflict,
    /// The dispatch would create a run over the tenant's quota of active runs
    /// (`--max-active-runs-per-tenant`).
    TenantQuotaExceeded,
    /// The broker dead-lettered the message after too many redeliveries.
    DeliveryLimitExceeded,
    /// The database refused the command's effect for a reason the validation did not foresee.
    DatabaseRejected,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 26] = [
        Self::MessageTooLarge,
        Self::InvalidUtf8,
        Self::InvalidJson,
        Self::NotAnObject,
        Self::DuplicateKey,
        Self::InvalidString,
        Self::InvalidField,
        Self::UnknownKind,
        Self::UnknownType,
        Self::MissingIdentityKey,
        Self::InvalidIdentityValue,
        Self::ContextTooDeep,
        Self::ContextTooLarge,
        Self::MissingCommandId,
        Self::InvalidSummaryKey,
        Self::InvalidSummaryValue,
        Self::InvalidFailure,
        Self::UnknownWorkspace,
        Self::UnknownTenant,
        Self::UnknownUser,
        Self::RunNotFound,
        Self::InvalidTransition,
        Self::CommandIdConflict,
        Self::TenantQuotaExceeded,
        Self::DeliveryLimitExceeded,
        Self::DatabaseRejected,
    ];

    /// The wire form, e.g. `missing_identity_key`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MessageTooLarge => "message_too_large",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::InvalidJson => "invalid_json",
            Self::NotAnObject => "not_an_object",
            Self::DuplicateKey => "duplicate_key",
            Self::InvalidString => "invalid_string",
            Self::InvalidField => "invalid_field",
            Self::UnknownKind => "unknown_kind",
            Self::UnknownType => "unknown_type",
            Self::MissingIdentityKey => "missing_identity_key",
            Self::InvalidIdentityValue => "invalid_identity_value",
            Self::ContextTooDeep => "context_too_deep",
            Self::ContextTooLarge => "context_too_large",
            Self::MissingCommandId => "missing_command_id",
            Self::InvalidSummaryKey => "invalid_summary_key",
            Self::InvalidSummaryValue => "invalid_summary_value",
            Self::InvalidFailure => "invalid_failure",
            Self::UnknownWorkspace => "unknown_workspace",
            Self::UnknownTenant => "unknown_tenant",
            Self::UnknownUser => "unknown_user",
            Self::RunNotFound => "run_not_found",
            Self::InvalidTransition => "invalid_transition",
            Self::CommandIdConflict => "command_id_conflict",
            Self::TenantQuotaExceeded => "tenant_quota_exceeded",
            Self::DeliveryLimitExceeded => "delivery_limit_exceeded",
            Self::DatabaseRejected => "database_rejected",
        }
    }

    /// Parses the wire form back (used by `oprun dlq` filters).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused command: a reason code and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    /// The stable reason code.
    pub code: ErrorCode,
    /// A human-readable explanation; never contains secrets from the command.
    pub message: String,
}

impl Rejection {
    /// Builds a rejection with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_parses_back_from_its_wire_form() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }
}
