//! Tool-call grammars against the parsers of `chat::tools`: what the grammar accepts, the
//! parser turns into calls whose arguments fit the schema.

use super::*;
use crate::chat::tools::{new_parser, ParsedReply};
use crate::constrain::matcher::tests::{run, test_constrainer, Run, STOP};
use crate::constrain::MaskStep;

pub(super) fn echo() -> Value {
    json!({"type": "function", "function": {"name": "echo", "parameters": {
        "type": "object", "properties": {"text": {"type": "string"}},
        "required": ["text"], "additionalProperties": false}}})
}

pub(super) fn weather() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "unit": {"enum": ["c", "f"]},
            "hourly": {"type": "boolean"}
        },
        "required": ["city", "days"]}}})
}

pub(super) fn grammar(
    tools: &[Value],
    choice: ToolChoice,
    format: ParserKind,
    parallel: bool,
) -> Grammar {
    ToolCalls {
        tools,
        choice: &choice,
        format,
        parallel,
    }
    .grammar()
    .unwrap()
    .unwrap()
}

/// Parses `text` as the model's reply and returns (content, [(name, arguments)]).
pub(super) fn parse(
    format: ParserKind,
    tools: &[Value],
    text: &str,
) -> (String, Vec<(String, Value)>) {
    let reply = ParsedReply::parse(new_parser(format, tools).as_mut(), text);
    let calls = reply
        .tool_calls
        .into_iter()
        .map(|c| (c.name, serde_json::from_str(&c.arguments).unwrap()))
        .collect();
    (reply.content, calls)
}

#[test]
fn json_tools_required() {
    let c = test_constrainer();
    let tools = [echo(), weather()];
    let g = grammar(&tools, ToolChoice::Required, ParserKind::JsonTools, false);
    let text = "<tool_call>\n{\"name\": \"echo\", \"arguments\": {\"text\": \"hi\"}}\n</tool_call>";
    assert_eq!(run(&c, &g, text), Run::Complete(true));
    let (content, calls) = parse(ParserKind::JsonTools, &tools, text);
    assert_eq!(content, "");
    assert_eq!(calls, [("echo".to_string(), json!({"text": "hi"}))]);
    let weather_call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 3}}\n</tool_call>";
    assert_eq!(run(&c, &g, weather_call), Run::Complete(true));
    for bad in [
        "Sure! <tool_call>",
        "<tool_call>\n{\"name\": \"nope\"",
        "<tool_call>\n{\"name\": \"echo\", \"arguments\": {\"text\": 5",
        "<tool_call>\n{\"name\": \"echo\", \"arguments\": {\"text\": \"a\", \"x",
        "<tool_call>\n{\"name\": \"echo\", \"arguments\": {}}",
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 8",
    ] {
        assert!(matches!(run(&c, &g, bad), Run::Rejected(_)), "{bad}");
    }
    // Parallel: another block may follow, or the reply ends.
    let g = grammar(&tools, ToolChoice::Required, ParserKind::JsonTools, true);
    assert_eq!(run(&c, &g, text), Run::Complete(false));
    let two = format!("{text}\n{weather_call}");
    assert_eq!(run(&c, &g, &two), Run::Complete(false));
    assert_eq!(parse(ParserKind::JsonTools, &tools, &two).1.len(), 2);
}

#[test]
fn named_function_allows_only_that_one() {
    let c = test_constrainer();
    let tools = [echo(), weather()];
    let g = grammar(
        &tools,
        ToolChoice::Function("get_weather".into()),
        ParserKind::JsonTools,
        true,
    );
    let echo_call = "<tool_call>\n{\"name\": \"echo\"";
    assert!(matches!(run(&c, &g, echo_call), Run::Rejected(_)));
    let call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 3, \"unit\": \"c\"}}\n</tool_call>";
    assert_eq!(run(&c, &g, call), Run::Complete(true));
}

