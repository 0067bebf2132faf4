//! `GET /metrics` and the request log: the real binary on an ephemeral port, its metrics read
//! with an independent Prometheus text parser (`prometheus-parse`) and compared with what the
//! responses themselves report (usage, status codes), and its JSON log lines read from stderr.

mod common;

use std::time::{Duration, Instant};

use common::http::*;
use prometheus_parse::{Scrape, Value as Metric};
use serde_json::{json, Value};

/// A prompt long enough that the prefix cache's reuse is plain in the counts.
fn long_prompt() -> String {
    "Describe the history of Paris, from the Parisii tribe and the Roman town of Lutetia \
     through the medieval kings, the Revolution, Haussmann's boulevards and the two world \
     wars, to the city of today. "
        .repeat(3)
}

fn scrape(addr: &str, extra: &str) -> Scrape {
    let r = request_with(addr, "GET", "/metrics", b"", extra);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.headers
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{}",
        r.headers
    );
    let text = r.text();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{text}"))
}

/// The counter or gauge `name` with exactly these labels (0 when absent: a series appears
/// with its first increment).
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = s.samples.iter().find(|x| {
        x.metric == name
            && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
            && x.labels.len() == labels.len()
    });
    match found.map(|x| &x.value) {
        None => 0.0,
        Some(Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v)) => *v,
        Some(other) => panic!("{name} is not a number: {other:?}"),
    }
}

/// A histogram's observation count, after checking its buckets (cumulative, ending in
/// `+Inf` == `_count`).
fn observations(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let Some(sample) = s
        .samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
    else {
        return 0.0;
    };
    let Metric::Histogram(buckets) = &sample.value else {
        panic!("{name} is not a histogram: {:?}", sample.value)
    };
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].less_than < w[1].less_than && w[0].count <= w[1].count),
        "{name}: {buckets:?}"
    );
    let last = buckets.last().expect("buckets");
    assert!(last.less_than.is_infinite(), "{name}: {buckets:?}");
    assert_eq!(
        last.count,
        value(s, &format!("{name}_count"), labels),
        "{name}"
    );
    last.count
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

