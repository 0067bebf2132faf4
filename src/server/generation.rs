//! What every inference route shares once its body is validated: the prompt (chat template
//! with tools, or raw text) as token ids, the context-length check, `max_tokens`, and the
//! hand-off to the runtime. A [`Job`] is the request's side of that hand-off: its event
//! channel. Dropping the job (the client went away) cancels the request.

use std::sync::atomic::Ordering;

use serde_json::{Map, Value};
use tracing::info;

use super::error::ApiError;
use super::reply::ReplyParser;
use super::request::{ChatRequest, ToolChoice};
use super::AppState;
use crate::chat::tools::harmony::HarmonyParser;
use crate::chat::tools::{new_parser, ParserKind, ReasoningSplitter};
use crate::constrain::{ConstrainError, Grammar, ResponseFormat, ToolCalls, CUSTOM_GRAMMAR_KEY};
use crate::engine::sampling::SamplingParams;

use crate::runtime::GenerationRequest;
pub use crate::runtime::Job;

/// A fresh request number (ids and logs).
pub fn next_request(state: &AppState) -> u64 {
    state.next_id.fetch_add(1, Ordering::Relaxed)
}

/// What to generate, validated.
pub struct JobSpec {
    pub prompt_ids: Vec<u32>,
    pub params: SamplingParams,
    /// As requested (`None`: the rest of the context).
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub constraint: Option<Grammar>,
    /// The request field that holds the prompt (for the context-length error).
    pub prompt_field: &'static str,
    /// Prompt positions where the chat's messages end (see [`ChatPrompt::checkpoints`]).
    pub checkpoints: Vec<usize>,
}

/// Checks the prompt against the context and hands the job to the runtime.
pub fn submit(state: &AppState, request: u64, spec: JobSpec) -> Result<Job, ApiError> {
    let prompt_tokens = spec.prompt_ids.len();
    if prompt_tokens == 0 {
        return Err(ApiError::field(spec.prompt_field, "The prompt is empty"));
    }
    let context = state.runtime.info().max_position_embeddings;
    let context_left = context.map(|n| n.saturating_sub(prompt_tokens));
    if context_left == Some(0) {
        return Err(ApiError::BadRequest {
            // Anthropic's wording, which Claude Code reads to compact its conversation.
            message: format!(
                "prompt is too long: {prompt_tokens} tokens > {} maximum (this model's context \
                 is {} tokens and the reply needs at least one)",
                context.unwrap_or(1).saturating_sub(1),
                context.unwrap_or(0)
            ),
            param: Some(spec.prompt_field.into()),
            code: Some("context_length_exceeded"),
        });
    }
    let vocab = state.runtime.info().vocab_size;
    let outside = |id: u32| vocab > 0 && id as usize >= vocab;
    if let Some((id, _)) = spec.params.logit_bias.iter().find(|(id, _)| outside(*id)) {
        return Err(ApiError::field(
            "logit_bias",
            format!("`logit_bias` token id {id} is outside the model's vocabulary (0..{vocab})"),
        ));
    }
    // Without max_tokens a completion may use the rest of the context (as vLLM does).
    let max_tokens = match (spec.max_tokens, context_left) {
        (Some(n), Some(left)) => n.min(left),
        (Some(n), None) => n,
        (None, Some(left)) => left,
        (None, None) => super::DEFAULT_MAX_TOKENS,
    };
    info!(request, prompt_tokens, max_tokens, "generation submitted");
    Ok(state.runtime.submit(GenerationRequest {
        id: request,
        prompt_ids: spec.prompt_ids,
        params: spec.params,
        max_tokens,
        stop: spec.stop,
        constraint: spec.constraint,
        checkpoints: spec.checkpoints,
    })?)
}

