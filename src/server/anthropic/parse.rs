//! The Messages request body, validated field by field and translated into the
//! OpenAI-shaped [`ChatRequest`] the chat templates expect.

use serde_json::{json, Map, Value};

use crate::engine::sampling::SamplingParams;
use crate::server::error::ApiError;
use crate::server::request::{
    check, check_choice, get, integer, message_list, number, parse_object, stop_list, string,
    tool_list, type_name, ChatRequest, ToolChoice,
};

/// A validated Messages request, in OpenAI chat shape.
pub(super) fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let obj = parse_object(body)?;
    let model = string(&obj, "model")?;
    let max_tokens = integer(&obj, "max_tokens")?
        .ok_or_else(|| ApiError::field("max_tokens", "`max_tokens` is required"))?;
    check(max_tokens >= 1, "max_tokens", "must be at least 1")?;
    let stream = crate::server::request::boolean(&obj, "stream")?.unwrap_or(false);
    let mut params = SamplingParams::default();
    let mut sampling_set = false;
    if let Some(t) = number(&obj, "temperature")? {
        check((0.0..=2.0).contains(&t), "temperature", "must be in [0, 2]")?;
        params.temperature = t;
        sampling_set = true;
    }
    if let Some(p) = number(&obj, "top_p")? {
        check(p > 0.0 && p <= 1.0, "top_p", "must be in (0, 1]")?;
        params.top_p = p;
        sampling_set = true;
    }
    if let Some(k) = integer(&obj, "top_k")? {
        check(k >= 0, "top_k", "must be >= 0")?;
        params.top_k = i32::try_from(k).unwrap_or(i32::MAX);
        sampling_set = true;
    }
    let stop = stop_list(&obj, "stop_sequences")?;
    let mut messages = Vec::new();
    if let Some(system) = system_text(&obj)?.filter(|s| !s.is_empty()) {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.extend(conversation(&obj)?);
    let tools = tools(&obj)?;
    let tool_choice = tool_choice(&obj, &tools)?;
    // Extended thinking asks templates that support it to think.
    let mut kwargs = Map::new();
    if get(&obj, "thinking")
        .and_then(|t| t.get("type"))
        .and_then(Value::as_str)
        == Some("enabled")
    {
        kwargs.insert("enable_thinking".into(), Value::Bool(true));
    }
    Ok(ChatRequest {
        model,
        messages,
        stream,
        include_usage: false,
        max_tokens: Some(usize::try_from(max_tokens).unwrap_or(usize::MAX)),
        params,
        sampling_set,
        stop,
        tools,
        tool_choice,
        parallel_tool_calls: true,
        chat_template_kwargs: kwargs,
        response_format: None,
    })
}

/// Claude Code starts `system` with a text block `x-anthropic-billing-header: ...` that changes
/// on every request; rendered, it would make every prompt differ from its first tokens on and
/// defeat the prefix cache. It means nothing to a local model, so it is dropped.
const BILLING_HEADER: &str = "x-anthropic-billing-header";

/// `system`: a string or a list of text blocks (the billing-header block dropped).
fn system_text(obj: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match get(obj, "system") {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(blocks)) => {
            let kept: Vec<Value> = blocks
                .iter()
                .filter(|b| {
                    !b.get("text")
                        .and_then(Value::as_str)
                        .is_some_and(|t| t.trim_start().starts_with(BILLING_HEADER))
                })
                .cloned()
                .collect();
            Ok(Some(text_of(&kept, "system")?))
        }
        Some(v) => Err(ApiError::field(
            "system",
            format!(
                "`system` must be a string or a list of text blocks, got {}",
                type_name(v)
            ),
        )),
    }
}

/// The text of `text` blocks joined (other block types are refused).
fn text_of(blocks: &[Value], param: &str) -> Result<String, ApiError> {
    let mut out = String::new();
    for b in blocks {
        match (
            b.get("type").and_then(Value::as_str),
            b.get("text").and_then(Value::as_str),
        ) {
            (Some("text"), Some(t)) => out.push_str(t),
            _ => {
                return Err(ApiError::field(
                    param,
                    format!("`{param}`: only text blocks are supported here"),
                ))
            }
        }
    }
    Ok(out)
}

