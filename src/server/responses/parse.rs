//! The Responses request body (`POST /v1/responses`), validated field by field and translated
//! into the OpenAI chat shape the chat templates expect: `instructions` and system/developer
//! items become system messages, `function_call` / `custom_tool_call` items the assistant's
//! `tool_calls`, their outputs `tool` messages, `reasoning` items the next assistant turn's
//! `reasoning_content`. Custom (freeform) tools are offered to the model as functions with
//! one string parameter, `input`.

use std::collections::HashSet;

use serde_json::{json, Map, Value};
use tracing::{debug, warn};

use crate::constrain::CUSTOM_GRAMMAR_KEY;
use crate::server::error::ApiError;
use crate::server::request::{
    apply_reasoning_effort, boolean, check, check_choice, get, max_tokens, parse_object, sampling,
    string, type_name, ChatRequest, ToolChoice,
};

/// A validated Responses request.
pub(super) struct ResponsesRequest {
    pub chat: ChatRequest,
    /// Names of the `custom` tools (their calls are `custom_tool_call` items).
    pub custom_tools: HashSet<String>,
    /// Echoed in the response object as the client sent them.
    pub echo: Map<String, Value>,
}

/// The fields a response object repeats from its request.
const ECHOED: [&str; 10] = [
    "instructions",
    "max_output_tokens",
    "metadata",
    "parallel_tool_calls",
    "reasoning",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
];

pub(super) fn parse(body: &[u8]) -> Result<ResponsesRequest, ApiError> {
    let obj = parse_object(body)?;
    if get(&obj, "previous_response_id").is_some() {
        return Err(ApiError::field(
            "previous_response_id",
            "kooka keeps no responses (it is stateless): send the whole conversation in `input`",
        ));
    }
    if get(&obj, "conversation").is_some() {
        return Err(ApiError::field(
            "conversation",
            "kooka keeps no conversations (it is stateless): send the whole conversation in `input`",
        ));
    }
    let model = string(&obj, "model")?;
    let stream = boolean(&obj, "stream")?.unwrap_or(false);
    let max_tokens = max_tokens(&obj, &["max_output_tokens"])?;
    let (params, sampling_set) = sampling(&obj)?;
    let mut messages = Vec::new();
    if let Some(text) = string(&obj, "instructions")?.filter(|s| !s.is_empty()) {
        messages.push(json!({"role": "system", "content": text}));
    }
    messages.extend(input(&obj)?);
    check(
        messages
            .iter()
            .any(|m| m.get("role").and_then(Value::as_str) != Some("system")),
        "input",
        "must hold at least one message",
    )?;
    let (tools, custom_tools) = tools(&obj)?;
    let tool_choice = tool_choice(&obj, &tools)?;
    let parallel_tool_calls = boolean(&obj, "parallel_tool_calls")?.unwrap_or(true);
    let response_format = text_format(&obj)?;
    let mut kwargs = Map::new();
    let effort = get(&obj, "reasoning")
        .and_then(|r| r.get("effort"))
        .and_then(Value::as_str);
    apply_reasoning_effort(effort, &mut kwargs);
    let echo = ECHOED
        .iter()
        .filter_map(|k| obj.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    Ok(ResponsesRequest {
        chat: ChatRequest {
            model,
            messages,
            stream,
            include_usage: true,
            max_tokens,
            params,
            sampling_set,
            stop: Vec::new(),
            tools,
            tool_choice,
            parallel_tool_calls,
            chat_template_kwargs: kwargs,
            response_format,
            continue_final: false,
        },
        custom_tools,
        echo,
    })
}

/// The text of a content list: `input_text` / `output_text` / `text` parts joined; other
/// parts (images, files) are not readable by a text model and stand as a short note.
fn content_text(content: &Value, param: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for part in parts {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
                match (kind, part.get("text").and_then(Value::as_str)) {
                    (
                        "input_text" | "output_text" | "text" | "summary_text" | "reasoning_text",
                        Some(t),
                    ) => out.push_str(t),
                    ("refusal", _) => {
                        out.push_str(part.get("refusal").and_then(Value::as_str).unwrap_or(""))
                    }
                    ("input_image" | "input_file" | "input_audio", _) => {
                        debug!(param, kind, "content part not readable by the model");
                        out.push_str(&format!("[{kind} omitted]"));
                    }
                    _ => {
                        return Err(ApiError::field(
                            param,
                            format!("`{param}`: content part type {kind:?} is not supported"),
                        ))
                    }
                }
            }
            Ok(out)
        }
        Value::Null => Ok(String::new()),
        v => Err(ApiError::field(
            param,
            format!(
                "`{param}` must be a string or a list of content parts, got {}",
                type_name(v)
            ),
        )),
    }
}

