//! Harmony (gpt-oss) call and answer grammars, over a byte vocabulary plus harmony's special
//! tokens.

use super::tests::{echo, grammar, parse, weather};
use super::*;
use crate::constrain::matcher::tests::Run;

/// Harmony's special tokens, marked special (0xFF) after the 256 byte tokens.
const HARMONY_SPECIALS: [&str; 7] = [
    "<|start|>",
    "<|channel|>",
    "<|message|>",
    "<|end|>",
    "<|constrain|>",
    "<|call|>",
    "<|return|>",
];

/// The byte vocabulary plus harmony's special tokens; `<|call|>` and `<|return|>` stop.
fn harmony_constrainer() -> (crate::constrain::Constrainer, [u32; 2]) {
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    for s in HARMONY_SPECIALS {
        let mut t = vec![0xFF];
        t.extend_from_slice(s.as_bytes());
        tokens.push(t);
    }
    let c = crate::constrain::Constrainer::from_token_bytes(tokens, None).unwrap();
    (c, [256 + 5, 256 + 6])
}

/// Like [`run`], the special tokens' names in `text` fed as those tokens.
fn harmony_run(c: &crate::constrain::Constrainer, stops: [u32; 2], g: &Grammar, text: &str) -> Run {
    let mut m = c.matcher(g).unwrap();
    let mut bias = vec![0f32; c.vocab_size()];
    let mut at = 0;
    while at < text.len() {
        if m.next_bias(&mut bias, &stops, usize::MAX) != Ok(crate::constrain::MaskStep::Sample) {
            return Run::Rejected(at);
        }
        let special = HARMONY_SPECIALS
            .iter()
            .position(|s| text[at..].starts_with(s));
        let (token, len) = match special {
            Some(i) => (256 + i as u32, HARMONY_SPECIALS[i].len()),
            None => (text.as_bytes()[at] as u32, 1),
        };
        if bias[token as usize] != 0.0 {
            return Run::Rejected(at);
        }
        m.accept(token).unwrap();
        at += len;
    }
    match m.next_bias(&mut bias, &stops, usize::MAX) {
        Ok(crate::constrain::MaskStep::Finish) => Run::Complete(true),
        Ok(_) if bias[stops[0] as usize] == 0.0 => Run::Complete(false),
        _ => Run::Incomplete,
    }
}

#[test]
fn harmony_forced_call_from_the_first_token() {
    let (c, stops) = harmony_constrainer();
    let tools = [echo(), weather()];
    let g = grammar(&tools, ToolChoice::Required, ParserKind::Harmony, true);
    let call = "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Oslo\", \"days\": 2}";
    assert_eq!(harmony_run(&c, stops, &g, call), Run::Complete(true));
    // No analysis message first (it could use up max_tokens); the parser still reads one.
    let thought = format!("<|channel|>analysis<|message|>Weather, so get_weather: {{\"a\"}} <b>.<|end|><|start|>assistant{call}");
    assert!(matches!(
        harmony_run(&c, stops, &g, &thought),
        Run::Rejected(_)
    ));
    // What the grammar lets through, the parser reads as the call.
    for text in [call, thought.as_str()] {
        let (content, calls) = parse(ParserKind::Harmony, &tools, text);
        assert_eq!(content, "");
        assert_eq!(
            calls,
            [(
                "get_weather".to_string(),
                json!({"city": "Oslo", "days": 2})
            )]
        );
    }
    // Arguments off the schema, a final answer instead, special tokens inside the thought.
    let bad_days = call.replace("2}", "9}");
    assert!(matches!(
        harmony_run(&c, stops, &g, &bad_days),
        Run::Rejected(_)
    ));
    assert!(matches!(
        harmony_run(&c, stops, &g, "<|channel|>final<|message|>Hi"),
        Run::Rejected(_)
    ));
    // A named function: only it.
    let g = grammar(
        &tools,
        ToolChoice::Function("echo".into()),
        ParserKind::Harmony,
        false,
    );
    assert!(matches!(harmony_run(&c, stops, &g, call), Run::Rejected(_)));
    let echo_call =
        "<|channel|>commentary to=functions.echo <|constrain|>json<|message|>{\"text\": \"hi\"}";
    assert_eq!(harmony_run(&c, stops, &g, echo_call), Run::Complete(true));
    // `auto` stays unconstrained (text cannot hold the special tokens).
    let calls = ToolCalls {
        tools: &tools,
        choice: &ToolChoice::Auto,
        format: ParserKind::Harmony,
        parallel: true,
    };
    assert_eq!(calls.grammar().unwrap(), None);
}

#[test]
fn harmony_response_format_is_the_final_message() {
    let (c, stops) = harmony_constrainer();
    let g = Grammar::json_object()
        .harmony_final("response_format")
        .unwrap();
    let answer = "<|channel|>final<|message|>{\"a\": 1}";
    assert_eq!(harmony_run(&c, stops, &g, answer), Run::Complete(true));
    let thought =
        format!("<|channel|>analysis<|message|>JSON it is.<|end|><|start|>assistant{answer}");
    assert!(matches!(
        harmony_run(&c, stops, &g, &thought),
        Run::Rejected(_)
    ));
    assert!(matches!(
        harmony_run(&c, stops, &g, "{\"a\": 1}"),
        Run::Rejected(0)
    ));
    // The markup is the special token, never its name spelled as text.
    let mut m = c.matcher(&g).unwrap();
    let mut bias = vec![0f32; c.vocab_size()];
    m.next_bias(&mut bias, &stops, usize::MAX).unwrap();
    assert_eq!(bias[b'<' as usize], f32::NEG_INFINITY);
    assert_eq!(bias[256 + 1], 0.0);
    assert!(matches!(
        harmony_run(&c, stops, &g, "<|channel|>final<|message|>[1]"),
        Run::Rejected(_)
    ));
}
