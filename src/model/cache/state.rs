//! The recurrent state of one layer (Mamba-2's conv and SSM states, Gated DeltaNet's conv and
//! recurrent states), as mlx-lm's `ArraysCache`: a fixed number of arrays per sequence, each
//! `[B, ...]`, replaced (never grown) by every forward.
//!
//! Unlike keys and values, a state cannot be cut back to a shorter prefix: it is what the
//! layer holds after exactly the tokens it has read. So a sequence's state can only be kept
//! whole ([`StateCache::row`]: a snapshot after `n` tokens) and resumed from there; the
//! prefix cache keeps such snapshots as checkpoints. Rows batch by concatenation: a
//! recurrence needs no padding, every row decodes one token per step.

use mlx_rs::{ops, Array};

use crate::model::error::{ModelError, Result};

#[derive(Clone)]
pub struct StateCache {
    arrays: Vec<Option<Array>>,
    /// Tokens each row has read.
    lengths: Vec<i32>,
}

impl StateCache {
    /// An empty state of `n` arrays for one sequence.
    pub fn new(n: usize) -> Self {
        StateCache {
            arrays: vec![None; n],
            lengths: vec![0],
        }
    }

    /// A one-row state resumed from a snapshot taken after `n` tokens. The arrays are only
    /// read: the next forward writes new ones.
    pub fn from_snapshot(arrays: &[Array], n: i32) -> Self {
        StateCache {
            arrays: arrays.iter().cloned().map(Some).collect(),
            lengths: vec![n],
        }
    }

    /// Array `i` (`None` before the first forward).
    pub fn get(&self, i: usize) -> Option<&Array> {
        self.arrays.get(i).and_then(Option::as_ref)
    }

    pub fn set(&mut self, i: usize, a: Array) {
        if let Some(slot) = self.arrays.get_mut(i) {
            *slot = Some(a);
        }
    }

    /// Every row has read `n` more tokens.
    pub fn advance(&mut self, n: i32) {
        self.lengths.iter_mut().for_each(|l| *l += n);
    }

    /// Tokens read by the longest row.
    pub fn offset(&self) -> i32 {
        self.lengths.iter().copied().max().unwrap_or(0)
    }

    pub fn rows(&self) -> usize {
        self.lengths.len()
    }

    fn written(&self) -> bool {
        self.arrays.iter().all(Option::is_some)
    }

    /// One state holding the rows of every part, in order; all must be written.
    pub fn merge(parts: Vec<StateCache>) -> Result<StateCache> {
        if parts.len() == 1 {
            return Ok(parts.into_iter().next().unwrap_or_else(|| Self::new(0)));
        }
        if parts.iter().any(|p| !p.written()) {
            return Err(ModelError::Request(
                "only written recurrent states can be batched".into(),
            ));
        }
        let n = parts.first().map(|p| p.arrays.len()).unwrap_or(0);
        let mut arrays = Vec::with_capacity(n);
        for i in 0..n {
            let each: Vec<&Array> = parts.iter().filter_map(|p| p.get(i)).collect();
            arrays.push(Some(ops::concatenate(&each, 0)?));
        }
        Ok(StateCache {
            arrays,
            lengths: parts
                .iter()
                .flat_map(|p| p.lengths.iter().copied())
                .collect(),
        })
    }

    /// Keeps only rows `keep` (ascending indices).
    pub fn retain_rows(&mut self, keep: &[usize]) -> Result<()> {
        if keep.iter().any(|&i| i >= self.lengths.len()) {
            return Err(ModelError::Request("row index out of range".into()));
        }
        if keep.len() == self.lengths.len() {
            return Ok(());
        }
        let idx: Vec<i32> = keep.iter().map(|&i| i as i32).collect();
        let idx = Array::from_slice(&idx, &[idx.len() as i32]);
        for a in self.arrays.iter_mut().flatten() {
            *a = a.take_axis(&idx, 0)?;
        }
        self.lengths = keep.iter().map(|&i| self.lengths[i]).collect();
        Ok(())
    }

    /// The tokens row `b` has read, when [`Self::row`] gives it (`None` before the first
    /// forward).
    pub fn row_len(&self, b: usize) -> Option<i32> {
        let n = *self.lengths.get(b)?;
        (self.written() && n > 0).then_some(n)
    }

    /// Row `b`'s state as arrays of its own (a view would keep the whole batch alive), and
    /// the tokens it has read; `None` before the first forward.
    pub fn row(&self, b: usize) -> Result<Option<(Vec<Array>, i32)>> {
        let Some(n) = self.row_len(b) else {
            return Ok(None);
        };
        if self.lengths.len() == 1 {
            // Arrays are immutable and the next forward replaces them: no copy needed.
            return Ok(Some((self.arrays.iter().flatten().cloned().collect(), n)));
        }
        let b = b as i32;
        let mut own = Vec::with_capacity(self.arrays.len());
        for a in self.arrays.iter().flatten() {
            let r = crate::model::slicing::slice_axis(a, 0, b, b + 1)?;
            own.push(r.multiply(Array::from_f32(1.0).as_dtype(r.dtype())?)?);
        }
        Ok(Some((own, n)))
    }

    /// Makes evaluating this state also evaluate `dep` (see `KvCache::depend_on`).
    pub(crate) fn depend_on(&mut self, dep: &Array) -> Result<()> {
        if let Some(Some(first)) = self.arrays.first_mut() {
            let mut tied = crate::dist::depends(&[&*first], &[dep])?;
            if let Some(t) = tied.pop() {
                *first = t;
            }
        }
        Ok(())
    }

    pub fn state(&self) -> Vec<&Array> {
        self.arrays.iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(v: f32, rows: i32) -> StateCache {
        let mut s = StateCache::new(2);
        s.set(0, ops::full::<f32>(&[rows, 3], Array::from_f32(v)).unwrap());
        s.set(
            1,
            ops::full::<f32>(&[rows, 2, 2], Array::from_f32(v)).unwrap(),
        );
        s.advance(5);
        s
    }

    #[test]
    fn rows_merge_leave_and_come_out_whole() {
        let mut a = filled(1.0, 1);
        a.advance(2);
        let b = filled(2.0, 1);
        let mut m = StateCache::merge(vec![a, b]).unwrap();
        assert_eq!(m.rows(), 2);
        assert_eq!(m.get(1).unwrap().shape(), &[2, 2, 2]);
        let (row, n) = m.row(1).unwrap().unwrap();
        assert_eq!(n, 5);
        assert_eq!(row[0].as_slice::<f32>(), &[2.0, 2.0, 2.0]);
        m.retain_rows(&[0]).unwrap();
        let (row, n) = m.row(0).unwrap().unwrap();
        assert_eq!((n, row[1].shape()), (7, &[1, 2, 2][..]));
        assert!(StateCache::merge(vec![StateCache::new(2), filled(1.0, 1)]).is_err());
        assert!(StateCache::new(2).row(0).unwrap().is_none());
    }
}
