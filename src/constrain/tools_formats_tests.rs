//! The tool-call grammars of Mistral, DeepSeek-V3.2 (DSML) and LFM2 (pythonic) against their
//! parsers. Mistral: the three shapes its templates write (`NAME[ARGS]{..}`,
//! `NAME[CALL_ID]ID[ARGS]{..}`, Mistral-Nemo's JSON list), each after `[TOOL_CALLS]`. DSML:
//! raw-text parameters after `string="true"`, JSON ones after `string="false"`, typed by the
//! tool's schema. Pythonic: `[NAME(KEY=VALUE, ...)]` between LFM2's tags.

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
fn mistral_forced_calls_take_any_of_the_three_shapes() {
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
    assert_eq!(calls(ARGS_SHAPE), [weather_call]);
    assert_eq!(calls(CALL_ID_SHAPE), std::slice::from_ref(&echo_call));
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
fn mistral_parallel_calls_repeat_the_tag_or_fill_the_list() {
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
fn mistral_auto_is_free_text_until_the_tag() {
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
fn a_mistral_name_with_a_bracket_cannot_be_written() {
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

const WEATHER: &str = "<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\" string=\"true\">Oslo</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n<｜DSML｜parameter name=\"unit\" string=\"true\">c</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>";

#[test]
fn dsml_forced_calls_are_typed_by_schema() {
    let c = test_constrainer();
    let tools = [echo(), weather()];
    let g = grammar(&tools, ToolChoice::Required, ParserKind::DeepseekV32, false);
    assert_eq!(run(&c, &g, WEATHER), Run::Complete(true));
    let (content, calls) = parse(ParserKind::DeepseekV32, &tools, WEATHER);
    assert_eq!(content, "");
    assert_eq!(
        calls,
        [(
            "get_weather".to_string(),
            json!({"city": "Oslo", "days": 3, "unit": "c"})
        )]
    );
    let head = "<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"get_weather\">\n";
    for bad in [
        "Sure".to_string(),
        "<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"nope\">".to_string(),
        // `days` is JSON (string="false") and at most 7; `unit` one of its enum.
        format!("{head}<｜DSML｜parameter name=\"city\" string=\"true\">Oslo</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" string=\"true\">"),
        format!("{head}<｜DSML｜parameter name=\"city\" string=\"true\">Oslo</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" string=\"false\">9<"),
        format!("{head}<｜DSML｜parameter name=\"city\" string=\"true\">Oslo</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n<｜DSML｜parameter name=\"unit\" string=\"true\">k"),
        // A required parameter cannot be left out.
        format!("{head}</｜DSML｜invoke>"),
    ] {
        assert!(matches!(run(&c, &g, &bad), Run::Rejected(_)), "{bad}");
    }
}

#[test]
fn dsml_parallel_calls_and_auto() {
    let c = test_constrainer();
    let tools = [echo(), weather()];
    let g = grammar(&tools, ToolChoice::Required, ParserKind::DeepseekV32, true);
    let two = WEATHER.replace(
        "</｜DSML｜function_calls>",
        "<｜DSML｜invoke name=\"echo\">\n<｜DSML｜parameter name=\"text\" string=\"true\">a </b> c</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>",
    );
    assert_eq!(run(&c, &g, &two), Run::Complete(true));
    let calls = parse(ParserKind::DeepseekV32, &tools, &two).1;
    assert_eq!(calls[1], ("echo".to_string(), json!({"text": "a </b> c"})));
    let g = grammar(&tools, ToolChoice::Auto, ParserKind::DeepseekV32, false);
    let text = format!("Checking.\n\n{WEATHER}");
    assert_eq!(run(&c, &g, &text), Run::Complete(true));
    let (content, calls) = parse(ParserKind::DeepseekV32, &tools, &text);
    assert_eq!(content.trim(), "Checking.");
    assert_eq!(calls.len(), 1);
}

const PY_WEATHER: &str =
    r#"<|tool_call_start|>[get_weather(city="Oslo", days=3, hourly=True)]<|tool_call_end|>"#;

#[test]
fn pythonic_calls_take_keywords_in_schema_order() {
    let c = test_constrainer();
    let tools = [echo(), weather()];
    let g = grammar(&tools, ToolChoice::Required, ParserKind::Pythonic, false);
    assert_eq!(run(&c, &g, PY_WEATHER), Run::Complete(true));
    let (content, calls) = parse(ParserKind::Pythonic, &tools, PY_WEATHER);
    assert_eq!(content, "");
    assert_eq!(
        calls,
        [(
            "get_weather".to_string(),
            json!({"city": "Oslo", "days": 3, "hourly": true})
        )]
    );
    // Optional ones may be left out anywhere; required ones may not.
    let short = r#"<|tool_call_start|>[get_weather(city="Oslo", days=1)]<|tool_call_end|>"#;
    assert_eq!(run(&c, &g, short), Run::Complete(true));
    let with_unit =
        r#"<|tool_call_start|>[get_weather(city="Oslo", days=1, unit="f")]<|tool_call_end|>"#;
    assert_eq!(run(&c, &g, with_unit), Run::Complete(true));
    for bad in [
        "Sure",
        r#"<|tool_call_start|>[nope("#,
        r#"<|tool_call_start|>[get_weather(days=3"#,
        r#"<|tool_call_start|>[get_weather(city="Oslo", days=9"#,
        r#"<|tool_call_start|>[get_weather(city="Oslo", days=3, hourly=true"#,
        r#"<|tool_call_start|>[get_weather(city="Oslo", days=3, unit="k"#,
        r#"<|tool_call_start|>[get_weather(city="Oslo", days=3), "#,
    ] {
        assert!(matches!(run(&c, &g, bad), Run::Rejected(_)), "{bad}");
    }
    // Parallel calls fill the list; `auto` is text until the tag.
    let g = grammar(&tools, ToolChoice::Required, ParserKind::Pythonic, true);
    let two = r#"<|tool_call_start|>[echo(text="a, b"), get_weather(city="Oslo", days=2)]<|tool_call_end|>"#;
    assert_eq!(run(&c, &g, two), Run::Complete(true));
    assert_eq!(parse(ParserKind::Pythonic, &tools, two).1.len(), 2);
    let g = grammar(&tools, ToolChoice::Auto, ParserKind::Pythonic, false);
    let text = format!("Checking. {PY_WEATHER}");
    assert_eq!(run(&c, &g, &text), Run::Complete(true));
    assert_eq!(parse(ParserKind::Pythonic, &tools, &text).1.len(), 1);
}

#[test]
fn pythonic_names_must_be_identifiers() {
    let tools =
        [json!({"type": "function", "function": {"name": "get weather", "parameters": {}}})];
    let err = ToolCalls {
        tools: &tools,
        choice: &ToolChoice::Required,
        format: ParserKind::Pythonic,
        parallel: false,
    }
    .grammar()
    .unwrap_err();
    assert!(err.to_string().contains("get weather"), "{err}");
}
