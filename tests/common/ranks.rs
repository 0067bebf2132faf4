//! Several `kooka serve` ranks as real processes on loopback, for `tests/cluster*.rs`: a
//! hostfile on free ports, each rank's output collected as it comes, raw HTTP over
//! `TcpStream`s, and a lock that runs such tests one at a time (each starts two or three model
//! processes on a small machine). Every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const MODEL: &str = "models/SmolLM2-135M-Instruct";

pub static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn model() -> PathBuf {
    let m = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(MODEL);
    assert!(
        m.join("config.json").exists(),
        "{} is missing: run scripts/setup.sh",
        m.display()
    );
    m
}

pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// A ring hostfile for `ranks` loopback ranks, plus a free control port.
pub fn hostfile(name: &str, ranks: usize) -> (PathBuf, u16) {
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
pub struct Proc {
    pub child: Child,
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn collect(pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
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
pub fn strip_ansi(line: &str) -> String {
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

pub fn spawn(mut cmd: Command) -> Proc {
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
pub fn serve(rank: Option<(usize, &PathBuf, u16)>, extra: &[&str]) -> Proc {
    serve_model(&model(), rank, extra)
}

/// [`serve`] with another model folder.
pub fn serve_model(model: &Path, rank: Option<(usize, &PathBuf, u16)>, extra: &[&str]) -> Proc {
    spawn(serve_command(model, rank, extra))
}

fn serve_command(model: &Path, rank: Option<(usize, &PathBuf, u16)>, extra: &[&str]) -> Command {
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
    cmd
}

impl Proc {
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for a line of output containing `needle` (stdout or stderr).
    pub fn wait_for(&self, needle: &str, within: Duration) -> String {
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

    pub fn address(&self) -> String {
        let line = self.wait_for("kooka: listening on http://", Duration::from_secs(240));
        line.split("http://").nth(1).unwrap().trim().to_string()
    }

    pub fn exit_within(&mut self, within: Duration) -> ExitStatus {
        match super::exit_within(&mut self.child, within) {
            Some(status) => status,
            None => panic!("still running after {within:?}; stderr:\n{}", self.stderr()),
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

/// Rank 1 and rank 0 of a two-rank pipeline run, and rank 0's HTTP address.
pub fn two_ranks(name: &str, extra: &[&str]) -> (Proc, Proc, String) {
    two_ranks_of(&model(), name, extra)
}

/// [`two_ranks`] with another model folder.
pub fn two_ranks_of(model: &Path, name: &str, extra: &[&str]) -> (Proc, Proc, String) {
    let (r0, r1, addr, _) = two_ranks_in(model, name, extra, false);
    (r0, r1, addr)
}

/// [`two_ranks`] as on a fresh machine: both ranks' `TMPDIR` (where MLX's CPU backend keeps
/// the kernels it compiles) is a new folder of this test's, returned last.
pub fn two_fresh_ranks(name: &str, extra: &[&str]) -> (Proc, Proc, String, PathBuf) {
    let (r0, r1, addr, tmp) = two_ranks_in(&model(), name, extra, true);
    (r0, r1, addr, tmp.expect("a fresh TMPDIR"))
}

/// Rank 1, then rank 0, of a two-rank run; with `fresh_tmp`, both get `TMPDIR` = a new
/// folder beside the hostfile.
fn two_ranks_in(
    model: &Path,
    name: &str,
    extra: &[&str],
    fresh_tmp: bool,
) -> (Proc, Proc, String, Option<PathBuf>) {
    let (hostfile, control) = hostfile(name, 2);
    let tmp = fresh_tmp.then(|| {
        let dir = hostfile.parent().unwrap().join("tmp");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    });
    let rank = |r: usize| {
        let mut cmd = serve_command(model, Some((r, &hostfile, control)), extra);
        if let Some(dir) = &tmp {
            cmd.env("TMPDIR", dir);
        }
        spawn(cmd)
    };
    let r1 = rank(1);
    let r0 = rank(0);
    let addr = r0.address();
    (r0, r1, addr, tmp)
}

// ---- HTTP over raw sockets ----------------------------------------------------------------

pub fn send(addr: &str, method: &str, path: &str, body: &str) -> TcpStream {
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
pub fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
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

pub fn chat(addr: &str, body: &Value) -> Value {
    let (status, text) = request(addr, "POST", "/v1/chat/completions", &body.to_string());
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// The concatenated content of an SSE chat stream.
pub fn sse_text(body: &str) -> String {
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

pub fn user(content: &str, extra: Value) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 48});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Asks rank 0 at `addr` for France's capital; the greedy reply names Paris.
pub fn asks_for_paris(addr: &str) -> Value {
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

pub const COUNT: &str = "Count from 1 to 1000, one number per line.";

/// Opens a long stream and reads until `chunks` content chunks arrived.
pub fn stream_some(addr: &str, chunks: usize) -> TcpStream {
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
pub fn rest_and_error_event(stream: &mut TcpStream) -> (String, String) {
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
