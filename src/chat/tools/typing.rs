//! Typing raw parameter text (the XML-ish formats carry every value as text) by the tool's
//! JSON schema: `integer`/`number`/`boolean`/`null` parsed, `object`/`array` parsed as JSON,
//! `string` kept verbatim; no or unknown type: JSON if it parses, else the string.

use serde_json::Value;

/// The schema of `key` in an object schema: `properties[key]`, else the first of its
/// `anyOf`/`oneOf`/`allOf` branches that has it.
pub fn property_schema<'a>(schema: &'a Value, key: &str) -> Option<&'a Value> {
    if let Some(p) = schema.get("properties").and_then(|p| p.get(key)) {
        return Some(p);
    }
    ["anyOf", "oneOf", "allOf"]
        .iter()
        .filter_map(|k| schema.get(*k)?.as_array())
        .flatten()
        .find_map(|branch| property_schema(branch, key))
}

/// The type names a schema allows, in order (`type` as string or list, then `anyOf`/`oneOf`
/// branches' types); empty if it says nothing.
pub fn schema_types(schema: &Value) -> Vec<String> {
    let mut types = Vec::new();
    match schema.get("type") {
        Some(Value::String(t)) => types.push(t.clone()),
        Some(Value::Array(ts)) => {
            types.extend(ts.iter().filter_map(|t| t.as_str().map(String::from)))
        }
        _ => {}
    }
    for key in ["anyOf", "oneOf"] {
        for branch in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            types.extend(schema_types(branch));
        }
    }
    if types.is_empty() && (schema.get("properties").is_some()) {
        types.push("object".into());
    }
    if types.is_empty()
        && schema
            .get("enum")
            .and_then(Value::as_array)
            .is_some_and(|e| e.iter().all(Value::is_string))
    {
        types.push("string".into());
    }
    types
}

/// Types `raw` by `schema`.
pub fn coerce(raw: &str, schema: Option<&Value>) -> Value {
    let types = schema.map(schema_types).unwrap_or_default();
    if types.is_empty() {
        return serde_json::from_str(raw.trim()).unwrap_or_else(|_| Value::String(raw.to_string()));
    }
    // The string type wins when it is allowed: the text is exactly what the model wrote.
    let non_null: Vec<&str> = types
        .iter()
        .map(String::as_str)
        .filter(|t| *t != "null")
        .collect();
    if raw.trim() == "null" && types.iter().any(|t| t == "null") {
        return Value::Null;
    }
    for t in &non_null {
        if let Some(v) = as_type(raw, t) {
            if *t != "string" || non_null.len() == 1 {
                return v;
            }
        }
    }
    if non_null.contains(&"string") {
        return Value::String(raw.to_string());
    }
    serde_json::from_str(raw.trim()).unwrap_or_else(|_| Value::String(raw.to_string()))
}

fn as_type(raw: &str, t: &str) -> Option<Value> {
    let s = raw.trim();
    match t {
        "string" => Some(Value::String(raw.to_string())),
        "integer" => s.parse::<i64>().map(Value::from).ok().or_else(|| {
            s.parse::<f64>()
                .ok()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                .map(|f| Value::from(f as i64))
        }),
        "number" => s.parse::<i64>().map(Value::from).ok().or_else(|| {
            s.parse::<f64>()
                .ok()
                .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
        }),
        "boolean" => match s.to_ascii_lowercase().as_str() {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        "null" => (s == "null" || s == "None").then_some(Value::Null),
        "object" => serde_json::from_str::<Value>(s)
            .ok()
            .filter(Value::is_object),
        "array" => serde_json::from_str::<Value>(s)
            .ok()
            .filter(Value::is_array),
        _ => serde_json::from_str::<Value>(s).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_by_schema() {
        assert_eq!(coerce("42", Some(&json!({"type": "integer"}))), json!(42));
        assert_eq!(
            coerce(" 2.5 ", Some(&json!({"type": "number"}))),
            json!(2.5)
        );
        assert_eq!(
            coerce("True", Some(&json!({"type": "boolean"}))),
            json!(true)
        );
        assert_eq!(coerce("42", Some(&json!({"type": "string"}))), json!("42"));
        assert_eq!(
            coerce("[1, 2]", Some(&json!({"type": "array"}))),
            json!([1, 2])
        );
        assert_eq!(
            coerce("{\"a\": 1}", Some(&json!({"type": "object"}))),
            json!({"a": 1})
        );
        assert_eq!(
            coerce("7", Some(&json!({"type": ["integer", "null"]}))),
            json!(7)
        );
        assert_eq!(
            coerce(
                "null",
                Some(&json!({"anyOf": [{"type": "integer"}, {"type": "null"}]}))
            ),
            json!(null)
        );
        assert_eq!(coerce("x", Some(&json!({"type": "integer"}))), json!("x"));
        assert_eq!(coerce("[1]", None), json!([1]));
        assert_eq!(coerce("Paris", None), json!("Paris"));
    }

    #[test]
    fn finds_properties_in_branches() {
        let s = json!({"anyOf": [{"properties": {"a": {"type": "integer"}}}, {"properties": {"b": {}}}]});
        assert_eq!(property_schema(&s, "a"), Some(&json!({"type": "integer"})));
        assert!(property_schema(&s, "c").is_none());
    }
}
