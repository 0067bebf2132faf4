//! The MLX model folder around the weights: `config.json` (HF fields plus MLX's quantization
//! map), `tokenizer_config.json`, `generation_config.json`, and the small filesystem rules
//! (output folder must be empty unless forced; files written under a temp name, then renamed).

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value as Json};

use super::gguf::GgufFile;
use super::tokenizer::Vocab;
use super::ConvertError;

/// Architectures we can describe for mlx-lm, with their HF class names.
pub fn hf_architecture(arch: &str) -> Result<&'static str, ConvertError> {
    match arch {
        "llama" => Ok("LlamaForCausalLM"),
        "qwen2" => Ok("Qwen2ForCausalLM"),
        other => Err(ConvertError::UnsupportedArchitecture(other.to_string())),
    }
}

/// Quantization summary for config.json: dominant bits, and per-module exceptions.
pub struct QuantMap {
    pub bits: u8,
    pub overrides: Vec<(String, u8)>,
}

/// Builds config.json from the GGUF hyper-parameters.
pub fn config_json(
    g: &GgufFile,
    vocab: &Vocab,
    quant: Option<&QuantMap>,
) -> Result<Json, ConvertError> {
    let arch = g.req_str("general.architecture")?;
    let class = hf_architecture(arch)?;
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = g.req_u64(&key("embedding_length"))?;
    let heads = g.req_u64(&key("attention.head_count"))?;
    if heads == 0 {
        return Err(ConvertError::missing(
            &key("attention.head_count"),
            "non-zero integer",
        ));
    }
    let kv_heads = g.opt_u64(&key("attention.head_count_kv")).unwrap_or(heads);
    let vocab_size = g
        .opt_u64(&key("vocab_size"))
        .or_else(|| {
            g.tensor("token_embd.weight")
                .and_then(|t| t.dims.get(1).copied())
        })
        .unwrap_or(vocab.tokens.len() as u64);
    let mut c = Map::new();
    c.insert("architectures".into(), json!([class]));
    c.insert("model_type".into(), json!(arch));
    c.insert("hidden_size".into(), json!(hidden));
    c.insert(
        "intermediate_size".into(),
        json!(g.req_u64(&key("feed_forward_length"))?),
    );
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert("num_key_value_heads".into(), json!(kv_heads));
    c.insert(
        "num_hidden_layers".into(),
        json!(g.req_u64(&key("block_count"))?),
    );
    c.insert(
        "head_dim".into(),
        json!(g
            .opt_u64(&key("attention.key_length"))
            .unwrap_or(hidden / heads)),
    );
    c.insert(
        "rms_norm_eps".into(),
        json!(g
            .opt_f64(&key("attention.layer_norm_rms_epsilon"))
            .map_or(1e-5, round_f32)),
    );
    c.insert(
        "rope_theta".into(),
        json!(g.opt_f64(&key("rope.freq_base")).map_or(10000.0, round_f32)),
    );
    c.insert("vocab_size".into(), json!(vocab_size));
    c.insert(
        "max_position_embeddings".into(),
        json!(g.opt_u64(&key("context_length")).unwrap_or(4096)),
    );
    c.insert(
        "tie_word_embeddings".into(),
        json!(g.tensor("output.weight").is_none()),
    );
    c.insert("hidden_act".into(), json!("silu"));
    c.insert(
        "attention_bias".into(),
        json!(g.tensor("blk.0.attn_q.bias").is_some()),
    );
    c.insert("mlp_bias".into(), json!(false));
    c.insert("bos_token_id".into(), json!(vocab.bos));
    c.insert("eos_token_id".into(), json!(vocab.eos));
    c.insert("torch_dtype".into(), json!("float16"));
    let scaling = g.get(&key("rope.scaling.type")).and_then(|v| v.as_str());
    if let (Some(ty), Some(factor)) = (
        scaling.filter(|t| *t != "none"),
        g.opt_f64(&key("rope.scaling.factor")),
    ) {
        let mut rs = json!({"type": ty, "rope_type": ty, "factor": round_f32(factor)});
        if let Some(orig) = g.opt_u64(&key("rope.scaling.original_context_length")) {
            rs["original_max_position_embeddings"] = json!(orig);
        }
        c.insert("rope_scaling".into(), rs);
    }
    if let Some(q) = quant {
        let mut m = Map::new();
        m.insert("group_size".into(), json!(32));
        m.insert("bits".into(), json!(q.bits));
        for (module, bits) in &q.overrides {
            m.insert(module.clone(), json!({"group_size": 32, "bits": bits}));
        }
        c.insert("quantization".into(), Json::Object(m.clone()));
        c.insert("quantization_config".into(), Json::Object(m));
    }
    Ok(Json::Object(c))
}

