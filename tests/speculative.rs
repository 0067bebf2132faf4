//! Speculative decoding with prompt lookup and with a draft model, in-process: greedy tokens
//! identical to plain decoding, alone and inside a batch (rows joining, leaving, some that
//! cannot speculate, a batch too full to speculate), on the default model and on
//! Qwen2.5-Coder-0.5B editing a file; sampled tokens distributed as plain sampling's; drafts
//! that were actually kept (else nothing was tested); over HTTP, a speculating server answers
//! as a plain one; a draft model with another tokenizer is refused.
//!
//! The draft models are the models themselves at fewer bits (`scripts/requantize.py`): the
//! same tokenizer, mostly the same choices, and some different ones (rejections).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kooka::engine::sampling::SamplingParams;
use kooka::engine::speculative::ngram;
use kooka::engine::{Engine, EngineConfig, SequenceRequest, SpeculationConfig};
use kooka::model::{load_model, ComputeDtype};
use kooka::tokenizer::Tokenizer;

mod common;

use common::engine::run;

static MLX: Mutex<()> = Mutex::new(());

fn model(name: &str) -> PathBuf {
    common::model(name)
}

fn engine(dir: &Path, speculation: Option<SpeculationConfig>) -> Engine {
    Engine::with_config(
        load_model(dir, ComputeDtype::Auto).expect("model"),
        EngineConfig {
            prefill_chunk: 256,
            speculation,
            ..Default::default()
        },
    )
}

fn ngram() -> Option<SpeculationConfig> {
    Some(SpeculationConfig::default())
}

/// An engine drafting with `draft` (a prefix cache for both, so resent prompts start from it).
fn drafting(dir: &Path, draft: &Path, config: SpeculationConfig) -> Engine {
    let mut e = Engine::with_config(
        load_model(dir, ComputeDtype::Auto).expect("model"),
        EngineConfig {
            prefill_chunk: 256,
            prefix_cache_tokens: 8192,
            speculation: Some(config),
            ..Default::default()
        },
    );
    e.set_draft_model(load_model(draft, ComputeDtype::Auto).expect("draft model"))
        .expect("set the draft model");
    e
}

/// The chat prompts: a file to edit (the reply repeats most of it), a text to repeat, and
/// questions whose replies repeat little.
fn prompts(dir: &Path) -> Vec<Vec<u32>> {
    let file =
        std::fs::read_to_string(common::root().join("tests/fixtures/code_edit/inventory.py"))
            .expect("fixture");
    let edit = format!(
        "Rename the method `compute_total` to `total_value` everywhere in this file and return \
         the whole file:\n\n```python\n{file}```"
    );
    common::engine::chat_prompts(
        dir,
        &[
            &edit,
            "Repeat this sentence three times: the quick brown fox jumps over the lazy dog.",
            "Write a haiku about the sea.",
            "def fibonacci(n):",
            "List three prime numbers.",
        ],
    )
}

fn request(prompt: Vec<u32>, params: SamplingParams, max_tokens: usize) -> SequenceRequest {
    SequenceRequest {
        prompt,
        params,
        max_tokens,
        stop_ids: vec![2],
        ..Default::default()
    }
}

fn sampled(temperature: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        seed: Some(seed),
        ..Default::default()
    }
}

#[test]
fn prompt_lookup_keeps_greedy_tokens_alone_and_in_a_batch() {
    let _g = MLX.lock().unwrap_or_else(|e| e.into_inner());
    let dir = model("SmolLM2-135M-Instruct");
    let prompts = prompts(&dir);
    let mut reqs: Vec<SequenceRequest> = prompts
        .iter()
        .zip([96, 48, 24, 40, 24])
        .map(|(p, n)| request(p.clone(), SamplingParams::default(), n))
        .collect();
    // A row that cannot speculate (logprobs) and a sampled one, in the same batch.
    reqs.push(request(
        prompts[1].clone(),
        SamplingParams {
            logprobs: true,
            top_logprobs: 2,
            ..Default::default()
        },
        20,
    ));
    reqs.push(request(prompts[0].clone(), sampled(0.7, 11), 40));

    let mut plain = engine(&dir, None);
    let alone: Vec<Vec<u32>> = reqs
        .iter()
        .map(|r| run(&mut plain, std::slice::from_ref(r), &[0]).remove(0).0)
        .collect();

    let mut e = engine(&dir, ngram());
    let spec_alone: Vec<Vec<u32>> = reqs
        .iter()
        .map(|r| run(&mut e, std::slice::from_ref(r), &[0]).remove(0).0)
        .collect();
    let kept_alone = e.status().speculation.expect("speculation is on").accepted;
    let together = run(&mut e, &reqs, &vec![0; reqs.len()]);
    let staggered = run(&mut e, &reqs, &[0, 2, 2, 5, 9, 1, 3]);
    let again = run(&mut e, &reqs, &[0, 2, 2, 5, 9, 1, 3]);
    let stats = e.status().speculation.expect("speculation is on");
    eprintln!("speculation: {stats:?}, kept alone {kept_alone}");
    for i in 0..reqs.len() {
        assert_eq!(
            again[i].0, staggered[i].0,
            "request {i}: the same schedule again"
        );
        if !reqs[i].params.greedy() {
            continue;
        }
        assert_eq!(spec_alone[i], alone[i], "request {i} alone");
        assert_eq!(together[i].0, alone[i], "request {i}, all joined at once");
        assert_eq!(staggered[i].0, alone[i], "request {i}, staggered joins");
    }
    assert!(
        kept_alone >= 20,
        "prompt lookup kept only {kept_alone} draft tokens alone (the edit repeats its file)"
    );
    assert!(stats.accepted > kept_alone && stats.drafted >= stats.accepted);
}

