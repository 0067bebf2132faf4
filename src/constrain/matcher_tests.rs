//! Matcher tests over a byte vocabulary: every byte is a token (id = byte value), plus a few
//! multi-byte tokens and one special stop token.

use super::*;
use crate::constrain::Grammar;
use serde_json::json;

/// The special stop token's id in [`test_constrainer`].
pub(crate) const STOP: u32 = 256 + MULTI.len() as u32;
const MULTI: [&str; 6] = [
    "<tool_call>",
    "</tool_call>",
    "\": \"",
    "{\"",
    "<｜tool▁sep｜>",
    "<|tool_call_argument_begin|>",
];

pub(crate) fn test_constrainer() -> Constrainer {
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    tokens.extend(MULTI.iter().map(|t| t.as_bytes().to_vec()));
    let mut stop = vec![0xFF];
    stop.extend_from_slice(b"<|im_end|>");
    tokens.push(stop);
    Constrainer::from_token_bytes(tokens, None).unwrap()
}

/// How far a text gets through a grammar.
#[derive(Debug, PartialEq)]
pub(crate) enum Run {
    /// The byte at this offset is not allowed.
    Rejected(usize),
    /// All accepted; the reply may end here (`true`: nothing else may follow).
    Complete(bool),
    /// All accepted, but the grammar needs more.
    Incomplete,
}

/// Feeds `text` as tokens, checking each against the mask: at every position the longest
/// allowed token spelling the text there (llguidance allows only the canonical tokens of
/// text the grammar forces, e.g. `{"` rather than `{`).
pub(crate) fn run(c: &Constrainer, grammar: &Grammar, text: &str) -> Run {
    let mut m = c.matcher(grammar).unwrap();
    let mut bias = vec![0f32; c.vocab_size() + 8];
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        if m.next_bias(&mut bias, &[STOP], usize::MAX) != Ok(MaskStep::Sample) {
            return Run::Rejected(at);
        }
        let multi = MULTI
            .iter()
            .enumerate()
            .filter(|(i, t)| bytes[at..].starts_with(t.as_bytes()) && bias[256 + i] == 0.0);
        let (token, len) = match multi.max_by_key(|(_, t)| t.len()) {
            Some((i, t)) => (256 + i as u32, t.len()),
            None if bias[bytes[at] as usize] == 0.0 => (bytes[at] as u32, 1),
            None => return Run::Rejected(at),
        };
        m.accept(token).unwrap();
        at += len;
    }
    match m.next_bias(&mut bias, &[STOP], usize::MAX) {
        Ok(MaskStep::Finish) => Run::Complete(true),
        Ok(MaskStep::Sample) if bias[STOP as usize] == 0.0 => Run::Complete(false),
        _ => Run::Incomplete,
    }
}

#[test]
fn bias_covers_only_real_ids() {
    let mut mask = SimpleVob::alloc(70);
    mask.allow_token(1);
    mask.allow_token(40);
    mask.allow_token(65); // past n_tokens: ignored
    let mut bias = vec![7.0f32; 80];
    assert!(fill_bias(&mask, 64, &mut bias));
    let allowed: Vec<usize> = (0..80).filter(|&i| bias[i] == 0.0).collect();
    assert_eq!(allowed, [1, 40]);
    assert!(bias.iter().all(|&x| x == 0.0 || x == f32::NEG_INFINITY));
    // A model vocabulary smaller than the tokenizer's.
    let mut small = vec![0f32; 20];
    assert!(!fill_bias(&mask, 64, &mut small[..1]));
    assert!(fill_bias(&mask, 64, &mut small));
}

