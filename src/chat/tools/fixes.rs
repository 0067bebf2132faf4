//! MiniMax-M2's model-aware argument repairs (what kooka-server does and users rely on):
//!
//! - a value whose schema is `string` but which is not a string becomes its JSON text;
//! - keys the schema forbids (`additionalProperties: false`) are dropped, looking into
//!   `anyOf`/`oneOf`/`allOf` for the allowed properties;
//! - the spaces the model puts around `-` in id/uuid fields, and around `-`/`.` in path-like
//!   fields (the key ends in path/file/dir/src/dst/..., or the schema's `format` mentions
//!   path), are removed: `"kooka- server/validate. js"` -> `"kooka-server/validate.js"`.

use serde_json::{Map, Value};

use super::typing::{property_schema, schema_types};

/// Repairs one top-level argument of a call (`None`: the schema forbids the key).
pub fn fix_argument(key: &str, value: Value, params_schema: Option<&Value>) -> Option<Value> {
    let Some(schema) = params_schema else {
        return Some(value);
    };
    if forbids(schema, key) {
        return None;
    }
    Some(fix_value(key, value, property_schema(schema, key)))
}

/// Repairs a whole arguments object in place.
pub fn fix_arguments(args: &mut Map<String, Value>, params_schema: Option<&Value>) {
    let old = std::mem::take(args);
    for (key, value) in old {
        if let Some(value) = fix_argument(&key, value, params_schema) {
            args.insert(key, value);
        }
    }
}

/// Whether an object schema rejects `key`: `additionalProperties: false` and no `properties`
/// (here or in a branch) lists it.
pub fn forbids(schema: &Value, key: &str) -> bool {
    let closed = |s: &Value| s.get("additionalProperties") == Some(&Value::Bool(false));
    let branches = || {
        ["anyOf", "oneOf", "allOf"]
            .into_iter()
            .filter_map(|k| schema.get(k)?.as_array())
            .flatten()
    };
    let any_closed = closed(schema) || branches().any(closed);
    any_closed && property_schema(schema, key).is_none()
}

fn fix_value(key: &str, value: Value, schema: Option<&Value>) -> Value {
    let types = schema.map(schema_types).unwrap_or_default();
    let value = match value {
        Value::String(_) => value,
        other if types.len() == 1 && types[0] == "string" => {
            Value::String(serde_json::to_string(&other).unwrap_or_default())
        }
        Value::Object(map) => match schema {
            Some(s) => Value::Object(
                map.into_iter()
                    .filter(|(k, _)| !forbids(s, k))
                    .map(|(k, v)| {
                        let sub = property_schema(s, &k);
                        let fixed = fix_value(&k, v, sub);
                        (k, fixed)
                    })
                    .collect(),
            ),
            None => Value::Object(map),
        },
        Value::Array(items) => {
            let item_schema = schema.and_then(|s| s.get("items"));
            Value::Array(
                items
                    .into_iter()
                    .map(|v| fix_value(key, v, item_schema))
                    .collect(),
            )
        }
        other => other,
    };
    match value {
        Value::String(s) => Value::String(fix_string(key, &s, schema)),
        other => other,
    }
}

/// Removes the model's stray spaces in id-like and path-like string fields.
pub fn fix_string(key: &str, s: &str, schema: Option<&Value>) -> String {
    let lower = key.to_ascii_lowercase();
    let format_is_path = schema
        .and_then(|s| s.get("format"))
        .and_then(Value::as_str)
        .is_some_and(|f| f.to_ascii_lowercase().contains("path"));
    const PATHY: [&str; 9] = [
        "path",
        "paths",
        "file",
        "files",
        "filename",
        "dir",
        "directory",
        "src",
        "dst",
    ];
    if format_is_path
        || PATHY.iter().any(|p| lower.ends_with(p))
        || lower == "cwd"
        || lower.ends_with("folder")
    {
        return collapse_spaces_around(s, &['-', '.']);
    }
    if lower == "id" || lower.ends_with("_id") || key.ends_with("Id") || lower.contains("uuid") {
        return collapse_spaces_around(s, &['-']);
    }
    s.to_string()
}

/// Drops the spaces on both sides of each of `chars`.
fn collapse_spaces_around(s: &str, chars: &[char]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut skip_spaces = false;
    for c in s.chars() {
        if chars.contains(&c) {
            let kept = out.trim_end_matches(' ').len();
            out.truncate(kept);
            out.push(c);
            skip_spaces = true;
        } else if c == ' ' && skip_spaces {
            continue;
        } else {
            out.push(c);
            skip_spaces = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_and_ids_lose_stray_spaces() {
        assert_eq!(
            fix_string("file_path", "kooka- server/validate. js", None),
            "kooka-server/validate.js"
        );
        assert_eq!(
            fix_string("target", "a - b . c", Some(&json!({"format": "file-path"}))),
            "a-b.c"
        );
        assert_eq!(fix_string("session_id", "ab12 - cd34", None), "ab12-cd34");
        assert_eq!(fix_string("uuid", "1 -2", None), "1-2");
        assert_eq!(fix_string("command", "ls - la. txt", None), "ls - la. txt");
        assert_eq!(fix_string("id", "v1. 2", None), "v1. 2");
    }

    #[test]
    fn strings_by_schema_and_forbidden_keys() {
        let schema = json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "title": {"type": "string"},
                "count": {"type": "integer"},
                "opts": {"type": "object", "additionalProperties": false, "properties": {"dir": {"type": "string"}}}
            }
        });
        let mut args =
            json!({"title": 42, "count": 3, "bogus": 1, "opts": {"dir": "a /b. c", "x": true}})
                .as_object()
                .unwrap()
                .clone();
        fix_arguments(&mut args, Some(&schema));
        assert_eq!(
            Value::Object(args),
            json!({"title": "42", "count": 3, "opts": {"dir": "a /b.c"}})
        );
    }

    #[test]
    fn branches_allow_keys() {
        let schema = json!({"additionalProperties": false, "anyOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]});
        assert!(!forbids(&schema, "b"));
        assert!(forbids(&schema, "c"));
        assert!(!forbids(&json!({"properties": {}}), "c"));
    }
}
