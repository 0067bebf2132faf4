//! The multi-rank runtime of `kooka serve` across real processes on loopback: two ranks of
//! `models/SmolLM2-135M-Instruct` split as a pipeline answer exactly as one rank does; a
//! killed, a silent or a mismatched rank becomes a clear error and a non-zero exit, never
//! a hang; a client leaving cancels on every rank; ranks started by plain `mlx.launch`
//! work too. HTTP is spoken over raw `TcpStream`s, as in `tests/server.rs`.
//!
//! The tests run one at a time (each starts two or three model processes on a small
//! machine) and every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

const MODEL: &str = "models/SmolLM2-135M-Instruct";

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn model() -> PathBuf {
    let m = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(MODEL);
    assert!(
        m.join("config.json").exists(),
        "{} is missing: run scripts/setup.sh",
        m.display()
    );
    m
}

fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// A ring hostfile for `ranks` loopback ranks, plus a free control port.
fn hostfile(name: &str, ranks: usize) -> (PathBuf, u16) {
    let ports = free_ports(ranks + 1);
    let hosts: Vec<Vec<String>> = ports[..ranks]
        .iter()
        .map(|p| vec![format!("127.0.0.1:{p}")])
        .collect();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cluster-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hostfile.json");
    std::fs::write(&path, serde_json::to_string(&hosts).unwrap()).unwrap();
    (path, ports[ranks])
}

/// A running process whose output is collected as it comes.
struct Proc {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let sink = Arc::new(Mutex::new(String::new()));
    let s = sink.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut s = s.lock().unwrap();
            s.push_str(&strip_ansi(&line));
            s.push('\n');
        }
    });
    sink
}

/// Log lines without their colour codes, so `seq=0` matches `seq\x1b[0m=\x1b[0m0`.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn spawn(mut cmd: Command) -> Proc {
    cmd.env("RUST_LOG", "info,kooka::cluster=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning kooka");
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    Proc {
        child,
        stdout,
        stderr,
    }
}

/// `kooka serve` as `rank` of the run in `hostfile` (single rank when `None`).
fn serve(rank: Option<(usize, &PathBuf, u16)>, extra: &[&str]) -> Proc {
    serve_model(&model(), rank, extra)
}

/// [`serve`] with another model folder.
fn serve_model(model: &Path, rank: Option<(usize, &PathBuf, u16)>, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kooka"));
    cmd.args(["serve", "--port", "0", "--model"])
        .arg(model)
        .args(extra)
        .env_remove("MLX_RANK")
        .env_remove("MLX_HOSTFILE");
    if let Some((rank, hostfile, control)) = rank {
        cmd.env("MLX_RANK", rank.to_string())
            .env("MLX_HOSTFILE", hostfile)
            .args(["--control-port", &control.to_string()]);
    }
    spawn(cmd)
}

