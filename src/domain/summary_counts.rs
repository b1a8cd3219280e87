//! Summary counts: a registry of allowed keys with non-negative integer values, and the rule for
//! adding increments to a run's stored counts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{ErrorCode, Rejection};

/// The keys a run's `summary_counts` may hold.
pub const SUMMARY_COUNT_KEYS: [&str; 9] = [
    "total",
    "processed",
    "succeeded",
    "failed",
    "skipped",
    "created",
    "updated",
    "deleted",
    "items",
];

/// The largest value a count may reach: 2^53 − 1, so every JSON reader keeps it exact.
pub const MAX_SUMMARY_COUNT: u64 = (1 << 53) - 1;

/// Validated summary counts (or increments of them), keyed by registered keys.
///
/// The serde form is the stored one, `{key: n}`: reading a stored run takes any key (a row this
/// service wrote has registered keys only) but refuses a value that is not a non-negative
/// integer. Counts from commands go through [`SummaryCounts::parse`], which checks the registry
/// and the bound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SummaryCounts(BTreeMap<String, u64>);

impl SummaryCounts {
    /// Validates a JSON object of counts: registered keys, integer values in `0..=MAX_SUMMARY_COUNT`.
    pub fn parse(value: &Value) -> Result<Self, Rejection> {
        let object = value.as_object().ok_or_else(|| {
            Rejection::new(
                ErrorCode::InvalidSummaryValue,
                "summary counts must be a JSON object of key: non-negative integer",
            )
        })?;
        let mut counts = BTreeMap::new();
        for (key, value) in object {
            if !SUMMARY_COUNT_KEYS.contains(&key.as_str()) {
                let shown: String = key.chars().take(64).collect();
                return Err(Rejection::new(
                    ErrorCode::InvalidSummaryKey,
                    format!(
                        "summary count key {shown:?} is not one of {}",
                        SUMMARY_COUNT_KEYS.join(", ")
                    ),
                ));
            }
            let n = value.as_u64().filter(|n| *n <= MAX_SUMMARY_COUNT).ok_or_else(|| {
                Rejection::new(
                    ErrorCode::InvalidSummaryValue,
                    format!(
                        "summary count {key} must be an integer from 0 to {MAX_SUMMARY_COUNT}, got {}",
                        value.to_string().chars().take(64).collect::<String>()
                    ),
                )
            })?;
            counts.insert(key.clone(), n);
        }
        Ok(Self(counts))
    }

    /// True when there is nothing to add.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(|v| *v == 0)
    }

    /// True when `key` is present (with any value, zero included).
    pub fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// The value of `key`, zero when absent.
    pub fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }

    /// Adds `increments` to these counts; a sum past [`MAX_SUMMARY_COUNT`] is refused.
    pub fn add(&self, increments: &SummaryCounts) -> Result<SummaryCounts, Rejection> {
        let mut sum = self.0.clone();
        for (key, n) in &increments.0 {
            let total = sum.get(key).copied().unwrap_or(0).saturating_add(*n);
            if total > MAX_SUMMARY_COUNT {
                return Err(Rejection::new(
                    ErrorCode::InvalidSummaryValue,
                    format!("summary count {key} would exceed {MAX_SUMMARY_COUNT}"),
                ));
            }
            sum.insert(key.clone(), total);
        }
        Ok(Self(sum))
    }

    /// The JSON object form.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(*v)))
                .collect::<Map<_, _>>(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn registered_keys_with_non_negative_integers_are_accepted() {
        let c = SummaryCounts::parse(&json!({"total": 10, "processed": 0})).unwrap();
        assert_eq!(c.get("total"), 10);
        assert_eq!(c.get("failed"), 0);
    }

    #[test]
    fn bad_keys_and_values_get_their_own_codes() {
        let cases = [
            (json!({"bogus": 1}), ErrorCode::InvalidSummaryKey),
            (json!({"total": -1}), ErrorCode::InvalidSummaryValue),
            (json!({"total": 1.5}), ErrorCode::InvalidSummaryValue),
            (json!({"total": "3"}), ErrorCode::InvalidSummaryValue),
            (
                json!({"total": 9007199254740992u64}),
                ErrorCode::InvalidSummaryValue,
            ),
            (json!([1]), ErrorCode::InvalidSummaryValue),
        ];
        for (value, code) in cases {
            assert_eq!(
                SummaryCounts::parse(&value).unwrap_err().code,
                code,
                "{value}"
            );
        }
    }

    #[test]
    fn increments_add_up_and_refuse_overflow() {
        let base = SummaryCounts::parse(&json!({"total": 5})).unwrap();
        let inc = SummaryCounts::parse(&json!({"total": 2, "failed": 1})).unwrap();
        let sum = base.add(&inc).unwrap();
        assert_eq!(sum.to_json(), json!({"failed": 1, "total": 7}));
        let huge = SummaryCounts::parse(&json!({"total": MAX_SUMMARY_COUNT})).unwrap();
        assert_eq!(
            sum.add(&huge).unwrap_err().code,
            ErrorCode::InvalidSummaryValue
        );
    }
}
