//! Several sequences in one cache: the rows of a batched decode.
//!
//! Rows are left-padded so that every row writes its next position at the same index (the
//! cache's `offset`); row `b` holds its own positions `left_pad[b]..offset`. Padding slots
//! hold zeros and are masked out ([`KvCache::make_mask`]), and each row's RoPE position is
//! `offset - left_pad[b]` ([`KvCache::positions`]). A sequence joins by [`KvCache::merge`]
//! (one copy of the caches involved) and leaves by [`KvCache::retain_rows`]; its own
//! positions come out as plain data-independent arrays with [`KvCache::row`] (the prefix
//! cache keeps those). Rotating (sliding-window) caches never hold more than one row; windowed
//! ones batch like the rest, their masks also bounded by the window.

use mlx_rs::{ops, Array};

use super::{concat, len, slice, KvCache};
use crate::model::error::{ModelError, Result};

/// The RoPE position of the first new query of every row.
pub enum Positions {
    /// One sequence (or rows that all start at the same position).
    Same(i32),
    /// Per row, int32 `[B]`.
    PerRow(Array),
}

/// What every layer of a batched forward shares: the padding mask and the per-row RoPE
/// positions, built once per forward (not once per layer: each is a host-to-device upload);
/// and for windowed (sliding-window) layers their own mask.
pub struct RowsView {
    pub mask: super::AttnMask,
    /// The mask of the layers with this window, when the model has windowed caches.
    pub windowed: Option<(i32, super::AttnMask)>,
    pub positions: Positions,
}

impl RowsView {
    /// The mask of a layer with sliding window `window` (`None`: full attention).
    pub fn mask_for(&self, window: Option<i32>) -> &super::AttnMask {
        match (&self.windowed, window) {
            (Some((w, m)), Some(want)) if *w == want => m,
            _ => &self.mask,
        }
    }
}

/// Left padding of a cache with more than one row.
#[derive(Clone)]
pub(super) struct Rows {
    pub left_pad: Vec<i32>,
}

impl KvCache {
    /// A cache that starts with the first `n` positions of `keys`/`values` (`[1, H, >=n, D]`),
    /// e.g. a prefix-cache hit, windowed like `like`. The arrays are only read: the next update
    /// writes a new buffer.
    pub fn from_prefix(keys: &Array, values: &Array, n: i32, like: &KvCache) -> Result<Self> {
        Ok(KvCache {
            keys: Some(slice(keys, 0, n)?),
            values: Some(slice(values, 0, n)?),
            offset: n,
            window: like.window,
            quant: like.quant,
            ..Self::default()
        })
    }

    /// Rows in this cache (1 before anything is written).
    pub fn rows(&self) -> usize {
        match &self.rows {
            Some(r) => r.left_pad.len(),
            None => 1,
        }
    }

    pub fn is_rotating(&self) -> bool {
        self.rotation.is_some()
    }

    /// The RoPE offset of the next write.
    pub fn positions(&self) -> Result<Positions> {
        Ok(match &self.rows {
            None => Positions::Same(self.offset),
            Some(r) => {
                let pos: Vec<i32> = r.left_pad.iter().map(|p| self.offset - p).collect();
                Positions::PerRow(Array::from_slice(&pos, &[pos.len() as i32]))
            }
        })
    }

    /// The masks and positions of `n` new queries, shared by every layer (all hold the same
    /// rows, offset and padding), when this cache holds several rows or `window` (a windowed
    /// layer's, if the model has any) needs its own mask; else `None` (each layer's cache
    /// decides).
    pub fn rows_view(&self, n: i32, window: Option<i32>) -> Result<Option<RowsView>> {
        if self.rows.is_none() && window.is_none() {
            return Ok(None);
        }
        Ok(Some(RowsView {
            mask: self.mask_within(n, None)?,
            windowed: match window {
                Some(w) => Some((w, self.mask_within(n, Some(w))?)),
                None => None,
            },
            positions: self.positions()?,
        }))
    }

    /// The mask of one new query per row: none when every row sees every key, else each
    /// row's first visible key (its padding, and the `window` when given) and the same as a
    /// boolean mask.
    pub(super) fn row_starts(
        r: &Rows,
        offset: i32,
        window: Option<i32>,
    ) -> Result<super::AttnMask> {
        let keys = offset + 1;
        let first_in_window = window.map_or(0, |w| (keys - w).max(0));
        let starts: Vec<i32> = r.left_pad.iter().map(|&p| p.max(first_in_window)).collect();
        if starts.iter().all(|&s| s == 0) {
            return Ok(super::AttnMask::None);
        }
        let b = starts.len() as i32;
        let starts = Array::from_slice(&starts, &[b]);
        let j = Array::from_iter(0..keys, &[1, 1, 1, keys]);
        let array = j.ge(&starts.reshape(&[b, 1, 1, 1])?)?;
        Ok(super::AttnMask::Rows { starts, array })
    }