impl Proc {
    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for a line of output containing `needle` (stdout or stderr).
    fn wait_for(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let out = self.stdout.lock().unwrap().clone();
            if let Some(line) = out.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            let err = self.stderr();
            if err.contains(needle) {
                return needle.to_string();
            }
            // A rank that gave up will not print it any more.
            assert!(
                !err.contains("kooka: error:"),
                "no {needle:?}, the process failed:\n{err}"
            );
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {within:?}; stdout:\n{out}\nstderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn address(&self) -> String {
        let line = self.wait_for("kooka: listening on http://", Duration::from_secs(240));
        line.split("http://").nth(1).unwrap().trim().to_string()
    }

    fn exit_within(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {within:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

/// Rank 1 and rank 0 of a two-rank pipeline run, and rank 0's HTTP address.
fn two_ranks(name: &str, extra: &[&str]) -> (Proc, Proc, String) {
    two_ranks_of(&model(), name, extra)
}

/// [`two_ranks`] with another model folder.
fn two_ranks_of(model: &Path, name: &str, extra: &[&str]) -> (Proc, Proc, String) {
    let (hostfile, control) = hostfile(name, 2);
    let r1 = serve_model(model, Some((1, &hostfile, control)), extra);
    let r0 = serve_model(model, Some((0, &hostfile, control)), extra);
    let addr = r0.address();
    (r0, r1, addr)
}

// ---- HTTP over raw sockets ----------------------------------------------------------------

fn send(addr: &str, method: &str, path: &str, body: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connecting to rank 0");
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

/// Status and (de-chunked) body.
fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut raw = Vec::new();
    send(addr, method, path, body)
        .read_to_end(&mut raw)
        .expect("reading the response");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, mut body) = raw.split_once("\r\n\r\n").expect("a header end");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut plain = String::new();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        while let Some((size, rest)) = body.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            plain.push_str(&rest[..n]);
            body = &rest[n + 2..];
        }
    } else {
        plain = body.to_string();
    }
    (status, plain)
}

fn chat(addr: &str, body: &Value) -> Value {
    let (status, text) = request(addr, "POST", "/v1/chat/completions", &body.to_string());
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// The concatenated content of an SSE chat stream.
fn sse_text(body: &str) -> String {
    let mut text = String::new();
    for event in body.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
        if event == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(event).unwrap();
        assert!(chunk.get("error").is_none(), "{chunk}");
        text += chunk["choices"][0]["delta"]["content"]
            .as_str()
            .unwrap_or("");
    }
    text
}

fn user(content: &str, extra: Value) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 48});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Asks rank 0 at `addr` for France's capital; the greedy reply names Paris.
fn asks_for_paris(addr: &str) -> Value {
    let c = chat(addr, &user("What is the capital of France?", json!({})));
    assert!(
        c["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("Paris"),
        "{c}"
    );
    c
}

const COUNT: &str = "Count from 1 to 1000, one number per line.";

/// Opens a long stream and reads until `chunks` content chunks arrived.
fn stream_some(addr: &str, chunks: usize) -> TcpStream {
    let body = user(COUNT, json!({"max_tokens": 3000, "stream": true})).to_string();
    let mut s = send(addr, "POST", "/v1/chat/completions", &body);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.windows(6).filter(|w| w == b"data: ").count() < chunks + 1 {
        let n = s.read(&mut buf).expect("reading the stream");
        assert!(n > 0, "stream ended: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    s
}

/// Reads a stream to its end; returns what came and its error event's data.
fn rest_and_error_event(stream: &mut TcpStream) -> (String, String) {
    let mut rest = String::new();
    let _ = stream.read_to_string(&mut rest);
    // (Chunked transfer encoding: the size lines sit between the events.)
    let error = rest
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .find(|e| e.contains("\"error\""))
        .unwrap_or_else(|| panic!("no error event in the stream's end: {rest}"))
        .to_string();
    (rest, error)
}

// ---- the tests --------------------------------------------------------------------------

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

    let (mut r0, mut r1, addr) = two_ranks("parity", &["--parallel", "pipeline"]);
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

/// A rank that joins early keeps its heartbeats while a later one is still starting.
#[test]
fn three_ranks_joining_at_different_times() {
    let _serial = serial();
    let (hostfile, control) = hostfile("three", 3);
    let r0 = serve(Some((0, &hostfile, control)), &[]);
    let r1 = serve(Some((1, &hostfile, control)), &[]);
    r0.wait_for("rank connected rank=1", Duration::from_secs(60));
    // Longer than the 3 s after which a silent peer counts as lost.
    std::thread::sleep(Duration::from_secs(5));
    let r2 = serve(Some((2, &hostfile, control)), &[]);
    let addr = r0.address();
    asks_for_paris(&addr);
    let (status, health) = request(&addr, "GET", "/health", "");
    assert_eq!(status, 200, "{health}");
    assert!(
        health.contains("pipeline rank 2/3: layers 20..30 of 30"),
        "{health}"
    );
    drop((r2, r1));
}

#[test]
fn killing_a_follower_mid_stream_fails_the_request_and_ends_rank_zero() {
    let _serial = serial();
    let (mut r0, mut r1, addr) = two_ranks("kill", &[]);
    let mut stream = stream_some(&addr, 5);
    r1.child.kill().unwrap();
    let killed = Instant::now();
    r1.child.wait().unwrap();

    // The stream ends with an error event naming the rank, then [DONE].
    let (_, error) = rest_and_error_event(&mut stream);
    assert!(error.contains("rank 1 (127.0.0.1)"), "{error}");

    // Meanwhile /health is 503 (or rank 0 is already gone).
    if let Ok(mut s) = TcpStream::connect(&addr) {
        let _ = write!(
            s,
            "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        );
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        assert!(raw.is_empty() || raw.starts_with("HTTP/1.1 503"), "{raw}");
    }

    let status = r0.exit_within(Duration::from_secs(15));
    eprintln!(
        "rank 0 exited {:.2}s after rank 1 was killed",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(status.code(), Some(1), "{}", r0.stderr());
    assert!(
        r0.stderr().contains("rank 1 (127.0.0.1) is unavailable"),
        "{}",
        r0.stderr()
    );
}

#[test]
fn a_silent_follower_is_found_by_heartbeats() {
    let _serial = serial();
    let (mut r0, r1, addr) = two_ranks("silent", &[]);
    r1.signal("-STOP");
    let stopped = Instant::now();
    // Timing::default(): 3 s without a heartbeat, then 1 s of grace.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = request(&addr, "GET", "/health", "");
        if status == 503 {
            assert!(body.contains("no heartbeat"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "/health still {status}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = r0.exit_within(Duration::from_secs(15));
    eprintln!(
        "rank 0 exited {:.2}s after rank 1 went silent",
        stopped.elapsed().as_secs_f64()
    );
    assert_eq!(status.code(), Some(1));
    r1.signal("-KILL");
}

#[test]
fn a_client_leaving_cancels_on_every_rank_and_both_serve_on() {
    let _serial = serial();
    let (r0, mut r1, addr) = two_ranks("cancel", &[]);
    drop(stream_some(&addr, 5));
    r0.wait_for("client went away", Duration::from_secs(60));
    r1.wait_for(
        "follower: sequence cancelled seq=0",
        Duration::from_secs(30),
    );
    r1.wait_for("follower: idle", Duration::from_secs(30));

    let c = asks_for_paris(&addr);
    let tokens = c["usage"]["completion_tokens"].as_u64().unwrap();
    r1.wait_for(
        &format!("sequence finished seq=1 tokens={tokens}"),
        Duration::from_secs(30),
    );

    // And a follower whose rank 0 dies exits non-zero at once.
    drop(r0);
    let status = r1.exit_within(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    assert!(r1.stderr().contains("rank 0 is gone"), "{}", r1.stderr());
}

#[test]
fn rank_zero_names_the_ranks_that_never_came() {
    let _serial = serial();
    let (hostfile, control) = hostfile("alone", 3);
    let mut r0 = serve(
        Some((0, &hostfile, control)),
        &["--startup-timeout-secs", "2"],
    );
    let status = r0.exit_within(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1));
    let err = r0.stderr();
    assert!(
        err.contains("rank 1 (127.0.0.1), rank 2 (127.0.0.1) did not connect"),
        "{err}"
    );
}

#[test]
fn ranks_started_with_different_flags_are_refused() {
    let _serial = serial();
    let (hostfile, control) = hostfile("mismatch", 2);
    let mut r1 = serve(Some((1, &hostfile, control)), &["--parallel", "tensor"]);
    let mut r0 = serve(Some((0, &hostfile, control)), &["--parallel", "pipeline"]);
    for (rank, p) in [(0, &mut r0), (1, &mut r1)] {
        let status = p.exit_within(Duration::from_secs(30));
        assert_eq!(status.code(), Some(1), "rank {rank}");
        let err = p.stderr();
        assert!(
            err.contains("rank 1 was started with --parallel tensor, rank 0 with pipeline"),
            "rank {rank}: {err}"
        );
    }
}

/// Compatibility mode: plain `mlx.launch` sets only MLX_RANK / MLX_HOSTFILE (with `-n 1`, an
/// empty hostfile: one rank).
#[test]
fn ranks_started_by_mlx_launch() {
    let _serial = serial();
    for ranks in [2, 1] {
        mlx_launch_serves(ranks);
    }
}

fn mlx_launch_serves(ranks: usize) {
    let launch = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("third_party/venv/bin/mlx.launch");
    assert!(
        launch.exists(),
        "{} is missing: run scripts/setup.sh --tests",
        launch.display()
    );
    let ports = free_ports(3);
    let mut cmd = Command::new(&launch);
    cmd.args([
        "-n",
        &ranks.to_string(),
        "--backend",
        "ring",
        "-p",
        &ports[0].to_string(),
        "--",
    ])
    .arg(env!("CARGO_BIN_EXE_kooka"))
    .args([
        "serve",
        "--port",
        "0",
        "--control-port",
        &ports[2].to_string(),
        "--model",
    ])
    .arg(model())
    .env_remove("MLX_RANK")
    .env_remove("MLX_HOSTFILE");
    // mlx.launch leaves its ranks running when it is killed: kill the whole group.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let launcher = spawn(cmd);
    let group = launcher.child.id();
    let kill_group = || {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{group}")])
            .status();
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let addr = launcher.address();
        asks_for_paris(&addr);
        let (status, health) = request(&addr, "GET", "/health", "");
        assert_eq!(status, 200, "{health}");
        match ranks {
            1 => assert!(!health.contains("rank"), "one rank: {health}"),
            _ => assert!(health.contains("pipeline rank 1/2"), "{health}"),
        }
    }));
    kill_group();
    drop(launcher);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// A deliberate stop: SIGTERM to `kooka launch` drains rank 0 (its stream ends with an error
/// event saying the server is stopping, then [DONE]), rank 0 stops the other rank, and every
/// process exits 0 without reporting a lost rank.
#[test]
fn sigterm_to_kooka_launch_drains_and_exits_zero() {
    let _serial = serial();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kooka"));
    cmd.args([
        "launch",
        "-n",
        "2",
        "--",
        "serve",
        "--port",
        "0",
        "--shutdown-grace",
        "1",
    ])
    .arg("--model")
    .arg(model())
    .env_remove("MLX_RANK")
    .env_remove("MLX_HOSTFILE");
    let mut launcher = spawn(cmd);
    let addr = launcher.address();
    let mut stream = stream_some(&addr, 3);
    launcher.signal("-TERM");
    let (rest, error) = rest_and_error_event(&mut stream);
    assert!(error.contains("shutting down"), "{error}");
    assert!(rest.contains("data: [DONE]"), "{rest}");
    assert!(
        rest.ends_with("0\r\n\r\n"),
        "no chunked terminator: {rest:?}"
    );
    let status = launcher.exit_within(Duration::from_secs(40));
    let log = launcher.stderr();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        !log.contains("ERROR") && !log.contains("is unavailable"),
        "{log}"
    );
}

/// Each rank keeps its own layers' blocks; after a restart the ranks agree on where to
/// resume even when their folders differ (rank 1 lost its tail block): the shorter length,
/// and the reply of a cold single-rank run.
#[test]
fn ranks_resume_from_their_own_disk_folders_at_one_agreed_length() {
    let _serial = serial();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cluster-disk-cache");
    let _ = std::fs::remove_dir_all(&dir);
    let flag = ["--prompt-cache-dir", dir.to_str().unwrap()];
    let story: String = (0..60)
        .map(|i| format!("Note {i} about the harbour: the ships go out."))
        .collect::<Vec<_>>()
        .join(" ");
    let first = json!({"prompt": story, "max_tokens": 8, "temperature": 0});
    let longer = json!({"prompt": format!("{story} And then the storm came."), "max_tokens": 8, "temperature": 0});
    let completion = |addr: &str, body: &Value| -> Value {
        let (status, text) = request(addr, "POST", "/v1/completions", &body.to_string());
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    };
    let cold = {
        let one = serve(None, &["--prompt-cache-bytes", "0"]);
        completion(&one.address(), &longer)
    };
    let written = {
        let (_r0, _r1, addr) = two_ranks("disk-1", &flag);
        completion(&addr, &first);
        // Both ranks' writers finish (three blocks each) before the run is stopped.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let files = common::disk_cache_files(&dir);
            if files.len() >= 6 && files.iter().all(|p| p.extension().unwrap() != "tmp") {
                std::thread::sleep(Duration::from_millis(500));
                break common::disk_cache_files(&dir);
            }
            assert!(Instant::now() < deadline, "{files:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let rank1: Vec<&PathBuf> = written
        .iter()
        .filter(|p| p.parent().unwrap().ends_with("rank1"))
        .collect();
    assert!(
        !rank1.is_empty() && rank1.len() < written.len(),
        "{written:?}"
    );
    // Rank 1 loses its tail blocks (the prompt's and the whole sequence's).
    let tail_start = rank1.iter().map(|p| common::block_start(p)).max().unwrap();
    for p in rank1
        .iter()
        .filter(|p| common::block_start(p) == tail_start)
    {
        std::fs::remove_file(p).unwrap();
    }

    let (_r0, _r1, addr) = two_ranks("disk-2", &flag);
    let warm = completion(&addr, &longer);
    let cached = warm["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(
        cached, tail_start,
        "resumed where rank 1's blocks end: {warm}"
    );
    assert_eq!(warm["choices"][0]["text"], cold["choices"][0]["text"]);
}
