//! Regression tests for the hardening pass (issue 18), one per finding, against the real
//! `kooka serve` binary on the default model: out-of-vocabulary ids, clients that leave a
//! non-streamed request, the Host and Origin checks, API key files, slow bodies, the queue
//! timeout and `/health`, a graceful SIGTERM, the port answering while the model loads, and
//! the small ones (HEAD, huge numbers, constrained-decoding messages).

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::*;
use serde_json::json;

/// Calls `check` every 50 ms until it gives a value; fails after `within`, with `what`.
fn poll<T>(within: Duration, what: impl Fn() -> String, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{} within {within:?}", what());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the server's log contains `needle`.
fn wait_for_log(server: &Server, needle: &str, within: Duration) {
    let log = || server.stderr.lock().unwrap().clone();
    poll(
        within,
        || format!("`{needle}` not logged; stderr:\n{}", log()),
        || log().contains(needle).then_some(()),
    );
}

/// `GET /v1/models` with these header lines (each ending in `\r\n`; `Host: localhost`
/// unless they name a host).
fn get_models(addr: &str, headers: &str) -> Response {
    let names_host = headers
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("host:"));
    let host = match names_host {
        true => "",
        false => "Host: localhost\r\n",
    };
    let mut s = connect(addr);
    write!(
        s,
        "GET /v1/models HTTP/1.1\r\n{host}{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("reading the response");
    parse(&raw)
}

fn count_request() -> serde_json::Value {
    json!({
        "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
        "temperature": 0,
        "max_tokens": 3000,
    })
}

/// Findings 1 and 9: client mistakes are 400s naming the field; HEAD /health; engine
/// messages without kooka's internal grammar.
#[test]
fn bad_values_are_400s_that_name_the_field() {
    let server = start();
    let addr = &server.addr;
    let ids = json!({"prompt": [1, 2, 49152], "max_tokens": 1}).to_string();
    let r = request(addr, "POST", "/v1/completions", ids.as_bytes());
    let e = assert_error(&r, 400, Some("prompt"));
    assert!(
        e["error"]["message"].as_str().unwrap().contains("49152"),
        "{e}"
    );

    for (field, value) in [("temperature", "1e300"), ("top_p", "-1e39")] {
        let body =
            format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],"{field}":{value}}}"#);
        let r = request(addr, "POST", "/v1/chat/completions", body.as_bytes());
        assert_error(&r, 400, Some(field));
    }

    let schema =
        json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "(((("}}});
    let r = post(
        addr,
        &france(
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}),
        ),
    );
    let e = assert_error(&r, 400, Some("response_format"));
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains("start:") && !message.contains('\n'),
        "{message}"
    );

    let r = request(addr, "HEAD", "/health", b"");
    assert_eq!(r.status, 200, "{}", r.headers);
    // Still serving.
    let r = post(addr, &france(json!({"max_tokens": 2})));
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Finding 2: a non-streamed request whose client hangs up is cancelled.
#[test]
fn a_client_leaving_a_non_streamed_request_cancels_it() {
    let server = start();
    let addr = &server.addr;
    let body = count_request().to_string();
    let mut s = connect(addr);
    s.write_all(head("POST", "/v1/chat/completions", body.len()).as_bytes())
        .unwrap();
    s.write_all(body.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    drop(s);
    wait_for_log(&server, "client went away", Duration::from_secs(10));
    let health = request(addr, "GET", "/health", b"").json();
    assert_eq!(health["runtime"]["running"], 0, "{health}");
}

/// Finding 5: without an API key only loopback names, IP addresses and loopback pages get
/// in; `--allowed-hosts` / `--allowed-origins` open more.
#[test]
fn without_a_key_other_hosts_and_origins_are_refused() {
    let server = start_with(&["--allowed-hosts", "kooka.lan"]);
    let addr = &server.addr;
    let get = |headers: &str| get_models(addr, headers);

    let r = get("Host: evil.example:8080\r\n");
    let e = assert_error(&r, 403, None);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--allowed-hosts"),
        "{e}"
    );
    assert_eq!(get("Host: kooka.lan:8080\r\n").status, 200);
    assert_eq!(get("Host: 10.1.2.3:8080\r\n").status, 200);

    let r = get("Origin: http://evil.example\r\n");
    assert_error(&r, 403, None);
    assert!(
        !r.headers.contains("access-control-allow-origin"),
        "{}",
        r.headers
    );
    let r = get("Origin: http://localhost:5173\r\n");
    assert_eq!(r.status, 200);
    assert!(
        r.headers
            .contains("access-control-allow-origin: http://localhost:5173"),
        "{}",
        r.headers
    );
    // The Anthropic route answers in its own shape.
    let r = request_with(
        addr,
        "POST",
        "/v1/messages",
        b"{}",
        "Origin: http://evil.example\r\n",
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["type"], "error", "{}", r.text());
}

