//! Qwen3-Coder / Nemotron tool calls:
//! `<tool_call><function=NAME><parameter=KEY>VALUE</parameter>...</function></tool_call>`,
//! values typed by the tool's JSON schema.

use super::xml_calls::{Syntax, XmlCallParser};
use super::{ParseEvent, ToolParser, ToolSchemas};

const SYNTAX: Syntax = Syntax {
    block: ("<tool_call>", "</tool_call>"),
    function: ("<function=", ">", Some("</function>")),
    parameter: ("<parameter=", ">", "</parameter>"),
    name_stops: &[],
    value_open: &[],
};

/// The Qwen3-Coder XML parser.
#[derive(Debug)]
pub struct Qwen3CoderParser(XmlCallParser);

impl Qwen3CoderParser {
    pub fn new(schemas: ToolSchemas) -> Self {
        Qwen3CoderParser(XmlCallParser::new(SYNTAX, schemas, None))
    }
}

impl ToolParser for Qwen3CoderParser {
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
