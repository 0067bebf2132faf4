//! What crosses between the HTTP side and the model actor: [`Submit`] in (the actor's
//! messages are in `actor.rs`), each request's [`Event`]s out, and the typed
//! [`RuntimeError`] both carry. Plain data only.

use tokio::sync::mpsc::UnboundedSender;

use crate::constrain::Grammar;
use crate::engine::sampling::SamplingParams;

/// Identifies a request across the server (assigned by the handler).
pub type RequestId = u64;

/// Why a completion ended, as OpenAI reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// EOS token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// One sampled token's log-probability (for `logprobs`), with the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's own text (may be part of a UTF-8 character, then lossy).
    pub token: String,
    pub logprob: f32,
    /// `(text, logprob)` best first; `top_logprobs` long.
    pub top: Vec<(String, f32)>,
}

/// Why the runtime could not run (or finish) a request; each kind has its HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuntimeError {
    /// The request itself is wrong or can never be served here (400).
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<&'static str>,
    },
    /// Too many requests are waiting (429); try again after `retry_after_secs`.
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after_secs: u64,
    },
    /// The model is gone: a rank failed, or the server is stopping (503).
    #[error("{0}")]
    Unavailable(String),
    /// A fault in the runtime (500).
    #[error("{0}")]
    Internal(String),
}

/// What a request's channel carries, in order: `Text` and `Logprobs` (when asked) then one
/// `Done` or `Error`. A token's `Logprobs` comes before the text it contributes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Text(String),
    Logprobs(TokenLogprob),
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// Prompt tokens served from the prefix cache.
        cached_tokens: usize,
        /// The stop string that ended the completion, if one did.
        stop_sequence: Option<String>,
        /// From submission (queueing included) to the first token.
        ttft: std::time::Duration,
    },
    Error(RuntimeError),
}

/// A generation to run, validated by the HTTP side; plain data.
#[derive(Debug)]
pub struct GenerationRequest {
    pub id: RequestId,
    pub prompt_ids: Vec<u32>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// Constrained decoding: what the reply must look like.
    pub constraint: Option<Grammar>,
    /// Prompt positions at the ends of the chat's messages (prefix-cache checkpoints for
    /// recurrent models), ascending.
    pub checkpoints: Vec<usize>,
}

/// A request handed to the model actor, with the channel its events go to.
#[derive(Debug)]
pub struct Submit {
    pub request: GenerationRequest,
    pub events: UnboundedSender<Event>,
    /// When the handle accepted it (the queue timeout counts from here).
    pub queued_at: std::time::Instant,
}

/// Facts about the loaded model and the runtime's limits that handlers need.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub max_position_embeddings: Option<usize>,
    /// KV positions admission may hand out (prompt + max_tokens, padding included).
    pub kv_budget_tokens: usize,
    /// The prefix cache's budget in tokens (0: off).
    pub prefix_cache_tokens: usize,
    /// The model keeps recurrent states: its prefix cache resumes only at checkpoints, so
    /// chat requests say where their messages end.
    pub recurrent: bool,
    /// Token ids the model embeds (`0..vocab_size`).
    pub vocab_size: usize,
}
