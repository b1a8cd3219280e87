//! The run identity: which runs count as "the same operation", so that a second dispatch of an
//! active one is deduplicated.
//!
//! `run_identity_hash` = lowercase hex SHA-256 of the RFC 8785 (JCS) canonical JSON of
//! `{"type", "workspace_id", "tenant_id", "identity": {identity key: context value}}`.
//! JCS fixes key order, whitespace and number formatting, so producers in any language agree.
//!
//! Before that, each identity value is put in its normal form (see [`normalise_identity_value`]):
//! `scheduled_for` becomes its UTC minute, and an integer becomes its decimal string, so that
//! `77`, `77.0` and `"77"` are one identity (PHP form input arrives as strings) and an integer
//! beyond 2^53 keeps every digit instead of being rounded to a double by JCS.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::error::{ErrorCode, Rejection};
use super::operation_type::OperationRunType;

/// The identity key whose value is normalised to its UTC minute before hashing.
const SCHEDULED_FOR: &str = "scheduled_for";

/// 2^53 − 1, JavaScript's `Number.MAX_SAFE_INTEGER`: every integer up to it is exact as a double.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// A run identity hash: exactly 64 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunIdentityHash(String);

impl RunIdentityHash {
    /// Computes the identity hash of a run of `run_type` in `workspace_id`/`tenant_id` with `context`.
    ///
    /// Fails with `missing_identity_key` when the context lacks an identity key (or holds null for
    /// it) and `invalid_identity_value` when `scheduled_for` is not an RFC 3339 timestamp.
    pub fn compute(
        run_type: OperationRunType,
        workspace_id: i64,
        tenant_id: Option<i64>,
        context: &Map<String, Value>,
    ) -> Result<Self, Rejection> {
        let canonical = canonical_identity_json(run_type, workspace_id, tenant_id, context)?;
        Ok(Self(hex::encode(Sha256::digest(canonical.as_bytes()))))
    }

    /// Wraps a stored hash, checking its form.
    pub fn parse(hex: &str) -> Option<Self> {
        let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Self(hex.to_owned()))
    }

    /// The 64-character hex form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunIdentityHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The canonical (JCS) JSON text that is hashed; exposed so that test vectors can show it.
pub fn canonical_identity_json(
    run_type: OperationRunType,
    workspace_id: i64,
    tenant_id: Option<i64>,
    context: &Map<String, Value>,
) -> Result<String, Rejection> {
    let mut identity = Map::new();
    for key in run_type.catalog().identity_keys {
        identity.insert((*key).to_owned(), identity_value(run_type, key, context)?);
    }
    let document = json!({
        "type": run_type.as_str(),
        "workspace_id": workspace_id,
        "tenant_id": tenant_id,
        "identity": identity,
    });
    serde_json_canonicalizer::to_string(&document).map_err(|e| {
        Rejection::new(
            ErrorCode::InvalidIdentityValue,
            format!("identity cannot be canonicalised: {e}"),
        )
    })
}

/// Rewrites the identity values of `context` into their normalised form (today: `scheduled_for` to
/// its UTC minute), so that what is stored is what was hashed.
pub fn normalise_context(
    run_type: OperationRunType,
    context: &mut Map<String, Value>,
) -> Result<(), Rejection> {
    if run_type.catalog().identity_keys.contains(&SCHEDULED_FOR) {
        let value = identity_value(run_type, SCHEDULED_FOR, context)?;
        context.insert(SCHEDULED_FOR.to_owned(), value);
    }
    Ok(())
}

fn identity_value(
    run_type: OperationRunType,
    key: &str,
    context: &Map<String, Value>,
) -> Result<Value, Rejection> {
    let value = match context.get(key) {
        None | Some(Value::Null) => {
            return Err(Rejection::new(
                ErrorCode::MissingIdentityKey,
                format!("context.{key} is required by type {run_type}"),
            ))
        }
        Some(v) => v,
    };
    if key != SCHEDULED_FOR {
        return Ok(normalise_identity_value(value));
    }
    let text = value.as_str().ok_or_else(|| invalid_scheduled_for(value))?;
    Ok(Value::String(
        normalise_to_minute(text).ok_or_else(|| invalid_scheduled_for(value))?,
    ))
}