/// A draft model (SmolLM2 at 6 bits for the 4-bit SmolLM2) in the schedules above, with at
/// most 3 speculating rows: a fuller batch runs plain steps, which the draft follows, and
/// speculates again when rows leave. The second schedule starts every prompt from the prefix
/// caches (the model's and the draft's).
#[test]
fn a_draft_model_keeps_greedy_tokens_in_a_batch() {
    let _g = MLX.lock().unwrap_or_else(|e| e.into_inner());
    let dir = model("SmolLM2-135M-Instruct");
    let draft = common::requantized("SmolLM2-135M-Instruct", 6);
    let prompts = prompts(&dir);
    let mut reqs: Vec<SequenceRequest> = prompts
        .iter()
        .zip([48, 32, 24, 32, 24])
        .map(|(p, n)| request(p.clone(), SamplingParams::default(), n))
        .collect();
    reqs.push(request(
        prompts[1].clone(),
        SamplingParams {
            logprobs: true,
            ..Default::default()
        },
        16,
    ));
    reqs.push(request(prompts[0].clone(), sampled(0.7, 11), 24));

    let mut plain = engine(&dir, None);
    let alone: Vec<Vec<u32>> = reqs
        .iter()
        .map(|r| run(&mut plain, std::slice::from_ref(r), &[0]).remove(0).0)
        .collect();
    let config = SpeculationConfig {
        draft_tokens: 4,
        max_rows: 3,
        ..Default::default()
    };
    let mut e = drafting(&dir, &draft, config);
    let together = run(&mut e, &reqs, &vec![0; reqs.len()]);
    let staggered = run(&mut e, &reqs, &[0, 2, 2, 5, 9, 1, 3]);
    let stats = e.status().speculation.expect("speculation is on");
    let cached = e.status().prefix_cache.hit_tokens;
    eprintln!("draft model: {stats:?}, prefix cache hit tokens {cached}");
    for i in 0..reqs.len() {
        if !reqs[i].params.greedy() {
            continue;
        }
        assert_eq!(together[i].0, alone[i], "request {i}, all joined at once");
        assert_eq!(staggered[i].0, alone[i], "request {i}, staggered joins");
    }
    assert!(
        stats.accepted * 3 > stats.drafted && stats.drafted > stats.accepted,
        "a 6-bit copy should agree mostly, not always: {stats:?}"
    );
    assert!(cached > 0, "resent prompts came from the prefix cache");
}

/// Qwen2.5-Coder-0.5B (8-bit) editing a file with its 4-bit copy as the draft: identical to
/// plain greedy decoding, most tokens drafted and kept.
#[test]
fn a_draft_model_edits_code_as_the_model_does() {
    let _g = MLX.lock().unwrap_or_else(|e| e.into_inner());
    let dir = model("Qwen2.5-Coder-0.5B-Instruct");
    let draft = common::requantized("Qwen2.5-Coder-0.5B-Instruct", 4);
    let config = SpeculationConfig {
        draft_tokens: 6,
        ..Default::default()
    };
    edit_as_plain_mostly_drafted(&dir, drafting(&dir, &draft, config), 64);
}

