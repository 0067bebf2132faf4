//! `POST /v1/completions` (and `/completions`): the legacy text-completion API. The prompt is
//! raw text (or token ids) continued as is, no chat template and no tool parsing. Legacy
//! `logprobs` is an integer (how many alternatives) and comes back in the legacy shape.

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::generation::{encode_text, next_request, request_grammar, submit, Job, JobSpec};
use super::http::{
    next_item, read_body, sse_data, sse_keepalive, sse_response, unix_now, unless_client_leaves,
    JobItem,
};
use super::openai::{check_model, error_then_done, system_fingerprint, Usage};
use super::request::{
    boolean, check, check_n, get, integer, max_tokens, parse_object, sampling, stop_list,
    stream_fields, string, type_name,
};
use super::AppState;
use crate::engine::sampling::SamplingParams;
use crate::runtime::TokenLogprob;

/// A validated completions body.
struct CompletionRequest {
    model: Option<String>,
    prompt: Prompt,
    stream: bool,
    include_usage: bool,
    max_tokens: Option<usize>,
    params: SamplingParams,
    stop: Vec<String>,
    /// kooka's extension: `response_format` as on chat completions.
    response_format: Option<Value>,
}

enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// Legacy completions default to 16 tokens, as OpenAI's did.
const DEFAULT_MAX_TOKENS: usize = 16;

fn parse(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    let obj = parse_object(body)?;
    let model = string(&obj, "model")?;
    check_n(&obj)?;
    if let Some(n) = integer(&obj, "best_of")? {
        check(n == 1, "best_of", "other than 1 is not supported")?;
    }
    if boolean(&obj, "echo")?.unwrap_or(false) {
        return Err(ApiError::field("echo", "`echo: true` is not supported"));
    }
    if get(&obj, "suffix").is_some_and(|s| s.as_str() != Some("")) {
        return Err(ApiError::field(
            "suffix",
            "`suffix` (fill-in-the-middle) is not supported",
        ));
    }
    let prompt = prompt(&obj)?;
    let (stream, include_usage) = stream_fields(&obj)?;
    let max_tokens = max_tokens(&obj, &["max_tokens"])?.or(Some(DEFAULT_MAX_TOKENS));
    let (mut params, _) = sampling(&obj)?;
    if let Some(n) = integer(&obj, "logprobs")? {
        check((0..=20).contains(&n), "logprobs", "must be in [0, 20]")?;
        params.logprobs = true;
        params.top_logprobs = n as usize;
    }
    let stop = stop_list(&obj, "stop")?;
    let response_format = super::request::response_format(&obj)?;
    Ok(CompletionRequest {
        model,
        prompt,
        stream,
        include_usage,
        max_tokens,
        params,
        stop,
        response_format,
    })
}

/// `prompt`: a string, a one-element list of strings, or a list of token ids.
fn prompt(obj: &Map<String, Value>) -> Result<Prompt, ApiError> {
    let bad = || {
        ApiError::field(
            "prompt",
            "`prompt` must be a string or a list of token ids (one prompt per request)",
        )
    };
    match get(obj, "prompt") {
        None => Err(ApiError::field("prompt", "`prompt` is required")),
        Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
        Some(Value::Array(list)) => match list.as_slice() {
            [Value::String(s)] => Ok(Prompt::Text(s.clone())),
            items if !items.is_empty() && items.iter().all(Value::is_u64) => Ok(Prompt::Ids(
                items
                    .iter()
                    .map(|v| {
                        v.as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(bad)
                    })
                    .collect::<Result<_, _>>()?,
            )),
            _ => Err(bad()),
        },
        Some(v) => Err(ApiError::field(
            "prompt",
            format!("`prompt` must be a string, got {}", type_name(v)),
        )),
    }
}

pub async fn completions(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, &state).await?;
    let r = parse(&body)?;
    check_model(&state, r.model.as_deref())?;
    let prompt_ids = match &r.prompt {
        Prompt::Text(t) => encode_text(&state, t)?,
        Prompt::Ids(ids) => {
            let vocab = state.runtime.info().vocab_size;
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(ApiError::field(
                    "prompt",
                    format!(
                        "`prompt` token id {bad} is outside the model's vocabulary (0..{vocab})"
                    ),
                ));
            }
            ids.clone()
        }
    };
    let constraint = request_grammar(
        r.response_format.as_ref(),
        &[],
        &super::request::ToolChoice::None,
        None,
        false,
    )?;
    let request = next_request(&state);
    let job = submit(
        &state,
        request,
        JobSpec {
            prompt_ids,
            params: r.params,
            max_tokens: r.max_tokens,
            stop: r.stop,
            constraint,
            prompt_field: "prompt",
            checkpoints: Vec::new(),
        },
    )?;
    let meta = Meta {
        id: format!("cmpl-{request:08x}{:08x}", unix_now() as u32),
        created: unix_now(),
        model: state.model_id.clone(),
    };
    if r.stream {
        Ok(stream(job, meta, r.include_usage))
    } else {
        unless_client_leaves(&req, collect(job, meta)).await
    }
}

