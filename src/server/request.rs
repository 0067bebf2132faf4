//! Chat-completion request bodies, validated field by field from untrusted JSON into a typed
//! [`ChatRequest`]. Done by hand rather than with `#[derive(Deserialize)]` so that every
//! 400 names the offending field (`param`) and says what was expected.

use serde_json::{Map, Value};

use super::error::ApiError;
use crate::engine::sampling::SamplingParams;

/// A validated `POST /v1/chat/completions` body.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: Option<String>,
    /// OpenAI messages, content-part arrays of text flattened to strings.
    pub messages: Vec<Value>,
    pub stream: bool,
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<usize>,
    pub params: SamplingParams,
    pub stop: Vec<String>,
}

/// A present, non-null field.
fn get<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

fn number(obj: &Map<String, Value>, name: &str) -> Result<Option<f32>, ApiError> {
    match get(obj, name) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() => Ok(Some(x as f32)),
            _ => Err(ApiError::field(
                name,
                format!("`{name}` must be a number, got {}", type_name(v)),
            )),
        },
    }
}

fn integer(obj: &Map<String, Value>, name: &str) -> Result<Option<i64>, ApiError> {
    match get(obj, name) {
        None => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| {
            ApiError::field(
                name,
                format!("`{name}` must be an integer, got {}", type_name(v)),
            )
        }),
    }
}

fn boolean(obj: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    match get(obj, name) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| {
            ApiError::field(
                name,
                format!("`{name}` must be a boolean, got {}", type_name(v)),
            )
        }),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check(ok: bool, name: &str, message: &str) -> Result<(), ApiError> {
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(name, format!("`{name}` {message}")))
    }
}

/// Parses and validates a chat-completion body.
pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("The request body is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::bad_request(format!(
            "The request body must be a JSON object, got {}",
            type_name(&value)
        )));
    };

    let model = match get(&obj, "model") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            return Err(ApiError::field(
                "model",
                format!("`model` must be a string, got {}", type_name(v)),
            ))
        }
    };
    if let Some(n) = integer(&obj, "n")? {
        check(
            n == 1,
            "n",
            "other than 1 is not supported (one choice per request)",
        )?;
    }
    let messages = messages(&obj)?;
    let stream = boolean(&obj, "stream")?.unwrap_or(false);
    let include_usage = match get(&obj, "stream_options") {
        None => false,
        Some(Value::Object(o)) => boolean(o, "include_usage")
            .map_err(|_| {
                ApiError::field(
                    "stream_options.include_usage",
                    "`stream_options.include_usage` must be a boolean",
                )
            })?
            .unwrap_or(false),
        Some(v) => {
            return Err(ApiError::field(
                "stream_options",
                format!("`stream_options` must be an object, got {}", type_name(v)),
            ))
        }
    };
    let max_tokens = match integer(&obj, "max_completion_tokens")? {
        Some(n) => Some((n, "max_completion_tokens")),
        None => integer(&obj, "max_tokens")?.map(|n| (n, "max_tokens")),
    };
    let max_tokens = match max_tokens {
        Some((n, name)) => {
            check(n >= 1, name, "must be at least 1")?;
            Some(usize::try_from(n).unwrap_or(usize::MAX))
        }
        None => None,
    };

    let mut params = SamplingParams::default();
    if let Some(t) = number(&obj, "temperature")? {
        check(t >= 0.0, "temperature", "must be >= 0")?;
        params.temperature = t;
    }
    if let Some(p) = number(&obj, "top_p")? {
        check(p > 0.0 && p <= 1.0, "top_p", "must be in (0, 1]")?;
        params.top_p = p;
    }
    if let Some(k) = integer(&obj, "top_k")? {
        // -1 and 0 both mean "disabled", as in vLLM and mlx-lm.
        check(k >= -1, "top_k", "must be >= -1")?;
        params.top_k = i32::try_from(k.max(0)).unwrap_or(i32::MAX);
    }
    if let Some(p) = number(&obj, "min_p")? {
        check((0.0..=1.0).contains(&p), "min_p", "must be in [0, 1]")?;
        params.min_p = p;
    }
    if let Some(p) = number(&obj, "repetition_penalty")? {
        check(p > 0.0, "repetition_penalty", "must be > 0")?;
        params.repetition_penalty = Some(p);
    }
    if let Some(p) = number(&obj, "presence_penalty")? {
        check(
            (-2.0..=2.0).contains(&p),
            "presence_penalty",
            "must be in [-2, 2]",
        )?;
        params.presence_penalty = Some(p);
    }
    if let Some(p) = number(&obj, "frequency_penalty")? {
        check(
            (-2.0..=2.0).contains(&p),
            "frequency_penalty",
            "must be in [-2, 2]",
        )?;
        params.frequency_penalty = Some(p);
    }
    // Negative seeds are accepted (some clients send them) and used as their bit pattern.
    params.seed = integer(&obj, "seed")?.map(|s| s as u64);

    let stop = match get(&obj, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::field("stop", "`stop` must be a string or a list of strings")
            })?,
        Some(v) => {
            return Err(ApiError::field(
                "stop",
                format!(
                    "`stop` must be a string or a list of strings, got {}",
                    type_name(v)
                ),
            ))
        }
    };
    let stop = stop.into_iter().filter(|s| !s.is_empty()).collect();

    Ok(ChatRequest {
        model,
        messages,
        stream,
        include_usage,
        max_tokens,
        params,
        stop,
    })
}

