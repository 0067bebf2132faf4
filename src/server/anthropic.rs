//! `POST /v1/messages`: Anthropic's Messages API (what Claude Code and the `anthropic` SDKs
//! speak). The body is translated into the OpenAI-shaped conversation the chat templates
//! expect (system prompt, text, `tool_use` -> `tool_calls`, `tool_result` -> `tool`
//! messages), generated like a chat completion, and the reply written back as content blocks
//! (`thinking`, `text`, `tool_use`), or as Anthropic's SSE event sequence. `claude-*` model
//! names map to the served model.

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::generation::{submit_chat, Job};
use super::http::{next_item, read_body, sse_event, sse_response, JobItem};
use super::openai::{check_model, Usage};
use super::reply::{Reply, ReplyEvent, ReplyParser};
use super::request::{
    check, check_choice, get, integer, message_list, number, parse_object, stop_list, string,
    tool_list, type_name, ChatRequest, ToolChoice,
};
use super::AppState;
use crate::engine::sampling::SamplingParams;
use crate::runtime::Finish;

/// A validated Messages request, in OpenAI chat shape.
fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let obj = parse_object(body)?;
    let model = string(&obj, "model")?;
    let max_tokens = integer(&obj, "max_tokens")?
        .ok_or_else(|| ApiError::field("max_tokens", "`max_tokens` is required"))?;
    check(max_tokens >= 1, "max_tokens", "must be at least 1")?;
    let stream = super::request::boolean(&obj, "stream")?.unwrap_or(false);
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

/// Anthropic model names (`claude-*`) stand for the served model.
fn check_anthropic_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if m.starts_with("claude") => Ok(()),
        other => check_model(state, other),
    }
}

/// The route: errors in Anthropic's shape (`{"type":"error","error":{"type","message"}}`),
/// which the `anthropic` SDKs read.
pub async fn messages(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    match handle(state, req, payload).await {
        Ok(response) => response,
        Err(e) => {
            use actix_web::ResponseError;
            let kind = match e.status_code().as_u16() {
                400 | 405 => "invalid_request_error",
                401 => "authentication_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                503 => "overloaded_error",
                _ => "api_error",
            };
            let mut response = HttpResponse::build(e.status_code());
            if let Some(retry) = e.retry_after() {
                response.insert_header(("Retry-After", retry.to_string()));
            }
            response.json(json!({
                "type": "error",
                "error": {"type": kind, "message": e.to_string()},
            }))
        }
    }
}

async fn handle(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    let r = parse(&body)?;
    check_anthropic_model(&state, r.model.as_deref())?;
    let (job, parser) = submit_chat(&state, &r)?;
    let meta = Meta {
        id: format!("msg_{:08x}{:016x}", job.id, super::http::unix_now()),
        model: r.model.clone().unwrap_or_else(|| state.model_id.clone()),
    };
    if r.stream {
        Ok(stream(job, parser, meta))
    } else {
        collect(job, parser, meta).await
    }
}

struct Meta {
    id: String,
    /// Echoed as the client named it (Claude Code checks it).
    model: String,
}

/// `stop_reason`.
fn stop_reason(finish: Finish, tool_calls: usize, stop_sequence: bool) -> &'static str {
    match finish {
        _ if tool_calls > 0 => "tool_use",
        Finish::Stop if stop_sequence => "stop_sequence",
        Finish::Length => "max_tokens",
        Finish::Stop => "end_turn",
    }
}

fn tool_input(args: &str) -> Value {
    serde_json::from_str(args).unwrap_or_else(|_| json!({}))
}

async fn collect(
    mut job: Job,
    mut parser: ReplyParser,
    meta: Meta,
) -> Result<HttpResponse, ApiError> {
    let mut reply = Reply::default();
    let (finish, usage, stop_sequence) = loop {
        match next_item(&mut job, false).await {
            JobItem::Text(t) => reply.extend(parser.push(&t)),
            JobItem::Logprobs(_) | JobItem::Idle => {}
            JobItem::Done(done) => {
                reply.extend(parser.finish());
                break (done.finish, usage(&done.usage), done.stop_sequence);
            }
            JobItem::Failed(e) => return Err(e),
        }
    };
    let mut content = Vec::new();
    if !reply.reasoning.is_empty() {
        content.push(json!({"type": "thinking", "thinking": reply.reasoning, "signature": ""}));
    }
    if !reply.content.is_empty() || reply.tool_calls.is_empty() {
        content.push(json!({"type": "text", "text": reply.content}));
    }
    for (id, name, args) in &reply.tool_calls {
        content
            .push(json!({"type": "tool_use", "id": id, "name": name, "input": tool_input(args)}));
    }
    Ok(HttpResponse::Ok().json(json!({
        "id": meta.id,
        "type": "message",
        "role": "assistant",
        "model": meta.model,
        "content": content,
        "stop_reason": stop_reason(finish, reply.tool_calls.len(), stop_sequence.is_some()),
        "stop_sequence": stop_sequence,
        "usage": usage,
    })))
}

