//! MiniMax-M2 / M2.1 tool calls: `<minimax:tool_call>` then one or more
//! `<invoke name="N"><parameter name="P">value</parameter></invoke>`, then
//! `</minimax:tool_call>`; values typed by the schema and repaired by [`super::fixes`].

use super::xml_calls::{Syntax, XmlCallParser};
use super::{fixes, ParseEvent, ToolParser, ToolSchemas};

const SYNTAX: Syntax = Syntax {
    block: ("<minimax:tool_call>", "</minimax:tool_call>"),
    function: ("<invoke name=\"", "\">", Some("</invoke>")),
    parameter: ("<parameter name=\"", "\">", "</parameter>"),
    name_stops: &[],
    value_open: &[],
};

/// The MiniMax-M2 XML parser.
#[derive(Debug)]
pub struct MinimaxM2Parser(XmlCallParser);

impl MinimaxM2Parser {
    pub fn new(schemas: ToolSchemas) -> Self {
        MinimaxM2Parser(XmlCallParser::new(
            SYNTAX,
            schemas,
            Some(fixes::fix_argument),
        ))
    }
}

impl ToolParser for MinimaxM2Parser {
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
