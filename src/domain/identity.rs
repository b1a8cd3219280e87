//! The run identity: which runs count as "the same operation", so that a second dispatch of an
//! active one is deduplicated.
//!
//! `run_identity_hash` = lowercase hex SHA-256 of the RFC 8785 (JCS) canonical JSON of
//! `{"type", "workspace_id", "tenant_id", "identity": {identity key: context value}}`.
//! JCS fixes key order, whitespace and number formatting, so producers in any language agree.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::error::{ErrorCode, Rejection};
use super::operation_type::OperationRunType;

/// The identity key whose value is normalised to its UTC minute before hashing.
const SCHEDULED_FOR: &str = "scheduled_for";

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
        return Ok(value.clone());
    }
    let text = value.as_str().ok_or_else(|| invalid_scheduled_for(value))?;
    Ok(Value::String(
        normalise_to_minute(text).ok_or_else(|| invalid_scheduled_for(value))?,
    ))
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
            r#"{"identity":{"restore_run_id":5},"tenant_id":null,"type":"restore.execute","workspace_id":1}"#
        );
        let h = RunIdentityHash::compute(t, 1, None, &c).unwrap();
        assert_eq!(
            h.as_str(),
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        assert!(RunIdentityHash::parse(h.as_str()).is_some());
    }
}
