//! Reading a folder's safetensors (one file, or shards listed by
//! `model.safetensors.index.json`) into a name -> tensor map that the architecture
//! consumes tensor by tensor, with shape checks that name the tensor.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use mlx_rs::{Array, Dtype};

use super::config::{read_to_string, QuantConfig};
use super::error::{ModelError, Result};

/// How weights are turned into the arrays the forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightPolicy {
    /// Dequantize affine-quantized linears/embeddings once at load.
    pub dequantize: bool,
    /// Cast float weights (and quantization scales/biases) to this dtype; `None` keeps
    /// the checkpoint's dtypes.
    pub dtype: Option<Dtype>,
    /// Packed matrices multiply inputs of at least this many rows by unpacking the weights
    /// first (`dequantize`, then a float GEMM) instead of MLX's quantized matmul; `None`
    /// never does. See [`QuantMatrix::dense_from_rows`](super::layers::QuantMatrix).
    pub dense_from_rows: Option<i32>,
    /// The unpacked copy is made once at load and kept (memory for speed: a decode batch of
    /// a few rows multiplies it at float GEMM speed), instead of made per product.
    pub keep_unpacked: bool,
    /// Packed matrices pad inputs of fewer rows to this many. See
    /// [`QuantMatrix::pad_rows_to`](super::layers::QuantMatrix).
    pub pad_rows_to: Option<i32>,
}

/// The checkpoint's tensors, taken out one by one by the model builder.
pub struct Weights {
    tensors: HashMap<String, Array>,
    pub policy: WeightPolicy,
    /// A LoRA adapter's scale once [`Weights::add_adapter`] put its matrices in.
    pub lora_scale: Option<f32>,
}

/// The safetensors files of a model folder: the index's shards, else `model*.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = read_to_string(&index)?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Parse {
            path: index.clone(),
            message: e.to_string(),
        })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Parse {
                path: index.clone(),
                message: "no weight_map object".into(),
            })?;
        let files: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        let paths: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = paths.iter().find(|p| !p.exists()) {
            return Err(ModelError::MissingFile(missing.clone()));
        }
        if !paths.is_empty() {
            return Ok(paths);
        }
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("model") && name.ends_with(".safetensors")
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(ModelError::MissingFile(dir.join("model.safetensors")));
    }
    Ok(paths)
}

impl Weights {
    pub fn load(dir: &Path, policy: WeightPolicy) -> Result<Self> {
        let mut tensors = HashMap::new();
        for path in weight_files(dir)? {
            let part = Array::load_safetensors(&path).map_err(|e| ModelError::Parse {
                path: path.clone(),
                message: e.to_string(),
            })?;
            tensors.extend(part);
        }
        Ok(Weights {
            tensors,
            policy,
            lora_scale: None,
        })
    }

    /// For tests and tools: weights from an in-memory map.
    pub fn from_map(tensors: HashMap<String, Array>, policy: WeightPolicy) -> Self {
        Weights {
            tensors,
            policy,
            lora_scale: None,
        }
    }

    /// Puts a LoRA adapter's matrices beside the base weights: each linear layer the adapter
    /// names takes its update when it loads ([`Lora::take`](super::adapter::Lora::take)).
    pub fn add_adapter(&mut self, adapter: super::adapter::Adapter) -> Result<()> {
        for (name, a) in adapter.tensors {
            if self.tensors.contains_key(&name) {
                return Err(ModelError::Config(format!(
                    "adapter {}: {name} is also a base weight",
                    adapter.dir.display()
                )));
            }
            self.tensors.insert(name, a);
        }
        self.lora_scale = Some(adapter.scale);
        Ok(())
    }

    /// Drops every tensor whose name starts with `prefix` (parts of a checkpoint no forward
    /// reads, e.g. GLM's multi-token-prediction layer); returns how many.
    pub fn discard_prefix(&mut self, prefix: &str) -> usize {
        let before = self.tensors.len();
        self.tensors.retain(|k, _| !k.starts_with(prefix));
        before - self.tensors.len()
    }

