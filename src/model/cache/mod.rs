//! Per-layer key/value caches, op for op like mlx-lm's `models/cache.py`:
//! - the default cache grows in steps of [`KV_STEP`] positions (preallocated with zeros
//!   and written with slice updates), like `KVCache`;
//! - a rotating cache (sliding-window layers) keeps at most `max_size` positions (the
//!   first `keep` never evicted), like `RotatingKVCache`: multi-token updates concatenate
//!   in temporal order keeping the last `max_size - 1` positions plus the new ones (so
//!   every query sees a full window), single tokens overwrite the oldest slot in place.
//!
//! The physical order of the rotating buffer is kept identical to mlx-lm's, so the
//! attention sums run in the same order and results stay bit-identical.
//!
//! A windowed cache ([`KvCache::windowed`]) is the serving alternative for sliding-window
//! layers: it grows like the default cache, keeping every position, and its masks let each
//! query see only the last `window` keys. Its rows can be batched and kept by the prefix cache
//! like any other (a rotating buffer cannot); the price is memory for the whole context, and
//! sums over the window in temporal rather than rotated order (equal to within rounding).

mod kernel_slot;
mod layer;
mod quantized;
mod rotating;
mod rows;
mod state;

use mlx_rs::{ops, Array};

use super::error::Result;
use super::slicing::{slice_axis, slice_update_axis};
pub use layer::{LayerCache, LayerRow};
pub use quantized::KvQuantization;
use quantized::{is_packed, pack, unpack};
use rotating::Rotation;
use rows::Rows;
pub use rows::{Positions, RowsView};
pub use state::StateCache;

/// Positions added each time the cache grows.
pub const KV_STEP: i32 = 256;

/// The attention mask a forward needs, as mlx-lm's `make_mask` decides it.
#[derive(Clone)]
pub enum AttnMask {
    None,
    Causal,
    /// Boolean `[L, keys]`, true where attention is allowed.
    Array(Array),
    /// Causal within the last `window` keys, the queries being the last `L` of the keys: the
    /// same as `array` (boolean `[L, keys]`), for attention that can skip what it masks
    /// (`model::cpu_attention`).
    Banded {
        window: i32,
        array: Array,
    },
    /// One query per row of a batch (a decode step), row `b` seeing keys `starts[b]..`
    /// (int32 `[B]`): the same as `array` (boolean `[B, 1, 1, keys]`), for attention that
    /// takes the start of each row instead of a mask (`model::cuda::decode_attention`).
    Rows {
        starts: Array,
        array: Array,
    },
}

impl AttnMask {
    /// The boolean mask, if this is one.
    pub fn array(&self) -> Option<&Array> {
        match self {
            AttnMask::Array(a)
            | AttnMask::Banded { array: a, .. }
            | AttnMask::Rows { array: a, .. } => Some(a),
            AttnMask::None | AttnMask::Causal => None,
        }
    }
}

/// Keys and values of one layer, `[B, kv_heads, capacity, head_dim]`.
#[derive(Default)]
pub struct KvCache {
    keys: Option<Array>,
    values: Option<Array>,
    offset: i32,
    rotation: Option<Rotation>,
    /// Several sequences, left-padded (see `rows.rs`); `None` for one.
    rows: Option<Rows>,
    /// A windowed cache's window (see the module doc); `None` for full attention.
    window: Option<i32>,
    /// Quantize keys and values once `start` positions are held (`quantized.rs`); growing
    /// caches only.
    quant: Option<KvQuantization>,
    /// The buffers were made by this cache's own writes (growth, slice updates) and no one
    /// reads past `offset` in them, so a kernel may write the next positions in place
    /// ([`KvCache::kernel_slot`]). False for buffers from elsewhere (a prefix-cache hit, rows
    /// merged or taken) and after positions are dropped (their readers may still be queued).
    own_buffers: bool,
}

/// `v[..., a..b, :]`.
fn slice(v: &Array, a: i32, b: i32) -> Result<Array> {
    slice_axis(v, 2, a, b)
}

fn concat(parts: Vec<Array>) -> Result<Array> {
    Ok(ops::concatenate(&parts, 2)?)
}

