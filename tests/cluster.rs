//! The multi-rank runtime of `kooka serve` across real processes on loopback answers as one
//! rank does: two ranks of `models/SmolLM2-135M-Instruct` split as a pipeline, a sharded
//! mixture of experts, tensor-parallel Qwen2.5 (same texts, same usage, logprobs close). The
//! harness is `tests/common/ranks.rs`; faults and lifecycle are in `tests/cluster_faults.rs`.
//! One test at a time, every wait bounded.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::ranks::*;

/// The same requests, one rank then two: same texts, same usage.
#[test]
fn two_pipeline_ranks_answer_exactly_like_one() {
    let _serial = serial();
    let requests = [
        user("What is the capital of France?", json!({})),
        user(
            "Write a haiku about the sea.",
            json!({"temperature": 0.8, "seed": 7}),
        ),
    ];
    let single = serve(None, &[]);
    let addr = single.address();
    let expected: Vec<Value> = requests.iter().map(|r| chat(&addr, r)).collect();
    let (status, streamed) = request(
        &addr,
        "POST",
        "/v1/chat/completions",
        &user("Name three colours.", json!({"stream": true})).to_string(),
    );
    assert_eq!(status, 200);
    let expected_stream = sse_text(&streamed);
    drop(single);

    // A fresh MLX kernel cache: both ranks compile the same CPU kernels at once.
    let (mut r0, mut r1, addr, tmp) = two_fresh_ranks("parity", &["--parallel", "pipeline"]);
    let (status, health) = request(&addr, "GET", "/health", "");
    assert_eq!(status, 200, "{health}");
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(
        health["ranks"][0]["shard"],
        "pipeline rank 0/2: layers 0..15 of 30"
    );
    assert_eq!(
        health["ranks"][1]["shard"],
        "pipeline rank 1/2: layers 15..30 of 30"
    );
    assert_eq!(health["ranks"][1]["state"], "ready");

    // Both at once: the second request joins the batch while the first is decoding.
    let got: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = requests
            .iter()
            .map(|r| s.spawn(|| chat(&addr, r)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (want, got) in expected.iter().zip(&got) {
        assert_eq!(got["choices"][0]["message"], want["choices"][0]["message"]);
        assert_eq!(token_counts(got), token_counts(want));
    }
    let (status, streamed) = request(
        &addr,
        "POST",
        "/v1/chat/completions",
        &user("Name three colours.", json!({"stream": true})).to_string(),
    );
    assert_eq!(status, 200);
    assert_eq!(sse_text(&streamed), expected_stream);

    // Rank 1 ran every sequence to the same length (it logs its own token counts).
    let log = r1.stderr();
    for g in &got {
        let tokens = g["usage"]["completion_tokens"].as_u64().unwrap();
        assert!(
            log.contains(&format!("sequence finished seq=0 tokens={tokens}"))
                || log.contains(&format!("sequence finished seq=1 tokens={tokens}")),
            "rank 1 did not log a {tokens}-token sequence:\n{log}"
        );
    }

    // /metrics: rank 1 reports (in its heartbeat answers) as many steps as rank 0 ran, and
    // the control plane's round trip to it.
    let sample = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, text) = request(&addr, "GET", "/metrics", "");
        assert_eq!(status, 200, "{text}");
        let rank0 = sample(
            &text,
            "kooka_engine_step_duration_seconds_count{rank=\"0\"}",
        );
        let rank1 = sample(&text, "kooka_rank_steps_total{rank=\"1\"}");
        let rtt = sample(&text, "kooka_control_rtt_seconds{rank=\"1\"}");
        if rank0.is_some() && rank0 == rank1 {
            let rtt = rtt.expect("kooka_control_rtt_seconds for rank 1");
            assert!(rtt > 0.0 && rtt < 1.0, "round trip {rtt} s");
            let busy = sample(&text, "kooka_rank_step_time_seconds_total{rank=\"1\"}").unwrap();
            assert!(busy > 0.0, "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rank 1 steps {rank1:?} never matched rank 0's {rank0:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A normal stop reaches every rank: both exit 0.
    r0.signal("-TERM");
    assert!(
        r0.exit_within(Duration::from_secs(30)).success(),
        "{}",
        r0.stderr()
    );
    assert!(
        r1.exit_within(Duration::from_secs(10)).success(),
        "rank 1:\n{}\nrank 0:\n{}",
        r1.stderr(),
        r0.stderr()
    );
    // Rank 1 compiled its kernels into a folder of its own (MLX writes them in place, so
    // sharing the folder with rank 0 can load a half-written one), rank 0 into the shared one.
    let compiled = |dir: PathBuf| {
        let cpu = dir.join("mlx").read_dir().ok().and_then(|mut v| v.next());
        cpu.is_some_and(|v| v.is_ok_and(|v| v.path().join("cpu").read_dir().is_ok()))
    };
    assert!(compiled(tmp.join("kooka-rank1")), "rank 1's kernel folder");
    assert!(compiled(tmp.clone()), "rank 0's kernel folder");
}

/// A tiny random mixture of experts (`qwen3_moe`, 4-bit with float32 scales) with SmolLM2's
/// tokenizer and chat template copied in, so it can be served.
fn chat_moe() -> PathBuf {
    let src = common::tiny_shard_model("qwen3_moe_chat-q4g32-f32");
    let dir = common::tmp().join("moe-chat");
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
    ] {
        if src.join(f).exists() {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
    }
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(model().join(f), dir.join(f)).unwrap();
    }
    dir
}

/// The tokens' log-probabilities of a chat reply that asked for `logprobs`.
fn token_logprobs(reply: &Value) -> Vec<f64> {
    reply["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("logprobs in the reply")
        .iter()
        .map(|t| t["logprob"].as_f64().unwrap())
        .collect()
}

/// Prompt and completion tokens (what the prefix cache served depends on what ran before).
fn token_counts(reply: &Value) -> (Value, Value) {
    (
        reply["usage"]["prompt_tokens"].clone(),
        reply["usage"]["completion_tokens"].clone(),
    )
}

/// Serves `model` on one rank, then on two ranks in each of `modes`, and checks that the
/// sharded runs give one rank's replies to `requests` token for token: pipeline's logprobs
/// bit-identical, tensor's within `1e-4 * (1 + |single|)` (partial sums are added in another
/// order).
fn sharded_like_single(model: &Path, modes: &[&str], requests: &[Value]) {
    let single = serve_model(model, None, &[]);
    let addr = single.address();
    let expected: Vec<Value> = requests.iter().map(|r| chat(&addr, r)).collect();
    drop(single);
    for want in &expected {
        // enough tokens to compare
        assert!(
            want["usage"]["completion_tokens"].as_u64().unwrap() >= 8,
            "{want}"
        );
    }
    for mode in modes {
        let (_r0, _r1, addr) = two_ranks_of(model, &format!("http-{mode}"), &["--parallel", mode]);
        let (status, health) = request(&addr, "GET", "/health", "");
        assert_eq!(status, 200, "{health}");
        assert!(health.contains(&format!("{mode} rank 1/2")), "{health}");
        for (req, want) in requests.iter().zip(&expected) {
            let got = chat(&addr, req);
            assert_eq!(
                got["choices"][0]["message"]["content"], want["choices"][0]["message"]["content"],
                "{mode}"
            );
            assert_eq!(token_counts(&got), token_counts(want), "{mode}");
            let (got, want) = (token_logprobs(&got), token_logprobs(want));
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                let tol = if *mode == "pipeline" {
                    0.0
                } else {
                    1e-4 * (1.0 + w.abs())
                };
                assert!(
                    (g - w).abs() <= tol,
                    "{mode}: logprob {g} vs {w} on one rank"
                );
            }
        }
        // All at once: the ranks run them in one batch, and each answers as it did alone
        // (a batched matmul adds in another order: logprobs within a tolerance).
        let handles: Vec<_> = requests
            .iter()
            .cloned()
            .map(|req| {
                let addr = addr.clone();
                std::thread::spawn(move || chat(&addr, &req))
            })
            .collect();
        for (h, want) in handles.into_iter().zip(&expected) {
            let got = h.join().unwrap();
            assert_eq!(
                got["choices"][0]["message"]["content"], want["choices"][0]["message"]["content"],
                "{mode}, batched"
            );
            for (g, w) in token_logprobs(&got).iter().zip(&token_logprobs(want)) {
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{mode}, batched: {g} vs {w}"
                );
            }
        }
    }
}

/// A mixture of experts split both ways, through the HTTP API.
#[test]
fn sharded_mixture_of_experts_over_http_answers_like_one_rank() {
    let _serial = serial();
    let requests = [
        user(
            "What is the capital of France?",
            json!({"logprobs": true, "max_tokens": 24}),
        ),
        user(
            "Name three colours.",
            json!({"logprobs": true, "max_tokens": 24}),
        ),
    ];
    sharded_like_single(&chat_moe(), &["pipeline", "tensor"], &requests);
}

/// A real model split by tensor parallelism, through the HTTP API (SmolLM2's 9 query heads
/// do not split over 2 ranks; Qwen2.5-Coder-0.5B's 14 query and 2 KV heads do).
#[test]
fn tensor_parallel_qwen_over_http_answers_like_one_rank() {
    let _serial = serial();
    let qwen = common::root().join("models/Qwen2.5-Coder-0.5B-Instruct");
    assert!(
        qwen.join("config.json").exists(),
        "{} is missing: run scripts/setup.sh --tests",
        qwen.display()
    );
    let requests = [
        user(
            "Write a Python function that adds two numbers.",
            json!({"logprobs": true, "max_tokens": 16}),
        ),
        user(
            "Name three colours.",
            json!({"logprobs": true, "max_tokens": 12}),
        ),
    ];
    sharded_like_single(&qwen, &["tensor"], &requests);
}
