//! Sharded models against one rank: `kooka generate --parallel pipeline|tensor` on 2 real
//! processes over a loopback ring (MLX_RANK / MLX_HOSTFILE, as `kooka launch` sets them),
//! compared with the same command on a single rank.
//!
//! - **Pipeline** runs the same ops as one rank, so the 32 greedy tokens and the last
//!   prompt position's logits must be identical, bit for bit, on both ranks: SmolLM2-135M
//!   (tied embeddings, even and uneven splits, chunked prefill) and the tiny random
//!   mixtures of experts (untied head, bf16: qwen3_moe, mixtral, minimax, glm4_moe, gpt_oss,
//!   deepseek_v3).
//! - **Tensor** parallel sums partial projections in another order, so the logits must agree
//!   within `max|sharded - single| <= 1e-4 * (1 + max|single|)` (float32 activations; the
//!   observed error is below 1e-6) and the 32 greedy tokens must be identical. Models: a
//!   4-bit llama and a 4-bit qwen3_moe kept packed with float32 scales (so the packed
//!   weights and scales are sliced, along both axes), a 4-bit minimax likewise (its q/k
//!   norms span all heads: each rank normalizes its heads with the summed squares of all),
//!   mixtral's experts dequantized, and deepseek_v3's latent attention (the heads' query
//!   projection, `embed_q`/`unembed_out` and `o_proj` split by head; low-rank and full query).
//!   Both ranks must hold the very same logits (they sample independently).
//! - Hybrid recurrent models (nemotron_h, qwen3_next) split by layers only: pipeline runs
//!   are bit-identical (recurrent states on both ranks, chunked prefill carrying them).
//! - Impossible splits fail on every rank with a message naming the numbers: SmolLM2's 9
//!   heads over 2 ranks, 32 input features per rank under 64-wide quantization groups, a
//!   `--pipeline-split` that does not sum to the layer count, tensor parallel on a hybrid.
//!
//! Needs `models/SmolLM2-135M-Instruct` and the reference venv (for the tiny models): run
//! `scripts/setup.sh --tests`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

const KOOKA: &str = env!("CARGO_BIN_EXE_kooka");
const PROMPT: &str = "1,17,42,99,3,250,7,7,300,12,64,5";
const TOKENS: &str = "32";

/// Two-rank runs one at a time: the machine may have 2 cores, and a ring of starved
/// processes says nothing about sharding.
static RINGS: Mutex<()> = Mutex::new(());

mod common;
use common::{root, tmp};

fn smollm2() -> PathBuf {
    let dir = root().join("models/SmolLM2-135M-Instruct");
    assert!(
        dir.join("config.json").exists(),
        "{} is missing: run scripts/setup.sh --tests",
        dir.display()
    );
    dir
}

fn tiny(name: &str) -> PathBuf {
    common::tiny_shard_model(name)
}

/// What one rank printed.
#[derive(Debug)]
struct Run {
    tokens: Vec<u64>,
    logits: Vec<f32>,
}

/// A fresh logits file path per run (tests run in parallel threads).
fn logits_path(tag: &str) -> PathBuf {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tmp().join(format!("shard-{}-{n}-{tag}.json", std::process::id()))
}

fn generate(model: &Path, logits: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(KOOKA);
    cmd.arg("generate")
        .arg("--model")
        .arg(model)
        .args(["--prompt-tokens", PROMPT, "--max-tokens", TOKENS])
        .args(["--ignore-eos", "--print-tokens", "--print-logits"])
        .arg(logits)
        .args(args)
        .env_remove("MLX_RANK")
        .env_remove("MLX_HOSTFILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn read_run(out: &Output, logits: &Path, what: &str) -> Run {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: stdout is not one JSON line ({e}): {stdout}"));
    let tokens = json["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().expect("token id"))
        .collect();
    let text = std::fs::read_to_string(logits)
        .unwrap_or_else(|e| panic!("{what}: reading {}: {e}", logits.display()));
    Run {
        tokens,
        logits: serde_json::from_str(&text).expect("logits JSON"),
    }
}

fn single(model: &Path, args: &[&str]) -> Run {
    let path = logits_path("single");
    let out = wait(
        generate(model, &path, args)
            .spawn()
            .expect("spawning kooka"),
        "single rank",
    );
    read_run(&out, &path, "single rank")
}

