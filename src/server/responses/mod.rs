//! `POST /v1/responses`: OpenAI's Responses API (what Codex CLI speaks), stateless. The body
//! is translated into a chat request (see [`parse`]), generated like a chat completion, and
//! the reply written as output items ([`output`]): one response object, or the Responses
//! event stream (`response.created`, `response.in_progress`, the items' events, then
//! `response.completed` / `response.incomplete` / `response.failed` carrying the whole
//! response), every event numbered by `sequence_number`.
//!
//! Nothing is stored: `store` is accepted and the response says `"store": false`;
//! `previous_response_id` and `conversation` are refused with a 400 naming them.

mod output;
mod parse;

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::generation::{submit_chat, Job};
use super::http::{
    next_item, read_body, sse_event, sse_keepalive, sse_response, unix_now, unless_client_leaves,
    JobItem,
};
use super::openai::{check_model, Usage};
use super::reply::ReplyParser;
use super::AppState;
use crate::runtime::Finish;
use output::{Output, StreamEvent};

pub async fn responses(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, &state).await?;
    let r = parse::parse(&body)?;
    check_model(&state, r.chat.model.as_deref())?;
    let (job, parser) = submit_chat(&state, &r.chat)?;
    let tag = format!("{:08x}{:08x}", job.id, unix_now() as u32);
    let head = Head {
        id: format!("resp_{tag}"),
        created_at: unix_now(),
        model: r
            .chat
            .model
            .clone()
            .unwrap_or_else(|| state.model_id.clone()),
        echo: r.echo,
    };
    let output = Output::new(tag, r.custom_tools);
    if r.chat.stream {
        Ok(stream(job, parser, output, head))
    } else {
        unless_client_leaves(&req, collect(job, parser, output, head)).await
    }
}

/// What every copy of the response object repeats.
struct Head {
    id: String,
    created_at: u64,
    model: String,
    echo: Map<String, Value>,
}

/// How a response ended.
enum Status {
    InProgress,
    Completed,
    /// Cut by `max_output_tokens`.
    Incomplete,
    Failed(ApiError),
}

impl Head {
    /// The response object with these items.
    fn response(&self, status: &Status, output: &[Value], usage: Option<&Usage>) -> Value {
        let mut r = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": match status {
                Status::InProgress => "in_progress",
                Status::Completed => "completed",
                Status::Incomplete => "incomplete",
                Status::Failed(_) => "failed",
            },
            "model": self.model,
            "output": output,
            "error": match status {
                Status::Failed(e) => json!({"code": error_code(e), "message": e.to_string()}),
                _ => Value::Null,
            },
            "incomplete_details": match status {
                Status::Incomplete => json!({"reason": "max_output_tokens"}),
                _ => Value::Null,
            },
            "instructions": null,
            "max_output_tokens": null,
            "metadata": {},
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null},
            "store": false,
            "temperature": null,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": null,
            "truncation": "disabled",
            "usage": usage.map(responses_usage),
        });
        for (k, v) in &self.echo {
            r[k] = v.clone();
        }
        if let Some(text) = output_text(output) {
            r["output_text"] = json!(text);
        }
        r
    }
}

/// The text of the reply's messages (the SDKs' `output_text` convenience).
fn output_text(output: &[Value]) -> Option<String> {
    let texts: Vec<&str> = output
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().into_iter().flatten())
        .filter_map(|p| p["text"].as_str())
        .collect();
    (!texts.is_empty()).then(|| texts.concat())
}

fn error_code(e: &ApiError) -> &'static str {
    match e {
        ApiError::Overloaded { .. } => "rate_limit_exceeded",
        ApiError::BadRequest { .. } => "invalid_prompt",
        _ => "server_error",
    }
}

/// The Responses API's `usage`.
fn responses_usage(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": u.prompt_tokens_details.cached_tokens,
            "cache_write_tokens": 0,
        },
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.total_tokens,
    })
}

fn status_of(finish: Finish, called: bool) -> Status {
    match finish {
        Finish::Length if !called => Status::Incomplete,
        _ => Status::Completed,
    }
}

