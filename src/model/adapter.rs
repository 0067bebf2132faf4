//! LoRA adapters in mlx-lm's folder format (what `mlx_lm.lora` writes: `adapter_config.json`
//! and `adapters.safetensors`), kept beside the base weights, not fused: an adapted linear
//! computes `x W^T + scale * (x A) B` as mlx-lm's `LoRALinear` does, so a quantized base stays
//! as it is and the output is mlx-lm's with the same adapter.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlx_rs::Array;

use super::error::{ModelError, Result};
use super::weights::Weights;

/// An adapter folder, read.
pub struct Adapter {
    pub dir: PathBuf,
    /// `lora_parameters.scale` (mlx-lm's default 20).
    pub scale: f32,
    /// `<layer path>.lora_a` `[in, r]` and `<layer path>.lora_b` `[r, out]`.
    pub tensors: HashMap<String, Array>,
}

#[derive(serde::Deserialize)]
struct AdapterConfig {
    fine_tune_type: Option<String>,
    lora_parameters: Option<LoraParameters>,
}

#[derive(serde::Deserialize)]
struct LoraParameters {
    scale: Option<f32>,
}

fn bad(dir: &Path, message: impl std::fmt::Display) -> ModelError {
    ModelError::Config(format!("adapter {}: {message}", dir.display()))
}

impl Adapter {
    pub fn load(dir: &Path) -> Result<Adapter> {
        let config_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| bad(dir, format!("reading adapter_config.json: {e}")))?;
        let config: AdapterConfig = serde_json::from_str(&text)
            .map_err(|e| bad(dir, format!("adapter_config.json: {e}")))?;
        match config.fine_tune_type.as_deref().unwrap_or("lora") {
            "lora" => {}
            "dora" => {
                return Err(bad(
                    dir,
                    "DoRA adapters are not supported yet; fuse it into the model with \
                     `mlx_lm.fuse` and serve the result",
                ))
            }
            "full" => {
                return Err(bad(
                    dir,
                    "a full fine-tune is a model: fuse it with `mlx_lm.fuse` and serve the result",
                ))
            }
            other => return Err(bad(dir, format!("unknown fine_tune_type {other:?}"))),
        }
        let scale = config.lora_parameters.and_then(|p| p.scale).unwrap_or(20.0);
        let file = dir.join("adapters.safetensors");
        if !file.exists() {
            return Err(bad(dir, "adapters.safetensors is missing"));
        }
        let tensors = Array::load_safetensors(&file)
            .map_err(|e| bad(dir, format!("adapters.safetensors: {e}")))?;
        if let Some(odd) = tensors
            .keys()
            .find(|k| !k.ends_with(".lora_a") && !k.ends_with(".lora_b"))
        {
            return Err(bad(
                dir,
                format!("tensor {odd} is not a LoRA matrix (lora_a / lora_b)"),
            ));
        }
        Ok(Adapter {
            dir: dir.to_path_buf(),
            scale,
            tensors,
        })
    }

    /// A short stable name of the adapter's contents (for the disk prompt cache's folder).
    pub fn fingerprint(dir: &Path) -> std::io::Result<String> {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for name in ["adapter_config.json", "adapters.safetensors"] {
            h.update(&std::fs::read(dir.join(name))?);
        }
        Ok(format!("adapter-{:032x}", h.digest128()))
    }
}

/// The low-rank update of one linear layer: `scale * (x A) B`.
pub struct Lora {
    a: Array,
    b: Array,
    scale: f32,
}

impl Lora {
    /// The update of the linear at `path` (`input` -> `output`), if the adapter has one.
    pub fn take(ws: &mut Weights, path: &str, input: i32, output: i32) -> Result<Option<Lora>> {
        let Some(scale) = ws.lora_scale else {
            return Ok(None);
        };
        let a_name = format!("{path}.lora_a");
        if !ws.contains(&a_name) {
            return Ok(None);
        }
        let a = ws.take(&a_name, None)?;
        let rank = a.shape().get(1).copied().unwrap_or(0);
        if a.shape() != [input, rank] {
            return Err(ModelError::ShapeMismatch {
                name: a_name,
                expected: vec![input, rank],
                found: a.shape().to_vec(),
            });
        }
        let b = ws.take(&format!("{path}.lora_b"), Some(&[rank, output]))?;
        Ok(Some(Lora { a, b, scale }))
    }

    /// `y + scale * (x A) B`, in `x`'s dtype (mlx-lm's order of operations).
    pub fn add_to(&self, x: &Array, y: Array) -> Result<Array> {
        let z = x.matmul(&self.a)?.matmul(&self.b)?;
        let scaled = z.multiply(Array::from_f32(self.scale).as_dtype(z.dtype())?)?;
        Ok(y.add(scaled.as_dtype(x.dtype())?)?)
    }

    pub fn arrays(&self) -> Vec<&Array> {
        vec![&self.a, &self.b]
    }
}