/// `input`: a string (one user message) or a list of items, as chat messages.
fn input(obj: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
    let items = match get(obj, "input") {
        Some(Value::String(s)) => return Ok(vec![json!({"role": "user", "content": s})]),
        Some(Value::Array(items)) => items,
        Some(v) => {
            return Err(ApiError::field(
                "input",
                format!(
                    "`input` must be a string or a list of items, got {}",
                    type_name(v)
                ),
            ))
        }
        None => return Err(ApiError::field("input", "`input` is required")),
    };
    let mut out: Vec<Value> = Vec::new();
    // Reasoning items wait for the assistant turn they belong to.
    let mut reasoning = String::new();
    for (i, item) in items.iter().enumerate() {
        let param = format!("input[{i}]");
        let Value::Object(item) = item else {
            return Err(ApiError::field(
                &param,
                format!("`{param}` must be an object"),
            ));
        };
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        match kind {
            "message" => {
                let role = item.get("role").and_then(Value::as_str).unwrap_or("");
                let role = match role {
                    "user" | "assistant" | "system" => role,
                    "developer" => "system",
                    other => {
                        return Err(ApiError::field(
                            &format!("{param}.role"),
                            format!("`{param}.role` {other:?} is not one of \"user\", \"assistant\", \"system\", \"developer\""),
                        ))
                    }
                };
                let text = content_text(
                    item.get("content").unwrap_or(&Value::Null),
                    &format!("{param}.content"),
                )?;
                let mut message = json!({"role": role, "content": text});
                if role == "assistant" && !reasoning.is_empty() {
                    message["reasoning_content"] = json!(std::mem::take(&mut reasoning));
                }
                out.push(message);
            }
            "function_call" | "custom_tool_call" => {
                let call_id = item
                    .get("call_id")
                    .or_else(|| item.get("id"))
                    .cloned()
                    .unwrap_or(Value::Null);
                let name = item.get("name").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::field(
                        &format!("{param}.name"),
                        format!("`{param}.name` is required"),
                    )
                })?;
                let arguments = if kind == "custom_tool_call" {
                    json!({"input": item.get("input").and_then(Value::as_str).unwrap_or("")})
                } else {
                    let raw = item
                        .get("arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}");
                    serde_json::from_str::<Value>(raw)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!(raw))
                };
                let call = json!({
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                });
                // Calls of one turn join the assistant message before them.
                match out.last_mut() {
                    Some(last) if last["role"] == "assistant" && reasoning.is_empty() => {
                        match last.get_mut("tool_calls") {
                            Some(Value::Array(calls)) => calls.push(call),
                            _ => last["tool_calls"] = json!([call]),
                        }
                    }
                    _ => {
                        let mut message =
                            json!({"role": "assistant", "content": "", "tool_calls": [call]});
                        if !reasoning.is_empty() {
                            message["reasoning_content"] = json!(std::mem::take(&mut reasoning));
                        }
                        out.push(message);
                    }
                }
            }
            "function_call_output" | "custom_tool_call_output" => {
                let output = content_text(
                    item.get("output").unwrap_or(&Value::Null),
                    &format!("{param}.output"),
                )?;
                out.push(json!({
                    "role": "tool",
                    "tool_call_id": item.get("call_id").cloned().unwrap_or(Value::Null),
                    "content": output,
                }));
            }
            "reasoning" => {
                for key in ["content", "summary"] {
                    if let Some(parts @ Value::Array(_)) = item.get(key) {
                        let text = content_text(parts, &format!("{param}.{key}"))?;
                        if !text.is_empty() {
                            reasoning.push_str(&text);
                            break;
                        }
                    }
                }
            }
            other => {
                // Hosted-tool items (web search, shell, ...) mean nothing to a local model.
                debug!(param, kind = other, "input item skipped");
            }
        }
    }
    Ok(out)
}

