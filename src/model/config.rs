//! `config.json` of an MLX model folder: the architecture hyper-parameters and the MLX
//! quantization block (global defaults plus per-module overrides keyed by module path).

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::error::{ModelError, Result};

/// Hyper-parameters of the supported architectures (the Llama family: llama, mistral,
/// qwen2, qwen3; and the mixtures of experts qwen3_moe, mixtral). Defaults that differ per
/// architecture are left `None` here and filled in by the architecture (see
/// [`super::llama::ArchFlags`]).
#[derive(Debug, Clone, Deserialize)]
pub struct ModelConfig {
    pub model_type: String,
    pub hidden_size: i32,
    /// Nemotron-H may leave it out: the length of its layer pattern then.
    #[serde(default)]
    pub num_hidden_layers: i32,
    pub intermediate_size: i32,
    pub num_attention_heads: i32,
    #[serde(default)]
    pub num_key_value_heads: Option<i32>,
    #[serde(default)]
    pub head_dim: Option<i32>,
    #[serde(alias = "layer_norm_epsilon")]
    pub rms_norm_eps: f32,
    pub vocab_size: i32,
    #[serde(default)]
    pub rope_theta: Option<f32>,
    #[serde(default)]
    pub rope_traditional: bool,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub max_position_embeddings: Option<i32>,
    /// `int` or `[int]`.
    #[serde(default)]
    pub eos_token_id: Option<Value>,
    #[serde(default)]
    pub quantization: Option<Value>,
    /// Per-layer attention kind (`"full_attention"` / `"sliding_attention"`); mlx-lm's
    /// llama/mistral give the sliding layers a rotating cache of `sliding_window`.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub sliding_window: Option<i32>,
    /// Mixture of experts: experts (qwen3_moe `num_experts`, mixtral `num_local_experts`).
    #[serde(default)]
    pub num_experts: Option<i32>,
    #[serde(default)]
    pub num_local_experts: Option<i32>,
    #[serde(default)]
    pub num_experts_per_tok: Option<i32>,
    /// qwen3_moe: each expert's hidden size, sparse-layer stride, dense layers, and whether
    /// the top-k router scores are renormalized to sum to one.
    #[serde(default)]
    pub moe_intermediate_size: Option<i32>,
    #[serde(default)]
    pub decoder_sparse_step: Option<i32>,
    #[serde(default)]
    pub mlp_only_layers: Option<Vec<i32>>,
    #[serde(default)]
    pub norm_topk_prob: Option<bool>,
    /// minimax: RoPE over the first `rotary_dim` values of each head, q/k RMSNorm over all
    /// heads, the router's scoring function (only `sigmoid`).
    #[serde(default)]
    pub rotary_dim: Option<i32>,
    #[serde(default)]
    pub use_qk_norm: Option<bool>,
    #[serde(default)]
    pub scoring_func: Option<String>,
    /// glm4_moe (and DeepSeek-V3's router): routed and shared experts, the first dense
    /// layers, grouped top-k routing, the routed weights' scale, RoPE's share of a head.
    #[serde(default)]
    pub n_routed_experts: Option<i32>,
    #[serde(default)]
    pub n_shared_experts: Option<i32>,
    #[serde(default)]
    pub first_k_dense_replace: Option<i32>,
    #[serde(default)]
    pub n_group: Option<i32>,
    #[serde(default)]
    pub topk_group: Option<i32>,
    #[serde(default)]
    pub routed_scaling_factor: Option<f32>,
    #[serde(default)]
    pub topk_method: Option<String>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f32>,
    /// deepseek_v3 (multi-head latent attention): the query's low-rank width (`null`: a full
    /// `q_proj`; absent: mlx-lm's default of 1536, hence the nested option), the shared
    /// key/value latent's width, and each head's rotated, unrotated and value widths.
    #[serde(default, deserialize_with = "present")]
    pub q_lora_rank: Option<Option<i32>>,
    #[serde(default)]
    pub kv_lora_rank: Option<i32>,
    #[serde(default)]
    pub qk_rope_head_dim: Option<i32>,
    #[serde(default)]
    pub qk_nope_head_dim: Option<i32>,
    #[serde(default)]
    pub v_head_dim: Option<i32>,
    /// deepseek_v3: only layers whose index is a multiple of this are sparse.
    #[serde(default)]
    pub moe_layer_freq: Option<i32>,
    /// Every other key, for architectures that read their own settings (the hybrid models).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// A key that is present: `Some(value)`, where the value itself may be `null`.
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<i32>>, D::Error> {
    Option::<i32>::deserialize(d).map(Some)
}

/// How one quantized tensor is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantSpec {
    pub group_size: i32,
    pub bits: i32,
    pub mode: QuantMode,
}