/// Finding 6: keys from a file (any of them), none on the command line; with a key, other
/// hosts and origins are let through.
#[test]
fn keys_come_from_a_file() {
    let file = common::tmp().join("hardening-keys.txt");
    std::fs::write(&file, "# team keys\nkey-one\n\n  key-two  \n").unwrap();
    let server = start_with(&["--api-key-file", file.to_str().unwrap()]);
    let addr = &server.addr;
    let get = |headers: &str| get_models(addr, headers).status;
    assert_eq!(get(""), 401);
    assert_eq!(get("Authorization: Bearer key-one\r\n"), 200);
    assert_eq!(get("x-api-key: key-two\r\n"), 200);
    assert_eq!(get("x-api-key: key-three\r\n"), 401);
    assert_eq!(get("Host: kooka.example\r\nx-api-key: key-one\r\n"), 200);
    // Anthropic's route answers a missing key in its own shape.
    let r = request(addr, "POST", "/v1/messages", b"{}");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["error"]["type"],
        "authentication_error",
        "{}",
        r.text()
    );

    let empty = common::tmp().join("hardening-no-keys.txt");
    std::fs::write(&empty, "# nothing\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kooka"))
        .args(["serve", "--port", "0", "--api-key-file"])
        .arg(&empty)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds no key"), "{err}");
}

/// Finding 8: a body shorter than its Content-Length gets 408 and the connection closes.
#[test]
fn a_body_that_never_arrives_gets_408() {
    let server = start_with(&["--body-timeout-secs", "2"]);
    let mut s = connect(&server.addr);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(head("POST", "/v1/chat/completions", 100).as_bytes())
        .unwrap();
    s.write_all(b"{\"messages\"").unwrap();
    let started = Instant::now();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .expect("the server closes the connection");
    assert!(started.elapsed() < Duration::from_secs(10));
    let r = parse(&raw);
    assert_error(&r, 408, None);
    assert!(r.headers.contains("connection: close"), "{}", r.headers);
}

/// Finding 3: a request that cannot start within --queue-timeout gets 429, and /health says
/// busy while one waits.
#[test]
fn a_request_waiting_too_long_gets_429_and_health_says_busy() {
    let server = start_with(&["--max-running", "1", "--queue-timeout", "2"]);
    let addr = server.addr.clone();
    let long = std::thread::spawn({
        let addr = addr.clone();
        move || post(&addr, &count_request())
    });
    poll(
        Duration::from_secs(20),
        || "the long request never started".into(),
        || (request(&addr, "GET", "/health", b"").json()["runtime"]["running"] == 1).then_some(()),
    );
    let waiting = std::thread::spawn({
        let addr = addr.clone();
        move || post(&addr, &france(json!({"max_tokens": 4})))
    });
    let health = poll(
        Duration::from_secs(5),
        || "/health never said busy".into(),
        || Some(request(&addr, "GET", "/health", b"").json()).filter(|h| h["busy"] == true),
    );
    assert_eq!(health["runtime"]["waiting"], 1, "{health}");
    // Busy is still ready: readiness checks read `status`.
    assert_eq!(health["status"], "ok", "{health}");
    let r = waiting.join().unwrap();
    let e = assert_error(&r, 429, None);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--queue-timeout"),
        "{e}"
    );
    assert!(r.headers.contains("retry-after"), "{}", r.headers);
    drop(server); // the long request ends with the server
    let _ = long.join();
}

/// Finding 4: SIGTERM lets requests finish for --shutdown-grace, then ends them well-formed
/// (a stream with an error event, [DONE] and the chunked terminator; a non-streamed request
/// with a 503), refuses new ones, and the process exits 0.
#[test]
fn sigterm_ends_requests_well_formed_and_exits_zero() {
    let mut server = start_with(&["--shutdown-grace", "2"]);
    let addr = server.addr.clone();
    let mut body = count_request();
    body["stream"] = json!(true);
    let mut stream = stream_some(&addr, "/v1/chat/completions", &body, 3);
    let plain = std::thread::spawn({
        let addr = addr.clone();
        move || post(&addr, &count_request())
    });
    std::thread::sleep(Duration::from_millis(500));
    let ok = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());

    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("shutting down"), "{rest}");
    assert!(rest.contains("data: [DONE]"), "{rest}");
    assert!(
        rest.ends_with("0\r\n\r\n"),
        "no chunked terminator: {rest:?}"
    );
    let r = plain.join().unwrap();
    assert_error(&r, 503, None);

    let status = poll(
        Duration::from_secs(20),
        || "the server did not exit".into(),
        || server.child.try_wait().unwrap(),
    );
    assert_eq!(status.code(), Some(0), "{}", server.stderr.lock().unwrap());
}