    /// Keys `j` a row may attend to when `n` queries follow `offset`: `j >= left_pad[row]`
    /// (and causal within the `n`, and within the last `window` positions), as bool
    /// `[B, 1, n, offset + n]`.
    pub(super) fn padding_mask(
        r: &Rows,
        offset: i32,
        n: i32,
        window: Option<i32>,
    ) -> Result<Array> {
        let b = r.left_pad.len() as i32;
        let keys = offset + n;
        let pad = Array::from_slice(&r.left_pad, &[b, 1, 1, 1]);
        let j = Array::from_iter(0..keys, &[1, 1, 1, keys]);
        let valid = j.ge(&pad)?;
        if n == 1 && window.is_none_or(|w| keys <= w) {
            return Ok(valid);
        }
        let causal =
            super::causal_mask(n, offset, window.unwrap_or(i32::MAX)).reshape(&[1, 1, n, keys])?;
        Ok(valid.logical_and(&causal)?)
    }

    /// One cache holding the rows of every part, in order. Parts may be empty (never
    /// written) only if all are; rotating caches cannot merge.
    pub fn merge(mut parts: Vec<KvCache>) -> Result<KvCache> {
        if parts.len() == 1 {
            return Ok(parts.into_iter().next().unwrap_or_default());
        }
        // Rows of one cache are all quantized or none (a short sequence joining quantized
        // rows is quantized early).
        if parts.iter().any(KvCache::is_quantized) {
            for p in parts.iter_mut() {
                p.quantize_now()?;
            }
        }
        let quant = parts[0].quant;
        if parts
            .iter()
            .any(|p| p.rotation.is_some() || p.keys.is_none())
        {
            return Err(ModelError::Request(
                "only written, non-rotating caches can be batched".into(),
            ));
        }
        let t = parts.iter().map(|p| p.offset).max().unwrap_or(0);
        let window = parts[0].window;
        let (mut ks, mut vs, mut pads) = (Vec::new(), Vec::new(), Vec::new());
        for p in parts {
            let shift = t - p.offset;
            let rows = p.rows();
            match &p.rows {
                Some(r) => pads.extend(r.left_pad.iter().map(|x| x + shift)),
                None => pads.push(shift),
            }
            let (Some(k), Some(v)) = (&p.keys, &p.values) else {
                continue;
            };
            let (k, v) = (slice(k, 0, p.offset)?, slice(v, 0, p.offset)?);
            if shift > 0 {
                let zeros = |a: &Array| {
                    let s = a.shape();
                    ops::zeros_dtype(&[rows as i32, s[1], shift, s[3]], a.dtype())
                };
                ks.push(concat(vec![zeros(&k)?, k])?);
                vs.push(concat(vec![zeros(&v)?, v])?);
            } else {
                ks.push(k);
                vs.push(v);
            }
        }
        let mut merged = KvCache {
            keys: Some(ops::concatenate(&ks, 0)?),
            values: Some(ops::concatenate(&vs, 0)?),
            offset: t,
            rotation: None,
            rows: Some(Rows { left_pad: pads }),
            window,
            quant,
            own_buffers: false,
        };
        merged.trim_padding()?;
        Ok(merged)
    }

    /// Keeps only rows `keep` (ascending indices), then drops padding columns no row needs.
    pub fn retain_rows(&mut self, keep: &[usize]) -> Result<()> {
        let Some(r) = self.rows.take() else {
            return match keep {
                [0] => Ok(()),
                _ => Err(ModelError::Request("row index out of range".into())),
            };
        };
        let idx: Vec<i32> = keep.iter().map(|&i| i as i32).collect();
        let idx = Array::from_slice(&idx, &[idx.len() as i32]);
        if let (Some(k), Some(v)) = (&self.keys, &self.values) {
            self.keys = Some(k.take_axis(&idx, 0)?);
            self.values = Some(v.take_axis(&idx, 0)?);
            self.own_buffers = false;
        }
        let left_pad = keep
            .iter()
            .filter_map(|&i| r.left_pad.get(i).copied())
            .collect();
        self.rows = Some(Rows { left_pad });
        self.trim_padding()
    }

