//! Mistral's tool-call grammar against its parser: the three shapes Mistral's templates write
//! (`NAME[ARGS]{..}`, `NAME[CALL_ID]ID[ARGS]{..}`, Mistral-Nemo's JSON list), each after
//! `[TOOL_CALLS]`.

use super::tests::{echo, grammar, parse, weather};
use super::*;
use crate::constrain::matcher::tests::{run, test_constrainer, Run};

const ARGS_SHAPE: &str = r#"[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo", "days": 3}"#;
const CALL_ID_SHAPE: &str = r#"[TOOL_CALLS]echo[CALL_ID]a1B2c3D4e[ARGS]{"text": "hi"}"#;
const LIST_SHAPE: &str =
    r#"[TOOL_CALLS][{"name": "echo", "arguments": {"text": "hi"}, "id": "a1B2c3D4e"}]"#;

fn calls(text: &str) -> Vec<(String, Value)> {
    let (content, calls) = parse(ParserKind::Mistral, &[echo(), weather()], text);
    assert_eq!(content, "", "{text}");
    calls
}

#[test]
fn a_forced_call_takes_any_of_the_three_shapes() {
    let c = test_constrainer();
    let tools = [echo(), weather()];
    let g = grammar(&tools, ToolChoice::Required, ParserKind::Mistral, false);
    for text in [ARGS_SHAPE, CALL_ID_SHAPE, LIST_SHAPE] {
        assert_eq!(run(&c, &g, text), Run::Complete(true), "{text}");
    }
    let weather_call = (
        "get_weather".to_string(),
        json!({"city": "Oslo", "days": 3}),
    );
    let echo_call = ("echo".to_string(), json!({"text": "hi"}));
    assert_eq!(calls(ARGS_SHAPE), [weather_call.clone()]);
    assert_eq!(calls(CALL_ID_SHAPE), [echo_call.clone()]);
    assert_eq!(calls(LIST_SHAPE), [echo_call]);
    for bad in [
        "Sure",
        "[TOOL_CALLS]nope[ARGS]{}",
        r#"[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo", "days": 9}"#,
        r#"[TOOL_CALLS]echo[CALL_ID]short[ARGS]{"text": "hi"}"#,
        r#"[TOOL_CALLS][{"name": "echo", "arguments": {"txt": "hi"}}]"#,
        // One call unless parallel calls are on.
        &format!("{ARGS_SHAPE}[TOOL_CALLS]"),
        r#"[TOOL_CALLS][{"name": "echo", "arguments": {"text": "hi"}}, "#,
    ] {
        assert!(matches!(run(&c, &g, bad), Run::Rejected(_)), "{bad}");
    }
}

#[test]
fn parallel_calls_repeat_the_tag_or_fill_the_list() {
    let c = test_constrainer();
    let tools = [echo(), weather()];
    let g = grammar(&tools, ToolChoice::Required, ParserKind::Mistral, true);
    let tagged = format!("{ARGS_SHAPE}{CALL_ID_SHAPE}");
    let list = r#"[TOOL_CALLS][{"name": "echo", "arguments": {"text": "hi"}}, {"name": "get_weather", "arguments": {"city": "Oslo", "days": 3}}]"#;
    assert_eq!(
        run(&c, &g, &tagged),
        Run::Complete(false),
        "more may follow"
    );
    assert_eq!(run(&c, &g, list), Run::Complete(true));
    assert_eq!(calls(&tagged).len(), 2);
    assert_eq!(calls(list).len(), 2);
    // A named function: that one only.
    let g = grammar(
        &tools,
        ToolChoice::Function("echo".into()),
        ParserKind::Mistral,
        true,
    );
    assert_eq!(run(&c, &g, CALL_ID_SHAPE), Run::Complete(true));
    assert!(matches!(run(&c, &g, ARGS_SHAPE), Run::Rejected(_)));
}

#[test]
fn auto_is_free_text_until_the_tag() {
    let c = test_constrainer();
    let tools = [echo(), weather()];
    let g = grammar(&tools, ToolChoice::Auto, ParserKind::Mistral, false);
    assert_eq!(
        run(&c, &g, "Just text."),
        Run::Complete(false),
        "text may go on"
    );
    let text = format!("Checking.{ARGS_SHAPE}");
    assert_eq!(run(&c, &g, &text), Run::Complete(true));
    let (content, calls) = parse(ParserKind::Mistral, &tools, &text);
    assert_eq!(content, "Checking.");
    assert_eq!(calls.len(), 1);
    assert!(matches!(
        run(&c, &g, "Checking.[TOOL_CALLS]nope"),
        Run::Rejected(_)
    ));
}

#[test]
fn a_name_with_a_bracket_cannot_be_written() {
    let tools = [json!({"type": "function", "function": {"name": "a[b", "parameters": {}}})];
    let err = ToolCalls {
        tools: &tools,
        choice: &ToolChoice::Required,
        format: ParserKind::Mistral,
        parallel: false,
    }
    .grammar()
    .unwrap_err();
    assert!(err.to_string().contains("a[b"), "{err}");
}