/// Anthropic's usage: `input_tokens` counts what was not read from the cache.
fn usage(u: &Usage) -> Value {
    let cached = u.prompt_tokens_details.cached_tokens;
    json!({
        "input_tokens": u.prompt_tokens.saturating_sub(cached),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": u.completion_tokens,
    })
}

/// Which content block is open in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Thinking,
    Text,
    Tool,
}

struct Stream {
    job: Job,
    parser: ReplyParser,
    meta: Meta,
    started: bool,
    finished: bool,
    open: Open,
    /// Index of the next content block.
    next_block: usize,
    output_tokens: usize,
}

impl Stream {
    fn close(&mut self, out: &mut Vec<u8>) {
        if self.open != Open::None {
            let index = self.next_block - 1;
            out.extend_from_slice(&sse_event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}).to_string(),
            ));
            self.open = Open::None;
        }
    }

    fn open(&mut self, kind: Open, block: Value, out: &mut Vec<u8>) {
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        self.open = kind;
        out.extend_from_slice(&sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block})
                .to_string(),
        ));
    }

    fn delta(&self, delta: Value, out: &mut Vec<u8>) {
        let index = self.next_block - 1;
        out.extend_from_slice(&sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}).to_string(),
        ));
    }

    fn write(&mut self, events: Vec<ReplyEvent>, out: &mut Vec<u8>) {
        for e in events {
            match e {
                ReplyEvent::Reasoning(t) => {
                    if self.open != Open::Thinking {
                        let block = json!({"type": "thinking", "thinking": "", "signature": ""});
                        self.open(Open::Thinking, block, out);
                    }
                    self.delta(json!({"type": "thinking_delta", "thinking": t}), out);
                }
                ReplyEvent::Content(t) => {
                    if self.open != Open::Text {
                        self.open(Open::Text, json!({"type": "text", "text": ""}), out);
                    }
                    self.delta(json!({"type": "text_delta", "text": t}), out);
                }
                ReplyEvent::ToolStart { id, name, .. } => {
                    let block = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
                    self.open(Open::Tool, block, out);
                }
                ReplyEvent::ToolArgs { delta, .. } => {
                    self.delta(
                        json!({"type": "input_json_delta", "partial_json": delta}),
                        out,
                    );
                }
                ReplyEvent::ToolEnd { .. } => self.close(out),
            }
        }
    }

    fn start(&self) -> Bytes {
        sse_event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": self.meta.id, "type": "message", "role": "assistant",
                "model": self.meta.model, "content": [], "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": self.job.prompt_tokens, "output_tokens": 0},
            }})
            .to_string(),
        )
    }

    async fn next(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        if !self.started {
            self.started = true;
            return Some(self.start());
        }
        loop {
            let mut out = Vec::new();
            match next_item(&mut self.job, true).await {
                JobItem::Idle => return Some(sse_event("ping", "{\"type\": \"ping\"}")),
                JobItem::Text(t) => {
                    let events = self.parser.push(&t);
                    self.write(events, &mut out);
                }
                JobItem::Logprobs(_) => {}
                JobItem::Done(done) => {
                    self.finished = true;
                    self.output_tokens = done.usage.completion_tokens;
                    let events = self.parser.finish();
                    self.write(events, &mut out);
                    if self.next_block == 0 {
                        // Every message has at least one content block.
                        self.open(Open::Text, json!({"type": "text", "text": ""}), &mut out);
                    }
                    self.close(&mut out);
                    let stop = done.stop_sequence;
                    let reason = stop_reason(done.finish, self.parser.tool_calls(), stop.is_some());
                    out.extend_from_slice(&sse_event(
                        "message_delta",
                        &json!({"type": "message_delta",
                            "delta": {"stop_reason": reason, "stop_sequence": stop},
                            "usage": usage(&done.usage)})
                        .to_string(),
                    ));
                    out.extend_from_slice(&sse_event(
                        "message_stop",
                        "{\"type\": \"message_stop\"}",
                    ));
                }
                JobItem::Failed(e) => {
                    self.finished = true;
                    out = error_event(&e).to_vec();
                }
            }
            if !out.is_empty() {
                return Some(Bytes::from(out));
            }
        }
    }
}

/// Anthropic's in-stream `error` event.
fn error_event(e: &ApiError) -> Bytes {
    let kind = match e {
        ApiError::Unavailable(_) => "overloaded_error",
        ApiError::Overloaded { .. } => "rate_limit_error",
        _ => "api_error",
    };
    sse_event(
        "error",
        &json!({"type": "error", "error": {"type": kind, "message": e.to_string()}}).to_string(),
    )
}

fn stream(job: Job, parser: ReplyParser, meta: Meta) -> HttpResponse {
    let s = Stream {
        job,
        parser,
        meta,
        started: false,
        finished: false,
        open: Open::None,
        next_block: 0,
        output_tokens: 0,
    };
    sse_response(futures_util::stream::unfold(s, |mut s| async move {
        let bytes = s.next().await?;
        Some((Ok(bytes), s))
    }))
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
