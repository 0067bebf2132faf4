//! Harmony parser tests: whole replies, and the same replies split at every byte offset.

use super::*;

/// The reply folded per kind, with the order of the kinds (adjacent pieces of one kind
/// merged), so replies streamed in different pieces compare equal.
#[derive(Debug, PartialEq)]
struct Folded {
    /// `("reasoning" | "content" | "call", text)`; a call's text is `name(arguments)`.
    steps: Vec<(&'static str, String)>,
}

fn fold(events: Vec<HarmonyEvent>) -> Folded {
    let mut steps: Vec<(&'static str, String)> = Vec::new();
    let mut open = None;
    for e in events {
        let (kind, text) = match e {
            HarmonyEvent::Reasoning(t) => {
                assert!(!t.is_empty(), "empty reasoning event");
                ("reasoning", t)
            }
            HarmonyEvent::Reply(ParseEvent::Content(t)) => {
                assert!(!t.is_empty(), "empty content event");
                ("content", t)
            }
            HarmonyEvent::Reply(ParseEvent::ToolCallStart { index, name, id }) => {
                assert!(open.is_none() && id.starts_with("call_"));
                open = Some(index);
                steps.push(("call", format!("{name}(")));
                continue;
            }
            HarmonyEvent::Reply(ParseEvent::ToolCallArgsDelta { index, delta }) => {
                assert_eq!(open, Some(index));
                steps.last_mut().unwrap().1.push_str(&delta);
                continue;
            }
            HarmonyEvent::Reply(ParseEvent::ToolCallEnd { index }) => {
                assert_eq!(open.take(), Some(index));
                steps.last_mut().unwrap().1.push(')');
                continue;
            }
        };
        match steps.last_mut() {
            Some((k, t)) if *k == kind => t.push_str(&text),
            _ => steps.push((kind, text)),
        }
    }
    assert!(open.is_none(), "unterminated call");
    Folded { steps }
}

fn parser() -> HarmonyParser {
    HarmonyParser::new(Some(vec!["get_weather".into(), "get_time".into()]))
}

/// The reply fed whole, then split in two at every byte offset (as bytes may arrive:
/// the two halves of a split character arrive in two deltas, which `String`s cannot
/// carry, so the cut moves to the next char boundary), then char by char: all the same.
fn parse(text: &str) -> Folded {
    parse_with(text, parser)
}

fn parse_with(text: &str, new: fn() -> HarmonyParser) -> Folded {
    let whole = {
        let mut p = new();
        let mut events = p.push(text);
        events.extend(p.finish());
        fold(events)
    };
    for cut in 0..=text.len() {
        let mut at = cut;
        while !text.is_char_boundary(at) {
            at += 1;
        }
        let mut p = new();
        let mut events = p.push(&text[..at]);
        events.extend(p.push(&text[at..]));
        events.extend(p.finish());
        assert_eq!(fold(events), whole, "cut at byte {cut} of {text:?}");
    }
    let mut p = new();
    let mut events = Vec::new();
    for c in text.chars() {
        events.extend(p.push(&c.to_string()));
    }
    events.extend(p.finish());
    assert_eq!(fold(events), whole, "char by char: {text:?}");
    whole
}

fn steps(list: &[(&'static str, &str)]) -> Folded {
    Folded {
        steps: list.iter().map(|(k, t)| (*k, t.to_string())).collect(),
    }
}

#[test]
fn analysis_then_final() {
    let text = "<|channel|>analysis<|message|>User asks 2+2. Easy.<|end|>\
                <|start|>assistant<|channel|>final<|message|>It is **4**.<|return|>";
    assert_eq!(
        parse(text),
        steps(&[
            ("reasoning", "User asks 2+2. Easy."),
            ("content", "It is **4**.")
        ])
    );
    // The same without the end token (the engine stopped on it).
    assert_eq!(parse(text.strip_suffix(RETURN).unwrap()), parse(text));
}

#[test]
fn analysis_then_a_call_on_commentary() {
    let text = "<|channel|>analysis<|message|>Need weather for SF.<|end|>\
                <|start|>assistant<|channel|>commentary to=functions.get_weather \
                <|constrain|>json<|message|>{\"location\":\"San Francisco, CA\"}<|call|>";
    let want = steps(&[
        ("reasoning", "Need weather for SF."),
        ("call", "get_weather({\"location\":\"San Francisco, CA\"})"),
    ]);
    assert_eq!(parse(text), want);
    assert_eq!(parse(text.strip_suffix(CALL).unwrap()), want);
    // Characters of several bytes, in the reasoning and in the arguments.
    assert_eq!(
        parse("<|channel|>analysis<|message|>Zürich → 東京<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather<|message|>{\"location\": \"Zürich 東京 🌧\"}<|call|>"),
        steps(&[
            ("reasoning", "Zürich → 東京"),
            ("call", "get_weather({\"location\":\"Zürich 東京 🌧\"})")
        ])
    );
}

#[test]
fn recipient_before_the_channel() {
    // As the template renders earlier calls: `to=` in the role part, ` json` content type.
    let text = "<|channel|>analysis<|message|>Check time.<|end|>\
                <|start|>assistant to=functions.get_time<|channel|>commentary json\
                <|message|>{\"tz\": \"UTC\"}<|call|>";
    assert_eq!(
        parse(text),
        steps(&[
            ("reasoning", "Check time."),
            ("call", "get_time({\"tz\":\"UTC\"})")
        ])
    );
    // The reply's very first header may carry it too (the prompt wrote the role).
    assert_eq!(
        parse(" to=functions.get_time<|channel|>commentary<|message|>{}"),
        steps(&[("call", "get_time({})")])
    );
}

#[test]
fn two_calls_then_content() {
    let text = "<|channel|>commentary to=functions.get_weather<|message|>{\"location\": \"Oslo\"}<|end|>\
                <|start|>assistant<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>\
                {\"tz\": \"Europe/Oslo\"}<|end|>\
                <|start|>assistant<|channel|>final<|message|>Both asked.";
    assert_eq!(
        parse(text),
        steps(&[
            ("call", "get_weather({\"location\":\"Oslo\"})"),
            ("call", "get_time({\"tz\":\"Europe/Oslo\"})"),
            ("content", "Both asked."),
        ])
    );
    let mut p = parser();
    let mut events = p.push(text);
    events.extend(p.finish());
    let indices: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            HarmonyEvent::Reply(ParseEvent::ToolCallStart { index, .. }) => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(indices, [0, 1]);
}

#[test]
fn malformed_arguments_are_content() {
    let text = "<|channel|>analysis<|message|>hmm<|end|><|start|>assistant<|channel|>commentary \
                to=functions.get_weather <|constrain|>json<|message|>{\"location\": \"SF\"<|call|>";
    assert_eq!(
        parse(text),
        steps(&[("reasoning", "hmm"), ("content", "{\"location\": \"SF\"")])
    );
    // Not an object, or cut off at the end of the reply.
    assert_eq!(
        parse("<|channel|>commentary to=functions.get_weather<|message|>[1, 2]"),
        steps(&[("content", "[1, 2]")])
    );
    assert_eq!(
        parse("<|channel|>commentary to=functions.get_weather<|message|>{\"loc"),
        steps(&[("content", "{\"loc")])
    );
    // A JSON string holding the object is the object.
    assert_eq!(
        parse("<|channel|>commentary to=functions.get_time<|message|>\"{\\\"tz\\\": 1}\""),
        steps(&[("call", "get_time({\"tz\":1})")])
    );
}

#[test]
fn text_without_a_header_is_content() {
    assert_eq!(
        parse("Hello there, <b>world</b> 東京 <|"),
        steps(&[("content", "Hello there, <b>world</b> 東京 <|")])
    );
    // Text, then the model finds its format.
    assert_eq!(
        parse("Hi.<|end|><|start|>assistant<|channel|>final<|message|>Bye."),
        steps(&[("content", "Hi.\n\nBye.")])
    );
    assert_eq!(
        parse("to be or not<|channel|>analysis<|message|>x"),
        steps(&[("content", "to be or not"), ("reasoning", "x")])
    );
    assert_eq!(parse(""), steps(&[]));
    // A header broken by a newline is text, markup and all.
    assert_eq!(
        parse("<|channel|>final\nHello<|end|>"),
        steps(&[("content", "<|channel|>final\nHello")])
    );
    // A header cut off by the end of the reply is dropped.
    assert_eq!(parse("<|channel|>ana"), steps(&[]));
}

#[test]
fn preambles_and_other_channels_are_content() {
    let text = "<|channel|>analysis<|message|>plan<|end|>\
                <|start|>assistant<|channel|>commentary<|message|>Let me check the weather.<|end|>\
                <|start|>assistant<|channel|>commentary to=functions.get_weather<|message|>{}<|call|>";
    assert_eq!(
        parse(text),
        steps(&[
            ("reasoning", "plan"),
            ("content", "Let me check the weather."),
            ("call", "get_weather({})"),
        ])
    );
    assert_eq!(
        parse("<|channel|>summary<|message|>s<|end|><|start|>assistant<|message|>t"),
        steps(&[("content", "s\n\nt")])
    );
    // Two analysis messages are set apart; a missing `<|start|>assistant` is tolerated.
    assert_eq!(
        parse("<|channel|>analysis<|message|>a<|end|><|channel|>analysis<|message|>b<|end|><|channel|>final<|message|>c"),
        steps(&[("reasoning", "a\n\nb"), ("content", "c")])
    );
}

#[test]
fn recipients_other_than_functions() {
    // A built-in tool (not offered): its body stays in its channel.
    assert_eq!(
        parse("<|channel|>analysis to=python code<|message|>print(1)<|call|>"),
        steps(&[("reasoning", "print(1)")])
    );
    // An offered function named without `functions.` is still a call of it.
    assert_eq!(
        parse("<|channel|>commentary to=get_time<|message|>{}"),
        steps(&[("call", "get_time({})")])
    );
    // Without tools in the request nothing is a call.
    let text = "<|channel|>commentary to=functions.get_time<|message|>{\"tz\": 1}";
    assert_eq!(
        parse_with(text, || HarmonyParser::new(None)),
        steps(&[("content", "{\"tz\": 1}")])
    );
}
