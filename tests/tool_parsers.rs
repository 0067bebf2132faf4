//! The tool-call parsers on hand-written model replies, each compared with hand-written
//! expected JSON, fed all at once and character by character (the two must agree, and no
//! markup may reach `content`).

use kooka::chat::tools::{new_parser, select_parser, ParseEvent, ParsedReply, ParserKind};
use serde_json::{json, Value};

fn tools() -> Vec<Value> {
    vec![
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"}},
            "required": ["city"]}}}),
        json!({"type": "function", "function": {"name": "write_file", "parameters": {
            "type": "object",
            "additionalProperties": false,
            "properties": {"file_path": {"type": "string"}, "content": {"type": "string"}, "mode": {"type": "object"},
                           "tags": {"type": "array"}, "ratio": {"type": "number"}}}}}),
    ]
}

/// The reply as `{"content", "tool_calls": [{"name", "arguments": <parsed>}]}`, checking the
/// event stream's invariants on the way.
fn summarise(events: Vec<ParseEvent>) -> Value {
    let mut open = None;
    for e in &events {
        match e {
            ParseEvent::ToolCallStart { index, id, .. } => {
                assert!(open.is_none(), "call {index} started inside another");
                assert!(!id.is_empty());
                open = Some(*index);
            }
            ParseEvent::ToolCallArgsDelta { index, .. } => {
                assert_eq!(open, Some(*index), "delta outside its call")
            }
            ParseEvent::ToolCallEnd { index } => {
                assert_eq!(open.take(), Some(*index));
            }
            ParseEvent::Content(text) => assert!(!text.is_empty(), "empty content event"),
        }
    }
    assert!(open.is_none(), "unterminated call");
    let mut reply = ParsedReply::default();
    reply.extend(events);
    let calls: Vec<Value> = reply
        .tool_calls
        .iter()
        .map(|c| {
            let args: Value = serde_json::from_str(&c.arguments)
                .unwrap_or_else(|e| panic!("arguments {:?} are not JSON: {e}", c.arguments));
            json!({"name": c.name, "arguments": args})
        })
        .collect();
    json!({"content": reply.content, "tool_calls": calls})
}

fn run(kind: ParserKind, text: &str, per_char: bool) -> Value {
    let mut parser = new_parser(kind, &tools());
    let mut events = Vec::new();
    if per_char {
        for c in text.chars() {
            events.extend(parser.push(&c.to_string()));
        }
    } else {
        events.extend(parser.push(text));
    }
    events.extend(parser.finish());
    summarise(events)
}

/// Parses `text` at once and char by char; both must equal `want`.
#[track_caller]
fn check(kind: ParserKind, text: &str, want: Value) {
    assert_eq!(run(kind, text, false), want, "{kind:?} at once: {text:?}");
    assert_eq!(
        run(kind, text, true),
        want,
        "{kind:?} char by char: {text:?}"
    );
}

fn call(name: &str, arguments: Value) -> Value {
    json!({"name": name, "arguments": arguments})
}

fn reply(content: &str, calls: Vec<Value>) -> Value {
    json!({"content": content, "tool_calls": calls})
}

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

#[test]
fn parser_selection() {
    let nemotron = "...<tool_call>\n<function=example>\n<parameter=x>...";
    let cfg = json!({"tool_parser_type": "json_tools"});
    let (kind, why) = select_parser(Some(&cfg), Some(nemotron));
    assert_eq!(kind, Some(ParserKind::Qwen3Coder));
    assert!(
        why.contains("json_tools") && why.contains("qwen3_coder"),
        "{why}"
    );
    assert_eq!(
        select_parser(
            Some(&json!({"tool_parser_type": "mistral"})),
            Some("<tool_call>")
        )
        .0,
        Some(ParserKind::Mistral)
    );
    let infer = |t: &str| select_parser(None, Some(t)).0;
    assert_eq!(infer("<minimax:tool_call>"), Some(ParserKind::MinimaxM2));
    assert_eq!(infer("[TOOL_CALLS]"), Some(ParserKind::Mistral));
    assert_eq!(infer("<|tool_call_start|>"), Some(ParserKind::Pythonic));
    assert_eq!(
        infer("<tool_call>{{ tool | tojson }}</tool_call>"),
        Some(ParserKind::JsonTools)
    );
    assert_eq!(infer("<|python_tag|>"), Some(ParserKind::Llama3Json));
    assert_eq!(
        infer("{{'<｜tool▁call▁begin｜>' + name + '<｜tool▁sep｜>'}}"),
        Some(ParserKind::Deepseek)
    );
    assert_eq!(
        infer("<|tool_calls_section_begin|>"),
        Some(ParserKind::KimiK2)
    );
    assert_eq!(
        select_parser(Some(&json!({"tool_parser_type": "deepseek_v31"})), None).0,
        Some(ParserKind::Deepseek)
    );
    assert_eq!(
        select_parser(Some(&json!({"tool_parser_type": "kimi_k2"})), None).0,
        Some(ParserKind::KimiK2)
    );
    assert_eq!(infer("{{ messages }}"), None);
}

