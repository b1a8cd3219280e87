//! Small helpers for reading and writing AMQP header tables.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Builds a header table from string values.
pub fn string_table<'a>(entries: impl IntoIterator<Item = (&'a str, String)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in entries {
        table.insert(
            ShortString::from(k),
            AMQPValue::LongString(LongString::from(v)),
        );
    }
    table
}

/// Reads a header as text (long or short string), if present.
pub fn get_str(table: Option<&FieldTable>, key: &str) -> Option<String> {
    match table?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Borrows a header as text (long or short string), if present and valid UTF-8.
pub fn string_header<'t>(table: &'t FieldTable, key: &str) -> Option<&'t str> {
    match table.inner().get(key)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// Reads a header as an integer, if present.
pub fn get_i64(table: Option<&FieldTable>, key: &str) -> Option<i64> {
    match table?.inner().get(key)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

/// An integer header value, or void for `None`.
pub fn opt_i64(value: Option<i64>) -> AMQPValue {
    value.map_or(AMQPValue::Void, AMQPValue::LongLongInt)
}
