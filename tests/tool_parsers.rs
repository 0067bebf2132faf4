//! The tool-call parsers on hand-written model replies, each compared with hand-written
//! expected JSON, fed all at once and character by character (the two must agree, and no
//! markup may reach `content`); which parser a model gets is `tool_parser_selection.rs`.

mod common;

use common::tool_replies::{call, check, reply, tools};
use kooka::chat::tools::{new_parser, ParseEvent, ParsedReply, ParserKind};
use serde_json::json;

#[test]
fn json_tools() {
    let k = ParserKind::JsonTools;
    let paris = r#"<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>"#;
    check(
        k,
        paris,
        reply("", vec![call("get_weather", json!({"city": "Paris"}))]),
    );
    check(
        k,
        &format!("Let me check.\n{paris}\n<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": \"{{\\\"city\\\": \\\"東京\\\", \\\"days\\\": 2}}\"}}\n</tool_call>\n"),
        reply(
            "Let me check.\n",
            vec![call("get_weather", json!({"city": "Paris"})), call("get_weather", json!({"city": "東京", "days": 2}))],
        ),
    );
    check(
        k,
        "no calls, just <b>text</b> and <tool",
        reply("no calls, just <b>text</b> and <tool", vec![]),
    );
    // Malformed body: given back as text.
    check(
        k,
        "<tool_call>{\"name\": oops}</tool_call>",
        reply("<tool_call>{\"name\": oops}</tool_call>", vec![]),
    );
    // Unterminated but complete JSON at EOS still counts.
    check(
        k,
        r#"<tool_call>{"name": "get_weather", "arguments": {}}"#,
        reply("", vec![call("get_weather", json!({}))]),
    );
}

#[test]
fn qwen3_coder() {
    let k = ParserKind::Qwen3Coder;
    let one = "<tool_call>\n<function=get_weather>\n<parameter=city>\nNew York\n</parameter>\n<parameter=days>\n3\n</parameter>\n<parameter=metric>\ntrue\n</parameter>\n</function>\n</tool_call>";
    check(
        k,
        one,
        reply(
            "",
            vec![call(
                "get_weather",
                json!({"city": "New York", "days": 3, "metric": true}),
            )],
        ),
    );
    let two = "<tool_call>\n<function=write_file>\n<parameter=file_path>\nsrc/a.rs\n</parameter>\n<parameter=content>\nfn main() {\n    // 42\n}\n</parameter>\n<parameter=mode>\n{\"append\": false}\n</parameter>\n<parameter=tags>\n[\"x\", 1]\n</parameter>\n<parameter=ratio>\n0.5\n</parameter>\n</function>\n</tool_call>";
    check(
        k,
        &format!("I'll do both.\n\n{one}\n{two}\n"),
        reply(
            "I'll do both.\n\n",
            vec![
                call(
                    "get_weather",
                    json!({"city": "New York", "days": 3, "metric": true}),
                ),
                call(
                    "write_file",
                    json!({"file_path": "src/a.rs", "content": "fn main() {\n    // 42\n}", "mode": {"append": false},
                           "tags": ["x", 1], "ratio": 0.5}),
                ),
            ],
        ),
    );
    // Unknown tool: values are JSON if they parse, else strings; no parameters -> {}.
    check(
        k,
        "<tool_call><function=other><parameter=n>7</parameter><parameter=s>hi</parameter></function></tool_call><tool_call><function=noargs></function></tool_call>",
        reply("", vec![call("other", json!({"n": 7, "s": "hi"})), call("noargs", json!({}))]),
    );
    // A string-typed value that looks like a number stays a string.
    check(
        k,
        "<tool_call><function=get_weather><parameter=city>1984</parameter></function></tool_call>",
        reply("", vec![call("get_weather", json!({"city": "1984"}))]),
    );
    // No function inside the block: text.
    check(
        k,
        "<tool_call>garbage</tool_call>",
        reply("<tool_call>garbage</tool_call>", vec![]),
    );
    // Cut off at EOS before the closing tags: the call is closed with what was complete.
    check(
        k,
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n",
        reply("", vec![call("get_weather", json!({"city": "Rome"}))]),
    );
}

#[test]
fn qwen3_coder_streams_parameters() {
    let mut p = new_parser(ParserKind::Qwen3Coder, &tools());
    let mut events = p.push("<tool_call>\n<function=get_weather>\n");
    assert!(
        matches!(events.as_slice(), [ParseEvent::ToolCallStart { index: 0, name, .. }] if name == "get_weather")
    );
    events = p.push("<parameter=city>\nOslo\n</parameter>\n");
    assert_eq!(
        events,
        vec![ParseEvent::ToolCallArgsDelta {
            index: 0,
            delta: r#"{"city":"Oslo""#.into()
        }]
    );
    events = p.push("<parameter=days>2</parameter></function></tool_call>");
    assert_eq!(
        events,
        vec![
            ParseEvent::ToolCallArgsDelta {
                index: 0,
                delta: r#","days":2"#.into()
            },
            ParseEvent::ToolCallArgsDelta {
                index: 0,
                delta: "}".into()
            },
            ParseEvent::ToolCallEnd { index: 0 },
        ]
    );
    assert!(p.finish().is_empty());
}

