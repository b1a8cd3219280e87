//! Strict JSON parsing of command bodies.
//!
//! `serde_json::Value` keeps the last of two equal keys, so `"tenant_id": 10, …, "tenant_id": null`
//! would silently become a workspace-scoped command. This parser builds the same `Value` as
//! `serde_json::from_str` (same numbers, same nesting limit of 128) through its own visitor, which
//! refuses a repeated key in any object and a NUL character (U+0000) in any string, key or value:
//! Postgres `text` and `jsonb` cannot store NUL, so a body holding one could only fail later, at
//! the database write.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

/// How many characters of a key a message shows.
const SHOWN_CHARS: usize = 64;

/// Why a body is not strict JSON.
#[derive(Debug, thiserror::Error)]
pub enum StrictJsonError {
    /// Not JSON at all (syntax, trailing characters, numbers out of range, nesting past 128).
    #[error("{0}")]
    Syntax(#[from] serde_json::Error),
    /// An object holds the same key twice (compared after unescaping, so `"a"` and `"\u0061"` are
    /// the same key). Holds the key, truncated to 64 characters.
    #[error("key {0:?} appears more than once in one object")]
    DuplicateKey(String),
    /// A string holds U+0000. `in_key` tells a key from a value; `field` is the key (truncated to
    /// 64 characters) that the string is, or is the value of, when there is one.
    #[error("{}", nul_message(*.in_key, .field.as_deref()))]
    NulCharacter {
        /// The NUL is in a key rather than in a value.
        in_key: bool,
        /// The key concerned, if any (a top-level string has none).
        field: Option<String>,
    },
}

impl StrictJsonError {
    /// True when serde_json stopped at its nesting limit (128 levels).
    pub fn is_recursion_limit(&self) -> bool {
        matches!(self, Self::Syntax(e) if e.to_string().contains("recursion limit"))
    }
}

fn nul_message(in_key: bool, field: Option<&str>) -> String {
    match (in_key, field) {
        (true, Some(k)) => format!("the key {k:?} contains U+0000 (NUL), which cannot be stored"),
        (false, Some(k)) => {
            format!("a string in {k:?} contains U+0000 (NUL), which cannot be stored")
        }
        (_, None) => "a string contains U+0000 (NUL), which cannot be stored".to_owned(),
    }
}

fn shown(key: &str) -> String {
    key.chars().take(SHOWN_CHARS).collect()
}

/// Parses `text` into a [`Value`] as `serde_json::from_str` would, refusing duplicate keys and
/// NUL characters anywhere. Total: never panics, whatever the input.
pub fn parse(text: &str) -> Result<Value, StrictJsonError> {
    let refusal = Cell::new(None);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = Strict {
        refusal: &refusal,
        field: None,
    }
    .deserialize(&mut deserializer)
    .and_then(|value| deserializer.end().map(|()| value));
    // A refusal travels out of serde as an opaque custom error; the typed one is in the cell.
    match (parsed, refusal.take()) {
        (_, Some(refused)) => Err(refused),
        (Ok(value), None) => Ok(value),
        (Err(e), None) => Err(StrictJsonError::Syntax(e)),
    }
}

/// The exact text of each value of the top-level `context` object of a body that [`parse`]
/// accepted, or `None` when there is no such object. Used where a value's spelling matters and
/// [`Value`] cannot keep it (an integer literal beyond 64 bits becomes a double there).
pub fn raw_context_values(text: &str) -> Option<BTreeMap<String, &str>> {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        context: BTreeMap<String, &'a RawValue>,
    }
    let body: Body<'_> = serde_json::from_str(text).ok()?;
    Some(
        body.context
            .into_iter()
            .map(|(k, v)| (k, v.get()))
            .collect(),
    )
}

/// The visitor: one per value, knowing the key it is the value of (for messages).
#[derive(Clone, Copy)]
struct Strict<'a> {
    refusal: &'a Cell<Option<StrictJsonError>>,
    field: Option<&'a str>,
}

