//! One layer's cache, whatever the layer keeps: keys and values (attention), a recurrent
//! state (Mamba-2, Gated DeltaNet), or nothing (a feed-forward-only layer of a hybrid model).
//! The engine batches, splits and prefix-caches every kind through this one type.

use mlx_rs::Array;

use super::{KvCache, KvQuantization, StateCache};
use crate::model::error::{ModelError, Result};

pub enum LayerCache {
    Kv(KvCache),
    State(StateCache),
    /// The layer keeps nothing between forwards.
    Stateless,
}

/// What one sequence's row of a layer cache holds, as arrays of its own: what the prefix
/// cache keeps.
#[derive(Clone)]
pub enum LayerRow {
    /// Keys and values `[1, H, n, D]`: any prefix of them serves.
    Kv(Array, Array),
    /// A state after exactly `n` tokens: serves only at `n`.
    State(Vec<Array>),
    Stateless,
}

impl From<KvCache> for LayerCache {
    fn from(c: KvCache) -> Self {
        LayerCache::Kv(c)
    }
}

impl LayerCache {
    /// The keys and values of an attention layer.
    pub fn kv(&mut self) -> Result<&mut KvCache> {
        match self {
            LayerCache::Kv(c) => Ok(c),
            _ => Err(ModelError::Request(
                "an attention layer was given a cache of another kind".into(),
            )),
        }
    }

    /// The state of a recurrent layer.
    pub fn recurrent(&mut self) -> Result<&mut StateCache> {
        match self {
            LayerCache::State(c) => Ok(c),
            _ => Err(ModelError::Request(
                "a recurrent layer was given a cache of another kind".into(),
            )),
        }
    }

    pub fn as_kv(&self) -> Option<&KvCache> {
        match self {
            LayerCache::Kv(c) => Some(c),
            _ => None,
        }
    }

    pub fn is_recurrent(&self) -> bool {
        matches!(self, LayerCache::State(_))
    }

    pub fn is_rotating(&self) -> bool {
        self.as_kv().is_some_and(KvCache::is_rotating)
    }

    pub fn window(&self) -> Option<i32> {
        self.as_kv().and_then(KvCache::window)
    }

    /// Positions read (the longest row's).
    pub fn offset(&self) -> i32 {
        match self {
            LayerCache::Kv(c) => c.offset(),
            LayerCache::State(s) => s.offset(),
            LayerCache::Stateless => 0,
        }
    }

    /// One cache holding the rows of every part (all of one kind), in order.
    pub fn merge(parts: Vec<LayerCache>) -> Result<LayerCache> {
        let mut kv = Vec::new();
        let mut state = Vec::new();
        let mut stateless = 0;
        for p in parts {
            match p {
                LayerCache::Kv(c) => kv.push(c),
                LayerCache::State(s) => state.push(s),
                LayerCache::Stateless => stateless += 1,
            }
        }
        match (kv.is_empty(), state.is_empty()) {
            (false, true) if stateless == 0 => Ok(LayerCache::Kv(KvCache::merge(kv)?)),
            (true, false) if stateless == 0 => Ok(LayerCache::State(StateCache::merge(state)?)),
            (true, true) => Ok(LayerCache::Stateless),
            _ => Err(ModelError::Request(
                "caches of different kinds cannot be batched".into(),
            )),
        }
    }

    /// Keys and values quantized from `quant.start` positions on (attention layers).
    pub fn set_quantization(&mut self, quant: Option<KvQuantization>) {
        if let LayerCache::Kv(c) = self {
            c.set_quantization(quant);
        }
    }

    /// Keeps only rows `keep` (ascending indices).
    pub fn retain_rows(&mut self, keep: &[usize]) -> Result<()> {
        match self {
            LayerCache::Kv(c) => c.retain_rows(keep),
            LayerCache::State(s) => s.retain_rows(keep),
            LayerCache::Stateless => Ok(()),
        }
    }