async fn collect(
    mut job: Job,
    mut parser: ReplyParser,
    mut output: Output,
    head: Head,
) -> Result<HttpResponse, ApiError> {
    let mut ignored = Vec::new();
    let (finish, usage) = loop {
        match next_item(&mut job, false).await {
            JobItem::Text(t) => {
                for e in parser.push(&t) {
                    output.push(e, &mut ignored);
                }
            }
            JobItem::Logprobs(_) | JobItem::Idle => {}
            JobItem::Done(done) => {
                for e in parser.finish_as(&done) {
                    output.push(e, &mut ignored);
                }
                match status_of(done.finish, output.called) {
                    Status::Incomplete => output.finish_cut(&mut ignored),
                    _ => output.finish(&mut ignored),
                }
                break (done.finish, done.usage);
            }
            JobItem::Failed(e) => return Err(e),
        }
        ignored.clear();
    };
    let status = status_of(finish, output.called);
    Ok(HttpResponse::Ok().json(head.response(&status, output.items(), Some(&usage))))
}

struct Stream {
    job: Job,
    parser: ReplyParser,
    output: Output,
    head: Head,
    sequence: u64,
    started: bool,
    finished: bool,
}

impl Stream {
    /// Numbers and frames the events.
    fn write(&mut self, events: Vec<StreamEvent>, out: &mut Vec<u8>) {
        for (kind, mut fields) in events {
            fields["type"] = json!(kind);
            fields["sequence_number"] = json!(self.sequence);
            self.sequence += 1;
            out.extend_from_slice(&sse_event(kind, &fields.to_string()));
        }
    }

    fn end(&mut self, status: Status, usage: Option<&Usage>, out: &mut Vec<u8>) {
        let kind = match status {
            Status::Completed => "response.completed",
            Status::Incomplete => "response.incomplete",
            Status::Failed(_) => "response.failed",
            Status::InProgress => "response.in_progress",
        };
        let response = self.head.response(&status, self.output.items(), usage);
        self.write(vec![(kind, json!({ "response": response }))], out);
    }

    async fn next(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        let mut out = Vec::new();
        if !self.started {
            // Sent at once, queued or not, so the client sees the request was taken.
            self.started = true;
            let response = self.head.response(&Status::InProgress, &[], None);
            self.write(
                vec![
                    ("response.created", json!({ "response": response })),
                    ("response.in_progress", json!({ "response": response })),
                ],
                &mut out,
            );
            return Some(Bytes::from(out));
        }
        loop {
            let mut events = Vec::new();
            match next_item(&mut self.job, true).await {
                JobItem::Idle => return Some(sse_keepalive()),
                JobItem::Text(t) => {
                    for e in self.parser.push(&t) {
                        self.output.push(e, &mut events);
                    }
                    self.write(events, &mut out);
                }
                JobItem::Logprobs(_) => {}
                JobItem::Done(done) => {
                    self.finished = true;
                    for e in self.parser.finish_as(&done) {
                        self.output.push(e, &mut events);
                    }
                    let status = status_of(done.finish, self.output.called);
                    match status {
                        Status::Incomplete => self.output.finish_cut(&mut events),
                        _ => self.output.finish(&mut events),
                    }
                    self.write(events, &mut out);
                    self.end(status, Some(&done.usage), &mut out);
                }
                JobItem::Failed(e) => {
                    self.finished = true;
                    self.output.finish(&mut events);
                    self.write(events, &mut out);
                    self.end(Status::Failed(e), None, &mut out);
                }
            }
            if !out.is_empty() {
                return Some(Bytes::from(out));
            }
        }
    }
}

fn stream(job: Job, parser: ReplyParser, output: Output, head: Head) -> HttpResponse {
    let s = Stream {
        job,
        parser,
        output,
        head,
        sequence: 0,
        started: false,
        finished: false,
    };
    sse_response(futures_util::stream::unfold(s, |mut s| async move {
        let bytes = s.next().await?;
        Some((Ok(bytes), s))
    }))
}