/// MLX's quantization modes that kooka reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuantMode {
    /// Integers with a float scale and bias per group (`.scales` and `.biases`).
    #[default]
    Affine,
    /// 4-bit floats (e2m1) with a shared power-of-two scale (uint8 e8m0) per 32 values and
    /// no biases; what gpt-oss ships.
    Mxfp4,
}

impl QuantMode {
    /// The name MLX and `config.json` use.
    pub fn name(self) -> &'static str {
        match self {
            QuantMode::Affine => "affine",
            QuantMode::Mxfp4 => "mxfp4",
        }
    }
}

/// The `quantization` block: a global default and per-module overrides (`false` = not
/// quantized, or a `{group_size, bits}` object).
#[derive(Debug, Clone, Default)]
pub struct QuantConfig {
    pub default: Option<QuantSpec>,
    pub overrides: HashMap<String, Option<QuantSpec>>,
}

pub const SUPPORTED_BITS: [i32; 6] = [2, 3, 4, 5, 6, 8];
pub const SUPPORTED_GROUPS: [i32; 3] = [32, 64, 128];

impl QuantSpec {
    /// Affine packing of `bits` in groups of `group_size`.
    pub fn affine(group_size: i32, bits: i32) -> Self {
        QuantSpec {
            group_size,
            bits,
            mode: QuantMode::Affine,
        }
    }

    pub fn validate(self, what: &str) -> Result<Self> {
        if self.mode == QuantMode::Mxfp4 {
            if (self.group_size, self.bits) != (32, 4) {
                return Err(ModelError::Config(format!(
                    "{what}: mxfp4 needs group_size 32 and bits 4, found {} and {}",
                    self.group_size, self.bits
                )));
            }
            return Ok(self);
        }
        if !SUPPORTED_BITS.contains(&self.bits) || !SUPPORTED_GROUPS.contains(&self.group_size) {
            return Err(ModelError::Config(format!(
                "{what}: unsupported quantization bits={} group_size={} (bits {SUPPORTED_BITS:?}, groups {SUPPORTED_GROUPS:?})",
                self.bits, self.group_size
            )));
        }
        Ok(self)
    }
}

fn parse_spec(v: &Value, what: &str) -> Result<QuantSpec> {
    let int = |k: &str| -> Result<i32> {
        v.get(k)
            .and_then(Value::as_i64)
            .map(|x| x as i32)
            .ok_or_else(|| {
                ModelError::Config(format!("quantization {what}: missing integer {k:?}"))
            })
    };
    let mode = match v.get("mode").and_then(Value::as_str) {
        None | Some("affine") => QuantMode::Affine,
        Some("mxfp4") => QuantMode::Mxfp4,
        Some(other) => {
            return Err(ModelError::Config(format!(
                "quantization {what}: mode {other:?} unsupported (affine, mxfp4)"
            )))
        }
    };
    QuantSpec {
        group_size: int("group_size")?,
        bits: int("bits")?,
        mode,
    }
    .validate(&format!("quantization {what}"))
}

impl QuantConfig {
    pub fn parse(v: &Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| ModelError::Config("quantization must be an object".into()))?;
        let default = if obj.contains_key("bits") {
            Some(parse_spec(v, "default")?)
        } else {
            None
        };
        let mut overrides = HashMap::new();
        for (k, val) in obj {
            match val {
                Value::Object(_) => {
                    overrides.insert(k.clone(), Some(parse_spec(val, k)?));
                }
                Value::Bool(false) => {
                    overrides.insert(k.clone(), None);
                }
                _ => {}
            }
        }
        Ok(QuantConfig { default, overrides })
    }

    /// The packing the config names for module `path`, if it names one: `Some(None)` means
    /// "explicitly not quantized".
    pub fn for_module(&self, path: &str) -> Option<Option<QuantSpec>> {
        self.overrides.get(path).copied()
    }
}