/// Every template in the corpus that mentions a tool-call format gets the expected parser.
#[test]
fn parser_selection_on_corpus() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("third_party/llama.cpp/templates");
    assert!(
        dir.is_dir(),
        "{} is missing: run scripts/setup.sh --tests",
        dir.display()
    );
    let expect = [
        ("Qwen3-Coder.jinja", Some(ParserKind::Qwen3Coder)),
        (
            "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.jinja",
            Some(ParserKind::Qwen3Coder),
        ),
        ("MiniMax-M2.jinja", Some(ParserKind::MinimaxM2)),
        (
            "Qwen-Qwen2.5-7B-Instruct.jinja",
            Some(ParserKind::JsonTools),
        ),
        (
            "mistralai-Mistral-Nemo-Instruct-2407.jinja",
            Some(ParserKind::Mistral),
        ),
        (
            "Mistral-Small-3.2-24B-Instruct-2506.jinja",
            Some(ParserKind::Mistral),
        ),
        (
            "meta-llama-Llama-3.1-8B-Instruct.jinja",
            Some(ParserKind::Llama3Json),
        ),
        (
            "meta-llama-Llama-3.2-3B-Instruct.jinja",
            Some(ParserKind::Llama3Json),
        ),
        ("LFM2-8B-A1B.jinja", Some(ParserKind::Pythonic)),
        ("LFM2.5-8B-A1B.jinja", Some(ParserKind::Pythonic)),
        ("openai-gpt-oss-120b.jinja", Some(ParserKind::Harmony)),
        (
            "deepseek-ai-DeepSeek-V3.1.jinja",
            Some(ParserKind::Deepseek),
        ),
        (
            "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
            Some(ParserKind::Deepseek),
        ),
        ("llama-cpp-deepseek-r1.jinja", Some(ParserKind::Deepseek)),
        (
            "deepseek-ai-DeepSeek-V3.2.jinja",
            Some(ParserKind::DeepseekV32),
        ),
        ("Kimi-K2-Instruct.jinja", Some(ParserKind::KimiK2)),
        ("Kimi-K2-Thinking.jinja", Some(ParserKind::KimiK2)),
        ("moonshotai-Kimi-K2.jinja", Some(ParserKind::KimiK2)),
        ("google-gemma-2-2b-it.jinja", None),
    ];
    for (file, want) in expect {
        let source = std::fs::read_to_string(dir.join(file)).unwrap();
        let (kind, why) = select_parser(None, Some(&source));
        assert_eq!(kind, want, "{file}: {why}");
    }
}

