//! One block file: the keys and values of a run of positions for every layer (and, at a
//! checkpoint, every recurrent layer's state after its last position), as safetensors with
//! what the index needs in its metadata: the model, where the block starts, its tokens, the
//! key of the block before it, and a checksum of the data. Plain host bytes only: the MLX
//! thread copies arrays out ([`HostArray::from_array`]) and back in ([`HostArray::to_array`]);
//! the writer thread never touches MLX.

use std::collections::HashMap;

use mlx_rs::{Array, Dtype};
use safetensors::tensor::TensorView;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

/// A block's identity: the hash of every token up to its end (chained through the block
/// before it). The root (no tokens yet) is 0.
pub type Key = u128;

/// Written into every file; a file of another format version is a miss.
pub const FORMAT: &str = "kooka-prompt-cache-1";

/// The key of `tokens` following the block `parent`.
pub fn chain_key(parent: Key, tokens: &[u32]) -> Key {
    let mut bytes = Vec::with_capacity(16 + tokens.len() * 4);
    bytes.extend_from_slice(&parent.to_le_bytes());
    for t in tokens {
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    xxh3_128(&bytes)
}

pub fn file_name(key: Key) -> String {
    format!("{key:032x}.safetensors")
}

/// An array's bytes on the host, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostArray {
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl HostArray {
    /// Copies `a` out (made contiguous and evaluated first).
    pub fn from_array(a: &Array) -> crate::model::Result<Self> {
        let a = a.contiguous()?;
        a.eval()?;
        let shape: Vec<usize> = a.shape().iter().map(|&d| d as usize).collect();
        let dtype = st_dtype_of(a.dtype())?;
        if a.size() == 0 {
            // (MLX gives no data pointer for an empty array.)
            return Ok(HostArray {
                dtype,
                shape,
                data: Vec::new(),
            });
        }
        macro_rules! bytes {
            ($t:ty) => {{
                let s = a.try_as_slice::<$t>().map_err(|e| {
                    crate::model::ModelError::Request(format!("copying a cache array: {e}"))
                })?;
                // SAFETY: plain numeric data viewed as bytes, within the slice's length.
                unsafe {
                    std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s))
                }
                .to_vec()
            }};
        }
        let data = match a.dtype() {
            Dtype::Float32 => bytes!(f32),
            Dtype::Bfloat16 => bytes!(half::bf16),
            Dtype::Float16 => bytes!(half::f16),
            Dtype::Uint32 => bytes!(u32),
            _ => bytes!(i32),
        };
        Ok(HostArray { dtype, shape, data })
    }

    /// Positions `[from, to)` of an array `[1, H, n, D]` (positions on axis 2).
    pub fn positions(&self, from: usize, to: usize) -> HostArray {
        let [b, h, n, d] = self.shape[..] else {
            return self.clone();
        };
        let elem = self.dtype.bitsize() / 8;
        let row = d * elem;
        let mut data = Vec::with_capacity(b * h * (to - from) * row);
        for head in 0..b * h {
            let base = head * n * row;
            data.extend_from_slice(&self.data[base + from * row..base + to * row]);
        }
        HostArray {
            dtype: self.dtype,
            shape: vec![b, h, to - from, d],
            data,
        }
    }
}

/// The safetensors dtype of an MLX one the disk cache stores.
fn st_dtype_of(dtype: Dtype) -> crate::model::Result<safetensors::Dtype> {
    Ok(match dtype {
        Dtype::Float32 => safetensors::Dtype::F32,
        Dtype::Bfloat16 => safetensors::Dtype::BF16,
        Dtype::Float16 => safetensors::Dtype::F16,
        Dtype::Uint32 => safetensors::Dtype::U32,
        Dtype::Int32 => safetensors::Dtype::I32,
        other => {
            return Err(crate::model::ModelError::Request(format!(
                "the disk prompt cache cannot store {other:?} arrays"
            )))
        }
    })
}