/// The normal form of a top-level identity value (other than `scheduled_for`), what is hashed:
///
/// - a JSON integer (any size: the decoder has already turned an integer literal beyond 64 bits
///   into its exact decimal string) becomes its decimal string: `77` → `"77"`, `-5` → `"-5"`;
/// - a number written with a fraction or exponent whose value is an integer within ±(2^53 − 1)
///   becomes the same decimal string: `77.0`, `7.7e1` → `"77"`, `-0.0` → `"0"`;
/// - every other value is unchanged: strings (so `"77"` equals `77` while `"077"`, `"+77"` and
///   `" 77"` do not), other numbers (JCS prints them), booleans, and objects and arrays, whose
///   inner values are not normalised.
pub fn normalise_identity_value(value: &Value) -> Value {
    let Value::Number(n) = value else {
        return value.clone();
    };
    if let Some(i) = n.as_i64() {
        return Value::String(i.to_string());
    }
    if let Some(u) = n.as_u64() {
        return Value::String(u.to_string());
    }
    match n.as_f64() {
        // In range, `as` is exact; `-0.0 as i64` is 0.
        Some(f) if f.fract() == 0.0 && f.abs() <= MAX_SAFE_INTEGER => {
            Value::String((f as i64).to_string())
        }
        _ => value.clone(),
    }
}

/// The decimal digits of a JSON integer literal (`-?(0|[1-9][0-9]*)`, no fraction or exponent),
/// with `-0` written `0`; `None` for any other JSON text.
pub fn integer_literal_digits(raw: &str) -> Option<String> {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits.bytes().all(|b| b == b'0') {
        return Some("0".to_owned());
    }
    Some(raw.to_owned())
}

fn invalid_scheduled_for(value: &Value) -> Rejection {
    let shown: String = value.to_string().chars().take(64).collect();
    Rejection::new(
        ErrorCode::InvalidIdentityValue,
        format!("context.scheduled_for must be an RFC 3339 timestamp, got {shown}"),
    )
}

