//! Per-layer key/value cache that grows in steps of [`KV_STEP`] positions (preallocated
//! with zeros and written with slice updates), like mlx-lm's `KVCache`.

use mlx_rs::ops::indexing::{TryIndexMutOp, TryIndexOp};
use mlx_rs::{ops, Array};

use super::error::Result;

/// Positions added each time the cache grows.
pub const KV_STEP: i32 = 256;

/// Keys and values of one layer, `[B, kv_heads, capacity, head_dim]`, valid up to `offset`.
#[derive(Default)]
pub struct KvCache {
    keys: Option<Array>,
    values: Option<Array>,
    offset: i32,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of positions stored (the next token's position).
    pub fn offset(&self) -> i32 {
        self.offset
    }

    /// Appends `keys`/`values` (`[B, H, L, D]`) and returns all valid positions.
    pub fn update_and_fetch(&mut self, keys: &Array, values: &Array) -> Result<(Array, Array)> {
        let prev = self.offset;
        let l = keys.shape()[2];
        let capacity = self.keys.as_ref().map(|k| k.shape()[2]).unwrap_or(0);
        if self.keys.is_none() || prev + l > capacity {
            let (b, h, dk) = (keys.shape()[0], keys.shape()[1], keys.shape()[3]);
            let dv = values.shape()[3];
            let n = (KV_STEP + l - 1) / KV_STEP * KV_STEP;
            let new_k = ops::zeros_dtype(&[b, h, n, dk], keys.dtype())?;
            let new_v = ops::zeros_dtype(&[b, h, n, dv], values.dtype())?;
            match (self.keys.take(), self.values.take()) {
                (Some(mut k), Some(mut v)) => {
                    if prev % KV_STEP != 0 {
                        k = k.try_index((.., .., ..prev, ..))?;
                        v = v.try_index((.., .., ..prev, ..))?;
                    }
                    self.keys = Some(ops::concatenate(&[k, new_k], 2)?);
                    self.values = Some(ops::concatenate(&[v, new_v], 2)?);
                }
                _ => {
                    self.keys = Some(new_k);
                    self.values = Some(new_v);
                }
            }
        }
        self.offset += l;
        let end = self.offset;
        let (k, v) = match (self.keys.as_mut(), self.values.as_mut()) {
            (Some(k), Some(v)) => (k, v),
            _ => unreachable!("allocated above"),
        };
        k.try_index_mut((.., .., prev..end, ..), keys)?;
        v.try_index_mut((.., .., prev..end, ..), values)?;
        if end < k.shape()[2] {
            Ok((k.try_index((.., .., ..end, ..))?, v.try_index((.., .., ..end, ..))?))
        } else {
            Ok((k.clone(), v.clone()))
        }
    }

    /// The arrays to evaluate to materialize the cache.
    pub fn state(&self) -> Vec<&Array> {
        self.keys.iter().chain(self.values.iter()).collect()
    }

    pub fn nbytes(&self) -> usize {
        self.state().iter().map(|a| a.nbytes()).sum()
    }
}
