//! Python's text forms of template values, so rendered prompts match transformers byte for
//! byte: `json.dumps` (transformers' `tojson` filter) and `str()` / `repr()` (what Jinja2
//! prints for `{{ value }}`: `None`, `True`, `['a', 1]`, `{'k': 'v'}`, `1e-05`).

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// The options of Python's `json.dumps` that templates pass to `tojson` (the defaults are
/// transformers' own).
#[derive(Debug, Clone, Default)]
pub struct JsonOptions {
    /// Escape every non-ASCII character as `\uXXXX` (transformers defaults this to false).
    pub ensure_ascii: bool,
    /// Pretty-print with this indent string; `None` is one line.
    pub indent: Option<String>,
    /// Item and key separators; `None` picks Python's defaults for the indent mode.
    pub separators: Option<(String, String)>,
    /// Sort map keys.
    pub sort_keys: bool,
}

fn not_serializable(kind: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("Object of type {kind} is not JSON serializable"),
    )
}

/// `json.dumps(value, ...)` over a template value.
pub fn json_dumps(value: &Value, opts: &JsonOptions) -> Result<String, Error> {
    let (item_sep, key_sep) = match &opts.separators {
        Some((i, k)) => (i.clone(), k.clone()),
        None if opts.indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let mut out = String::new();
    let w = JsonWriter {
        opts,
        item_sep: &item_sep,
        key_sep: &key_sep,
    };
    w.write(&mut out, value, 0)?;
    Ok(out)
}

struct JsonWriter<'a> {
    opts: &'a JsonOptions,
    item_sep: &'a str,
    key_sep: &'a str,
}

impl JsonWriter<'_> {
    fn newline(&self, out: &mut String, level: usize) {
        if let Some(indent) = &self.opts.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    }

    fn write(&self, out: &mut String, value: &Value, level: usize) -> Result<(), Error> {
        match value.kind() {
            ValueKind::Undefined => return Err(not_serializable("Undefined")),
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&number_str(value, true)),
            ValueKind::String => json_string(
                out,
                value.as_str().unwrap_or_default(),
                self.opts.ensure_ascii,
            ),
            ValueKind::Iterable if super::pyfilters::is_generator(value) => {
                return Err(not_serializable("generator"))
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(self.item_sep);
                    }
                    self.newline(out, level + 1);
                    self.write(out, item, level + 1)?;
                }
                self.newline(out, level);
                out.push(']');
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    entries.push((json_key(&key)?, item));
                }
                if self.opts.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                if entries.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                out.push('{');
                for (i, (key, item)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(self.item_sep);
                    }
                    self.newline(out, level + 1);
                    json_string(out, key, self.opts.ensure_ascii);
                    out.push_str(self.key_sep);
                    self.write(out, item, level + 1)?;
                }
                self.newline(out, level);
                out.push('}');
            }
            _ => return Err(not_serializable(&value.kind().to_string())),
        }
        Ok(())
    }
}

/// A map key as `json.dumps` converts it (strings as-is, numbers and constants to text).
fn json_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::Number => Ok(number_str(key, true)),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_string()),
        ValueKind::None => Ok("null".to_string()),
        other => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("keys must be str, int, float, bool or None, not {other}"),
        )),
    }
}

fn json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A number as Python prints it: integers plainly, floats with `float.__repr__`
/// (`1.0`, `0.1`, `1e-05`, `1e+16`); `json` spells the non-finite ones `NaN`/`Infinity`.
fn number_str(value: &Value, json: bool) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
    float_repr(f, json)
}

/// Python's `repr(float)` (or `json.dumps(float)` when `json`).
pub fn float_repr(f: f64, json: bool) -> String {
    if f.is_nan() {
        return if json { "NaN" } else { "nan" }.to_string();
    }
    if f.is_infinite() {
        let s = if json { "Infinity" } else { "inf" };
        return if f < 0.0 {
            format!("-{s}")
        } else {
            s.to_string()
        };
    }
    // Rust's `{:e}` gives the shortest round-trip digits, as Python's repr does.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..16).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

/// Python's `str(value)`: what Jinja2 prints for `{{ value }}`.
pub fn py_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::String => value.as_str().unwrap_or_default().to_string(),
        _ => py_repr(value),
    }
}

/// Python's `repr(value)` for template values (strings quoted, containers recursive).
pub fn py_repr(value: &Value) -> String {
    match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::None => "None".to_string(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.to_string(),
        ValueKind::Number => number_str(value, false),
        ValueKind::String => str_repr(value.as_str().unwrap_or_default()),
        ValueKind::Iterable if super::pyfilters::is_generator(value) => {
            "<generator object>".to_string()
        }
        ValueKind::Seq | ValueKind::Iterable => match value.try_iter() {
            Ok(iter) => format!(
                "[{}]",
                iter.map(|v| py_repr(&v)).collect::<Vec<_>>().join(", ")
            ),
            Err(_) => value.to_string(),
        },
        ValueKind::Map => match value.try_iter() {
            Ok(iter) => {
                let items: Vec<String> = iter
                    .map(|k| {
                        format!(
                            "{}: {}",
                            py_repr(&k),
                            py_repr(&value.get_item(&k).unwrap_or_default())
                        )
                    })
                    .collect();
                format!("{{{}}}", items.join(", "))
            }
            Err(_) => value.to_string(),
        },
        _ => value.to_string(),
    }
}

fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_like_python() {
        assert_eq!(float_repr(1.0, false), "1.0");
        assert_eq!(float_repr(0.1, false), "0.1");
        assert_eq!(float_repr(1e-5, false), "1e-05");
        assert_eq!(float_repr(0.0001, false), "0.0001");
        assert_eq!(float_repr(1e16, false), "1e+16");
        assert_eq!(float_repr(1.5e300, false), "1.5e+300");
        assert_eq!(float_repr(123456789012345.6, false), "123456789012345.6");
    }

    #[test]
    fn dumps_like_python() {
        let v =
            Value::from_serialize(serde_json::json!({"b": [1, 2.5, "é\n"], "a": {}, "c": null}));
        assert_eq!(
            json_dumps(&v, &JsonOptions::default()).unwrap(),
            r#"{"b": [1, 2.5, "é\n"], "a": {}, "c": null}"#
        );
        let opts = JsonOptions {
            ensure_ascii: true,
            indent: Some("  ".into()),
            sort_keys: true,
            ..Default::default()
        };
        assert_eq!(
            json_dumps(&v, &opts).unwrap(),
            "{\n  \"a\": {},\n  \"b\": [\n    1,\n    2.5,\n    \"\\u00e9\\n\"\n  ],\n  \"c\": null\n}"
        );
        assert!(json_dumps(&Value::UNDEFINED, &JsonOptions::default()).is_err());
    }

    #[test]
    fn repr_like_python() {
        let v = Value::from_serialize(serde_json::json!({"k": ["it's", true, null, 3]}));
        assert_eq!(py_repr(&v), r#"{'k': ["it's", True, None, 3]}"#);
        assert_eq!(py_str(&Value::from("x")), "x");
    }
}
