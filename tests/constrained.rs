//! Constrained decoding with the default model (SmolLM2-135M-Instruct, greedy): JSON-schema
//! replies validated by a real validator (Python `jsonschema`, `tests/python/validate_json.py`),
//! forced tool calls read back by the json_tools parser, and `kooka generate --json-schema`.
//!
//! The engine is driven in-process (one model load for twenty schemas); MLX work is
//! serialized by a lock since every test thread would otherwise build graphs at once.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use kooka::chat::tools::{new_parser, ParsedReply, ParserKind};
use kooka::constrain::{Constrainer, Grammar, ToolCalls, ToolChoice};
use kooka::engine::generate::{generate, GenerateOptions};
use kooka::engine::Engine;
use kooka::model::{load_model, ComputeDtype};
use kooka::tokenizer::Tokenizer;
use serde_json::{json, Value};

const MODEL: &str = "models/SmolLM2-135M-Instruct";
static MLX: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model_dir() -> PathBuf {
    let dir = root().join(MODEL);
    assert!(
        dir.join("config.json").exists(),
        "{} is missing: run scripts/setup.sh --tests",
        dir.display()
    );
    dir
}

fn python() -> PathBuf {
    let py = root().join("third_party/venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/setup.sh --tests",
        py.display()
    );
    py
}

/// The model, its tokenizer, and an engine that can constrain.
fn setup() -> (Engine, Tokenizer) {
    let dir = model_dir();
    let tok = Tokenizer::load(&dir).expect("tokenizer");
    let mut engine = Engine::new(load_model(&dir, ComputeDtype::Auto).expect("model"));
    engine.set_constrainer(Constrainer::new(&tok).expect("constrainer"));
    (engine, tok)
}

/// Greedy reply to `messages` under `grammar`: (text, finish).
fn reply(
    engine: &mut Engine,
    tok: &Tokenizer,
    messages: Value,
    grammar: Grammar,
    max_tokens: usize,
) -> (String, &'static str) {
    let prompt = tok
        .encode(&tok.apply_chat_template(&messages, true).unwrap(), false)
        .unwrap();
    let opts = GenerateOptions {
        max_tokens,
        eos_ids: tok.eos_ids.clone(),
        constraint: Some(grammar),
        ..Default::default()
    };
    let mut text = String::new();
    let stats = generate(
        engine,
        Some(tok),
        prompt,
        &opts,
        &mut |t| text.push_str(t),
        &mut |_| {},
    )
    .expect("generate");
    (text, stats.finish.unwrap_or("none"))
}

