//! Integration tests for `kooka serve`: the real binary on an ephemeral port with
//! `models/SmolLM2-135M-Instruct`, spoken to over raw HTTP/1.1 on `std::net::TcpStream`.
//! Raw sockets (rather than an HTTP client crate) because these tests need what clients
//! hide: dropping a connection mid-stream, declaring a body larger than is sent, sending
//! broken JSON, and reading SSE frames as they arrive.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const MODEL: &str = "models/SmolLM2-135M-Instruct";
const FRANCE: &str = "What is the capital of France?";

struct Server {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(MODEL);
    assert!(
        model.join("config.json").exists(),
        "{} is missing: run scripts/setup.sh",
        model.display()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_kooka"))
        .args(["serve", "--port", "0", "--model"])
        .arg(&model)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kooka serve");
    let stderr = Arc::new(Mutex::new(String::new()));
    let err_pipe = child.stderr.take().expect("stderr");
    let sink = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("kooka: listening on http://") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(180)) {
        Ok(addr) => addr,
        Err(_) => {
            let _ = child.kill();
            panic!(
                "kooka serve did not print its address; stderr:\n{}",
                stderr.lock().unwrap()
            );
        }
    };
    Server {
        child,
        addr,
        stderr,
    }
}

struct Response {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connecting to kooka serve");
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    s
}

fn head(method: &str, path: &str, len: usize) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
}

fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> Response {
    let mut s = connect(addr);
    s.write_all(head(method, path, body.len()).as_bytes())
        .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("reading the response");
    parse(&raw)
}