/// f32 metadata (1e-5, 1e6) printed without f32->f64 noise (1e-5 not 9.99999974e-6).
fn round_f32(x: f64) -> f64 {
    format!("{}", x as f32).parse().unwrap_or(x)
}

/// tokenizer_config.json: special tokens, chat template, BOS/EOS behaviour.
pub fn tokenizer_config_json(g: &GgufFile, vocab: &Vocab) -> Json {
    let mut decoder = Map::new();
    for (id, special) in vocab.added() {
        decoder.insert(
            id.to_string(),
            json!({"content": vocab.tokens[id], "lstrip": false, "normalized": !special,
                   "rstrip": false, "single_word": false, "special": special}),
        );
    }
    let arch = g
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let ctx = g.opt_u64(&format!("{arch}.context_length"));
    json!({
        "add_bos_token": vocab.add_bos,
        "add_eos_token": vocab.add_eos,
        "added_tokens_decoder": decoder,
        "bos_token": vocab.token(vocab.bos),
        "eos_token": vocab.token(vocab.eos),
        "unk_token": vocab.token(vocab.unk),
        "pad_token": vocab.token(vocab.pad),
        "chat_template": g.get("tokenizer.chat_template").and_then(|v| v.as_str()),
        "clean_up_tokenization_spaces": false,
        "model_max_length": ctx,
        "tokenizer_class": "PreTrainedTokenizerFast",
    })
}

pub fn generation_config_json(vocab: &Vocab) -> Json {
    json!({"bos_token_id": vocab.bos, "eos_token_id": vocab.eos, "do_sample": false})
}

/// Makes sure `dir` exists and is empty (or `force`).
pub fn prepare_out_dir(dir: &Path, force: bool) -> Result<(), ConvertError> {
    let io = |source| ConvertError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if dir.exists() {
        if !dir.is_dir() {
            return Err(ConvertError::InvalidOption(format!(
                "{} exists and is not a directory",
                dir.display()
            )));
        }
        let non_empty = fs::read_dir(dir).map_err(io)?.next().is_some();
        if non_empty && !force {
            return Err(ConvertError::OutDirNotEmpty(dir.to_path_buf()));
        }
    }
    fs::create_dir_all(dir).map_err(io)
}

/// Temp name used while `name` is being written inside `dir`.
pub fn temp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.kooka-tmp"))
}

/// Moves a finished temp file into place.
pub fn commit(dir: &Path, name: &str) -> Result<(), ConvertError> {
    let (tmp, dst) = (temp_path(dir, name), dir.join(name));
    fs::rename(&tmp, &dst).map_err(|source| ConvertError::Io { path: dst, source })
}

/// Writes pretty JSON to `dir/name` via a temp file and rename.
pub fn write_json(dir: &Path, name: &str, value: &Json) -> Result<(), ConvertError> {
    let tmp = temp_path(dir, name);
    let mut text = serde_json::to_string_pretty(value).map_err(ConvertError::Json)?;
    text.push('\n');
    fs::write(&tmp, text).map_err(|source| ConvertError::Io {
        path: tmp.clone(),
        source,
    })?;
    commit(dir, name)
}
