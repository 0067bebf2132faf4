//! DeepSeek tool calls, in one `<｜tool▁calls▁begin｜>` ... `<｜tool▁calls▁end｜>` block (the
//! bars are fullwidth `｜`, the spaces `▁`; all these tags are special tokens), each call in
//! `<｜tool▁call▁begin｜>` ... `<｜tool▁call▁end｜>`, in either of two shapes:
//!
//! - V3.1 / V3.1-Terminus: `NAME<｜tool▁sep｜>{json arguments}`;
//! - V3 (0324) / R1: `function<｜tool▁sep｜>NAME\n```json\n{json arguments}\n```` `.
//!
//! Calls are announced when the block closes (or at the end of the reply, if the model stops
//! before `<｜tool▁calls▁end｜>`); a block that does not parse is given back as content.
//! (DeepSeek-V3.2's own template writes its `<｜DSML｜function_calls>` markup instead, which
//! this parser does not read.)

use serde_json::Value;

use super::scan::BlockParser;
use super::{arguments_object, CallCounter, ParseEvent};

pub(crate) const CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
pub(crate) const CALLS_END: &str = "<｜tool▁calls▁end｜>";
pub(crate) const CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
pub(crate) const CALL_END: &str = "<｜tool▁call▁end｜>";
pub(crate) const SEP: &str = "<｜tool▁sep｜>";

/// The DeepSeek call blocks' parser: the shared block scanner with this format's body reader.
pub(crate) fn parser() -> BlockParser {
    BlockParser::new(CALLS_BEGIN, Some(CALLS_END), parse_body)
}

/// The calls of one block; `None` if any is malformed (the block is then content).
fn parse_body(body: &str, calls: &mut CallCounter) -> Option<Vec<ParseEvent>> {
    let mut out = Vec::new();
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        let after = rest.strip_prefix(CALL_BEGIN)?;
        // The last call may lack its end tag when the reply stopped early.
        let (call, next) = after.split_once(CALL_END).unwrap_or((after, ""));
        let (name, args) = parse_call(call)?;
        out.extend(calls.whole(&name, None, &args));
        rest = next.trim_start();
    }
    Some(out)
}

/// One call's name and arguments object.
fn parse_call(call: &str) -> Option<(String, Value)> {
    let (head, tail) = call.split_once(SEP)?;
    let head = head.trim();
    // V3 / R1: `function<｜tool▁sep｜>NAME\n```json\n{...}\n```` `.
    if head == "function" {
        if let Some((name, fenced)) = tail.split_once('\n') {
            let fenced = fenced.trim();
            if let Some(inner) = fenced.strip_prefix("```") {
                let inner = inner.strip_prefix("json").unwrap_or(inner);
                let inner = inner.trim_end().strip_suffix("```")?;
                return named(name, inner);
            }
        }
    }
    // V3.1: `NAME<｜tool▁sep｜>{...}`.
    named(head, tail)
}

fn named(name: &str, args: &str) -> Option<(String, Value)> {
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    let value: Value = serde_json::from_str(args.trim()).ok()?;
    Some((name.to_string(), arguments_object(Some(&value))?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::tools::{ParsedReply, ToolParser};
    use serde_json::json;

    /// (content, [(name, arguments)]) of `text` fed in pieces split at `cuts`.
    fn run(text: &str, cuts: &[usize]) -> (String, Vec<(String, Value)>) {
        let mut p = parser();
        let mut reply = ParsedReply::default();
        let mut from = 0;
        for &cut in cuts.iter().chain([text.len()].iter()) {
            reply.extend(p.push(&text[from..cut]));
            from = cut;
        }
        reply.extend(p.finish());
        let calls = reply
            .tool_calls
            .into_iter()
            .map(|c| {
                assert!(c.id.starts_with("call_"));
                (c.name, serde_json::from_str(&c.arguments).unwrap())
            })
            .collect();
        (reply.content, calls)
    }

    /// The same reply whole, and split at every char boundary.
    fn check(text: &str, content: &str, calls: Vec<(&str, Value)>) {
        let want: Vec<(String, Value)> =
            calls.into_iter().map(|(n, a)| (n.to_string(), a)).collect();
        assert_eq!(
            run(text, &[]),
            (content.to_string(), want.clone()),
            "{text:?}"
        );
        for cut in (1..text.len()).filter(|&i| text.is_char_boundary(i)) {
            assert_eq!(
                run(text, &[cut]),
                (content.to_string(), want.clone()),
                "cut at {cut}: {text:?}"
            );
        }
        // And one char at a time.
        let cuts: Vec<usize> = text.char_indices().map(|(i, _)| i).skip(1).collect();
        assert_eq!(run(text, &cuts), (content.to_string(), want));
    }

    #[test]
    fn v31_calls() {
        check(
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
            "",
            vec![("get_weather", json!({"city": "Paris"}))],
        );
        check(
            "Let me check both.\n\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\", \"days\": 2}<｜tool▁call▁end｜><｜tool▁call▁begin｜>now<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
            "Let me check both.\n\n",
            vec![
                ("get_weather", json!({"city": "Paris", "days": 2})),
                ("now", json!({})),
            ],
        );
        // Stopped before the end tags; arguments as a JSON-encoded string (the template's
        // `tojson` of a string).
        check(
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>\"{\\\"city\\\": \\\"Oslo\\\"}\"",
            "",
            vec![("get_weather", json!({"city": "Oslo"}))],
        );
    }

    #[test]
    fn r1_calls() {
        check(
            "Sure.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>now\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
            "Sure.",
            vec![("get_weather", json!({"city": "Paris"})), ("now", json!({}))],
        );
    }

    #[test]
    fn malformed_is_content() {
        let bad = "Hi <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": <｜tool▁call▁end｜><｜tool▁calls▁end｜> bye";
        check(bad, bad, vec![]);
        let no_sep = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather {}<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
        check(no_sep, no_sep, vec![]);
        // A lone fullwidth bar is text.
        check("a ｜ b <｜", "a ｜ b <｜", vec![]);
    }
}
