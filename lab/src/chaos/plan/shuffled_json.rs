//! JSON text with object keys in a random order, at every depth: the same command worded
//! differently, which the service must treat as the same (canonical body hash, identity hash).
//!
//! `serde_json` here keeps objects sorted, so the text is written by hand.

use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::Value;

/// `value` as compact JSON text, each object's keys shuffled with `rng`.
pub fn to_shuffled_string(value: &Value, rng: &mut impl Rng) -> String {
    let mut out = String::new();
    write(value, rng, &mut out);
    out
}

fn write(value: &Value, rng: &mut impl Rng, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.shuffle(rng);
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write(&map[key], rng, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, rng, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use serde_json::json;

    #[test]
    fn shuffled_text_parses_back_to_the_same_value_in_several_orders() {
        let value = json!({"a": 1, "b": {"x": [1, {"p": "q", "r": null}], "y": "s\"t"}, "c": true, "d": 2.5});
        let mut rng = StdRng::seed_from_u64(7);
        let texts: std::collections::HashSet<String> = (0..20)
            .map(|_| to_shuffled_string(&value, &mut rng))
            .collect();
        assert!(texts.len() > 1, "keys were never reordered");
        for text in texts {
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), value);
        }
    }
}
