//! RFC 8785 JSON Canonicalization Scheme for the values this protocol hashes.

use serde_json::Value;

use crate::{Error, Result};

/// The canonical form of `v`: members sorted by UTF-16 code units, no whitespace,
/// strings escaped as ECMAScript `JSON.stringify` does. Non-integer numbers are refused
/// (this protocol never hashes them, and their canonical form needs ECMAScript's
/// number formatting).
pub fn jcs(v: &Value) -> Result<String> {
    let mut out = String::new();
    write(v, &mut out)?;
    Ok(out)
}

fn write(v: &Value, out: &mut String) -> Result<()> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else {
                return Err(Error::Unsupported(
                    "non-integer number in canonical JSON".into(),
                ));
            }
        }
        Value::String(s) => string(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(x, out)?;
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                string(k, out);
                out.push(':');
                write(&m[k], out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc8785_examples() {
        // RFC 8785 §3.2.3: sorting by UTF-16 code units.
        let v: Value = serde_json::from_str(
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
        )
        .unwrap();
        let keys: Vec<String> = match serde_json::from_str::<Value>(&jcs(&v).unwrap()).unwrap() {
            Value::Object(_) => {
                let s = jcs(&v).unwrap();
                [
                    "Carriage Return",
                    "One",
                    "Control",
                    "Latin Small",
                    "Euro Sign",
                    "Emoji",
                    "Hebrew",
                ]
                .iter()
                .map(|k| s.find(k).unwrap().to_string())
                .collect()
            }
            _ => unreachable!(),
        };
        let pos: Vec<usize> = keys.iter().map(|k| k.parse().unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
        // §3.2.2.2: string escapes.
        assert_eq!(
            jcs(&json!("\u{f}\n\"\\/é")).unwrap(),
            "\"\\u000f\\n\\\"\\\\/é\""
        );
        assert_eq!(
            jcs(&json!({"b": [1, true, null], "a": {"d": "x", "c": -2}})).unwrap(),
            r#"{"a":{"c":-2,"d":"x"},"b":[1,true,null]}"#
        );
        assert!(jcs(&json!(1.5)).is_err());
    }
}
