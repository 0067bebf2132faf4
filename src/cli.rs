//! The command line: one clap-derive struct per subcommand, each flag with a matching
//! `KOOKA_*` environment variable. Runners here turn parsed flags into library calls.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "kooka",
    version,
    about = "MLX inference server (OpenAI / Anthropic APIs), single- or multi-rank"
)]
pub struct Cli {
    /// Log line format on stderr (filter with RUST_LOG, default `info`).
    #[arg(long, global = true, env = "KOOKA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import a GGUF file as an MLX model folder (config.json, model.safetensors, tokenizer).
    Convert(ConvertArgs),
    /// Check MLX's distributed group: rank, size, all_sum, all_gather, send/recv around the ring.
    /// Run it under `mlx.launch` (or with MLX_RANK / MLX_HOSTFILE set) on every rank.
    DistCheck(DistCheckArgs),
    /// Generate text from a prompt with a local MLX model folder, streaming to stdout.
    Generate(GenerateArgs),
    /// Serve the model over OpenAI-compatible HTTP (single rank).
    Serve(ServeArgs),
    /// Measure prefill and decode tokens/s on one prompt (what scripts/bench.py compares
    /// with mlx-lm).
    Bench(BenchArgs),
    /// Start and supervise the ranks of a multi-process run (like mlx.launch, ring backend).
    Launch(kooka_launcher::LaunchArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model folder, or a Hugging Face repo id (org/name) in the local HF cache (default: models/SmolLM2-135M-Instruct, or $KOOKA_MODEL).
    #[arg(
        long,
        env = "KOOKA_MODEL",
        default_value = "models/SmolLM2-135M-Instruct"
    )]
    pub model: PathBuf,
    /// JSON file with the prompt's token ids (a list of integers).
    #[arg(long, conflicts_with = "prompt_tokens")]
    pub prompt_ids_file: Option<PathBuf>,
    /// Or: a synthetic prompt of this many token ids.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Timed repetitions after one warm-up.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    #[arg(long, value_enum, default_value_t = ComputeDtypeArg::Auto)]
    pub compute_dtype: ComputeDtypeArg,
    /// Print one JSON line (all repetitions) instead of the summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The GGUF file to import.
    #[arg(long, env = "KOOKA_FROM_GGUF")]
    pub from_gguf: PathBuf,
    /// Output folder (created; must be empty or absent unless --force).
    #[arg(long, env = "KOOKA_OUT")]
    pub out: PathBuf,
    /// Requantize tensors that have no lossless MLX equivalent (Q4_K, Q5_0, Q6_K, ...) to
    /// this many bits (affine, group 32) instead of storing them dequantized as float16.
    #[arg(long, env = "KOOKA_REQUANTIZE", value_parser = clap::value_parser!(u8).range(2..=8))]
    pub requantize: Option<u8>,
    /// Overwrite an existing, non-empty output folder.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct DistCheckArgs {
    /// Fail unless the group has exactly this many ranks.
    #[arg(long)]
    pub expect_size: Option<usize>,
    /// Give up (exit 1) if the group is not formed and checked within this many seconds;
    /// a rank that never starts would otherwise block the ring forever.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model folder, or a Hugging Face repo id (org/name) already in the local HF cache (default: models/SmolLM2-135M-Instruct).
    #[arg(
        long,
        env = "KOOKA_MODEL",
        default_value = "models/SmolLM2-135M-Instruct"
    )]
    pub model: PathBuf,
    /// The prompt (the user message when the chat template is applied).
    #[arg(long, default_value = "")]
    pub prompt: String,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: i32,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    #[arg(long, default_value_t = 20)]
    pub repetition_context_size: usize,
    #[arg(long, default_value_t = 2048)]
    pub prefill_step_size: usize,
    /// Stop when this text appears (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Apply the chat template (default: when the tokenizer has one).
    #[arg(long, overrides_with = "no_chat")]
    pub chat: bool,
    #[arg(long, overrides_with = "chat")]
    pub no_chat: bool,
    /// Weight/compute dtype; auto = float32 (dequantized) on CPU, as stored on GPU.
    #[arg(long, value_enum, default_value_t = ComputeDtypeArg::Auto)]
    pub compute_dtype: ComputeDtypeArg,
    /// Debug: comma-separated prompt token ids instead of --prompt (no tokenizer needed).
    #[arg(long, hide = true, value_delimiter = ',')]
    pub prompt_tokens: Option<Vec<u32>>,
    /// Debug: print `{"prompt_tokens", "tokens", "finish"}` (JSON) on stdout instead of text.
    #[arg(long, hide = true)]
    pub print_tokens: bool,
    /// Debug: write the last prompt position's logits (JSON list) to this file.
    #[arg(long, hide = true)]
    pub print_logits: Option<PathBuf>,
    /// Debug: do not stop at EOS.
    #[arg(long, hide = true)]
    pub ignore_eos: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model folder, or a Hugging Face repo id (org/name) already in the local HF cache.
    #[arg(
        long,
        env = "KOOKA_MODEL",
        default_value = "models/SmolLM2-135M-Instruct"
    )]
    pub model: PathBuf,
    #[arg(long, env = "KOOKA_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (the bound address is printed on stdout).
    #[arg(long, env = "KOOKA_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Larger request bodies are refused with 413.
    #[arg(long, env = "KOOKA_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// HTTP worker threads (they parse, template and tokenize; the model has its own thread).
    #[arg(long, env = "KOOKA_HTTP_WORKERS", default_value_t = 2)]
    pub http_workers: usize,
    #[arg(long, env = "KOOKA_COMPUTE_DTYPE", value_enum, default_value_t = ComputeDtypeArg::Auto)]
    pub compute_dtype: ComputeDtypeArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ComputeDtypeArg {
    Auto,
    Native,
    F32,
    F16,
    Bf16,
}