#[test]
fn auto_is_free_text_until_the_tag() {
    let c = test_constrainer();
    let tools = [echo()];
    let g = grammar(&tools, ToolChoice::Auto, ParserKind::JsonTools, false);
    assert_eq!(run(&c, &g, "Just text, {no call}."), Run::Complete(false));
    let call = "Let me echo.\n<tool_call>\n{\"name\": \"echo\", \"arguments\": {\"text\": \"x\"}}\n</tool_call>";
    assert_eq!(run(&c, &g, call), Run::Complete(true));
    let (content, calls) = parse(ParserKind::JsonTools, &tools, call);
    assert_eq!((content.as_str(), calls.len()), ("Let me echo.\n", 1));
    assert!(matches!(
        run(
            &c,
            &g,
            "Hm <tool_call>\n{\"name\": \"echo\", \"arguments\": {\"text\": 1"
        ),
        Run::Rejected(_)
    ));
    assert!(matches!(
        run(&c, &g, "Hm <tool_call>oops"),
        Run::Rejected(_)
    ));
}

/// Free text under `auto` is valid wherever the token limit cuts it, so it runs to the limit
/// (ending it early gains nothing); after a call the limit still ends the reply rather than
/// let a second call start that cannot finish.
#[test]
fn auto_free_text_runs_to_the_limit() {
    let c = test_constrainer();
    let tools = [echo()];
    let g = grammar(&tools, ToolChoice::Auto, ParserKind::JsonTools, true);
    let mut m = c.matcher(&g).unwrap();
    let mut bias = vec![0f32; c.vocab_size() + 8];
    for (left, b) in (1..=3).rev().zip(b"Hi!") {
        let step = m.next_bias(&mut bias, &[STOP], left);
        assert_eq!(step, Ok(MaskStep::Sample), "{left} tokens left");
        m.accept(*b as u32).unwrap();
    }
    let mut m = c.matcher(&g).unwrap();
    m.accept(256).unwrap(); // <tool_call>
    for b in "\n{\"name\": \"echo\", \"arguments\": {\"text\": \"x\"}}\n".bytes() {
        m.next_bias(&mut bias, &[STOP], usize::MAX).unwrap();
        m.accept(b as u32).unwrap();
    }
    m.next_bias(&mut bias, &[STOP], usize::MAX).unwrap();
    m.accept(257).unwrap(); // </tool_call>
    assert_eq!(m.next_bias(&mut bias, &[STOP], 2), Ok(MaskStep::Finish));
}

#[test]
fn qwen3_coder_parameters_are_typed_by_schema() {
    let c = test_constrainer();
    let tools = [echo(), weather()];
    let g = grammar(&tools, ToolChoice::Required, ParserKind::Qwen3Coder, false);
    let call = "<tool_call>\n<function=get_weather>\n<parameter=city>\nNew York\n</parameter>\n<parameter=days>\n3\n</parameter>\n<parameter=unit>\nf\n</parameter>\n</function>\n</tool_call>";
    assert_eq!(run(&c, &g, call), Run::Complete(true));
    let (_, calls) = parse(ParserKind::Qwen3Coder, &tools, call);
    assert_eq!(
        calls,
        [(
            "get_weather".to_string(),
            json!({"city": "New York", "days": 3, "unit": "f"})
        )]
    );
    let multiline = "<tool_call>\n<function=echo>\n<parameter=text>\nline 1\nline 2 </param\n</parameter>\n</function>\n</tool_call>";
    assert_eq!(run(&c, &g, multiline), Run::Complete(true));
    assert_eq!(
        parse(ParserKind::Qwen3Coder, &tools, multiline).1[0].1,
        json!({"text": "line 1\nline 2 </param"})
    );
    for bad in [
        "<tool_call>\n<function=get_weather>\n<parameter=days>",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nX\n</parameter>\n<parameter=days>\n9",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nX\n</parameter>\n<parameter=days>\n2\n</parameter>\n<parameter=unit>\nk",
        "<tool_call>\n<function=echo>\n</function>",
    ] {
        assert!(matches!(run(&c, &g, bad), Run::Rejected(_)), "{bad}");
    }
}

