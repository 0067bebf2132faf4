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
    /// The request set a sampling field itself (a forced tool call keeps it, else greedy).
    pub sampling_set: bool,
    pub stop: Vec<String>,
    /// OpenAI `tools` (function objects), validated.
    pub tools: Vec<Value>,
    pub tool_choice: ToolChoice,
    pub parallel_tool_calls: bool,
    /// Extra template variables (`enable_thinking`, ...).
    pub chat_template_kwargs: Map<String, Value>,
    /// `response_format`, validated to be `text`, `json_object` or `json_schema`.
    pub response_format: Option<Value>,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    #[default]
    Auto,
    None,
    Required,
    /// `{"type":"function","function":{"name":...}}`.
    Named(String),
}

impl ToolChoice {
    /// A call must come back.
    pub fn forced(&self) -> bool {
        matches!(self, ToolChoice::Required | ToolChoice::Named(_))
    }
}

/// A present, non-null field.
pub(crate) fn get<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

pub(crate) fn number(obj: &Map<String, Value>, name: &str) -> Result<Option<f32>, ApiError> {
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

pub(crate) fn integer(obj: &Map<String, Value>, name: &str) -> Result<Option<i64>, ApiError> {
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

pub(crate) fn boolean(obj: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
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

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn check(ok: bool, name: &str, message: &str) -> Result<(), ApiError> {
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(name, format!("`{name}` {message}")))
    }
}

/// The body as a JSON object (400 otherwise).
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("The request body is not valid JSON: {e}")))?;
    match value {
        Value::Object(obj) => Ok(obj),
        other => Err(ApiError::bad_request(format!(
            "The request body must be a JSON object, got {}",
            type_name(&other)
        ))),
    }
}

/// An optional string field.
pub(crate) fn string(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match get(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ApiError::field(
            name,
            format!("`{name}` must be a string, got {}", type_name(v)),
        )),
    }
}

/// `n`: only 1 is served.
pub(crate) fn check_n(obj: &Map<String, Value>) -> Result<(), ApiError> {
    if let Some(n) = integer(obj, "n")? {
        check(
            n == 1,
            "n",
            "other than 1 is not supported (one choice per request)",
        )?;
    }
    Ok(())
}

/// `stream` and `stream_options.include_usage`.
pub(crate) fn stream_fields(obj: &Map<String, Value>) -> Result<(bool, bool), ApiError> {
    let stream = boolean(obj, "stream")?.unwrap_or(false);
    let include_usage = match get(obj, "stream_options") {
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
    Ok((stream, include_usage))
}

/// The first present of `names` (e.g. `max_completion_tokens`, then `max_tokens`), >= 1.
pub(crate) fn max_tokens(
    obj: &Map<String, Value>,
    names: &[&str],
) -> Result<Option<usize>, ApiError> {
    for name in names {
        if let Some(n) = integer(obj, name)? {
            check(n >= 1, name, "must be at least 1")?;
            return Ok(Some(usize::try_from(n).unwrap_or(usize::MAX)));
        }
    }
    Ok(None)
}

/// The sampling fields shared by every route; the flag says whether any was set.
pub(crate) fn sampling(obj: &Map<String, Value>) -> Result<(SamplingParams, bool), ApiError> {
    let mut params = SamplingParams::default();
    let mut set = false;
    if let Some(t) = number(obj, "temperature")? {
        check(t >= 0.0, "temperature", "must be >= 0")?;
        params.temperature = t;
        set = true;
    }
    if let Some(p) = number(obj, "top_p")? {
        check(p > 0.0 && p <= 1.0, "top_p", "must be in (0, 1]")?;
        params.top_p = p;
        set = true;
    }
    if let Some(k) = integer(obj, "top_k")? {
        // -1 and 0 both mean "disabled", as in vLLM and mlx-lm.
        check(k >= -1, "top_k", "must be >= -1")?;
        params.top_k = i32::try_from(k.max(0)).unwrap_or(i32::MAX);
        set = true;
    }
    if let Some(p) = number(obj, "min_p")? {
        check((0.0..=1.0).contains(&p), "min_p", "must be in [0, 1]")?;
        params.min_p = p;
        set = true;
    }
    if let Some(p) = number(obj, "repetition_penalty")? {
        check(p > 0.0, "repetition_penalty", "must be > 0")?;
        params.repetition_penalty = Some(p);
    }
    if let Some(p) = number(obj, "presence_penalty")? {
        check(
            (-2.0..=2.0).contains(&p),
            "presence_penalty",
            "must be in [-2, 2]",
        )?;
        params.presence_penalty = Some(p);
    }
    if let Some(p) = number(obj, "frequency_penalty")? {
        check(
            (-2.0..=2.0).contains(&p),
            "frequency_penalty",
            "must be in [-2, 2]",
        )?;
        params.frequency_penalty = Some(p);
    }
    // Negative seeds are accepted (some clients send them) and used as their bit pattern.
    params.seed = integer(obj, "seed")?.map(|s| s as u64);
    params.logit_bias = logit_bias(obj)?;
    Ok((params, set))
}

/// `logit_bias`: `{"token id": bias in [-100, 100]}`.
fn logit_bias(obj: &Map<String, Value>) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(v) = get(obj, "logit_bias") else {
        return Ok(Vec::new());
    };
    let Value::Object(map) = v else {
        return Err(ApiError::field(
            "logit_bias",
            format!(
                "`logit_bias` must be an object mapping token ids to numbers, got {}",
                type_name(v)
            ),
        ));
    };
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        let id: u32 = k.trim().parse().map_err(|_| {
            ApiError::field(
                "logit_bias",
                format!("`logit_bias` key {k:?} is not a token id"),
            )
        })?;
        let bias = v
            .as_f64()
            .filter(|b| (-100.0..=100.0).contains(b))
            .ok_or_else(|| {
                ApiError::field(
                    "logit_bias",
                    format!("`logit_bias[{k:?}]` must be a number in [-100, 100]"),
                )
            })?;
        out.push((id, bias as f32));
    }
    Ok(out)
}

