//! `kooka serve`'s flags (model, HTTP and security, runtime limits, multi-rank; grouped so in
//! `--help`, and settable from `--config FILE`, see [`super::config`]) and its runner.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::{BackendArg, ComputeDtypeArg, ParallelArg};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Read settings from this TOML file: keys are these flags' long names without `--`
    /// (`max-running = 8`; `max_running` also works); a KOOKA_* variable or a flag on the
    /// command line wins over the file (see kooka.example.toml).
    #[arg(
        long,
        env = "KOOKA_CONFIG",
        value_name = "FILE",
        help_heading = "Configuration"
    )]
    pub config: Option<PathBuf>,
    /// Model folder, or a Hugging Face repo id (org/name) already in the local HF cache.
    #[arg(
        long,
        env = "KOOKA_MODEL",
        default_value = "models/SmolLM2-135M-Instruct",
        help_heading = "Model"
    )]
    pub model: PathBuf,
    /// The name the server answers to and reports (`/v1/models`, each response's `model`):
    /// requests may name it, or the folder / repo id as before [default: the folder's name or
    /// the repo id].
    #[arg(long, env = "KOOKA_SERVED_MODEL_NAME", help_heading = "Model")]
    pub served_model_name: Option<String>,
    #[arg(
        long,
        env = "KOOKA_HOST",
        default_value = "127.0.0.1",
        help_heading = "HTTP and security"
    )]
    pub host: String,
    /// 0 picks a free port (the bound address is printed on stdout).
    #[arg(
        long,
        env = "KOOKA_PORT",
        default_value_t = 8080,
        help_heading = "HTTP and security"
    )]
    pub port: u16,
    /// Larger request bodies are refused with 413.
    #[arg(long, env = "KOOKA_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024, help_heading = "HTTP and security")]
    pub max_body_bytes: usize,
    /// HTTP worker threads (they parse, template and tokenize; the model has its own thread).
    #[arg(
        long,
        env = "KOOKA_HTTP_WORKERS",
        default_value_t = 2,
        help_heading = "HTTP and security"
    )]
    pub http_workers: usize,
    /// Requests generating at once (prefilling or decoding in one batch); more wait.
    #[arg(
        long,
        env = "KOOKA_MAX_RUNNING",
        default_value_t = 64,
        help_heading = "Runtime limits"
    )]
    pub max_running: usize,
    /// Requests waiting to start; beyond it a request gets 429 with Retry-After.
    #[arg(
        long,
        env = "KOOKA_MAX_QUEUE",
        default_value_t = 256,
        help_heading = "Runtime limits"
    )]
    pub max_queue: usize,
    /// Seconds a request may wait to start; then it gets 429 with Retry-After.
    #[arg(
        long,
        env = "KOOKA_QUEUE_TIMEOUT",
        default_value_t = 600,
        help_heading = "Runtime limits"
    )]
    pub queue_timeout: u64,
    /// KV cache memory that admission hands out, in bytes [default: 40% of the memory the
    /// weights leave: a CUDA GPU's own memory, else the machine's]. A request reserves prompt + max_tokens positions; a prompt that can
    /// never fit gets 400.
    #[arg(long, env = "KOOKA_KV_CACHE_BYTES", help_heading = "Runtime limits")]
    pub kv_cache_bytes: Option<usize>,
    /// Prefix (prompt) cache budget in bytes; 0 turns it off [default: 20% of the memory the
    /// weights leave].
    #[arg(
        long,
        env = "KOOKA_PROMPT_CACHE_BYTES",
        help_heading = "Runtime limits"
    )]
    pub prompt_cache_bytes: Option<usize>,
    /// Keep the prefix cache on disk too, in this folder (one subfolder per model and rank):
    /// sequences outlive restarts and memory evictions. Off by default.
    #[arg(
        long,
        env = "KOOKA_PROMPT_CACHE_DIR",
        value_name = "DIR",
        help_heading = "Runtime limits"
    )]
    pub prompt_cache_dir: Option<PathBuf>,
    /// The disk prompt cache's budget in bytes; least recently used blocks go beyond it
    /// [default: half the free space of its file system when the server starts, at most 64 GiB].
    #[arg(
        long,
        env = "KOOKA_PROMPT_CACHE_DISK_BYTES",
        help_heading = "Runtime limits"
    )]
    pub prompt_cache_disk_bytes: Option<u64>,
    /// Prompt tokens read per scheduler step: each step also gives every running stream one
    /// token, so this bounds how long a long prompt stalls them [default: 512 on the CPU
    /// backend, 2048 on Metal, 8192 on CUDA].
    #[arg(long, env = "KOOKA_PREFILL_CHUNK", help_heading = "Runtime limits")]
    pub prefill_chunk: Option<usize>,
    #[command(flatten)]
    pub speculation: super::speculation::SpeculationArgs,
    #[command(flatten)]
    pub kv_cache: super::kv_cache::KvCacheArgs,
    #[arg(long, env = "KOOKA_COMPUTE_DTYPE", value_enum, default_value_t = ComputeDtypeArg::Auto, help_heading = "Model")]
    pub compute_dtype: ComputeDtypeArg,
    /// A chat template to use instead of the model's: a Jinja file, or the template itself
    /// (as mlx_lm.server's `--chat-template` takes it).
    #[arg(long, env = "KOOKA_CHAT_TEMPLATE", help_heading = "Model")]
    pub chat_template: Option<String>,
    /// The model's tool-call format, in place of tokenizer_config.json's `tool_parser_type`
    /// (for a model whose files name none, or the wrong one): json_tools (hermes),
    /// qwen3_coder, minimax_m2, glm45, mistral, llama3_json, pythonic, deepseek, deepseek_v32,
    /// kimi_k2 or harmony.
    #[arg(long, env = "KOOKA_TOOL_CALL_PARSER", value_parser = tool_call_parser, help_heading = "Model")]
    pub tool_call_parser: Option<String>,
    /// A LoRA adapter folder in mlx-lm's format (`mlx_lm.lora`'s `adapter_config.json` and
    /// `adapters.safetensors`), applied to the model's linear layers; one rank only.
    #[arg(long, env = "KOOKA_ADAPTER_PATH", help_heading = "Model")]
    pub adapter_path: Option<PathBuf>,
    /// Require this key on inference routes (`Authorization: Bearer KEY` or `x-api-key`);
    /// `/health` stays public. Visible in `ps`: prefer `--api-key-file` or KOOKA_API_KEY.
    #[arg(
        long,
        env = "KOOKA_API_KEY",
        hide_env_values = true,
        help_heading = "HTTP and security"
    )]
    pub api_key: Option<String>,
    /// Read API keys from this file, one per line (blank lines and `#` comments skipped);
    /// any of them is accepted, together with `--api-key`.
    #[arg(long, env = "KOOKA_API_KEY_FILE", help_heading = "HTTP and security")]
    pub api_key_file: Option<PathBuf>,
    /// Origins whose pages may call the server (CORS), comma-separated; `*` allows any
    /// [default: without an API key, loopback pages only (http://localhost:*, 127.0.0.1,
    /// [::1]); with one, any].
    #[arg(
        long,
        env = "KOOKA_ALLOWED_ORIGINS",
        value_delimiter = ',',
        help_heading = "HTTP and security"
    )]
    pub allowed_origins: Option<Vec<String>>,
    /// Host names requests may be addressed to besides loopback names and IP addresses
    /// (`.example.com` also allows its subdomains), comma-separated; `*` allows any
    /// [default: without an API key, none (protection against DNS rebinding); with one, any].
    #[arg(
        long,
        env = "KOOKA_ALLOWED_HOSTS",
        value_delimiter = ',',
        help_heading = "HTTP and security"
    )]
    pub allowed_hosts: Option<Vec<String>>,
    /// Seconds a request body may take to arrive once its headers have; a slower one gets
    /// 408 and its connection is closed.
    #[arg(
        long,
        env = "KOOKA_BODY_TIMEOUT_SECS",
        default_value_t = 30,
        help_heading = "HTTP and security"
    )]
    pub body_timeout_secs: u64,
    /// After SIGTERM or SIGINT: seconds requests in flight may still run before they are
    /// ended with an error (new ones get 503 at once). A second signal ends them at once.
    #[arg(
        long,
        env = "KOOKA_SHUTDOWN_GRACE",
        default_value_t = 30,
        help_heading = "Runtime limits"
    )]
    pub shutdown_grace: u64,
    /// `/health` answers 503 `stuck` while one engine step has run longer than this many
    /// seconds (a step is one prefill chunk plus one token for every running stream).
    #[arg(
        long,
        env = "KOOKA_HEALTH_STUCK_SECS",
        default_value_t = 120,
        help_heading = "Runtime limits"
    )]
    pub health_stuck_secs: u64,
    /// Stream each OpenAI chat tool call's arguments as they are generated; by default a
    /// call is sent whole in one delta once it is complete (as kooka-server and mlx-lm do).
    #[arg(
        long,
        env = "KOOKA_INCREMENTAL_TOOL_CALLS",
        help_heading = "HTTP and security"
    )]
    pub incremental_tool_calls: bool,
    /// Multi-rank runs (set up by `kooka launch` or mlx.launch): how the model is split over
    /// the ranks. Use the same flags on every rank.
    #[arg(long, env = "KOOKA_PARALLEL", value_enum, default_value_t = ParallelArg::Pipeline, help_heading = "Multi-rank")]
    pub parallel: ParallelArg,
    /// Pipeline: layers per rank in rank order (e.g. 25,37), summing to the model's layer
    /// count; default an even split.
    #[arg(
        long,
        env = "KOOKA_PIPELINE_SPLIT",
        value_delimiter = ',',
        help_heading = "Multi-rank"
    )]
    pub pipeline_split: Option<Vec<usize>>,
    /// Multi-rank: the MLX distributed backend. auto: what the launcher set up (MLX_HOSTFILE:
    /// ring; NCCL_HOST_IP / MLX_WORLD_SIZE: nccl).
    #[arg(long, env = "KOOKA_BACKEND", value_enum, default_value_t = BackendArg::Auto, help_heading = "Multi-rank")]
    pub backend: BackendArg,
    /// Multi-rank: rank 0's control-plane port (default: one above the highest port in
    /// MLX_HOSTFILE; under nccl one above NCCL_PORT).
    #[arg(long, env = "KOOKA_CONTROL_PORT", help_heading = "Multi-rank")]
    pub control_port: Option<u16>,
    /// Multi-rank: every rank must join and load its shard within this many seconds.
    #[arg(
        long,
        env = "KOOKA_STARTUP_TIMEOUT_SECS",
        default_value_t = 300,
        help_heading = "Multi-rank"
    )]
    pub startup_timeout_secs: u64,
}