/// `2026-01-02T03:04:59.9+01:00` → `2026-01-02T02:04:00Z`.
fn normalise_to_minute(text: &str) -> Option<String> {
    let utc = DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc);
    let minute = utc.with_second(0)?.with_nanosecond(0)?;
    Some(minute.to_rfc3339_opts(SecondsFormat::Secs, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn rfc8785_sample_canonicalises_as_published() {
        // RFC 8785 section 3.2.2.
        let input = r#"{
          "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        let value: Value = serde_json::from_str(input).unwrap();
        let out = serde_json_canonicalizer::to_string(&value).unwrap();
        assert_eq!(
            out,
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    #[test]
    fn rfc8785_property_sorting_uses_utf16_code_units() {
        // RFC 8785 section 3.2.3.
        let input = r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#;
        let value: Value = serde_json::from_str(input).unwrap();
        let out = serde_json_canonicalizer::to_string(&value).unwrap();
        let expected = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
        assert_eq!(out, expected);
    }

    #[test]
    fn key_order_and_whitespace_do_not_change_the_hash() {
        let a = ctx(json!({"selection": {"b": 1, "a": [1, 2]}, "other": 1}));
        let b: Map<String, Value> =
            serde_json::from_str(r#"{ "other" : 2 , "selection" : { "a" : [1,2] , "b" : 1.0 } }"#)
                .unwrap();
        let t = OperationRunType::InventorySync;
        assert_eq!(
            RunIdentityHash::compute(t, 1, Some(2), &a).unwrap(),
            RunIdentityHash::compute(t, 1, Some(2), &b).unwrap()
        );
    }

    #[test]
    fn scope_is_part_of_the_identity() {
        let c = ctx(json!({"policy_id": "p"}));
        let t = OperationRunType::PolicySync;
        let tenant = RunIdentityHash::compute(t, 1, Some(2), &c).unwrap();
        let workspace = RunIdentityHash::compute(t, 1, None, &c).unwrap();
        let other_ws = RunIdentityHash::compute(t, 3, Some(2), &c).unwrap();
        assert_ne!(tenant, workspace);
        assert_ne!(tenant, other_ws);
    }

    #[test]
    fn scheduled_for_is_normalised_to_its_utc_minute() {
        let t = OperationRunType::BackupScheduleScheduled;
        let a = ctx(json!({"backup_schedule_id": 7, "scheduled_for": "2026-03-01T10:00:05Z"}));
        let b =
            ctx(json!({"backup_schedule_id": 7, "scheduled_for": "2026-03-01T11:00:59.999+01:00"}));
        let c = ctx(json!({"backup_schedule_id": 7, "scheduled_for": "2026-03-01T10:01:00Z"}));
        let ha = RunIdentityHash::compute(t, 1, Some(2), &a).unwrap();
        assert_eq!(ha, RunIdentityHash::compute(t, 1, Some(2), &b).unwrap());
        assert_ne!(ha, RunIdentityHash::compute(t, 1, Some(2), &c).unwrap());
        let mut stored = b.clone();
        normalise_context(t, &mut stored).unwrap();
        assert_eq!(stored["scheduled_for"], json!("2026-03-01T10:00:00Z"));
    }

    #[test]
    fn an_integer_and_its_decimal_string_are_one_identity() {
        let t = OperationRunType::BackupScheduleRunNow;
        let hash = |v: Value| {
            RunIdentityHash::compute(t, 1, Some(2), &ctx(json!({ "backup_schedule_id": v })))
                .unwrap()
        };
        let same = [
            (json!(77), json!("77")),
            (json!(77), json!(77.0)),
            (json!(77), json!(7.7e1)),
            (json!(-5), json!("-5")),
            (json!(1.0), json!("1")),
            (json!(-0.0), json!("0")),
            (json!(0), json!("0")),
            (json!(9_007_199_254_740_991.0), json!("9007199254740991")),
            (json!(9_007_199_254_740_993_u64), json!("9007199254740993")),
            (json!(u64::MAX), json!("18446744073709551615")),
            (json!(i64::MIN), json!("-9223372036854775808")),
        ];
        for (a, b) in same {
            assert_eq!(hash(a.clone()), hash(b.clone()), "{a} and {b}");
        }
        let different = [
            (json!(77), json!("077")),
            (json!(77), json!("+77")),
            (json!(77), json!(" 77")),
            (json!(0), json!("-0")),
            (json!(1.5), json!("1.5")),
            // Integers a double cannot hold are never rounded into each other.
            (
                json!(9_007_199_254_740_993_u64),
                json!(9_007_199_254_740_992_u64),
            ),
            // A double beyond 2^53 stays a JCS number: it is not an exact integer.
            (json!(1e21), json!("1000000000000000000000")),
            (json!(true), json!("true")),
        ];
        for (a, b) in different {
            assert_ne!(hash(a.clone()), hash(b.clone()), "{a} and {b}");
        }
        let canonical =
            canonical_identity_json(t, 1, None, &ctx(json!({"backup_schedule_id": 77}))).unwrap();
        assert_eq!(
            canonical,
            r#"{"identity":{"backup_schedule_id":"77"},"tenant_id":null,"type":"backup_schedule.run_now","workspace_id":1}"#
        );
    }

    #[test]
    fn only_top_level_identity_values_are_normalised_and_the_context_keeps_its_types() {
        let t = OperationRunType::InventorySync;
        let nested = |v: Value| {
            RunIdentityHash::compute(t, 1, None, &ctx(json!({"selection": {"ids": [v]}}))).unwrap()
        };
        assert_ne!(nested(json!(1)), nested(json!("1")));
        assert_eq!(nested(json!(1)), nested(json!(1.0)), "JCS prints both as 1");
        let r = OperationRunType::BackupScheduleScheduled;
        let mut stored =
            ctx(json!({"backup_schedule_id": 7, "scheduled_for": "2026-03-01T10:00:05Z"}));
        normalise_context(r, &mut stored).unwrap();
        assert_eq!(stored["backup_schedule_id"], json!(7), "stored as sent");
    }

    #[test]
    fn integer_literals_are_read_digit_for_digit() {
        assert_eq!(
            integer_literal_digits("123456789012345678901234567890").as_deref(),
            Some("123456789012345678901234567890")
        );
        assert_eq!(integer_literal_digits("-12").as_deref(), Some("-12"));
        assert_eq!(integer_literal_digits("-0").as_deref(), Some("0"));
        assert_eq!(integer_literal_digits("0").as_deref(), Some("0"));
        for not in ["1.0", "1e3", "-", "", "\"1\"", "1 ", "true", "--1"] {
            assert_eq!(integer_literal_digits(not), None, "{not}");
        }
    }

    #[test]
    fn missing_or_null_identity_keys_are_refused() {
        let t = OperationRunType::BackupScheduleRetry;
        for c in [
            json!({"backup_schedule_id": 1}),
            json!({"backup_schedule_id": 1, "backup_schedule_run_id": null}),
        ] {
            let err = RunIdentityHash::compute(t, 1, None, &ctx(c)).unwrap_err();
            assert_eq!(err.code, ErrorCode::MissingIdentityKey);
        }
    }

    #[test]
    fn a_scheduled_for_that_is_not_a_timestamp_is_invalid() {
        let t = OperationRunType::BackupScheduleScheduled;
        let c = ctx(json!({"backup_schedule_id": 1, "scheduled_for": "tomorrow"}));
        let err = RunIdentityHash::compute(t, 1, None, &c).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidIdentityValue);
    }

    #[test]
    fn the_hash_is_sha256_of_the_canonical_document() {
        let c = ctx(json!({"restore_run_id": 5}));
        let t = OperationRunType::RestoreExecute;
        let canonical = canonical_identity_json(t, 1, None, &c).unwrap();
        assert_eq!(
            canonical,
            r#"{"identity":{"restore_run_id":"5"},"tenant_id":null,"type":"restore.execute","workspace_id":1}"#
        );
        let h = RunIdentityHash::compute(t, 1, None, &c).unwrap();
        assert_eq!(
            h.as_str(),
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        assert!(RunIdentityHash::parse(h.as_str()).is_some());
    }
}
