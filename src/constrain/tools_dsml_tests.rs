//! DeepSeek-V3.2's DSML tool-call grammar against its parser: raw-text parameters after
//! `string="true"`, JSON ones after `string="false"`, typed by the tool's schema.

use super::tests::{echo, grammar, parse, weather};
use super::*;
use crate::constrain::matcher::tests::{run, test_constrainer, Run};

const WEATHER: &str = "<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\" string=\"true\">Oslo</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n<｜DSML｜parameter name=\"unit\" string=\"true\">c</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>";

#[test]
fn a_forced_call_is_typed_by_its_schema() {
    let c = test_constrainer();
    let tools = [echo(), weather()];
    let g = grammar(&tools, ToolChoice::Required, ParserKind::DeepseekV32, false);
    assert_eq!(run(&c, &g, WEATHER), Run::Complete(true));
    let (content, calls) = parse(ParserKind::DeepseekV32, &tools, WEATHER);
    assert_eq!(content, "");
    assert_eq!(
        calls,
        [(
            "get_weather".to_string(),
            json!({"city": "Oslo", "days": 3, "unit": "c"})
        )]
    );
    let head = "<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"get_weather\">\n";
    for bad in [
        "Sure".to_string(),
        "<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"nope\">".to_string(),
        // `days` is JSON (string="false") and at most 7; `unit` one of its enum.
        format!("{head}<｜DSML｜parameter name=\"city\" string=\"true\">Oslo</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" string=\"true\">"),
        format!("{head}<｜DSML｜parameter name=\"city\" string=\"true\">Oslo</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" string=\"false\">9<"),
        format!("{head}<｜DSML｜parameter name=\"city\" string=\"true\">Oslo</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n<｜DSML｜parameter name=\"unit\" string=\"true\">k"),
        // A required parameter cannot be left out.
        format!("{head}</｜DSML｜invoke>"),
    ] {
        assert!(matches!(run(&c, &g, &bad), Run::Rejected(_)), "{bad}");
    }
}

#[test]
fn parallel_calls_and_auto() {
    let c = test_constrainer();
    let tools = [echo(), weather()];
    let g = grammar(&tools, ToolChoice::Required, ParserKind::DeepseekV32, true);
    let two = WEATHER.replace(
        "</｜DSML｜function_calls>",
        "<｜DSML｜invoke name=\"echo\">\n<｜DSML｜parameter name=\"text\" string=\"true\">a </b> c</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>",
    );
    assert_eq!(run(&c, &g, &two), Run::Complete(true));
    let calls = parse(ParserKind::DeepseekV32, &tools, &two).1;
    assert_eq!(calls[1], ("echo".to_string(), json!({"text": "a </b> c"})));
    let g = grammar(&tools, ToolChoice::Auto, ParserKind::DeepseekV32, false);
    let text = format!("Checking.\n\n{WEATHER}");
    assert_eq!(run(&c, &g, &text), Run::Complete(true));
    let (content, calls) = parse(ParserKind::DeepseekV32, &tools, &text);
    assert_eq!(content.trim(), "Checking.");
    assert_eq!(calls.len(), 1);
}
