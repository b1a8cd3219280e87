//! `GET /v1/runs/{id}/live`: the run's events as Server-Sent Events. `id:` is the sequence,
//! `event:` the CloudEvents type, `data:` the event JSON. `Last-Event-ID` (or `?after=`) resumes
//! after that sequence: what was missed comes first, then new events as they are recorded. The
//! stream ends after the completion event (or when the run is deleted); comment heartbeats keep
//! an idle stream open. Its token may come as `?token=` when it reads one run only (an
//! `EventSource` sends no header: [`live_claims`]); the origins of `--viewer-allowed-origins`
//! may read it across origins ([`super::cors`]).
//!
//! A stream is bounded three ways ([`LiveLimits`]): at most `per_token` streams per token and
//! `per_run` per run are open at once (one more is 429 `too_many_streams`), each ends after
//! `lifetime` or when its token expires (`exp` plus [`LEEWAY_SECS`]), whichever comes first,
//! and the client reconnects with `Last-Event-ID`. So no token and no run can hold every
//! connection of the listener, and no stream outlives the token that opened it.
//!
//! New events are found by polling the run's `(run_id, sequence)` index every 250 ms, at most
//! [`FETCH_EVENTS`] events and [`FETCH_BYTES`] of documents per poll: a stream whose client
//! does not read holds one such fetch, whatever the run's history.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use tokio::time::Instant;

use super::api::run_in_scope;
use super::auth::{Claims, LEEWAY_SECS};
use super::claims::live_claims;
use super::error::{ApiError, ApiPath, ApiQuery};
use super::state::ViewerState;
use super::streams::{Holder, LiveSlot};
use crate::domain::RunEventType;
use crate::store::viewer::{self as store, ViewerEvent};

/// Most events one poll fetches.
pub const FETCH_EVENTS: i64 = 4;

/// Most bytes of event documents one poll fetches (always at least one event).
pub const FETCH_BYTES: i64 = 256 * 1024;

/// The `Retry-After` of a 429 `too_many_streams`, in seconds.
const RETRY_AFTER_SECS: &str = "5";

/// When a stream opened now with `claims` ends: after `lifetime`, or when the token is no longer
/// accepted (`exp` plus the leeway), whichever comes first.
fn stream_end(claims: &Claims, lifetime: Duration) -> Instant {
    let expires_ms = claims.exp.saturating_add(LEEWAY_SECS).saturating_mul(1000);
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let valid_for = Duration::from_millis(expires_ms.saturating_sub(now_ms));
    Instant::now() + lifetime.min(valid_for)
}

/// `GET /v1/runs/{id}/live`
pub async fn live(
    State(state): State<ViewerState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (claims, token) = live_claims(
        &state.keys,
        &headers,
        params.get("token").map(String::as_str),
    )?;
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
    let slot = match state.live.open(Holder::of(&claims, &token), run.id) {
        Ok(slot) => slot,
        Err(e) => {
            tracing::debug!(sub = claims.sub.as_deref(), run_id = run.id, "{e}");
            let mut response = ApiError::too_many_streams(e.to_string()).into_response();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
            return Ok(response);
        }
    };
    let ends_at = stream_end(&claims, state.live.limits().lifetime);
    let heartbeat = state.heartbeat;
    let start = Follow {
        state,
        run_id: run.id,
        last: after,
        pending: VecDeque::new(),
        done: false,
        ends_at,
        _slot: slot,
    };
    Ok(Sse::new(follow(start))
        .keep_alive(KeepAlive::new().interval(heartbeat))
        .into_response())
}

struct Follow {
    state: ViewerState,
    run_id: i64,
    last: i64,
    pending: VecDeque<ViewerEvent>,
    done: bool,
    /// The stream ends here, even while the run still records events.
    ends_at: Instant,
    _slot: LiveSlot,
}

impl Follow {
    async fn fetch(&self) -> Result<Vec<ViewerEvent>, sqlx::Error> {
        Ok(store::events_within(
            &self.state.pool,
            self.run_id,
            self.last,
            FETCH_EVENTS,
            FETCH_BYTES,
        )
        .await?
        .events)
    }
}

fn follow(start: Follow) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(start, |mut f| async move {
        loop {
            if f.done || f.state.shutdown.is_cancelled() || Instant::now() >= f.ends_at {
                return None;
            }
            if let Some(e) = f.pending.pop_front() {
                f.last = e.sequence;
                if RunEventType::parse(&e.event_type) == Some(RunEventType::Completed) {
                    f.done = true;
                    f.pending.clear();
                }
                let event = Event::default()
                    .id(e.sequence.to_string())
                    .event(e.event_type.as_str())
                    .data(e.cloud_event.get());
                return Some((Ok(event), f));
            }
            match f.fetch().await {
                Ok(events) if !events.is_empty() => {
                    f.pending.extend(events);
                    continue;
                }
                Ok(_) => {
                    // Nothing new. A completed run whose completion came before `last` has
                    // nothing more to send; read the events once more after seeing the status,
                    // since the completion may have committed between the two reads.
                    let completed = match store::run_completed(&f.state.pool, f.run_id).await {
                        Ok(Some(completed)) => completed,
                        // The run was deleted (run retention): nothing more will come.
                        Ok(None) => return None,
                        Err(e) => {
                            tracing::warn!(error = %e, "live stream read failed; retrying");
                            false
                        }
                    };
                    if completed {
                        match f.fetch().await {
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
                _ = tokio::time::sleep_until(f.ends_at) => return None,
                _ = f.state.shutdown.cancelled() => return None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: Option<&str>, workspace_id: i64) -> Claims {
        Claims {
            workspace_id,
            tenant_ids: None,
            run_id: None,
            exp: 0,
            sub: sub.map(str::to_owned),
            grants: None,
        }
    }

    #[test]
    fn a_stream_ends_at_the_tokens_expiry_plus_the_leeway_or_after_its_lifetime() {
        let now = chrono::Utc::now().timestamp() as u64;
        let mut c = claims(None, 1);
        c.exp = now + 2;
        let end = stream_end(&c, Duration::from_secs(600)) - Instant::now();
        let expected = Duration::from_secs(2 + LEEWAY_SECS);
        assert!(
            end <= expected && end > expected - Duration::from_secs(2),
            "{end:?}"
        );
        c.exp = now + 3600;
        let end = stream_end(&c, Duration::from_secs(60)) - Instant::now();
        assert!(end <= Duration::from_secs(60) && end > Duration::from_secs(59));
    }
}
