//! `kooka serve` on one rank: an actix-web server whose handlers ([`openai`]) validate and
//! tokenize requests, and one dedicated MLX thread ([`model_thread`]) that owns the model
//! and the engine and streams each request's text back over its own channel. Handlers
//! never run MLX, so generation never blocks an actix worker.

pub mod error;
pub mod model_thread;
pub mod openai;
pub mod request;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc};

use actix_web::{web, App, HttpServer};
use tracing::info;

use crate::chat::{ChatTemplate, SpecialTokens};
use crate::model::ComputeDtype;
use crate::tokenizer::Tokenizer;
pub use error::{ApiError, ServeError};
use model_thread::Command;

/// `max_tokens` when neither the request nor the model's context bounds it.
pub const DEFAULT_MAX_TOKENS: usize = 4096;

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The resolved model folder.
    pub model_dir: PathBuf,
    /// Other names the `model` request field may use (e.g. the path as given).
    pub aliases: Vec<String>,
    pub dtype: ComputeDtype,
    /// Larger request bodies get a 413.
    pub max_body_bytes: usize,
    /// actix worker threads (they only parse, template and tokenize).
    pub workers: usize,
}

/// What every handler shares.
pub struct AppState {
    /// The served model's id (its folder name).
    pub model_id: String,
    pub aliases: Vec<String>,
    pub created: u64,
    pub template: Option<ChatTemplate>,
    pub tokenizer: Arc<Tokenizer>,
    pub commands: mpsc::Sender<Command>,
    pub max_position_embeddings: Option<usize>,
    pub max_body_bytes: usize,
    pub next_id: AtomicU64,
}

impl AppState {
    /// Whether a request's `model` names the served model.
    pub fn serves(&self, model: &str) -> bool {
        model == self.model_id || self.aliases.iter().any(|a| a == model)
    }
}

/// The routes (the App factory's body; tests and `run` share it).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(openai::health))
        .route("/v1/models", web::get().to(openai::models))
        .route(
            "/v1/chat/completions",
            web::post().to(openai::chat_completions),
        )
        .route(
            "/chat/completions",
            web::post().to(openai::chat_completions),
        );
}

fn model_id(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// Loads the model (on its own thread), then serves on `listener` until the process is
/// stopped. Prints `kooka: listening on http://ADDR` on stdout once requests can be served.
pub fn run(listener: TcpListener, config: ServeConfig) -> Result<(), ServeError> {
    let dir = &config.model_dir;
    let tokenizer = Arc::new(Tokenizer::load(dir)?);
    let template = match &tokenizer.chat_template {
        Some(source) => Some(ChatTemplate::new(
            source,
            SpecialTokens {
                bos: tokenizer.bos_token.clone(),
                eos: tokenizer.eos_token.clone(),
                ..Default::default()
            },
        )?),
        None => None,
    };
    let (commands, info) = model_thread::spawn(dir.clone(), config.dtype, tokenizer.clone())?;
    let mut aliases = config.aliases.clone();
    aliases.push(dir.display().to_string());
    let state = web::Data::new(AppState {
        model_id: model_id(dir),
        aliases,
        created: openai::unix_now(),
        template,
        tokenizer,
        commands,
        max_position_embeddings: info.max_position_embeddings,
        max_body_bytes: config.max_body_bytes,
        next_id: AtomicU64::new(0),
    });
    let addr = listener.local_addr()?;
    info!(model = %state.model_id, %addr, "serving");
    let workers = config.workers.max(1);
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .configure(routes)
                .default_service(web::to(openai::not_found))
        })
        .workers(workers)
        .listen(listener)?
        .run();
        println!("kooka: listening on http://{addr}");
        server.await
    })?;
    Ok(())
}