struct Meta {
    id: String,
    created: u64,
    model: String,
}

impl Meta {
    fn body(&self, choices: Value, usage: Option<Usage>) -> Value {
        let mut body = json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": system_fingerprint(),
            "choices": choices,
        });
        if let Some(u) = usage {
            body["usage"] = json!(u);
        }
        body
    }
}

/// Legacy logprobs: parallel lists, `top_logprobs` as `{token: logprob}` maps.
#[derive(Default)]
struct LegacyLogprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<f32>,
    top_logprobs: Vec<Map<String, Value>>,
    text_offset: Vec<usize>,
}

impl LegacyLogprobs {
    fn push(&mut self, lp: TokenLogprob, offset: usize) {
        self.text_offset.push(offset);
        self.tokens.push(lp.token);
        self.token_logprobs.push(lp.logprob);
        self.top_logprobs
            .push(lp.top.into_iter().map(|(t, l)| (t, json!(l))).collect());
    }

    fn json(&self) -> Value {
        if self.tokens.is_empty() {
            return Value::Null;
        }
        json!({
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        })
    }
}

async fn collect(mut job: Job, meta: Meta) -> Result<HttpResponse, ApiError> {
    let mut text = String::new();
    // `text_offset` counts characters, as OpenAI's (and vLLM's) do, not bytes.
    let mut chars = 0;
    let mut logprobs = LegacyLogprobs::default();
    loop {
        match next_item(&mut job, false).await {
            JobItem::Text(t) => {
                chars += t.chars().count();
                text.push_str(&t);
            }
            JobItem::Logprobs(lp) => logprobs.push(lp, chars),
            JobItem::Done(done) => {
                let choices = json!([{
                    "index": 0, "text": text, "logprobs": logprobs.json(),
                    "finish_reason": done.finish.as_str(),
                }]);
                return Ok(HttpResponse::Ok().json(meta.body(choices, Some(done.usage))));
            }
            JobItem::Failed(e) => return Err(e),
            JobItem::Idle => {}
        }
    }
}

struct Stream {
    job: Job,
    meta: Meta,
    include_usage: bool,
    finished: bool,
    logprobs: LegacyLogprobs,
    /// Characters sent so far (`text_offset`).
    sent: usize,
}

impl Stream {
    fn chunk(&self, text: &str, logprobs: Value, finish: Option<&str>) -> Bytes {
        let choices =
            json!([{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]);
        sse_data(&self.meta.body(choices, None).to_string())
    }

    async fn next(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        loop {
            match next_item(&mut self.job, true).await {
                JobItem::Idle => return Some(sse_keepalive()),
                JobItem::Logprobs(lp) => self.logprobs.push(lp, self.sent),
                JobItem::Text(t) => {
                    let lp = std::mem::take(&mut self.logprobs).json();
                    self.sent += t.chars().count();
                    return Some(self.chunk(&t, lp, None));
                }
                JobItem::Done(done) => {
                    self.finished = true;
                    let lp = std::mem::take(&mut self.logprobs).json();
                    let mut out = self.chunk("", lp, Some(done.finish.as_str())).to_vec();
                    if self.include_usage {
                        let body = self.meta.body(json!([]), Some(done.usage));
                        out.extend_from_slice(&sse_data(&body.to_string()));
                    }
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    return Some(Bytes::from(out));
                }
                JobItem::Failed(e) => {
                    self.finished = true;
                    return Some(error_then_done(e));
                }
            }
        }
    }
}

fn stream(job: Job, meta: Meta, include_usage: bool) -> HttpResponse {
    let s = Stream {
        job,
        meta,
        include_usage,
        finished: false,
        logprobs: LegacyLogprobs::default(),
        sent: 0,
    };
    sse_response(futures_util::stream::unfold(s, |mut s| async move {
        let bytes = s.next().await?;
        Some((Ok(bytes), s))
    }))
}
