//! `GET /v1/runs/{id}/live`: the run's events as Server-Sent Events. `id:` is the sequence,
//! `event:` the CloudEvents type, `data:` the event JSON. `Last-Event-ID` (or `?after=`) resumes
//! after that sequence: what was missed comes first, then new events as they are recorded. The
//! stream ends after the completion event (or when the run is deleted); comment heartbeats keep
//! an idle stream open.
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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::api::run_in_scope;
use super::auth::{Claims, LEEWAY_SECS};
use super::error::{ApiError, ApiPath, ApiQuery};
use super::viewer::{authenticate, request_token, ViewerState};
use crate::domain::RunEventType;
use crate::store::viewer::{self as store, ViewerEvent};

/// Most events one poll fetches.
pub const FETCH_EVENTS: i64 = 4;

/// Most bytes of event documents one poll fetches (always at least one event).
pub const FETCH_BYTES: i64 = 256 * 1024;

/// The `Retry-After` of a 429 `too_many_streams`, in seconds.
const RETRY_AFTER_SECS: &str = "5";

/// How many live streams may be open, and for how long (`--live-streams-per-token`,
/// `--live-streams-per-run`, `--live-stream-lifetime`; defaults in [`crate::config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveLimits {
    /// Most streams open at once per token (see [`LiveStreams`] for what counts as one token).
    pub per_token: usize,
    /// Most streams open at once on one run.
    pub per_run: usize,
    /// Longest a stream stays open.
    pub lifetime: Duration,
}

/// Whom a stream counts against: the token's `sub` in its workspace, so that every token the
/// platform mints for one person shares one allowance; a token without `sub` counts alone (by
/// the SHA-256 of its text, so the registry holds no bearer token).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Holder {
    Subject { workspace_id: i64, sub: String },
    Token([u8; 32]),
}

impl Holder {
    fn of(claims: &Claims, token: &str) -> Self {
        match &claims.sub {
            Some(sub) => Self::Subject {
                workspace_id: claims.workspace_id,
                sub: sub.clone(),
            },
            None => Self::Token(Sha256::digest(token.as_bytes()).into()),
        }
    }
}

/// Why a stream was not opened.
#[derive(Debug, thiserror::Error)]
enum TooManyStreams {
    #[error("this token has {0} live streams open, the most it may; close one, or retry later")]
    Token(usize),
    #[error("this run has {0} live streams open, the most it may; retry later")]
    Run(usize),
}

/// The live streams open now, per holder and per run, within [`LiveLimits`].
#[derive(Debug)]
pub struct LiveStreams {
    limits: LiveLimits,
    open: Mutex<OpenStreams>,
}

#[derive(Debug, Default)]
struct OpenStreams {
    by_holder: HashMap<Holder, usize>,
    by_run: HashMap<i64, usize>,
}

impl LiveStreams {
    /// No stream open yet.
    pub fn new(limits: LiveLimits) -> Self {
        Self {
            limits,
            open: Mutex::default(),
        }
    }

    /// The bounds.
    pub fn limits(&self) -> LiveLimits {
        self.limits
    }

    /// Streams open now: `(total, on run_id)`.
    #[cfg(test)]
    fn open_streams(&self, run_id: i64) -> (usize, usize) {
        let open = self.lock();
        (
            open.by_holder.values().sum(),
            open.by_run.get(&run_id).copied().unwrap_or(0),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OpenStreams> {
        // The counts stay consistent whatever panicked while holding the lock (each update is
        // one step), so a poisoned lock is still used.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more stream of `holder` on `run_id`, counted until the slot is dropped.
    fn open(self: &Arc<Self>, holder: Holder, run_id: i64) -> Result<LiveSlot, TooManyStreams> {
        let mut open = self.lock();
        let by_holder = open.by_holder.get(&holder).copied().unwrap_or(0);
        if by_holder >= self.limits.per_token {
            return Err(TooManyStreams::Token(by_holder));
        }
        let by_run = open.by_run.get(&run_id).copied().unwrap_or(0);
        if by_run >= self.limits.per_run {
            return Err(TooManyStreams::Run(by_run));
        }
        *open.by_holder.entry(holder.clone()).or_default() += 1;
        *open.by_run.entry(run_id).or_default() += 1;
        Ok(LiveSlot {
            streams: Arc::clone(self),
            holder,
            run_id,
        })
    }
}

/// One open stream's place in [`LiveStreams`]: it goes with the stream, however the stream
/// ends (completion, lifetime, expiry, shutdown, or the client going away).
#[derive(Debug)]
struct LiveSlot {
    streams: Arc<LiveStreams>,
    holder: Holder,
    run_id: i64,
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        let mut open = self.streams.lock();
        release(&mut open.by_holder, &self.holder);
        release(&mut open.by_run, &self.run_id);
    }
}

/// One count fewer for `key`; a key at zero is removed, so the registry holds only open streams.
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(key);
        }
    }
}

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
    let token = request_token(&headers).unwrap_or_default();
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

    fn limits(per_token: usize, per_run: usize) -> Arc<LiveStreams> {
        Arc::new(LiveStreams::new(LiveLimits {
            per_token,
            per_run,
            lifetime: Duration::from_secs(60),
        }))
    }

    fn claims(sub: Option<&str>, workspace_id: i64) -> Claims {
        Claims {
            workspace_id,
            tenant_ids: None,
            run_id: None,
            exp: 0,
            sub: sub.map(str::to_owned),
        }
    }

    #[test]
    fn streams_count_per_sub_and_workspace_or_per_token_without_sub() {
        let ada = Holder::of(&claims(Some("ada"), 1), "t1");
        assert_eq!(ada, Holder::of(&claims(Some("ada"), 1), "t2"));
        assert_ne!(ada, Holder::of(&claims(Some("ada"), 2), "t1"));
        let anonymous = Holder::of(&claims(None, 1), "t1");
        assert_eq!(anonymous, Holder::of(&claims(None, 1), "t1"));
        assert_ne!(anonymous, Holder::of(&claims(None, 1), "t2"));
    }

    #[test]
    fn a_stream_beyond_either_cap_is_refused_and_a_dropped_one_frees_its_place() {
        let streams = limits(2, 3);
        let ada = || Holder::of(&claims(Some("ada"), 1), "");
        let bob = || Holder::of(&claims(Some("bob"), 1), "");
        let a1 = streams.open(ada(), 7).unwrap();
        let _a2 = streams.open(ada(), 8).unwrap();
        assert!(matches!(
            streams.open(ada(), 9),
            Err(TooManyStreams::Token(2))
        ));
        let _b1 = streams.open(bob(), 7).unwrap();
        drop(a1);
        let _a3 = streams.open(ada(), 7).unwrap();
        let cy = || Holder::of(&claims(Some("cy"), 1), "");
        let _c1 = streams.open(cy(), 7).unwrap();
        assert!(matches!(streams.open(cy(), 7), Err(TooManyStreams::Run(3))));
        let _c2 = streams.open(cy(), 8).unwrap();
        assert_eq!(streams.open_streams(7), (5, 3));
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