#[test]
fn minimax_m2_invokes() {
    let c = test_constrainer();
    let tools = [echo(), weather()];
    let g = grammar(&tools, ToolChoice::Required, ParserKind::MinimaxM2, true);
    let call = "<minimax:tool_call>\n<invoke name=\"echo\">\n<parameter name=\"text\">hello there</parameter>\n</invoke>\n<invoke name=\"get_weather\">\n<parameter name=\"city\">Paris</parameter>\n<parameter name=\"days\">2</parameter>\n<parameter name=\"hourly\">true</parameter>\n</invoke>\n</minimax:tool_call>";
    assert_eq!(run(&c, &g, call), Run::Complete(true));
    let (_, calls) = parse(ParserKind::MinimaxM2, &tools, call);
    assert_eq!(
        calls,
        [
            ("echo".to_string(), json!({"text": "hello there"})),
            (
                "get_weather".to_string(),
                json!({"city": "Paris", "days": 2, "hourly": true})
            )
        ]
    );
    let g = grammar(&tools, ToolChoice::Auto, ParserKind::MinimaxM2, false);
    let call = "Calling.\n<minimax:tool_call>\n<invoke name=\"echo\">\n<parameter name=\"text\">x</parameter>\n</invoke>\n</minimax:tool_call>";
    assert_eq!(run(&c, &g, call), Run::Complete(true));
    let (content, calls) = parse(ParserKind::MinimaxM2, &tools, call);
    assert_eq!((content.as_str(), calls.len()), ("Calling.\n", 1));
    assert!(matches!(
        run(&c, &g, "Calling.\n<minimax:tool_call>\n<invoke name=\"nope"),
        Run::Rejected(_)
    ));
}

#[test]
fn glm45_arg_pairs() {
    let c = test_constrainer();
    let tools = [echo(), weather()];
    let g = grammar(&tools, ToolChoice::Required, ParserKind::Glm45, true);
    let call = "<tool_call>echo\n<arg_key>text</arg_key>\n<arg_value>hello there</arg_value>\n</tool_call>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>2</arg_value>\n</tool_call>";
    // Parallel: another block may follow.
    assert_eq!(run(&c, &g, call), Run::Complete(false));
    let (_, calls) = parse(ParserKind::Glm45, &tools, call);
    assert_eq!(
        calls,
        [
            ("echo".to_string(), json!({"text": "hello there"})),
            (
                "get_weather".to_string(),
                json!({"city": "Paris", "days": 2})
            )
        ]
    );
    // GLM-4.7's compact form is the same grammar's too.
    let compact = "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Oslo</arg_value><arg_key>days</arg_key><arg_value>3</arg_value></tool_call>";
    assert_eq!(run(&c, &g, compact), Run::Complete(false));
    let (_, calls) = parse(ParserKind::Glm45, &tools, compact);
    assert_eq!(
        calls,
        [(
            "get_weather".to_string(),
            json!({"city": "Oslo", "days": 3})
        )]
    );
    let g = grammar(
        &tools,
        ToolChoice::Function("get_weather".into()),
        ParserKind::Glm45,
        false,
    );
    for bad in [
        "<tool_call>echo\n",
        "<tool_call>get_weather\n<arg_key>days</arg_key>\n<arg_value>9",
        "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>X</arg_value>\n</tool_call>",
    ] {
        assert!(matches!(run(&c, &g, bad), Run::Rejected(_)), "{bad}");
    }
}

#[test]
fn refs_into_defs_still_resolve() {
    let c = test_constrainer();
    let tool = json!({"name": "move", "parameters": {
        "type": "object",
        "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer"}},
                            "required": ["x"], "additionalProperties": false}},
        "properties": {"to": {"$ref": "#/$defs/point"}},
        "required": ["to"]}});
    for format in [ParserKind::JsonTools, ParserKind::Qwen3Coder] {
        let g = grammar(
            std::slice::from_ref(&tool),
            ToolChoice::Required,
            format,
            false,
        );
        let call = match format {
            ParserKind::JsonTools => "<tool_call>\n{\"name\": \"move\", \"arguments\": {\"to\": {\"x\": 1}}}\n</tool_call>",
            _ => "<tool_call>\n<function=move>\n<parameter=to>\n{\"x\": 1}\n</parameter>\n</function>\n</tool_call>",
        };
        assert_eq!(run(&c, &g, call), Run::Complete(true), "{format:?}");
        assert!(matches!(
            run(&c, &g, &call.replace("\"x\": 1", "\"y\": 1")),
            Run::Rejected(_)
        ));
    }
}