/// The code edit (`max_tokens` greedy tokens) on `spec`, a speculating engine over `dir`:
/// identical to plain decoding, and at least half of it from kept drafts.
fn edit_as_plain_mostly_drafted(dir: &Path, mut spec: Engine, max_tokens: usize) {
    let req = request(
        prompts(dir).remove(0),
        SamplingParams::default(),
        max_tokens,
    );
    let plain = run(&mut engine(dir, None), std::slice::from_ref(&req), &[0]).remove(0);
    let got = run(&mut spec, std::slice::from_ref(&req), &[0]).remove(0);
    let stats = spec.status().speculation.expect("speculation is on");
    eprintln!("speculation: {stats:?} over {} tokens", got.0.len());
    assert_eq!(got.0, plain.0);
    assert!(
        stats.accepted * 2 >= got.0.len() as u64,
        "fewer than half the tokens came from kept drafts: {stats:?}"
    );
}

/// A draft model must share the model's tokenizer: another one is refused before anything
/// loads, with what differs.
#[test]
fn a_draft_model_with_another_tokenizer_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kooka"))
        .args(["generate", "--prompt", "hi", "--max-tokens", "1", "--model"])
        .arg(model("SmolLM2-135M-Instruct"))
        .arg("--draft-model")
        .arg(model("Qwen2.5-Coder-0.5B-Instruct"))
        .output()
        .expect("kooka generate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("another tokenizer than the model") && err.contains("tokens differ"),
        "{err}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kooka"))
        .args([
            "generate",
            "--prompt",
            "hi",
            "--speculative",
            "draft",
            "--model",
        ])
        .arg(model("SmolLM2-135M-Instruct"))
        .output()
        .expect("kooka generate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("needs --draft-model"), "{err}");
}

/// A code edit on Qwen2.5-Coder-0.5B: the reply is the file again, so most of it is drafted
/// and kept, and it equals plain greedy decoding token for token.
#[test]
fn a_code_edit_is_identical_and_mostly_drafted() {
    let _g = MLX.lock().unwrap_or_else(|e| e.into_inner());
    let dir = model("Qwen2.5-Coder-0.5B-Instruct");
    edit_as_plain_mostly_drafted(&dir, engine(&dir, ngram()), 160);
}

/// Sampled rows keep their distribution. The prompt ends "... the quick"; after a first
/// token " brown" prompt lookup drafts " fox", which the verify step keeps or replaces by
/// rejection sampling. Over 512 seeds (temperature 1.5), the second token's frequency of the
/// draft must match its exact probability after "... the quick brown" (from the model's
/// logits) within 4 standard deviations: a step that always kept the draft would give 1, one
/// that never did 0. The rule itself is tested exactly in `engine::sampling`.
#[test]
fn sampled_tokens_keep_their_distribution() {
    let _g = MLX.lock().unwrap_or_else(|e| e.into_inner());
    let dir = model("SmolLM2-135M-Instruct");
    let tok = Tokenizer::load(&dir).expect("tokenizer");
    let text = "the quick brown fox jumps over the lazy dog. the quick brown fox jumps over the \
                lazy dog. the quick";
    let prompt = tok.encode(text, false).expect("encode");
    let temperature = 1.5;
    let mut e = Engine::with_config(
        load_model(&dir, ComputeDtype::Auto).expect("model"),
        EngineConfig {
            prefix_cache_tokens: 4096,
            speculation: ngram(),
            ..Default::default()
        },
    );
    let runs = 512u64;
    let mut after: HashMap<u32, Vec<u32>> = HashMap::new();
    for chunk in (0..runs).collect::<Vec<_>>().chunks(8) {
        let reqs: Vec<SequenceRequest> = chunk
            .iter()
            .map(|&s| request(prompt.clone(), sampled(temperature, 7000 + s), 3))
            .collect();
        for (tokens, _) in run(&mut e, &reqs, &vec![0; reqs.len()]) {
            after.entry(tokens[0]).or_default().push(tokens[1]);
        }
    }
    let stats = e.status().speculation.expect("speculation is on");
    let (first, seconds) = after
        .into_iter()
        .max_by_key(|(_, v)| v.len())
        .expect("runs");
    let mut context = prompt.clone();
    context.push(first);
    let draft = ngram::draft(&context, &SpeculationConfig::default(), 1);
    assert_eq!(
        draft.len(),
        1,
        "no draft after {first}: pick another prompt"
    );
    let draft = draft[0];

    // The exact distribution after the prompt and that first token.
    let mut plain = engine(&dir, None);
    let mut exact_req = request(context, SamplingParams::default(), 1);
    exact_req.return_prompt_logits = true;
    let id = plain.add(exact_req).expect("add");
    let mut logits = None;
    while plain.has_work() {
        for ev in plain.step().expect("step") {
            if ev.seq == id && ev.prompt_logits.is_some() {
                logits = ev.prompt_logits;
            }
        }
    }
    let logits = logits.expect("prompt logits");
    let max = logits.iter().copied().fold(f32::MIN, f32::max);
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| (((l - max) / temperature) as f64).exp())
        .collect();
    let p = weights[draft as usize] / weights.iter().sum::<f64>();
    let n = seconds.len() as f64;
    let freq = seconds.iter().filter(|&&t| t == draft).count() as f64 / n;
    let sigma = (p * (1.0 - p) / n).sqrt();
    eprintln!(
        "after {first}: draft {draft} exact p {p:.4}, seen {freq:.4} over {n} runs \
         (sigma {sigma:.4}); {stats:?}"
    );
    assert!(
        (0.05..0.95).contains(&p),
        "p(draft) = {p:.3}: too sure or too unlikely to test the rule"
    );
    assert!(
        stats.accepted > 0 && stats.drafted > stats.accepted,
        "{stats:?}"
    );
    assert!(
        (freq - p).abs() < 4.0 * sigma,
        "the draft came out with frequency {freq:.4}, its probability is {p:.4}"
    );
}

