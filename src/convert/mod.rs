//! `kooka convert --from-gguf FILE --out DIR`: imports a GGUF model (llama / qwen2, GPT-2
//! style BPE vocabulary) as an MLX model folder that mlx-lm can load.
//!
//! Pipeline: [`gguf`] parses and maps the file; [`tensors`] plans each tensor (lossless
//! Q4_1/Q8_0 -> [`affine`] repack, float copy, [`quant`] dequantization to f16 or
//! requantization) and undoes llama.cpp's q/k row [`permute`]ation; [`st_writer`] streams
//! `model.safetensors`; [`tokenizer`] and [`folder`] write the JSON files around it.

pub mod affine;
pub mod folder;
pub mod gguf;
pub mod permute;
pub mod quant;
pub mod st_writer;
pub mod tensors;
pub mod tokenizer;

use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

pub use tokenizer::tokenizer_json_from_gguf;

use folder::QuantMap;
use gguf::GgufFile;
use tensors::Kind;
use tokenizer::Vocab;

use crate::progress::{Progress, Unit};

pub struct ConvertOptions {
    pub from_gguf: PathBuf,
    pub out: PathBuf,
    /// Requantize non-lossless types to this many bits (2..=8) instead of f16.
    pub requantize: Option<u8>,
    pub force: bool,
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: truncated or corrupt GGUF: reading {what} needs {needed} bytes at offset {offset}, but the file has {file_len}", path.display())]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
        needed: u64,
        file_len: u64,
    },
    #[error("{}: malformed GGUF: {msg}", path.display())]
    Malformed { path: PathBuf, msg: String },
    #[error("tensor '{tensor}' has ggml type {type_id} ({}), which this importer does not support", ggml_type_name(*.type_id))]
    UnsupportedType { tensor: String, type_id: u32 },
    #[error("GGUF metadata key '{key}' is missing or not a {expected}")]
    MissingKey { key: String, expected: String },
    #[error("unsupported architecture '{0}' (supported: llama, qwen2)")]
    UnsupportedArchitecture(String),
    #[error("unsupported tokenizer model '{0}' (supported: gpt2 byte-level BPE)")]
    UnsupportedTokenizer(String),
    #[error("unsupported pre-tokenizer tokenizer.ggml.pre = '{pre}' (supported: {supported})")]
    UnsupportedPreTokenizer { pre: String, supported: String },
    #[error("bad tokenizer data: {0}")]
    BadTokenizer(String),
    #[error("unknown tensor '{0}' (not a llama/qwen2 weight this importer knows how to name)")]
    UnknownTensor(String),
    #[error("tensor '{tensor}': {msg}")]
    BadShape { tensor: String, msg: String },
    #[error("output folder {} is not empty (use --force to overwrite)", .0.display())]
    OutDirNotEmpty(PathBuf),
    #[error("{0}")]
    InvalidOption(String),
    #[error("JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ConvertError {
    pub(crate) fn missing(key: &str, expected: &str) -> Self {
        ConvertError::MissingKey {
            key: key.to_string(),
            expected: expected.to_string(),
        }
    }
}

/// ggml's names for type ids, for error messages (including the ones we don't support).
fn ggml_type_name(id: u32) -> &'static str {
    const NAMES: [&str; 31] = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    NAMES.get(id as usize).copied().unwrap_or("unknown")
}

/// What a conversion did.
#[derive(Debug, Clone)]
pub struct ConvertSummary {
    pub architecture: String,
    /// Tensors repacked losslessly into MLX affine form (Q4_1 / Q8_0).
    pub repacked: usize,
    /// F32 / F16 / BF16 tensors copied as they are.
    pub copied: usize,
    /// Tensors dequantized to f16.
    pub dequantized: usize,
    /// Tensors dequantized and requantized to `--requantize` bits.
    pub requantized: usize,
    /// GGUF tensors that are not model weights (e.g. rope_freqs).
    pub skipped: usize,
    pub out: PathBuf,
    pub seconds: f64,
}

impl fmt::Display for ConvertSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "converted {} model: {} tensors repacked losslessly, {} float copied, {} dequantized to f16, {} requantized, {} skipped",
            self.architecture, self.repacked, self.copied, self.dequantized, self.requantized, self.skipped
        )?;
        write!(f, "wrote {} in {:.1}s", self.out.display(), self.seconds)
    }
}

