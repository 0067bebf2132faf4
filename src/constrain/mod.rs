//! Constrained decoding: what a reply must look like, as a grammar, and the per-sequence
//! matcher that turns it into a token mask at every step (llguidance underneath).
//!
//! Two halves, split by thread:
//!
//! - **Plain data, built off the MLX thread** ([`Grammar`]): from a `response_format`
//!   ([`ResponseFormat`]: any JSON object, or a JSON schema) or from the offered tools and the
//!   `tool_choice` ([`ToolCalls`]: the model's own tool-call markup, per parser kind, with
//!   arguments valid for each tool's schema). Building validates the grammar, so a schema the
//!   engine cannot enforce is a [`ConstrainError`] naming the feature before anything is
//!   queued (the server answers 400).
//! - **Compiled, on the MLX thread** ([`Constrainer`] once per tokenizer, [`GrammarMatcher`]
//!   per sequence): the matcher yields the allowed-token mask for the next step, accepts the
//!   sampled token, and says when the grammar is complete (the engine then ends the sequence
//!   as if EOS had been sampled).
//!
//! JSON is generated in `json.dumps` style (`", "` and `": "` separators, no other
//! whitespace): what chat templates render tool calls with, and bounded (a small model cannot
//! wander off into endless whitespace). `strict: true` makes any schema keyword the engine
//! cannot enforce an error; otherwise such keywords are ignored (llguidance's lenient mode).
//!
//! **Invariant**: nothing here touches MLX; the engine owns the mask's trip to the logits.

mod closing;
mod embed;
mod error;
mod gbnf;
mod grammar;
mod lark;
mod matcher;
mod tokenv;
mod tools;

pub use error::ConstrainError;
pub use grammar::{Grammar, ResponseFormat};
pub use matcher::{Constrainer, GrammarMatcher, MaskStep};
pub use tools::{ToolCalls, ToolChoice, CUSTOM_GRAMMAR_KEY};