/// `tools` in chat shape, and the names of the custom ones. Function tools are flat
/// (`{type, name, description, parameters, strict}`); other hosted tool types are skipped.
fn tools(obj: &Map<String, Value>) -> Result<(Vec<Value>, HashSet<String>), ApiError> {
    let list = match get(obj, "tools") {
        None => return Ok((Vec::new(), HashSet::new())),
        Some(Value::Array(list)) => list,
        Some(v) => {
            return Err(ApiError::field(
                "tools",
                format!("`tools` must be a list, got {}", type_name(v)),
            ))
        }
    };
    let mut out = Vec::new();
    let mut custom = HashSet::new();
    for (i, t) in list.iter().enumerate() {
        let kind = t.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "function" && kind != "custom" {
            warn!(
                tool = kind,
                "tools[{i}]: only function and custom tools are offered to the model; skipped"
            );
            continue;
        }
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty());
        let Some(name) = name else {
            return Err(ApiError::field(
                &format!("tools[{i}].name"),
                format!("`tools[{i}].name` is required and must be a non-empty string"),
            ));
        };
        let mut description = t
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut grammar = None;
        let parameters = if kind == "custom" {
            custom.insert(name.to_string());
            if let Some(def) = t
                .get("format")
                .filter(|f| f.get("type").and_then(Value::as_str) == Some("grammar"))
                .and_then(|f| f.get("definition"))
                .and_then(Value::as_str)
            {
                description.push_str("\n\nThe input follows this grammar:\n");
                description.push_str(def);
                grammar = match t["format"]["syntax"].as_str() {
                    Some("regex") => Some(format!("start: /{}/", def.replace('/', "\\/"))),
                    _ => Some(def.to_string()),
                };
            }
            json!({
                "type": "object",
                "properties": {"input": {"type": "string", "description": "The tool's input, as free text"}},
                "required": ["input"],
            })
        } else {
            let p = t
                .get("parameters")
                .cloned()
                .unwrap_or(json!({"type": "object"}));
            check(
                p.is_object() || p.is_null(),
                &format!("tools[{i}].parameters"),
                "must be a JSON schema object",
            )?;
            if p.is_null() {
                json!({"type": "object"})
            } else {
                p
            }
        };
        let mut function = json!({"name": name, "parameters": parameters});
        if !description.is_empty() {
            function["description"] = json!(description);
        }
        if let Some(strict) = t.get("strict").and_then(Value::as_bool) {
            function["strict"] = json!(strict);
        }
        if let Some(g) = grammar {
            function[CUSTOM_GRAMMAR_KEY] = json!(g);
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok((out, custom))
}

/// `tool_choice`: `"auto" | "none" | "required"`, `{"type": "function" | "custom", "name"}`,
/// or `{"type": "allowed_tools", "mode"}` (its mode; the list is not enforced).
fn tool_choice(obj: &Map<String, Value>, tools: &[Value]) -> Result<ToolChoice, ApiError> {
    let choice = match get(obj, "tool_choice") {
        None => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::field(
                    "tool_choice",
                    format!("`tool_choice` {other:?} is not one of \"auto\", \"none\", \"required\" or a tool object"),
                ))
            }
        },
        Some(v @ Value::Object(_)) => match v.get("type").and_then(Value::as_str) {
            Some("function" | "custom") => match v.get("name").and_then(Value::as_str) {
                Some(n) => ToolChoice::Named(n.to_string()),
                None => return Err(ApiError::field("tool_choice.name", "`tool_choice.name` is required")),
            },
            Some("allowed_tools") => match v.get("mode").and_then(Value::as_str) {
                Some("required") => ToolChoice::Required,
                _ => ToolChoice::Auto,
            },
            _ => ToolChoice::Auto,
        },
        Some(v) => {
            return Err(ApiError::field(
                "tool_choice",
                format!("`tool_choice` must be a string or an object, got {}", type_name(v)),
            ))
        }
    };
    if tools.is_empty() && !choice.forced() {
        return Ok(ToolChoice::Auto);
    }
    check_choice(&choice, tools)?;
    Ok(choice)
}

