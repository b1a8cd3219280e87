//! Dead-lettering a refused command: the original body and properties go to `N.dlx` with headers
//! that tell an operator why, and when, and where it came from.
//!
//! The service publishes them `mandatory` and acks the command only once the broker confirmed
//! the dead letter as stored (see `service::deliveries`): a returned one (DLQ unbound or deleted)
//! keeps the command unacked.
//!
//! Headers: `x-oprun-error-code`, `x-oprun-error-message`, `x-oprun-failed-at` (RFC 3339),
//! `x-oprun-routing-key` (the original routing key, used by `oprun dlq replay`); a replayed
//! command also carries `x-oprun-first-failed-at` (when it was first refused, kept across
//! replays), which a letter of it keeps like any other original header.

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;

use super::headers::get_str;
use crate::domain::{ErrorCode, Rejection};

/// Header: the reason code.
pub const ERROR_CODE_HEADER: &str = "x-oprun-error-code";
/// Header: the reason message.
pub const ERROR_MESSAGE_HEADER: &str = "x-oprun-error-message";
/// Header: when it was refused.
pub const FAILED_AT_HEADER: &str = "x-oprun-failed-at";
/// Header: the routing key it was published with.
pub const ROUTING_KEY_HEADER: &str = "x-oprun-routing-key";
/// Header: when the command was first refused, set by `oprun dlq replay` and kept across
/// replays (a letter's age; `x-oprun-failed-at` is the latest refusal).
pub const FIRST_FAILED_AT_HEADER: &str = "x-oprun-first-failed-at";
/// Header: how often `oprun dlq replay` has republished it.
pub const REPLAYS_HEADER: &str = "x-oprun-replays";

/// The properties of the dead letter: the original ones plus the reason headers.
pub fn dead_letter_properties(
    original: &BasicProperties,
    routing_key: &str,
    rejection: &Rejection,
) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    headers.insert(ERROR_CODE_HEADER.into(), text(rejection.code.as_str()));
    headers.insert(ERROR_MESSAGE_HEADER.into(), text(&rejection.message));
    headers.insert(
        FAILED_AT_HEADER.into(),
        text(&Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)),
    );
    headers.insert(ROUTING_KEY_HEADER.into(), text(routing_key));
    original.clone().with_headers(headers)
}

/// The reason recorded on a dead letter: ours, or the broker's own (delivery limit) from `x-death`.
pub fn dead_letter_reason(headers: Option<&FieldTable>) -> (String, String) {
    if let Some(code) = get_str(headers, ERROR_CODE_HEADER) {
        return (
            code,
            get_str(headers, ERROR_MESSAGE_HEADER).unwrap_or_default(),
        );
    }
    let broker_reason = headers
        .and_then(|h| match h.inner().get("x-death") {
            Some(AMQPValue::FieldArray(deaths)) => deaths.as_slice().first().cloned(),
            _ => None,
        })
        .and_then(|death| match death {
            AMQPValue::FieldTable(t) => get_str(Some(&t), "reason"),
            _ => None,
        });
    match broker_reason.as_deref() {
        Some("delivery_limit") => (
            ErrorCode::DeliveryLimitExceeded.as_str().to_owned(),
            "the broker dead-lettered it after too many redeliveries".to_owned(),
        ),
        Some(other) => (
            format!("broker_{other}"),
            format!("the broker dead-lettered it ({other})"),
        ),
        None => ("unknown".to_owned(), "no reason recorded".to_owned()),
    }
}

/// When the broker dead-lettered a message (the `time` of its first `x-death` entry), for letters
/// that carry no `x-oprun-failed-at` (the broker's own, e.g. after the delivery limit).
pub fn broker_death_time(headers: Option<&FieldTable>) -> Option<DateTime<Utc>> {
    let deaths = match headers?.inner().get("x-death")? {
        AMQPValue::FieldArray(deaths) => deaths,
        _ => return None,
    };
    match deaths.as_slice().first()? {
        AMQPValue::FieldTable(death) => match death.inner().get("time")? {
            AMQPValue::Timestamp(secs) => DateTime::from_timestamp(i64::try_from(*secs).ok()?, 0),
            _ => None,
        },
        _ => None,
    }
}

/// The original routing key of a dead letter.
pub fn original_routing_key(headers: Option<&FieldTable>, fallback: &str) -> String {
    get_str(headers, ROUTING_KEY_HEADER).unwrap_or_else(|| fallback.to_owned())
}

#[cfg(test)]
mod tests {
    use lapin::types::FieldArray;

    use super::*;

    #[test]
    fn a_broker_dead_letter_is_dated_by_its_first_x_death_time() {
        let mut death = FieldTable::default();
        death.insert(
            "reason".into(),
            AMQPValue::LongString("delivery_limit".into()),
        );
        death.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        assert_eq!(
            broker_death_time(Some(&headers)),
            DateTime::from_timestamp(1_700_000_000, 0)
        );
        assert_eq!(broker_death_time(Some(&FieldTable::default())), None);
        assert_eq!(broker_death_time(None), None);
    }
}