/// An MLX array (a copy) of `data`, `shape` elements of `dtype` (safetensors checked the
/// sizes when reading a file; [`HostArray::from_array`] made them).
pub fn array_from(st_dtype: safetensors::Dtype, shape: &[usize], data: &[u8]) -> Array {
    let dtype = match st_dtype {
        safetensors::Dtype::F32 => Dtype::Float32,
        safetensors::Dtype::BF16 => Dtype::Bfloat16,
        safetensors::Dtype::F16 => Dtype::Float16,
        safetensors::Dtype::U32 => Dtype::Uint32,
        _ => Dtype::Int32,
    };
    let shape: Vec<i32> = shape.iter().map(|&d| d as i32).collect();
    let want: usize = shape.iter().product::<i32>().max(0) as usize * (st_dtype.bitsize() / 8);
    assert_eq!(data.len(), want, "array bytes and shape disagree");
    // SAFETY: `data` holds exactly the shape's elements of `dtype` (asserted); MLX copies it.
    unsafe { Array::from_raw_data(data.as_ptr() as *const _, &shape, dtype) }
}

/// What one layer holds in a block (`A`: owned bytes, or views of a file's).
#[derive(Debug, Clone, PartialEq)]
pub enum HostLayer<A = HostArray> {
    /// Keys and values `[1, H, positions, D]`.
    Kv(A, A),
    /// A recurrent layer: its state after the block's last position (empty when the block
    /// is not a checkpoint).
    State(Vec<A>),
    Stateless,
}

/// One block as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub parent: Key,
    pub start: usize,
    pub tokens: Vec<u32>,
    /// Recurrent states after the last token are stored.
    pub has_state: bool,
    pub layers: Vec<HostLayer>,
}

/// What the index keeps of a block (read from the header only).
#[derive(Debug, Clone, PartialEq)]
pub struct BlockHeader {
    pub parent: Key,
    pub start: usize,
    pub tokens: Vec<u32>,
    pub has_state: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a block file: {0}")]
    Format(String),
    #[error("written for another model")]
    OtherModel,
    #[error("checksum mismatch (torn or corrupt file)")]
    Checksum,
}

impl Block {
    pub fn key(&self) -> Key {
        chain_key(self.parent, &self.tokens)
    }

    /// The file's bytes, for the model `model`.
    pub fn encode(&self, model: &str) -> Result<Vec<u8>, BlockError> {
        let mut tensors: Vec<(String, &HostArray)> = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            match layer {
                HostLayer::Kv(k, v) => {
                    tensors.push((format!("{l}.k"), k));
                    tensors.push((format!("{l}.v"), v));
                }
                HostLayer::State(arrays) => {
                    for (j, a) in arrays.iter().enumerate() {
                        tensors.push((format!("{l}.s{j}"), a));
                    }
                }
                HostLayer::Stateless => {}
            }
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let checksum = checksum(tensors.iter().map(|(_, a)| a.data.as_slice()));
        let recurrent: Vec<String> = (self.layers.iter().enumerate())
            .filter(|(_, l)| matches!(l, HostLayer::State(_)))
            .map(|(i, _)| i.to_string())
            .collect();
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("model".to_string(), model.to_string()),
            ("parent".to_string(), format!("{:032x}", self.parent)),
            ("start".to_string(), self.start.to_string()),
            ("tokens".to_string(), join(&self.tokens)),
            ("state".to_string(), u8::from(self.has_state).to_string()),
            ("layers".to_string(), self.layers.len().to_string()),
            ("checksum".to_string(), format!("{checksum:016x}")),
            ("recurrent".to_string(), recurrent.join(",")),
        ]);
        let views = tensors
            .iter()
            .map(|(name, a)| {
                TensorView::new(a.dtype, a.shape.clone(), &a.data)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| BlockError::Format(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        safetensors::serialize(views, Some(metadata)).map_err(|e| BlockError::Format(e.to_string()))
    }

    /// Reads a whole file, checking its model and checksum (owned; the server reads views).
    #[cfg(test)]
    pub fn decode(bytes: &[u8], model: &str) -> Result<Block, BlockError> {
        let (header, layers) = decode_views(bytes, model, true)?;
        let own = |t: &TensorView| HostArray {
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
            data: t.data().to_vec(),
        };
        let layers = layers
            .iter()
            .map(|l| match l {
                HostLayer::Kv(k, v) => HostLayer::Kv(own(k), own(v)),
                HostLayer::State(s) => HostLayer::State(s.iter().map(own).collect()),
                HostLayer::Stateless => HostLayer::Stateless,
            })
            .collect();
        Ok(Block {
            parent: header.parent,
            start: header.start,
            tokens: header.tokens,
            has_state: header.has_state,
            layers,
        })
    }
}

/// A whole file's header and layers as views of `bytes`, its model checked (and its
/// checksum when `verify`).
pub fn decode_views<'a>(
    bytes: &'a [u8],
    model: &str,
    verify: bool,
) -> Result<(BlockHeader, Vec<HostLayer<TensorView<'a>>>), BlockError> {
    let (header, _) = read_header(bytes, model)?;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| BlockError::Format(e.to_string()))?;
    let (meta, _) = parse_head(bytes)?;
    let layers: usize = field(&meta, "layers")?;
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let want: u64 = u64::from_str_radix(&field::<String>(&meta, "checksum")?, 16)
        .map_err(|_| BlockError::Format("bad checksum field".into()))?;
    if verify && checksum(tensors.iter().map(|(_, t)| t.data())) != want {
        return Err(BlockError::Checksum);
    }
    let mut by_name: HashMap<String, TensorView<'a>> = tensors.into_iter().collect();
    let mut out = Vec::with_capacity(layers);
    for l in 0..layers {
        let (k, v) = (
            by_name.remove(&format!("{l}.k")),
            by_name.remove(&format!("{l}.v")),
        );
        out.push(match (k, v) {
            (Some(k), Some(v)) => HostLayer::Kv(k, v),
            (None, None) => {
                let states: Vec<TensorView<'a>> = (0..)
                    .map_while(|j| by_name.remove(&format!("{l}.s{j}")))
                    .collect();
                match states.is_empty() && !has_state_layer(&meta, l) {
                    true => HostLayer::Stateless,
                    false => HostLayer::State(states),
                }
            }
            _ => {
                return Err(BlockError::Format(format!(
                    "layer {l}: keys without values"
                )))
            }
        });
    }
    Ok((header, out))
}

