//! MLX's `fast::scaled_dot_product_attention` against `kooka::model::cpu_attention` on the CPU
//! backend, causal, at the attention shapes of SmolLM2-135M (9 query heads, 3 key/value heads,
//! head dim 64) and Qwen2.5-0.5B (14/2, 64): the crossover that `block.rs` uses comes from here.
//! Rows are `L x S` (L queries, the last L of S positions: a prefill chunk after a prefix).
//!
//! usage: cpu_attention [REPS] [L:S ...]   (default: a sweep from 16 to 8192)
use std::time::Instant;

use kooka::model::cpu_attention::{scaled_dot_product_attention, Mask};
use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
use mlx_rs::{random, transforms};

/// The least disturbed of several runs (the machine is shared with other jobs).
fn best(v: Vec<f64>) -> f64 {
    v.into_iter().fold(f64::INFINITY, f64::min)
}

/// CPU seconds of this process so far, all threads.
fn cpu_time() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    s(u.ru_utime) + s(u.ru_stime)
}

/// The shortest wall and CPU seconds of `f` over `reps` runs after one warm-up.
fn time(reps: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<(f64, f64)> {
    f()?;
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let (t, c) = (Instant::now(), cpu_time());
        f()?;
        wall.push(t.elapsed().as_secs_f64());
        cpu.push(cpu_time() - c);
    }
    Ok((best(wall), best(cpu)))
}

fn main() -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    kooka::openblas::use_fast_kernels();
    let mut args = std::env::args().skip(1);
    let skip_mlx = std::env::var_os("ONLY_OURS").is_some();
    let reps: usize = args.next().map_or(Ok(3), |s| s.parse())?;
    let mut sizes: Vec<(i32, i32)> = args
        .map(|a| {
            let (l, s) = a.split_once(':').unwrap_or((&a, &a));
            Ok((l.parse()?, s.parse()?))
        })
        .collect::<anyhow::Result<_>>()?;
    if sizes.is_empty() {
        sizes = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
            .map(|n| (n, n))
            .into_iter()
            .chain([
                (1, 2048),
                (16, 2048),
                (64, 2048),
                (2048, 4096),
                (2048, 8192),
            ])
            .collect();
    }
    println!("shape                L      S    mlx ms   ours ms  speedup  mlx cpu-ms ours cpu-ms");
    for (name, hq, hkv, d) in [("smollm2 9/3x64", 9, 3, 64), ("qwen2.5 14/2x64", 14, 2, 64)] {
        for &(l, s) in &sizes {
            let normal = |shape: &[i32], seed: u64| {
                random::normal::<f32>(shape, None, None, &random::key(seed)?)
            };
            let q = normal(&[1, hq, l, d], 1)?;
            let k = normal(&[1, hkv, s, d], 2)?;
            let v = normal(&[1, hkv, s, d], 3)?;
            transforms::eval([&q, &k, &v])?;
            let scale = (d as f32).powf(-0.5);
            let mlx = if skip_mlx {
                (f64::NAN, f64::NAN)
            } else {
                time(reps, || {
                    // What `Attention::forward` passes for a prefill chunk (none for one query).
                    let mask = (l > 1).then_some(ScaledDotProductAttentionMask::Causal);
                    let o = fast::scaled_dot_product_attention(&q, &k, &v, scale, mask, None)?;
                    o.eval()?;
                    Ok(())
                })?
            };
            let ours = time(reps, || {
                scaled_dot_product_attention(&q, &k, &v, scale, Mask::Causal)?.eval()?;
                Ok(())
            })?;
            println!(
                "{name:16} {l:5} {s:6} {:9.3} {:9.3} {:7.2}x {:11.3} {:11.3}",
                mlx.0 * 1e3,
                ours.0 * 1e3,
                mlx.0 / ours.0,
                mlx.1 * 1e3,
                ours.1 * 1e3,
            );
        }
    }
    Ok(())
}
