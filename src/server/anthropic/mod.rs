//! `POST /v1/messages`: Anthropic's Messages API (what Claude Code and the `anthropic` SDKs
//! speak). The body is translated into the OpenAI-shaped conversation the chat templates
//! expect (system prompt, text, `tool_use` -> `tool_calls`, `tool_result` -> `tool`
//! messages), generated like a chat completion, and the reply written back as content blocks
//! (`thinking`, `text`, `tool_use`), or as Anthropic's SSE event sequence. `claude-*` model
//! names map to the served model.

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::error::ApiError;
use super::generation::{chat_prompt, submit_chat, Job};
use super::http::{next_item, read_body, sse_event, sse_response, unless_client_leaves, JobItem};
use super::openai::{check_model, Usage};
use super::reply::{Reply, ReplyEvent, ReplyParser};
mod parse;

use super::AppState;
use crate::runtime::Finish;
use parse::{parse, Purpose};

/// Anthropic model names (`claude-*`) stand for the served model.
fn check_anthropic_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if m.starts_with("claude") => Ok(()),
        other => check_model(state, other),
    }
}

/// The route: errors in Anthropic's shape (see [`ApiError::anthropic_response`]), which the
/// `anthropic` SDKs and Claude Code read.
pub async fn messages(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    match handle(state, req, payload).await {
        Ok(response) => response,
        Err(e) => e.anthropic_response(),
    }
}

/// `POST /v1/messages/count_tokens`: the prompt's exact length, rendered through the same
/// template path as a generation (`{"input_tokens": N}`).
pub async fn count_tokens(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let count = async {
        let body = read_body(&req, payload, &state).await?;
        let r = parse(&body, Purpose::Count)?;
        check_anthropic_model(&state, r.model.as_deref())?;
        let prompt = chat_prompt(
            &state,
            &r.messages,
            &r.tools,
            &r.tool_choice,
            &r.chat_template_kwargs,
            r.continue_final,
        )?;
        Ok::<_, ApiError>(prompt.ids.len())
    };
    match count.await {
        Ok(n) => HttpResponse::Ok().json(json!({ "input_tokens": n })),
        Err(e) => e.anthropic_response(),
    }
}

async fn handle(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, &state).await?;
    let r = parse(&body, Purpose::Generate)?;
    check_anthropic_model(&state, r.model.as_deref())?;
    let (job, parser) = submit_chat(&state, &r)?;
    let meta = Meta {
        id: format!("msg_{:08x}{:016x}", job.id, super::http::unix_now()),
        model: r.model.clone().unwrap_or_else(|| state.model_id.clone()),
        single_call: !r.parallel_tool_calls,
    };
    if r.stream {
        Ok(stream(job, parser, meta))
    } else {
        unless_client_leaves(&req, collect(job, parser, meta)).await
    }
}

struct Meta {
    id: String,
    /// Echoed as the client named it (Claude Code checks it).
    model: String,
    /// `tool_choice.disable_parallel_tool_use`: only the first tool call is kept.
    single_call: bool,
}

impl Meta {
    /// `events` without what this reply drops (tool calls after the first, when asked).
    fn keep(&self, events: Vec<ReplyEvent>) -> Vec<ReplyEvent> {
        match self.single_call {
            true => events.into_iter().filter(|e| !e.is_later_call()).collect(),
            false => events,
        }
    }
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
            JobItem::Text(t) => reply.extend(meta.keep(parser.push(&t))),
            JobItem::Logprobs(_) | JobItem::Idle => {}
            JobItem::Done(done) => {
                reply.extend(meta.keep(parser.finish_as(&done)));
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
                "usage": {"input_tokens": self.job.prompt_tokens, "output_tokens": 0,
                    "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
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
                    let events = self.meta.keep(self.parser.push(&t));
                    self.write(events, &mut out);
                }
                JobItem::Logprobs(_) => {}
                JobItem::Done(done) => {
                    self.finished = true;
                    self.output_tokens = done.usage.completion_tokens;
                    let events = self.meta.keep(self.parser.finish_as(&done));
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
    sse_event("error", &e.anthropic_body().to_string())
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