/// `messages`: a non-empty list of `{"role": string, "content": string | parts | null, ...}`.
/// Text parts are joined into one string (templates expect strings); other fields pass
/// through to the template untouched.
fn messages(obj: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
    let Some(Value::Array(list)) = get(obj, "messages") else {
        return Err(ApiError::field(
            "messages",
            "`messages` is required and must be a list of messages",
        ));
    };
    check(!list.is_empty(), "messages", "must not be empty")?;
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Value::Object(m) = m else {
            return Err(ApiError::field(
                &param,
                format!("`{param}` must be an object"),
            ));
        };
        if !matches!(m.get("role"), Some(Value::String(_))) {
            return Err(ApiError::field(
                &format!("{param}.role"),
                format!("`{param}.role` is required and must be a string"),
            ));
        }
        let mut m = m.clone();
        match m.get("content") {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match part.get("text").and_then(Value::as_str) {
                        Some(t) if part.get("type").and_then(Value::as_str) == Some("text") => {
                            text.push_str(t)
                        }
                        _ => {
                            return Err(ApiError::field(
                                &format!("{param}.content"),
                                format!("`{param}.content`: only text parts are supported"),
                            ))
                        }
                    }
                }
                m.insert("content".into(), Value::String(text));
            }
            Some(v) => {
                return Err(ApiError::field(
                    &format!("{param}.content"),
                    format!(
                        "`{param}.content` must be a string or a list of parts, got {}",
                        type_name(v)
                    ),
                ))
            }
        }
        out.push(Value::Object(m));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(body: &str) -> Option<String> {
        match parse_chat(body.as_bytes()) {
            Err(ApiError::BadRequest { param, .. }) => param,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_full_request() {
        let r = parse_chat(
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
                "stream":true,"stream_options":{"include_usage":true},"max_tokens":5,"max_completion_tokens":7,
                "temperature":0.5,"top_p":0.9,"top_k":-1,"min_p":0.1,"seed":-1,"stop":"x",
                "repetition_penalty":1.1,"presence_penalty":0.5,"frequency_penalty":0.5,"n":1}"#,
        )
        .unwrap();
        assert_eq!(r.messages[0]["content"], "ab");
        assert!(r.stream && r.include_usage);
        assert_eq!(r.max_tokens, Some(7));
        assert_eq!(r.params.top_k, 0);
        assert_eq!(r.params.seed, Some(u64::MAX));
        assert_eq!(r.stop, vec!["x".to_string()]);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(param_of("{"), None);
        assert_eq!(param_of("[]"), None);
        assert_eq!(param_of(r#"{"messages":[]}"#).as_deref(), Some("messages"));
        let m = r#""messages":[{"role":"user","content":"hi"}]"#;
        for (field, bad) in [
            ("temperature", r#""hot""#),
            ("max_tokens", "0"),
            ("n", "2"),
            ("stop", "[1]"),
            ("top_p", "0"),
            ("stream", "1"),
            ("model", "3"),
        ] {
            let body = format!("{{{m},\"{field}\":{bad}}}");
            assert_eq!(param_of(&body).as_deref(), Some(field), "{body}");
        }
        assert_eq!(
            param_of(r#"{"messages":[{"content":"x"}]}"#).as_deref(),
            Some("messages[0].role")
        );
    }
}