/// How long an exiting server waits for queued disk prompt cache writes.
const WRITES_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(30);

pub fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let dir =
        crate::model::resolve::resolve_model(&args.model, &crate::model::resolve::hf_cache_dir())?;
    let parallel = super::multi_rank::parallel_spec(args.parallel, args.pipeline_split)?;
    // No launcher environment: single rank, and the multi-rank flags are unused.
    let topology = crate::dist::Topology::from_env(args.backend.backend())?;
    topology.apply_process_defaults();
    let cluster = crate::cluster::ClusterConfig::from_topology(
        &topology,
        parallel,
        args.control_port,
        std::time::Duration::from_secs(args.startup_timeout_secs),
        &dir,
    )?;
    if cluster.is_some() && args.adapter_path.is_some() {
        anyhow::bail!(
            "--adapter-path runs on one rank for now: serve the model whole, or fuse the \
             adapter into it with `mlx_lm.fuse`"
        );
    }
    let draft_model = args.speculation.draft_dir(&dir)?;
    let kv_quantization = args.kv_cache.config()?;
    if cluster.is_some() && draft_model.is_some() {
        anyhow::bail!("--draft-model runs on one rank for now: use --speculative ngram");
    }
    let disk_cache = args
        .prompt_cache_dir
        .as_deref()
        .map(|d| disk_cache_config(d, args.prompt_cache_disk_bytes))
        .transpose()?;
    if let Some(cluster) = cluster.as_ref().filter(|c| c.rank > 0) {
        // Only rank 0 serves HTTP; the others follow its engine operations.
        crate::cluster::follower::run(
            cluster,
            &dir,
            args.compute_dtype.into(),
            disk_cache.as_ref(),
            kv_quantization,
        )
        .with_context(|| format!("rank {}", cluster.rank))?;
        crate::engine::disk_cache::finish_writes(WRITES_AT_EXIT);
        return Ok(());
    }
    let listener = std::net::TcpListener::bind((args.host.as_str(), args.port))
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    let config = crate::server::ServeConfig {
        model_dir: dir,
        served_name: args.served_model_name.filter(|n| !n.trim().is_empty()),
        aliases: vec![args.model.display().to_string()],
        dtype: args.compute_dtype.into(),
        max_body_bytes: args.max_body_bytes,
        workers: args.http_workers,
        api_keys: api_keys(args.api_key, args.api_key_file.as_deref())?,
        allowed_origins: args.allowed_origins,
        allowed_hosts: args.allowed_hosts,
        body_timeout: std::time::Duration::from_secs(args.body_timeout_secs.max(1)),
        shutdown_grace: std::time::Duration::from_secs(args.shutdown_grace),
        stuck_step: std::time::Duration::from_secs(args.health_stuck_secs.max(1)),
        runtime: crate::runtime::RuntimeConfig {
            max_running: args.max_running,
            max_queue: args.max_queue,
            kv_cache_bytes: args.kv_cache_bytes,
            prompt_cache_bytes: args.prompt_cache_bytes,
            disk_cache,
            prefill_chunk: args.prefill_chunk,
            speculation: args.speculation.config(),
            adapter: args.adapter_path.clone(),
            draft_model,
            kv_quantization,
            queue_timeout: std::time::Duration::from_secs(args.queue_timeout.max(1)),
        },
        incremental_tool_calls: args.incremental_tool_calls,
        chat_template: args
            .chat_template
            .as_deref()
            .map(chat_template_source)
            .transpose()?,
        tool_call_parser: args.tool_call_parser,
    };
    warn_if_unreachable_by_name(&listener, &config);
    let leader = cluster
        .map(crate::cluster::Leader::start)
        .transpose()
        .context("rank 0")?;
    crate::server::run_ranked(listener, config, leader)?;
    // The disk prompt cache's writer finishes what it queued before the process exits.
    crate::engine::disk_cache::finish_writes(WRITES_AT_EXIT);
    Ok(())
}

