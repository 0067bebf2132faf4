//! Chooses the tool-call parser for a model, from `tokenizer_config.json`'s
//! `tool_parser_type` or from the chat template's own markup, and says why (log it: a wrong
//! parser silently turns tool calls into text).
//!
//! The template wins over the config in two cases: a template that writes `<function=` and
//! `<parameter=` is qwen3_coder even if the config says json_tools (NVIDIA Nemotron ships
//! exactly that mismatch), and a harmony template (gpt-oss) is harmony whatever the config
//! says (its reasoning and calls can be read no other way).

use serde_json::Value;

/// The wire formats kooka parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParserKind {
    /// `<tool_call>{json}</tool_call>` (Hermes, Qwen2.5, SmolLM3).
    JsonTools,
    /// `<tool_call><function=..><parameter=..>` (Qwen3-Coder, Nemotron).
    Qwen3Coder,
    /// `<minimax:tool_call><invoke name=..>` (MiniMax-M2).
    MinimaxM2,
    /// `<tool_call>NAME<arg_key>..</arg_key><arg_value>..</arg_value>` (GLM-4.5 to 4.7).
    Glm45,
    /// `[TOOL_CALLS]...` (Mistral).
    Mistral,
    /// A bare `{"name":..,"parameters":..}` reply (Llama 3.x).
    Llama3Json,
    /// `<|tool_call_start|>[f(a=1)]<|tool_call_end|>` (LFM2).
    Pythonic,
    /// `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{json}...` (DeepSeek-V3.1), or
    /// `function<｜tool▁sep｜>NAME` + a fenced JSON block (DeepSeek-V3 0324, R1).
    Deepseek,
    /// `<｜DSML｜function_calls><｜DSML｜invoke name="NAME"><｜DSML｜parameter name="K"
    /// string="true|false">V</｜DSML｜parameter>...` (DeepSeek-V3.2).
    DeepseekV32,
    /// `<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:IDX
    /// <|tool_call_argument_begin|>{json}<|tool_call_end|>...` (Kimi-K2).
    KimiK2,
    /// gpt-oss's harmony channels: `<|channel|>commentary to=functions.NAME<|message|>{json}`,
    /// with the reasoning on the `analysis` channel (it replaces the `<think>` splitter too).
    Harmony,
}

impl ParserKind {
    /// The name used in configs and logs.
    pub fn name(self) -> &'static str {
        match self {
            ParserKind::JsonTools => "json_tools",
            ParserKind::Qwen3Coder => "qwen3_coder",
            ParserKind::MinimaxM2 => "minimax_m2",
            ParserKind::Glm45 => "glm45",
            ParserKind::Mistral => "mistral",
            ParserKind::Llama3Json => "llama3_json",
            ParserKind::Pythonic => "pythonic",
            ParserKind::Deepseek => "deepseek",
            ParserKind::DeepseekV32 => "deepseek_v32",
            ParserKind::KimiK2 => "kimi_k2",
            ParserKind::Harmony => "harmony",
        }
    }

    /// Parses a configured name (also the common aliases other servers use).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(
            match name.trim().to_ascii_lowercase().replace('-', "_").as_str() {
                "json_tools" | "hermes" | "qwen" | "qwen2_5" | "json" => ParserKind::JsonTools,
                "qwen3_coder" | "qwen3coder" | "nemotron" => ParserKind::Qwen3Coder,
                "minimax_m2" | "minimax" => ParserKind::MinimaxM2,
                "glm45" | "glm4_moe" | "glm4.5" | "glm47" | "glm" => ParserKind::Glm45,
                "mistral" => ParserKind::Mistral,
                "llama3_json" | "llama3" | "llama" | "llama3.1" => ParserKind::Llama3Json,
                "pythonic" | "lfm2" => ParserKind::Pythonic,
                "deepseek" | "deepseek_v3" | "deepseek_v31" | "deepseek_v3.1" | "deepseekv3"
                | "deepseekv31" | "deepseek_r1" => ParserKind::Deepseek,
                "deepseek_v32" | "deepseek_v3.2" | "deepseekv32" | "dsml" => {
                    ParserKind::DeepseekV32
                }
                "kimi_k2" | "kimi" | "kimik2" => ParserKind::KimiK2,
                "harmony" | "gpt_oss" | "gptoss" | "openai" => ParserKind::Harmony,
                _ => return None,
            },
        )
    }
}