    /// Renames every tensor under `from` to the same name under `to` (an architecture whose
    /// checkpoint uses other module names than the shared loaders read, e.g. Nemotron-H's
    /// `backbone.*`).
    pub fn rename_prefix(&mut self, from: &str, to: &str) {
        let names: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| k.starts_with(from))
            .cloned()
            .collect();
        for name in names {
            if let Some(a) = self.tensors.remove(&name) {
                self.tensors
                    .insert(format!("{to}{}", &name[from.len()..]), a);
            }
        }
    }

    /// Adds (or replaces) a tensor: an architecture's rewrite of an older checkpoint layout
    /// into the one it reads (as mlx-lm's `sanitize` does on load).
    pub fn insert(&mut self, name: &str, a: Array) {
        self.tensors.insert(name.to_string(), a);
    }

    /// Bytes of every tensor still in the map (metadata only: nothing is read).
    pub fn bytes(&self) -> usize {
        self.tensors.values().map(Array::nbytes).sum()
    }

    /// Bytes of the float copies [`WeightPolicy::keep_unpacked`] would make, at `elem` bytes
    /// an entry: one per packed 2-D matrix (`X.weight` beside `X.scales`; stacked experts
    /// keep none), but none for an embedding table with an output projection of its own.
    /// Columns are the packed words times 32 over the bits `quant` names (4 where it names
    /// none). Metadata only.
    pub fn unpacked_copy_bytes(&self, quant: &QuantConfig, elem: usize) -> usize {
        let untied = self.tensors.contains_key("lm_head.weight");
        self.tensors
            .iter()
            .filter_map(|(name, w)| {
                let path = name.strip_suffix(".weight")?;
                let packed = w.dtype() == Dtype::Uint32
                    && w.ndim() == 2
                    && self.tensors.contains_key(&format!("{path}.scales"));
                if !packed || (untied && path.ends_with("embed_tokens")) {
                    return None;
                }
                let bits = match quant.for_module(path) {
                    Some(Some(spec)) => spec.bits,
                    _ => quant.default.map_or(4, |spec| spec.bits),
                }
                .max(1) as usize;
                let (rows, words) = (w.shape()[0] as usize, w.shape()[1] as usize);
                Some(rows * words * 32 / bits * elem)
            })
            .sum()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The stored dtype of a tensor still in the map (metadata only: nothing is read).
    pub fn dtype_of(&self, name: &str) -> Option<Dtype> {
        self.tensors.get(name).map(Array::dtype)
    }

    /// Remove a tensor, checking its shape when `shape` is given.
    pub fn take(&mut self, name: &str, shape: Option<&[i32]>) -> Result<Array> {
        let a = self
            .tensors
            .remove(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        if let Some(expected) = shape {
            if a.shape() != expected {
                return Err(ModelError::ShapeMismatch {
                    name: name.to_string(),
                    expected: expected.to_vec(),
                    found: a.shape().to_vec(),
                });
            }
        }
        Ok(a)
    }

    /// A float tensor, cast per the policy.
    pub fn take_float(&mut self, name: &str, shape: &[i32]) -> Result<Array> {
        let a = self.take(name, Some(shape))?;
        self.cast(name, a)
    }

    pub fn cast(&self, name: &str, a: Array) -> Result<Array> {
        let dt = a.dtype();
        if !matches!(dt, Dtype::Float32 | Dtype::Float16 | Dtype::Bfloat16) {
            return Err(ModelError::BadTensor {
                name: name.into(),
                message: format!("expected a float tensor, found {dt:?}"),
            });
        }
        match self.policy.dtype {
            Some(want) if want != dt => Ok(a.as_dtype(want)?),
            _ => Ok(a),
        }
    }

    /// Drop tensors the architecture does not use on purpose; error on any others (first
    /// an adapter's that no layer took: kooka adapts plain linear layers only).
    pub fn finish(mut self, ignore: impl Fn(&str) -> bool) -> Result<()> {
        // (A base weight never has an adapter's name: `add_adapter` refuses a clash.)
        let mut left: Vec<&String> = match self.lora_scale {
            Some(_) => self
                .tensors
                .keys()
                .filter(|n| super::adapter::is_adapter_tensor(n, true))
                .collect(),
            None => Vec::new(),
        };
        if !left.is_empty() {
            left.sort();
            let shown: Vec<&str> = left.iter().take(4).map(|s| s.as_str()).collect();
            return Err(ModelError::Config(format!(
                "the adapter targets layers kooka does not adapt (only plain linear layers: \
                 not experts, embeddings or latent attention): {} ({} in all)",
                shown.join(", "),
                left.len()
            )));
        }
        self.tensors.retain(|k, _| !ignore(k));
        if self.tensors.is_empty() {
            return Ok(());
        }
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        let shown: Vec<&str> = names.iter().take(8).map(|s| s.as_str()).collect();
        Err(ModelError::UnusedTensors(format!(
            "{} ({} in all)",
            shown.join(", "),
            names.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(rows: i32, words: i32) -> Array {
        Array::zeros::<u32>(&[rows, words]).unwrap()
    }

    #[test]
    fn unpacked_copies_count_packed_matrices_at_their_bits() {
        let mut t = HashMap::new();
        // 4-bit: 8 columns a word; 8-bit (an override): 4.
        t.insert("a.weight".to_string(), packed(16, 8));
        t.insert(
            "a.scales".to_string(),
            Array::zeros::<f32>(&[16, 1]).unwrap(),
        );
        t.insert("b.weight".to_string(), packed(4, 8));
        t.insert(
            "b.scales".to_string(),
            Array::zeros::<f32>(&[4, 1]).unwrap(),
        );
        // Float and stacked matrices keep no copy.
        t.insert(
            "c.weight".to_string(),
            Array::zeros::<f32>(&[4, 4]).unwrap(),
        );
        t.insert(
            "d.weight".to_string(),
            Array::zeros::<u32>(&[2, 4, 8]).unwrap(),
        );
        t.insert(
            "d.scales".to_string(),
            Array::zeros::<f32>(&[2, 4, 1]).unwrap(),
        );
        let quant = QuantConfig::parse(&serde_json::json!({
            "group_size": 64, "bits": 4, "b": {"group_size": 64, "bits": 8}
        }))
        .unwrap();
        let ws = Weights::from_map(t, crate::model::ComputeDtype::Native.policy());
        assert_eq!(ws.unpacked_copy_bytes(&quant, 2), 16 * 64 * 2 + 4 * 32 * 2);
    }

    #[test]
    fn an_embedding_keeps_a_copy_only_when_it_is_the_output() {
        let mut t = HashMap::new();
        t.insert("model.embed_tokens.weight".to_string(), packed(10, 8));
        t.insert(
            "model.embed_tokens.scales".to_string(),
            Array::zeros::<f32>(&[10, 1]).unwrap(),
        );
        let quant = QuantConfig::parse(&serde_json::json!({"group_size": 64, "bits": 4})).unwrap();
        let policy = crate::model::ComputeDtype::Native.policy();
        let tied = Weights::from_map(t.clone(), policy);
        assert_eq!(tied.unpacked_copy_bytes(&quant, 2), 10 * 64 * 2);
        t.insert(
            "lm_head.weight".to_string(),
            Array::zeros::<f32>(&[10, 64]).unwrap(),
        );
        let untied = Weights::from_map(t, policy);
        assert_eq!(untied.unpacked_copy_bytes(&quant, 2), 0);
    }
}