#[test]
fn minimax_m2() {
    let k = ParserKind::MinimaxM2;
    let text = "Writing it.\n<minimax:tool_call>\n<invoke name=\"write_file\">\n<parameter name=\"file_path\">kooka- server/validate. js</parameter>\n<parameter name=\"content\">42</parameter>\n<parameter name=\"bogus\">1</parameter>\n<parameter name=\"ratio\">2</parameter>\n</invoke>\n<invoke name=\"get_weather\">\n<parameter name=\"city\">Grüße, 東京</parameter>\n<parameter name=\"days\">5</parameter>\n</invoke>\n</minimax:tool_call>";
    check(
        k,
        text,
        reply(
            "Writing it.\n",
            vec![
                // Path de-spaced, "42" kept a string by the schema, forbidden key dropped.
                call(
                    "write_file",
                    json!({"file_path": "kooka-server/validate.js", "content": "42", "ratio": 2}),
                ),
                call("get_weather", json!({"city": "Grüße, 東京", "days": 5})),
            ],
        ),
    );
    check(
        k,
        "<minimax:tool_call><invoke name=\"get_weather\"><parameter name=\"city\">Paris</parameter></invoke></minimax:tool_call>",
        reply("", vec![call("get_weather", json!({"city": "Paris"}))]),
    );
    check(
        k,
        "<minimax:tool_call>oops</minimax:tool_call> ok",
        reply("<minimax:tool_call>oops</minimax:tool_call> ok", vec![]),
    );
}

#[test]
fn mistral() {
    let k = ParserKind::Mistral;
    check(
        k,
        r#"[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_weather", "arguments": {"city": "Lyon", "days": 1}}]"#,
        reply(
            "",
            vec![
                call("get_weather", json!({"city": "Paris"})),
                call("get_weather", json!({"city": "Lyon", "days": 1})),
            ],
        ),
    );
    check(
        k,
        r#"Sure. [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]write_file[CALL_ID]abc123XYZ[ARGS]{"file_path": "a.txt"}"#,
        reply(
            "Sure. ",
            vec![
                call("get_weather", json!({"city": "Paris"})),
                call("write_file", json!({"file_path": "a.txt"})),
            ],
        ),
    );
    check(
        k,
        "[TOOL_CALLS]not json",
        reply("[TOOL_CALLS]not json", vec![]),
    );
    check(k, "plain [TOOL", reply("plain [TOOL", vec![]));
}

#[test]
fn mistral_ids() {
    let mut p = new_parser(ParserKind::Mistral, &tools());
    let mut r = ParsedReply::parse(
        p.as_mut(),
        r#"[TOOL_CALLS]a[CALL_ID]abc123XYZ[ARGS]{}[TOOL_CALLS]b[ARGS]{}"#,
    );
    assert_eq!(r.tool_calls[0].id, "abc123XYZ");
    let generated = r.tool_calls.remove(1).id;
    assert!(
        generated.len() == 9 && generated.chars().all(|c| c.is_ascii_alphanumeric()),
        "{generated}"
    );
}

#[test]
fn llama3_json() {
    let k = ParserKind::Llama3Json;
    check(
        k,
        r#"{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}"#,
        reply(
            "",
            vec![call("get_weather", json!({"city": "Paris", "days": 2}))],
        ),
    );
    check(
        k,
        r#"<|python_tag|>{"name": "get_weather", "parameters": {"city": "A"}}; {"name": "get_weather", "parameters": {"city": "B"}}"#,
        reply(
            "",
            vec![
                call("get_weather", json!({"city": "A"})),
                call("get_weather", json!({"city": "B"})),
            ],
        ),
    );
    check(
        k,
        "The weather is {fine}.",
        reply("The weather is {fine}.", vec![]),
    );
    check(k, "  {\"oops\": 1}", reply("  {\"oops\": 1}", vec![]));
    check(k, "<|python", reply("<|python", vec![]));
}

#[test]
fn pythonic() {
    let k = ParserKind::Pythonic;
    check(
        k,
        r#"<|tool_call_start|>[get_weather(city="Paris", days=3, metric=True)]<|tool_call_end|>"#,
        reply(
            "",
            vec![call(
                "get_weather",
                json!({"city": "Paris", "days": 3, "metric": true}),
            )],
        ),
    );
    check(
        k,
        r#"On it. <|tool_call_start|>[get_weather(city='Lyon'), write_file(file_path="a b.txt", mode={'x': [1, 2.5, None]}, tags=("t",))]<|tool_call_end|>"#,
        reply(
            "On it. ",
            vec![
                call("get_weather", json!({"city": "Lyon"})),
                call(
                    "write_file",
                    json!({"file_path": "a b.txt", "mode": {"x": [1, 2.5, null]}, "tags": ["t"]}),
                ),
            ],
        ),
    );
    check(
        k,
        "<|tool_call_start|>[broken(]<|tool_call_end|>",
        reply("<|tool_call_start|>[broken(]<|tool_call_end|>", vec![]),
    );
}