/// RSS of a process in bytes (Linux).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The soak (slow: KOOKA_SLOW_TESTS=1; KOOKA_SOAK_SECS, default 600): 16 clients send
/// distinct chat requests back to back, half of them streamed; every request completes,
/// and the server's memory stays flat: its RSS over the last half of the run stays within
/// 192 MiB of what it was once warm, at a quarter of the run but at least 150 s in (the
/// prefix cache is held to 64 MiB, and it and MLX's buffer cache fill within ~2 minutes:
/// measured 1.04 GiB at 5 s, 1.3 GiB from 125 s on, flat after).
#[test]
fn soak_16_streams_keep_memory_flat_slow() {
    if std::env::var("KOOKA_SLOW_TESTS").as_deref() != Ok("1") {
        eprintln!("SKIPPED soak: set KOOKA_SLOW_TESTS=1 to run it");
        return;
    }
    let secs: u64 = std::env::var("KOOKA_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let server = start_with(&["--prompt-cache-bytes", "67108864"]);
    let pid = server.child.id();
    let until = Instant::now() + Duration::from_secs(secs);
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                let mut done = 0usize;
                while Instant::now() < until {
                    let mut body = json!({
                        "messages": [{"role": "user", "content": format!(
                            "Client {c}, request {done}: name {} animals that live in the sea.",
                            3 + done % 5
                        )}],
                        "max_tokens": 48,
                    });
                    let streamed = c % 2 == 0;
                    if streamed {
                        body["stream"] = json!(true);
                    }
                    let r = post(&addr, &body);
                    assert_eq!(r.status, 200, "client {c} request {done}: {}", r.text());
                    if streamed {
                        read_sse(&r.text());
                    } else {
                        assert!(r.json()["choices"][0]["finish_reason"].is_string());
                    }
                    done += 1;
                }
                done
            })
        })
        .collect();
    let started = Instant::now();
    let mut samples: Vec<(f64, u64)> = Vec::new();
    while Instant::now() < until {
        samples.push((started.elapsed().as_secs_f64(), rss_bytes(pid)));
        std::thread::sleep(Duration::from_secs(5));
    }
    let total: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let warm = (secs as f64 / 4.0).max(150.0_f64.min(secs as f64 / 2.0));
    let quarter = samples
        .iter()
        .filter(|(t, _)| *t >= warm)
        .map(|s| s.1)
        .next()
        .unwrap_or(0);
    let late_max = samples
        .iter()
        .filter(|(t, _)| *t >= secs as f64 / 2.0)
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "soak: {total} requests in {secs} s; RSS at {warm:.0} s: {:.0} MiB, max over the last half: {:.0} MiB",
        mib(quarter),
        mib(late_max)
    );
    assert!(total >= 16, "only {total} requests completed");
    assert!(
        late_max <= quarter + (192 << 20),
        "memory grew: {:.0} MiB at {warm:.0} s, {:.0} MiB later; samples {samples:?}",
        mib(quarter),
        mib(late_max)
    );
}

/// Finding 3: a step that runs longer than --health-stuck-secs (here one 1,800-token prefill
/// chunk) makes /health answer 503 `stuck`; it is `ok` again afterwards.
#[test]
fn health_says_stuck_during_a_long_step() {
    let server = start_with(&["--prefill-chunk", "8192", "--health-stuck-secs", "1"]);
    let addr = server.addr.clone();
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(180);
    let prompt = json!({"prompt": long, "max_tokens": 1}).to_string();
    let reply = std::thread::spawn({
        let addr = addr.clone();
        move || request(&addr, "POST", "/v1/completions", prompt.as_bytes())
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = request(&addr, "GET", "/health", b"");
        if r.status == 503 {
            assert_eq!(r.json()["status"], "stuck", "{}", r.text());
            break;
        }
        assert!(
            !reply.is_finished(),
            "the prefill ended before /health said stuck"
        );
        assert!(Instant::now() < deadline, "never stuck: {}", r.text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(reply.join().unwrap().status, 200);
    let health = request(&addr, "GET", "/health", b"").json();
    assert_eq!(health["status"], "ok", "{health}");
}

#[test]
fn while_the_model_loads_the_port_answers_503_loading() {
    let (mut server, lines) = start_loading();
    // The weights take seconds to load; the loading server answers at once.
    let r = request(&server.addr, "GET", "/health", b"");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["status"], "loading");
    let chat = json!({"messages": [{"role": "user", "content": FRANCE}], "max_tokens": 4});
    let r = request(
        &server.addr,
        "POST",
        "/v1/chat/completions",
        chat.to_string().as_bytes(),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.headers.to_lowercase().contains("retry-after: 5"),
        "{}",
        r.headers
    );
    assert_eq!(r.json()["error"]["code"], "model_loading");
    // Anthropic's routes answer in Anthropic's shape.
    let messages = json!({"max_tokens": 4, "messages": [{"role": "user", "content": FRANCE}]});
    let r = request(
        &server.addr,
        "POST",
        "/v1/messages",
        messages.to_string().as_bytes(),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    let e = r.json();
    assert_eq!(
        (e["type"].as_str(), e["error"]["type"].as_str()),
        (Some("error"), Some("overloaded_error"))
    );
    // Then the real server takes the same port over.
    let addr = wait_for(&mut server, &lines, Announced::Listening);
    assert_eq!(addr, server.addr);
    let r = request(&server.addr, "GET", "/health", b"");
    assert_eq!((r.status, r.json()["status"].clone()), (200, json!("ok")));
    let r = request(
        &server.addr,
        "POST",
        "/v1/chat/completions",
        chat.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}