/// `--prompt-cache-dir` (created if missing) and its budget: the flag's, or half the free
/// space of its file system (at most 64 GiB).
fn disk_cache_config(
    dir: &std::path::Path,
    budget: Option<u64>,
) -> anyhow::Result<crate::engine::DiskCacheConfig> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--prompt-cache-dir {}", dir.display()))?;
    let budget_bytes = match budget {
        Some(b) => b,
        None => (free_bytes(dir).unwrap_or(0) / 2).min(64 << 30),
    };
    Ok(crate::engine::DiskCacheConfig {
        dir: dir.to_path_buf(),
        budget_bytes,
        block_tokens: crate::engine::disk_cache::DEFAULT_BLOCK_TOKENS,
    })
}

/// Free bytes of the file system holding `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a zeroed struct for the call to fill.
    (unsafe { libc::statvfs(path.as_ptr(), &mut st) } == 0)
        .then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// `--api-key` and the keys of `--api-key-file` (one per line, `#` comments skipped).
fn api_keys(key: Option<String>, file: Option<&std::path::Path>) -> anyhow::Result<Vec<String>> {
    let mut keys: Vec<String> = key.into_iter().filter(|k| !k.is_empty()).collect();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --api-key-file {}", path.display()))?;
        let before = keys.len();
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
        anyhow::ensure!(
            keys.len() > before,
            "--api-key-file {} holds no key (one per line; `#` starts a comment)",
            path.display()
        );
    }
    Ok(keys)
}

