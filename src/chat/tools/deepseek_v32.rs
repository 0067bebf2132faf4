//! DeepSeek-V3.2 tool calls ("DSML"): `<｜DSML｜function_calls>`, then per call
//! `<｜DSML｜invoke name="NAME">` with `<｜DSML｜parameter name="KEY" string="true|false">VALUE
//! </｜DSML｜parameter>` parameters and `</｜DSML｜invoke>`, then `</｜DSML｜function_calls>`
//! (the bars are fullwidth `｜`). Values are raw text for strings and JSON otherwise (the
//! `string` attribute says which), typed by the tool's schema like the other XML-ish formats;
//! a call is announced as soon as its name is known and its parameters stream one by one.

use super::xml_calls::{Syntax, XmlCallParser};
use super::{ParseEvent, ToolParser, ToolSchemas};

const SYNTAX: Syntax = Syntax {
    block: ("<｜DSML｜function_calls>", "</｜DSML｜function_calls>"),
    function: ("<｜DSML｜invoke name=\"", "\">", Some("</｜DSML｜invoke>")),
    parameter: ("<｜DSML｜parameter name=\"", "\"", "</｜DSML｜parameter>"),
    name_stops: &[],
    value_open: &["string=\"true\">", "string=\"false\">", ">"],
};

/// The DeepSeek-V3.2 parser.
#[derive(Debug)]
pub struct DeepseekV32Parser(XmlCallParser);

impl DeepseekV32Parser {
    pub fn new(schemas: ToolSchemas) -> Self {
        DeepseekV32Parser(XmlCallParser::new(SYNTAX, schemas, None))
    }
}

impl ToolParser for DeepseekV32Parser {
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
    use crate::chat::tools::ParsedReply;
    use serde_json::{json, Value};

    fn schemas() -> ToolSchemas {
        ToolSchemas::new(&[
            json!({"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string"}, "days": {"type": "integer"},
                "tags": {"type": "array"}}}}}),
        ])
    }

    fn run(text: &str, cuts: &[usize]) -> (String, Vec<(String, Value)>) {
        let mut p = DeepseekV32Parser::new(schemas());
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
            .map(|c| (c.name, serde_json::from_str(&c.arguments).unwrap()))
            .collect();
        (reply.content, calls)
    }

    #[test]
    fn calls_at_every_split() {
        let text = "Checking.\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\" string=\"true\">São Paulo</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n<｜DSML｜parameter name=\"tags\" string=\"false\">[\"a\", 1]</｜DSML｜parameter>\n</｜DSML｜invoke>\n<｜DSML｜invoke name=\"get_weather\">\n</｜DSML｜invoke>\n</｜DSML｜function_calls>";
        let want = (
            "Checking.\n\n".to_string(),
            vec![
                (
                    "get_weather".to_string(),
                    json!({"city": "São Paulo", "days": 3, "tags": ["a", 1]}),
                ),
                ("get_weather".to_string(), json!({})),
            ],
        );
        assert_eq!(run(text, &[]), want);
        for cut in (1..text.len()).filter(|&i| text.is_char_boundary(i)) {
            assert_eq!(run(text, &[cut]), want, "cut at {cut}");
        }
        let cuts: Vec<usize> = text.char_indices().map(|(i, _)| i).skip(1).collect();
        assert_eq!(run(text, &cuts), want);
    }

    #[test]
    fn a_block_without_calls_is_content() {
        let bad = "<｜DSML｜function_calls>\nnot a call\n</｜DSML｜function_calls>";
        assert_eq!(run(bad, &[]), (bad.to_string(), vec![]));
    }
}