/// Renders, constrains and submits a validated chat request (OpenAI's chat completions and
/// Anthropic's messages both arrive as a [`ChatRequest`]); returns the job and the parser
/// for its reply.
pub fn submit_chat(state: &AppState, chat: &ChatRequest) -> Result<(Job, ReplyParser), ApiError> {
    let prompt = chat_prompt(
        state,
        &chat.messages,
        &chat.tools,
        &chat.tool_choice,
        &chat.chat_template_kwargs,
        chat.continue_final,
    )?;
    let constraint = request_grammar(
        chat.response_format.as_ref(),
        &chat.tools,
        &chat.tool_choice,
        prompt.tool_format,
        chat.parallel_tool_calls,
    )?;
    let answers_format =
        chat.response_format.is_some() && format_is_the_answer(&chat.tools, &chat.tool_choice);
    // gpt-oss answers in channels: a JSON answer is the body of its `final` message.
    let constraint = match constraint {
        Some(g) if prompt.harmony && answers_format => Some(
            g.harmony_final("response_format")
                .map_err(constrain_error)?,
        ),
        g => g,
    };
    // A reply that must follow a grammar from its first token, while the prompt opened a
    // reasoning block (MiniMax-M2's template), closes that block first: a forced call or a
    // JSON answer inside the reasoning would be read as reasoning, never as the answer.
    // (Anthropic itself does not offer forced tool use with thinking.)
    let constraint = match (constraint, prompt.reasoning_close) {
        (Some(g), Some(close)) if answers_format || chat.tool_choice.forced() => Some(
            g.after_literal(
                &format!("{close}\n\n"),
                if answers_format {
                    "response_format"
                } else {
                    "tool_choice"
                },
            )
            .map_err(constrain_error)?,
        ),
        (g, _) => g,
    };
    let params = forced_call_params(chat.params.clone(), &chat.tool_choice, chat.sampling_set);
    let job = submit(
        state,
        next_request(state),
        JobSpec {
            prompt_ids: prompt.ids,
            params,
            max_tokens: chat.max_tokens,
            stop: chat.stop.clone(),
            constraint,
            prompt_field: "messages",
            checkpoints: prompt.checkpoints,
        },
    )?;
    Ok((job, prompt.parser))
}

/// Raw text to token ids (BOS added as the tokenizer's post-processor says).
pub fn encode_text(state: &AppState, text: &str) -> Result<Vec<u32>, ApiError> {
    state
        .tokenizer
        .encode_prompt(text, true)
        .map_err(|e| ApiError::Internal(format!("tokenizing the prompt: {e}")))
}

/// A `system` message after the first non-system one (Claude Code sends such reminders).
fn has_late_system(messages: &[Value]) -> bool {
    messages
        .iter()
        .skip_while(|m| m["role"] == "system")
        .any(|m| m["role"] == "system")
}

/// [`has_late_system`]'s messages as user turns, joined to a user turn next to them.
fn late_system_as_user(messages: &[Value]) -> Vec<Value> {
    let lead = messages
        .iter()
        .take_while(|m| m["role"] == "system")
        .count();
    let mut out: Vec<Value> = messages[..lead].to_vec();
    for m in &messages[lead..] {
        let mut m = m.clone();
        if m["role"] == "system" {
            m["role"] = Value::from("user");
        }
        let after_lead = out.len() > lead;
        match out.last_mut() {
            Some(last) if m["role"] == "user" && last["role"] == "user" && after_lead => {
                let joined = format!(
                    "{}\n\n{}",
                    last["content"].as_str().unwrap_or(""),
                    m["content"].as_str().unwrap_or("")
                );
                last["content"] = Value::from(joined);
            }
            _ => out.push(m),
        }
    }
    out
}

/// A chat conversation rendered for this model.
pub struct ChatPrompt {
    pub ids: Vec<u32>,
    /// How to read the reply (reasoning markers, tool-call format).
    pub parser: ReplyParser,
    /// The tool-call markup the reply uses, when tools are in play.
    pub tool_format: Option<ParserKind>,
    /// The prompt ends inside a reasoning block that this tag closes.
    pub reasoning_close: Option<&'static str>,
    /// The reply is in gpt-oss's harmony format.
    pub harmony: bool,
    /// For a recurrent model: the prompt position where the messages end (before the
    /// generation prompt), when the template renders them as a prefix of the prompt. The
    /// next turn of the conversation starts with those tokens: a checkpoint there lets it
    /// resume instead of reading everything again.
    pub checkpoints: Vec<usize>,
}

/// `rendered` (the messages without a generation prompt) cut after the text of `last`, the
/// final assistant turn, which the reply continues.
fn continued(rendered: Option<String>, last: &Value) -> Option<String> {
    let content = last["content"].as_str()?.trim();
    let text = rendered?;
    let at = text.rfind(content)?;
    Some(text[..at + content.len()].to_string())
}

/// Where the messages end in the prompt `ids` (rendered as `text`): the length of
/// `without_generation` (the messages rendered with no generation prompt) in tokens, when that
/// text starts `text` and its tokens start `ids` (a token across the boundary: no position).
fn messages_end(
    state: &AppState,
    text: &str,
    ids: &[u32],
    without_generation: Option<String>,
) -> Option<usize> {
    let head = without_generation?;
    if head.is_empty() || head.len() >= text.len() || !text.starts_with(&head) {
        return None;
    }
    let head_ids = state.tokenizer.encode(&head, false).ok()?;
    (ids.starts_with(&head_ids) && !head_ids.is_empty()).then_some(head_ids.len())
}

