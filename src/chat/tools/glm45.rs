//! GLM-4.5 / 4.6 / 4.7 tool calls: `<tool_call>NAME` then `<arg_key>KEY</arg_key>`
//! `<arg_value>VALUE</arg_value>` pairs, then `</tool_call>`; one call per block. 4.5 and 4.6
//! put each tag on its own line, 4.7 writes them without newlines; both are read. Values are raw text for strings and JSON otherwise (the template's `tojson`), typed
//! by the schema like the other XML-ish formats.

use super::xml_calls::{Syntax, XmlCallParser};
use super::{ParseEvent, ToolParser, ToolSchemas};

const SYNTAX: Syntax = Syntax {
    block: ("<tool_call>", "</tool_call>"),
    function: ("", "\n", None),
    parameter: ("<arg_key>", "</arg_key>", "</arg_value>"),
    // GLM-4.7 writes the same without newlines: `<tool_call>NAME<arg_key>..`.
    name_stops: &["<arg_key>"],
    value_open: &["<arg_value>"],
};

/// The GLM-4.5 parser.
#[derive(Debug)]
pub struct Glm45Parser(XmlCallParser);

impl Glm45Parser {
    pub fn new(schemas: ToolSchemas) -> Self {
        Glm45Parser(XmlCallParser::new(SYNTAX, schemas, None))
    }
}

impl ToolParser for Glm45Parser {
    fn push(&mut self, text_delta: &str) -> Vec<ParseEvent> {
        self.0.push(text_delta)
    }

    fn finish(&mut self) -> Vec<ParseEvent> {
        self.0.finish()
    }

    fn finish_cut(&mut self) -> Vec<ParseEvent> {
        self.0.finish_cut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn schemas() -> ToolSchemas {
        ToolSchemas::new(&[
            json!({"type": "function", "function": {"name": "add", "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "note": {"type": "string"},
                           "tags": {"type": "array"}}}}}),
        ])
    }

    /// Every call's (name, arguments) and the content, the text fed `step` bytes at a time.
    fn run(text: &str, step: usize) -> (Vec<(String, Value)>, String) {
        let mut p = Glm45Parser::new(schemas());
        let mut events = Vec::new();
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let mut j = (i + step).min(bytes.len());
            while !text.is_char_boundary(j) {
                j += 1;
            }
            events.extend(p.push(&text[i..j]));
            i = j;
        }
        events.extend(p.finish());
        let (mut calls, mut args, mut content) = (Vec::new(), Vec::<String>::new(), String::new());
        for e in events {
            match e {
                ParseEvent::Content(t) => content.push_str(&t),
                ParseEvent::ToolCallStart { name, .. } => {
                    calls.push(name);
                    args.push(String::new());
                }
                ParseEvent::ToolCallArgsDelta { index, delta } => args[index].push_str(&delta),
                _ => {}
            }
        }
        let parsed = calls
            .into_iter()
            .zip(args)
            .map(|(n, a)| (n, serde_json::from_str(&a).expect("arguments are JSON")))
            .collect();
        (parsed, content)
    }

    #[test]
    fn calls_are_parsed_at_every_split() {
        let text = "Sure.\n<tool_call>add\n<arg_key>a</arg_key>\n<arg_value>2</arg_value>\n\
                    <arg_key>note</arg_key>\n<arg_value>two < three</arg_value>\n\
                    <arg_key>tags</arg_key>\n<arg_value>[\"x\"]</arg_value>\n</tool_call>\
                    \n<tool_call>add\n</tool_call>";
        let compact = text
            .replace("add\n<arg", "add<arg")
            .replace(">\n<", "><")
            .replace("add\n</tool_call>", "add</tool_call>");
        for text in [text, compact.as_str()] {
            for step in [1, 2, 3, 7, text.len()] {
                let (calls, content) = run(text, step);
                assert_eq!(content.trim(), "Sure.", "step {step}");
                assert_eq!(
                    calls,
                    vec![
                        (
                            "add".to_string(),
                            json!({"a": 2, "note": "two < three", "tags": ["x"]})
                        ),
                        ("add".to_string(), json!({})),
                    ],
                    "step {step}: {text:?}"
                );
            }
        }
    }
}