/// Layers whose state is stored empty (a recurrent layer in a block that is not a
/// checkpoint) are listed so that they read back as recurrent.
fn has_state_layer(meta: &HashMap<String, String>, l: usize) -> bool {
    meta.get("recurrent")
        .map(|s| s.split(',').any(|x| x == l.to_string()))
        .unwrap_or(false)
}

/// The header of a file (its first bytes suffice), checked to be this model's, and the
/// length the whole file must have.
pub fn read_header(bytes: &[u8], model: &str) -> Result<(BlockHeader, u64), BlockError> {
    let (meta, file_len) = parse_head(bytes)?;
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(BlockError::Format("unknown format".into()));
    }
    if meta.get("model").map(String::as_str) != Some(model) {
        return Err(BlockError::OtherModel);
    }
    let parent = Key::from_str_radix(&field::<String>(&meta, "parent")?, 16)
        .map_err(|_| BlockError::Format("bad parent".into()))?;
    let tokens = field::<String>(&meta, "tokens")?;
    let tokens = match tokens.is_empty() {
        true => Vec::new(),
        false => tokens
            .split(',')
            .map(|t| t.parse::<u32>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| BlockError::Format("bad tokens".into()))?,
    };
    let header = BlockHeader {
        parent,
        start: field(&meta, "start")?,
        tokens,
        has_state: field::<u8>(&meta, "state")? == 1,
    };
    Ok((header, file_len))
}

/// The length of a safetensors header (with its 8-byte prefix) from a file's first 8 bytes.
pub fn head_len(first: [u8; 8]) -> u64 {
    u64::from_le_bytes(first).saturating_add(8)
}

/// The `__metadata__` of a safetensors header and the file length it implies (`bytes`
/// starts with the file and holds at least its header).
fn parse_head(bytes: &[u8]) -> Result<(HashMap<String, String>, u64), BlockError> {
    let short = || BlockError::Format("short header".into());
    let first: [u8; 8] = bytes
        .get(..8)
        .ok_or_else(short)?
        .try_into()
        .map_err(|_| short())?;
    let len = head_len(first);
    let json = bytes
        .get(8..usize::try_from(len).map_err(|_| short())?)
        .ok_or_else(short)?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(json).map_err(|e| BlockError::Format(e.to_string()))?;
    let mut meta = HashMap::new();
    let mut data_len = 0u64;
    for (name, v) in &map {
        if name == "__metadata__" {
            for (k, v) in v.as_object().into_iter().flatten() {
                meta.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
            }
        } else {
            let end = v["data_offsets"][1]
                .as_u64()
                .ok_or_else(|| BlockError::Format(format!("{name}: no offsets")))?;
            data_len = data_len.max(end);
        }
    }
    Ok((meta, len + data_len))
}

