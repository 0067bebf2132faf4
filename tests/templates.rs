//! kooka's chat-template rendering against transformers' (Jinja2) on the llama.cpp corpus of
//! real templates (`third_party/llama.cpp/templates`, from `scripts/setup.sh --tests`).
//!
//! `tests/python/render_templates.py` rendered every template for every case of
//! `tests/fixtures/chat/conversations.json` into `target/tmp/templates-expected.json` (at test time: the renders quote the templates, so they are never committed). Here
//! kooka renders the same and must match byte for byte; where Jinja2 raised, kooka must fail
//! too. The few known differences are listed in [`KNOWN_FAILURES`] with the reason.

use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;
use kooka::chat::{ChatTemplate, SpecialTokens};
use serde_json::{Map, Value};

/// The conversations without tools (`tools` is `None`).
const NO_TOOLS: &[&str] = &[
    "system_user/agp=true",
    "system_user/agp=false",
    "multi_turn/agp=true",
    "reasoning/agp=true",
    "thinking_disabled/agp=true",
];

/// minijinja iterates `none` as an empty sequence (hard-coded in `Value::try_iter`); Jinja2
/// raises `TypeError: 'NoneType' object is not iterable`. These tool-use-only templates loop
/// over `tools` unguarded, so without tools kooka renders an empty tool list instead of failing.
const NONE_ITERATES: &str =
    "minijinja iterates none as empty; jinja2 raises (template needs tools)";

/// (template file, cases, why kooka differs). Keep this short: fix kooka instead.
const KNOWN_FAILURES: &[(&str, &[&str], &str)] = &[
    (
        "CohereForAI-c4ai-command-r-plus-tool_use.jinja",
        NO_TOOLS,
        NONE_ITERATES,
    ),
    (
        "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja",
        NO_TOOLS,
        NONE_ITERATES,
    ),
    (
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja",
        NO_TOOLS,
        NONE_ITERATES,
    ),
    (
        "meetkai-functionary-medium-v3.1.jinja",
        &[
            "tools_offered/agp=true",
            "tool_calls/agp=true",
            "tool_calls_string_args/agp=true",
            "unicode/agp=true",
        ],
        "Jinja2's `'...'|safe + x` is Markup.__add__, which HTML-escapes x (the tool JSON becomes \
         `{&#34;name&#34;...`); minijinja has no hook on `+` and concatenates plainly",
    ),
    (
        "deepseek-ai-DeepSeek-V3.2.jinja",
        &["tool_calls_string_args/agp=true"],
        FROM_JSON,
    ),
    (
        "deepseek-ai-DeepSeek-V4.jinja",
        &["tool_calls_string_args/agp=true"],
        FROM_JSON,
    ),
    (
        "deepseek-ai-DeepSeek-V4-Flash-0731.jinja",
        &["tool_calls_string_args/agp=true"],
        FROM_JSON,
    ),
    ("Kimi-K2-Instruct.jinja", KIMI_CASES, KIMI_APPEND),
    ("Kimi-K2-Thinking.jinja", KIMI_CASES, KIMI_APPEND),
];

/// DeepSeek-V3.2 and V4 parse string tool-call arguments with llama.cpp's `from_json`.
const FROM_JSON: &str =
    "transformers has no `from_json` filter; kooka has llama.cpp's (DeepSeek-V3.2 \
     and V4 apply it to string tool-call arguments)";

/// The Kimi-K2 cases with an assistant turn (its call ids are queued with `list.append`).
const KIMI_CASES: &[&str] = &[
    "tool_calls/agp=true",
    "tool_calls_string_args/agp=true",
    "unicode/agp=true",
];
const KIMI_APPEND: &str = "jinja2's immutable sandbox refuses `list.append`; kooka rewrites \
     `set _ = ns.xs.append(v)` / `ns.xs.pop(0)` (src/chat/template.rs) so Kimi-K2's tool-call \
     history renders";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs the reference (transformers' own renderer, from the test venv) into the target dir.
fn render_expected() -> PathBuf {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("templates-expected.json");
    let python = root().join("third_party/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh --tests",
        python.display()
    );
    let status = std::process::Command::new(&python)
        .arg(root().join("tests/python/render_templates.py"))
        .arg(&out)
        .status()
        .expect("running tests/python/render_templates.py");
    assert!(status.success(), "tests/python/render_templates.py failed");
    out
}

/// The fingerprint `render_templates.py` stores for each template.
fn fnv1a64(data: &[u8]) -> String {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
    }
    format!("{h:016x}")
}