/// Over HTTP: a server with `--speculative ngram` answers exactly as one without it
/// (non-streamed, streamed, four requests at once, a stop string), and reports what it kept
/// in `/health` and `/metrics`; so does one with `--draft-model`.
#[test]
fn a_speculating_server_answers_as_a_plain_one() {
    use common::http::{post, read_sse, request, start, start_with};
    use serde_json::json;

    let file =
        std::fs::read_to_string(common::root().join("tests/fixtures/code_edit/inventory.py"))
            .expect("fixture");
    let body = |stream: bool, extra: serde_json::Value| {
        let mut b = json!({
            "messages": [{"role": "user", "content": format!(
                "Return this file unchanged:\n\n```python\n{file}```")}],
            "max_tokens": 80,
            "temperature": 0,
            "stream": stream,
        });
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            b[k] = v;
        }
        b
    };
    let ask = |addr: &str, stream: bool, extra: serde_json::Value| -> String {
        let r = post(addr, &body(stream, extra));
        assert_eq!(r.status, 200, "{}", r.text());
        match stream {
            true => read_sse(&r.text()).0,
            false => r.json()["choices"][0]["message"]["content"]
                .as_str()
                .expect("content")
                .to_string(),
        }
    };
    let plain = start();
    let spec = start_with(&["--speculative", "ngram", "--num-draft-tokens", "6"]);
    let want = ask(&plain.addr, false, json!({}));
    assert!(!want.is_empty());
    assert_eq!(ask(&spec.addr, false, json!({})), want, "non-streamed");
    assert_eq!(ask(&spec.addr, true, json!({})), want, "streamed");
    {
        let draft = common::requantized("SmolLM2-135M-Instruct", 6);
        let drafting = start_with(&["--draft-model", draft.to_str().expect("path")]);
        assert_eq!(ask(&drafting.addr, false, json!({})), want, "draft model");
        assert_eq!(
            ask(&drafting.addr, true, json!({})),
            want,
            "draft model, streamed"
        );
        let health = request(&drafting.addr, "GET", "/health", b"").json();
        let kept = &health["runtime"]["engine"]["speculation"];
        assert!(kept["accepted"].as_u64().unwrap_or(0) > 0, "{health}");
    }
    // A stop string inside a burst of kept drafts cuts the text where plain decoding does.
    let stop = json!({"stop": ["item"]});
    assert_eq!(
        ask(&spec.addr, true, stop.clone()),
        ask(&plain.addr, true, stop),
        "stop string"
    );
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let addr = spec.addr.clone();
                s.spawn(move || ask(&addr, i % 2 == 0, json!({})))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect()
    });
    for (i, text) in together.iter().enumerate() {
        assert_eq!(text, &want, "request {i} of 4 at once");
    }
    let health = request(&spec.addr, "GET", "/health", b"").json();
    let kept = &health["runtime"]["engine"]["speculation"];
    assert!(kept["accepted"].as_u64().unwrap_or(0) > 0, "{health}");
    let metrics = request(&spec.addr, "GET", "/metrics", b"").text();
    let accepted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kooka_speculative_accepted_tokens_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no acceptance counter in:\n{metrics}"));
    assert_eq!(accepted as u64, kept["accepted"].as_u64().unwrap_or(0));
    let health_plain = request(&plain.addr, "GET", "/health", b"").json();
    assert!(health_plain["runtime"]["engine"]["speculation"].is_null());
}