fn len(v: &Array) -> i32 {
    v.shape()[2]
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// A growing cache whose queries see only the last `window` positions.
    pub fn windowed(window: i32) -> Self {
        KvCache {
            window: Some(window),
            ..Self::default()
        }
    }

    /// Keys and values quantized as `quant` says from its `start` on (a rotating cache
    /// stays as it is, as mlx-lm's).
    pub fn set_quantization(&mut self, quant: Option<KvQuantization>) {
        if self.rotation.is_none() {
            self.quant = quant;
        }
    }

    /// Whether the positions held are quantized.
    pub fn is_quantized(&self) -> bool {
        self.keys.as_ref().is_some_and(is_packed)
    }

    /// Quantizes the positions held now (nothing if they are, or without a setting). Only the
    /// written positions stay: the next write grows the buffer.
    pub(crate) fn quantize_now(&mut self) -> Result<()> {
        let Some(q) = self.quant else {
            return Ok(());
        };
        if self.is_quantized() {
            return Ok(());
        }
        if let (Some(k), Some(v)) = (self.keys.take(), self.values.take()) {
            self.keys = Some(pack(&slice(&k, 0, self.offset)?, &q)?);
            self.values = Some(pack(&slice(&v, 0, self.offset)?, &q)?);
            self.own_buffers = false;
        }
        Ok(())
    }

    /// The window of a windowed cache.
    pub fn window(&self) -> Option<i32> {
        self.window
    }

    /// Number of positions seen (the next token's position).
    pub fn offset(&self) -> i32 {
        self.offset
    }

    /// Appends `keys`/`values` (`[B, H, L, D]`) and returns the positions to attend to.
    pub fn update_and_fetch(&mut self, keys: &Array, values: &Array) -> Result<(Array, Array)> {
        match self.rotation {
            None => self.update_growing(keys, values),
            Some(_) if keys.shape()[2] == 1 => self.update_in_place(keys, values),
            Some(_) => self.update_concat(keys, values),
        }
    }

    /// The mask for `n` new queries (`create_attention_mask` / `make_mask` in mlx-lm, with
    /// the window of a rotating cache equal to its size).
    pub fn make_mask(&self, n: i32) -> Result<AttnMask> {
        self.mask_within(n, self.window)
    }

    /// The mask for `n` new queries that see at most `window` keys back (any window on a
    /// growing cache; a rotating cache's is its size).
    pub(crate) fn mask_within(&self, n: i32, window: Option<i32>) -> Result<AttnMask> {
        if let Some(r) = &self.rows {
            if n == 1 {
                return Self::row_starts(r, self.offset, window);
            }
            return Ok(AttnMask::Array(Self::padding_mask(
                r,
                self.offset,
                n,
                window,
            )?));
        }
        if let (None, Some(w)) = (self.rotation, window) {
            return Ok(if self.offset + n <= w {
                if n <= 1 {
                    AttnMask::None
                } else {
                    AttnMask::Causal
                }
            } else {
                AttnMask::Banded {
                    window: w,
                    array: causal_mask(n, self.offset, w),
                }
            });
        }
        match self.rotation {
            _ if n <= 1 => Ok(AttnMask::None),
            None => Ok(AttnMask::Causal),
            Some(r) => {
                let offset = (r.max_size - 1).min(self.offset);
                if offset + n > r.max_size {
                    Ok(AttnMask::Banded {
                        window: r.max_size,
                        array: causal_mask(n, offset, r.max_size),
                    })
                } else {
                    Ok(AttnMask::Causal)
                }
            }
        }
    }

    fn parts(&mut self) -> (&mut Array, &mut Array) {
        match (self.keys.as_mut(), self.values.as_mut()) {
            (Some(k), Some(v)) => (k, v),
            _ => unreachable!("the cache is allocated before it is written"),
        }
    }

    fn update_growing(&mut self, keys: &Array, values: &Array) -> Result<(Array, Array)> {
        // As mlx-lm converts after the step that reaches `start`: before this write (with
        // `start` 0, from the first write on).
        let quant = match self.quant {
            Some(q) if self.is_quantized() || self.offset >= q.start => {
                self.quantize_now()?;
                Some(q)
            }
            _ => None,
        };
        let (new_keys, new_values) = match &quant {
            Some(q) => (pack(keys, q)?, pack(values, q)?),
            None => (keys.clone(), values.clone()),
        };
        let (k, v) = self.write_growing(&new_keys, &new_values)?;
        match &quant {
            Some(q) => Ok((unpack(&k, q, keys.dtype())?, unpack(&v, q, values.dtype())?)),
            None => Ok((k, v)),
        }
    }

    /// Appends to a growing buffer; returns the positions held.
    fn write_growing(&mut self, keys: &Array, values: &Array) -> Result<(Array, Array)> {
        let prev = self.offset;
        let l = keys.shape()[2];
        self.make_room(l, keys, values)?;
        self.offset += l;
        let end = self.offset;
        let (k, v) = self.parts();
        *k = slice_update_axis(k, keys, 2, prev, end)?;
        *v = slice_update_axis(v, values, 2, prev, end)?;
        // A slice update's output is a buffer no one else holds: donated (MLX donates only an
        // input nothing else references) or a fresh copy.
        self.own_buffers = true;
        self.held()
    }

    /// Grows the buffers (shaped and typed as `keys`, `values`) so that `l` more positions fit.
    fn make_room(&mut self, l: i32, keys: &Array, values: &Array) -> Result<()> {
        let prev = self.offset;
        let capacity = self.keys.as_ref().map(len).unwrap_or(0);
        if self.keys.is_some() && prev + l <= capacity {
            return Ok(());
        }
        let n = (KV_STEP + l - 1) / KV_STEP * KV_STEP;
        let (new_k, new_v) = zeros_like_step(keys, values, n)?;
        let keep = (self.keys.as_ref())
            .is_some_and(|k| prev % KV_STEP != 0 || prev < len(k))
            .then_some(prev);
        self.append(keep, new_k, new_v)?;
        self.own_buffers = true;
        Ok(())
    }

    /// Appends `new_k` / `new_v` to the buffers (after their first `keep` positions, where
    /// given), or makes them the buffers where there are none yet.
    fn append(&mut self, keep: Option<i32>, new_k: Array, new_v: Array) -> Result<()> {
        match (self.keys.take(), self.values.take()) {
            (Some(mut k), Some(mut v)) => {
                if let Some(n) = keep {
                    k = slice(&k, 0, n)?;
                    v = slice(&v, 0, n)?;
                }
                self.keys = Some(concat(vec![k, new_k])?);
                self.values = Some(concat(vec![v, new_v])?);
            }
            _ => {
                self.keys = Some(new_k);
                self.values = Some(new_v);
            }
        }
        Ok(())
    }

    /// The positions held, `[.., 0..offset, ..]` of the buffers.
    fn held(&mut self) -> Result<(Array, Array)> {
        let end = self.offset;
        let (k, v) = self.parts();
        if end < len(k) {
            Ok((slice(k, 0, end)?, slice(v, 0, end)?))
        } else {
            Ok((k.clone(), v.clone()))
        }
    }

    /// Makes evaluating this cache also evaluate `dep` (no copy). A pipeline rank ties its
    /// `send` to its last cache this way: prefill evaluates only the caches, and the next
    /// rank would otherwise wait for a send that never runs.
    pub(crate) fn depend_on(&mut self, dep: &Array) -> Result<()> {
        if let Some(keys) = self.keys.take() {
            let mut tied = crate::dist::depends(&[&keys], &[dep])?;
            self.keys = tied.pop();
            self.own_buffers = false;
        }
        Ok(())
    }

    /// The arrays to evaluate to materialize the cache.
    pub fn state(&self) -> Vec<&Array> {
        self.keys.iter().chain(self.values.iter()).collect()
    }

    pub fn nbytes(&self) -> usize {
        self.state().iter().map(|a| a.nbytes()).sum()
    }
}

