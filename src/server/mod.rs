//! The HTTP side of `kooka serve`: an actix-web server whose handlers validate and tokenize
//! requests, submit them through the [`RuntimeHandle`](crate::runtime::RuntimeHandle), and
//! write each request's events in their wire format. Handlers never run MLX, so generation
//! never blocks an actix worker.

pub mod anthropic;
pub mod completions;
mod drain;
pub mod edge;
pub mod error;
pub mod generation;
pub mod harmony_prompt;
pub mod http;
mod loading;
pub mod models;
pub mod openai;
pub mod openapi;
pub mod reply;
pub mod request;
pub mod request_log;
pub mod responses;
pub mod tool_prompt;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use actix_web::{web, App, HttpServer};
use tracing::info;

use crate::chat::{ChatTemplate, SpecialTokens};
use crate::metrics::Metrics;
use crate::model::ComputeDtype;
use crate::runtime::{RuntimeConfig, RuntimeHandle};
use crate::tokenizer::Tokenizer;
pub use error::{ApiError, ServeError};

/// `max_tokens` when neither the request nor the model's context bounds it.
pub const DEFAULT_MAX_TOKENS: usize = 4096;

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The resolved model folder.
    pub model_dir: PathBuf,
    /// `--served-model-name`: the id the server reports and answers to instead of the
    /// folder's (which stays an alias).
    pub served_name: Option<String>,
    /// Other names the `model` request field may use (e.g. the path as given).
    pub aliases: Vec<String>,
    pub dtype: ComputeDtype,
    /// Larger request bodies get a 413.
    pub max_body_bytes: usize,
    /// actix worker threads (they only parse, template and tokenize).
    pub workers: usize,
    /// Inference routes need one of these as `Authorization: Bearer KEY` or `x-api-key: KEY`
    /// (none: open).
    pub api_keys: Vec<String>,
    /// `--allowed-origins` as given (`None`: the default, see [`edge`]).
    pub allowed_origins: Option<Vec<String>>,
    /// `--allowed-hosts` as given (`None`: the default, see [`edge`]).
    pub allowed_hosts: Option<Vec<String>>,
    /// How long a request body may take to arrive.
    pub body_timeout: std::time::Duration,
    /// One engine step running longer than this makes `/health` answer 503 `stuck`.
    pub stuck_step: std::time::Duration,
    /// After SIGTERM/SIGINT, how long requests in flight may still run.
    pub shutdown_grace: std::time::Duration,
    /// Scheduling and memory limits of the model side.
    pub runtime: RuntimeConfig,
    /// Stream OpenAI chat tool-call arguments as they are generated (else each call whole).
    pub incremental_tool_calls: bool,
    /// A chat template's source that replaces the model's.
    pub chat_template: Option<String>,
    /// A tool-call format name that replaces tokenizer_config.json's `tool_parser_type`.
    pub tool_call_parser: Option<String>,
}

/// How chat replies of this model are read.
#[derive(Debug, Clone, Default)]
pub struct ChatInfo {
    /// The template uses the `tools` variable (else kooka's own tool system message).
    pub template_renders_tools: bool,
    /// The model's tool-call format, when known.
    pub tool_parser: Option<crate::chat::tools::ParserKind>,
    /// Reasoning markers the template uses (`<think>`, `</think>`).
    pub think_tags: Option<(&'static str, &'static str)>,
    /// The template's own thinking switch when it does not read `enable_thinking`.
    pub thinking_switch: Option<ThinkingSwitch>,
}

/// A chat template's thinking switch other than `enable_thinking`, which the APIs' switches
/// (Anthropic `thinking`, Responses `reasoning.effort: none`) set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThinkingSwitch {
    /// A boolean `thinking` (DeepSeek-V3.1's template).
    Thinking,
    /// `thinking_mode`: `"enabled"` / `"disabled"` (MiniMax-M3's).
    Mode,
}

