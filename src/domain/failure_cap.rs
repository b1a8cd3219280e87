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

use serde_json::{Map, Value};

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

/// What [`append_capped`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Entries were added to `failure_summary`.
    pub summary_changed: bool,
    /// Counts in `failure_overflow` changed.
    pub overflow_changed: bool,
}

/// Appends `failures` to a run's `summary` (a JSON array) and `overflow` (a JSON object), keeping
/// the caps. Values of another JSON type are replaced by empty ones first.
pub fn append_capped(summary: &mut Value, overflow: &mut Value, failures: &[Failure]) -> Appended {
    let mut changed = Appended::default();
    if failures.is_empty() {
        return changed;
    }
    if !summary.is_array() {
        *summary = Value::Array(Vec::new());
    }
    if !overflow.is_object() {
        *overflow = Value::Object(Map::new());
    }
    let (Value::Array(entries), Value::Object(counts)) = (summary, overflow) else {
        unreachable!("both were just made the right type")
    };
    let mut bytes = serialized_len(&Value::Array(entries.clone()));
    for failure in failures {
        let entry = failure.to_json();
        let entry_bytes = serialized_len(&entry) + usize::from(!entries.is_empty());
        let fits = counts.is_empty()
            && entries.len() < MAX_STORED_FAILURES
            && bytes + entry_bytes <= MAX_STORED_FAILURE_BYTES;
        if fits {
            bytes += entry_bytes;
            entries.push(entry);
            changed.summary_changed = true;
        } else {
            count_overflow(counts, &failure.code);
            changed.overflow_changed = true;
        }
    }
    changed
}

fn count_overflow(counts: &mut Map<String, Value>, code: &str) {
    let named = counts.keys().filter(|k| *k != OTHER_CODES).count();
    let key = if counts.contains_key(code) || named < MAX_OVERFLOW_CODES {
        code
    } else {
        OTHER_CODES
    };
    let n = counts.get(key).and_then(Value::as_u64).unwrap_or(0);
    counts.insert(key.to_owned(), Value::from(n.saturating_add(1)));
}

/// Moves every stored entry of `summary` into the `overflow` counts (for a copy of a run that
/// must shrink, e.g. an event that would exceed its bound).
pub fn fold_into_overflow(summary: &mut Value, overflow: &mut Value) {
    if !overflow.is_object() {
        *overflow = Value::Object(Map::new());
    }
    let entries = match summary.take() {
        Value::Array(entries) => entries,
        _ => Vec::new(),
    };
    *summary = Value::Array(Vec::new());
    if let Value::Object(counts) = overflow {
        for entry in entries {
            let code = entry
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or(OTHER_CODES);
            count_overflow(counts, code);
        }
    }
}

/// Length of the compact JSON form.
pub fn serialized_len(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(0, |v| v.len())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
        let (mut summary, mut overflow) = (json!([]), json!({}));
        let first = append_capped(&mut summary, &mut overflow, &failures("a", 60, 10));
        assert!(first.summary_changed && !first.overflow_changed);
        append_capped(&mut summary, &mut overflow, &failures("b", 60, 10));
        append_capped(&mut summary, &mut overflow, &failures("a", 5, 10));
        assert_eq!(summary.as_array().unwrap().len(), MAX_STORED_FAILURES);
        assert_eq!(overflow, json!({"b": 20, "a": 5}));
        let full = summary.clone();
        let later = append_capped(&mut summary, &mut overflow, &failures("a", 1, 1));
        assert_eq!(
            later,
            Appended {
                summary_changed: false,
                overflow_changed: true
            }
        );
        assert_eq!(summary, full, "a full summary is never rewritten");
    }

    #[test]
    fn large_entries_are_bounded_by_bytes_and_keep_the_prefix() {
        let (mut summary, mut overflow) = (json!([]), json!({}));
        for _ in 0..10 {
            append_capped(&mut summary, &mut overflow, &failures("big", 50, 1000));
        }
        let kept = summary.as_array().unwrap().len();
        assert!(serialized_len(&summary) <= MAX_STORED_FAILURE_BYTES);
        assert!(kept > 0 && kept < MAX_STORED_FAILURES, "{kept}");
        assert_eq!(overflow, json!({"big": 500 - kept}));
        // Once something overflowed, even a small entry is only counted.
        append_capped(&mut summary, &mut overflow, &failures("small", 1, 1));
        assert_eq!(summary.as_array().unwrap().len(), kept);
        assert_eq!(overflow["small"], 1);
    }

    #[test]
    fn distinct_overflow_codes_are_bounded_too() {
        let (mut summary, mut overflow) = (json!([]), json!({}));
        append_capped(&mut summary, &mut overflow, &failures("fill", 100, 1));
        for i in 0..100 {
            append_capped(
                &mut summary,
                &mut overflow,
                &failures(&format!("c{i}"), 2, 1),
            );
        }
        let counts = overflow.as_object().unwrap();
        assert_eq!(counts.len(), MAX_OVERFLOW_CODES + 1);
        assert_eq!(counts[OTHER_CODES], 2 * (100 - MAX_OVERFLOW_CODES) as u64);
        assert_eq!(counts["c0"], 2);
    }
}
