//! The bound on an event's size: every published event (CloudEvents JSON, compact) is at most
//! [`MAX_EVENT_BYTES`]. An event carries the whole run, so each part of a run that a producer
//! can grow has its own bound, and the bounds add up to less than the total:
//!
//! | part | bound |
//! |---|---|
//! | `context` | [`MAX_CONTEXT_BYTES`] (a larger one is refused at dispatch: `context_too_large`) |
//! | `failure_summary` | [`super::failure_cap::MAX_STORED_FAILURE_BYTES`] |
//! | `failure_overflow` | [`super::failure_cap::MAX_OVERFLOW_CODES`] + 1 codes with counts |
//! | `initiator_name`, ids, times, counts, envelope | a few KiB (200-character name, 9 count keys) |
//! | `traceparent`, `tracestate` | 55 bytes and [`super::trace_context::MAX_TRACESTATE_BYTES`] |

use serde_json::{Map, Value};

use super::error::{ErrorCode, Rejection};
use super::failure_cap::serialized_len;

/// Largest event, in bytes of compact JSON.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Largest dispatch context, in bytes of compact JSON.
pub const MAX_CONTEXT_BYTES: usize = 16 * 1024;

/// Refuses a context larger than [`MAX_CONTEXT_BYTES`] (`context_too_large`).
pub fn check_context_size(context: &Map<String, Value>) -> Result<(), Rejection> {
    let bytes = serialized_len(&Value::Object(context.clone()));
    if bytes > MAX_CONTEXT_BYTES {
        return Err(Rejection::new(
            ErrorCode::ContextTooLarge,
            format!("context is {bytes} bytes of JSON, the limit is {MAX_CONTEXT_BYTES}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::domain::failure::Failure;
    use crate::domain::failure_cap::{FailureSummary, MAX_OVERFLOW_CODES};
    use crate::domain::{
        OperationRun, OperationRunType, RunEvent, RunEventType, RunIdentityHash, RunOutcome,
        RunStatus, SummaryCounts,
    };

    #[test]
    fn a_context_over_the_limit_is_refused() {
        let mut context = Map::new();
        context.insert("blob".into(), json!("x".repeat(MAX_CONTEXT_BYTES)));
        assert_eq!(
            check_context_size(&context).unwrap_err().code,
            ErrorCode::ContextTooLarge
        );
        context.insert("blob".into(), json!("x".repeat(MAX_CONTEXT_BYTES - 20)));
        check_context_size(&context).unwrap();
    }

    #[test]
    fn the_largest_possible_run_fits_in_an_event() {
        // Every part at its bound, with the characters that serialise longest.
        let escaped = "\u{1}";
        let mut context = Map::new();
        let blob_chars = (MAX_CONTEXT_BYTES - 20) / 6;
        context.insert("blob".into(), json!(escaped.repeat(blob_chars)));
        check_context_size(&context).unwrap();
        let mut summary = FailureSummary::default();
        let failure = |code: String| Failure {
            code,
            message: escaped.repeat(1000),
            reason_code: Some("r".repeat(128)),
            item: Some(json!({"k": escaped.repeat(1000)})),
        };
        for i in 0..200 {
            let code = format!("{i:0>128}");
            summary.append(&[failure(code)]);
        }
        assert_eq!(summary.overflow.len(), MAX_OVERFLOW_CODES + 1);
        let counts: Map<String, Value> = crate::domain::summary_counts::SUMMARY_COUNT_KEYS
            .iter()
            .map(|k| (k.to_string(), json!(9_007_199_254_740_991_u64)))
            .collect();
        let run = OperationRun {
            id: i64::MAX,
            workspace_id: i64::MAX,
            tenant_id: Some(i64::MAX),
            user_id: Some(i64::MAX),
            initiator_name: Some(escaped.repeat(200)),
            run_type: OperationRunType::parse("directory_role_definitions.sync").unwrap(),
            status: RunStatus::Completed,
            outcome: RunOutcome::PartiallySucceeded,
            run_identity_hash: RunIdentityHash::parse(&"f".repeat(64)).unwrap(),
            summary_counts: SummaryCounts::parse(&Value::Object(counts)).unwrap(),
            failure_summary: summary,
            context: Value::Object(context),
            started_at: Some(Utc::now()),
            completed_at: Some(Utc::now()),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            trace: crate::domain::TraceContext::from_headers(
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                Some(&format!("a={}", "b".repeat(510))),
            ),
        };
        assert!(run.trace.as_ref().unwrap().tracestate().is_some());
        let source = format!("/operation-runs/{}", "n".repeat(255));
        let event = RunEvent::new(RunEventType::Completed, &run, i64::MAX, &source, Utc::now())
            .with_trace(run.trace.as_ref());
        let bytes = serialized_len(&event.cloud_event);
        assert!(bytes <= MAX_EVENT_BYTES, "{bytes} bytes");
    }
}