/// `logprobs` (a boolean on chat; an integer count on legacy completions) and
/// `top_logprobs` (0..=20) into the params.
pub(crate) fn chat_logprobs(
    obj: &Map<String, Value>,
    params: &mut SamplingParams,
) -> Result<(), ApiError> {
    params.logprobs = boolean(obj, "logprobs")?.unwrap_or(false);
    if let Some(n) = integer(obj, "top_logprobs")? {
        check((0..=20).contains(&n), "top_logprobs", "must be in [0, 20]")?;
        check(
            params.logprobs || n == 0,
            "top_logprobs",
            "needs `logprobs: true`",
        )?;
        params.top_logprobs = n as usize;
    }
    Ok(())
}

/// A string or a list of strings (`stop`, `stop_sequences`); empty strings dropped.
pub(crate) fn stop_list(obj: &Map<String, Value>, name: &str) -> Result<Vec<String>, ApiError> {
    let list = match get(obj, name) {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::field(
                    name,
                    format!("`{name}` must be a string or a list of strings"),
                )
            })?,
        Some(v) => {
            return Err(ApiError::field(
                name,
                format!(
                    "`{name}` must be a string or a list of strings, got {}",
                    type_name(v)
                ),
            ))
        }
    };
    Ok(list.into_iter().filter(|s| !s.is_empty()).collect())
}

/// Parses and validates a chat-completion body.
pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let obj = parse_object(body)?;
    let model = string(&obj, "model")?;
    check_n(&obj)?;
    let messages = messages(&obj)?;
    let (stream, include_usage) = stream_fields(&obj)?;
    let max_tokens = max_tokens(&obj, &["max_completion_tokens", "max_tokens"])?;
    let (mut params, sampling_set) = sampling(&obj)?;
    chat_logprobs(&obj, &mut params)?;
    let stop = stop_list(&obj, "stop")?;
    let tools = tools(&obj)?;
    let tool_choice = tool_choice(&obj, &tools)?;
    let parallel_tool_calls = boolean(&obj, "parallel_tool_calls")?.unwrap_or(true);
    let chat_template_kwargs = match get(&obj, "chat_template_kwargs") {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(v) => {
            return Err(ApiError::field(
                "chat_template_kwargs",
                format!(
                    "`chat_template_kwargs` must be an object, got {}",
                    type_name(v)
                ),
            ))
        }
    };
    let response_format = response_format(&obj)?;
    Ok(ChatRequest {
        model,
        messages,
        stream,
        include_usage,
        max_tokens,
        params,
        sampling_set,
        stop,
        tools,
        tool_choice,
        parallel_tool_calls,
        chat_template_kwargs,
        response_format,
    })
}

/// The raw `tools` list (empty when absent).
pub(crate) fn tool_list(obj: &Map<String, Value>) -> Result<&[Value], ApiError> {
    match get(obj, "tools") {
        None => Ok(&[]),
        Some(Value::Array(list)) => Ok(list),
        Some(v) => Err(ApiError::field(
            "tools",
            format!("`tools` must be a list, got {}", type_name(v)),
        )),
    }
}

