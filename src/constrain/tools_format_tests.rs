//! A `response_format` beside `auto` tools: one grammar that takes the formatted answer or
//! text leading to calls ([`Grammar::or_tool_calls`]).

use super::tests::{echo, grammar};
use super::*;
use crate::constrain::matcher::tests::{run, test_constrainer, Run};

#[test]
fn a_response_format_beside_auto_tools_allows_the_answer_or_calls() {
    let c = test_constrainer();
    let tools = [echo()];
    let calls = grammar(&tools, ToolChoice::Auto, ParserKind::JsonTools, false);
    let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"], "additionalProperties": false});
    let answer = Grammar::json_schema(&schema, true).unwrap();
    let g = answer.or_tool_calls(&calls).unwrap();
    assert_eq!(run(&c, &g, "{\"ok\": true}"), Run::Complete(true));
    let call = "Let me echo.\n<tool_call>\n{\"name\": \"echo\", \"arguments\": {\"text\": \"x\"}}\n</tool_call>";
    assert_eq!(run(&c, &g, call), Run::Complete(true));
    // Free text is no answer: it may only lead to a call.
    assert_eq!(run(&c, &g, "Just text."), Run::Incomplete);
    assert!(matches!(run(&c, &g, "{\"ok\": 1}"), Run::Rejected(_)));
    // A forced tool grammar has no free-text branch to replace.
    let forced = grammar(&tools, ToolChoice::Required, ParserKind::JsonTools, false);
    assert!(answer.or_tool_calls(&forced).is_none());
}
