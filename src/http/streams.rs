//! The live streams open now, per token and per run, within their bounds ([`LiveLimits`]):
//! the registry that `GET /v1/runs/{id}/live` takes a slot from before it streams.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::auth::Claims;

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
pub(super) enum Holder {
    Subject { workspace_id: i64, sub: String },
    Token([u8; 32]),
}

impl Holder {
    pub(super) fn of(claims: &Claims, token: &str) -> Self {
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
pub(super) enum TooManyStreams {
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
    pub(super) fn open(
        self: &Arc<Self>,
        holder: Holder,
        run_id: i64,
    ) -> Result<LiveSlot, TooManyStreams> {
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
pub(super) struct LiveSlot {
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
            grants: None,
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
}
