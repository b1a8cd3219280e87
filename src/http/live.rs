//! `GET /v1/runs/{id}/live`: the run's events as Server-Sent Events. `id:` is the sequence,
//! `event:` the CloudEvents type, `data:` the event JSON. `Last-Event-ID` (or `?after=`) resumes
//! after that sequence: what was missed comes first, then new events as they are recorded. The
//! stream ends after the completion event; comment heartbeats keep an idle stream open.
//!
//! New events are found by polling the run's `(run_id, sequence)` index every 250 ms: one index
//! probe per open stream, bounded by the listener's connection cap.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures_util::stream::{self, Stream};

use super::api::run_in_scope;
use super::error::{ApiError, ApiPath, ApiQuery};
use super::viewer::{authenticate, ViewerState};
use crate::domain::RunEventType;
use crate::domain::RunStatus;
use crate::store::viewer::{self as store, ViewerEvent};

/// Events fetched per poll.
const FETCH: i64 = 200;

/// `GET /v1/runs/{id}/live`
pub async fn live(
    State(state): State<ViewerState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let claims = authenticate(&state.keys, &headers)?;
    let run = run_in_scope(&state, &claims.scope(), &id).await?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| params.get("after").cloned());
    let after = match resume.filter(|v| !v.is_empty()) {
        Some(v) => v
            .trim()
            .parse::<i64>()
            .map_err(|_| ApiError::invalid("Last-Event-ID must be an event sequence"))?,
        None => 0,
    };
    let heartbeat = state.heartbeat;
    Ok(Sse::new(follow(state, run.id, after)).keep_alive(KeepAlive::new().interval(heartbeat)))
}

struct Follow {
    state: ViewerState,
    run_id: i64,
    last: i64,
    pending: VecDeque<ViewerEvent>,
    done: bool,
}

fn follow(
    state: ViewerState,
    run_id: i64,
    after: i64,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let start = Follow {
        state,
        run_id,
        last: after,
        pending: VecDeque::new(),
        done: false,
    };
    stream::unfold(start, |mut f| async move {
        loop {
            if let Some(e) = f.pending.pop_front() {
                f.last = e.sequence;
                if RunEventType::parse(&e.event_type) == Some(RunEventType::Completed) {
                    f.done = true;
                    f.pending.clear();
                }
                let event = Event::default()
                    .id(e.sequence.to_string())
                    .event(e.event_type.clone())
                    .data(e.cloud_event.to_string());
                return Some((Ok(event), f));
            }
            if f.done || f.state.shutdown.is_cancelled() {
                return None;
            }
            match store::events_after(&f.state.pool, f.run_id, f.last, FETCH).await {
                Ok(events) if !events.is_empty() => {
                    f.pending.extend(events);
                    continue;
                }
                Ok(_) => {
                    // Nothing new. A completed run whose completion came before `last` has
                    // nothing more to send; read the events once more after seeing the status,
                    // since the completion may have committed between the two reads.
                    if run_completed(&f).await {
                        match store::events_after(&f.state.pool, f.run_id, f.last, FETCH).await {
                            Ok(events) if !events.is_empty() => {
                                f.pending.extend(events);
                                continue;
                            }
                            Ok(_) => return None,
                            Err(e) => {
                                tracing::warn!(error = %e, "live stream read failed; retrying")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "live stream read failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(f.state.poll) => {}
                _ = f.state.shutdown.cancelled() => return None,
            }
        }
    })
}

async fn run_completed(f: &Follow) -> bool {
    matches!(
        crate::store::runs::get(&f.state.pool, f.run_id).await,
        Ok(Some(run)) if run.status == RunStatus::Completed
    )
}
