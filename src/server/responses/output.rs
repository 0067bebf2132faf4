//! A reply as Responses output items, built from the [`ReplyEvent`]s one at a time: each
//! event yields the stream events it causes (`response.output_item.added`,
//! `response.output_text.delta`, ...) and finished items are kept for the final response,
//! so the streamed and the returned items are the same objects with the same ids.
//!
//! Reasoning is a `reasoning` item (`reasoning_text` content), text a `message` item with one
//! `output_text` part, a call of a function tool a `function_call` item (arguments streamed
//! as they come), a call of a custom tool a `custom_tool_call` item whose `input` is the
//! call's `input` argument (sent whole when the call ends).

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::server::reply::ReplyEvent;

/// One stream event before its `sequence_number`: its type and fields.
pub(super) type StreamEvent = (&'static str, Value);

/// The item being written.
enum Open {
    Reasoning {
        text: String,
    },
    Message {
        text: String,
    },
    Function {
        call_id: String,
        name: String,
        args: String,
    },
    Custom {
        call_id: String,
        name: String,
        args: String,
    },
}

/// The output of one response.
pub(super) struct Output {
    /// Distinguishes this response's item ids.
    tag: String,
    custom_tools: HashSet<String>,
    items: Vec<Value>,
    open: Option<(String, Open)>,
    /// Whether the reply called a tool.
    pub called: bool,
    /// The status a message item closes with: `incomplete` for the last one of a reply the
    /// token limit cut ([`Self::finish_cut`]).
    message_status: &'static str,
}

impl Output {
    pub fn new(tag: String, custom_tools: HashSet<String>) -> Self {
        Output {
            tag,
            custom_tools,
            items: Vec::new(),
            open: None,
            called: false,
            message_status: "completed",
        }
    }

    /// The finished items (call [`Output::finish`] first).
    pub fn items(&self) -> &[Value] {
        &self.items
    }

    fn new_id(&self, prefix: &str) -> String {
        format!("{prefix}_{}{:02x}", self.tag, self.items.len())
    }

    fn index(&self) -> usize {
        self.items.len()
    }

    pub fn push(&mut self, event: ReplyEvent, out: &mut Vec<StreamEvent>) {
        match event {
            ReplyEvent::Reasoning(t) => {
                if !matches!(self.open, Some((_, Open::Reasoning { .. }))) {
                    self.close(out);
                    let id = self.new_id("rs");
                    out.push(self.added(json!({
                        "type": "reasoning", "id": id, "summary": [], "content": [],
                    })));
                    out.push((
                        "response.content_part.added",
                        json!({"item_id": id, "output_index": self.index(), "content_index": 0,
                            "part": {"type": "reasoning_text", "text": ""}}),
                    ));
                    self.open = Some((
                        id,
                        Open::Reasoning {
                            text: String::new(),
                        },
                    ));
                }
                let index = self.index();
                if let Some((id, Open::Reasoning { text })) = &mut self.open {
                    text.push_str(&t);
                    out.push((
                        "response.reasoning_text.delta",
                        json!({"item_id": id, "output_index": index, "content_index": 0, "delta": t}),
                    ));
                }
            }
            ReplyEvent::Content(t) => {
                if !matches!(self.open, Some((_, Open::Message { .. }))) {
                    self.close(out);
                    let id = self.new_id("msg");
                    out.push(self.added(json!({
                        "type": "message", "id": id, "status": "in_progress",
                        "role": "assistant", "content": [],
                    })));
                    out.push((
                        "response.content_part.added",
                        json!({"item_id": id, "output_index": self.index(), "content_index": 0,
                            "part": {"type": "output_text", "text": "", "annotations": []}}),
                    ));
                    self.open = Some((
                        id,
                        Open::Message {
                            text: String::new(),
                        },
                    ));
                }
                let index = self.index();
                if let Some((id, Open::Message { text })) = &mut self.open {
                    text.push_str(&t);
                    out.push((
                        "response.output_text.delta",
                        json!({"item_id": id, "output_index": index, "content_index": 0,
                            "delta": t, "logprobs": []}),
                    ));
                }
            }
            ReplyEvent::ToolStart {
                id: call_id, name, ..
            } => {
                self.close(out);
                self.called = true;
                if self.custom_tools.contains(&name) {
                    let id = self.new_id("ctc");
                    out.push(self.added(json!({
                        "type": "custom_tool_call", "id": id, "status": "in_progress",
                        "call_id": call_id, "name": name, "input": "",
                    })));
                    self.open = Some((
                        id,
                        Open::Custom {
                            call_id,
                            name,
                            args: String::new(),
                        },
                    ));
                } else {
                    let id = self.new_id("fc");
                    out.push(self.added(json!({
                        "type": "function_call", "id": id, "status": "in_progress",
                        "call_id": call_id, "name": name, "arguments": "",
                    })));
                    self.open = Some((
                        id,
                        Open::Function {
                            call_id,
                            name,
                            args: String::new(),
                        },
                    ));
                }
            }
            ReplyEvent::ToolArgs { delta, .. } => {
                let index = self.index();
                match &mut self.open {
                    Some((id, Open::Function { args, .. })) => {
                        args.push_str(&delta);
                        out.push((
                            "response.function_call_arguments.delta",
                            json!({"item_id": id, "output_index": index, "delta": delta}),
                        ));
                    }
                    // A custom tool's input is its `input` argument: known at the end.
                    Some((_, Open::Custom { args, .. })) => args.push_str(&delta),
                    _ => {}
                }
            }
            ReplyEvent::ToolEnd { .. } => self.close(out),
        }
    }

    /// Closes the open item, if any.
    pub fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        self.close(out);
    }

    /// Closes the open item of a reply the token limit cut: a message is `incomplete`.
    pub fn finish_cut(&mut self, out: &mut Vec<StreamEvent>) {
        self.message_status = "incomplete";
        self.close(out);
    }

    fn added(&self, item: Value) -> StreamEvent {
        (
            "response.output_item.added",
            json!({"output_index": self.index(), "item": item}),
        )
    }

    fn close(&mut self, out: &mut Vec<StreamEvent>) {
        let Some((id, open)) = self.open.take() else {
            return;
        };
        let index = self.index();
        let item = match open {
            Open::Reasoning { text } => {
                let part = json!({"type": "reasoning_text", "text": text});
                out.push((
                    "response.reasoning_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text}),
                ));
                out.push((
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                ));
                json!({"type": "reasoning", "id": id, "summary": [], "content": [part]})
            }
            Open::Message { text } => {
                let part =
                    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                out.push((
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                        "text": text, "logprobs": []}),
                ));
                out.push((
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                ));
                json!({"type": "message", "id": id, "status": self.message_status,
                    "role": "assistant", "content": [part]})
            }
            Open::Function {
                call_id,
                name,
                args,
            } => {
                let args = if args.is_empty() {
                    "{}".to_string()
                } else {
                    args
                };
                out.push((
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "name": name, "arguments": args}),
                ));
                json!({"type": "function_call", "id": id, "status": "completed",
                    "call_id": call_id, "name": name, "arguments": args})
            }
            Open::Custom {
                call_id,
                name,
                args,
            } => {
                let input = custom_input(&args);
                out.push((
                    "response.custom_tool_call_input.delta",
                    json!({"item_id": id, "output_index": index, "delta": input}),
                ));
                out.push((
                    "response.custom_tool_call_input.done",
                    json!({"item_id": id, "output_index": index, "input": input}),
                ));
                json!({"type": "custom_tool_call", "id": id, "status": "completed",
                    "call_id": call_id, "name": name, "input": input})
            }
        };
        out.push((
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        ));
        self.items.push(item);
    }
}

