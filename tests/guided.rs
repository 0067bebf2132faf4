//! vLLM's structured-output fields (`guided_choice`, `guided_regex`, `guided_json`,
//! `guided_grammar` in Lark or GBNF, `structured_outputs`) against the real binary on the default model: the
//! reply follows the constraint on chat and completions; a bad one is a 400 naming its field.

mod common;

use common::http::*;
use serde_json::{json, Value};

fn completion(addr: &str, body: Value) -> Response {
    request(addr, "POST", "/v1/completions", body.to_string().as_bytes())
}

#[test]
fn replies_follow_the_vllm_constraint_fields() {
    let server = start();
    let addr = &server.addr;
    let r = post(addr, &france(json!({"guided_choice": ["Paris", "Lyon"]})));
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.json()["choices"][0]["message"]["content"].clone();
    assert!(text == "Paris" || text == "Lyon", "{text}");

    let r = completion(
        addr,
        json!({"prompt": "The Eiffel tower was built in the year", "max_tokens": 8,
            "guided_regex": " [12][0-9]{3}"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let year = r.json()["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(
        year.len() == 5 && year[1..].chars().all(|c| c.is_ascii_digit()),
        "{year:?}"
    );

    let grammar = "start: \"color: \" COLOR\nCOLOR: /(red|green|blue)/";
    let r = post(
        addr,
        &france(json!({"structured_outputs": {"grammar": grammar}})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.json()["choices"][0]["message"]["content"].clone();
    let color = text
        .as_str()
        .unwrap()
        .strip_prefix("color: ")
        .unwrap_or("?")
        .to_string();
    assert!(["red", "green", "blue"].contains(&color.as_str()), "{text}");

    // GBNF, as llama.cpp and vLLM's xgrammar take it (llama.cpp server's own field).
    let gbnf = "root ::= \"answer: \" digit{1,3}\ndigit ::= [0-9]";
    let r = post(addr, &france(json!({ "grammar": gbnf })));
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.json()["choices"][0]["message"]["content"].clone();
    let digits = text
        .as_str()
        .unwrap()
        .strip_prefix("answer: ")
        .unwrap_or("x")
        .to_string();
    assert!(
        (1..=3).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit()),
        "{text}"
    );

    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}},
        "required": ["city"], "additionalProperties": false});
    let r = post(
        addr,
        &france(json!({"guided_json": schema, "max_tokens": 40})),
    );
    let reply = r.json()["choices"][0]["message"]["content"].clone();
    let parsed: Value = serde_json::from_str(reply.as_str().unwrap()).unwrap();
    assert!(parsed["city"].is_string(), "{parsed}");

    for (extra, field) in [
        (json!({"guided_regex": "(ab"}), "guided_regex"),
        (json!({"guided_grammar": "start: ("}), "guided_grammar"),
        (json!({"guided_grammar": "root ::= \"a"}), "guided_grammar"),
        (json!({"guided_choice": []}), "guided_choice"),
        (
            json!({"guided_choice": ["a"], "response_format": {"type": "json_object"}}),
            "response_format",
        ),
    ] {
        let r = post(addr, &france(extra.clone()));
        let e = assert_error(&r, 400, Some(field));
        assert!(
            e["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{extra}: {e}"
        );
    }
}