#[test]
fn json_object_is_compact_and_ends_the_reply() {
    let c = test_constrainer();
    let g = Grammar::json_object();
    assert_eq!(
        run(&c, &g, r#"{"a": [1, 2], "b": {"c": null}}"#),
        Run::Complete(true)
    );
    assert_eq!(run(&c, &g, r#" {"a": 1}"#), Run::Rejected(0));
    assert_eq!(run(&c, &g, r#"[1]"#), Run::Rejected(0));
    assert_eq!(run(&c, &g, r#"{"a":1}"#), Run::Rejected(5));
    assert_eq!(run(&c, &g, r#"{"a": 1"#), Run::Incomplete);
}

#[test]
fn stop_ids_only_when_the_grammar_may_end() {
    let c = test_constrainer();
    let g = Grammar::json_schema(&json!({"type": "integer", "minimum": 0}), true).unwrap();
    let mut m = c.matcher(&g).unwrap();
    let mut bias = vec![0f32; c.vocab_size()];
    assert_eq!(
        m.next_bias(&mut bias, &[STOP], usize::MAX).unwrap(),
        MaskStep::Sample
    );
    assert_eq!(bias[STOP as usize], f32::NEG_INFINITY);
    assert_eq!(bias[b'-' as usize], f32::NEG_INFINITY);
    m.accept(b'4' as u32).unwrap();
    assert_eq!(
        m.next_bias(&mut bias, &[STOP], usize::MAX).unwrap(),
        MaskStep::Sample
    );
    assert_eq!(bias[STOP as usize], 0.0);
    assert_eq!(bias[b'2' as usize], 0.0);
    // The special token is never allowed as text, only as a stop id.
    let mut no_stop = vec![0f32; c.vocab_size()];
    m.next_bias(&mut no_stop, &[], usize::MAX).unwrap();
    assert_eq!(no_stop[STOP as usize], f32::NEG_INFINITY);
    assert!(m.accept(b'x' as u32).is_err());
}

#[test]
fn schema_constraints_are_enforced() {
    let c = test_constrainer();
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 3},
            "kind": {"enum": ["a", "b"]},
            "n": {"type": "integer", "minimum": 1, "maximum": 9}
        },
        "required": ["name", "kind", "n"],
        "additionalProperties": false
    });
    let g = Grammar::json_schema(&schema, true).unwrap();
    assert_eq!(
        run(&c, &g, r#"{"name": "abc", "kind": "b", "n": 9}"#),
        Run::Complete(true)
    );
    assert!(matches!(
        run(&c, &g, r#"{"name": "abcd""#),
        Run::Rejected(_)
    ));
    assert!(matches!(
        run(&c, &g, r#"{"name": "a", "kind": "c""#),
        Run::Rejected(_)
    ));
    assert!(matches!(
        run(&c, &g, r#"{"name": "a", "kind": "a", "n": 10}"#),
        Run::Rejected(_)
    ));
    assert!(matches!(run(&c, &g, r#"{"kind": "a""#), Run::Rejected(_)));
}

/// Picks the lowest allowed id each step (a "model" that never closes anything by itself)
/// with `budget` tokens in all; returns the text and whether the grammar finished.
fn drive(c: &Constrainer, grammar: &Grammar, prefix: &str, budget: usize) -> (String, bool) {
    let mut m = c.matcher(grammar).unwrap();
    let mut bias = vec![0f32; c.vocab_size() + 8];
    for &b in prefix.as_bytes() {
        m.accept(b as u32).unwrap();
    }
    let mut text = prefix.to_string();
    for used in prefix.len()..budget {
        match m.next_bias(&mut bias, &[STOP], budget - used - 1).unwrap() {
            MaskStep::Finish => return (text, true),
            MaskStep::Sample => {}
        }
        let id = bias.iter().position(|b| *b == 0.0).unwrap();
        if id == STOP as usize {
            return (text, true);
        }
        m.accept(id as u32).unwrap();
        text.push_str(&String::from_utf8_lossy(&[id as u8]));
    }
    (text, false)
}

#[test]
fn json_closes_before_the_token_limit() {
    let c = test_constrainer();
    let schema = json!({"type": "object", "properties": {
        "a": {"type": "string"}, "b": {"type": "array", "items": {"type": "string"}}},
        "required": ["a", "b"], "additionalProperties": false});
    let g = crate::constrain::ResponseFormat::JsonSchema {
        schema,
        strict: true,
    }
    .grammar()
    .unwrap()
    .unwrap();
    let (text, done) = drive(&c, &g, "{\"a\": \"an endless", 40);
    assert!(done, "{text:?}");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert!(v["a"].as_str().unwrap().starts_with("an endless"));
    // Nested: an array inside an object inside an array closes too.
    let (text, done) = drive(&c, &g, "{\"a\": \"x\", \"b\": [\"deep", 40);
    assert!(done, "{text:?}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&text).is_ok(),
        "{text:?}"
    );
    // The same "model" never closes the string itself: it runs to the limit, then closes.
    let (text, done) = drive(&c, &g, "{\"a\": \"an endless", 4000);
    assert!(done && text.len() > 3990, "{}", text.len());
    assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
}