/// Anthropic turns into OpenAI-shaped messages: a user turn's `tool_result` blocks become
/// `tool` messages, an assistant turn's `tool_use` blocks become `tool_calls`.
fn conversation(obj: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
    let list = message_list(obj)?;
    let mut out = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        check(
            role == "user" || role == "assistant",
            &format!("{param}.role"),
            "must be \"user\" or \"assistant\"",
        )?;
        let blocks = match m.get("content") {
            Some(Value::String(s)) => {
                out.push(json!({"role": role, "content": s}));
                continue;
            }
            Some(Value::Array(blocks)) => blocks,
            _ => {
                return Err(ApiError::field(
                    &format!("{param}.content"),
                    format!("`{param}.content` must be a string or a list of content blocks"),
                ))
            }
        };
        let mut text = String::new();
        let mut thinking = String::new();
        let mut calls = Vec::new();
        for (j, b) in blocks.iter().enumerate() {
            let bparam = format!("{param}.content[{j}]");
            match b.get("type").and_then(Value::as_str) {
                Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
                Some("thinking") => {
                    thinking.push_str(b.get("thinking").and_then(Value::as_str).unwrap_or(""))
                }
                Some("redacted_thinking") => {}
                Some("tool_use") if role == "assistant" => calls.push(json!({
                    "id": b.get("id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {
                        "name": b.get("name").cloned().unwrap_or(Value::Null),
                        "arguments": b.get("input").cloned().unwrap_or(json!({})),
                    },
                })),
                Some("tool_result") if role == "user" => {
                    let content = match b.get("content") {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Array(parts)) => text_of(parts, &bparam)?,
                        _ => String::new(),
                    };
                    out.push(json!({
                        "role": "tool",
                        "tool_call_id": b.get("tool_use_id").cloned().unwrap_or(Value::Null),
                        "content": content,
                    }));
                }
                other => {
                    return Err(ApiError::field(
                        &bparam,
                        format!(
                            "`{bparam}`: content block type {:?} is not supported",
                            other.unwrap_or("(none)")
                        ),
                    ))
                }
            }
        }
        if !text.is_empty() || !calls.is_empty() || !thinking.is_empty() {
            let mut msg = json!({"role": role, "content": text});
            if !thinking.is_empty() {
                msg["reasoning_content"] = json!(thinking);
            }
            if !calls.is_empty() {
                msg["tool_calls"] = json!(calls);
            }
            out.push(msg);
        }
    }
    Ok(out)
}

/// `tools`: `{name, description, input_schema}` into OpenAI function tools.
fn tools(obj: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
    tool_list(obj)?
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let name = t
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty());
            let Some(name) = name else {
                return Err(ApiError::field(
                    &format!("tools[{i}].name"),
                    format!("`tools[{i}].name` is required (server tools are not supported)"),
                ));
            };
            let mut f = json!({"name": name});
            if let Some(d) = t.get("description") {
                f["description"] = d.clone();
            }
            f["parameters"] = t
                .get("input_schema")
                .cloned()
                .unwrap_or(json!({"type": "object"}));
            Ok(json!({"type": "function", "function": f}))
        })
        .collect()
}

/// `tool_choice`: `{"type": "auto" | "any" | "none" | "tool", "name"?}`.
fn tool_choice(obj: &Map<String, Value>, tools: &[Value]) -> Result<ToolChoice, ApiError> {
    let Some(v) = get(obj, "tool_choice") else {
        return Ok(ToolChoice::Auto);
    };
    let choice = match v.get("type").and_then(Value::as_str) {
        Some("auto") => ToolChoice::Auto,
        Some("none") => ToolChoice::None,
        Some("any") => ToolChoice::Required,
        Some("tool") => match v.get("name").and_then(Value::as_str) {
            Some(n) => ToolChoice::Named(n.to_string()),
            None => {
                return Err(ApiError::field(
                    "tool_choice.name",
                    "`tool_choice.name` is required",
                ))
            }
        },
        _ => {
            return Err(ApiError::field(
                "tool_choice",
                "`tool_choice.type` must be one of \"auto\", \"any\", \"none\", \"tool\"",
            ))
        }
    };
    check_choice(&choice, tools)?;
    Ok(choice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_tool_turns_to_openai_shape() {
        let r = parse(
            br#"{"model":"claude-3-5-sonnet","max_tokens":8,"system":[{"type":"text","text":"x-anthropic-billing-header: cc_version=2.1.3; cch=abc;"},{"type":"text","text":"Be brief."}],
            "messages":[{"role":"user","content":"hi"},
              {"role":"assistant","content":[{"type":"text","text":"ok"},{"type":"tool_use","id":"t1","name":"echo","input":{"text":"x"}}]},
              {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"x"},{"type":"text","text":"go on"}]}],
            "tools":[{"name":"echo","input_schema":{"type":"object"}}],"tool_choice":{"type":"tool","name":"echo"}}"#,
        )
        .unwrap();
        assert_eq!(
            r.messages[0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            r.messages[2]["tool_calls"][0]["function"]["arguments"]["text"],
            "x"
        );
        assert_eq!(r.messages[3]["role"], "tool");
        assert_eq!(r.messages[4], json!({"role": "user", "content": "go on"}));
        assert_eq!(r.tool_choice, ToolChoice::Named("echo".into()));
        assert_eq!(r.tools[0]["function"]["name"], "echo");
    }

    #[test]
    fn max_tokens_is_required() {
        assert!(parse(br#"{"messages":[{"role":"user","content":"hi"}]}"#).is_err());
    }
}