fn field<T: std::str::FromStr>(
    meta: &HashMap<String, String>,
    name: &str,
) -> Result<T, BlockError> {
    meta.get(name)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| BlockError::Format(format!("missing or bad `{name}`")))
}

fn join(tokens: &[u32]) -> String {
    tokens
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn checksum<'a>(parts: impl Iterator<Item = &'a [u8]>) -> u64 {
    let mut acc = Vec::new();
    for p in parts {
        acc.extend_from_slice(&xxh3_64(p).to_le_bytes());
    }
    xxh3_64(&acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(vals: &[f32], shape: &[usize]) -> HostArray {
        HostArray {
            dtype: safetensors::Dtype::F32,
            shape: shape.to_vec(),
            data: vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn block() -> Block {
        let k = host(
            &(0..12).map(|i| i as f32).collect::<Vec<_>>(),
            &[1, 2, 3, 2],
        );
        Block {
            parent: 7,
            start: 4,
            tokens: vec![5, 6, 7],
            has_state: true,
            layers: vec![
                HostLayer::Kv(k.clone(), k),
                HostLayer::State(vec![host(&[1.0, 2.0], &[1, 2])]),
                HostLayer::Stateless,
            ],
        }
    }

    #[test]
    fn a_block_reads_back_as_written() {
        let b = block();
        let bytes = b.encode("m").unwrap();
        assert_eq!(Block::decode(&bytes, "m").unwrap(), b);
        let (header, len) = read_header(&bytes, "m").unwrap();
        assert_eq!((header.tokens, len), (vec![5, 6, 7], bytes.len() as u64));
        // The header alone suffices.
        let head = head_len(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(
            read_header(&bytes[..head], "m").unwrap().1,
            bytes.len() as u64
        );
    }

    #[test]
    fn torn_corrupt_or_foreign_files_are_errors() {
        let bytes = block().encode("m").unwrap();
        assert!(matches!(
            Block::decode(&bytes, "other"),
            Err(BlockError::OtherModel)
        ));
        assert!(Block::decode(&bytes[..bytes.len() - 5], "m").is_err());
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert!(matches!(
            Block::decode(&flipped, "m"),
            Err(BlockError::Checksum)
        ));
        assert!(read_header(b"garbage", "m").is_err());
    }

    #[test]
    fn positions_slice_every_head() {
        let a = host(
            &(0..12).map(|i| i as f32).collect::<Vec<_>>(),
            &[1, 2, 3, 2],
        );
        let p = a.positions(1, 3);
        assert_eq!(p.shape, vec![1, 2, 2, 2]);
        let vals: Vec<f32> = p
            .data
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(vals, vec![2.0, 3.0, 4.0, 5.0, 8.0, 9.0, 10.0, 11.0]);
    }

    #[test]
    fn arrays_copy_out_and_back_empty_ones_too() {
        let vals: Vec<f32> = (0..24).map(|i| i as f32 * 0.5).collect();
        for (data, shape) in [(&vals[..], [1, 2, 3, 4]), (&vals[..0], [1, 1, 0, 4])] {
            let a = Array::from_slice(data, &shape);
            let h = HostArray::from_array(&a).unwrap();
            assert_eq!(h.data.len(), data.len() * 4);
            let b = array_from(h.dtype, &h.shape, &h.data);
            assert_eq!(b.shape(), &shape);
            if !data.is_empty() {
                assert_eq!(b.as_slice::<f32>(), data);
            }
        }
    }

    #[test]
    fn keys_chain() {
        assert_ne!(chain_key(0, &[1, 2]), chain_key(1, &[1, 2]));
        assert_ne!(chain_key(0, &[1, 2]), chain_key(0, &[2, 1]));
        assert_eq!(chain_key(0, &[1, 2]), chain_key(0, &[1, 2]));
    }
}
