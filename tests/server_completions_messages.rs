//! `kooka serve`'s legacy completions (`/v1/completions`) and Anthropic messages
//! (`/v1/messages`, streamed and not), against the real binary with
//! `models/SmolLM2-135M-Instruct` over raw HTTP/1.1 (see `server.rs`).

mod common;

use common::http::*;
use serde_json::{json, Value};
/// `event:` names and parsed `data:` of an Anthropic SSE body.
fn read_anthropic_sse(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut lines = e.lines();
            let name = lines
                .next()
                .and_then(|l| l.strip_prefix("event: "))
                .expect(e);
            let data = lines
                .next()
                .and_then(|l| l.strip_prefix("data: "))
                .expect(e);
            (name.to_string(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

#[test]
fn completions_and_anthropic_messages() {
    let server = start();
    let addr = &server.addr;

    // Legacy completions: raw text continued, legacy logprobs shape.
    let body = json!({"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "logprobs": 2});
    let r = request(addr, "POST", "/v1/completions", body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    assert_eq!(c["object"], "text_completion");
    assert!(c["id"].as_str().unwrap().starts_with("cmpl-"));
    let text = c["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(text.contains("Paris"), "{c}");
    let lp = &c["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 6, "{c}");
    assert_eq!(
        lp["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect::<String>(),
        text
    );
    assert_eq!(c["usage"]["completion_tokens"], 6);
    // Streamed: the same text.
    let body = json!({"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "stream": true});
    let r = request(addr, "POST", "/completions", body.to_string().as_bytes());
    let mut streamed = String::new();
    for e in r
        .text()
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
    {
        if e != "[DONE]" {
            let chunk: Value = serde_json::from_str(e).unwrap();
            streamed += chunk["choices"][0]["text"].as_str().unwrap_or("");
        }
    }
    assert_eq!(streamed, text);
    assert!(r.text().trim_end().ends_with("data: [DONE]"));
    let r = request(addr, "POST", "/v1/completions", br#"{"prompt": 3}"#);
    assert_error(&r, 400, Some("prompt"));
    let r = request(
        addr,
        "POST",
        "/v1/completions",
        br#"{"prompt": "x", "echo": true}"#,
    );
    assert_error(&r, 400, Some("echo"));

    // Anthropic messages: claude-* names the served model; query strings are accepted.
    let body = json!({"model": "claude-3-5-sonnet-latest", "max_tokens": 32, "temperature": 0,
        "system": "You answer in one sentence.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": FRANCE}]}]});
    let r = request(
        addr,
        "POST",
        "/v1/messages?beta=true",
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let m = r.json();
    assert_eq!(m["type"], "message");
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["model"], "claude-3-5-sonnet-latest");
    assert_eq!(m["content"][0]["type"], "text");
    let text = m["content"][0]["text"].as_str().unwrap().to_string();
    assert!(text.contains("Paris"), "{m}");
    assert!(
        ["end_turn", "max_tokens"].contains(&m["stop_reason"].as_str().unwrap()),
        "{m}"
    );
    assert!(m["usage"]["input_tokens"].as_u64().unwrap() > 0);
    let out_tokens = m["usage"]["output_tokens"].as_u64().unwrap();

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let r = request(addr, "POST", "/v1/messages", sbody.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let events = read_anthropic_sse(&r.text());
    let names: Vec<&str> = events
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| *n != "ping")
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names[1], "content_block_start");
    assert_eq!(
        &names[names.len() - 3..],
        &["content_block_stop", "message_delta", "message_stop"]
    );
    assert!(
        names[2..names.len() - 3]
            .iter()
            .all(|n| *n == "content_block_delta"),
        "{names:?}"
    );
    let streamed: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(streamed, text);
    let delta = &events.iter().find(|(n, _)| n == "message_delta").unwrap().1;
    assert_eq!(delta["delta"]["stop_reason"], m["stop_reason"]);
    assert_eq!(delta["usage"]["output_tokens"].as_u64(), Some(out_tokens));

    // Anthropic-shaped errors.
    let r = request(
        addr,
        "POST",
        "/v1/messages",
        br#"{"messages": [{"role": "user", "content": "hi"}]}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let e = r.json();
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_tokens"));
    let r = request(
        addr,
        "POST",
        "/v1/messages",
        json!({"model": "gpt-4o", "max_tokens": 4,
        "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
        .as_bytes(),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "not_found_error");

    // A final assistant turn is a prefill: the reply continues it (greedy, so the same text
    // as the turn's own continuation), and the prompt ends with it, not with a new turn.
    let turns = |prefill: Option<&str>| {
        let mut m = vec![json!({"role": "user", "content": "Count from 1 to 10."})];
        m.extend(prefill.map(|p| json!({"role": "assistant", "content": p})));
        m
    };
    let count = |messages: Vec<Value>| {
        let body = json!({"model": "claude-x", "messages": messages});
        let r = request(
            addr,
            "POST",
            "/v1/messages/count_tokens",
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["input_tokens"].as_u64().unwrap()
    };
    let reply = |messages: Vec<Value>| {
        let body =
            json!({"model": "claude-x", "max_tokens": 6, "temperature": 0, "messages": messages});
        let r = request(addr, "POST", "/v1/messages", body.to_string().as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["content"][0]["text"].as_str().unwrap().to_string()
    };
    let whole = reply(turns(None));
    let head: String = whole.chars().take(whole.chars().count() / 2).collect();
    assert!(!head.trim().is_empty(), "{whole:?}");
    let rest = reply(turns(Some(head.trim_end())));
    assert!(
        whole.starts_with(&format!(
            "{}{}",
            head.trim_end(),
            &rest[..rest.len().min(1)]
        )),
        "continued {rest:?} after {head:?}, alone {whole:?}"
    );
    let (alone, prefilled) = (count(turns(None)), count(turns(Some(head.trim_end()))));
    assert!(prefilled > alone, "{prefilled} against {alone}");

    // Legacy `text_offset` counts characters, not bytes (SmolLM2 writes Japanese here).
    let body = json!({"prompt": "Translate to Japanese: Good morning. Japanese:",
        "max_tokens": 12, "temperature": 0, "logprobs": 1});
    let r = request(addr, "POST", "/v1/completions", body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let choice = &r.json()["choices"][0];
    let chars = choice["text"].as_str().unwrap().chars().count() as u64;
    let offsets: Vec<u64> = (choice["logprobs"]["text_offset"].as_array().unwrap().iter())
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
    assert!(
        offsets.last().is_some_and(|&o| o < chars),
        "{offsets:?} over {chars} characters"
    );

    // A turn of blocks that carry nothing is an empty turn, as `content: ""` is.
    let body = json!({"model": "claude-x", "max_tokens": 2,
        "messages": [{"role": "user", "content": []}]});
    let r = request(addr, "POST", "/v1/messages", body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
}
