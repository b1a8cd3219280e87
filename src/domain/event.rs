//! Events about runs, in CloudEvents 1.0 structured JSON form.
//!
//! `data` is `{"run": <the whole row>, "sequence": n}`; `sequence` starts at 1 per run and grows
//! by one per event, so a subscriber can detect gaps and order what it received.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::operation_run::OperationRun;
use super::trace_context::{TraceContext, TRACEPARENT, TRACESTATE};

/// The content type of a structured CloudEvent.
pub const CLOUDEVENTS_CONTENT_TYPE: &str = "application/cloudevents+json";

/// Every event's CloudEvents `dataschema`: the `$id` of `topology/schemas/event.json` (a stable
/// name, not a download location; `tests/it/contract.rs` keeps the two equal).
pub const EVENT_DATASCHEMA: &str = "https://operation-runs.example/schemas/event.json";

/// What happened to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunEventType {
    /// `operation_run.queued`: a dispatch created the run.
    Queued,
    /// `operation_run.started`: the run is running.
    Started,
    /// `operation_run.progressed`: counts or failures changed.
    Progressed,
    /// `operation_run.completed`: the run has its outcome.
    Completed,
}

impl RunEventType {
    /// Every type.
    pub const ALL: [RunEventType; 4] = [
        Self::Queued,
        Self::Started,
        Self::Progressed,
        Self::Completed,
    ];

    /// The CloudEvents `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "operation_run.queued",
            Self::Started => "operation_run.started",
            Self::Progressed => "operation_run.progressed",
            Self::Completed => "operation_run.completed",
        }
    }

    /// Parses the CloudEvents `type`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// What an operator action did to a run, when it is not a change of the run's state (those are
/// [`RunEventType`] events carrying `data.action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionEventType {
    /// `operation_run.cancel_requested`: an actor asked the running run's executor to stop.
    CancelRequested,
    /// `operation_run.retried`: an actor retried the completed run (`data.action.new_run_id` is
    /// the new run, or the active run of its identity).
    Retried,
}

impl ActionEventType {
    /// Every type.
    pub const ALL: [ActionEventType; 2] = [Self::CancelRequested, Self::Retried];

    /// The CloudEvents `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CancelRequested => "operation_run.cancel_requested",
            Self::Retried => "operation_run.retried",
        }
    }
}

/// Any event's type: a change of the run's lifecycle, or an operator action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// A lifecycle event.
    Run(RunEventType),
    /// An action event.
    Action(ActionEventType),
}

impl EventType {
    /// The CloudEvents `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Run(t) => t.as_str(),
            Self::Action(t) => t.as_str(),
        }
    }
}

impl From<RunEventType> for EventType {
    fn from(t: RunEventType) -> Self {
        Self::Run(t)
    }
}

impl From<ActionEventType> for EventType {
    fn from(t: ActionEventType) -> Self {
        Self::Action(t)
    }
}

/// One event about a run, ready to store and publish.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEvent {
    /// Unique id: the CloudEvents `id` and the AMQP `message_id`, for subscriber dedupe.
    pub id: Uuid,
    /// The run.
    pub run_id: i64,
    /// Position in the run's event history, from 1.
    pub sequence: i64,
    /// What happened.
    pub event_type: EventType,
    /// The complete CloudEvent document.
    pub cloud_event: Value,
}

impl RunEvent {
    /// Builds event number `sequence` of `run`, stamped `time`, with CloudEvents `source` = `source`.
    pub fn new(
        event_type: impl Into<EventType>,
        run: &OperationRun,
        sequence: i64,
        source: &str,
        time: DateTime<Utc>,
    ) -> Self {
        let event_type = event_type.into();
        let id = Uuid::now_v7();
        let cloud_event = json!({
            "specversion": "1.0",
            "id": id.to_string(),
            "source": source,
            "type": event_type.as_str(),
            "subject": format!("operation_runs/{}", run.id),
            "time": time.to_rfc3339_opts(SecondsFormat::Micros, true),
            "datacontenttype": "application/json",
            "dataschema": EVENT_DATASCHEMA,
            "data": {"run": run.to_json(), "sequence": sequence},
        });
        Self {
            id,
            run_id: run.id,
            sequence,
            event_type,
            cloud_event,
        }
    }

    /// Adds `data.action`: the operator action that caused the event (action, actor, reason,
    /// and for a retry the new run).
    pub fn with_action(mut self, action: Option<&Value>) -> Self {
        if let (Some(action), Some(data)) = (action, self.cloud_event.get_mut("data")) {
            if let Some(data) = data.as_object_mut() {
                data.insert("action".into(), action.clone());
            }
        }
        self
    }

    /// Sets the CloudEvents distributed-tracing extension attributes `traceparent` and (when
    /// present) `tracestate`.
    pub fn with_trace(mut self, trace: Option<&TraceContext>) -> Self {
        if let (Some(trace), Some(doc)) = (trace, self.cloud_event.as_object_mut()) {
            doc.insert(TRACEPARENT.into(), json!(trace.traceparent()));
            if let Some(state) = trace.tracestate() {
                doc.insert(TRACESTATE.into(), json!(state));
            }
        }
        self
    }
}
