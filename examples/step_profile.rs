//! Where one decode step's time goes on the host: building the graph (forward + argmax),
//! queueing it (`async_eval`, which encodes the kernels on GPU backends) and waiting for the
//! previous token, in the same pipelined order as the engine. `scripts/gpu/step_profile.py`
//! does the same for mlx-lm.
//!
//! usage: step_profile MODEL_DIR [PROMPT_TOKENS] [STEPS]
use std::time::Instant;

use kooka::model::{load_model, ComputeDtype};
use mlx_rs::{ops, transforms, Array};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    kooka::openblas::use_fast_kernels();
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or("models/SmolLM2-135M-Instruct".into());
    let prompt: i32 = args.next().map_or(Ok(512), |s| s.parse())?;
    let steps: usize = args.next().map_or(Ok(128), |s| s.parse())?;
    let dtype = match std::env::var_os("NATIVE") {
        Some(_) => ComputeDtype::Native,
        None => ComputeDtype::Auto,
    };
    let model = load_model(dir.as_ref(), dtype)?;
    if let Ok(path) = std::env::var("DOT") {
        // one decode step's graph, in MLX's DOT export, to count its nodes
        let mut caches = model.make_caches();
        let ids: Vec<u32> = (0..prompt as u32).collect();
        let _ = model.forward(&Array::from_slice(&ids, &[1, prompt]), &mut caches)?;
        transforms::eval(caches.iter().flat_map(|c| c.state()))?;
        let logits = model.forward(&Array::from_slice(&[1u32], &[1, 1]), &mut caches)?;
        let logprobs = logits.subtract(logits.logsumexp_axis(-1, true)?)?;
        let next = ops::indexing::argmax_axis(&logprobs, -1, None)?;
        export_dot(&path, &[&next, &logprobs]);
        return Ok(());
    }
    for round in 0..2 {
        let mut caches = model.make_caches();
        let ids: Vec<u32> = (0..prompt as u32).map(|i| (i * 7 + 3) % 1000).collect();
        let logits = model.forward(&Array::from_slice(&ids, &[1, prompt]), &mut caches)?;
        let mut tok = ops::indexing::argmax_axis(&logits, -1, None)?.try_index_last()?;
        transforms::eval([&tok])?;
        let (mut build, mut queue, mut wait) = (vec![], vec![], vec![]);
        let start = Instant::now();
        for _ in 0..steps {
            let t0 = Instant::now();
            let logits = model.forward(&tok.reshape(&[1, 1])?, &mut caches)?;
            let logprobs = logits.subtract(logits.logsumexp_axis(-1, true)?)?;
            let next = ops::indexing::argmax_axis(&logprobs, -1, None)?.reshape(&[1])?;
            let t1 = Instant::now();
            transforms::async_eval([&next, &logprobs])?;
            let t2 = Instant::now();
            let _ = tok.try_item_exact::<u32>()?;
            let t3 = Instant::now();
            build.push((t1 - t0).as_secs_f64() * 1e3);
            queue.push((t2 - t1).as_secs_f64() * 1e3);
            wait.push((t3 - t2).as_secs_f64() * 1e3);
            tok = next;
        }
        let per_token = start.elapsed().as_secs_f64() * 1e3 / steps as f64;
        if round == 1 {
            println!(
                "kooka step profile: build {:.3} ms | async_eval {:.3} ms | wait {:.3} ms | per token {:.3} ms ({:.1} tok/s)",
                median(&mut build),
                median(&mut queue),
                median(&mut wait),
                per_token,
                1e3 / per_token
            );
        }
    }
    Ok(())
}

trait Last {
    fn try_index_last(&self) -> anyhow::Result<Array>;
}

impl Last for Array {
    /// `[1, L]` argmax -> the last position's id, `[1]`.
    fn try_index_last(&self) -> anyhow::Result<Array> {
        use mlx_rs::ops::indexing::TryIndexOp;
        let l = self.shape()[1];
        Ok(self.try_index((.., l - 1))?)
    }
}

fn export_dot(path: &str, outputs: &[&Array]) {
    use std::ffi::CString;
    extern "C" {
        fn fopen(
            path: *const std::ffi::c_char,
            mode: *const std::ffi::c_char,
        ) -> *mut mlx_sys::FILE;
        fn fclose(f: *mut mlx_sys::FILE) -> i32;
    }
    let (p, m) = (CString::new(path).unwrap(), CString::new("w").unwrap());
    unsafe {
        let f = fopen(p.as_ptr(), m.as_ptr());
        let v = mlx_sys::mlx_vector_array_new();
        for a in outputs {
            mlx_sys::mlx_vector_array_append_value(v, a.as_ptr());
        }
        let namer = mlx_sys::mlx_node_namer_new();
        mlx_sys::mlx_export_to_dot(f, namer, v);
        fclose(f);
    }
}