/// Waits for `child`, killing it after a deadline so that a stuck ring fails the test.
fn wait(mut child: Child, what: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().expect("waiting for kooka").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collecting kooka");
            panic!(
                "{what} did not finish within 300s: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("collecting kooka")
}

/// A ring hostfile of `n` loopback ports the OS says are free now.
fn hostfile(n: usize) -> PathBuf {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let hosts: Vec<Vec<String>> = listeners
        .iter()
        .map(|l| vec![format!("127.0.0.1:{}", l.local_addr().unwrap().port())])
        .collect();
    let path = logits_path("hostfile");
    std::fs::write(&path, serde_json::to_string(&hosts).unwrap()).unwrap();
    path
}

/// Extra environment for every rank of a run.
type Env<'a> = &'a [(&'a str, &'a str)];

/// Runs the same command as every rank of an `n`-rank ring; returns the outputs in rank order.
fn ranks_raw(model: &Path, logits: &Path, args: &[&str], n: usize, env: Env) -> Vec<Output> {
    let _ring = RINGS.lock().unwrap_or_else(|e| e.into_inner());
    let hosts = hostfile(n);
    let children: Vec<Child> = (0..n)
        .map(|rank| {
            generate(model, logits, args)
                .env("MLX_RANK", rank.to_string())
                .env("MLX_HOSTFILE", &hosts)
                .envs(env.iter().copied())
                .spawn()
                .expect("spawning kooka")
        })
        .collect();
    children
        .into_iter()
        .enumerate()
        .map(|(rank, c)| wait(c, &format!("rank {rank}")))
        .collect()
}

fn two_ranks_raw(model: &Path, logits: &Path, args: &[&str]) -> [Output; 2] {
    let mut outs = ranks_raw(model, logits, args, 2, &[]).into_iter();
    [outs.next().unwrap(), outs.next().unwrap()]
}

fn ranks(model: &Path, args: &[&str], n: usize, env: Env) -> Vec<Run> {
    let path = logits_path("ranks");
    ranks_raw(model, &path, args, n, env)
        .iter()
        .enumerate()
        .map(|(rank, out)| {
            let file = match rank {
                0 => path.clone(),
                r => PathBuf::from(format!("{}.rank{r}", path.display())),
            };
            read_run(out, &file, &format!("rank {rank}"))
        })
        .collect()
}

/// `max|got - want| / (1 + max|want|)`.
fn logits_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "vocab size");
    let scale = 1.0 + want.iter().fold(0.0f64, |m, x| m.max(x.abs() as f64));
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - *w as f64).abs())
        .fold(0.0, f64::max)
        / scale
}

/// Sharded (2 ranks) vs single rank on `model`; `tol`: `None` = bit-identical logits.
fn check(model: &Path, single_args: &[&str], shard_args: &[&str], tol: Option<f64>) {
    check_ranks(model, single_args, shard_args, tol, 2, &[]);
}

/// [`check`] on `n` ranks, each with `env` added.
fn check_ranks(
    model: &Path,
    single_args: &[&str],
    shard_args: &[&str],
    tol: Option<f64>,
    n: usize,
    env: Env,
) {
    let want = single(model, single_args);
    let distinct = want
        .tokens
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert!(
        distinct >= 4,
        "degenerate reference (a test that cannot fail): {:?}",
        want.tokens
    );
    let mut args = single_args.to_vec();
    args.extend_from_slice(shard_args);
    let ranks = ranks(model, &args, n, env);
    let name = model.file_name().unwrap().to_string_lossy();
    for (rank, got) in ranks.iter().enumerate() {
        assert_eq!(
            got.tokens, want.tokens,
            "{name} {args:?}: rank {rank}'s greedy tokens differ from one rank's"
        );
        let err = logits_error(&got.logits, &want.logits);
        match tol {
            None => assert!(
                got.logits == want.logits,
                "{name} {args:?}: rank {rank}'s logits are not bit-identical (error {err:.2e})"
            ),
            Some(tol) => assert!(
                err <= tol,
                "{name} {args:?}: rank {rank}'s logits error {err:.2e} > {tol:.0e}"
            ),
        }
        println!("{name} {args:?}: rank {rank} tokens equal, logits error {err:.1e}");
    }
    // Every rank samples from these: they must agree exactly, whatever the mode.
    assert!(
        ranks.iter().all(|r| r.logits == ranks[0].logits),
        "{name} {args:?}: the ranks hold different logits"
    );
}

#[test]
fn sharded_model_pipeline_smollm2_is_bit_identical() {
    let model = smollm2();
    check(&model, &[], &["--parallel", "pipeline"], None);
    // Uneven split; a prompt prefilled in chunks (each chunk's send runs although only the
    // caches are evaluated).
    check(
        &model,
        &["--prefill-step-size", "5"],
        &["--parallel", "pipeline", "--pipeline-split", "10,20"],
        None,
    );
}

/// The hand-off NCCL gets (it has no send/recv): one all_sum per hand-off, every rank but the
/// sender adding zeros, forced on the ring with KOOKA_PIPELINE_HANDOFF. Bit-identical too, on
/// 2 and 3 ranks (with 3, every rank also takes part in the hand-offs between the others),
/// with chunked prefill (only the caches evaluated) and on a hybrid model (recurrent states).
#[test]
fn sharded_model_pipeline_all_sum_handoffs_are_bit_identical() {
    let all_sum = [("KOOKA_PIPELINE_HANDOFF", "all-sum")];
    let model = smollm2();
    let pipeline = ["--parallel", "pipeline"];
    check_ranks(&model, &[], &pipeline, None, 2, &all_sum);
    check_ranks(
        &model,
        &["--prefill-step-size", "5"],
        &["--parallel", "pipeline", "--pipeline-split", "8,12,10"],
        None,
        3,
        &all_sum,
    );
    check_ranks(
        &tiny("nemotron_h-bf16"),
        &["--compute-dtype", "native", "--prefill-step-size", "5"],
        &["--parallel", "pipeline", "--pipeline-split", "2,2,3"],
        None,
        3,
        &all_sum,
    );
    // A value the ranks cannot act on fails on every rank, naming it.
    let path = logits_path("bad-handoff");
    for out in ranks_raw(
        &model,
        &path,
        &pipeline,
        2,
        &[("KOOKA_PIPELINE_HANDOFF", "smoke")],
    ) {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("expected send-recv or all-sum"),
            "{err}"
        );
    }
}