#[test]
fn deepseek() {
    let k = ParserKind::Deepseek;
    // V3.1: NAME<｜tool▁sep｜>{json}.
    check(
        k,
        "I'll check.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\", \"days\": 3}<｜tool▁call▁end｜><｜tool▁call▁begin｜>write_file<｜tool▁sep｜>{\"file_path\": \"a.txt\", \"content\": \"<｜tool▁sep｜> is text here\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        reply(
            "I'll check.",
            vec![
                call("get_weather", json!({"city": "Paris", "days": 3})),
                call("write_file", json!({"file_path": "a.txt", "content": "<｜tool▁sep｜> is text here"})),
            ],
        ),
    );
    // V3 (0324) / R1: function<｜tool▁sep｜>NAME and a fenced JSON block, as the templates write it.
    check(
        k,
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Rome\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        reply(
            "",
            vec![
                call("get_weather", json!({"city": "Paris"})),
                call("get_weather", json!({"city": "Rome"})),
            ],
        ),
    );
    let bad = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{city: Paris}<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    check(k, bad, reply(bad, vec![]));
    check(k, "No tools needed.", reply("No tools needed.", vec![]));
}

#[test]
fn kimi_k2() {
    let k = ParserKind::KimiK2;
    let text = "Let me look.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"city\": \"Paris\"}<|tool_call_end|><|tool_call_begin|>functions.write_file:1<|tool_call_argument_begin|>{\"file_path\": \"a.txt\", \"ratio\": 0.5}<|tool_call_end|><|tool_calls_section_end|>";
    check(
        k,
        text,
        reply(
            "Let me look.",
            vec![
                call("get_weather", json!({"city": "Paris"})),
                call("write_file", json!({"file_path": "a.txt", "ratio": 0.5})),
            ],
        ),
    );
    // The model's own ids are the call ids.
    let mut parser = new_parser(k, &tools());
    let parsed = ParsedReply::parse(parser.as_mut(), text);
    let ids: Vec<&str> = parsed.tool_calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["functions.get_weather:0", "functions.write_file:1"]);
    let bad = "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"city\": <|tool_call_end|><|tool_calls_section_end|>";
    check(k, bad, reply(bad, vec![]));
}

/// A reply the token limit or a stop string cut short (`finish_cut`): the call it did not
/// get to finish is dropped, not given back as content; complete calls and text stay, and an
/// announced call is closed as at the end.
#[test]
fn a_cut_reply_drops_its_unfinished_call() {
    let cut = |k: ParserKind, text: &str| {
        let mut p = new_parser(k, &tools());
        let mut reply = ParsedReply::default();
        for ch in text.chars() {
            reply.extend(p.push(&ch.to_string()));
        }
        reply.extend(p.finish_cut());
        reply
    };
    let paris = r#"<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>"#;
    let r = cut(
        ParserKind::JsonTools,
        &format!("Checking.\n{paris}\n<tool_call>\n{{\"name\": \"get_time\", \"arguments\": {{\"tz\": \""),
    );
    assert_eq!((r.content.as_str(), r.tool_calls.len()), ("Checking.\n", 1));
    assert_eq!(r.tool_calls[0].name, "get_weather");
    // A held-back partial start tag goes too; text alone stays.
    let r = cut(ParserKind::JsonTools, "Sure <tool_c");
    assert_eq!((r.content.as_str(), r.tool_calls.len()), ("Sure ", 0));
    assert_eq!(cut(ParserKind::JsonTools, "just text").content, "just text");
    // A body cut just before its end tag still parses.
    let r = cut(ParserKind::JsonTools, &paris[..paris.len() - 5]);
    assert_eq!((r.content.as_str(), r.tool_calls.len()), ("", 1));
    // XML markup: a block with no function yet is dropped; an announced call is closed.
    let r = cut(ParserKind::Qwen3Coder, "Ok.\n<tool_call>\n<funct");
    assert_eq!((r.content.as_str(), r.tool_calls.len()), ("Ok.\n", 0));
    let r = cut(
        ParserKind::Qwen3Coder,
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=da",
    );
    assert_eq!((r.content.as_str(), r.tool_calls.len()), ("", 1));
    assert_eq!(r.tool_calls[0].arguments, r#"{"city":"Paris"}"#);
    // Not cut: the unterminated block is given back, as before.
    let mut p = new_parser(ParserKind::JsonTools, &tools());
    let mut r = ParsedReply::default();
    r.extend(p.push("<tool_call>{\"name\": \"get_ti"));
    r.extend(p.finish());
    assert_eq!(r.content, "<tool_call>{\"name\": \"get_ti");
}