/// The models' own templates write earlier calls in the markup the parsers read: render an
/// assistant turn with two calls, cut out its call block, parse it back. And the reasoning
/// block: DeepSeek-V3.1 opens `<think>` in the prompt when thinking, Kimi-K2-Thinking's reply
/// opens its own; either way the text after `</think>` reaches the tool parser.
#[test]
fn deepseek_and_kimi_templates_round_trip() {
    use kooka::chat::tools::{ReasoningEvent, ReasoningSplitter};
    use kooka::chat::{ChatTemplate, SpecialTokens};
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("third_party/llama.cpp/templates");
    let calls = json!([
        {"id": "functions.get_weather:0", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
        {"id": "functions.write_file:1", "type": "function",
         "function": {"name": "write_file", "arguments": "{\"file_path\": \"a.txt\", \"ratio\": 0.5}"}}
    ]);
    let messages = vec![
        json!({"role": "user", "content": "Weather, then a file."}),
        json!({"role": "assistant", "content": "", "tool_calls": calls}),
        json!({"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "sunny"}),
        json!({"role": "tool", "tool_call_id": "functions.write_file:1", "content": "ok"}),
    ];
    let want = reply(
        "",
        vec![
            call("get_weather", json!({"city": "Paris"})),
            call("write_file", json!({"file_path": "a.txt", "ratio": 0.5})),
        ],
    );
    for (file, kind, begin, end) in [
        (
            "deepseek-ai-DeepSeek-V3.1.jinja",
            ParserKind::Deepseek,
            "<｜tool▁calls▁begin｜>",
            "<｜tool▁calls▁end｜>",
        ),
        (
            "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
            ParserKind::Deepseek,
            "<｜tool▁calls▁begin｜>",
            "<｜tool▁calls▁end｜>",
        ),
        (
            "deepseek-ai-DeepSeek-V3.2.jinja",
            ParserKind::DeepseekV32,
            "<｜DSML｜function_calls>",
            "</｜DSML｜function_calls>",
        ),
        (
            "Kimi-K2-Instruct.jinja",
            ParserKind::KimiK2,
            "<|tool_calls_section_begin|>",
            "<|tool_calls_section_end|>",
        ),
        (
            "Kimi-K2-Thinking.jinja",
            ParserKind::KimiK2,
            "<|tool_calls_section_begin|>",
            "<|tool_calls_section_end|>",
        ),
    ] {
        let Ok(source) = std::fs::read_to_string(dir.join(file)) else {
            eprintln!("skipped: {file} is missing (run scripts/setup.sh --tests)");
            continue;
        };
        let template = ChatTemplate::new(&source, SpecialTokens::default()).unwrap();
        let text = template
            .render(&messages, Some(&tools()), true, &Default::default())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        if kind == ParserKind::KimiK2 {
            // The results are matched to the queued call ids (`list.append` / `pop(0)`).
            assert!(
                text.contains("## Return of functions.get_weather:0")
                    && text.contains("## Return of functions.write_file:1"),
                "{file}: {text}"
            );
        }
        let from = text
            .rfind(begin)
            .unwrap_or_else(|| panic!("{file}: {text}"));
        let to = text[from..].find(end).unwrap() + from + end.len();
        check(kind, &text[from..to], want.clone());
    }

    // DeepSeek-V3.1 thinking: the prompt ends inside the think block.
    if let Ok(source) = std::fs::read_to_string(dir.join("deepseek-ai-DeepSeek-V3.1.jinja")) {
        assert!(source.contains("<think>"));
        let template = ChatTemplate::new(&source, SpecialTokens::default()).unwrap();
        let mut kwargs = serde_json::Map::new();
        kwargs.insert("thinking".into(), json!(true));
        let prompt = template
            .render(&messages[..1], None, true, &kwargs)
            .unwrap();
        assert!(prompt.trim_end().ends_with("<think>"), "{prompt}");
        kwargs.insert("thinking".into(), json!(false));
        let prompt = template
            .render(&messages[..1], None, true, &kwargs)
            .unwrap();
        assert!(prompt.trim_end().ends_with("<think></think>"), "{prompt}");
    }
    // Reasoning, then the calls, fed char by char through the splitter and the parser.
    for (kind, inside, reply_text) in [
        (
            ParserKind::Deepseek,
            true,
            "Paris first.</think>On it.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        ),
        (
            ParserKind::KimiK2,
            false,
            "<think>Paris first.</think>On it.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"city\": \"Paris\"}<|tool_call_end|><|tool_calls_section_end|>",
        ),
    ] {
        let mut splitter = ReasoningSplitter::new("<think>", "</think>");
        if inside {
            splitter = splitter.starting_inside();
        }
        let mut parser = new_parser(kind, &tools());
        let (mut reasoning, mut events) = (String::new(), Vec::new());
        let mut feed = |evs: Vec<ReasoningEvent>, parser: &mut Box<dyn kooka::chat::tools::ToolParser>| {
            for e in evs {
                match e {
                    ReasoningEvent::Reasoning(t) => reasoning.push_str(&t),
                    ReasoningEvent::Content(t) => events.extend(parser.push(&t)),
                }
            }
        };
        for c in reply_text.chars() {
            feed(splitter.push(&c.to_string()), &mut parser);
        }
        feed(splitter.finish(), &mut parser);
        events.extend(parser.finish());
        assert_eq!(reasoning, "Paris first.", "{kind:?}");
        assert_eq!(
            summarise(events),
            reply("On it.", vec![call("get_weather", json!({"city": "Paris"}))]),
            "{kind:?}"
        );
    }
}
