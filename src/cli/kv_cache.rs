//! The KV cache quantization flags `serve` and `generate` share (mlx-lm's `--kv-bits`,
//! `--kv-group-size`, `--quantized-kv-start`).

use clap::Args;

use crate::model::KvQuantization;

#[derive(Debug, Clone, Args)]
pub struct KvCacheArgs {
    /// Quantize keys and values to this many bits (2, 3, 4, 5, 6 or 8) once a sequence holds
    /// --quantized-kv-start positions, as mlx-lm's QuantizedKVCache: 8 bits keeps about 0.56
    /// of the memory of 16-bit keys, 4 bits 0.31 [default: off].
    #[arg(long, env = "KOOKA_KV_BITS", help_heading = "KV cache")]
    pub kv_bits: Option<i32>,
    /// Values per scale and bias of the quantized KV cache (32, 64 or 128; must divide the
    /// model's head dimension).
    #[arg(
        long,
        env = "KOOKA_KV_GROUP_SIZE",
        default_value_t = 64,
        help_heading = "KV cache"
    )]
    pub kv_group_size: i32,
    /// Positions a sequence holds before its keys and values are quantized (mlx-lm's default).
    #[arg(
        long,
        env = "KOOKA_QUANTIZED_KV_START",
        default_value_t = 5000,
        help_heading = "KV cache"
    )]
    pub quantized_kv_start: i32,
}

impl KvCacheArgs {
    /// The engine's setting; `None` when off.
    pub fn config(&self) -> anyhow::Result<Option<KvQuantization>> {
        let Some(bits) = self.kv_bits else {
            return Ok(None);
        };
        let q = KvQuantization {
            bits,
            group_size: self.kv_group_size,
            start: self.quantized_kv_start,
        };
        q.validate().map_err(anyhow::Error::msg)?;
        Ok(Some(q))
    }
}
