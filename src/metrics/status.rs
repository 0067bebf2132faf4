//! The scrape-time half of the metrics: gauges (and the prefix cache's counters, which the
//! engine keeps itself) read from the [`RuntimeStatus`] snapshot of the scrape in progress.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use crate::runtime::RuntimeStatus;

/// Encodes the snapshot [`Metrics::render`](super::Metrics::render) stored.
#[derive(Debug)]
pub(super) struct StatusCollector(pub Arc<Mutex<RuntimeStatus>>);

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, unit, g.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for StatusCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        let tokens = Unit::Other("tokens".into());
        let (bytes, seconds) = (Unit::Bytes, Unit::Seconds);
        let e = &mut e;
        gauge(
            e,
            "requests_waiting",
            "Generation requests accepted and waiting for admission",
            None,
            s.waiting as f64,
        )?;
        gauge(
            e,
            "requests_running",
            "Generation requests admitted (prefilling or decoding)",
            None,
            s.running as f64,
        )?;
        gauge(
            e,
            "kv_budget",
            "KV cache positions admission may hand out",
            Some(&tokens),
            s.kv_budget_tokens as f64,
        )?;
        gauge(
            e,
            "kv_reserved",
            "KV cache positions reserved for the running requests (prompt + max_tokens each)",
            Some(&tokens),
            s.kv_reserved_tokens as f64,
        )?;
        gauge(
            e,
            "kv_batch",
            "KV cache positions the decode batch holds (rows x longest row, padding included)",
            Some(&tokens),
            s.engine.batch_positions as f64,
        )?;
        gauge(
            e,
            "engine_step_elapsed",
            "How long the engine step now running has run (0: none is running)",
            Some(&seconds),
            s.step_ms as f64 / 1e3,
        )?;
        let p = s.engine.prefix_cache;
        counter(
            e,
            "prefix_cache_hits",
            "Prompts that resumed from a prefix-cache entry",
            p.hits,
        )?;
        counter(
            e,
            "prefix_cache_misses",
            "Prompts the prefix cache had nothing for",
            p.misses,
        )?;
        counter(
            e,
            "prefix_cache_evictions",
            "Prefix-cache entries evicted to stay within the budget",
            p.evictions,
        )?;
        gauge(
            e,
            "prefix_cache_entries",
            "Prefix-cache entries",
            None,
            p.entries as f64,
        )?;
        gauge(
            e,
            "prefix_cache",
            "Prompt positions the prefix cache holds",
            Some(&tokens),
            p.tokens as f64,
        )?;
        gauge(
            e,
            "prefix_cache_budget",
            "The prefix cache's budget (0: off)",
            Some(&tokens),
            p.budget_tokens as f64,
        )?;
        gauge(
            e,
            "prefix_cache",
            "Memory the prefix cache's entries hold",
            Some(&bytes),
            p.bytes as f64,
        )?;
        if let Some(d) = s.engine.disk_cache {
            disk_cache(e, &d, &bytes)?;
        }
        if let Some(sp) = s.engine.speculation {
            let counters = [
                (
                    "speculative_steps",
                    "Verify forwards of speculative decoding",
                    sp.steps,
                ),
                (
                    "speculative_draft_tokens",
                    "Draft tokens proposed (prompt lookup)",
                    sp.drafted,
                ),
                (
                    "speculative_accepted_tokens",
                    "Draft tokens the model kept; over draft tokens: the acceptance rate",
                    sp.accepted,
                ),
            ];
            for (name, help, v) in counters {
                counter(e, name, help, v)?;
            }
        }
        let m = s.memory;
        gauge(
            e,
            "mlx_active_memory",
            "MLX memory held by live arrays",
            Some(&bytes),
            m.active_bytes as f64,
        )?;
        gauge(
            e,
            "mlx_peak_memory",
            "The most MLX memory live arrays have held since start",
            Some(&bytes),
            m.peak_bytes as f64,
        )?;
        gauge(
            e,
            "mlx_cache_memory",
            "MLX memory freed by arrays and kept for reuse by the allocator",
            Some(&bytes),
            m.cache_bytes as f64,
        )?;
        Ok(())
    }
}

/// The disk tier's series (`--prompt-cache-dir`), present only when it is on.
fn disk_cache(
    e: &mut DescriptorEncoder,
    d: &crate::engine::DiskCacheStats,
    bytes: &Unit,
) -> Result<(), std::fmt::Error> {
    let counters = [
        (
            "prompt_disk_cache_hits",
            "Prompts that resumed from blocks read from disk",
            d.hits,
        ),
        (
            "prompt_disk_cache_hit_tokens",
            "Prompt positions read from disk instead of prefilled",
            d.hit_tokens,
        ),
        (
            "prompt_disk_cache_misses",
            "Lookups the disk could not serve further than memory",
            d.misses,
        ),
        (
            "prompt_disk_cache_blocks_written",
            "Block files written",
            d.blocks_written,
        ),
        (
            "prompt_disk_cache_written_bytes",
            "Bytes of block files written",
            d.bytes_written,
        ),
        (
            "prompt_disk_cache_writes_dropped",
            "Writes skipped because the writer was behind",
            d.writes_dropped,
        ),
        (
            "prompt_disk_cache_evictions",
            "Block files deleted to stay within the budget",
            d.evictions,
        ),
        (
            "prompt_disk_cache_corrupt",
            "Block files found torn, corrupt or of another model (deleted)",
            d.corrupt,
        ),
    ];
    for (name, help, v) in counters {
        counter(e, name, help, v)?;
    }
    gauge(
        e,
        "prompt_disk_cache_blocks",
        "Block files on disk",
        None,
        d.blocks as f64,
    )?;
    gauge(
        e,
        "prompt_disk_cache",
        "Bytes of block files on disk",
        Some(bytes),
        d.bytes as f64,
    )?;
    gauge(
        e,
        "prompt_disk_cache_budget",
        "The disk tier's budget",
        Some(bytes),
        d.budget_bytes as f64,
    )
}