impl From<ComputeDtypeArg> for crate::model::ComputeDtype {
    fn from(arg: ComputeDtypeArg) -> Self {
        use crate::model::ComputeDtype;
        match arg {
            ComputeDtypeArg::Auto => ComputeDtype::Auto,
            ComputeDtypeArg::Native => ComputeDtype::Native,
            ComputeDtypeArg::F32 => ComputeDtype::F32,
            ComputeDtypeArg::F16 => ComputeDtype::F16,
            ComputeDtypeArg::Bf16 => ComputeDtype::Bf16,
        }
    }
}

pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn run_convert(args: ConvertArgs) -> anyhow::Result<()> {
    let options = crate::convert::ConvertOptions {
        from_gguf: args.from_gguf,
        out: args.out,
        requantize: args.requantize,
        force: args.force,
        progress: true,
    };
    let summary = crate::convert::convert(&options)
        .with_context(|| format!("converting {}", options.from_gguf.display()))?;
    println!("{summary}");
    Ok(())
}

pub fn run_dist(args: DistCheckArgs) -> anyhow::Result<()> {
    let report = crate::dist::check::run(
        args.expect_size,
        std::time::Duration::from_secs(args.timeout_secs),
    )?;
    println!("{report}");
    Ok(())
}

pub fn run_generate(args: GenerateArgs) -> anyhow::Result<()> {
    use std::io::Write;

    use crate::engine::generate::{generate, GenerateOptions};
    use crate::engine::sampling::SamplingParams;
    use crate::model::ComputeDtype;

    let dtype: ComputeDtype = args.compute_dtype.into();
    let dir =
        crate::model::resolve::resolve_model(&args.model, &crate::model::resolve::hf_cache_dir())?;
    let model = crate::model::load_model(&dir, dtype)
        .with_context(|| format!("loading {}", dir.display()))?;
    let needs_tokenizer = args.prompt_tokens.is_none() || !args.print_tokens;
    let tokenizer = if needs_tokenizer {
        Some(crate::tokenizer::Tokenizer::load(&dir)?)
    } else {
        None
    };
    let prompt = match (&args.prompt_tokens, &tokenizer) {
        (Some(ids), _) => ids.clone(),
        (None, Some(tok)) => {
            let chat = if args.no_chat {
                false
            } else {
                args.chat || tok.chat_template.is_some()
            };
            if chat {
                let messages = serde_json::json!([{"role": "user", "content": args.prompt}]);
                tok.encode(&tok.apply_chat_template(&messages, true)?, false)?
            } else {
                tok.encode(&args.prompt, true)?
            }
        }
        (None, None) => unreachable!("a tokenizer is loaded whenever no token ids are given"),
    };
    let mut engine = crate::engine::Engine::new(model);
    engine.prefill_step_size = args.prefill_step_size;
    let opts = GenerateOptions {
        max_tokens: args.max_tokens,
        params: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            min_p: args.min_p,
            seed: args.seed,
            repetition_penalty: args.repetition_penalty,
            repetition_context_size: args.repetition_context_size,
            ..Default::default()
        },
        stop_strings: args.stop.clone(),
        eos_ids: tokenizer
            .as_ref()
            .map(|t| t.eos_ids.clone())
            .unwrap_or_default(),
        ignore_eos: args.ignore_eos,
        return_prompt_logits: args.print_logits.is_some(),
    };
    let mut out = std::io::stdout().lock();
    let decoder = if args.print_tokens {
        None
    } else {
        tokenizer
            .as_ref()
            .map(|t| t as &dyn crate::engine::text::Decode)
    };
    let prompt_ids = prompt.clone();
    let stats = generate(
        &mut engine,
        decoder,
        prompt,
        &opts,
        &mut |text| {
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        },
        &mut |_| {},
    )?;
    if args.print_tokens {
        let json = serde_json::json!({"prompt_tokens": prompt_ids, "tokens": stats.tokens, "finish": stats.finish});
        writeln!(out, "{json}")?;
    } else {
        writeln!(out)?;
    }
    // The text ends before the stats line starts, also when both go to one terminal.
    out.flush()?;
    if let Some(path) = &args.print_logits {
        let logits = stats.prompt_logits.clone().unwrap_or_default();
        std::fs::write(path, serde_json::to_string(&logits)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("{stats}");
    Ok(())
}

pub fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let dir =
        crate::model::resolve::resolve_model(&args.model, &crate::model::resolve::hf_cache_dir())?;
    let listener = std::net::TcpListener::bind((args.host.as_str(), args.port))
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    let config = crate::server::ServeConfig {
        model_dir: dir,
        aliases: vec![args.model.display().to_string()],
        dtype: args.compute_dtype.into(),
        max_body_bytes: args.max_body_bytes,
        workers: args.http_workers,
    };
    crate::server::run(listener, config)?;
    Ok(())
}

pub fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    use crate::bench::{BenchOptions, BenchReport};
    let prompt_ids: Vec<u32> = match &args.prompt_ids_file {
        Some(path) => serde_json::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("{} is not a JSON list of token ids", path.display()))?,
        // Ids 100.. are ordinary tokens in every vocabulary kooka serves.
        None => (0..args.prompt_tokens as u32)
            .map(|i| 100 + i % 1000)
            .collect(),
    };
    let options = BenchOptions {
        model: crate::model::resolve::resolve_model(
            &args.model,
            &crate::model::resolve::hf_cache_dir(),
        )?,
        prompt_ids,
        gen_tokens: args.gen_tokens,
        reps: args.reps,
        dtype: args.compute_dtype.into(),
    };
    let report = crate::bench::run(&options)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "prompt {} tokens: prefill {:.1} tokens/s | decode ({} tokens) {:.1} tokens/s | peak memory {:.2} GB (median of {})",
            report.prompt_tokens,
            BenchReport::median(&report.prefill_tps),
            report.gen_tokens,
            BenchReport::median(&report.decode_tps),
            report.peak_memory_gb,
            options.reps
        );
    }
    Ok(())
}