impl ThinkingSwitch {
    fn of(source: &str) -> Option<Self> {
        if source.contains("enable_thinking") {
            None
        } else if source.contains("thinking_mode") {
            Some(ThinkingSwitch::Mode)
        } else if source.contains("thinking is defined") || source.contains("if thinking") {
            Some(ThinkingSwitch::Thinking)
        } else {
            None
        }
    }
}

/// The tool-call format: `forced` (`--tool-call-parser`) as given, else what the model's
/// `tool_parser_type` and template say ([`crate::chat::tools::select_parser`]); and why.
fn tool_parser(
    configured: Option<&str>,
    source: Option<&str>,
    forced: Option<&str>,
) -> (Option<crate::chat::tools::ParserKind>, String) {
    if let Some(kind) = forced.and_then(crate::chat::tools::ParserKind::from_name) {
        return (Some(kind), "--tool-call-parser".to_string());
    }
    let config = configured.map(|t| serde_json::json!({ "tool_parser_type": t }));
    crate::chat::tools::select_parser(config.as_ref(), source)
}

impl ChatInfo {
    /// `forced`: `--tool-call-parser`'s format, which wins over the model's files and template.
    fn new(tokenizer: &Tokenizer, source: Option<&str>, forced: Option<&str>) -> Self {
        let (tool_parser, why) = tool_parser(tokenizer.tool_parser_type.as_deref(), source, forced);
        info!(
            parser = tool_parser.map(|k| k.name()).unwrap_or("none"),
            "tool-call parser: {why}"
        );
        ChatInfo {
            template_renders_tools: source.is_some_and(|s| s.contains("tools")),
            tool_parser,
            think_tags: source
                .filter(|s| s.contains("<think>"))
                .map(|_| ("<think>", "</think>")),
            thinking_switch: source.and_then(ThinkingSwitch::of),
        }
    }

    /// The request's template kwargs, with an `enable_thinking` also given as the template's
    /// own switch (unless the request sets that too).
    pub fn thinking_kwargs<'a>(
        &self,
        kwargs: &'a serde_json::Map<String, serde_json::Value>,
    ) -> std::borrow::Cow<'a, serde_json::Map<String, serde_json::Value>> {
        use serde_json::Value;
        let (Some(switch), Some(Value::Bool(on))) =
            (self.thinking_switch, kwargs.get("enable_thinking"))
        else {
            return std::borrow::Cow::Borrowed(kwargs);
        };
        let (key, value) = match switch {
            ThinkingSwitch::Thinking => ("thinking", Value::Bool(*on)),
            ThinkingSwitch::Mode => (
                "thinking_mode",
                Value::from(if *on { "enabled" } else { "disabled" }),
            ),
        };
        if kwargs.contains_key(key) {
            return std::borrow::Cow::Borrowed(kwargs);
        }
        let mut out = kwargs.clone();
        out.insert(key.into(), value);
        std::borrow::Cow::Owned(out)
    }
}

/// What every handler shares.
pub struct AppState {
    /// The served model's id (its folder name).
    pub model_id: String,
    pub aliases: Vec<String>,
    pub created: u64,
    pub template: Option<ChatTemplate>,
    /// The model's `tool_use` template and how its replies are read: requests with tools
    /// render through it (see [`Tokenizer::tool_use_template`]).
    pub tool_template: Option<(ChatTemplate, ChatInfo)>,
    pub tokenizer: Arc<Tokenizer>,
    pub runtime: RuntimeHandle,
    pub max_body_bytes: usize,
    /// See [`ServeConfig::body_timeout`].
    pub body_timeout: std::time::Duration,
    /// See [`ServeConfig::stuck_step`].
    pub stuck_step: std::time::Duration,
    pub next_id: AtomicU64,
    pub chat: ChatInfo,
    /// Every rank's state, on rank 0 of a multi-rank run (`/health` reports it).
    pub cluster: Option<Arc<crate::cluster::ClusterStatus>>,
    /// See [`ServeConfig::incremental_tool_calls`].
    pub incremental_tool_calls: bool,
    /// What `/metrics` reports (the runtime records into it too).
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Whether a request's `model` names the served model.
    pub fn serves(&self, model: &str) -> bool {
        model == self.model_id || self.aliases.iter().any(|a| a == model)
    }
}

