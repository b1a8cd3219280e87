//! Pure types and rules: no I/O here, only what a run is and which changes are legal.

pub mod action;
pub mod command;
pub mod error;
pub mod event;
pub mod event_size;
pub mod failure;
pub mod failure_cap;
pub mod idempotency_key;
pub mod identity;
pub mod operation_run;
pub mod operation_type;
pub mod selection;
pub mod status;
pub mod strict_json;
pub mod summary_counts;
pub mod trace_context;
pub mod transition;

pub use command::{
    decode_command, decode_delivery, Command, CommandAction, CommandKind, DeliveryMeta,
    DispatchCommand, ProgressCommand, RunScope,
};
pub use error::{ErrorCode, Rejection};
pub use event::{RunEvent, RunEventType};
pub use failure::{sanitise_message, Failure};
pub use failure_cap::FailureSummary;
pub use identity::RunIdentityHash;
pub use operation_run::OperationRun;
pub use operation_type::{CatalogEntry, DedupeWindow, OperationRunType, OPERATION_CATALOG};
pub use status::{RunOutcome, RunState, RunStatus, Transition, TransitionError};
pub use summary_counts::SummaryCounts;
pub use trace_context::TraceContext;
pub use transition::{Refusal, RunChange};
