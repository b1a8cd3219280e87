//! The injections, each switchable (`--without a,b`), all on by default: hostile input,
//! operator mistakes, short retention, late progress, viewer readers and operator actions, on
//! top of the crash faults of [`crate::chaos::faults::schedule`] (which always run).

use std::collections::BTreeSet;
use std::fmt;

/// One injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Injection {
    /// An executor queue bound to `N.jobs` for one run type with `x-max-length: 1` and
    /// `x-overflow: reject-publish`, during the dispatches, then deleted.
    RejectJobs,
    /// `N.commands.dlq` unbound from `N.dlx` for a few seconds while bad messages arrive.
    DlqUnbind,
    /// A burst of commands over the 256 KiB limit (`message_too_large`).
    Oversized,
    /// A burst of commands with `\u0000` in a string (`invalid_string`).
    Nul,
    /// A burst of commands with a key twice in one object (`duplicate_key`).
    DuplicateKeys,
    /// One run gets 300 `append_failures` of 50 entries of about 1 KB.
    FailureFlood,
    /// 300 idle TCP connections to the primary's `/metrics` address, held while it works.
    IdleConnections,
    /// `serve` prunes on a short window while it works: events after
    /// [`crate::chaos::faults::retention::EVENT_RETENTION`], completed runs after
    /// [`crate::chaos::faults::retention::RUN_RETENTION`], a pass every [`crate::chaos::faults::retention::PRUNE_INTERVAL`].
    Retention,
    /// Some completed runs get `increment_summary_counts` and `append_failures` after their
    /// completion, [`crate::chaos::faults::retention::LATE_DELAY`] later (applied: their effect and their
    /// events are expected).
    LateProgress,
    /// The primary's run viewer is on: paging readers of `GET /v1/runs/{id}/events` and live
    /// streams of `GET /v1/runs/{id}/live` on a large run during the workload, each checking
    /// that sequences arrive increasing and without a gap (see [`crate::chaos::faults::viewers`]).
    Viewers,
    /// An operator cancels, fails and retries a few runs through the broker commands
    /// `cancel_run`, `fail_run` and `retry_run`, among their executors' progress (see
    /// [`crate::chaos::plan::operator`]).
    OperatorActions,
}

impl Injection {
    /// Every injection, in the order lab/README.md lists them.
    pub const ALL: [Injection; 11] = [
        Self::RejectJobs,
        Self::DlqUnbind,
        Self::Oversized,
        Self::Nul,
        Self::DuplicateKeys,
        Self::FailureFlood,
        Self::IdleConnections,
        Self::Retention,
        Self::LateProgress,
        Self::Viewers,
        Self::OperatorActions,
    ];

    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RejectJobs => "reject-jobs",
            Self::DlqUnbind => "dlq-unbind",
            Self::Oversized => "oversized",
            Self::Nul => "nul",
            Self::DuplicateKeys => "duplicate-keys",
            Self::FailureFlood => "failure-flood",
            Self::IdleConnections => "idle-connections",
            Self::Retention => "retention",
            Self::LateProgress => "late-progress",
            Self::Viewers => "viewers",
            Self::OperatorActions => "operator-actions",
        }
    }
}

/// The injections a run performs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injections(BTreeSet<Injection>);

impl Injections {
    /// Every injection.
    pub fn all() -> Self {
        Self(Injection::ALL.into_iter().collect())
    }

    /// Every injection except `without`.
    pub fn without(without: &[Injection]) -> Self {
        let mut all = Self::all();
        for i in without {
            all.0.remove(i);
        }
        all
    }

    /// None of them (the crash faults only).
    #[cfg(test)]
    pub fn none() -> Self {
        Self(BTreeSet::new())
    }

    /// True when `injection` is on.
    pub fn has(&self, injection: Injection) -> bool {
        self.0.contains(&injection)
    }
}

impl fmt::Display for Injections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.0.iter().map(|i| i.as_str()).collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn flag_values_match_the_names_and_without_removes_only_those() {
        for i in Injection::ALL {
            let value = i.to_possible_value().unwrap();
            assert_eq!(value.get_name(), i.as_str());
        }
        let some = Injections::without(&[Injection::FailureFlood, Injection::Nul]);
        assert!(!some.has(Injection::FailureFlood) && !some.has(Injection::Nul));
        assert!(some.has(Injection::RejectJobs) && some.has(Injection::IdleConnections));
        assert_eq!(Injections::all().to_string().split(',').count(), 11);
    }
}