/// A POST-only resource (other methods get a 405).
fn post<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::post().to(handler))
        .default_service(web::to(edge::method_not_allowed))
}

/// The routes (the App factory's body; tests and `run` share it). Query strings are
/// ignored by routing (`/v1/messages?beta=true` matches).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/health")
            .route(web::get().to(http::health))
            .route(web::head().to(http::health))
            .default_service(web::to(edge::method_not_allowed)),
    )
    .service(openapi::resource())
    .service(
        web::resource("/metrics")
            .route(web::get().to(http::metrics))
            .default_service(web::to(edge::method_not_allowed)),
    )
    .service(
        web::resource("/v1/models")
            .route(web::get().to(models::list))
            .default_service(web::to(edge::method_not_allowed)),
    )
    .service(
        web::resource("/v1/models/{id:.+}")
            .route(web::get().to(models::get))
            .default_service(web::to(edge::method_not_allowed)),
    )
    .service(post("/v1/chat/completions", openai::chat_completions))
    .service(post("/chat/completions", openai::chat_completions))
    .service(post("/v1/completions", completions::completions))
    .service(post("/completions", completions::completions))
    .service(post("/v1/messages", anthropic::messages))
    .service(post("/v1/messages/count_tokens", anthropic::count_tokens))
    .service(post("/v1/responses", responses::responses))
    .service(post("/responses", responses::responses));
}

/// Loads the model (on its own thread), then serves on `listener` until the process is
/// stopped. Prints `kooka: listening on http://ADDR` on stdout once requests can be served.
pub fn run(listener: TcpListener, config: ServeConfig) -> Result<(), ServeError> {
    run_ranked(listener, config, None)
}