/// Twenty schemas: nested objects, arrays, enums, bounded numbers, required and optional
/// fields, formats, references.
fn cases() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "person",
            "Describe Ada Lovelace.",
            json!({"type": "object", "properties": {
            "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
            "required": ["name", "age"], "additionalProperties": false}),
        ),
        (
            "address",
            "Give the address of a bakery in Paris.",
            json!({"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 40},
            "address": {"type": "object", "properties": {
                "street": {"type": "string", "maxLength": 60}, "city": {"type": "string", "maxLength": 30},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["street", "city", "zip"], "additionalProperties": false}},
            "required": ["name", "address"], "additionalProperties": false}),
        ),
        (
            "tags",
            "Tag a blog post about gardening.",
            json!({"type": "object", "properties": {
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1, "maxItems": 3}},
            "required": ["tags"], "additionalProperties": false}),
        ),
        (
            "color",
            "What color is the sky?",
            json!({"type": "object", "properties": {
            "color": {"enum": ["red", "green", "blue"]}}, "required": ["color"]}),
        ),
        (
            "temperature",
            "Report the temperature in Oslo.",
            json!({"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 30},
            "celsius": {"type": "number", "minimum": -50, "maximum": 50}},
            "required": ["city", "celsius"], "additionalProperties": false}),
        ),
        (
            "task",
            "Describe a finished task with a count.",
            json!({"type": "object", "properties": {
            "done": {"type": "boolean"}, "count": {"type": "integer", "minimum": 0, "maximum": 1000}},
            "required": ["done", "count"], "additionalProperties": false}),
        ),
        (
            "numbers",
            "List a few small numbers.",
            json!({"type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": 10}, "minItems": 2, "maxItems": 5}),
        ),
        (
            "order",
            "Write a shopping order.",
            json!({"type": "object", "properties": {
            "items": {"type": "array", "maxItems": 3, "items": {"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 20}, "qty": {"type": "integer", "minimum": 1, "maximum": 99}},
                "required": ["name", "qty"], "additionalProperties": false}}},
            "required": ["items"], "additionalProperties": false}),
        ),
        (
            "optional",
            "Describe a book.",
            json!({"type": "object", "properties": {
            "title": {"type": "string", "maxLength": 50}, "pages": {"type": "integer", "minimum": 1},
            "isbn": {"type": "string", "maxLength": 20}},
            "required": ["title"], "additionalProperties": false}),
        ),
        (
            "company",
            "Describe a company and its CEO.",
            json!({"type": "object", "properties": {
            "company": {"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 30},
                "ceo": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30},
                    "since": {"type": "integer", "minimum": 1900, "maximum": 2030}},
                    "required": ["name", "since"], "additionalProperties": false}},
                "required": ["name", "ceo"], "additionalProperties": false}},
            "required": ["company"], "additionalProperties": false}),
        ),
        (
            "any_of",
            "Give a value.",
            json!({"type": "object", "properties": {
            "value": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 10}]}},
            "required": ["value"], "additionalProperties": false}),
        ),
        (
            "const",
            "Describe a version 2 config.",
            json!({"type": "object", "properties": {
            "version": {"const": 2}, "kind": {"type": "string", "maxLength": 20}},
            "required": ["version", "kind"], "additionalProperties": false}),
        ),
        (
            "date",
            "When did the first moon landing happen?",
            json!({"type": "object", "properties": {
            "event": {"type": "string", "maxLength": 40}, "date": {"type": "string", "format": "date"}},
            "required": ["event", "date"], "additionalProperties": false}),
        ),
        (
            "ratio",
            "Give a ratio between zero and one.",
            json!({"type": "object", "properties": {
            "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}},
            "required": ["ratio"], "additionalProperties": false}),
        ),
        (
            "refs",
            "Give two points of a line.",
            json!({"type": "object",
            "$defs": {"point": {"type": "object", "properties": {
                "x": {"type": "integer", "minimum": -100, "maximum": 100},
                "y": {"type": "integer", "minimum": -100, "maximum": 100}},
                "required": ["x", "y"], "additionalProperties": false}},
            "properties": {"from": {"$ref": "#/$defs/point"}, "to": {"$ref": "#/$defs/point"}},
            "required": ["from", "to"], "additionalProperties": false}),
        ),
        (
            "code",
            "Give an airport code.",
            json!({"type": "object", "properties": {
            "code": {"type": "string", "minLength": 3, "maxLength": 5}},
            "required": ["code"], "additionalProperties": false}),
        ),
        (
            "even",
            "Pick an even number.",
            json!({"type": "object", "properties": {
            "even": {"type": "integer", "multipleOf": 2, "minimum": 0, "maximum": 100}},
            "required": ["even"], "additionalProperties": false}),
        ),
        (
            "nullable",
            "Give a person's names.",
            json!({"type": "object", "properties": {
            "first": {"type": "string", "maxLength": 20},
            "middle": {"type": ["string", "null"], "maxLength": 20}},
            "required": ["first", "middle"], "additionalProperties": false}),
        ),
        (
            "sizes",
            "Which shirt sizes are in stock?",
            json!({"type": "object", "properties": {
            "sizes": {"type": "array", "items": {"enum": ["S", "M", "L"]}, "minItems": 1, "maxItems": 3},
            "price": {"type": "number", "minimum": 0, "maximum": 500}},
            "required": ["sizes", "price"], "additionalProperties": false}),
        ),
        (
            "contact",
            "Write a contact card for Bob.",
            json!({"type": "object", "properties": {
            "name": {"type": "string"}, "email": {"type": "string", "format": "email"},
            "phones": {"type": "array", "items": {"type": "string", "pattern": "^[0-9-]{7,12}$"}, "maxItems": 2}},
            "required": ["name", "email"], "additionalProperties": false}),
        ),
    ]
}

