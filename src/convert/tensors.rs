//! Per-tensor plan and conversion: maps GGUF names to HF/MLX names, decides how each tensor
//! is stored (lossless affine repack, float copy, f16 dequantization or requantization),
//! predicts the output tensors' shapes/sizes (so the safetensors header can be written first)
//! and produces their bytes, undoing llama.cpp's q/k row permutation where needed.

use half::f16;

use super::affine::{self, Affine};
use super::gguf::{GgufFile, TensorInfo};
use super::permute;
use super::quant::{self, GgmlType};
use super::ConvertError;

/// How one GGUF tensor is stored in the MLX folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Q4_1 -> 4-bit / Q8_0 -> 8-bit affine, bit for bit.
    Repack,
    /// F32 / F16 / BF16 copied as they are.
    Copy,
    /// Other quantized types dequantized to f16.
    DequantF16,
    /// Other quantized types dequantized, then affine-quantized to this many bits.
    Requant(u8),
}

/// One output tensor: safetensors dtype, row-major shape and byte size.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<u64>,
    pub n_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct TensorPlan {
    pub info: TensorInfo,
    /// Module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub module: String,
    pub kind: Kind,
    /// Affine bits when stored quantized.
    pub bits: Option<u8>,
    /// Head count for undoing the q/k permutation.
    pub unpermute_heads: Option<usize>,
    pub parts: Vec<Part>,
}

/// GGUF tensor name -> (module path, "weight" | "bias"). `Ok(None)`: not a model weight.
pub fn hf_name(name: &str) -> Result<Option<(String, String)>, ConvertError> {
    let unknown = || ConvertError::UnknownTensor(name.to_string());
    let (stem, suffix) = name.rsplit_once('.').ok_or_else(unknown)?;
    if suffix != "weight" && suffix != "bias" {
        return Err(unknown());
    }
    let module = match stem {
        "rope_freqs" => return Ok(None), // llama3 rope factors: recomputed by the runtime
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.").ok_or_else(unknown)?;
            let (layer, part) = rest.split_once('.').ok_or_else(unknown)?;
            let layer: usize = layer.parse().map_err(|_| unknown())?;
            let sub = match part {
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                _ => return Err(unknown()),
            };
            format!("model.layers.{layer}.{sub}")
        }
    };
    Ok(Some((module, suffix.to_string())))
}

fn float_dtype(ty: GgmlType) -> (&'static str, u64) {
    match ty {
        GgmlType::F32 => ("F32", 4),
        GgmlType::BF16 => ("BF16", 2),
        _ => ("F16", 2),
    }
}

/// Plans one tensor. `heads` = (n_head, n_head_kv) when q/k rows must be un-permuted.
pub fn plan(
    info: &TensorInfo,
    requantize: Option<u8>,
    heads: Option<(usize, usize)>,
) -> Result<Option<TensorPlan>, ConvertError> {
    let Some((module, suffix)) = hf_name(&info.name)? else {
        return Ok(None);
    };
    let shape = info.shape();
    let (rows, cols) = info.rows_cols();
    let matrix = suffix == "weight" && shape.len() == 2;
    let kind = match info.ty {
        t if t.is_float() => Kind::Copy,
        GgmlType::Q4_1 | GgmlType::Q8_0 if matrix => Kind::Repack,
        _ => match requantize {
            Some(bits) if matrix => Kind::Requant(bits),
            _ => Kind::DequantF16,
        },
    };
    let bits = match (kind, info.ty) {
        (Kind::Repack, GgmlType::Q4_1) => Some(4),
        (Kind::Repack, _) => Some(8),
        (Kind::Requant(b), _) => Some(b),
        _ => None,
    };
    let name = |s: &str| format!("{module}.{s}");
    let parts = match bits {
        Some(b) => {
            let groups = cols / affine::GROUP as u64;
            vec![
                Part {
                    name: name("weight"),
                    dtype: "U32",
                    shape: vec![rows, groups * b as u64],
                    n_bytes: rows * groups * b as u64 * 4,
                },
                Part {
                    name: name("scales"),
                    dtype: "F16",
                    shape: vec![rows, groups],
                    n_bytes: rows * groups * 2,
                },
                Part {
                    name: name("biases"),
                    dtype: "F16",
                    shape: vec![rows, groups],
                    n_bytes: rows * groups * 2,
                },
            ]
        }
        None => {
            let (dtype, size) = if kind == Kind::Copy {
                float_dtype(info.ty)
            } else {
                ("F16", 2)
            };
            vec![Part {
                name: name(&suffix),
                dtype,
                shape: shape.clone(),
                n_bytes: info.n_elements() * size,
            }]
        }
    };
    let unpermute_heads = match (heads, info.name.rsplit('.').nth(1)) {
        (Some((q, _)), Some("attn_q")) => Some(q),
        (Some((_, kv)), Some("attn_k")) => Some(kv),
        _ => None,
    };
    if let Some(n) = unpermute_heads {
        permute::check(shape[0] as usize, n).map_err(|msg| ConvertError::BadShape {
            tensor: info.name.clone(),
            msg,
        })?;
    }
    Ok(Some(TensorPlan {
        info: info.clone(),
        module,
        kind,
        bits,
        unpermute_heads,
        parts,
    }))
}