fn zeros_like_step(keys: &Array, values: &Array, n: i32) -> Result<(Array, Array)> {
    let (b, h, dk) = (keys.shape()[0], keys.shape()[1], keys.shape()[3]);
    let dv = values.shape()[3];
    Ok((
        ops::zeros_dtype(&[b, h, n, dk], keys.dtype())?,
        ops::zeros_dtype(&[b, h, n, dv], values.dtype())?,
    ))
}

/// mlx-lm's `create_causal_mask(n, offset, window_size)`: query `i` (position
/// `offset + i`) may see key `j` iff `j <= offset + i < j + window`.
pub fn causal_mask(n: i32, offset: i32, window: i32) -> Array {
    let keys = offset + n;
    let allowed: Vec<bool> = (0..n)
        // `offset + i - j < window`, not `offset + i < j + window`: the latter overflows
        // for an unbounded window (`i32::MAX`).
        .flat_map(|i| (0..keys).map(move |j| offset + i >= j && offset + i - j < window))
        .collect();
    Array::from_slice(&allowed, &[n, keys])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(a: &Array) -> Vec<bool> {
        a.eval().unwrap();
        a.as_slice::<bool>().to_vec()
    }

    #[test]
    fn causal_masks_with_and_without_a_window() {
        // Two queries at positions 2 and 3 over keys 0..4.
        let all = host(&causal_mask(2, 2, i32::MAX));
        assert_eq!(
            all,
            [true, true, true, false, true, true, true, true],
            "an unbounded window is plain causal"
        );
        let banded = host(&causal_mask(2, 2, 2));
        assert_eq!(banded, [false, true, true, false, false, false, true, true]);
    }

    /// Positions numbered by value: `[1, 1, n, 1]` holding `from..from + n`.
    pub(super) fn numbered(from: i32, n: i32) -> Array {
        Array::from_iter((from..from + n).map(|v| v as f32), &[1, 1, n, 1])
    }

    fn row_values(c: &KvCache, b: usize) -> Vec<f32> {
        let (k, _, _) = c.row(b).unwrap().unwrap();
        k.eval().unwrap();
        k.as_slice::<f32>().to_vec()
    }

    /// A verify step's rejected drafts leave every row: rows that keep fewer are shifted
    /// right (more padding), the positions they keep unchanged, and the next write lands
    /// after each row's last kept position.
    #[test]
    fn rows_drop_their_rejected_tails() {
        let mut a = KvCache::new();
        a.update_and_fetch(&numbered(0, 3), &numbered(0, 3))
            .unwrap();
        let mut b = KvCache::new();
        b.update_and_fetch(&numbered(10, 2), &numbered(10, 2))
            .unwrap();
        let mut batch = KvCache::merge(vec![a, b]).unwrap();
        // Four new positions per row: the pending token and three drafts.
        let new = ops::concatenate(&[numbered(100, 4), numbered(200, 4)], 0).unwrap();
        batch.update_and_fetch(&new, &new).unwrap();
        // Row 0 keeps two drafts, row 1 none.
        batch.drop_tail(&[1, 3]).unwrap();
        assert_eq!(row_values(&batch, 0), [0.0, 1.0, 2.0, 100.0, 101.0, 102.0]);
        assert_eq!(row_values(&batch, 1), [10.0, 11.0, 200.0]);
        let Positions::PerRow(p) = batch.positions().unwrap() else {
            panic!("two rows have their own positions");
        };
        p.eval().unwrap();
        assert_eq!(p.as_slice::<i32>(), [6, 3]);
        let next = ops::concatenate(&[numbered(300, 1), numbered(400, 1)], 0).unwrap();
        batch.update_and_fetch(&next, &next).unwrap();
        assert_eq!(
            row_values(&batch, 0),
            [0.0, 1.0, 2.0, 100.0, 101.0, 102.0, 300.0]
        );
        assert_eq!(row_values(&batch, 1), [10.0, 11.0, 200.0, 400.0]);
        // The next query's mask hides the shifted-in columns.
        let m = batch.make_mask(1).unwrap();
        let (AttnMask::Rows { starts, .. }, Some(m)) = (&m, m.array()) else {
            panic!("a batch has a mask");
        };
        assert_eq!(starts.as_slice::<i32>(), [0, 3]);
        assert_eq!(
            host(m),
            [
                true, true, true, true, true, true, true, true, // row 0
                false, false, false, true, true, true, true, true, // row 1
            ]
        );
        // One row: only the offset moves.
        let mut one = KvCache::new();
        one.update_and_fetch(&numbered(0, 5), &numbered(0, 5))
            .unwrap();
        one.drop_tail(&[2]).unwrap();
        assert_eq!(one.offset(), 3);
        assert!(one.drop_tail(&[1, 1]).is_err(), "one row, two drops");
        assert!(KvCache::rotating(8, 0).drop_tail(&[0]).is_err());
    }

    /// A windowed cache keeps every position; its queries see only the last `window`.
    #[test]
    fn windowed_caches_grow_and_mask_to_their_window() {
        let mut c = KvCache::windowed(3);
        let kv = |n: i32| ops::zeros::<f32>(&[1, 1, n, 2]).unwrap();
        assert!(matches!(c.make_mask(2).unwrap(), AttnMask::Causal));
        c.update_and_fetch(&kv(2), &kv(2)).unwrap();
        assert!(
            matches!(c.make_mask(1).unwrap(), AttnMask::None),
            "3 keys fit"
        );
        c.update_and_fetch(&kv(2), &kv(2)).unwrap();
        let (k, _) = c.update_and_fetch(&kv(1), &kv(1)).unwrap();
        assert_eq!(k.shape()[2], 5, "nothing is dropped");
        let AttnMask::Banded {
            window: 3,
            array: m,
        } = c.make_mask(1).unwrap()
        else {
            panic!("the sixth query needs a window mask");
        };
        assert_eq!(host(&m), [false, false, false, true, true, true]);
        // Two rows: the padding and the window both apply.
        let mut other = KvCache::windowed(3);
        other.update_and_fetch(&kv(2), &kv(2)).unwrap();
        let batch = KvCache::merge(vec![c, other]).unwrap();
        let m = batch.make_mask(1).unwrap();
        let (AttnMask::Rows { starts, .. }, Some(m)) = (&m, m.array()) else {
            panic!("a batch has a mask");
        };
        assert_eq!(
            starts.as_slice::<i32>(),
            [3, 3],
            "the window and the padding"
        );
        assert_eq!(
            host(m),
            [false, false, false, true, true, true, false, false, false, true, true, true]
        );
    }
}
