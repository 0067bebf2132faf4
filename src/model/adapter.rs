//! LoRA and DoRA adapters in mlx-lm's folder format (what `mlx_lm.lora` writes:
//! `adapter_config.json` and `adapters.safetensors`), kept beside the base weights, not fused:
//! an adapted linear computes `x W^T + scale * (x A) B` as mlx-lm's `LoRALinear` does, so a
//! quantized base stays as it is and the output is mlx-lm's with the same adapter. A DoRA
//! layer (`DoRALinear`) then scales each output by its learned magnitude `m` over the norm of
//! its row of the adapted weight, `W + scale * (A B)^T`: that factor is fixed once trained, so it
//! is computed when the layer loads and applied before the bias.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlx_rs::Array;

use super::error::{ModelError, Result};
use super::layers::Matrix;
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
        let dora =
            match config.fine_tune_type.as_deref().unwrap_or("lora") {
                "lora" => false,
                "dora" => true,
                "full" => return Err(bad(
                    dir,
                    "a full fine-tune is a model: fuse it with `mlx_lm.fuse` and serve the result",
                )),
                other => return Err(bad(dir, format!("unknown fine_tune_type {other:?}"))),
            };
        let scale = config.lora_parameters.and_then(|p| p.scale).unwrap_or(20.0);
        let file = dir.join("adapters.safetensors");
        if !file.exists() {
            return Err(bad(dir, "adapters.safetensors is missing"));
        }
        let tensors = Array::load_safetensors(&file)
            .map_err(|e| bad(dir, format!("adapters.safetensors: {e}")))?;
        if let Some(odd) = tensors.keys().find(|k| !is_adapter_tensor(k, dora)) {
            let what = match dora {
                true => "a DoRA tensor (lora_a / lora_b / m)",
                false => "a LoRA matrix (lora_a / lora_b)",
            };
            return Err(bad(dir, format!("tensor {odd} is not {what}")));
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

/// Whether `name` is an adapter's tensor (a DoRA adapter also has each layer's magnitude).
pub fn is_adapter_tensor(name: &str, dora: bool) -> bool {
    name.ends_with(".lora_a") || name.ends_with(".lora_b") || (dora && name.ends_with(".m"))
}

/// The low-rank update of one linear layer: `scale * (x A) B`.
pub struct Lora {
    a: Array,
    b: Array,
    scale: f32,
    /// DoRA: each output's factor `m / |row of W + scale (A B)^T|`, `[out]`.
    magnitude: Option<Array>,
}

impl Lora {
    /// The update of the linear at `path` (`input` -> `output`, base matrix `weight`), if the
    /// adapter has one.
    pub fn take(
        ws: &mut Weights,
        path: &str,
        input: i32,
        output: i32,
        weight: &Matrix,
    ) -> Result<Option<Lora>> {
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
        let m_name = format!("{path}.m");
        let magnitude = match ws.contains(&m_name) {
            false => None,
            true => {
                let m = ws.take(&m_name, Some(&[output]))?;
                // As `DoRALinear`: the adapted weight in the base weight's dtype, its row norms.
                let w = weight.dense()?;
                let update = b
                    .t()
                    .multiply(Array::from_f32(scale).as_dtype(b.dtype())?)?
                    .matmul(&a.t())?;
                let adapted = w.add(&update)?;
                let norm = adapted.square()?.sum_axis(1, false)?.sqrt()?;
                Some(m.divide(&norm)?)
            }
        };
        Ok(Some(Lora {
            a,
            b,
            scale,
            magnitude,
        }))
    }

    /// Whether the output is rescaled (DoRA): the base's bias must come after.
    pub fn rescales(&self) -> bool {
        self.magnitude.is_some()
    }

    /// `y + scale * (x A) B`, in `x`'s dtype (mlx-lm's order of operations); for DoRA then
    /// times each output's factor (`y` without the bias).
    pub fn add_to(&self, x: &Array, y: Array) -> Result<Array> {
        let z = x.matmul(&self.a)?.matmul(&self.b)?;
        let scaled = z.multiply(Array::from_f32(self.scale).as_dtype(z.dtype())?)?;
        let out = y.add(scaled.as_dtype(x.dtype())?)?;
        match &self.magnitude {
            Some(g) => Ok(g.as_dtype(x.dtype())?.multiply(&out)?),
            None => Ok(out),
        }
    }

    pub fn arrays(&self) -> Vec<&Array> {
        let mut v = vec![&self.a, &self.b];
        v.extend(self.magnitude.iter());
        v
    }
}
