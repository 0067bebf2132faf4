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

/// The request's vLLM-style constraint, as a `response_format` value (`None`: none asked).
pub(crate) fn guided(obj: &Map<String, Value>) -> Result<Option<Value>, ApiError> {
    let mut found: Vec<(String, Value)> = [
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        // llama.cpp server's own fields.
        "grammar",
        "json_schema",
    ]
    .into_iter()
    .filter_map(|k| get(obj, k).map(|v| (k.to_string(), v.clone())))
    .collect();
    if let Some(so) = get(obj, "structured_outputs") {
        let Value::Object(so) = so else {
            return Err(ApiError::field(
                "structured_outputs",
                "`structured_outputs` must be an object",
            ));
        };
        for key in ["json", "regex", "choice", "grammar", "json_object"] {
            match so.get(key) {
                None | Some(Value::Null) | Some(Value::Bool(false)) => {}
                Some(v) => found.push((format!("structured_outputs.{key}"), v.clone())),
            }
        }
    }
    let Some((field, value)) = found.first().cloned() else {
        return Ok(None);
    };
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
        return Err(ApiError::field(
            "structured_outputs",
            format!("one constraint per request, got {}", names.join(", ")),
        ));
    }
    let kind = match field.as_str() {
        "json_schema" => "json",
        f => f.rsplit(['_', '.']).next().unwrap_or_default(),
    };
    let text = |what: &str| match &value {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        _ => Err(ApiError::field(
            &field,
            format!("`{field}` must be a non-empty string ({what})"),
        )),
    };
    Ok(Some(match kind {
        "json" => {
            // A schema object, or its JSON text.
            let schema = match &value {
                Value::String(s) => serde_json::from_str(s).map_err(|e| {
                    ApiError::field(&field, format!("`{field}` is not a JSON schema: {e}"))
                })?,
                v => v.clone(),
            };
            if !(schema.is_object() || schema.is_boolean()) {
                return Err(ApiError::field(
                    &field,
                    format!("`{field}` must be a JSON schema object"),
                ));
            }
            json!({"type": "json_schema", "json_schema": {"schema": schema}})
        }
        "object" => json!({"type": "json_object"}),
        "regex" => json!({"type": "regex", "regex": text("a regular expression")?, "field": field}),
        "grammar" => json!({"type": "grammar", "grammar": text("a Lark grammar")?, "field": field}),
        _ => {
            let choices = match &value {
                Value::Array(items) if !items.is_empty() => items
                    .iter()
                    .map(|c| c.as_str().map(str::to_string))
                    .collect::<Option<Vec<String>>>(),
                _ => None,
            };
            let Some(choices) = choices else {
                return Err(ApiError::field(
                    &field,
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
