//! A draft model: a smaller model with the same vocabulary proposes each row's next tokens by
//! greedy decoding, and the model verifies them (`step.rs`).
//!
//! The draft keeps caches of its own, row for row with the decode batch's, holding the same
//! tokens as the model's. A verify step runs the draft `k + 1` times over every row (the
//! pending token, then each draft token, the last forward only to cache the last draft) in
//! one lazy chain read once, and afterwards drops what the model refused, as the model's own
//! caches do. A plain decode step (a batch too full to speculate) feeds the draft the same
//! tokens, queued with the model's forward, so the two never drift apart. A prompt is read
//! by the draft once its prefill is done; the draft has a prefix cache of its own, so a
//! resent conversation costs it as little as it costs the model.

use mlx_rs::ops::indexing::argmax_axis;
use mlx_rs::{ops, transforms, Array};

use crate::engine::prefix_cache::PrefixCache;
use crate::model::{LanguageModel, LayerCache, ModelError, Result};

pub struct DraftModel {
    model: Box<dyn LanguageModel>,
    prefix: Option<PrefixCache>,
    /// Sliding-window layers keep windowed caches (as the engine's serving caches).
    windowed: bool,
}

impl DraftModel {
    /// `prefix_tokens`: the draft's own prefix cache budget (0: none). Fails when the draft
    /// cannot drop refused positions (sliding-window rotation, recurrent layers).
    pub fn new(
        model: Box<dyn LanguageModel>,
        prefix_tokens: usize,
        windowed: bool,
    ) -> Result<Self> {
        let draft = DraftModel {
            model,
            prefix: (prefix_tokens > 0)
                .then(|| PrefixCache::with_checkpoints(prefix_tokens, false, 0)),
            windowed,
        };
        if draft
            .fresh()
            .iter()
            .any(|c| c.is_rotating() || c.is_recurrent())
        {
            return Err(ModelError::Request(
                "the draft model's caches cannot drop refused positions (sliding-window \
                 rotation or recurrent layers): choose an attention-only draft model"
                    .into(),
            ));
        }
        Ok(draft)
    }

    pub fn model(&self) -> &dyn LanguageModel {
        self.model.as_ref()
    }

    fn fresh(&self) -> Vec<LayerCache> {
        match self.windowed {
            true => self.model.make_batchable_caches(),
            false => self.model.make_caches(),
        }
    }

    /// Caches holding all of `prompt`: its longest prefix in the draft's prefix cache, the
    /// rest read `chunk` tokens at a time.
    pub fn prefill(&mut self, prompt: &[u32], chunk: usize) -> Result<Vec<LayerCache>> {
        let fresh = self.fresh();
        let hit = match self.prefix.as_mut() {
            Some(prefix) => prefix.lookup(prompt, &fresh)?,
            None => None,
        };
        let (mut caches, mut done) = hit.unwrap_or((fresh, 0));
        while done < prompt.len() {
            let n = chunk.max(1).min(prompt.len() - done);
            let ids = Array::from_slice(&prompt[done..done + n], &[1, n as i32]);
            let _ = self.model.forward(&ids, &mut caches)?;
            transforms::eval(caches.iter().flat_map(|c| c.state()))?;
            done += n;
        }
        if let Some(prefix) = self.prefix.as_mut() {
            prefix.offer(&caches, 0, prompt)?;
        }
        Ok(caches)
    }

    /// Feeds `input` (`[B, 1]`, possibly still lazy) as a plain step feeds the model, so the
    /// draft's caches keep holding what the model's hold; queued, not waited for.
    pub fn follow(&self, input: &Array, caches: &mut [LayerCache]) -> Result<()> {
        let _ = self.model.forward(input, caches)?;
        transforms::async_eval(caches.iter().flat_map(|c| c.state()))?;
        Ok(())
    }

    /// `k` greedy draft tokens for every row after its `pending` token; the caches gain
    /// `k + 1` positions per row (the pending token and the `k` drafts). A draft ends early
    /// at an id outside `vocab` (the model's), which the model could not read.
    pub fn propose(
        &self,
        pending: &[u32],
        k: usize,
        vocab: usize,
        caches: &mut [LayerCache],
    ) -> Result<Vec<Vec<u32>>> {
        let b = pending.len() as i32;
        let mut input = Array::from_slice(pending, &[b, 1]);
        let mut drafted = Vec::with_capacity(k);
        for i in 0..=k {
            let logits = self.model.forward(&input, caches)?;
            if i == k {
                break;
            }
            input = argmax_axis(&logits, -1, false)?.reshape(&[b, 1])?;
            drafted.push(input.clone());
        }
        let mut queued: Vec<&Array> = caches.iter().flat_map(|c| c.state()).collect();
        if drafted.is_empty() {
            transforms::eval(queued)?;
            return Ok(vec![Vec::new(); pending.len()]);
        }
        let tokens = ops::concatenate(&drafted, 1)?.as_dtype(mlx_rs::Dtype::Uint32)?;
        queued.push(&tokens);
        transforms::eval(queued)?;
        let ids = tokens.as_slice::<u32>();
        Ok(ids
            .chunks(k)
            .map(|row| {
                let ok = row.iter().take_while(|&&t| (t as usize) < vocab).count();
                row[..ok].to_vec()
            })
            .collect())
    }

    /// Keeps row `row` of `caches` (holding `tokens`) in the draft's prefix cache.
    pub fn offer(&mut self, caches: &[LayerCache], row: usize, tokens: &[u32]) -> Result<()> {
        match self.prefix.as_mut() {
            Some(prefix) => prefix.offer(caches, row, tokens),
            None => Ok(()),
        }
    }
}