#[test]
fn llama3_json_forced_calls_are_the_whole_reply() {
    let c = test_constrainer();
    let tools = [echo(), weather()];
    let g = grammar(&tools, ToolChoice::Required, ParserKind::Llama3Json, false);
    let text = r#"{"name": "echo", "parameters": {"text": "hi"}}"#;
    assert_eq!(run(&c, &g, text), Run::Complete(true));
    let (content, calls) = parse(ParserKind::Llama3Json, &tools, text);
    assert_eq!(content, "");
    assert_eq!(calls, [("echo".to_string(), json!({"text": "hi"}))]);
    for bad in [
        "Sure",
        r#"{"name": "echo", "arguments""#,
        r#"{"name": "get_weather", "parameters": {"city": "Oslo", "days": 9"#,
    ] {
        assert!(matches!(run(&c, &g, bad), Run::Rejected(_)), "{bad}");
    }
    // Parallel: `; ` and another call, which the parser splits.
    let g = grammar(&tools, ToolChoice::Required, ParserKind::Llama3Json, true);
    let two = format!(
        r#"{text}; {{"name": "get_weather", "parameters": {{"city": "Oslo", "days": 3}}}}"#
    );
    assert_eq!(
        run(&c, &g, &two),
        Run::Complete(false),
        "another may follow"
    );
    assert_eq!(parse(ParserKind::Llama3Json, &tools, &two).1.len(), 2);
    // A named function: only that one; `auto` stays unconstrained.
    let g = grammar(
        &tools,
        ToolChoice::Function("get_weather".into()),
        ParserKind::Llama3Json,
        true,
    );
    assert!(matches!(run(&c, &g, text), Run::Rejected(_)));
    let auto = ToolCalls {
        tools: &tools,
        choice: &ToolChoice::Auto,
        format: ParserKind::Llama3Json,
        parallel: true,
    };
    assert_eq!(auto.grammar().unwrap(), None);
}

#[test]
fn errors_name_the_problem() {
    let tools = [echo()];
    let build = |choice: ToolChoice, format: ParserKind, tools: &[Value]| {
        ToolCalls {
            tools,
            choice: &choice,
            format,
            parallel: true,
        }
        .grammar()
    };
    let err = build(
        ToolChoice::Function("nope".into()),
        ParserKind::JsonTools,
        &tools,
    )
    .unwrap_err();
    assert_eq!(err.param(), Some("tool_choice"));
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(build(ToolChoice::Required, ParserKind::JsonTools, &[]).is_err());
    assert_eq!(
        build(ToolChoice::Auto, ParserKind::JsonTools, &[]).unwrap(),
        None
    );
    assert_eq!(
        build(ToolChoice::None, ParserKind::JsonTools, &tools).unwrap(),
        None
    );
    let strict_pattern = json!({"name": "f", "strict": true, "parameters": {"type": "object",
        "properties": {"id": {"type": "string", "pattern": "^[a-z]+$"}}}});
    let err = build(
        ToolChoice::Required,
        ParserKind::Qwen3Coder,
        std::slice::from_ref(&strict_pattern),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        ConstrainError::Unsupported { param: "tools", .. }
    ));
    assert!(err.to_string().contains("`pattern`"), "{err}");
    // The same schema is enforceable as JSON.
    assert!(build(
        ToolChoice::Required,
        ParserKind::JsonTools,
        &[strict_pattern]
    )
    .is_ok());
    let strict_not = json!({"name": "f", "strict": true, "parameters": {"type": "object",
        "properties": {"a": {"not": {"type": "null"}}}}});
    let err = build(ToolChoice::Required, ParserKind::JsonTools, &[strict_not]).unwrap_err();
    assert!(err.to_string().contains("not"), "{err}");
    let bad_name = json!({"name": "a>b", "parameters": {"type": "object"}});
    assert!(build(ToolChoice::Required, ParserKind::Qwen3Coder, &[bad_name]).is_err());
    let not_object = json!({"name": "f", "parameters": {"type": "array"}});
    assert!(matches!(
        build(ToolChoice::Required, ParserKind::JsonTools, &[not_object]),
        Err(ConstrainError::Invalid { .. })
    ));
}

