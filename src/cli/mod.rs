//! The command line: one clap-derive struct per subcommand, each flag with a matching
//! `KOOKA_*` environment variable. Runners here turn parsed flags into library calls.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

mod config;
mod kv_cache;
mod models;
mod multi_rank;
mod serve;
mod speculation;
pub use config::{parse, parse_from, ConfigError, ParseError};
pub use models::{run_models, ModelsArgs};
pub use multi_rank::{BackendArg, ParallelArg};
pub use serve::{run_serve, ServeArgs};

#[derive(Debug, Parser)]
#[command(
    name = "kooka",
    version,
    about = "MLX inference server (OpenAI / Anthropic APIs), single- or multi-rank"
)]
pub struct Cli {
    /// Log line format on stderr (filter with RUST_LOG, default `info`).
    #[arg(long, global = true, env = "KOOKA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, help_heading = "Logging")]
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
    /// Serve the model over OpenAI-compatible HTTP; with MLX_RANK / MLX_HOSTFILE set, as one
    /// rank of a multi-rank run (rank 0 serves HTTP, the others follow it). Every flag can
    /// also come from `--config FILE` (TOML) or a KOOKA_* variable: flag > variable > file.
    Serve(ServeArgs),
    /// List the models this machine can serve (./models/* or the given folders, and the
    /// Hugging Face cache) with size, architecture, quantization and context length; `pull
    /// ORG/NAME` downloads one into the cache.
    Models(ModelsArgs),
    /// Measure prefill and decode tokens/s on one prompt (what scripts/bench.py compares
    /// with mlx-lm).
    Bench(BenchArgs),
    /// Start and supervise the ranks of a multi-process run (like mlx.launch: ring or nccl backend).
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
    /// Sequences started together (continuous batching): decode is then their aggregate.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Prompt tokens prefilled per engine step.
    #[arg(long, default_value_t = 2048)]
    pub prefill_chunk: usize,
    /// Print one JSON line (all repetitions) instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Instead: the time to the first token of the prompt cold, resent (from the prefix
    /// cache) and resent with this many more tokens (engine only, no HTTP or tokenizer).
    #[arg(long, value_name = "EXTRA_TOKENS")]
    pub resend: Option<usize>,
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
    /// The MLX distributed backend (auto: what the launcher set up).
    #[arg(long, env = "KOOKA_BACKEND", value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
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
    /// Subtracted once from the logit of every token seen in the last
    /// `--presence-context-size` tokens.
    #[arg(long)]
    pub presence_penalty: Option<f32>,
    #[arg(long, default_value_t = 20)]
    pub presence_context_size: usize,
    /// Subtracted per occurrence in the last `--frequency-context-size` tokens.
    #[arg(long)]
    pub frequency_penalty: Option<f32>,
    #[arg(long, default_value_t = 20)]
    pub frequency_context_size: usize,
    /// Added to a token's logit: `ID:BIAS` (repeatable, or comma-separated).
    #[arg(long = "logit-bias", value_delimiter = ',', value_parser = parse_logit_bias)]
    pub logit_bias: Vec<(u32, f32)>,
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
    /// Constrain the reply to JSON valid for this schema (a file, or the JSON text itself).
    #[arg(long, conflicts_with = "json_object")]
    pub json_schema: Option<String>,
    /// Constrain the reply to a JSON object.
    #[arg(long)]
    pub json_object: bool,
    /// Multi-rank runs (e.g. `kooka launch -n 2 -- kooka generate ...`): how the model is
    /// split over the ranks. Every rank generates in lockstep; only rank 0 prints the text.
    /// Use the same flags on every rank.
    #[arg(long, env = "KOOKA_PARALLEL", value_enum, default_value_t = ParallelArg::Pipeline)]
    pub parallel: ParallelArg,
    /// Multi-rank: the MLX distributed backend (auto: what the launcher set up).
    #[arg(long, env = "KOOKA_BACKEND", value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// Pipeline: layers per rank in rank order (e.g. 25,37), summing to the model's layer
    /// count; default an even split.
    #[arg(long, env = "KOOKA_PIPELINE_SPLIT", value_delimiter = ',')]
    pub pipeline_split: Option<Vec<usize>>,
    /// A LoRA adapter folder in mlx-lm's format (`mlx_lm.lora`'s `adapter_config.json` and
    /// `adapters.safetensors`), applied to the model's linear layers.
    #[arg(long, env = "KOOKA_ADAPTER_PATH")]
    pub adapter_path: Option<PathBuf>,
    #[command(flatten)]
    pub speculation: speculation::SpeculationArgs,
    #[command(flatten)]
    pub kv_cache: kv_cache::KvCacheArgs,
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
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files and journals.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
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
        args.backend.backend(),
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
    let parallel = multi_rank::parallel_spec(args.parallel, args.pipeline_split.clone())?;
    let shard = multi_rank::join_shard(&parallel, args.backend)?;
    let rank = shard.as_ref().map_or(0, |s| s.group.rank());
    let shard_free = shard.is_none();
    let model = crate::model::load_model_with(&dir, dtype, shard, args.adapter_path.as_deref())
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
    let constraint = generate_constraint(&args)?;
    let mut engine = crate::engine::Engine::new(model);
    if constraint.is_some() {
        let tok = tokenizer
            .as_ref()
            .context("--json-schema / --json-object need the model's tokenizer")?;
        engine.set_constrainer(crate::constrain::Constrainer::new(tok)?);
    }
    engine.set_prefill_chunk(args.prefill_step_size);
    engine.configure(crate::engine::EngineConfig {
        speculation: args.speculation.config(),
        kv_quantization: args.kv_cache.config()?,
        ..engine.config()
    });
    if let Some(d) = args.speculation.draft_dir(&dir)? {
        anyhow::ensure!(
            rank == 0 && shard_free,
            "--draft-model runs on one rank for now"
        );
        let draft = crate::model::load_model(&d, dtype)
            .with_context(|| format!("loading the draft model {}", d.display()))?;
        engine.set_draft_model(draft)?;
    }
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
            presence_penalty: args.presence_penalty,
            presence_context_size: args.presence_context_size,
            frequency_penalty: args.frequency_penalty,
            frequency_context_size: args.frequency_context_size,
            logit_bias: args.logit_bias.clone(),
            ..Default::default()
        },
        stop_strings: args.stop.clone(),
        eos_ids: tokenizer
            .as_ref()
            .map(|t| t.eos_ids.clone())
            .unwrap_or_default(),
        ignore_eos: args.ignore_eos,
        return_prompt_logits: args.print_logits.is_some(),
        constraint,
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
            if rank == 0 {
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
        },
        &mut |_| {},
    )?;
    if args.print_tokens {
        // Every rank prints its tokens: the debug output shows the ranks in lockstep.
        let json = serde_json::json!({"prompt_tokens": prompt_ids, "tokens": stats.tokens, "finish": stats.finish});
        writeln!(out, "{json}")?;
    } else if rank == 0 {
        writeln!(out)?;
    }
    // The text ends before the stats line starts, also when both go to one terminal.
    out.flush()?;
    if let Some(path) = &args.print_logits {
        let logits = stats.prompt_logits.clone().unwrap_or_default();
        // Rank r > 0 writes next to rank 0's file, as `<path>.rank<r>`.
        let path = match rank {
            0 => path.clone(),
            r => PathBuf::from(format!("{}.rank{r}", path.display())),
        };
        let path = &path;
        std::fs::write(path, serde_json::to_string(&logits)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("{stats}");
    if let Some(s) = engine.status().speculation {
        eprintln!(
            "speculation: {} of {} draft tokens kept ({:.1}%) in {} verify steps",
            s.accepted,
            s.drafted,
            100.0 * s.accepted as f64 / s.drafted.max(1) as f64,
            s.steps
        );
    }
    Ok(())
}

/// `--json-schema` (strict) / `--json-object` as a grammar.
fn generate_constraint(args: &GenerateArgs) -> anyhow::Result<Option<crate::constrain::Grammar>> {
    use crate::constrain::Grammar;
    if args.json_object {
        return Ok(Some(Grammar::json_object()));
    }
    let Some(arg) = &args.json_schema else {
        return Ok(None);
    };
    let text = match std::path::Path::new(arg).is_file() {
        true => std::fs::read_to_string(arg).with_context(|| format!("reading {arg}"))?,
        false => arg.clone(),
    };
    let schema = serde_json::from_str(&text)
        .with_context(|| "--json-schema is neither a readable file nor JSON".to_string())?;
    Ok(Some(Grammar::json_schema(&schema, true)?))
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
        batch: args.batch,
        prefill_chunk: args.prefill_chunk,
    };
    if let Some(extra) = args.resend {
        let report = crate::bench::run_resend(&options, extra)?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            let m = |v: &[f64]| BenchReport::median(v);
            let cold = m(&report.cold_ms);
            println!(
                "prompt {} tokens, first token (engine only): cold {:.1} ms | resent {:.1} ms ({:.1}% of cold) | +{} tokens {:.1} ms (median of {})",
                report.prompt_tokens,
                cold,
                m(&report.resent_ms),
                100.0 * m(&report.resent_ms) / cold,
                report.extra_tokens,
                m(&report.extended_ms),
                options.reps
            );
        }
        return Ok(());
    }
    let report = crate::bench::run(&options)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "batch {} x prompt {} tokens: prefill {:.1} tokens/s | decode ({} tokens) {:.1} tokens/s | peak memory {:.2} GB (median of {}){}",
            report.batch,
            report.prompt_tokens,
            BenchReport::median(&report.prefill_tps),
            report.gen_tokens,
            BenchReport::median(&report.decode_tps),
            report.peak_memory_gb,
            options.reps,
            match &report.blas_kernels {
                Some(core) => format!(" | OpenBLAS kernels {core}"),
                None => String::new(),
            }
        );
    }
    Ok(())
}

/// `ID:BIAS` for `--logit-bias`.
fn parse_logit_bias(s: &str) -> Result<(u32, f32), String> {
    let (id, bias) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected TOKEN_ID:BIAS, e.g. 42:-100"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|e| format!("token id {id:?}: {e}"))?;
    let bias = bias
        .trim()
        .parse()
        .map_err(|e| format!("bias {bias:?}: {e}"))?;
    Ok((id, bias))
}
