//! `kooka serve --chat-template` and `--tool-call-parser` against the real binary: the default
//! model (SmolLM2, whose own template knows no tools) served with Devstral's, LFM2's and
//! DeepSeek-V3.2's templates, so a forced call comes back through Mistral's, the pythonic or
//! the DSML markup (held there by the grammar), and renders back through the template on the
//! next turn. Bad values stop the server with a message.

mod common;

use std::process::Command;

use common::http::*;
use serde_json::{json, Value};

fn template(file: &str) -> String {
    let path = common::root()
        .join("third_party/llama.cpp/templates")
        .join(file);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh --tests",
        path.display()
    );
    path.display().to_string()
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather",
        "description": "The weather in a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

/// Serves the default model with `flags`, forces a call of get_weather and sends it back with
/// its result; returns the call's id.
fn forced_call_and_next_turn(flags: &[&str]) -> String {
    let server = start_with(flags);
    let question = json!({"role": "user", "content": "What is the weather in Paris?"});
    let r = post(
        &server.addr,
        // DSML's fullwidth bars are byte tokens to SmolLM2: its call takes ~90 tokens.
        &json!({"messages": [question], "max_tokens": 160, "temperature": 0,
            "tools": weather_tool(), "tool_choice": "required", "parallel_tool_calls": false}),
    );
    assert_eq!(r.status, 200, "{flags:?}: {}", r.text());
    let c = r.json();
    assert_eq!(
        c["choices"][0]["finish_reason"], "tool_calls",
        "{flags:?}: {c}"
    );
    let call = &c["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather", "{c}");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "{flags:?}: {args}");
    let id = call["id"].as_str().unwrap().to_string();
    // The call and its result go back through the same template.
    let r = post(
        &server.addr,
        &json!({"max_tokens": 8, "temperature": 0, "tools": weather_tool(), "messages": [
            question,
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": id, "content": "{\"celsius\": 21}"},
        ]}),
    );
    assert_eq!(r.status, 200, "{flags:?}: {}", r.text());
    id
}

#[test]
fn a_template_and_tool_format_from_flags_carry_a_forced_call_and_its_next_turn() {
    let devstral = template("unsloth-mistral-Devstral-Small-2507.jinja");
    let id = forced_call_and_next_turn(&[
        "--chat-template",
        &devstral,
        "--tool-call-parser",
        "mistral",
    ]);
    // Mistral's templates refuse any id but 9 alphanumerics: the parser gives one.
    assert!(
        id.len() == 9 && id.chars().all(|ch| ch.is_ascii_alphanumeric()),
        "{id}"
    );
    // The format from the template alone: LFM2's pythonic calls, DeepSeek-V3.2's DSML.
    for file in ["LFM2.5-8B-A1B.jinja", "deepseek-ai-DeepSeek-V3.2.jinja"] {
        forced_call_and_next_turn(&["--chat-template", &template(file)]);
    }
}

/// A model whose tokenizer_config lists named templates (Hermes, Command-R): requests with
/// tools render through `tool_use`, the others through `default`.
#[test]
fn a_named_tool_use_template_takes_requests_with_tools() {
    let base = common::model("SmolLM2-135M-Instruct");
    let dir = common::tmp().join("named-templates");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for file in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
    ] {
        std::os::unix::fs::symlink(base.join(file), dir.join(file)).unwrap();
    }
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("tokenizer_config.json")).unwrap())
            .unwrap();
    let hermes = std::fs::read_to_string(template(
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja",
    ))
    .unwrap();
    config["chat_template"] = json!([
        {"name": "default", "template": config["chat_template"]},
        {"name": "tool_use", "template": hermes},
    ]);
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let model = dir.display().to_string();
    let server = start_with(&["--model", &model]);
    let log = server.stderr.lock().unwrap().clone();
    assert!(log.contains("`tool_use` template"), "{log}");
    assert!(
        log.contains("parser=\"json_tools\""),
        "Hermes writes <tool_call>: {log}"
    );
    let question = json!({"role": "user", "content": "What is the weather in Paris?"});
    let r = post(
        &server.addr,
        &json!({"messages": [question], "max_tokens": 64, "temperature": 0,
            "tools": weather_tool(), "tool_choice": "required", "parallel_tool_calls": false}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    assert_eq!(
        c["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_weather",
        "{c}"
    );
    // Hermes' tool prompt (its <tools> system message) is far longer than the question alone.
    let with_tools = c["usage"]["prompt_tokens"].as_u64().unwrap();
    let r = post(
        &server.addr,
        &json!({"messages": [question], "max_tokens": 4}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let without = r.json()["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(with_tools > without + 100, "{with_tools} vs {without}");
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

/// `--served-model-name`: the server reports the name and answers to it, and to the folder's
/// id as before; another name is still a 404.
#[test]
fn a_served_model_name_is_reported_and_answered() {
    let server = start_with(&["--served-model-name", "coder"]);
    let models = request(&server.addr, "GET", "/v1/models", b"").json();
    assert_eq!(models["data"][0]["id"], "coder", "{models}");
    for name in ["coder", "SmolLM2-135M-Instruct"] {
        let r = post(
            &server.addr,
            &france(json!({"model": name, "max_tokens": 1})),
        );
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(r.json()["model"], "coder", "{name}");
    }
    let r = post(
        &server.addr,
        &france(json!({"model": "gpt-4o", "max_tokens": 1})),
    );
    assert_error(&r, 404, None);
}