/// A custom tool's input from the arguments the model wrote (`{"input": "..."}`); arguments
/// of another shape pass as they are.
fn custom_input(args: &str) -> String {
    match serde_json::from_str::<Value>(args) {
        Ok(Value::Object(m)) => match m.get("input") {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None if m.len() == 1 => match m.values().next() {
                Some(Value::String(s)) => s.clone(),
                _ => args.to_string(),
            },
            None => args.to_string(),
        },
        _ => args.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: Vec<ReplyEvent>, custom: &[&str]) -> (Vec<StreamEvent>, Vec<Value>) {
        let mut o = Output::new("t".into(), custom.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for e in events {
            o.push(e, &mut out);
        }
        o.finish(&mut out);
        (out, o.items().to_vec())
    }

    #[test]
    fn text_then_calls_make_matching_items() {
        let (events, items) = run(
            vec![
                ReplyEvent::Reasoning("hm".into()),
                ReplyEvent::Content("Hel".into()),
                ReplyEvent::Content("lo".into()),
                ReplyEvent::ToolStart {
                    index: 0,
                    id: "call_1".into(),
                    name: "shell".into(),
                },
                ReplyEvent::ToolArgs {
                    index: 0,
                    delta: "{\"cmd\":".into(),
                },
                ReplyEvent::ToolArgs {
                    index: 0,
                    delta: "\"ls\"}".into(),
                },
                ReplyEvent::ToolEnd { index: 0 },
                ReplyEvent::ToolStart {
                    index: 1,
                    id: "call_2".into(),
                    name: "apply_patch".into(),
                },
                ReplyEvent::ToolArgs {
                    index: 1,
                    delta: "{\"input\": \"*** Begin\"}".into(),
                },
                ReplyEvent::ToolEnd { index: 1 },
            ],
            &["apply_patch"],
        );
        let kinds: Vec<_> = items.iter().map(|i| i["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["reasoning", "message", "function_call", "custom_tool_call"]
        );
        assert_eq!(items[1]["content"][0]["text"], "Hello");
        assert_eq!(items[2]["arguments"], "{\"cmd\":\"ls\"}");
        assert_eq!(items[3]["input"], "*** Begin");
        // Every item added is done once, with the same id and index.
        let added: Vec<_> = events
            .iter()
            .filter(|(t, _)| *t == "response.output_item.added")
            .map(|(_, v)| (v["item"]["id"].clone(), v["output_index"].clone()))
            .collect();
        let done: Vec<_> = events
            .iter()
            .filter(|(t, _)| *t == "response.output_item.done")
            .map(|(_, v)| (v["item"]["id"].clone(), v["output_index"].clone()))
            .collect();
        assert_eq!(added, done);
        assert_eq!(done.len(), 4);
        let deltas: String = events
            .iter()
            .filter(|(t, _)| *t == "response.output_text.delta")
            .map(|(_, v)| v["delta"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(deltas, "Hello");
    }
}
