//! `kooka serve --chat-template` and `--tool-call-parser` against the real binary: the default
//! model (SmolLM2, whose own template knows no tools) served with Devstral's template, so a
//! forced call comes back through Mistral's `[TOOL_CALLS]NAME[ARGS]{..}` markup with a
//! Mistral id, and that id renders back through the template on the next turn. Bad values
//! stop the server with a message.

mod common;

use std::process::Command;

use common::http::*;
use serde_json::{json, Value};

fn devstral_template() -> String {
    let path = common::root()
        .join("third_party/llama.cpp/templates/unsloth-mistral-Devstral-Small-2507.jinja");
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh --tests",
        path.display()
    );
    path.display().to_string()
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

#[test]
fn a_template_and_tool_format_from_flags_carry_a_forced_call_and_its_next_turn() {
    let template = devstral_template();
    let server = start_with(&[
        "--chat-template",
        &template,
        "--tool-call-parser",
        "mistral",
    ]);
    let log = server.stderr.lock().unwrap().clone();
    assert!(log.contains("--chat-template's"), "{log}");
    let question = json!({"role": "user", "content": "What is the weather in Paris?"});
    let r = post(
        &server.addr,
        &json!({"messages": [question], "max_tokens": 48, "temperature": 0,
            "tools": weather_tool(), "tool_choice": "required", "parallel_tool_calls": false}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    assert_eq!(c["choices"][0]["finish_reason"], "tool_calls", "{c}");
    let call = &c["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather", "{c}");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "{args}");
    // Mistral's templates refuse any id but 9 alphanumerics: the parser gives one.
    let id = call["id"].as_str().unwrap();
    assert!(
        id.len() == 9 && id.chars().all(|ch| ch.is_ascii_alphanumeric()),
        "{id}"
    );

    // The call and its result go back through the same template.
    let r = post(
        &server.addr,
        &json!({"max_tokens": 8, "temperature": 0, "tools": weather_tool(), "messages": [
            question,
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": id, "content": "{\"celsius\": 21}"},
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn bad_values_stop_the_server_with_a_message() {
    for (flag, value, says) in [
        (
            "--tool-call-parser",
            "nope",
            "unknown tool-call format `nope`",
        ),
        ("--chat-template", "/no/such/template.jinja", "no such file"),
        ("--chat-template", "{{ unclosed", "template"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kooka"))
            .args(["serve", "--port", "0", "--model"])
            .arg(common::model("SmolLM2-135M-Instruct"))
            .args([flag, value])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value}: {err}");
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
}
