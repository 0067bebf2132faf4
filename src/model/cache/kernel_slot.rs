//! Writes by a kernel into a cache's own buffers (the fused q/k/v kernel's k and v heads of a
//! decode step, `RopeFold::into_cache`): which buffers may be handed out, and the count after.
//! MLX treats a kernel's inputs as read-only, so the rule is kept here (`own_buffers`).

use mlx_rs::Array;

use super::KvCache;
use crate::model::error::Result;

impl KvCache {
    /// The whole key and value buffers, with room for `l` more positions, when a kernel may
    /// write those in place (then [`Self::kernel_wrote`]): one sequence, a growing cache whose
    /// next positions stay unquantized, buffers of its own (see `own_buffers`). `None` where
    /// the positions go through [`Self::update_and_fetch`].
    pub fn kernel_slot(&mut self, l: i32) -> Result<Option<(Array, Array)>> {
        let unquantized = match self.quant {
            Some(q) => !self.is_quantized() && self.offset + l <= q.start,
            None => true,
        };
        let (Some(k), Some(v)) = (&self.keys, &self.values) else {
            return Ok(None);
        };
        if self.rotation.is_some() || self.rows.is_some() || !unquantized {
            return Ok(None);
        }
        let (k, v) = (k.clone(), v.clone());
        self.make_room(l, &k, &v)?;
        if !self.own_buffers {
            return Ok(None);
        }
        let (k, v) = self.parts();
        Ok(Some((k.clone(), v.clone())))
    }

    /// A kernel wrote the next `l` positions into [`Self::kernel_slot`]'s buffers: counts them
    /// and returns the positions held, as [`Self::update_and_fetch`] does.
    pub fn kernel_wrote(&mut self, l: i32) -> Result<(Array, Array)> {
        self.offset += l;
        self.held()
    }
}

#[cfg(test)]
mod tests {
    use mlx_rs::ops;

    use super::super::tests::numbered;
    use super::super::{slice, KvQuantization, KV_STEP};
    use super::*;

    /// Values of a `[1, 1, n, 1]` array.
    fn values_of(a: &Array) -> Vec<f32> {
        a.eval().unwrap();
        a.as_slice::<f32>().to_vec()
    }

    /// A kernel may write a cache in place only where the buffers are the cache's own and
    /// nothing may still read the positions it writes: a grown or slice-updated buffer of one
    /// sequence, not a prefix-cache hit's, not after positions were dropped, not rows, not a
    /// rotating or quantized cache. The slot has room, and `kernel_wrote` counts the positions.
    #[test]
    fn kernels_write_in_place_only_into_buffers_of_the_cache_own() {
        let mut c = KvCache::new();
        assert!(c.kernel_slot(1).unwrap().is_none(), "nothing allocated yet");
        c.update_and_fetch(&numbered(0, 3), &numbered(0, 3))
            .unwrap();
        let (k, _) = c.kernel_slot(1).unwrap().expect("a buffer of its own");
        assert_eq!(k.shape(), [1, 1, KV_STEP, 1]);
        let (k, v) = c.kernel_wrote(1).unwrap();
        assert_eq!((c.offset(), k.shape()[2], v.shape()[2]), (4, 4, 4));
        assert_eq!(values_of(&k)[..3], [0.0, 1.0, 2.0]);

        // A full buffer grows first, keeping what it holds.
        let mut full = KvCache::new();
        full.update_and_fetch(&numbered(0, KV_STEP), &numbered(0, KV_STEP))
            .unwrap();
        let (k, _) = full.kernel_slot(1).unwrap().expect("grown");
        assert_eq!(k.shape()[2], 2 * KV_STEP);
        assert_eq!(
            values_of(&slice(&k, 0, KV_STEP).unwrap()),
            values_of(&numbered(0, KV_STEP))
        );

        // A prefix-cache hit reads the stored arrays: the first write makes a buffer of its own.
        let stored = numbered(0, 8);
        let mut hit = KvCache::from_prefix(&stored, &stored, 5, &KvCache::new()).unwrap();
        let (k, _) = hit.kernel_slot(1).unwrap().expect("a new buffer");
        assert_eq!(k.shape()[2], 5 + KV_STEP, "grown as mlx-lm grows it");
        assert_eq!(
            values_of(&slice(&k, 0, 5).unwrap()),
            [0.0, 1.0, 2.0, 3.0, 4.0]
        );

        // Dropped positions may still be read: one slice update, then in place again.
        c.drop_tail(&[2]).unwrap();
        assert!(c.kernel_slot(1).unwrap().is_none(), "after a drop");
        c.update_and_fetch(&numbered(50, 1), &numbered(50, 1))
            .unwrap();
        assert!(c.kernel_slot(1).unwrap().is_some(), "after a slice update");

        // Rows, rotating and quantized caches keep their own updates.
        let mut other = KvCache::new();
        other
            .update_and_fetch(&numbered(0, 2), &numbered(0, 2))
            .unwrap();
        let mut rows = KvCache::merge(vec![c, other]).unwrap();
        assert!(rows.kernel_slot(1).unwrap().is_none(), "rows");
        let mut rotating = KvCache::rotating(16, 0);
        rotating
            .update_and_fetch(&numbered(0, 3), &numbered(0, 3))
            .unwrap();
        assert!(rotating.kernel_slot(1).unwrap().is_none(), "rotating");
        let quant = |start| KvQuantization {
            bits: 8,
            group_size: 32,
            start,
        };
        let kv = |n: i32| ops::zeros::<f32>(&[1, 1, n, 32]).unwrap();
        let mut later = KvCache::new();
        later.set_quantization(Some(quant(4)));
        later.update_and_fetch(&kv(3), &kv(3)).unwrap();
        assert!(
            later.kernel_slot(1).unwrap().is_some(),
            "position 3 stays plain"
        );
        later.kernel_wrote(1).unwrap();
        assert!(
            later.kernel_slot(1).unwrap().is_none(),
            "position 4 is quantized"
        );
    }
}
