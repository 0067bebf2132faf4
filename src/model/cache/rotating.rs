//! The rotating cache (sliding-window layers), op for op like mlx-lm's `RotatingKVCache`:
//! at most `max_size` positions, the first `keep` never evicted; multi-token updates
//! concatenate in temporal order, single tokens overwrite the oldest slot in place (see the
//! module doc of `cache`).

use mlx_rs::Array;

use super::{concat, len, slice, slice_update_axis, zeros_like_step, KvCache, KV_STEP};
use crate::model::error::Result;

/// Sliding-window state of a rotating cache.
#[derive(Clone, Copy)]
pub(super) struct Rotation {
    pub max_size: i32,
    pub keep: i32,
    /// Next write slot (`_idx`).
    pub idx: i32,
}

impl KvCache {
    /// A rotating cache of at most `max_size` positions whose first `keep` stay.
    pub fn rotating(max_size: i32, keep: i32) -> Self {
        KvCache {
            rotation: Some(Rotation {
                max_size,
                keep,
                idx: 0,
            }),
            ..Self::default()
        }
    }

    /// `_temporal_order`: the buffer rearranged oldest-first, unused tail sliced off.
    fn temporal_order(&self, r: Rotation, v: &Array) -> Result<Array> {
        if r.idx == len(v) {
            Ok(v.clone())
        } else if r.idx < self.offset {
            let mut parts = Vec::with_capacity(3);
            if r.keep > 0 {
                parts.push(slice(v, 0, r.keep)?);
            }
            parts.push(slice(v, r.idx, len(v))?);
            parts.push(slice(v, r.keep, r.idx)?);
            concat(parts)
        } else {
            slice(v, 0, r.idx)
        }
    }

    /// `_trim`: drop `trim` positions after the first `keep`, then append `append`.
    fn trim(r: Rotation, trim: i32, v: Array, append: Option<&Array>) -> Result<Array> {
        let mut parts = Vec::with_capacity(3);
        if trim > 0 {
            if r.keep > 0 {
                parts.push(slice(&v, 0, r.keep)?);
            }
            parts.push(slice(&v, trim + r.keep, len(&v))?);
        } else {
            parts.push(v);
        }
        parts.extend(append.cloned());
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        concat(parts)
    }

    pub(super) fn update_concat(&mut self, keys: &Array, values: &Array) -> Result<(Array, Array)> {
        let Some(mut r) = self.rotation else {
            unreachable!("rotating caches only")
        };
        match (self.keys.take(), self.values.take()) {
            (Some(k), Some(v)) => {
                let k = self.temporal_order(r, &k)?;
                let v = self.temporal_order(r, &v)?;
                r.idx = len(&k);
                let trim = r.idx - r.max_size + 1;
                self.keys = Some(Self::trim(r, trim, k, Some(keys))?);
                self.values = Some(Self::trim(r, trim, v, Some(values))?);
            }
            _ => {
                self.keys = Some(keys.clone());
                self.values = Some(values.clone());
            }
        }
        self.offset += keys.shape()[2];
        let (k, v) = self.parts();
        r.idx = len(k);
        let out = (k.clone(), v.clone());
        self.rotation = Some(r);
        Ok(out)
    }

    pub(super) fn update_in_place(
        &mut self,
        keys: &Array,
        values: &Array,
    ) -> Result<(Array, Array)> {
        let Some(mut r) = self.rotation else {
            unreachable!("rotating caches only")
        };
        let s = keys.shape()[2];
        let prev = self.offset;
        let grow = match &self.keys {
            None => true,
            Some(k) => prev >= len(k) && len(k) < r.max_size,
        };
        if grow {
            let new_size = KV_STEP.min(r.max_size - prev);
            let (new_k, new_v) = zeros_like_step(keys, values, new_size)?;
            self.append(None, new_k, new_v)?;
            r.idx = prev;
        }
        let trim = self.keys.as_ref().map(len).unwrap_or(0) - r.max_size;
        if trim > 0 {
            if let (Some(k), Some(v)) = (self.keys.take(), self.values.take()) {
                self.keys = Some(Self::trim(r, trim, k, None)?);
                self.values = Some(Self::trim(r, trim, v, None)?);
            }
            r.idx = r.max_size;
        }
        if r.idx == r.max_size {
            r.idx = r.keep;
        }
        let (a, b) = (r.idx, r.idx + s);
        let (k, v) = self.parts();
        *k = slice_update_axis(k, keys, 2, a, b)?;
        *v = slice_update_axis(v, values, 2, a, b)?;
        self.offset += s;
        r.idx += s;
        self.rotation = Some(r);
        let end = self.offset;
        let (k, v) = self.parts();
        if end < len(k) {
            Ok((slice(k, 0, end)?, slice(v, 0, end)?))
        } else {
            Ok((k.clone(), v.clone()))
        }
    }
}