impl Strict<'_> {
    fn refuse<E: de::Error>(&self, refused: StrictJsonError) -> E {
        let message = refused.to_string();
        self.refusal.set(Some(refused));
        E::custom(message)
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // As serde_json's own Value visitor does (the parser never yields NaN or infinities).
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.visit_string(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        if v.contains('\0') {
            return Err(self.refuse(StrictJsonError::NulCharacter {
                in_key: false,
                field: self.field.map(shown),
            }));
        }
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key.contains('\0') {
                return Err(self.refuse(StrictJsonError::NulCharacter {
                    in_key: true,
                    field: Some(shown(&key)),
                }));
            }
            if object.contains_key(&key) {
                return Err(self.refuse(StrictJsonError::DuplicateKey(shown(&key))));
            }
            let value = map.next_value_seed(Strict {
                refusal: self.refusal,
                field: Some(&key),
            })?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_builds_what_serde_json_builds() {
        for text in [
            r#"{"a": [1, -2, 3.5, 1e3, 18446744073709551615, 123456789012345678901234567890], "b": {"c": null, "d": true, "e": "x\u00e9"}}"#,
            "[]",
            "\"s\"",
            "  -0.0 ",
            "1.7976931348623157e308",
        ] {
            let ours = parse(text).unwrap();
            let theirs: Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours, theirs, "{text}");
        }
    }

    #[test]
    fn a_repeated_key_is_refused_at_any_depth_even_when_escaped_differently() {
        for (text, key) in [
            (r#"{"a": 1, "a": 2}"#, "a"),
            (r#"{"x": [{"k": {"b": 1, "c": 2, "b": 3}}]}"#, "b"),
            (r#"{"tenant_id": 1, "tenant\u005fid": 1}"#, "tenant_id"),
        ] {
            match parse(text) {
                Err(StrictJsonError::DuplicateKey(k)) => assert_eq!(k, key),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(parse(r#"{"a": {"a": 1}, "b": [{"a": 1}, {"a": 2}]}"#).is_ok());
        let long = "k".repeat(100);
        let text = format!(r#"{{"{long}": 1, "{long}": 2}}"#);
        match parse(&text) {
            Err(StrictJsonError::DuplicateKey(k)) => assert_eq!(k.chars().count(), 64),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nul_is_refused_in_keys_and_values() {
        for (text, in_key, field) in [
            (r#"{"a": "x\u0000y"}"#, false, Some("a")),
            (r#"{"a": ["ok", {"b": "\u0000"}]}"#, false, Some("b")),
            (r#"{"a": {"k\u0000": 1}}"#, true, Some("k\0")),
            (r#""\u0000""#, false, None),
        ] {
            match parse(text) {
                Err(StrictJsonError::NulCharacter {
                    in_key: k,
                    field: f,
                }) => {
                    assert_eq!((k, f.as_deref()), (in_key, field), "{text}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // Other control characters are fine (they are escaped when written back).
        assert!(parse(r#"{"a": "\u0001\u001f"}"#).is_ok());
    }

    #[test]
    fn syntax_errors_and_the_nesting_limit_stay_syntax_errors() {
        assert!(matches!(
            parse("{\"a\": 1} x"),
            Err(StrictJsonError::Syntax(_))
        ));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let err = parse(&deep).unwrap_err();
        assert!(err.is_recursion_limit(), "{err}");
        // Exactly serde_json's limit, objects and arrays alike.
        for depth in 120..136 {
            for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
                let text = format!("{}1{}", open.repeat(depth), close.repeat(depth));
                let theirs = serde_json::from_str::<Value>(&text).is_ok();
                assert_eq!(parse(&text).is_ok(), theirs, "depth {depth} {open}");
            }
        }
    }

    #[test]
    fn raw_context_values_keep_the_spelling() {
        let text = r#"{"kind": "dispatch", "context": {"id": 123456789012345678901234567890, "f": 1.0, "s": "x"}}"#;
        let raw = raw_context_values(text).unwrap();
        assert_eq!(raw["id"], "123456789012345678901234567890");
        assert_eq!(raw["f"], "1.0");
        assert_eq!(raw["s"], "\"x\"");
        assert!(raw_context_values(r#"{"context": 1}"#).is_none());
    }
}
