//! Custom tools (a grammar for their `input`, as Codex's `apply_patch`): the call's input is
//! held to the tool's grammar in every markup that carries it.

use super::tests::{echo, grammar, parse};
use super::*;
use crate::constrain::matcher::tests::{run, test_constrainer, Run};

/// Codex's `apply_patch` grammar (its custom tool's `format.definition`).
fn apply_patch() -> Value {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/clients/codex_responses_apply_patch.json"
    );
    let body: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let def = body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "custom")
        .unwrap()["format"]["definition"]
        .clone();
    json!({"type": "function", "function": {"name": "apply_patch", "parameters": {
        "type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]},
        CUSTOM_GRAMMAR_KEY: def}})
}

#[test]
fn a_custom_tool_input_follows_its_grammar() {
    let c = test_constrainer();
    let tools = [echo(), apply_patch()];
    let g = grammar(&tools, ToolChoice::Required, ParserKind::JsonTools, false);
    let call = |input: &str| {
        let args = json!({"input": input});
        format!(
            "<tool_call>\n{{\"name\": \"apply_patch\", \"arguments\": {}}}\n</tool_call>",
            serde_json::to_string(&args)
                .unwrap()
                .replace("\":\"", "\": \"")
        )
    };
    let patch = "*** Begin Patch\n*** Update File: src/a.rs\n@@ fn main\n-    old();\n+    new(\"x\");\n*** End Patch\n";
    assert_eq!(run(&c, &g, &call(patch)), Run::Complete(true));
    let (_, calls) = parse(ParserKind::JsonTools, &tools, &call(patch));
    assert_eq!(calls[0].1["input"], patch);
    // Not a patch: refused inside the string.
    assert!(matches!(
        run(&c, &g, &call("*** Begin Patch\nhello\n*** End Patch\n")),
        Run::Rejected(_)
    ));
    // Other tools keep their schemas.
    let echo_call =
        "<tool_call>\n{\"name\": \"echo\", \"arguments\": {\"text\": \"hi\"}}\n</tool_call>";
    assert_eq!(run(&c, &g, echo_call), Run::Complete(true));
}

#[test]
fn a_custom_tool_input_is_raw_grammar_text_in_qwen3_coder_markup() {
    let c = test_constrainer();
    let tools = [echo(), apply_patch()];
    let g = grammar(&tools, ToolChoice::Required, ParserKind::Qwen3Coder, false);
    let call = |input: &str| {
        format!("<tool_call>\n<function=apply_patch>\n<parameter=input>\n{input}\n</parameter>\n</function>\n</tool_call>")
    };
    let patch = "*** Begin Patch\n*** Add File: a.txt\n+hi \"there\"\n*** End Patch";
    assert_eq!(run(&c, &g, &call(patch)), Run::Complete(true));
    let (_, calls) = parse(ParserKind::Qwen3Coder, &tools, &call(patch));
    assert_eq!(calls[0].1["input"], patch);
    assert!(matches!(
        run(&c, &g, &call("*** Begin Patch\nnot a hunk\n*** End Patch")),
        Run::Rejected(_)
    ));
}

#[test]
fn a_custom_tool_input_follows_its_grammar_in_deepseek_and_kimi_markup() {
    let c = test_constrainer();
    let tools = [echo(), apply_patch()];
    let patch = "*** Begin Patch\n*** Update File: src/a.rs\n@@ fn main\n-    old();\n+    new(\"x\");\n*** End Patch\n";
    let args = |input: &str| {
        serde_json::to_string(&json!({"input": input}))
            .unwrap()
            .replace("\":\"", "\": \"")
    };
    let deepseek = |input: &str| {
        format!(
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>apply_patch<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
            args(input)
        )
    };
    let kimi = |input: &str| {
        format!(
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.apply_patch:0<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>",
            args(input)
        )
    };
    for (format, call) in [
        (ParserKind::Deepseek, &deepseek as &dyn Fn(&str) -> String),
        (ParserKind::KimiK2, &kimi),
    ] {
        let g = grammar(&tools, ToolChoice::Required, format, false);
        assert_eq!(run(&c, &g, &call(patch)), Run::Complete(true), "{format:?}");
        let (_, calls) = parse(format, &tools, &call(patch));
        assert_eq!(calls[0].1["input"], patch);
        assert!(
            matches!(
                run(&c, &g, &call("*** Begin Patch\nhello\n*** End Patch\n")),
                Run::Rejected(_)
            ),
            "{format:?}"
        );
    }
}