/// A forced tool call should not be left to chance: greedy, unless the client chose sampling.
pub fn forced_call_params(
    mut params: SamplingParams,
    choice: &ToolChoice,
    sampling_set: bool,
) -> SamplingParams {
    if choice.forced() && !sampling_set {
        params.temperature = 0.0;
    }
    params
}

/// A constraint error as the API reports it (400 naming the field, or 500).
pub fn constrain_error(e: ConstrainError) -> ApiError {
    match e.param() {
        Some(param) => ApiError::field(param, e.to_string()),
        None => ApiError::Internal(e.to_string()),
    }
}

/// The grammar a request asks for: the tool-call markup with arguments valid for the tools'
/// schemas, and its `response_format` for an answer. A forced call (`required` / named) must
/// follow the markup (the format is for the answer that comes after the call's result); with
/// `auto` a call that starts is completed validly, and with a `response_format` too the reply
/// is either the formatted answer or calls (where both can be written as one grammar; else
/// the format alone, as without tools). A tool format the engine cannot enforce leaves
/// calls unconstrained.
pub fn request_grammar(
    response_format: Option<&Value>,
    tools: &[Value],
    tool_choice: &ToolChoice,
    tool_format: Option<ParserKind>,
    parallel: bool,
) -> Result<Option<Grammar>, ApiError> {
    let calls = || tool_grammar(tools, tool_choice, tool_format, parallel);
    let Some(format) = response_format else {
        return calls();
    };
    if !format_is_the_answer(tools, tool_choice) {
        return calls();
    }
    let answer = parse_response_format(format)
        .grammar()
        .map_err(constrain_error)?;
    match answer {
        Some(a) if !tools.is_empty() && !matches!(tool_choice, ToolChoice::None) => {
            Ok(Some(match calls()? {
                Some(t) => a.or_tool_calls(&t).unwrap_or(a),
                None => a,
            }))
        }
        answer => Ok(answer),
    }
}

/// Whether a request's `response_format`, if it has one, constrains this reply: not when a
/// forced call comes first.
fn format_is_the_answer(tools: &[Value], tool_choice: &ToolChoice) -> bool {
    !(tool_choice.forced() && !tools.is_empty())
}

/// The tool-call grammar of a request (`None`: nothing to constrain).
fn tool_grammar(
    tools: &[Value],
    tool_choice: &ToolChoice,
    tool_format: Option<ParserKind>,
    parallel: bool,
) -> Result<Option<Grammar>, ApiError> {
    let Some(format) = tool_format else {
        return Ok(None);
    };
    let choice = match tool_choice {
        ToolChoice::None => return Ok(None),
        ToolChoice::Auto => crate::constrain::ToolChoice::Auto,
        ToolChoice::Required => crate::constrain::ToolChoice::Required,
        ToolChoice::Named(n) => crate::constrain::ToolChoice::Function(n.clone()),
    };
    let calls = ToolCalls {
        tools,
        choice: &choice,
        format,
        parallel,
    };
    match calls.grammar() {
        Ok(g) => Ok(g),
        Err(e) if !tool_choice.forced() => {
            tracing::debug!("tool calls left unconstrained: {e}");
            Ok(None)
        }
        Err(e) => Err(constrain_error(e)),
    }
}

