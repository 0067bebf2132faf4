//! `kooka models` (list the models this machine can serve) and `kooka models pull ORG/NAME`
//! (download one into the Hugging Face cache): flags and thin runners over
//! [`crate::model::catalog`] and [`crate::model::pull`].

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::model::catalog::{self, ModelEntry};
use crate::model::resolve::hf_cache_dir;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub command: Option<ModelsCommand>,
    /// Model folders, folders of model folders, or cached repo ids (ORG/NAME) to list before
    /// the Hugging Face cache's repos [default: ./models when it exists].
    pub folders: Vec<PathBuf>,
    /// Print a JSON array (id, spec, path, size_bytes, architecture, quantization,
    /// context_length, problem) instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Download a model repo (every file of a revision) into the Hugging Face cache
    /// (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub); `kooka serve --model
    /// ORG/NAME` then serves it. HF_ENDPOINT picks a mirror, HF_TOKEN authenticates.
    Pull(PullArgs),
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The repo id, e.g. mlx-community/Qwen3-4B-4bit.
    pub repo: String,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    pub revision: String,
}

pub fn run_models(args: ModelsArgs) -> anyhow::Result<()> {
    let cache = hf_cache_dir();
    if let Some(ModelsCommand::Pull(pull)) = args.command {
        let mut options = crate::model::pull::PullOptions::from_env(&pull.repo, &cache);
        options.revision = pull.revision;
        let dir = crate::model::pull::pull(&options)
            .with_context(|| format!("pulling {} into {}", pull.repo, cache.display()))?;
        println!("{}: {}", pull.repo, dir.display());
        return Ok(());
    }
    let mut folders = args.folders;
    let default = PathBuf::from("models");
    if folders.is_empty() && default.is_dir() {
        folders.push(default);
    }
    let entries = catalog::list(&folders, &cache);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else if entries.is_empty() {
        eprintln!(
            "kooka: no models in ./models or the Hugging Face cache at {}",
            cache.display()
        );
    } else {
        print!("{}", table(&entries));
    }
    Ok(())
}

/// Aligned columns; the last says what to pass to `--model`, or why it cannot be served.
fn table(entries: &[ModelEntry]) -> String {
    let header = [
        "ID",
        "ARCHITECTURE",
        "QUANTIZATION",
        "CONTEXT",
        "SIZE",
        "SERVE WITH",
    ];
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            let dash = || "-".to_string();
            [
                e.id.clone(),
                e.architecture.clone().unwrap_or_else(dash),
                e.quantization.clone().unwrap_or_else(dash),
                e.context_length.map_or_else(dash, |n| n.to_string()),
                catalog::human_size(e.size_bytes),
                match &e.problem {
                    Some(p) => format!("(not servable: {p})"),
                    None => format!("--model {}", e.spec),
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}
