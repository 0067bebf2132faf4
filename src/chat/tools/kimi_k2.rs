//! Kimi-K2 tool calls: `<|tool_calls_section_begin|>`, then per call
//! `<|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>{json}<|tool_call_end|>`,
//! then `<|tool_calls_section_end|>` (all special tokens). The model's `functions.NAME:IDX`
//! is kept as the call id (its template writes it back in tool results), and NAME is read
//! from it. Calls are announced when the section closes (or at the end of the reply); a
//! section that does not parse is given back as content.

use serde_json::Value;

use super::scan::BlockParser;
use super::{arguments_object, CallCounter, ParseEvent};

pub(crate) const SECTION_BEGIN: &str = "<|tool_calls_section_begin|>";
pub(crate) const SECTION_END: &str = "<|tool_calls_section_end|>";
pub(crate) const CALL_BEGIN: &str = "<|tool_call_begin|>";
pub(crate) const ARGS_BEGIN: &str = "<|tool_call_argument_begin|>";
pub(crate) const CALL_END: &str = "<|tool_call_end|>";

/// The Kimi-K2 call blocks' parser: the shared block scanner with this format's body reader.
pub(crate) fn parser() -> BlockParser {
    BlockParser::new(SECTION_BEGIN, Some(SECTION_END), parse_body)
}

/// The calls of one section; `None` if any is malformed (the section is then content).
fn parse_body(body: &str, calls: &mut CallCounter) -> Option<Vec<ParseEvent>> {
    let mut out = Vec::new();
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        let after = rest.strip_prefix(CALL_BEGIN)?;
        // The last call may lack its end tag when the reply stopped early.
        let (call, next) = after.split_once(CALL_END).unwrap_or((after, ""));
        let (id, args) = call.split_once(ARGS_BEGIN)?;
        let id = id.trim();
        let name = name_of(id)?;
        let value: Value = serde_json::from_str(args.trim()).ok()?;
        let args = arguments_object(Some(&value))?;
        out.extend(calls.whole(name, Some(id.to_string()), &args));
        rest = next.trim_start();
    }
    Some(out)
}

/// NAME from `functions.NAME:IDX` (the prefix and the index are optional).
fn name_of(id: &str) -> Option<&str> {
    let name = match id.rsplit_once(':') {
        Some((name, idx)) if idx.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => id,
    };
    let name = name.strip_prefix("functions.").unwrap_or(name);
    (!name.is_empty() && !name.contains(char::is_whitespace)).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::tools::{ParsedReply, ToolCall, ToolParser};
    use serde_json::json;

    fn run(text: &str, cuts: &[usize]) -> ParsedReply {
        let mut p = parser();
        let mut reply = ParsedReply::default();
        let mut from = 0;
        for &cut in cuts.iter().chain([text.len()].iter()) {
            reply.extend(p.push(&text[from..cut]));
            from = cut;
        }
        reply.extend(p.finish());
        reply
    }

    /// The same reply whole, split at every char boundary, and one char at a time.
    fn check(text: &str, content: &str, calls: Vec<(&str, &str, Value)>) {
        let want = ParsedReply {
            content: content.to_string(),
            tool_calls: calls
                .into_iter()
                .map(|(id, name, args)| ToolCall {
                    id: id.to_string(),
                    name: name.to_string(),
                    arguments: args.to_string(),
                })
                .collect(),
        };
        assert_eq!(run(text, &[]), want, "{text:?}");
        for cut in (1..text.len()).filter(|&i| text.is_char_boundary(i)) {
            assert_eq!(run(text, &[cut]), want, "cut at {cut}: {text:?}");
        }
        let cuts: Vec<usize> = text.char_indices().map(|(i, _)| i).skip(1).collect();
        assert_eq!(run(text, &cuts), want);
    }

    #[test]
    fn calls() {
        check(
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"city\": \"Paris\"}<|tool_call_end|><|tool_calls_section_end|>",
            "",
            vec![("functions.get_weather:0", "get_weather", json!({"city": "Paris"}))],
        );
        check(
            "I'll look both up.<|tool_calls_section_begin|>\n<|tool_call_begin|>functions.get_weather:3<|tool_call_argument_begin|>{\"city\": \"Paris\", \"days\": 2}<|tool_call_end|>\n<|tool_call_begin|>functions.now:4<|tool_call_argument_begin|>{}<|tool_call_end|>\n<|tool_calls_section_end|>",
            "I'll look both up.",
            vec![
                ("functions.get_weather:3", "get_weather", json!({"city": "Paris", "days": 2})),
                ("functions.now:4", "now", json!({})),
            ],
        );
        // Stopped before the end tags.
        check(
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.now:0<|tool_call_argument_begin|>{}",
            "",
            vec![("functions.now:0", "now", json!({}))],
        );
    }

    #[test]
    fn malformed_is_content() {
        let bad = "x<|tool_calls_section_begin|><|tool_call_begin|>functions.now:0<|tool_call_argument_begin|>{oops}<|tool_call_end|><|tool_calls_section_end|>y";
        check(bad, bad, vec![]);
        let no_args = "<|tool_calls_section_begin|><|tool_call_begin|>functions.now:0<|tool_call_end|><|tool_calls_section_end|>";
        check(no_args, no_args, vec![]);
        assert_eq!(name_of("functions.a.b:12"), Some("a.b"));
        assert_eq!(name_of("now"), Some("now"));
        assert_eq!(name_of("functions.:0"), None);
    }
}