    /// Forgets the last `drop[b]` positions of every row `b` (see [`KvCache::drop_tail`]); a
    /// recurrent state cannot.
    pub fn drop_tail(&mut self, drop: &[i32]) -> Result<()> {
        match self {
            LayerCache::Kv(c) => c.drop_tail(drop),
            LayerCache::Stateless => Ok(()),
            LayerCache::State(_) => Err(ModelError::Request(
                "a recurrent state cannot drop positions".into(),
            )),
        }
    }

    /// Row `b` as arrays of its own and the tokens it holds (`None` for the row count of a
    /// stateless layer); `None` when this cache cannot give one (rotating, or empty).
    pub fn row(&self, b: usize) -> Result<Option<(LayerRow, Option<i32>)>> {
        Ok(match self {
            LayerCache::Kv(c) => c.row(b)?.map(|(k, v, n)| (LayerRow::Kv(k, v), Some(n))),
            LayerCache::State(s) => s.row(b)?.map(|(a, n)| (LayerRow::State(a), Some(n))),
            LayerCache::Stateless => Some((LayerRow::Stateless, None)),
        })
    }

    /// What [`Self::row`] would give as its length, without copying anything: `None` when
    /// it would give no row, `Some(None)` for a stateless layer.
    pub fn row_len(&self, b: usize) -> Option<Option<i32>> {
        match self {
            LayerCache::Kv(c) => c.row_len(b).map(Some),
            LayerCache::State(s) => s.row_len(b).map(Some),
            LayerCache::Stateless => Some(None),
        }
    }

    /// Row `b`'s first `n` positions of a right-padded batched prefill (attention layers
    /// only: a recurrent state would have read the padding).
    pub fn row_head(&self, b: usize, n: i32) -> Result<LayerCache> {
        match self {
            LayerCache::Kv(c) => Ok(LayerCache::Kv(c.row_head(b, n)?)),
            LayerCache::Stateless => Ok(LayerCache::Stateless),
            LayerCache::State(_) => Err(ModelError::Request(
                "recurrent layers cannot be prefilled right-padded".into(),
            )),
        }
    }

    /// A one-row cache resumed from `row` after its first `n` tokens, of the kind of `like`.
    pub fn from_row(row: &LayerRow, n: i32, like: &LayerCache) -> Result<LayerCache> {
        match (row, like) {
            (LayerRow::Kv(k, v), LayerCache::Kv(like)) => {
                Ok(LayerCache::Kv(KvCache::from_prefix(k, v, n, like)?))
            }
            (LayerRow::State(a), LayerCache::State(_)) => {
                Ok(LayerCache::State(StateCache::from_snapshot(a, n)))
            }
            (LayerRow::Stateless, LayerCache::Stateless) => Ok(LayerCache::Stateless),
            _ => Err(ModelError::Request(
                "a cached row of another kind than the layer's cache".into(),
            )),
        }
    }

    pub(crate) fn depend_on(&mut self, dep: &Array) -> Result<()> {
        match self {
            LayerCache::Kv(c) => c.depend_on(dep),
            LayerCache::State(s) => s.depend_on(dep),
            LayerCache::Stateless => Ok(()),
        }
    }

    /// The arrays to evaluate to materialize the cache.
    pub fn state(&self) -> Vec<&Array> {
        match self {
            LayerCache::Kv(c) => c.state(),
            LayerCache::State(s) => s.state(),
            LayerCache::Stateless => Vec::new(),
        }
    }

    pub fn nbytes(&self) -> usize {
        self.state().iter().map(|a| a.nbytes()).sum()
    }

    /// Positions held per row including padding (attention layers; 0 for the others).
    pub fn capacity(&self) -> i32 {
        self.as_kv().map(KvCache::capacity).unwrap_or(0)
    }
}

impl LayerRow {
    pub fn nbytes(&self) -> usize {
        match self {
            LayerRow::Kv(k, v) => k.nbytes() + v.nbytes(),
            LayerRow::State(a) => a.iter().map(Array::nbytes).sum(),
            LayerRow::Stateless => 0,
        }
    }

    pub fn arrays(&self) -> Vec<&Array> {
        match self {
            LayerRow::Kv(k, v) => vec![k, v],
            LayerRow::State(a) => a.iter().collect(),
            LayerRow::Stateless => Vec::new(),
        }
    }
}