fn parse(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let headers = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = headers
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let mut body = raw[split + 4..].to_vec();
    if headers.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .expect("chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
}

fn post(addr: &str, body: &Value) -> Response {
    request(
        addr,
        "POST",
        "/v1/chat/completions",
        body.to_string().as_bytes(),
    )
}

fn france(extra: Value) -> Value {
    let mut body = json!({
        "messages": [{"role": "user", "content": FRANCE}],
        "temperature": 0,
        "max_tokens": 64,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn assert_error(r: &Response, status: u16, param: Option<&str>) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    assert!(r.headers.contains("application/json"), "{}", r.headers);
    let e = r.json();
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{e}"
    );
    assert!(e["error"]["type"].is_string(), "{e}");
    if let Some(p) = param {
        assert_eq!(e["error"]["param"], p, "{e}");
    }
    e
}

/// Content deltas, the finish reason and the usage chunk of an SSE body ending in [DONE].
fn read_sse(body: &str) -> (String, Option<String>, Option<Value>) {
    let events: Vec<&str> = body
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not SSE data: {e:?}"))
        })
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    for (i, e) in events[..events.len() - 1].iter().enumerate() {
        let chunk: Value = serde_json::from_str(e).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        if i == 0 {
            assert_eq!(chunk["choices"][0]["delta"]["role"], "assistant", "{chunk}");
        }
        if !chunk["usage"].is_null() {
            usage = Some(chunk["usage"].clone());
            continue;
        }
        let choice = &chunk["choices"][0];
        text += choice["delta"]["content"].as_str().unwrap_or("");
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    (text, finish, usage)
}

#[test]
fn health_models_and_chat_completions() {
    let server = start();
    let addr = &server.addr;

    let r = request(addr, "GET", "/health", b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"status": "ok"}));

    let r = request(addr, "GET", "/v1/models", b"");
    assert_eq!(r.status, 200);
    let models = r.json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "SmolLM2-135M-Instruct");

    let r = post(addr, &france(json!({"model": "SmolLM2-135M-Instruct"})));
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    assert_eq!(c["object"], "chat.completion");
    assert!(c["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("chatcmpl-")));
    assert_eq!(c["model"], "SmolLM2-135M-Instruct");
    let message = &c["choices"][0]["message"];
    assert_eq!(message["role"], "assistant");
    let text = message["content"].as_str().unwrap().to_string();
    assert!(text.contains("Paris"), "{c}");
    assert!(["stop", "length"].contains(&c["choices"][0]["finish_reason"].as_str().unwrap()));
    let u = &c["usage"];
    let (p, g) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 0 && g > 0, "{u}");
    assert_eq!(u["total_tokens"].as_u64().unwrap(), p + g);

    // The alias route, streaming, with usage: the same text as the JSON response.
    let body = france(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let r = request(
        addr,
        "POST",
        "/chat/completions",
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.headers.contains("text/event-stream"), "{}", r.headers);
    let (streamed, finish, usage) = read_sse(&r.text());
    assert_eq!(streamed, text);
    assert_eq!(finish.as_deref(), c["choices"][0]["finish_reason"].as_str());
    assert_eq!(usage.as_ref(), Some(u));

    // A stop string ends the completion before it and reports "stop".
    let r = post(addr, &france(json!({"stop": "Paris"})));
    let c = r.json();
    assert_eq!(c["choices"][0]["finish_reason"], "stop", "{c}");
    assert!(!c["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("Paris"));

    let r = post(addr, &france(json!({"max_tokens": 2})));
    let c = r.json();
    assert_eq!(c["choices"][0]["finish_reason"], "length", "{c}");
    assert_eq!(c["usage"]["completion_tokens"], 2, "{c}");
}

#[test]
fn bad_requests_get_openai_errors() {
    let server = start();
    let addr = &server.addr;

    let r = request(addr, "POST", "/v1/chat/completions", b"{\"messages\": [");
    assert_error(&r, 400, None);
    let r = post(addr, &france(json!({"temperature": "hot"})));
    assert_error(&r, 400, Some("temperature"));
    let r = post(addr, &json!({"messages": "hi"}));
    assert_error(&r, 400, Some("messages"));
    let r = post(addr, &france(json!({"n": 2})));
    let e = assert_error(&r, 400, Some("n"));
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not supported"),
        "{e}"
    );
    let r = post(addr, &france(json!({"model": "gpt-4o"})));
    let e = assert_error(&r, 404, Some("model"));
    assert_eq!(e["error"]["code"], "model_not_found");
    let r = request(addr, "GET", "/v1/nothing", b"");
    assert_error(&r, 404, None);

    // Declared too large: refused before the body is read.
    let mut s = connect(addr);
    s.write_all(head("POST", "/v1/chat/completions", 9 << 20).as_bytes())
        .unwrap();
    s.write_all(b"{\"messages\": ").unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert_error(&parse(&raw), 413, None);

    // Longer than the model's context (8192 positions).
    let long = "hello ".repeat(9000);
    let r = post(
        addr,
        &json!({"messages": [{"role": "user", "content": long}]}),
    );
    let e = assert_error(&r, 400, Some("messages"));
    assert_eq!(e["error"]["code"], "context_length_exceeded");

    // Still serving after all that.
    let r = post(addr, &france(json!({"max_tokens": 4})));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_client_leaving_mid_stream_cancels_its_sequence() {
    let server = start();
    let addr = &server.addr;

    let body = json!({
        "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
        "temperature": 0,
        "max_tokens": 3000,
        "stream": true,
    })
    .to_string();
    let mut s = connect(addr);
    s.write_all(head("POST", "/v1/chat/completions", body.len()).as_bytes())
        .unwrap();
    s.write_all(body.as_bytes()).unwrap();
    // Read until a few content chunks have arrived, then hang up.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.windows(6).filter(|w| w == b"data: ").count() < 5 {
        let n = s.read(&mut buf).expect("reading the stream");
        assert!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    drop(s);

    let deadline = Instant::now() + Duration::from_secs(60);
    while !server.stderr.lock().unwrap().contains("client went away") {
        assert!(
            Instant::now() < deadline,
            "no cancellation logged; stderr:\n{}",
            server.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let r = post(addr, &france(json!({})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("Paris"));
}