#[test]
fn json_schema_replies_validate() {
    let _mlx = MLX.lock().unwrap_or_else(|e| e.into_inner());
    let (mut engine, tok) = setup();
    let cases = cases();
    assert_eq!(cases.len(), 20);
    let mut results = Vec::new();
    let mut truncated = Vec::new();
    for (name, task, schema) in &cases {
        let grammar = Grammar::json_schema(schema, true).expect(name);
        let messages = json!([{"role": "user", "content": format!(
            "{task} Reply with JSON only, following this JSON schema: {schema}")}]);
        let (text, finish) = reply(&mut engine, &tok, messages, grammar, 160);
        eprintln!("{name}: {finish}: {text}");
        if finish != "eos" {
            truncated.push(format!("{name}: finish {finish}: {text}"));
        }
        results.push(json!({"name": name, "schema": schema, "output": text}));
    }
    let file = std::env::temp_dir().join(format!("kooka-constrained-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_string(&results).unwrap()).unwrap();
    let out = Command::new(python())
        .arg(root().join("tests/python/validate_json.py"))
        .arg(&file)
        .output()
        .expect("running the validator");
    let _ = std::fs::remove_file(&file);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "replies that do not validate: {report}\nstderr: {}\noutputs: {results:#?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        truncated.is_empty(),
        "replies cut by max_tokens: {truncated:#?}"
    );
}

/// The kooka-server-style `echo` tool.
fn echo_tool() -> Value {
    json!({"type": "function", "function": {"name": "echo", "description": "Echo the text back.",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}},
            "required": ["text"], "additionalProperties": false}}})
}

#[test]
fn forced_tool_calls_parse() {
    let _mlx = MLX.lock().unwrap_or_else(|e| e.into_inner());
    let (mut engine, tok) = setup();
    let tools = [echo_tool()];
    let system = format!(
        "You can call tools. Tools: {}\nTo call one, reply with <tool_call>\n{{\"name\": ..., \"arguments\": {{...}}}}\n</tool_call>",
        tools[0]["function"]
    );
    for (choice, user) in [
        (ToolChoice::Required, "Please echo the words: hello world"),
        (
            ToolChoice::Function("echo".into()),
            "Repeat after me: good morning",
        ),
        (ToolChoice::Required, "What is the capital of France?"),
    ] {
        let grammar = ToolCalls {
            tools: &tools,
            choice: &choice,
            format: ParserKind::JsonTools,
            parallel: false,
        }
        .grammar()
        .unwrap()
        .unwrap();
        let messages =
            json!([{"role": "system", "content": system}, {"role": "user", "content": user}]);
        let (text, finish) = reply(&mut engine, &tok, messages, grammar, 96);
        let parsed = ParsedReply::parse(new_parser(ParserKind::JsonTools, &tools).as_mut(), &text);
        assert_eq!(finish, "eos", "{choice:?}: {text:?}");
        assert_eq!(parsed.tool_calls.len(), 1, "{choice:?}: {text:?}");
        assert_eq!(parsed.content, "", "{choice:?}: {text:?}");
        let call = &parsed.tool_calls[0];
        assert_eq!(call.name, "echo");
        let args: Value = serde_json::from_str(&call.arguments).unwrap();
        let arg_text = args["text"].as_str().unwrap_or_default();
        assert!(
            !arg_text.is_empty() && args.as_object().unwrap().len() == 1,
            "{choice:?}: arguments {args}"
        );
    }
}

fn kooka_generate(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kooka"))
        .args(["generate", "--max-tokens", "96", "--model"])
        .arg(model_dir())
        .args(args)
        .output()
        .expect("running kooka generate");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "kooka generate failed: {stderr}");
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr,
    )
}

#[test]
fn generate_cli_flags() {
    let schema = json!({"type": "object", "properties": {
        "capital": {"type": "string", "maxLength": 30},
        "population_millions": {"type": "number", "minimum": 0, "maximum": 50}},
        "required": ["capital", "population_millions"], "additionalProperties": false});
    let dir = std::env::temp_dir().join(format!("kooka-schema-{}.json", std::process::id()));
    std::fs::write(&dir, schema.to_string()).unwrap();
    let (text, _) = kooka_generate(&[
        "--prompt",
        "What is the capital of France, and its population?",
        "--json-schema",
        dir.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&dir);
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    let n = v["population_millions"].as_f64().expect("a number");
    assert!(v["capital"].is_string() && (0.0..=50.0).contains(&n), "{v}");
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    let (text, _) = kooka_generate(&["--prompt", "Describe a cat.", "--json-object"]);
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert!(v.is_object());
    // A schema the engine cannot enforce fails before generating, naming the keyword.
    let out = Command::new(env!("CARGO_BIN_EXE_kooka"))
        .args(["generate", "--model"])
        .arg(model_dir())
        .args([
            "--prompt",
            "x",
            "--json-schema",
            r#"{"not": {"type": "string"}}"#,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("not"), "{stderr}");
}