/// `--tool-call-parser`: a format name kooka reads (or one of the aliases other servers use).
fn tool_call_parser(name: &str) -> Result<String, String> {
    match crate::chat::tools::ParserKind::from_name(name) {
        Some(kind) => Ok(kind.name().to_string()),
        None => Err(format!(
            "unknown tool-call format `{name}` (known: json_tools, qwen3_coder, minimax_m2, glm45, mistral, llama3_json, pythonic, deepseek, deepseek_v32, kimi_k2, harmony)"
        )),
    }
}

/// `--chat-template`: a file's text, or the argument itself when it names no file (a
/// template always holds `{{` or `{%`, so a mistyped path is an error, not a template).
fn chat_template_source(arg: &str) -> anyhow::Result<String> {
    let path = std::path::Path::new(arg);
    if path.is_file() {
        return std::fs::read_to_string(path)
            .with_context(|| format!("reading the chat template {}", path.display()));
    }
    if arg.contains("{{") || arg.contains("{%") {
        return Ok(arg.to_string());
    }
    anyhow::bail!("--chat-template {arg}: no such file, and not a Jinja template either")
}

/// Bound beyond loopback without an API key: the server still answers only requests
/// addressed to loopback names or IP addresses, and pages of loopback origins (DNS
/// rebinding; docs/API.md "Who may call the server"). Says so at startup, so that a client
/// reaching it by a host name (`mymac.local`, Docker's `host.docker.internal`) is not a
/// surprise 403.
fn warn_if_unreachable_by_name(
    listener: &std::net::TcpListener,
    config: &crate::server::ServeConfig,
) {
    let beyond_loopback = listener.local_addr().is_ok_and(|a| !a.ip().is_loopback());
    if beyond_loopback && config.api_keys.is_empty() && config.allowed_hosts.is_none() {
        tracing::warn!(
            "listening beyond loopback without an API key: requests addressed by a host name \
             other than localhost get 403 (add it with --allowed-hosts, or set --api-key), and \
             browser pages need --allowed-origins"
        );
    }
}