#[test]
fn deepseek_calls() {
    let c = test_constrainer();
    let tools = [echo(), weather()];
    let g = grammar(&tools, ToolChoice::Required, ParserKind::Deepseek, true);
    // V3.1's shape, two calls, then V3 / R1's fenced shape.
    let v31 = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>echo<｜tool▁sep｜>{\"text\": \"hi\"}<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Oslo\", \"days\": 3}<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    let r1 = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Oslo\", \"days\": 3}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    assert_eq!(run(&c, &g, v31), Run::Complete(true));
    assert_eq!(run(&c, &g, r1), Run::Complete(true));
    assert_eq!(
        parse(ParserKind::Deepseek, &tools, v31).1,
        [
            ("echo".to_string(), json!({"text": "hi"})),
            (
                "get_weather".to_string(),
                json!({"city": "Oslo", "days": 3})
            )
        ]
    );
    assert_eq!(
        parse(ParserKind::Deepseek, &tools, r1).1,
        [(
            "get_weather".to_string(),
            json!({"city": "Oslo", "days": 3})
        )]
    );
    let g = grammar(
        &tools,
        ToolChoice::Function("get_weather".into()),
        ParserKind::Deepseek,
        false,
    );
    for bad in [
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>echo",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Oslo\", \"days\": 9",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Oslo\", \"days\": 3}<｜tool▁call▁end｜><｜tool▁call▁begin｜>",
        "Sure",
    ] {
        assert!(matches!(run(&c, &g, bad), Run::Rejected(_)), "{bad}");
    }
    // `auto`: text, then a call held to the schema.
    let g = grammar(&tools, ToolChoice::Auto, ParserKind::Deepseek, false);
    let call = "Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>echo<｜tool▁sep｜>{\"text\": \"x\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    assert_eq!(run(&c, &g, call), Run::Complete(true));
    let (content, calls) = parse(ParserKind::Deepseek, &tools, call);
    assert_eq!(content, "Checking.");
    assert_eq!(calls, [("echo".to_string(), json!({"text": "x"}))]);
    assert!(matches!(
        run(
            &c,
            &g,
            "Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>nope"
        ),
        Run::Rejected(_)
    ));
}

#[test]
fn kimi_k2_calls() {
    let c = test_constrainer();
    let tools = [echo(), weather()];
    let g = grammar(&tools, ToolChoice::Required, ParserKind::KimiK2, true);
    let two = "<|tool_calls_section_begin|><|tool_call_begin|>functions.echo:0<|tool_call_argument_begin|>{\"text\": \"hi\"}<|tool_call_end|><|tool_call_begin|>functions.get_weather:1<|tool_call_argument_begin|>{\"city\": \"Oslo\", \"days\": 3}<|tool_call_end|><|tool_calls_section_end|>";
    assert_eq!(run(&c, &g, two), Run::Complete(true));
    let reply = ParsedReply::parse(new_parser(ParserKind::KimiK2, &tools).as_mut(), two);
    let ids: Vec<&str> = reply.tool_calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["functions.echo:0", "functions.get_weather:1"]);
    assert_eq!(
        parse(ParserKind::KimiK2, &tools, two).1,
        [
            ("echo".to_string(), json!({"text": "hi"})),
            (
                "get_weather".to_string(),
                json!({"city": "Oslo", "days": 3})
            )
        ]
    );
    let g = grammar(
        &tools,
        ToolChoice::Function("echo".into()),
        ParserKind::KimiK2,
        false,
    );
    let one = "<|tool_calls_section_begin|><|tool_call_begin|>functions.echo:12<|tool_call_argument_begin|>{\"text\": \"hi\"}<|tool_call_end|><|tool_calls_section_end|>";
    assert_eq!(run(&c, &g, one), Run::Complete(true));
    for bad in [
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0",
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.echo:x",
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.echo:0<|tool_call_argument_begin|>{\"text\": 1",
    ] {
        assert!(matches!(run(&c, &g, bad), Run::Rejected(_)), "{bad}");
    }
}

#[test]
fn kimi_k2_auto() {
    let c = test_constrainer();
    let tools = [echo(), weather()];
    let g = grammar(&tools, ToolChoice::Auto, ParserKind::KimiK2, false);
    assert_eq!(run(&c, &g, "Just text."), Run::Complete(false));
    let call = "<think>hm</think>On it.<|tool_calls_section_begin|><|tool_call_begin|>functions.echo:0<|tool_call_argument_begin|>{\"text\": \"x\"}<|tool_call_end|><|tool_calls_section_end|>";
    assert_eq!(run(&c, &g, call), Run::Complete(true));
    assert!(matches!(
        run(
            &c,
            &g,
            "On it.<|tool_calls_section_begin|><|tool_call_begin|>functions.nope:0"
        ),
        Run::Rejected(_)
    ));
}