#[test]
fn sharded_model_pipeline_moe_is_bit_identical() {
    let native = ["--compute-dtype", "native"];
    check(
        &tiny("qwen3_moe-bf16"),
        &native,
        &["--parallel", "pipeline"],
        None,
    );
    check(
        &tiny("mixtral-bf16"),
        &native,
        &["--parallel", "pipeline", "--pipeline-split", "1,1"],
        None,
    );
    check(
        &tiny("minimax-bf16"),
        &native,
        &["--parallel", "pipeline"],
        None,
    );
    check(
        &tiny("glm4_moe-bf16"),
        &native,
        &["--parallel", "pipeline", "--pipeline-split", "2,1"],
        None,
    );
    // Latent attention caches on both ranks; the dense layer and a sparse one on rank 0.
    check(
        &tiny("deepseek_v3-bf16"),
        &native,
        &["--parallel", "pipeline", "--pipeline-split", "2,2"],
        None,
    );
    // Sliding and full layers split unevenly (rotating caches on both ranks).
    check(
        &tiny("gpt_oss-bf16"),
        &native,
        &["--parallel", "pipeline", "--pipeline-split", "1,3"],
        None,
    );
}

/// Hybrid recurrent models split by layers: Mamba-2 states, attention and expert layers on
/// both ranks (nemotron_h's `ME*M-ME`: rank 1 ends with an expert layer, whose send is tied to
/// the Mamba state before it); Gated DeltaNet states and gated attention likewise. A prompt
/// prefilled in chunks carries the states between forwards.
#[test]
fn sharded_model_pipeline_hybrid_is_bit_identical() {
    let native = ["--compute-dtype", "native"];
    check(
        &tiny("nemotron_h-bf16"),
        &["--compute-dtype", "native", "--prefill-step-size", "5"],
        &["--parallel", "pipeline", "--pipeline-split", "3,4"],
        None,
    );
    check(
        &tiny("qwen3_next-bf16"),
        &native,
        &["--parallel", "pipeline"],
        None,
    );
}

#[test]
fn sharded_model_tensor_parallel_matches_single_rank() {
    let tp = ["--parallel", "tensor"];
    let native = ["--compute-dtype", "native"];
    check(&tiny("llama-q4g64-f32"), &native, &tp, Some(1e-4));
    check(&tiny("qwen3_moe-q4g32-f32"), &native, &tp, Some(1e-4));
    // q/k norms over all heads: sharded with the heads, squared sums reduced over ranks.
    check(&tiny("minimax-q4g32-f32"), &native, &tp, Some(1e-4));
    // Shared experts split like a dense MLP, the float router whole.
    check(&tiny("glm4_moe-q4g32-f32"), &native, &tp, Some(1e-4));
    // Sinks split with their heads; each rank adds half of the experts' down bias.
    check(&tiny("gpt_oss-mxfp4-f32"), &native, &tp, Some(1e-4));
    // Latent attention: every rank caches the whole latent and keeps half of the heads.
    check(&tiny("deepseek_v3-q4g32-f32"), &native, &tp, Some(1e-4));
    check(
        &tiny("deepseek_v3_noqlora-q4g32-f32"),
        &native,
        &tp,
        Some(1e-4),
    );
    check(
        &tiny("mixtral-bf16"),
        &["--compute-dtype", "f32"],
        &tp,
        Some(1e-4),
    );
}

#[test]
fn sharded_model_impossible_splits_fail_clearly() {
    let cases: [(PathBuf, &[&str], &str); 4] = [
        (
            smollm2(),
            &["--parallel", "tensor"],
            "num_attention_heads = 9 and num_key_value_heads = 3 are not both multiples of 2",
        ),
        (
            tiny("qwen3_moe-q4g64"),
            &["--parallel", "tensor", "--compute-dtype", "native"],
            "32 each, not a multiple of the quantization group size 64",
        ),
        (
            smollm2(),
            &["--pipeline-split", "10,10"],
            "--pipeline-split 10,10 sums to 20 layers but the model has 30",
        ),
        (
            tiny("nemotron_h-bf16"),
            &["--parallel", "tensor"],
            "nemotron_h (a hybrid recurrent model) cannot be split tensor-parallel",
        ),
    ];
    for (model, args, expected) in cases {
        let outs = two_ranks_raw(&model, &logits_path("error"), args);
        for (rank, out) in outs.iter().enumerate() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "rank {rank} {args:?}: {stderr}");
            assert!(
                stderr.contains(expected),
                "rank {rank} {args:?}: {stderr:?} lacks {expected:?}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
}