/// [`run`] on rank 0 of a multi-rank run when `leader` is given (the other ranks have
/// joined its control plane): the engine's operations are replicated to them, startup
/// waits until every rank has loaded its shard, and a lost rank fails the requests in
/// flight (see [`crate::runtime`]).
pub fn run_ranked(
    listener: TcpListener,
    config: ServeConfig,
    leader: Option<crate::cluster::Leader>,
) -> Result<(), ServeError> {
    let dir = &config.model_dir;
    let mut tokenizer = Tokenizer::load(dir)?;
    if let Some(source) = &config.chat_template {
        info!("chat template: --chat-template's, not the model's");
        tokenizer.chat_template = Some(source.clone());
        tokenizer.tool_use_template = None;
    }
    let tokenizer = Arc::new(tokenizer);
    let compile = |source: &str| {
        ChatTemplate::new(
            source,
            SpecialTokens {
                bos: tokenizer.bos_token.clone(),
                eos: tokenizer.eos_token.clone(),
                ..Default::default()
            },
        )
    };
    let template = tokenizer
        .chat_template
        .as_deref()
        .map(compile)
        .transpose()?;
    let forced = config.tool_call_parser.as_deref();
    let chat_info = ChatInfo::new(&tokenizer, tokenizer.chat_template.as_deref(), forced);
    let tool_template = match tokenizer.tool_use_template.as_deref() {
        Some(source) => {
            info!("chat template: requests with tools use the model's `tool_use` template");
            Some((
                compile(source)?,
                ChatInfo::new(&tokenizer, Some(source), forced),
            ))
        }
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let folder_id = crate::model::resolve::served_id(dir);
    let model_id = config
        .served_name
        .clone()
        .unwrap_or_else(|| folder_id.clone());
    let loading = loading::start(&listener, &model_id)?;
    println!(
        "kooka: loading {model_id}; http://{} answers 503 until it is ready",
        listener.local_addr()?
    );
    let runtime = RuntimeHandle::start(
        dir.clone(),
        config.dtype,
        tokenizer.clone(),
        leader.clone(),
        config.runtime.clone(),
        metrics.clone(),
    )?;
    let mut aliases = config.aliases.clone();
    aliases.push(dir.display().to_string());
    aliases.push(folder_id);
    loading.stop();
    let state = web::Data::new(AppState {
        model_id,
        aliases,
        created: http::unix_now(),
        template,
        tool_template,
        tokenizer,
        runtime,
        max_body_bytes: config.max_body_bytes,
        body_timeout: config.body_timeout,
        stuck_step: config.stuck_step,
        next_id: AtomicU64::new(0),
        chat: chat_info,
        cluster: leader.as_ref().map(|l| l.status()),
        incremental_tool_calls: config.incremental_tool_calls,
        metrics,
    });
    let addr = listener.local_addr()?;
    info!(model = %state.model_id, %addr, "serving");
    #[cfg(target_os = "linux")]
    if crate::model::default_device_is_cpu() {
        if let Some(kernels) = crate::openblas::chosen_core() {
            info!(%kernels, "MLX CPU backend: OpenBLAS");
        }
    }
    let workers = config.workers.max(1);
    let edge = edge::Edge::new(
        config.api_keys.clone(),
        config.allowed_origins.as_deref(),
        config.allowed_hosts.as_deref(),
    );
    let grace = config.shutdown_grace;
    actix_web::rt::System::new().block_on(async move {
        let app_state = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                // The last wrap runs first: CORS answers preflights and decorates every
                // response, including the guard's 401s and 403s; the request log sees (and
                // gives an `x-request-id` to) every response, preflights included.
                .wrap(actix_web::middleware::from_fn(edge::guard))
                .wrap(edge.cors())
                .wrap(actix_web::middleware::from_fn(request_log::observe))
                .app_data(web::Data::new(edge.clone()))
                .configure(routes)
                .default_service(web::to(http::not_found))
        })
        .workers(workers)
        .on_connect(http::ClientSocket::on_connect)
        // Signals are ours (`drain`): actix's own handling would cut streams mid-frame.
        .disable_signals()
        .shutdown_timeout((grace + drain::FLUSH).as_secs())
        .listen(listener)?
        .run();
        actix_web::rt::spawn(drain::on_signal(server.handle(), state, grace));
        println!("kooka: listening on http://{addr}");
        server.await
    })?;
    if let Some(leader) = &leader {
        leader.shutdown();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_tool_call_parser_flag_wins_over_the_model_and_its_template() {
        use crate::chat::tools::ParserKind;
        let qwen3_coder =
            "{% if tools %}<tool_call>\n<function={{ name }}>\n<parameter=x>{% endif %}";
        // The model's files say json_tools, the template proves qwen3_coder: the template wins.
        let (kind, _) = tool_parser(Some("json_tools"), Some(qwen3_coder), None);
        assert_eq!(kind, Some(ParserKind::Qwen3Coder));
        // The operator's flag wins over both.
        let (kind, why) = tool_parser(Some("json_tools"), Some(qwen3_coder), Some("json_tools"));
        assert_eq!(kind, Some(ParserKind::JsonTools));
        assert!(why.contains("--tool-call-parser"), "{why}");
    }

    #[test]
    fn the_api_thinking_switch_reaches_a_template_that_names_it_otherwise() {
        let info = |source: &str| ChatInfo {
            thinking_switch: ThinkingSwitch::of(source),
            ..Default::default()
        };
        let on = json!({"enable_thinking": true});
        let on = on.as_object().unwrap();
        let deepseek = info("{%- if not thinking is defined -%}{% set thinking = false %}");
        assert_eq!(deepseek.thinking_kwargs(on)["thinking"], true);
        let minimax = info("{% if thinking_mode == 'enabled' %}");
        assert_eq!(minimax.thinking_kwargs(on)["thinking_mode"], "enabled");
        let qwen = info("{% if enable_thinking is defined and enable_thinking is false %}");
        assert_eq!(
            qwen.thinking_kwargs(on).len(),
            1,
            "Qwen3 reads enable_thinking"
        );
        // The request's own value wins; no switch asked, nothing added.
        let both = json!({"enable_thinking": true, "thinking": false});
        let both = both.as_object().unwrap();
        assert_eq!(deepseek.thinking_kwargs(both)["thinking"], false);
        assert!(deepseek.thinking_kwargs(&Default::default()).is_empty());
    }
}
