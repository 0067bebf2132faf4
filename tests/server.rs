//! Integration tests for `kooka serve`: the real binary on an ephemeral port with
//! `models/SmolLM2-135M-Instruct`, spoken to over raw HTTP/1.1 on `std::net::TcpStream`.
//! Raw sockets (rather than an HTTP client crate) because these tests need what clients
//! hide: dropping a connection mid-stream, declaring a body larger than is sent, sending
//! broken JSON, and reading SSE frames as they arrive.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::http::*;
use serde_json::{json, Value};

#[test]
fn health_models_and_chat_completions() {
    let server = start();
    let addr = &server.addr;

    let r = request(addr, "GET", "/health", b"");
    assert_eq!(r.status, 200);
    let health = r.json();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["runtime"]["waiting"], 0, "{health}");
    assert!(
        health["runtime"]["kv_budget_tokens"].as_u64().unwrap() > 0,
        "{health}"
    );

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
    // The same counts; the second asking reads its prompt from the prefix cache.
    let usage = usage.expect("a usage chunk");
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage[k], u[k], "{k}");
    }
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"].as_u64(),
        Some(p - 1)
    );

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
    });
    // A few content chunks, then hang up.
    let s = stream_some(addr, "/v1/chat/completions", &body, 5);
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

#[test]
fn logprobs_logit_bias_routes_and_metadata() {
    let server = start();
    let addr = &server.addr;

    // top_logprobs: the greedy token is the most likely one, alternatives best first.
    let r = post(
        addr,
        &france(json!({"max_tokens": 4, "logprobs": true, "top_logprobs": 3})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    assert!(
        c["system_fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("kooka-")),
        "{c}"
    );
    assert_eq!(
        c["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "{c}"
    );
    let entries = c["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("logprobs");
    assert_eq!(entries.len(), 4, "{c}");
    let mut joined = String::new();
    for e in entries {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{e}");
        let best = top[0]["logprob"].as_f64().unwrap();
        assert!(top
            .windows(2)
            .all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
        assert!((e["logprob"].as_f64().unwrap() - best).abs() < 1e-4, "{e}");
        assert_eq!(e["token"], top[0]["token"], "{e}");
        assert!(best <= 0.0);
        joined += e["token"].as_str().unwrap();
    }
    assert_eq!(
        joined,
        c["choices"][0]["message"]["content"].as_str().unwrap()
    );

    // logit_bias +100 on one token makes greedy decoding repeat it.
    let r = post(
        addr,
        &france(json!({"max_tokens": 3, "logit_bias": {"1000": 100}})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!text.is_empty(), "{text}");
    let unit = &text[..text.len() / 3];
    assert_eq!(text, unit.repeat(3), "{text}");
    for bias in [json!({"x": 1}), json!({"4000000": 5})] {
        let r = post(addr, &france(json!({ "logit_bias": bias })));
        assert_error(&r, 400, Some("logit_bias"));
    }

    // Query strings are ignored by routing; a wrong method on a known path is a 405.
    let r = request(
        addr,
        "POST",
        "/v1/chat/completions?beta=true",
        france(json!({"max_tokens": 2})).to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(addr, "GET", "/v1/chat/completions", b"");
    assert_error(&r, 405, None);

    // CORS preflight, and the header on ordinary responses (without an API key, loopback
    // pages only: tests/hardening.rs checks the refusals).
    let r = request_with(
        addr,
        "OPTIONS",
        "/v1/chat/completions",
        b"",
        "Origin: http://localhost:3000\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type, authorization\r\n",
    );
    assert!(
        r.status == 200 || r.status == 204,
        "{} {}",
        r.status,
        r.headers
    );
    assert!(
        r.headers.contains("access-control-allow-origin"),
        "{}",
        r.headers
    );
    let r = request_with(
        addr,
        "GET",
        "/v1/models",
        b"",
        "Origin: http://127.0.0.1:3000\r\n",
    );
    assert!(
        r.headers.contains("access-control-allow-origin"),
        "{}",
        r.headers
    );

    // /v1/models/{id}.
    let r = request(addr, "GET", "/v1/models/SmolLM2-135M-Instruct", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "SmolLM2-135M-Instruct");
    let r = request(addr, "GET", "/v1/models/no-such/model", b"");
    assert_error(&r, 404, Some("model"));

    // Tools on a template without tool support: described in kooka's system message; the
    // reply is well-formed either way (content or tool calls).
    let echo = json!([{"type": "function", "function": {"name": "echo",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}},
        "required": ["text"], "additionalProperties": false}}}]);
    let r = post(addr, &france(json!({"tools": echo, "max_tokens": 16})));
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    let reason = c["choices"][0]["finish_reason"].as_str().unwrap();
    let calls = &c["choices"][0]["message"]["tool_calls"];
    assert_eq!(reason == "tool_calls", calls.is_array(), "{c}");
    let r = post(
        addr,
        &france(
            json!({"tools": echo, "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
        ),
    );
    assert_error(&r, 400, Some("tool_choice"));
    let r = post(addr, &france(json!({"tools": [{"type": "retrieval"}]})));
    assert_error(&r, 400, Some("tools[0]"));
}

#[test]
fn an_api_key_guards_inference_but_not_health() {
    let server = start_with(&["--api-key", "s3cret"]);
    let addr = &server.addr;
    let body = france(json!({"max_tokens": 2})).to_string();
    let r = request(addr, "POST", "/v1/chat/completions", body.as_bytes());
    let e = assert_error(&r, 401, None);
    assert_eq!(e["error"]["code"], "invalid_api_key");
    let r = request_with(
        addr,
        "POST",
        "/v1/chat/completions",
        body.as_bytes(),
        "Authorization: Bearer wrong\r\n",
    );
    assert_error(&r, 401, None);
    let r = request_with(
        addr,
        "POST",
        "/v1/chat/completions",
        body.as_bytes(),
        "Authorization: Bearer s3cret\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request_with(addr, "GET", "/v1/models", b"", "x-api-key: s3cret\r\n");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(addr, "GET", "/health", b"");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn response_format_and_forced_tool_calls_are_guaranteed() {
    let server = start();
    let addr = &server.addr;

    // json_schema: the reply parses and has the required fields with the right types.
    let schema = json!({"type": "object", "properties": {
        "city": {"type": "string"}, "population": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "maxItems": 3, "items": {"type": "string", "enum": ["big", "old", "coastal"]}}},
        "required": ["city", "population", "tags"], "additionalProperties": false});
    let body = france(json!({"max_tokens": 96, "response_format":
        {"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": true}}}));
    let r = post(addr, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    let content = c["choices"][0]["message"]["content"].as_str().unwrap();
    let v: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content}"));
    assert!(
        v["city"].is_string() && v["population"].is_u64() && v["tags"].is_array(),
        "{v}"
    );
    assert!(v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| ["big", "old", "coastal"].contains(&t.as_str().unwrap())));
    assert_eq!(v.as_object().unwrap().len(), 3, "{v}");
    // Legacy completions take the same field (kooka's extension).
    let body = json!({"prompt": "A JSON object:", "max_tokens": 48, "response_format": {"type": "json_object"}});
    let r = request(addr, "POST", "/v1/completions", body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.json()["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(
        serde_json::from_str::<Value>(&text).is_ok_and(|v| v.is_object()),
        "{text}"
    );
    // A keyword the engine cannot enforce, under strict: a 400 naming it.
    let bad = json!({"type": "object", "not": {"required": ["a"]}});
    let r = post(
        addr,
        &france(json!({"response_format":
        {"type": "json_schema", "json_schema": {"name": "x", "schema": bad, "strict": true}}})),
    );
    let e = assert_error(&r, 400, Some("response_format"));
    assert!(
        e["error"]["message"].as_str().unwrap().contains("not"),
        "{e}"
    );

    // A forced call on a model whose template knows no tools: always a valid call.
    let echo = json!([{"type": "function", "function": {"name": "echo",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}},
        "required": ["text"], "additionalProperties": false}}}]);
    let r = post(
        addr,
        &france(json!({"tools": echo, "max_tokens": 48,
        "tool_choice": {"type": "function", "function": {"name": "echo"}}})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    assert_eq!(c["choices"][0]["finish_reason"], "tool_calls", "{c}");
    let calls = c["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{c}");
    assert_eq!(calls[0]["function"]["name"], "echo");
    let args: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(
        args["text"].as_str().is_some_and(|t| !t.is_empty()),
        "{args}"
    );
    assert_eq!(args.as_object().unwrap().len(), 1, "{args}");

    // With a response_format too (as agent SDKs with an output type send): a forced call is
    // still a call, and with `auto` the reply is the formatted answer or a call.
    let format = json!({"type": "json_schema", "json_schema": {"name": "city", "schema": schema,
        "strict": true}});
    let r = post(
        addr,
        &france(
            json!({"tools": echo, "max_tokens": 48, "response_format": format,
        "tool_choice": "required", "parallel_tool_calls": false}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    assert_eq!(c["choices"][0]["finish_reason"], "tool_calls", "{c}");
    let r = post(
        addr,
        &france(json!({"tools": echo, "max_tokens": 96, "response_format": format})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    let message = &c["choices"][0]["message"];
    let answered = message["content"]
        .as_str()
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
        .is_some_and(|v| v["city"].is_string() && v["population"].is_u64());
    let called = message["tool_calls"][0]["function"]["name"] == "echo";
    assert!(answered || called, "{c}");

    // Streamed, the call arrives as tool_calls deltas and no markup leaks into content.
    let r = post(
        addr,
        &france(json!({"tools": echo, "max_tokens": 48, "stream": true,
        "tool_choice": "required", "parallel_tool_calls": false})),
    );
    let mut name = String::new();
    let mut arguments = String::new();
    let mut finish = String::new();
    for e in r
        .text()
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
    {
        if e == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(e).unwrap();
        let delta = &chunk["choices"][0]["delta"];
        assert!(
            !delta["content"]
                .as_str()
                .unwrap_or("")
                .contains("tool_call"),
            "{chunk}"
        );
        if let Some(calls) = delta["tool_calls"].as_array() {
            name += calls[0]["function"]["name"].as_str().unwrap_or("");
            arguments += calls[0]["function"]["arguments"].as_str().unwrap_or("");
        }
        if let Some(f) = chunk["choices"][0]["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    assert_eq!(name, "echo");
    assert_eq!(finish, "tool_calls");
    let args: Value =
        serde_json::from_str(&arguments).unwrap_or_else(|e| panic!("{e}: {arguments}"));
    assert!(
        args["text"].as_str().is_some_and(|t| !t.is_empty()),
        "{args}"
    );
}
