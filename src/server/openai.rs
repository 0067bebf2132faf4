//! OpenAI-compatible routes (`/health`, `/v1/models`, `/v1/chat/completions`) and their wire
//! types. Handlers validate, render the chat template and tokenize on the actix worker, then
//! hand plain data to the MLX thread and await that request's event channel: collected
//! into one JSON body, or forwarded as SSE chunks.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Map};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tracing::info;

use super::error::ApiError;
use super::model_thread::{Command, Event, Submit};
use super::request::{parse_chat, ChatRequest};
use super::AppState;

#[derive(Debug, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Serialize)]
struct Message {
    role: &'static str,
    content: String,
}

#[derive(Debug, Serialize)]
struct Choice {
    index: u32,
    message: Message,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Debug, Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<Choice>,
    usage: Usage,
}

#[derive(Debug, Default, Serialize)]
struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
}

#[derive(Debug, Serialize)]
struct ChunkChoice {
    index: u32,
    delta: Delta,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn models(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "object": "list",
        "data": [{
            "id": state.model_id,
            "object": "model",
            "created": state.created,
            "owned_by": "kooka",
        }],
    }))
}

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound(format!(
        "{} {}",
        req.method(),
        req.path()
    )))
}

/// Reads the body up to `limit` bytes; a declared or actual larger body is a 413.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("Reading the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

pub async fn chat_completions(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    let chat = parse_chat(&body)?;
    if let Some(model) = &chat.model {
        if !state.serves(model) {
            return Err(ApiError::ModelNotFound(model.clone()));
        }
    }
    let prompt_ids = prompt_ids(&state, &chat)?;
    let context_left = state
        .max_position_embeddings
        .map(|n| n.saturating_sub(prompt_ids.len()));
    if context_left == Some(0) {
        return Err(ApiError::BadRequest {
            message: format!(
                "The prompt is {} tokens long; this model's context is {} tokens",
                prompt_ids.len(),
                state.max_position_embeddings.unwrap_or(0)
            ),
            param: Some("messages".into()),
            code: Some("context_length_exceeded"),
        });
    }
    // Without max_tokens a completion may use the rest of the context (as vLLM does).
    let max_tokens = match (chat.max_tokens, context_left) {
        (Some(n), Some(left)) => n.min(left),
        (Some(n), None) => n,
        (None, Some(left)) => left,
        (None, None) => super::DEFAULT_MAX_TOKENS,
    };
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    let id = format!("chatcmpl-{n:08x}{:08x}", unix_now() as u32);
    info!(
        request = n,
        prompt_tokens = prompt_ids.len(),
        max_tokens,
        stream = chat.stream,
        "chat completion"
    );
    let (tx, rx) = unbounded_channel();
    state
        .commands
        .send(Command::Submit(Submit {
            id: n,
            prompt_ids,
            params: chat.params.clone(),
            max_tokens,
            stop: chat.stop.clone(),
            events: tx,
        }))
        .map_err(|_| ApiError::Unavailable("the model thread has stopped".into()))?;
    let created = unix_now();
    if chat.stream {
        Ok(stream_response(
            rx,
            id,
            created,
            state.model_id.clone(),
            chat.include_usage,
        ))
    } else {
        collect_response(rx, &id, created, &state.model_id).await
    }
}

/// The chat template, then the tokenizer (the rendered text already holds the special tokens).
fn prompt_ids(state: &AppState, chat: &ChatRequest) -> Result<Vec<u32>, ApiError> {
    let template = state.template.as_ref().ok_or_else(|| {
        ApiError::bad_request("This model has no chat template; chat completions need one")
    })?;
    let text = template
        .render(&chat.messages, None, true, &Map::new())
        .map_err(|e| ApiError::field("messages", e.to_string()))?;
    state
        .tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::Internal(format!("tokenizing the prompt: {e}")))
}

async fn collect_response(
    mut rx: UnboundedReceiver<Event>,
    id: &str,
    created: u64,
    model: &str,
) -> Result<HttpResponse, ApiError> {
    let mut content = String::new();
    loop {
        match rx.recv().await {
            Some(Event::Text(t)) => content.push_str(&t),
            Some(Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            }) => {
                let body = ChatCompletion {
                    id,
                    object: "chat.completion",
                    created,
                    model,
                    choices: vec![Choice {
                        index: 0,
                        message: Message {
                            role: "assistant",
                            content,
                        },
                        logprobs: None,
                        finish_reason: finish.as_str(),
                    }],
                    usage: Usage {
                        prompt_tokens,
                        completion_tokens,
                        total_tokens: prompt_tokens + completion_tokens,
                    },
                };
                return Ok(HttpResponse::Ok().json(body));
            }
            Some(Event::Error(e)) => return Err(ApiError::Internal(e)),
            None => return Err(ApiError::Unavailable("the model thread has stopped".into())),
        }
    }
}

/// Where an SSE stream is.
struct Sse {
    rx: UnboundedReceiver<Event>,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    started: bool,
    finished: bool,
}

impl Sse {
    fn chunk(&self, delta: Delta, finish: Option<&'static str>, usage: Option<Usage>) -> Bytes {
        let choices = if usage.is_some() {
            Vec::new()
        } else {
            vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason: finish,
            }]
        };
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage,
        };
        sse_data(&serde_json::to_string(&chunk).unwrap_or_default())
    }
}

fn sse_data(json: &str) -> Bytes {
    Bytes::from(format!("data: {json}\n\n"))
}

/// SSE: a role chunk, content chunks, a finish chunk, a usage chunk if asked, `[DONE]`.
/// Dropping this stream (the client went away) drops `rx`, which cancels the sequence.
fn stream_response(
    rx: UnboundedReceiver<Event>,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
) -> HttpResponse {
    let sse = Sse {
        rx,
        id,
        created,
        model,
        include_usage,
        started: false,
        finished: false,
    };
    let stream = futures_util::stream::unfold(sse, |mut s| async move {
        if s.finished {
            return None;
        }
        if !s.started {
            s.started = true;
            let role = Delta {
                role: Some("assistant"),
                content: Some(String::new()),
            };
            let bytes = s.chunk(role, None, None);
            return Some((Ok::<_, std::convert::Infallible>(bytes), s));
        }
        let bytes = match s.rx.recv().await {
            Some(Event::Text(text)) => s.chunk(
                Delta {
                    role: None,
                    content: Some(text),
                },
                None,
                None,
            ),
            Some(Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            }) => {
                s.finished = true;
                let mut out = s
                    .chunk(Delta::default(), Some(finish.as_str()), None)
                    .to_vec();
                if s.include_usage {
                    let usage = Usage {
                        prompt_tokens,
                        completion_tokens,
                        total_tokens: prompt_tokens + completion_tokens,
                    };
                    out.extend_from_slice(&s.chunk(Delta::default(), None, Some(usage)));
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                Bytes::from(out)
            }
            Some(Event::Error(e)) => {
                s.finished = true;
                error_then_done(ApiError::Internal(e))
            }
            None => {
                s.finished = true;
                error_then_done(ApiError::Unavailable("the model thread has stopped".into()))
            }
        };
        Some((Ok(bytes), s))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(stream)
}

fn error_then_done(err: ApiError) -> Bytes {
    let mut out = sse_data(&err.body().to_string()).to_vec();
    out.extend_from_slice(b"data: [DONE]\n\n");
    Bytes::from(out)
}