/// Infers the parser from the template's markup, most specific first.
fn from_template(template: &str) -> Option<(ParserKind, &'static str)> {
    let has = |s: &str| template.contains(s);
    if has("<|channel|>") && has("<|message|>") {
        return Some((
            ParserKind::Harmony,
            "the chat template writes harmony's <|channel|> ... <|message|> (gpt-oss)",
        ));
    }
    if has("｜DSML｜") && has("function_calls>") {
        return Some((
            ParserKind::DeepseekV32,
            "the chat template writes DeepSeek-V3.2's <｜DSML｜function_calls>",
        ));
    }
    if has("<｜tool▁call▁begin｜>") && has("<｜tool▁sep｜>") {
        return Some((
            ParserKind::Deepseek,
            "the chat template writes DeepSeek's <｜tool▁call▁begin｜>...<｜tool▁sep｜>",
        ));
    }
    if has("<|tool_call_argument_begin|>") || has("<|tool_calls_section_begin|>") {
        return Some((
            ParserKind::KimiK2,
            "the chat template writes Kimi-K2's <|tool_calls_section_begin|> / <|tool_call_argument_begin|>",
        ));
    }
    if has("<function=") && has("<parameter=") {
        return Some((
            ParserKind::Qwen3Coder,
            "the chat template writes <function=...><parameter=...>",
        ));
    }
    if has("<minimax:tool_call>") {
        return Some((
            ParserKind::MinimaxM2,
            "the chat template writes <minimax:tool_call>",
        ));
    }
    if has("<arg_key>") && has("<arg_value>") {
        return Some((
            ParserKind::Glm45,
            "the chat template writes <tool_call>NAME<arg_key>...<arg_value>",
        ));
    }
    if has("[TOOL_CALLS]") {
        return Some((ParserKind::Mistral, "the chat template writes [TOOL_CALLS]"));
    }
    if has("<|tool_call_start|>") || has("<|tool_list_start|>") {
        return Some((
            ParserKind::Pythonic,
            "the chat template writes LFM2's <|tool_call_start|> / <|tool_list_start|>",
        ));
    }
    if has("<tool_call>") {
        return Some((
            ParserKind::JsonTools,
            "the chat template writes <tool_call>",
        ));
    }
    if has("<|python_tag|>") || has("\"parameters\": ") {
        return Some((
            ParserKind::Llama3Json,
            "the chat template writes Llama 3 JSON calls (<|python_tag|> / \"parameters\")",
        ));
    }
    None
}

