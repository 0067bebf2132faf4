//! `POST /v1/chat/completions` (and `/chat/completions`): validate, render the chat template
//! (with tools), submit, then read the reply through a [`ReplyParser`] (reasoning, content,
//! tool calls) into one JSON body, or forward it as OpenAI SSE chunks.

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::generation::{submit_chat, Job};
use super::http::{
    next_item, read_body, sse_data, sse_keepalive, sse_response, unix_now, unless_client_leaves,
    JobItem, Outcome,
};
use super::reply::{Reply, ReplyEvent, ReplyParser};
use super::request::parse_chat;
use super::AppState;
use crate::runtime::{Finish, TokenLogprob};

/// `usage`, OpenAI-shaped.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptDetails,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct PromptDetails {
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptDetails { cached_tokens },
        }
    }
}

/// The served model's fingerprint: kooka's version.
pub fn system_fingerprint() -> String {
    format!("kooka-{}", env!("CARGO_PKG_VERSION"))
}

/// One `logprobs.content` entry.
pub fn logprob_json(lp: &TokenLogprob) -> Value {
    let top: Vec<Value> = lp
        .top
        .iter()
        .map(|(t, l)| json!({"token": t, "logprob": l, "bytes": t.as_bytes()}))
        .collect();
    json!({"token": lp.token, "logprob": lp.logprob, "bytes": lp.token.as_bytes(), "top_logprobs": top})
}

/// Checks the request's `model` against the served one.
pub fn check_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if !state.serves(m) => Err(ApiError::ModelNotFound(m.to_string())),
        _ => Ok(()),
    }
}

/// Identifies one response on the wire.
struct Meta {
    id: String,
    created: u64,
    model: String,
}

pub async fn chat_completions(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, &state).await?;
    let chat = parse_chat(&body)?;
    check_model(&state, chat.model.as_deref())?;
    let (job, parser) = submit_chat(&state, &chat)?;
    let meta = Meta {
        id: format!("chatcmpl-{:08x}{:08x}", job.id, unix_now() as u32),
        created: unix_now(),
        model: state.model_id.clone(),
    };
    let reader = ChatReader {
        parser,
        single_call: !chat.parallel_tool_calls,
        whole_calls: !state.incremental_tool_calls,
        pending: None,
    };
    if chat.stream {
        Ok(stream_chat(job, reader, meta, chat.include_usage))
    } else {
        unless_client_leaves(&req, collect_chat(job, reader, meta)).await
    }
}

/// The reply parser plus the `parallel_tool_calls: false` rule (only the first call kept),
/// and, unless `--incremental-tool-calls`, each call held until it ends and sent whole in one
/// delta (index, id, type, name and complete arguments), as kooka-server and mlx-lm do.
struct ChatReader {
    parser: ReplyParser,
    single_call: bool,
    whole_calls: bool,
    /// The call being held: `(index, id, name, arguments so far)`.
    pending: Option<(usize, String, String, String)>,
}

impl ChatReader {
    fn keep(&mut self, events: Vec<ReplyEvent>) -> Vec<ReplyEvent> {
        let single = self.single_call;
        let events = events.into_iter().filter(|e| !single || !e.is_later_call());
        if !self.whole_calls {
            return events.collect();
        }
        let mut out = Vec::new();
        for e in events {
            match e {
                ReplyEvent::ToolStart { index, id, name } => {
                    self.pending = Some((index, id, name, String::new()))
                }
                ReplyEvent::ToolArgs { delta, .. } => {
                    if let Some(p) = &mut self.pending {
                        p.3.push_str(&delta);
                    }
                }
                ReplyEvent::ToolEnd { .. } => out.extend(self.release()),
                other => out.push(other),
            }
        }
        out
    }

    /// The held call as one start and one argument delta.
    fn release(&mut self) -> Vec<ReplyEvent> {
        let Some((index, id, name, args)) = self.pending.take() else {
            return Vec::new();
        };
        vec![
            ReplyEvent::ToolStart { index, id, name },
            ReplyEvent::ToolArgs { index, delta: args },
            ReplyEvent::ToolEnd { index },
        ]
    }

    fn push(&mut self, text: &str) -> Vec<ReplyEvent> {
        let events = self.parser.push(text);
        self.keep(events)
    }

    fn finish(&mut self, outcome: &Outcome) -> Vec<ReplyEvent> {
        let events = self.parser.finish_as(outcome);
        let mut out = self.keep(events);
        out.extend(self.release());
        out
    }

    /// `tool_calls` whenever the reply made a call.
    fn finish_reason(&self, finish: Finish) -> &'static str {
        if self.parser.tool_calls() > 0 {
            "tool_calls"
        } else {
            finish.as_str()
        }
    }
}

/// An event the model thread sent as an error, as the API reports it.
async fn collect_chat(
    mut job: Job,
    mut reader: ChatReader,
    meta: Meta,
) -> Result<HttpResponse, ApiError> {
    let mut reply = Reply::default();
    let mut logprobs = Vec::new();
    let (finish, usage) = loop {
        match next_item(&mut job, false).await {
            JobItem::Text(t) => reply.extend(reader.push(&t)),
            JobItem::Logprobs(lp) => logprobs.push(logprob_json(&lp)),
            JobItem::Done(done) => {
                reply.extend(reader.finish(&done));
                break (done.finish, done.usage);
            }
            JobItem::Failed(e) => return Err(e),
            JobItem::Idle => {}
        }
    };
    let mut message = json!({"role": "assistant", "content": reply.content});
    if !reply.reasoning.is_empty() {
        message["reasoning_content"] = json!(reply.reasoning);
    }
    if !reply.tool_calls.is_empty() {
        let calls: Vec<Value> = reply
            .tool_calls
            .iter()
            .map(|(id, name, args)| {
                json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
            })
            .collect();
        message["tool_calls"] = json!(calls);
        if reply.content.trim().is_empty() {
            message["content"] = Value::Null;
        }
    }
    let logprobs = if logprobs.is_empty() {
        Value::Null
    } else {
        json!({ "content": logprobs })
    };
    Ok(HttpResponse::Ok().json(json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": system_fingerprint(),
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": reader.finish_reason(finish),
        }],
        "usage": usage,
    })))
}

