//! Which tool-call parser a model gets (by model type, by chat template, on the corpus of
//! real templates), and the DeepSeek and Kimi templates' tool calls round-tripping through
//! their parsers.

mod common;

use common::tool_replies::{call, check, reply, summarise, tools};
use kooka::chat::tools::{new_parser, select_parser, ParserKind};
use serde_json::json;

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
