//! The prefix cache's disk tier (`serve --prompt-cache-dir`) against the real binary: what
//! one server wrote, a restarted one reads back (same output as a cold run); torn, corrupt
//! and foreign files are misses, never a crash or wrong output; the folder keeps its budget.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::http::{request, start_with, Server};
use serde_json::{json, Value};

/// One server at a time: the machine has two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A prompt of about 600 tokens (SmolLM2's tokenizer): two full blocks of 256 and a tail.
fn prompt(topic: &str) -> String {
    (0..60)
        .map(|i| format!("Note {i} about {topic}: the numbers go up."))
        .collect::<Vec<_>>()
        .join(" ")
}

fn complete(server: &Server, prompt: &str) -> Value {
    let body = json!({"prompt": prompt, "max_tokens": 8, "temperature": 0});
    let r = request(
        &server.addr,
        "POST",
        "/v1/completions",
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn text(v: &Value) -> String {
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

fn cached(v: &Value) -> u64 {
    v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap()
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = common::tmp().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn serve(dir: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--prompt-cache-dir", dir.to_str().unwrap()];
    args.extend(extra);
    start_with(&args)
}

/// Waits until the writer is done: at least `n` block files, no temporary ones, for a while.
fn wait_written(dir: &Path, n: usize) -> Vec<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (Vec::new(), Instant::now());
    loop {
        let now = common::disk_cache_files(dir);
        let settled = now.len() >= n && now.iter().all(|p| p.extension().unwrap() != "tmp");
        if now != last.0 {
            last = (now, Instant::now());
        } else if settled && last.1.elapsed() > Duration::from_millis(500) {
            return last.0;
        }
        assert!(
            Instant::now() < deadline,
            "blocks never settled: {:?}",
            last.0
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn disk_stats(server: &Server) -> Value {
    let r = request(&server.addr, "GET", "/health", b"");
    r.json()["runtime"]["engine"]["disk_cache"].clone()
}

#[test]
fn a_restarted_server_resumes_from_disk_with_the_output_of_a_cold_run() {
    let _one = one_at_a_time();
    let dir = fresh_dir("disk-cache-restart");
    let first = prompt("the Roman empire");
    let longer = format!("{first} And fifty more tokens follow here, about emperors, roads, aqueducts, legions and the long decline of the western half.");
    let cold = {
        let s = start_with(&["--prompt-cache-bytes", "0"]);
        complete(&s, &longer)
    };
    let files = {
        let s = serve(&dir, &[]);
        let r = complete(&s, &first);
        assert_eq!(cached(&r), 0);
        // (A killed server loses what its writer had not written yet.)
        wait_written(&dir, 3)
    };
    let s = serve(&dir, &[]);
    let warm = complete(&s, &longer);
    let n = warm["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        cached(&warm) >= 512 && cached(&warm) < n,
        "cached {} of {n}; files {files:?}",
        cached(&warm)
    );
    assert_eq!(
        text(&warm),
        text(&cold),
        "disk-resumed output differs from a cold run"
    );
    let d = disk_stats(&s);
    assert_eq!(d["hits"], 1, "{d}");
    assert_eq!(d["hit_tokens"].as_u64(), Some(cached(&warm)), "{d}");
    assert_eq!(d["corrupt"], 0, "{d}");
    let metrics = request(&s.addr, "GET", "/metrics", b"").text();
    assert!(
        metrics.contains("kooka_prompt_disk_cache_hits_total 1"),
        "{metrics}"
    );
}

#[test]
fn torn_corrupt_and_foreign_files_are_misses() {
    let _one = one_at_a_time();
    let dir = fresh_dir("disk-cache-damaged");
    let p = prompt("the Nile delta");
    let cold = {
        let s = start_with(&["--prompt-cache-bytes", "0"]);
        complete(&s, &p)
    };
    // Blocks of this model, and of another one in the same folder (its own subfolder).
    let ours = {
        let s = serve(&dir, &[]);
        complete(&s, &p);
        wait_written(&dir, 3)
    };
    let other = common::root().join("models/Qwen2.5-Coder-0.5B-Instruct");
    let all = {
        let s = serve(&dir, &["--model", other.to_str().unwrap()]);
        complete(&s, &p);
        wait_written(&dir, ours.len() + 3)
    };
    let theirs: Vec<&PathBuf> = all.iter().filter(|p| !ours.contains(p)).collect();
    let at = |files: &[&PathBuf], start: u64| -> PathBuf {
        files
            .iter()
            .find(|p| common::block_start(p) == start)
            .map(|p| p.to_path_buf())
            .unwrap()
    };
    let ours: Vec<&PathBuf> = ours.iter().collect();
    // Block 0: a flipped byte in its data (found when read). Block 256: replaced by the
    // other model's block 256 (found at start). The tail: cut short.
    let b0 = at(&ours, 0);
    let mut bytes = std::fs::read(&b0).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&b0, bytes).unwrap();
    std::fs::copy(at(&theirs, 256), at(&ours, 256)).unwrap();
    let tail = ours.iter().max_by_key(|p| common::block_start(p)).unwrap();
    let len = std::fs::metadata(tail).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(tail)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let s = serve(&dir, &[]);
    let r = complete(&s, &p);
    assert_eq!(cached(&r), 0, "nothing usable was left");
    assert_eq!(text(&r), text(&cold));
    let d = disk_stats(&s);
    assert!(d["corrupt"].as_u64().unwrap() >= 3, "{d}");
    assert_eq!(d["hits"], 0, "{d}");
    // And the server still answers, and resumes from what it wrote since.
    let again = complete(&s, &p);
    assert_eq!(text(&again), text(&cold));
}

#[test]
fn the_folder_keeps_its_budget() {
    let _one = one_at_a_time();
    let dir = fresh_dir("disk-cache-budget");
    // SmolLM2 in float32: a block of 256 positions is ~11.8 MB; room for about four.
    let budget: u64 = 50 << 20;
    let s = serve(&dir, &["--prompt-cache-disk-bytes", &budget.to_string()]);
    for topic in ["rivers", "mountains", "deserts", "forests", "oceans"] {
        complete(&s, &prompt(topic));
        let files = wait_written(&dir, 1);
        let total: u64 = files
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();
        assert!(total <= budget, "{total} bytes on disk, budget {budget}");
    }
    // Evictions happened, and the newest prompt is still served from disk after a restart.
    complete(&s, &prompt("oceans"));
    let d = disk_stats(&s);
    assert!(d["evictions"].as_u64().unwrap() > 0, "{d}");
    drop(s);
    let s = serve(&dir, &["--prompt-cache-disk-bytes", &budget.to_string()]);
    let r = complete(&s, &format!("{} More.", prompt("oceans")));
    assert!(cached(&r) >= 512, "{r}");
}

/// Every cache kind the server runs goes through the disk and back: latent attention
/// (DeepSeek-V3's MLA), windowed caches for sliding-window layers (gpt-oss with attention
/// sinks, Mistral), in a new engine over the same folder (blocks of 8), with the tokens of a
/// cold run. (Recurrent checkpoints: tests/hybrid.rs.)
#[test]
fn every_cache_kind_resumes_from_disk_in_a_new_engine_beside_a_decoding_request() {
    use common::engine::{engine, greedy, run};
    use kooka::engine::disk_cache::open_for_model;
    use kooka::engine::{DiskCacheConfig, EngineConfig};
    use kooka::model::ComputeDtype;
    let _one = one_at_a_time();
    for name in ["deepseek_v3-q4g64", "gpt_oss-mxfp4", "mistral_swa-q4g64"] {
        let model = common::tiny_model(name);
        let config = DiskCacheConfig {
            dir: fresh_dir(&format!("disk-cache-kinds-{name}")),
            budget_bytes: 1 << 30,
            block_tokens: 8,
        };
        let serving = EngineConfig {
            prefill_chunk: 7,
            prefix_cache_tokens: 4096,
            windowed_caches: true,
            ..Default::default()
        };
        let with_disk = || {
            let mut e = engine(&model, serving);
            let disk = open_for_model(&config, &model, ComputeDtype::Auto, None, 0);
            assert!(disk.is_some(), "{name}: the folder opens");
            e.set_disk_cache(disk, None);
            e
        };
        let prompt: Vec<u32> = (0..37u32).map(|i| (i * 41 + 5) % 320).collect();
        {
            // Dropping the engine finishes its writes.
            let mut e = with_disk();
            run(&mut e, &[greedy(prompt.clone(), 6)], &[0]);
        }
        let mut longer = prompt.clone();
        longer.extend([9, 8, 7]);
        // Another request decodes meanwhile: the blocks are read on a thread of their own
        // while its steps go on.
        let other: Vec<u32> = (0..20u32).map(|i| (i * 13 + 7) % 320).collect();
        let reqs = [greedy(other, 12), greedy(longer, 6)];
        let hit = run(&mut with_disk(), &reqs, &[0, 4]);
        let cold_engine = EngineConfig {
            prefix_cache_tokens: 0,
            ..serving
        };
        let cold = run(&mut engine(&model, cold_engine), &reqs, &[0, 4]);
        assert_eq!(hit[1].1, 37, "{name}: the whole first prompt from disk");
        assert_eq!(
            hit[1].0, cold[1].0,
            "{name}: tokens after resuming from disk"
        );
        assert_eq!(hit[0].0, cold[0].0, "{name}: the request beside it");
    }
}