/// Where a chat SSE stream is.
struct ChatStream {
    job: Job,
    reader: ChatReader,
    meta: Meta,
    include_usage: bool,
    started: bool,
    finished: bool,
    /// Logprobs of tokens whose text has not been sent yet.
    logprobs: Vec<Value>,
}

impl ChatStream {
    /// A `chat.completion.chunk` frame with these choices (and usage).
    fn frame(&self, choices: Value, usage: Option<Usage>) -> Bytes {
        let mut chunk = json!({
            "id": self.meta.id,
            "object": "chat.completion.chunk",
            "created": self.meta.created,
            "model": self.meta.model,
            "system_fingerprint": system_fingerprint(),
            "choices": choices,
        });
        if let Some(usage) = usage {
            chunk["usage"] = json!(usage);
        }
        sse_data(&chunk.to_string())
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, logprobs: Value) -> Bytes {
        let choice =
            json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish});
        self.frame(json!([choice]), None)
    }

    fn usage_chunk(&self, usage: Usage) -> Bytes {
        self.frame(json!([]), Some(usage))
    }

    /// The chunks for some reply events; pending logprobs ride on the first one.
    fn write(&mut self, events: Vec<ReplyEvent>, out: &mut Vec<u8>) {
        let mut events = events.into_iter().peekable();
        while let Some(e) = events.next() {
            let delta = match e {
                // A whole call: start and arguments in one delta.
                ReplyEvent::ToolStart { index, id, name }
                    if self.reader.whole_calls
                        && matches!(events.peek(), Some(ReplyEvent::ToolArgs { .. })) =>
                {
                    let Some(ReplyEvent::ToolArgs { delta: args, .. }) = events.next() else {
                        continue;
                    };
                    json!({"tool_calls": [{
                        "index": index, "id": id, "type": "function",
                        "function": {"name": name, "arguments": args},
                    }]})
                }
                ReplyEvent::Content(t) => json!({ "content": t }),
                ReplyEvent::Reasoning(t) => json!({ "reasoning_content": t }),
                ReplyEvent::ToolStart { index, id, name } => json!({"tool_calls": [{
                    "index": index, "id": id, "type": "function",
                    "function": {"name": name, "arguments": ""},
                }]}),
                ReplyEvent::ToolArgs { index, delta } => {
                    json!({"tool_calls": [{"index": index, "function": {"arguments": delta}}]})
                }
                ReplyEvent::ToolEnd { .. } => continue,
            };
            let logprobs = if self.logprobs.is_empty() {
                Value::Null
            } else {
                json!({ "content": std::mem::take(&mut self.logprobs) })
            };
            out.extend_from_slice(&self.chunk(delta, None, logprobs));
        }
    }

    /// The next bytes of the stream, or `None` once it has ended.
    async fn next(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        if !self.started {
            self.started = true;
            return Some(self.chunk(
                json!({"role": "assistant", "content": ""}),
                None,
                Value::Null,
            ));
        }
        loop {
            let mut out = Vec::new();
            match next_item(&mut self.job, true).await {
                JobItem::Idle => return Some(sse_keepalive()),
                JobItem::Text(text) => {
                    let events = self.reader.push(&text);
                    self.write(events, &mut out);
                }
                JobItem::Logprobs(lp) => self.logprobs.push(logprob_json(&lp)),
                JobItem::Done(done) => {
                    self.finished = true;
                    let events = self.reader.finish(&done);
                    self.write(events, &mut out);
                    let reason = self.reader.finish_reason(done.finish);
                    let logprobs = match std::mem::take(&mut self.logprobs) {
                        l if l.is_empty() => Value::Null,
                        l => json!({ "content": l }),
                    };
                    out.extend_from_slice(&self.chunk(json!({}), Some(reason), logprobs));
                    if self.include_usage {
                        out.extend_from_slice(&self.usage_chunk(done.usage));
                    }
                    out.extend_from_slice(b"data: [DONE]\n\n");
                }
                JobItem::Failed(e) => {
                    self.finished = true;
                    out = error_then_done(e).to_vec();
                }
            }
            if !out.is_empty() {
                return Some(Bytes::from(out));
            }
        }
    }
}

/// SSE: a role chunk, reply chunks, a finish chunk, a usage chunk if asked, `[DONE]`;
/// keepalive comments while the model is silent. Dropping the stream (the client went
/// away) drops the job's receiver, which cancels the sequence.
fn stream_chat(job: Job, reader: ChatReader, meta: Meta, include_usage: bool) -> HttpResponse {
    let stream = ChatStream {
        job,
        reader,
        meta,
        include_usage,
        started: false,
        finished: false,
        logprobs: Vec::new(),
    };
    sse_response(futures_util::stream::unfold(stream, |mut s| async move {
        let bytes = s.next().await?;
        Some((Ok(bytes), s))
    }))
}

/// An error as an SSE `data:` frame, then `[DONE]`.
pub fn error_then_done(err: ApiError) -> Bytes {
    let mut out = sse_data(&err.body().to_string()).to_vec();
    out.extend_from_slice(b"data: [DONE]\n\n");
    Bytes::from(out)
}
