//! The command line: one clap-derive struct per subcommand, each flag with a matching
//! `KOOKA_*` environment variable. Runners here turn parsed flags into library calls.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "kooka", version, about = "MLX inference server (OpenAI / Anthropic APIs), single- or multi-rank")]
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

pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
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
    let report = crate::dist::check::run(args.expect_size, std::time::Duration::from_secs(args.timeout_secs))?;
    println!("{report}");
    Ok(())
}
