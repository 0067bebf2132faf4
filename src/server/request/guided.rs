//! vLLM's structured-output fields, which clients written for vLLM send in `extra_body`:
//! `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar` (Lark or GBNF) and the newer
//! `structured_outputs: {json | regex | choice | grammar | json_object}`, and llama.cpp
//! server's `grammar` (GBNF) and `json_schema`. Each becomes a
//! `response_format`-shaped value (kooka's own `regex`, `choice` and `grammar` types beside
//! `json_schema`) that [`crate::server::generation::parse_response_format`] reads; at most one
//! constraint per request.

use serde_json::{json, Map, Value};

use super::fields::get;
use crate::server::error::ApiError;

/// Every constraint field and what it asks for (`json`, `regex`, `choice`, `grammar`,
/// `object`): the top-level ones, then `structured_outputs`' keys.
const FIELDS: [(&str, &str); 11] = [
    ("guided_json", "json"),
    ("guided_regex", "regex"),
    ("guided_choice", "choice"),
    ("guided_grammar", "grammar"),
    // llama.cpp server's own fields.
    ("grammar", "grammar"),
    ("json_schema", "json"),
    ("structured_outputs.json", "json"),
    ("structured_outputs.regex", "regex"),
    ("structured_outputs.choice", "choice"),
    ("structured_outputs.grammar", "grammar"),
    ("structured_outputs.json_object", "object"),
];

/// A constraint field's name as a `'static` one (what errors name), for the `field` that
/// [`guided`]'s values carry.
pub(crate) fn field_name(field: &str) -> &'static str {
    FIELDS
        .iter()
        .map(|(name, _)| *name)
        .find(|name| *name == field)
        .unwrap_or("structured_outputs")
}

/// The request's vLLM-style constraint, as a `response_format` value (`None`: none asked).
pub(crate) fn guided(obj: &Map<String, Value>) -> Result<Option<Value>, ApiError> {
    let so = match get(obj, "structured_outputs") {
        None => None,
        Some(Value::Object(so)) => Some(so),
        Some(_) => {
            return Err(ApiError::field(
                "structured_outputs",
                "`structured_outputs` must be an object",
            ))
        }
    };
    let found: Vec<(&str, &str, &Value)> = FIELDS
        .iter()
        .filter_map(|&(field, kind)| {
            let value = match field.strip_prefix("structured_outputs.") {
                Some(key) => so?
                    .get(key)
                    .filter(|v| !matches!(v, Value::Null | Value::Bool(false))),
                None => get(obj, field),
            };
            value.map(|v| (field, kind, v))
        })
        .collect();
    let Some(&(field, kind, value)) = found.first() else {
        return Ok(None);
    };
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|(f, _, _)| *f).collect();
        return Err(ApiError::field(
            "structured_outputs",
            format!("one constraint per request, got {}", names.join(", ")),
        ));
    }
    let text = |what: &str| match value {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        _ => Err(ApiError::field(
            field,
            format!("`{field}` must be a non-empty string ({what})"),
        )),
    };
    Ok(Some(match kind {
        "json" => {
            // A schema object, or its JSON text.
            let schema = match value {
                Value::String(s) => serde_json::from_str(s).map_err(|e| {
                    ApiError::field(field, format!("`{field}` is not a JSON schema: {e}"))
                })?,
                v => v.clone(),
            };
            if !(schema.is_object() || schema.is_boolean()) {
                return Err(ApiError::field(
                    field,
                    format!("`{field}` must be a JSON schema object"),
                ));
            }
            json!({"type": "json_schema", "json_schema": {"schema": schema}})
        }
        "object" => json!({"type": "json_object"}),
        "regex" => json!({"type": "regex", "regex": text("a regular expression")?, "field": field}),
        "grammar" => json!({"type": "grammar", "grammar": text("a Lark grammar")?, "field": field}),
        _ => {
            let choices = match value {
                Value::Array(items) if !items.is_empty() => items
                    .iter()
                    .map(|c| c.as_str().map(str::to_string))
                    .collect::<Option<Vec<String>>>(),
                _ => None,
            };
            let Some(choices) = choices else {
                return Err(ApiError::field(
                    field,
                    format!("`{field}` must be a non-empty list of strings"),
                ));
            };
            json!({"type": "choice", "choice": choices, "field": field})
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(body: Value) -> Result<Option<Value>, ApiError> {
        guided(body.as_object().unwrap())
    }

    #[test]
    fn each_field_becomes_a_response_format() {
        let schema = json!({"type": "object"});
        for body in [
            json!({"guided_json": schema}),
            json!({"guided_json": schema.to_string()}),
            json!({"structured_outputs": {"json": schema}}),
        ] {
            let v = of(body).unwrap().unwrap();
            assert_eq!(v["json_schema"]["schema"], schema);
        }
        let v = of(json!({"guided_regex": "[0-9]+"})).unwrap().unwrap();
        assert_eq!(
            (v["type"].as_str(), v["field"].as_str()),
            (Some("regex"), Some("guided_regex"))
        );
        let v = of(json!({"structured_outputs": {"choice": ["yes", "no"]}}))
            .unwrap()
            .unwrap();
        assert_eq!(v["choice"], json!(["yes", "no"]));
        assert_eq!(v["field"], "structured_outputs.choice");
        let v = of(json!({"json_schema": schema})).unwrap().unwrap();
        assert_eq!(v["json_schema"]["schema"], schema);
        let v = of(json!({"grammar": "root ::= \"a\""})).unwrap().unwrap();
        assert_eq!(
            (v["type"].as_str(), v["field"].as_str()),
            (Some("grammar"), Some("grammar"))
        );
        let v = of(json!({"structured_outputs": {"json_object": true}}))
            .unwrap()
            .unwrap();
        assert_eq!(v["type"], "json_object");
        assert_eq!(of(json!({"guided_grammar": null})).unwrap(), None);
    }

    #[test]
    fn bad_values_name_the_field() {
        for (body, field) in [
            (json!({"guided_choice": []}), "guided_choice"),
            (json!({"guided_choice": [1]}), "guided_choice"),
            (json!({"guided_regex": ""}), "guided_regex"),
            (json!({"guided_json": "{not json"}), "guided_json"),
            (json!({"structured_outputs": 3}), "structured_outputs"),
            (
                json!({"guided_regex": "a", "guided_choice": ["a"]}),
                "structured_outputs",
            ),
        ] {
            let err = of(body.clone()).unwrap_err();
            assert_eq!(err.param(), Some(field), "{body}: {err:?}");
        }
    }
}