    /// Forgets the last `drop[b]` positions of every row `b` (the draft tokens a verify step
    /// did not keep). Rows dropping more than the least are shifted right by the difference,
    /// their padding growing by as much, so that every row still ends at the shared offset:
    /// one gather per array, only when the rows disagree.
    pub fn drop_tail(&mut self, drop: &[i32]) -> Result<()> {
        let Some(&least) = drop.iter().min() else {
            return Ok(());
        };
        if self.rotation.is_some() {
            return Err(ModelError::Request(
                "a rotating cache cannot drop positions".into(),
            ));
        }
        if drop.len() != self.rows() || least < 0 || least > self.offset {
            return Err(ModelError::Request(format!(
                "cannot drop {drop:?} positions from {} rows of {}",
                self.rows(),
                self.offset
            )));
        }
        self.offset -= least;
        // Readers of the dropped positions (a verify step's attention) may still be queued:
        // the next write goes through a slice update, which makes a buffer of its own.
        self.own_buffers = false;
        let Some(r) = &mut self.rows else {
            return Ok(());
        };
        let shift: Vec<i32> = drop.iter().map(|d| d - least).collect();
        if shift.iter().all(|&s| s == 0) {
            return Ok(());
        }
        let t = self.offset;
        let mut idx = Vec::with_capacity(shift.len() * t as usize);
        for (&s, pad) in shift.iter().zip(r.left_pad.iter_mut()) {
            idx.extend((0..t).map(|j| (j - s).max(0)));
            *pad = (*pad + s).min(t);
        }
        let idx = Array::from_slice(&idx, &[shift.len() as i32, 1, t, 1]);
        if let (Some(k), Some(v)) = (&self.keys, &self.values) {
            let gather = |a: &Array| -> Result<Array> {
                let a = slice(a, 0, t)?;
                let s = a.shape();
                let idx = ops::broadcast_to(&idx, &[s[0], s[1], t, s[3]])?;
                Ok(a.take_along_axis(&idx, 2)?)
            };
            self.keys = Some(gather(k)?);
            self.values = Some(gather(v)?);
            self.own_buffers = false;
        }
        self.trim_padding()
    }

    /// Drops the leading columns that are padding in every row; one row left means no
    /// padding (and no mask) at all.
    fn trim_padding(&mut self) -> Result<()> {
        let Some(r) = &mut self.rows else {
            return Ok(());
        };
        let m = r.left_pad.iter().copied().min().unwrap_or(0);
        if m > 0 {
            r.left_pad.iter_mut().for_each(|p| *p -= m);
            if let (Some(k), Some(v)) = (&self.keys, &self.values) {
                let cap = len(k);
                self.keys = Some(slice(k, m, cap)?);
                self.values = Some(slice(v, m, cap)?);
                self.own_buffers = false;
            }
            self.offset -= m;
        }
        if r.left_pad.len() <= 1 {
            self.rows = None;
        }
        Ok(())
    }

    /// Row `b`'s own positions as fresh arrays `[1, H, n, D]` that share nothing with this
    /// cache (a shared buffer would keep the whole batch alive and stop MLX from updating it
    /// in place), and `n`.
    pub fn row(&self, b: usize) -> Result<Option<(Array, Array, i32)>> {
        let (Some(k), Some(v), Some(n)) = (&self.keys, &self.values, self.row_len(b)) else {
            return Ok(None);
        };
        let take = |a: &Array| own_copy(a, b, self.offset - n, self.offset);
        Ok(Some((take(k)?, take(v)?, n)))
    }

    /// The positions [`Self::row`] would give row `b` (`None`: no row, as there).
    pub fn row_len(&self, b: usize) -> Option<i32> {
        if self.keys.is_none() || self.values.is_none() || self.rotation.is_some() {
            return None;
        }
        let pad = match &self.rows {
            Some(r) => r.left_pad.get(b).copied().unwrap_or(self.offset),
            None => 0,
        };
        Some(self.offset - pad)
    }

    /// Row `b`'s first `n` positions of a cache without padding (a right-padded batched
    /// prefill), as a one-row cache of its own.
    pub fn row_head(&self, b: usize, n: i32) -> Result<KvCache> {
        let (Some(k), Some(v)) = (&self.keys, &self.values) else {
            return Ok(KvCache::default());
        };
        let take = |a: &Array| own_copy(a, b, 0, n);
        Ok(KvCache {
            keys: Some(take(k)?),
            values: Some(take(v)?),
            offset: n,
            window: self.window,
            quant: self.quant,
            ..Self::default()
        })
    }

    /// Positions held per row including padding: what this cache costs.
    pub fn capacity(&self) -> i32 {
        self.keys.as_ref().map(len).unwrap_or(0)
    }
}

/// Row `b`, positions `from..to`, of a `[B, H, T, D]` cache array, in a buffer of its own: a
/// product makes a new buffer (the input is shared, so never donated), exact.
fn own_copy(a: &Array, b: usize, from: i32, to: i32) -> Result<Array> {
    let a = crate::model::slicing::slice_axis(a, 0, b as i32, b as i32 + 1)?;
    let a = slice(&a, from, to)?;
    Ok(a.multiply(Array::from_f32(1.0).as_dtype(a.dtype())?)?)
}