/// `tools`: a list of `{"type": "function", "function": {"name": ..., "parameters": ...}}`.
fn tools(obj: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
    let list = tool_list(obj)?;
    for (i, t) in list.iter().enumerate() {
        let param = format!("tools[{i}]");
        let kind = t.get("type").and_then(Value::as_str).unwrap_or("function");
        check(
            kind == "function",
            &param,
            &format!("has type {kind:?}; only \"function\" tools are supported"),
        )?;
        let name = t
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str);
        check(
            name.is_some_and(|n| !n.is_empty()),
            &format!("{param}.function.name"),
            "is required and must be a non-empty string",
        )?;
        if let Some(p) = t.get("function").and_then(|f| f.get("parameters")) {
            check(
                p.is_object() || p.is_null(),
                &format!("{param}.function.parameters"),
                "must be a JSON schema object",
            )?;
        }
    }
    Ok(list.to_vec())
}

/// `tool_choice`: `"auto" | "none" | "required" | {"type":"function","function":{"name"}}`.
fn tool_choice(obj: &Map<String, Value>, tools: &[Value]) -> Result<ToolChoice, ApiError> {
    let choice = match get(obj, "tool_choice") {
        None => return Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" | "any" => ToolChoice::Required,
            other => {
                return Err(ApiError::field(
                    "tool_choice",
                    format!("`tool_choice` {other:?} is not one of \"auto\", \"none\", \"required\" or a function object"),
                ))
            }
        },
        Some(v @ Value::Object(_)) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .or_else(|| v.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::field(
                        "tool_choice",
                        "`tool_choice` as an object must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                })?;
            ToolChoice::Named(name.to_string())
        }
        Some(v) => {
            return Err(ApiError::field(
                "tool_choice",
                format!("`tool_choice` must be a string or an object, got {}", type_name(v)),
            ))
        }
    };
    check_choice(&choice, tools)?;
    Ok(choice)
}

/// A forced `tool_choice` needs tools, and a named one must name an offered function (both
/// chat APIs; `tools` already in OpenAI function shape).
pub(crate) fn check_choice(choice: &ToolChoice, tools: &[Value]) -> Result<(), ApiError> {
    if choice.forced() {
        check(
            !tools.is_empty(),
            "tool_choice",
            "needs a non-empty `tools` list",
        )?;
    }
    if let ToolChoice::Named(name) = choice {
        let offered = tools.iter().any(|t| {
            t.get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                == Some(name)
        });
        check(
            offered,
            "tool_choice",
            &format!("names the function {name:?}, which is not in `tools`"),
        )?;
    }
    Ok(())
}

/// `response_format`: `{"type": "text" | "json_object" | "json_schema", ...}`.
pub(crate) fn response_format(obj: &Map<String, Value>) -> Result<Option<Value>, ApiError> {
    let Some(v) = get(obj, "response_format") else {
        return Ok(None);
    };
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(v.clone())),
        "json_schema" => {
            let schema = v.get("json_schema").and_then(|s| s.get("schema"));
            check(
                schema.is_some_and(Value::is_object),
                "response_format.json_schema.schema",
                "is required and must be a JSON schema object",
            )?;
            Ok(Some(v.clone()))
        }
        other => Err(ApiError::field(
            "response_format.type",
            format!("`response_format.type` {other:?} is not one of \"text\", \"json_object\", \"json_schema\""),
        )),
    }
}

/// The raw `messages` list: present, a list, not empty (both chat APIs).
pub(crate) fn message_list(obj: &Map<String, Value>) -> Result<&Vec<Value>, ApiError> {
    let Some(Value::Array(list)) = get(obj, "messages") else {
        return Err(ApiError::field(
            "messages",
            "`messages` is required and must be a list of messages",
        ));
    };
    check(!list.is_empty(), "messages", "must not be empty")?;
    Ok(list)
}

/// `messages`: a non-empty list of `{"role": string, "content": string | parts | null, ...}`.
/// Text parts are joined into one string (templates expect strings); other fields pass
/// through to the template untouched.
fn messages(obj: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
    let list = message_list(obj)?;
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
        // Most templates know only system/user/assistant/tool.
        if m.get("role").and_then(Value::as_str) == Some("developer") {
            m.insert("role".into(), Value::String("system".into()));
        }
        if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
            for call in calls.iter_mut() {
                arguments_as_object(call);
            }
        }
        out.push(Value::Object(m));
    }
    Ok(out)
}

/// Templates index into `function.arguments` (`tool_call.arguments | tojson`, `.items()`),
/// so a JSON-string `arguments` that holds an object is passed as that object, as
/// transformers users and the other servers do.
fn arguments_as_object(call: &mut Value) {
    let Some(f) = call.get_mut("function") else {
        return;
    };
    if let Some(Value::String(s)) = f.get("arguments") {
        if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(s) {
            f["arguments"] = v;
        }
    }
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
