//! The bound on a run's stored failures: `failure_summary` keeps the first entries, up to
//! [`MAX_STORED_FAILURES`] entries and [`MAX_STORED_FAILURE_BYTES`] bytes of JSON; every later
//! entry is only counted, per code, in `failure_overflow` (`{"code": n}`, at most
//! [`MAX_OVERFLOW_CODES`] codes, the rest under [`OTHER_CODES`]).
//!
//! Why both an entry cap and a byte cap: entries are up to ~1 KB each (1,000-character messages,
//! items), and every event carries the run, so the stored entries must fit in an event (see
//! [`super::event_size`]). Why a prefix: once anything overflowed, every later entry overflows
//! too, so the stored entries are exactly "the first ones" and a full summary is never rewritten:
//! appending to it changes only the small overflow object, whatever the run's history.

use std::collections::BTreeMap;

use serde::Serialize;

use super::failure::Failure;

/// Most failure entries stored per run.
pub const MAX_STORED_FAILURES: usize = 100;
/// Most bytes of stored failure entries per run (the compact JSON of the array).
pub const MAX_STORED_FAILURE_BYTES: usize = 32 * 1024;
/// Most distinct codes counted by name in `failure_overflow`.
pub const MAX_OVERFLOW_CODES: usize = 32;
/// The `failure_overflow` key counting the codes past [`MAX_OVERFLOW_CODES`] (no code matches
/// it, so it cannot be confused with one).
pub const OTHER_CODES: &str = "*";

/// A run's failure summary: the first entries (`failure_summary`) and the counts per code of
/// those past the cap (`failure_overflow`). Serialised flattened into the run, as those two
/// fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FailureSummary {
    /// The stored entries: the first ones only, within the caps.
    #[serde(rename = "failure_summary")]
    pub entries: Vec<Failure>,
    /// Failures past the cap, counted per code (codes past their own cap under
    /// [`OTHER_CODES`]). Empty while nothing overflowed.
    #[serde(rename = "failure_overflow")]
    pub overflow: BTreeMap<String, u64>,
}

/// What [`FailureSummary::append`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Entries were added to `failure_summary`.
    pub summary_changed: bool,
    /// Counts in `failure_overflow` changed.
    pub overflow_changed: bool,
}

impl FailureSummary {
    /// Appends `failures`, keeping the caps: an entry is stored while nothing overflowed and it
    /// fits in both caps; from the first one that does not, every entry is only counted.
    pub fn append(&mut self, failures: &[Failure]) -> Appended {
        let mut changed = Appended::default();
        if failures.is_empty() {
            return changed;
        }
        let mut bytes = serialized_len(&self.entries);
        for failure in failures {
            let entry_bytes = serialized_len(failure) + usize::from(!self.entries.is_empty());
            let fits = self.overflow.is_empty()
                && self.entries.len() < MAX_STORED_FAILURES
                && bytes + entry_bytes <= MAX_STORED_FAILURE_BYTES;
            if fits {
                bytes += entry_bytes;
                self.entries.push(failure.clone());
                changed.summary_changed = true;
            } else {
                count_overflow(&mut self.overflow, &failure.code);
                changed.overflow_changed = true;
            }
        }
        changed
    }

    /// Moves every stored entry into the overflow counts (for a copy of a run that must shrink,
    /// e.g. an event that would exceed its bound).
    pub fn fold_into_overflow(&mut self) {
        for entry in std::mem::take(&mut self.entries) {
            count_overflow(&mut self.overflow, &entry.code);
        }
    }

    /// Total failures recorded: stored entries plus overflow counts.
    pub fn total(&self) -> u64 {
        self.entries.len() as u64 + self.overflow.values().sum::<u64>()
    }
}

fn count_overflow(counts: &mut BTreeMap<String, u64>, code: &str) {
    let named = counts.keys().filter(|k| *k != OTHER_CODES).count();
    let key = if counts.contains_key(code) || named < MAX_OVERFLOW_CODES {
        code
    } else {
        OTHER_CODES
    };
    let n = counts.entry(key.to_owned()).or_insert(0);
    *n = n.saturating_add(1);
}

/// Length of the compact JSON form.
pub fn serialized_len<T: Serialize + ?Sized>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(0, |v| v.len())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn counts(summary: &FailureSummary) -> serde_json::Value {
        serde_json::to_value(&summary.overflow).unwrap()
    }

    fn failures(code: &str, n: usize, message_chars: usize) -> Vec<Failure> {
        (0..n)
            .map(|i| Failure {
                code: code.to_owned(),
                message: "m".repeat(message_chars),
                reason_code: None,
                item: Some(json!(format!("item-{i}"))),
            })
            .collect()
    }

    #[test]
    fn the_first_entries_are_kept_and_the_rest_counted_per_code() {
        let mut summary = FailureSummary::default();
        let first = summary.append(&failures("a", 60, 10));
        assert!(first.summary_changed && !first.overflow_changed);
        summary.append(&failures("b", 60, 10));
        summary.append(&failures("a", 5, 10));
        assert_eq!(summary.entries.len(), MAX_STORED_FAILURES);
        assert_eq!(counts(&summary), json!({"b": 20, "a": 5}));
        let full = summary.entries.clone();
        let later = summary.append(&failures("a", 1, 1));
        assert_eq!(
            later,
            Appended {
                summary_changed: false,
                overflow_changed: true
            }
        );
        assert_eq!(summary.entries, full, "a full summary is never rewritten");
        assert_eq!(summary.total(), 126);
    }

    #[test]
    fn large_entries_are_bounded_by_bytes_and_keep_the_prefix() {
        let mut summary = FailureSummary::default();
        for _ in 0..10 {
            summary.append(&failures("big", 50, 1000));
        }
        let kept = summary.entries.len();
        assert!(serialized_len(&summary.entries) <= MAX_STORED_FAILURE_BYTES);
        assert!(kept > 0 && kept < MAX_STORED_FAILURES, "{kept}");
        assert_eq!(counts(&summary), json!({"big": 500 - kept}));
        // Once something overflowed, even a small entry is only counted.
        summary.append(&failures("small", 1, 1));
        assert_eq!(summary.entries.len(), kept);
        assert_eq!(summary.overflow["small"], 1);
    }

    #[test]
    fn distinct_overflow_codes_are_bounded_too() {
        let mut summary = FailureSummary::default();
        summary.append(&failures("fill", 100, 1));
        for i in 0..100 {
            summary.append(&failures(&format!("c{i}"), 2, 1));
        }
        let counts = &summary.overflow;
        assert_eq!(counts.len(), MAX_OVERFLOW_CODES + 1);
        assert_eq!(counts[OTHER_CODES], 2 * (100 - MAX_OVERFLOW_CODES) as u64);
        assert_eq!(counts["c0"], 2);
        summary.fold_into_overflow();
        assert!(summary.entries.is_empty());
        assert_eq!(summary.total(), 300);
    }
}