/// `text.format` as a chat `response_format` (`json_schema` is flat here: `{type, name,
/// schema, strict}`).
fn text_format(obj: &Map<String, Value>) -> Result<Option<Value>, ApiError> {
    let Some(format) = get(obj, "text").and_then(|t| t.get("format")) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let schema = format.get("schema");
            check(
                schema.is_some_and(Value::is_object),
                "text.format.schema",
                "is required and must be a JSON schema object",
            )?;
            Ok(Some(json!({"type": "json_schema", "json_schema": {
                "name": format.get("name").cloned().unwrap_or(json!("response")),
                "schema": schema,
                "strict": format.get("strict").and_then(Value::as_bool).unwrap_or(false),
            }})))
        }
        Some(other) => Err(ApiError::field(
            "text.format.type",
            format!("`text.format.type` {other:?} is not one of \"text\", \"json_object\", \"json_schema\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_become_chat_messages() {
        let r = parse(
            br#"{"model":"m","instructions":"Be brief.","input":[
              {"type":"message","role":"developer","content":[{"type":"input_text","text":"env"}]},
              {"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]},
              {"type":"reasoning","id":"rs_1","summary":[{"type":"summary_text","text":"think"}]},
              {"type":"function_call","call_id":"c1","name":"shell","arguments":"{\"cmd\":\"ls\"}"},
              {"type":"custom_tool_call","call_id":"c2","name":"apply_patch","input":"*** Begin Patch"},
              {"type":"function_call_output","call_id":"c1","output":"a.rs"},
              {"type":"custom_tool_call_output","call_id":"c2","output":"done"},
              {"type":"web_search_call","id":"ws"}],
              "tools":[{"type":"function","name":"shell","parameters":{"type":"object"}},
                {"type":"custom","name":"apply_patch","format":{"type":"grammar","syntax":"lark","definition":"start: x"}},
                {"type":"web_search"}],
              "store":false,"stream":true,"max_output_tokens":9}"#,
        )
        .unwrap();
        let m = &r.chat.messages;
        assert_eq!(m[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(m[1], json!({"role": "system", "content": "env"}));
        assert_eq!(m[2]["role"], "user");
        assert_eq!(m[3]["reasoning_content"], "think");
        assert_eq!(m[3]["tool_calls"][0]["function"]["arguments"]["cmd"], "ls");
        assert_eq!(
            m[3]["tool_calls"][1]["function"]["arguments"]["input"],
            "*** Begin Patch"
        );
        assert_eq!(m[4]["role"], "tool");
        assert_eq!(m[5]["tool_call_id"], "c2");
        assert_eq!(m.len(), 6);
        assert_eq!(r.chat.tools.len(), 2);
        assert!(r.custom_tools.contains("apply_patch"));
        assert_eq!(r.chat.max_tokens, Some(9));
        assert!(r.chat.stream);
    }

    #[test]
    fn stateless_fields_are_refused_by_name() {
        let err = parse(br#"{"input":"hi","previous_response_id":"resp_1"}"#);
        assert!(
            matches!(err, Err(ApiError::BadRequest { param: Some(p), .. }) if p == "previous_response_id")
        );
        assert!(parse(br#"{"input":3}"#).is_err());
        assert!(parse(br#"{"input":"hi","text":{"format":{"type":"json_schema"}}}"#).is_err());
    }

    /// Codex 0.169.0's own requests (tests/fixtures/clients, texts cut) parse.
    #[test]
    fn codex_fixtures_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clients/");
        for file in [
            "codex_responses.json",
            "codex_responses_apply_patch.json",
            "codex_responses_min.json",
        ] {
            let body = std::fs::read(format!("{dir}{file}")).unwrap();
            let r = parse(&body).unwrap_or_else(|e| panic!("{file}: {e}"));
            // Its instructions come as a developer message.
            assert_eq!(r.chat.messages[0]["role"], "system", "{file}");
            assert!(r.chat.stream);
            // Namespace and web_search tools are skipped; apply_patch is custom.
            let names: Vec<&str> = r
                .chat
                .tools
                .iter()
                .filter_map(|t| t["function"]["name"].as_str())
                .collect();
            assert!(!names.contains(&"multi_agent_v1"), "{file}: {names:?}");
            assert_eq!(
                r.custom_tools.contains("apply_patch"),
                file != "codex_responses.json",
                "{file}"
            );
        }
    }
}