fn words_to_bytes(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn halves_to_bytes(h: &[f16]) -> Vec<u8> {
    h.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn affine_parts(a: Affine) -> Vec<Vec<u8>> {
    vec![
        words_to_bytes(&a.weight),
        halves_to_bytes(&a.scales),
        halves_to_bytes(&a.biases),
    ]
}

/// Produces the bytes of every part of `p`, in `p.parts` order.
pub fn convert(gguf: &GgufFile, p: &TensorPlan) -> Result<Vec<Vec<u8>>, ConvertError> {
    let data = gguf.tensor_data(&p.info);
    let (rows, cols) = p.info.rows_cols();
    let (rows, cols) = (rows as usize, cols as usize);
    let mut parts = match p.kind {
        Kind::Copy => vec![data.to_vec()],
        Kind::Repack if p.info.ty == GgmlType::Q4_1 => affine_parts(affine::repack_q4_1(data)),
        Kind::Repack => {
            affine_parts(
                affine::repack_q8_0(data).ok_or_else(|| ConvertError::BadShape {
                    tensor: p.info.name.clone(),
                    msg: "Q8_0 scale too large for an exact f16 bias (-128*d overflows)".into(),
                })?,
            )
        }
        Kind::DequantF16 | Kind::Requant(_) => {
            // Row by row, so only one row of f32 is ever materialized.
            let row_bytes = data.len() / rows.max(1);
            let mut row = vec![0f32; cols];
            let mut out: Vec<Vec<u8>> = Vec::new();
            let mut f16s = Vec::new();
            let mut acc: Option<Affine> = None;
            for chunk in data.chunks_exact(row_bytes.max(1)).take(rows) {
                quant::dequantize(p.info.ty, chunk, &mut row);
                match p.kind {
                    Kind::Requant(bits) => {
                        let a = affine::quantize(&row, bits);
                        let acc = acc.get_or_insert_with(|| Affine {
                            bits,
                            weight: vec![],
                            scales: vec![],
                            biases: vec![],
                        });
                        acc.weight.extend(a.weight);
                        acc.scales.extend(a.scales);
                        acc.biases.extend(a.biases);
                    }
                    _ => f16s.extend(row.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes())),
                }
            }
            match acc {
                Some(a) => out.extend(affine_parts(a)),
                None => out.push(f16s),
            }
            out
        }
    };
    if let Some(n) = p.unpermute_heads {
        // Outermost dim: matrix rows, or every element of a 1-D bias.
        let perm_rows = p.info.dims.last().copied().unwrap_or(1) as usize;
        for part in &mut parts {
            *part = permute::unpermute_rows(part, perm_rows, n);
        }
    }
    for (bytes, part) in parts.iter().zip(&p.parts) {
        if bytes.len() as u64 != part.n_bytes {
            return Err(ConvertError::BadShape {
                tensor: p.info.name.clone(),
                msg: format!(
                    "{} came out as {} bytes, expected {}",
                    part.name,
                    bytes.len(),
                    part.n_bytes
                ),
            });
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hf() {
        let m = |n: &str| hf_name(n).ok().flatten().map(|(m, s)| format!("{m}.{s}"));
        assert_eq!(
            m("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(
            m("blk.12.attn_output.weight").as_deref(),
            Some("model.layers.12.self_attn.o_proj.weight")
        );
        assert_eq!(
            m("blk.0.attn_q.bias").as_deref(),
            Some("model.layers.0.self_attn.q_proj.bias")
        );
        assert_eq!(
            m("blk.3.ffn_norm.weight").as_deref(),
            Some("model.layers.3.post_attention_layernorm.weight")
        );
        assert_eq!(m("output.weight").as_deref(), Some("lm_head.weight"));
        assert!(matches!(hf_name("rope_freqs.weight"), Ok(None)));
        assert!(
            hf_name("blk.x.attn_q.weight").is_err() && hf_name("blk.0.mystery.weight").is_err()
        );
    }
}