/// One (conversation, add_generation_prompt) case, named as the Python side names it.
struct Case {
    name: String,
    messages: Vec<Value>,
    tools: Option<Vec<Value>>,
    add_generation_prompt: bool,
    kwargs: Map<String, Value>,
}

fn cases(fixture: &Value) -> Vec<Case> {
    let mut out = Vec::new();
    for conv in fixture["conversations"].as_array().unwrap() {
        let tools = conv
            .get("tools")
            .map(|key| fixture[key.as_str().unwrap()].as_array().unwrap().clone());
        for agp in conv["add_generation_prompt"].as_array().unwrap() {
            let agp = agp.as_bool().unwrap();
            out.push(Case {
                name: format!("{}/agp={agp}", conv["name"].as_str().unwrap()),
                messages: conv["messages"].as_array().unwrap().clone(),
                tools: tools.clone(),
                add_generation_prompt: agp,
                kwargs: conv
                    .get("kwargs")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
            });
        }
    }
    out
}

/// The first difference between two renders, with a little context.
fn first_difference(want: &str, got: &str) -> String {
    let at = want
        .bytes()
        .zip(got.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let from = want[..at]
        .char_indices()
        .rev()
        .nth(40)
        .map_or(0, |(i, _)| i);
    let clip = |s: &str| {
        s.get(from..)
            .unwrap_or("")
            .chars()
            .take(120)
            .collect::<String>()
    };
    format!(
        "at byte {at}:\n      want {:?}\n      got  {:?}",
        clip(want),
        clip(got)
    )
}

#[test]
fn templates_match_transformers() {
    let dir = root().join("third_party/llama.cpp/templates");
    assert!(
        dir.is_dir(),
        "{} is missing: run scripts/setup.sh --tests",
        dir.display()
    );
    let fixture = read_json(&root().join("tests/fixtures/chat/conversations.json"));
    let expected = read_json(&render_expected());
    let now = NaiveDateTime::parse_from_str(
        expected["frozen_now"].as_str().unwrap(),
        "%Y-%m-%dT%H:%M:%S",
    )
    .unwrap();
    let special = SpecialTokens {
        bos: expected["bos_token"].as_str().map(String::from),
        eos: expected["eos_token"].as_str().map(String::from),
        ..Default::default()
    };
    let cases = cases(&fixture);

    let (mut identical, mut renders, mut refusals_agreed, mut refusals) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    let mut known_seen = Vec::new();
    for (file, entry) in expected["templates"].as_object().unwrap() {
        let source = std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}: run scripts/setup.sh --tests"));
        assert_eq!(
            entry["fnv1a64"].as_str().unwrap(),
            fnv1a64(source.as_bytes()),
            "{file} changed since expected.json was written: run tests/python/render_templates.py"
        );
        let template = ChatTemplate::new(&source, special.clone()).map(|t| t.with_frozen_now(now));
        for case in &cases {
            let want = &entry["cases"][&case.name];
            let got = template.as_ref().map_err(|e| e.to_string()).and_then(|t| {
                t.render(
                    &case.messages,
                    case.tools.as_deref(),
                    case.add_generation_prompt,
                    &case.kwargs,
                )
                .map_err(|e| e.to_string())
            });
            let known = KNOWN_FAILURES
                .iter()
                .find(|(f, c, _)| f == file && c.contains(&case.name.as_str()));
            let problem = match (want.get("ok").and_then(Value::as_str), &got) {
                (Some(want), Ok(got)) => {
                    renders += 1;
                    if want == got {
                        identical += 1;
                        None
                    } else {
                        Some(first_difference(want, got))
                    }
                }
                (Some(_), Err(e)) => {
                    renders += 1;
                    Some(format!("kooka failed where jinja2 rendered: {e}"))
                }
                (None, Err(_)) => {
                    refusals += 1;
                    refusals_agreed += 1;
                    None
                }
                (None, Ok(_)) => {
                    refusals += 1;
                    Some(format!(
                        "jinja2 failed ({}) but kooka rendered",
                        want["error"]
                    ))
                }
            };
            match (problem, known) {
                (Some(_), Some(_)) => known_seen.push((file.clone(), case.name.clone())),
                (Some(p), None) => failures.push(format!("{file} {}: {p}", case.name)),
                (None, Some(_)) => failures.push(format!(
                    "{file} {}: passes now; drop it from KNOWN_FAILURES",
                    case.name
                )),
                (None, None) => {}
            }
        }
    }
    println!("templates: {identical}/{renders} renders identical");
    println!("templates: {refusals_agreed}/{refusals} jinja2 errors also errors in kooka");
    println!("templates: {} known failures", known_seen.len());
    assert!(
        failures.is_empty(),
        "{} unexpected differences:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
