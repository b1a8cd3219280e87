//! The AMQP shape of every message the product publishes: the properties and headers of events,
//! jobs, replies and commands, built here and nowhere else, so `topology/asyncapi.yaml` has one
//! counterpart in code. Callers pass plain values; this module knows nothing of the database.

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

use super::headers::opt_i64;
use crate::domain::event::CLOUDEVENTS_CONTENT_TYPE;

/// `application/json`: commands, replies, jobs.
const JSON: &str = "application/json";
/// AMQP `delivery_mode` of a message the broker keeps on disk.
const PERSISTENT: u8 = 2;

/// What an event's properties say about it.
#[derive(Debug, Clone, Copy)]
pub struct EventMessage<'a> {
    /// The event id (`message_id`, CloudEvents `id`).
    pub id: &'a str,
    /// The CloudEvents type (`type` property and `event_type` header).
    pub event_type: &'a str,
    /// The run.
    pub run_id: i64,
    /// The run's workspace.
    pub workspace_id: i64,
    /// The run's tenant (a void header for a workspace run).
    pub tenant_id: Option<i64>,
    /// The event's place in the run's history.
    pub sequence: i64,
    /// When it was recorded, Unix seconds.
    pub timestamp: u64,
}

/// The properties of an event on `N.events`: persistent CloudEvents JSON, `message_id` = event
/// id, headers `event_type`, `run_id`, `workspace_id`, `tenant_id`, `sequence` for routing and
/// filtering without parsing the body.
pub fn event_properties(event: &EventMessage<'_>) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "event_type".into(),
        AMQPValue::LongString(event.event_type.into()),
    );
    headers.insert("run_id".into(), AMQPValue::LongLongInt(event.run_id));
    headers.insert(
        "workspace_id".into(),
        AMQPValue::LongLongInt(event.workspace_id),
    );
    headers.insert("tenant_id".into(), opt_i64(event.tenant_id));
    headers.insert("sequence".into(), AMQPValue::LongLongInt(event.sequence));
    BasicProperties::default()
        .with_content_type(CLOUDEVENTS_CONTENT_TYPE.into())
        .with_message_id(event.id.into())
        .with_type(event.event_type.into())
        .with_delivery_mode(PERSISTENT)
        .with_timestamp(event.timestamp)
        .with_headers(headers)
}

/// The properties of a run's job on `N.jobs`: persistent JSON, `message_id` = `job-<run id>`
/// (`cancel-<run id>` for its cancel message), headers `run_id` and the run's W3C trace context
/// (`traceparent`, `tracestate`) when known.
pub fn job_properties(
    run_id: i64,
    cancel: bool,
    trace_headers: &[(&str, Option<&str>)],
) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("run_id".into(), AMQPValue::LongLongInt(run_id));
    for (name, value) in trace_headers {
        if let Some(value) = value {
            headers.insert((*name).into(), AMQPValue::LongString((*value).into()));
        }
    }
    BasicProperties::default()
        .with_content_type(JSON.into())
        .with_message_id(if cancel {
            format!("cancel-{run_id}").into()
        } else {
            format!("job-{run_id}").into()
        })
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers)
}

/// The properties of a reply: JSON with the request's `correlation_id`.
pub fn reply_properties(correlation_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(JSON.into())
        .with_correlation_id(correlation_id.into())
}

/// The properties of a command: persistent JSON, `message_id` = the command id when it has one,
/// and, when an answer is wanted, `reply_to` and `correlation_id`.
pub fn command_properties(
    command_id: Option<&str>,
    reply: Option<(&str, &str)>,
) -> BasicProperties {
    let mut properties = BasicProperties::default()
        .with_content_type(JSON.into())
        .with_delivery_mode(PERSISTENT);
    if let Some(id) = command_id {
        properties = properties.with_message_id(id.into());
    }
    if let Some((reply_to, correlation_id)) = reply {
        properties = properties
            .with_reply_to(reply_to.into())
            .with_correlation_id(correlation_id.into());
    }
    properties
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::headers::get_str;

    #[test]
    fn an_event_carries_its_routing_headers_and_a_void_tenant_for_a_workspace_run() {
        let p = event_properties(&EventMessage {
            id: "e-1",
            event_type: "operation_run.started",
            run_id: 7,
            workspace_id: 1,
            tenant_id: None,
            sequence: 2,
            timestamp: 1,
        });
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            CLOUDEVENTS_CONTENT_TYPE
        );
        assert_eq!(p.delivery_mode(), &Some(PERSISTENT));
        let headers = p.headers().as_ref();
        assert_eq!(
            get_str(headers, "event_type").as_deref(),
            Some("operation_run.started")
        );
        assert_eq!(
            headers.unwrap().inner().get("tenant_id"),
            Some(&AMQPValue::Void)
        );
    }

    #[test]
    fn a_job_carries_only_the_trace_headers_it_has() {
        let p = job_properties(
            9,
            false,
            &[("traceparent", Some("00-a-b-01")), ("tracestate", None)],
        );
        let headers = p.headers().as_ref();
        assert_eq!(
            get_str(headers, "traceparent").as_deref(),
            Some("00-a-b-01")
        );
        assert_eq!(get_str(headers, "tracestate"), None);
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), "job-9");
    }
}
