//! The HTTP harness of the integration tests: the real `kooka serve` binary on an ephemeral
//! port with the default model, spoken to over raw HTTP/1.1 on `std::net::TcpStream`. Raw
//! sockets (rather than an HTTP client crate) because tests need what clients hide: dropping
//! a connection mid-stream, declaring a body larger than is sent, sending broken JSON, and
//! reading SSE frames as they arrive.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

pub const MODEL: &str = "models/SmolLM2-135M-Instruct";
pub const FRANCE: &str = "What is the capital of France?";

pub struct Server {
    pub child: Child,
    pub addr: String,
    pub stderr: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start() -> Server {
    start_with(&[])
}

pub fn start_with(extra: &[&str]) -> Server {
    start_with_env(extra, &[])
}

/// [`start_with`] with more environment variables; `extra` may name its own `--model`.
pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
    let (mut server, lines) = spawn(extra, env);
    server.addr = wait_for(&mut server, &lines, Announced::Listening);
    server
}

/// Starts the default model's `kooka serve` and returns as soon as its port answers while
/// the model loads (`server.addr` is set), with what announces the rest.
pub fn start_loading() -> (Server, mpsc::Receiver<(Announced, String)>) {
    let (mut server, lines) = spawn(&[], &[]);
    server.addr = wait_for(&mut server, &lines, Announced::Loading);
    (server, lines)
}

/// What `kooka serve` prints on stdout: where it answers while loading, then where it serves.
#[derive(Debug, Clone, PartialEq)]
pub enum Announced {
    Loading,
    Listening,
}

/// Waits (up to 180 s) for the `kind` line, and returns its address.
pub fn wait_for(
    server: &mut Server,
    lines: &mpsc::Receiver<(Announced, String)>,
    kind: Announced,
) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok((k, addr)) if k == kind => return addr,
            Ok(_) => {}
            Err(_) => {
                let _ = server.child.kill();
                panic!(
                    "kooka serve did not print its {kind:?} address; stderr:\n{}",
                    server.stderr.lock().unwrap()
                );
            }
        }
    }
}

fn spawn(extra: &[&str], env: &[(&str, &str)]) -> (Server, mpsc::Receiver<(Announced, String)>) {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(MODEL);
    assert!(
        model.join("config.json").exists(),
        "{} is missing: run scripts/setup.sh",
        model.display()
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kooka"));
    cmd.args(["serve", "--port", "0"]);
    if !extra.contains(&"--model") {
        cmd.arg("--model").arg(&model);
    }
    let mut child = cmd
        .args(extra)
        .envs(env.iter().copied())
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
            let announced = match line.strip_prefix("kooka: listening on http://") {
                Some(addr) => Some((Announced::Listening, addr.to_string())),
                // `kooka: loading MODEL; http://ADDR answers 503 until it is ready`
                None => (line.strip_prefix("kooka: loading "))
                    .and_then(|rest| rest.split("http://").nth(1))
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(|addr| (Announced::Loading, addr.to_string())),
            };
            if let Some(a) = announced {
                let _ = tx.send(a);
            }
        }
    });
    let server = Server {
        child,
        addr: String::new(),
        stderr,
    };
    (server, rx)
}

pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connecting to kooka serve");
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    s
}

pub fn head(method: &str, path: &str, len: usize) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
}

pub fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> Response {
    request_with(addr, method, path, body, "")
}

/// `extra`: more header lines, each ending in `\r\n`.
pub fn request_with(addr: &str, method: &str, path: &str, body: &[u8], extra: &str) -> Response {
    let mut s = connect(addr);
    let head = head(method, path, body.len());
    let head = head.replacen("\r\n", &format!("\r\n{extra}"), 1);
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("reading the response");
    parse(&raw)
}

pub fn parse(raw: &[u8]) -> Response {
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

pub fn dechunk(mut data: &[u8]) -> Vec<u8> {
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

pub fn post(addr: &str, body: &Value) -> Response {
    request(
        addr,
        "POST",
        "/v1/chat/completions",
        body.to_string().as_bytes(),
    )
}

pub fn france(extra: Value) -> Value {
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

pub fn assert_error(r: &Response, status: u16, param: Option<&str>) -> Value {
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
pub fn read_sse(body: &str) -> (String, Option<String>, Option<Value>) {
    let events: Vec<&str> = body
        .split("\n\n")
        .filter(|e| !e.trim().is_empty() && !e.starts_with(':'))
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

/// Sends a streamed request and reads until `events` SSE `data:` frames have arrived; the
/// stream stays open (drop it to hang up mid-stream).
pub fn stream_some(addr: &str, path: &str, body: &Value, events: usize) -> TcpStream {
    let body = body.to_string();
    let mut s = connect(addr);
    s.write_all(head("POST", path, body.len()).as_bytes())
        .unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.windows(6).filter(|w| w == b"data: ").count() < events {
        let n = s.read(&mut buf).expect("reading the stream");
        assert!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    s
}