impl ModelConfig {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = read_to_string(&path)?;
        // Python's `json.dump` writes non-finite floats as bare `Infinity` / `NaN`, which
        // strict JSON rejects (Nemotron-H's `"time_step_limit": [0.0, Infinity]`): those
        // are read as strings, for the architecture to interpret.
        let parsed = serde_json::from_str(&text).or_else(|e| match quote_python_literals(&text) {
            Some(fixed) => serde_json::from_str(&fixed),
            None => Err(e),
        });
        let mut cfg: Self = parsed.map_err(|e| ModelError::Parse {
            path,
            message: e.to_string(),
        })?;
        if cfg.num_hidden_layers == 0 {
            cfg.num_hidden_layers = cfg.layer_pattern_len().unwrap_or(0);
        }
        Ok(cfg)
    }

    /// Nemotron-H's layer list (`hybrid_override_pattern`, a string or a list of one-letter
    /// codes, or `layers_block_type` / `layer_types` names): how many layers it names.
    fn layer_pattern_len(&self) -> Option<i32> {
        let v = self
            .extra
            .get("hybrid_override_pattern")
            .or_else(|| self.extra.get("layers_block_type"))
            .filter(|v| !v.is_null());
        match v {
            Some(Value::String(s)) => Some(s.chars().count() as i32),
            Some(Value::Array(a)) => Some(a.len() as i32),
            _ => self.layer_types.as_ref().map(|t| t.len() as i32),
        }
    }

    pub fn quant_config(&self) -> Result<QuantConfig> {
        self.quantization
            .as_ref()
            .map(QuantConfig::parse)
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Values one position adds to one layer's cache: keys and values of every KV head, or
    /// under multi-head latent attention (deepseek_v3) the latent and the rotated key part
    /// (mlx-lm's default rotated width when the config leaves it out).
    pub fn cache_width(&self) -> i32 {
        match self.kv_lora_rank {
            Some(latent) => latent + self.qk_rope_head_dim.unwrap_or(64),
            None => 2 * self.kv_heads() * self.head_dim(),
        }
    }

    pub fn kv_heads(&self) -> i32 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> i32 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// `eos_token_id` as a list (it may be one int or a list).
    pub fn eos_ids(&self) -> Vec<u32> {
        ids_of(self.eos_token_id.as_ref())
    }

    /// `rope_scaling`, or transformers 5's `rope_parameters`.
    pub fn rope_scaling(&self) -> Option<&Value> {
        self.rope_scaling
            .as_ref()
            .or(self.rope_parameters.as_ref())
            .filter(|v| v.is_object())
    }

    pub fn check(&self) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("vocab_size", self.vocab_size),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_dim()),
        ];
        for (name, v) in positive {
            if v <= 0 {
                return Err(ModelError::Config(format!(
                    "{name} must be positive, got {v}"
                )));
            }
        }
        if self.num_attention_heads % self.kv_heads() != 0 {
            return Err(ModelError::Config(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            )));
        }
        Ok(())
    }
}

/// `text` with Python's bare non-finite literals (`Infinity`, `-Infinity`, `NaN`) outside
/// strings quoted; `None` when it has none.
fn quote_python_literals(text: &str) -> Option<String> {
    const LITERALS: [&str; 3] = ["-Infinity", "Infinity", "NaN"];
    let mut out = String::with_capacity(text.len() + 8);
    let (mut in_string, mut escaped, mut changed) = (false, false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if !in_string {
            if let Some(lit) = LITERALS.iter().find(|l| rest.starts_with(**l)) {
                out.push('"');
                out.push_str(lit);
                out.push('"');
                rest = &rest[lit.len()..];
                changed = true;
                continue;
            }
        }
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, false, '"') => in_string = !in_string,
            _ => {}
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    changed.then_some(out)
}

/// Token ids from a JSON int, list of ints, or nothing.
pub fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

pub fn read_to_string(path: &Path) -> Result<String> {
    if !path.exists() {
        return Err(ModelError::MissingFile(path.to_path_buf()));
    }
    std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantization_modes_parse_and_overrides_default_to_affine() {
        let q = QuantConfig::parse(&json!({
            "group_size": 32, "bits": 4, "mode": "mxfp4",
            "model.layers.0.mlp.router": {"group_size": 64, "bits": 8},
        }))
        .unwrap();
        assert_eq!(q.default.unwrap().mode, QuantMode::Mxfp4);
        let router = q.for_module("model.layers.0.mlp.router").unwrap().unwrap();
        assert_eq!(router, QuantSpec::affine(64, 8));
    }

    #[test]
    fn python_non_finite_literals_are_quoted_outside_strings() {
        let text = r#"{"a": [0.0, Infinity, -Infinity, NaN], "s": "NaN \" Infinity"}"#;
        let fixed = quote_python_literals(text).unwrap();
        let v: Value = serde_json::from_str(&fixed).unwrap();
        assert_eq!(v["a"], json!([0.0, "Infinity", "-Infinity", "NaN"]));
        assert_eq!(v["s"], json!("NaN \" Infinity"));
        assert!(quote_python_literals(r#"{"a": "Infinity"}"#).is_none());
    }

    #[test]
    fn unsupported_quantization_modes_are_named() {
        let e = QuantConfig::parse(&json!({"group_size": 16, "bits": 4, "mode": "nvfp4"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nvfp4") && e.contains("mxfp4"), "{e}");
        let e = QuantConfig::parse(&json!({"group_size": 64, "bits": 4, "mode": "mxfp4"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("group_size 32"), "{e}");
    }
}