fn chat(addr: &str, extra_headers: &str, stream: bool) -> (Response, Value) {
    let body = json!({
        "messages": [{"role": "user", "content": long_prompt()}],
        "temperature": 0,
        "max_tokens": 12,
        "stream": stream,
        "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
    });
    let r = request_with(
        addr,
        "POST",
        "/v1/chat/completions",
        body.to_string().as_bytes(),
        extra_headers,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let usage = if stream {
        read_sse(&r.text()).2.expect("a usage chunk")
    } else {
        r.json()["usage"].clone()
    };
    (r, usage)
}

fn n(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The first JSON log line that satisfies `pred`, waiting up to 10 s for it.
fn log_line(server: &Server, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = server
            .stderr
            .lock()
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| pred(l));
        if let Some(line) = found {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no such log line in:\n{}",
            server.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_count_requests_tokens_and_the_prefix_cache() {
    let server = start_with(&["--log-format", "json"]);
    let addr = &server.addr;
    let health = request(addr, "GET", "/health", b"").json();
    let before = scrape(addr, "");

    // The gauges against independent references: /health, the weights on disk.
    assert_eq!(
        value(&before, "kooka_kv_budget_tokens", &[]),
        n(&health["runtime"]["kv_budget_tokens"])
    );
    let weights: u64 = std::fs::read_dir(common::root().join(MODEL))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let active = value(&before, "kooka_mlx_active_memory_bytes", &[]);
    assert!(active >= weights as f64 / 2.0, "{active} < {weights}/2");
    assert!(value(&before, "kooka_mlx_peak_memory_bytes", &[]) >= active);
    for name in [
        "kooka_mlx_cache_memory_bytes",
        "kooka_requests_waiting",
        "kooka_requests_running",
        "kooka_kv_reserved_tokens",
        "kooka_prefix_cache_bytes",
        "kooka_prefix_cache_evictions_total",
    ] {
        assert!(
            before.samples.iter().any(|s| s.metric == name),
            "{name} missing"
        );
    }

    // The same prompt twice (the second streamed): the second reads it from the prefix cache.
    let (first, u1) = chat(addr, "x-request-id: test-abc-123\r\n", false);
    assert_eq!(header(&first, "x-request-id"), Some("test-abc-123"));
    let (second, u2) = chat(addr, "", true);
    let fresh = header(&second, "x-request-id").expect("a generated x-request-id");
    assert!(
        fresh.len() == 16 && fresh.bytes().all(|b| b.is_ascii_hexdigit()),
        "{fresh}"
    );
    let cached = |u: &Value| {
        u["prompt_tokens_details"]["cached_tokens"]
            .as_f64()
            .unwrap_or(0.0)
    };
    assert!(cached(&u2) > n(&u2["prompt_tokens"]) / 2.0, "{u2}");
    // Errors are counted under their route (or `unmatched`) and carry an id too.
    let r = request_with(
        addr,
        "GET",
        "/no/such/route",
        b"",
        "x-request-id: lost-1\r\n",
    );
    assert_eq!(r.status, 404);
    assert_eq!(header(&r, "x-request-id"), Some("lost-1"));
    let insane = "x".repeat(129);
    let r = request(addr, "POST", "/v1/chat/completions", b"{not json");
    assert_eq!(r.status, 400);
    assert!(header(&r, "x-request-id").is_some(), "{}", r.headers);
    let r = request_with(
        addr,
        "GET",
        "/v1/models",
        b"",
        &format!("x-request-id: {insane}\r\n"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "x-request-id").map(str::len), Some(16));

    // The scheduler publishes its gauges after the step that sent a reply's last token, so
    // a reply can arrive a moment before `running` drops: wait for it (through /health).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let h = request(addr, "GET", "/health", b"").json();
        if h["runtime"]["running"] == 0 && h["runtime"]["waiting"] == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still running: {h}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let after = scrape(addr, "");
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let requests = "kooka_http_requests_total";
    let chat_route = ("route", "/v1/chat/completions");
    assert_eq!(delta(requests, &[chat_route, ("status", "200")]), 2.0);
    assert_eq!(delta(requests, &[chat_route, ("status", "400")]), 1.0);
    assert_eq!(
        delta(requests, &[("route", "unmatched"), ("status", "404")]),
        1.0
    );
    assert_eq!(
        delta(requests, &[("route", "/v1/models"), ("status", "200")]),
        1.0
    );
    // `before` itself; this scrape is counted once it is written, and is in flight now.
    assert_eq!(
        delta(requests, &[("route", "/metrics"), ("status", "200")]),
        1.0
    );
    assert_eq!(value(&after, "kooka_http_requests_in_flight", &[]), 1.0);
    assert_eq!(value(&after, "kooka_requests_running", &[]), 0.0);
    assert_eq!(value(&after, "kooka_requests_waiting", &[]), 0.0);

    let sum = |k: &str| n(&u1[k]) + n(&u2[k]);
    assert_eq!(
        delta("kooka_prompt_tokens_total", &[]),
        sum("prompt_tokens")
    );
    assert_eq!(
        delta("kooka_generation_tokens_total", &[]),
        sum("completion_tokens")
    );
    assert_eq!(
        delta("kooka_prompt_cached_tokens_total", &[]),
        cached(&u1) + cached(&u2)
    );
    assert!(delta("kooka_prefix_cache_hits_total", &[]) >= 1.0);
    assert!(value(&after, "kooka_prefix_cache_bytes", &[]) > 0.0);

    let hist = |name: &str, labels: &[(&str, &str)]| {
        observations(&after, name, labels) - observations(&before, name, labels)
    };
    assert_eq!(hist("kooka_time_to_first_token_seconds", &[]), 2.0);
    assert_eq!(hist("kooka_e2e_request_latency_seconds", &[]), 2.0);
    assert_eq!(
        hist("kooka_inter_token_latency_seconds", &[]),
        sum("completion_tokens") - 2.0
    );
    assert!(
        hist("kooka_engine_step_duration_seconds", &[("rank", "0")]) >= n(&u1["completion_tokens"])
    );
    assert_eq!(
        hist("kooka_http_request_duration_seconds", &[chat_route]),
        3.0
    );

    // One `request finished` line per request, its fields as JSON fields.
    let line = log_line(&server, |l| {
        l["fields"]["message"] == "request finished" && l["fields"]["id"] == "test-abc-123"
    });
    let f = &line["fields"];
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(f["status"], 200, "{line}");
    assert_eq!(f["route"], "/v1/chat/completions", "{line}");
    assert_eq!(f["model"], "SmolLM2-135M-Instruct", "{line}");
    for k in ["prompt_tokens", "completion_tokens"] {
        assert_eq!(f[k], u1[k], "{k}: {line}");
    }
    assert_eq!(n(&f["cached_tokens"]), cached(&u1), "{line}");
    let (ttft, took) = (n(&f["ttft_ms"]), n(&f["duration_ms"]));
    assert!(ttft > 0.0 && ttft <= took, "{line}");
    assert_eq!(line["span"]["id"], "test-abc-123", "{line}");
    let line = log_line(&server, |l| l["fields"]["id"] == "lost-1");
    assert_eq!(line["fields"]["status"], 404, "{line}");
    assert!(line["fields"]["prompt_tokens"].is_null(), "{line}");
    // The prompt's text is not logged at info.
    let logs = server.stderr.lock().unwrap().clone();
    assert!(
        !logs.contains("Lutetia"),
        "request text in the logs:\n{logs}"
    );
}

#[test]
fn metrics_need_the_key_and_count_429s() {
    // No request may wait: every generation is refused with a 429.
    let server = start_with(&["--api-key", "s3cret", "--max-queue", "0"]);
    let addr = &server.addr;
    let key = "authorization: Bearer s3cret\r\n";

    let r = request_with(addr, "GET", "/metrics", b"", "x-request-id: no-key\r\n");
    assert_error(&r, 401, None);
    assert_eq!(header(&r, "x-request-id"), Some("no-key"));
    assert_eq!(request(addr, "GET", "/health", b"").status, 200);

    let before = scrape(addr, key);
    let body = france(json!({}));
    let r = request_with(
        addr,
        "POST",
        "/v1/chat/completions",
        body.to_string().as_bytes(),
        key,
    );
    assert_error(&r, 429, None);
    assert!(header(&r, "x-request-id").is_some(), "{}", r.headers);
    let after = scrape(addr, key);

    let requests = "kooka_http_requests_total";
    let delta = |labels: &[(&str, &str)]| {
        value(&after, requests, labels) - value(&before, requests, labels)
    };
    let chat_route = ("route", "/v1/chat/completions");
    assert_eq!(delta(&[chat_route, ("status", "429")]), 1.0);
    assert_eq!(delta(&[chat_route, ("status", "200")]), 0.0);
    // The refusal before `before`, counted under the route it asked for.
    assert_eq!(
        value(
            &after,
            requests,
            &[("route", "/metrics"), ("status", "401")]
        ),
        1.0
    );
    assert_eq!(
        value(&after, requests, &[("route", "/health"), ("status", "200")]),
        1.0
    );
    // A refused request never started: no tokens, no latencies.
    assert_eq!(value(&after, "kooka_prompt_tokens_total", &[]), 0.0);
    assert_eq!(
        observations(&after, "kooka_time_to_first_token_seconds", &[]),
        0.0
    );
}