/// The wire `response_format` (validated by `request::response_format`).
pub fn parse_response_format(v: &Value) -> ResponseFormat {
    match v.get("type").and_then(Value::as_str) {
        Some("json_object") => ResponseFormat::JsonObject,
        Some("json_schema") => {
            let spec = v.get("json_schema");
            ResponseFormat::JsonSchema {
                schema: spec
                    .and_then(|s| s.get("schema"))
                    .cloned()
                    .unwrap_or(Value::Null),
                strict: spec
                    .and_then(|s| s.get("strict"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            }
        }
        Some("regex") => ResponseFormat::Regex {
            regex: text_of(v, "regex"),
            field: guided_field(v),
        },
        Some("choice") => ResponseFormat::Choice {
            choices: v["choice"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            field: guided_field(v),
        },
        Some("grammar") => ResponseFormat::Lark {
            grammar: text_of(v, "grammar"),
            field: guided_field(v),
        },
        _ => ResponseFormat::Text,
    }
}

fn text_of(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

/// The request field a `regex` / `choice` / `grammar` format came from (errors name it).
fn guided_field(v: &Value) -> &'static str {
    super::request::constraint_field(v["field"].as_str().unwrap_or_default())
}

/// Renders `messages` (+ `tools` unless `tool_choice` is none) with the model's chat
/// template and tokenizes. When the template cannot render tools, they are described in a
/// system message of kooka's own with the json_tools markup (see [`super::tool_prompt`]).
pub fn chat_prompt(
    state: &AppState,
    messages: &[Value],
    tools: &[Value],
    tool_choice: &ToolChoice,
    kwargs: &Map<String, Value>,
    continue_final: bool,
) -> Result<ChatPrompt, ApiError> {
    let use_tools = !tools.is_empty() && *tool_choice != ToolChoice::None;
    let (template, chat) = match (&state.tool_template, use_tools) {
        (Some((template, chat)), true) => (template, chat),
        _ => (
            state.template.as_ref().ok_or_else(|| {
                ApiError::bad_request("This model has no chat template; chat completions need one")
            })?,
            &state.chat,
        ),
    };
    let kwargs = &*chat.thinking_kwargs(kwargs);
    // Custom tools' grammars are for the constraint, not the prompt.
    let shown: Vec<Value>;
    let tools = if tools
        .iter()
        .any(|t| t["function"].get(CUSTOM_GRAMMAR_KEY).is_some())
    {
        shown = tools
            .iter()
            .map(|t| {
                let mut t = t.clone();
                if let Some(f) = t.get_mut("function").and_then(Value::as_object_mut) {
                    f.remove(CUSTOM_GRAMMAR_KEY);
                }
                t
            })
            .collect();
        &shown[..]
    } else {
        tools
    };
    // gpt-oss: the reply is read by channel, and earlier turns need reshaping for its template.
    let harmony = chat.tool_parser == Some(ParserKind::Harmony);
    let reshaped;
    let messages = if harmony {
        reshaped = super::harmony_prompt::harmony_messages(messages);
        &reshaped[..]
    } else {
        messages
    };
    let parser_kind = match (use_tools, chat.template_renders_tools) {
        (false, _) => None,
        (true, true) => Some(chat.tool_parser.unwrap_or(ParserKind::JsonTools)),
        (true, false) => Some(ParserKind::JsonTools),
    };
    let render =
        |messages: &[Value], generation: bool| match (use_tools, chat.template_renders_tools) {
            (false, true) => template.render(messages, None, generation, kwargs),
            // Earlier tool turns still need writing out as text for such a template.
            (false, false) => {
                let messages = super::tool_prompt::flatten_tool_turns(messages);
                template.render(&messages, None, generation, kwargs)
            }
            (true, true) => template.render(messages, Some(tools), generation, kwargs),
            (true, false) => {
                let messages =
                    super::tool_prompt::with_tool_system_message(messages, tools, tool_choice);
                template.render(&messages, None, generation, kwargs)
            }
        };
    let late_system;
    let (rendered, messages) = match render(messages, true) {
        // Templates that refuse a system message after the first turn get it as a user turn.
        Err(_) if has_late_system(messages) => {
            late_system = late_system_as_user(messages);
            (render(&late_system, true), &late_system[..])
        }
        other => (other, messages),
    };
    let text = rendered.map_err(|e| ApiError::field("messages", e.to_string()))?;
    // A prefill (`continue_final`): the messages without a generation prompt, cut after the
    // final assistant turn's text, as transformers' `continue_final_message` does; where the
    // template does not write that text out, a new turn as before.
    let text = match (continue_final && !harmony, messages.last()) {
        (true, Some(last)) => continued(render(messages, false).ok(), last).unwrap_or(text),
        _ => text,
    };
    // Templates like Qwen3's open the think block in the prompt.
    let reasoning_close = chat
        .think_tags
        .and_then(|(open, close)| text.trim_end().ends_with(open).then_some(close));
    let reasoning = chat.think_tags.map(|(open, close)| {
        let splitter = ReasoningSplitter::new(open, close);
        if reasoning_close.is_some() {
            splitter.starting_inside()
        } else {
            splitter
        }
    });
    let tools_parser = parser_kind.map(|kind| new_parser(kind, tools));
    let declared = match parser_kind {
        Some(_) => tools
            .iter()
            .filter_map(|t| t["function"]["name"].as_str().map(str::to_string))
            .collect(),
        None => Vec::new(),
    };
    let ids = state
        .tokenizer
        .encode_prompt(&text, false)
        .map_err(|e| ApiError::Internal(format!("tokenizing the prompt: {e}")))?;
    let parser = if harmony {
        let names = use_tools.then(|| HarmonyParser::tool_names(tools));
        ReplyParser::harmony(HarmonyParser::new(names))
    } else {
        ReplyParser::new(reasoning, tools_parser).with_bare_calls(declared)
    };
    let checkpoints = match state.runtime.info().recurrent {
        true => messages_end(state, &text, &ids, render(messages, false).ok())
            .into_iter()
            .collect(),
        false => Vec::new(),
    };
    Ok(ChatPrompt {
        ids,
        parser,
        tool_format: parser_kind,
        reasoning_close,
        harmony,
        checkpoints,
    })
}