/// Bit widths MLX's affine quantization supports (it rejects 7).
pub const MLX_BITS: [u8; 6] = [2, 3, 4, 5, 6, 8];

/// Converts `options.from_gguf` into an MLX model folder at `options.out`.
pub fn convert(options: &ConvertOptions) -> Result<ConvertSummary, ConvertError> {
    let start = Instant::now();
    if let Some(bits) = options.requantize {
        if !MLX_BITS.contains(&bits) {
            return Err(ConvertError::InvalidOption(format!(
                "--requantize {bits}: MLX affine quantization supports 2, 3, 4, 5, 6 or 8 bits"
            )));
        }
    }
    // Everything that can fail on the input is checked before the output folder is touched.
    let g = GgufFile::open(&options.from_gguf)?;
    let arch = g.req_str("general.architecture")?.to_string();
    folder::hf_architecture(&arch)?;
    let vocab = Vocab::from_gguf(&g)?;
    let tokenizer = vocab.tokenizer_json()?;
    let heads = if arch == "llama" {
        let n = g.req_u64("llama.attention.head_count")? as usize;
        Some((
            n,
            g.opt_u64("llama.attention.head_count_kv")
                .map_or(n, |k| k as usize),
        ))
    } else {
        None
    };
    let mut plans = Vec::new();
    let mut skipped = 0;
    for t in &g.tensors {
        match tensors::plan(t, options.requantize, heads)? {
            Some(p) => plans.push(p),
            None => skipped += 1,
        }
    }
    let quant = quant_map(&plans);
    let config = folder::config_json(&g, &vocab, quant.as_ref())?;

    folder::prepare_out_dir(&options.out, options.force)?;
    let dir = &options.out;
    let parts: Vec<_> = plans.iter().flat_map(|p| &p.parts).collect();
    let mut writer =
        st_writer::StWriter::create(&folder::temp_path(dir, "model.safetensors"), &parts)?;
    let mut progress = match options.progress {
        true => Progress::new("converting", plans.len() as u64, Unit::Items("tensors")),
        false => Progress::hidden(),
    };
    for p in &plans {
        progress.set_message(&p.info.name);
        for bytes in tensors::convert(&g, p)? {
            writer.write(&bytes)?;
        }
        progress.inc(1);
    }
    writer.finish()?;
    progress.finish();
    folder::commit(dir, "model.safetensors")?;
    folder::write_json(dir, "config.json", &config)?;
    folder::write_json(dir, "tokenizer.json", &tokenizer)?;
    folder::write_json(
        dir,
        "tokenizer_config.json",
        &folder::tokenizer_config_json(&g, &vocab),
    )?;
    folder::write_json(
        dir,
        "generation_config.json",
        &folder::generation_config_json(&vocab),
    )?;

    let count = |f: &dyn Fn(Kind) -> bool| plans.iter().filter(|p| f(p.kind)).count();
    Ok(ConvertSummary {
        architecture: arch,
        repacked: count(&|k| k == Kind::Repack),
        copied: count(&|k| k == Kind::Copy),
        dequantized: count(&|k| k == Kind::DequantF16),
        requantized: count(&|k| matches!(k, Kind::Requant(_))),
        skipped,
        out: options.out.clone(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The most common bits among quantized modules, and the modules that differ from it.
fn quant_map(plans: &[tensors::TensorPlan]) -> Option<QuantMap> {
    let quantized: Vec<(&str, u8)> = plans
        .iter()
        .filter_map(|p| Some((p.module.as_str(), p.bits?)))
        .collect();
    let mut counts = [0usize; 9];
    for &(_, b) in &quantized {
        counts[b as usize] += 1;
    }
    // Highest count wins; ties go to the lower bit width (deterministic).
    let bits = (2..=8u8)
        .rev()
        .max_by_key(|&b| counts[b as usize])
        .filter(|&b| counts[b as usize] > 0)?;
    let overrides = quantized
        .iter()
        .filter(|(_, b)| *b != bits)
        .map(|&(m, b)| (m.to_string(), b))
        .collect();
    Some(QuantMap { bits, overrides })
}