/// Picks the parser: `tokenizer_config` (`tool_parser_type`) unless the template proves it
/// wrong (the Nemotron rule, and harmony), else the template's markup. `None`: no known tool-call format
/// (serve without tool parsing). The string says why, for the startup log.
pub fn select_parser(
    tokenizer_config: Option<&Value>,
    chat_template: Option<&str>,
) -> (Option<ParserKind>, String) {
    let inferred = chat_template.and_then(from_template);
    let configured = tokenizer_config
        .and_then(|c| c.get("tool_parser_type"))
        .and_then(Value::as_str);
    if let Some(name) = configured {
        match (ParserKind::from_name(name), inferred) {
            (Some(kind), Some((wins @ (ParserKind::Qwen3Coder | ParserKind::Harmony), why)))
                if kind != wins =>
            {
                return (
                    Some(wins),
                    format!(
                        "tokenizer_config.json says tool_parser_type={name:?}, but {why}: using {}",
                        wins.name()
                    ),
                );
            }
            (Some(kind), _) => {
                return (
                    Some(kind),
                    format!("tokenizer_config.json says tool_parser_type={name:?}"),
                );
            }
            (None, _) => {
                if let Some((kind, why)) = inferred {
                    let why = format!(
                        "unknown tool_parser_type={name:?} in tokenizer_config.json; {why}"
                    );
                    return (Some(kind), why);
                }
                return (None, format!("unknown tool_parser_type={name:?} and no tool-call markup in the chat template"));
            }
        }
    }
    match inferred {
        Some((kind, why)) => (Some(kind), why.to_string()),
        None => (
            None,
            "no tool_parser_type and no known tool-call markup in the chat template".to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harmony_is_named_and_inferred() {
        for name in ["harmony", "gpt_oss", "gpt-oss", "openai", "Harmony"] {
            assert_eq!(
                ParserKind::from_name(name),
                Some(ParserKind::Harmony),
                "{name}"
            );
        }
        assert_eq!(ParserKind::Harmony.name(), "harmony");
        let template = "{{- '<|start|>assistant<|channel|>final<|message|>' + m.content }}";
        assert_eq!(
            select_parser(None, Some(template)).0,
            Some(ParserKind::Harmony)
        );
        // The template wins over a config that names another format.
        let config = serde_json::json!({"tool_parser_type": "json_tools"});
        assert_eq!(
            select_parser(Some(&config), Some(template)).0,
            Some(ParserKind::Harmony)
        );
        // `<|message|>` alone (other `<|start|>` templates) is not harmony.
        assert_eq!(
            select_parser(None, Some("<|start|>user<|message|>{{ c }}<|end|>")).0,
            None
        );
    }

    /// gpt-oss's own template (`third_party/llama.cpp/templates`, from
    /// `scripts/setup.sh --tests`).
    #[test]
    fn gpt_oss_template_is_harmony() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("third_party/llama.cpp/templates/openai-gpt-oss-120b.jinja");
        let Ok(source) = std::fs::read_to_string(&path) else {
            eprintln!(
                "skipped: {} is missing (run scripts/setup.sh --tests)",
                path.display()
            );
            return;
        };
        let (kind, why) = select_parser(None, Some(&source));
        assert_eq!(kind, Some(ParserKind::Harmony), "{why}");
    }

    #[test]
    fn deepseek_and_kimi_are_named() {
        for name in ["deepseek", "deepseek_v3", "deepseek-v31", "DeepSeek_V3"] {
            assert_eq!(
                ParserKind::from_name(name),
                Some(ParserKind::Deepseek),
                "{name}"
            );
        }
        for name in ["kimi_k2", "kimi", "Kimi-K2"] {
            assert_eq!(
                ParserKind::from_name(name),
                Some(ParserKind::KimiK2),
                "{name}"
            );
        }
        assert_eq!(ParserKind::Deepseek.name(), "deepseek");
        assert_eq!(ParserKind::KimiK2.name(), "kimi_k2");
    }

    /// DeepSeek's and Kimi-K2's own templates (`third_party/llama.cpp/templates`, from
    /// `scripts/setup.sh --tests`).
    #[test]
    fn deepseek_and_kimi_templates() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("third_party/llama.cpp/templates");
        for (file, want) in [
            ("deepseek-ai-DeepSeek-V3.1.jinja", ParserKind::Deepseek),
            (
                "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
                ParserKind::Deepseek,
            ),
            (
                "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
                ParserKind::Deepseek,
            ),
            ("llama-cpp-deepseek-r1.jinja", ParserKind::Deepseek),
            ("deepseek-ai-DeepSeek-V3.2.jinja", ParserKind::DeepseekV32),
            ("Kimi-K2-Instruct.jinja", ParserKind::KimiK2),
            ("Kimi-K2-Thinking.jinja", ParserKind::KimiK2),
            ("moonshotai-Kimi-K2.jinja", ParserKind::KimiK2),
        ] {
            let path = dir.join(file);
            let Ok(source) = std::fs::read_to_string(&path) else {
                eprintln!(
                    "skipped: {} is missing (run scripts/setup.sh --tests)",
                    path.display()
                );
                continue;
            };
            let (kind, why) = select_parser(None, Some(&source));
            assert_eq!(kind, Some(want), "{file}: {why}");
        }
    }
}
