//! What gpt-oss's chat template needs from a conversation. The template reads an earlier
//! assistant turn's reasoning from `thinking` (the template layer copies
//! `reasoning_content` there, as transformers does), and for a turn with tool calls it
//! renders only `tool_calls[0]`, names each tool result after the last call rendered, and
//! refuses a turn with both `content` and `thinking`. So, for harmony models only:
//!
//! - a turn with several calls becomes one turn per call, each call's result (matched by
//!   `tool_call_id`, else in order) right after it, as the model would have made them;
//! - a calling turn's content (a preamble) joins its reasoning, which the template renders
//!   as the analysis message before the call (dropping it, as llama.cpp does, would lose it);
//! - a turn without content gets an empty one (the template concatenates it).

use serde_json::{Map, Value};

const REASONING: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];

/// `messages` as the gpt-oss template can render them.
pub fn harmony_messages(messages: &[Value]) -> Vec<Value> {
    let mut out = Vec::with_capacity(messages.len());
    let mut i = 0;
    while i < messages.len() {
        let m = &messages[i];
        i += 1;
        let Some(fields) = m
            .as_object()
            .filter(|f| f.get("role").and_then(Value::as_str) == Some("assistant"))
        else {
            out.push(m.clone());
            continue;
        };
        let calls: Vec<Value> = match fields.get("tool_calls") {
            Some(Value::Array(calls)) if !calls.is_empty() => calls.clone(),
            _ => {
                let mut fields = fields.clone();
                if !fields.get("content").is_some_and(Value::is_string) {
                    fields.insert("content".into(), Value::String(String::new()));
                }
                out.push(Value::Object(fields));
                continue;
            }
        };
        let mut first = fields.clone();
        merge_preamble(&mut first);
        // The results of these calls follow the turn.
        let mut results: Vec<Option<Value>> = Vec::new();
        while i < messages.len() && messages[i]["role"] == "tool" {
            results.push(Some(messages[i].clone()));
            i += 1;
        }
        let ids: Vec<Option<&str>> = calls.iter().map(|c| c["id"].as_str()).collect();
        for (k, call) in calls.iter().enumerate() {
            let mut turn = if k == 0 {
                first.clone()
            } else {
                let mut t = Map::new();
                t.insert("role".into(), Value::String("assistant".into()));
                t
            };
            turn.insert("tool_calls".into(), Value::Array(vec![call.clone()]));
            out.push(Value::Object(turn));
            let by_id = ids[k].and_then(|id| {
                results
                    .iter()
                    .position(|r| r.as_ref().is_some_and(|r| r["tool_call_id"] == id))
            });
            // Else the first result that answers none of this turn's calls by id.
            let in_order = || {
                results.iter().position(|r| {
                    r.as_ref().is_some_and(|r| {
                        let id = r["tool_call_id"].as_str();
                        id.is_none() || !ids.contains(&id)
                    })
                })
            };
            if let Some(at) = by_id.or_else(in_order) {
                out.extend(results[at].take());
            }
        }
        out.extend(results.into_iter().flatten());
    }
    out
}

/// A calling turn with both content and reasoning: the content joins the reasoning.
fn merge_preamble(turn: &mut Map<String, Value>) {
    let content = turn
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let reasoning = REASONING
        .iter()
        .find_map(|k| turn.get(*k).and_then(Value::as_str))
        .unwrap_or("")
        .to_string();
    if content.trim().is_empty() || reasoning.trim().is_empty() {
        if content.trim().is_empty() {
            turn.remove("content");
        }
        return;
    }
    let merged = Value::String(format!("{reasoning}\n\n{content}"));
    turn.remove("content");
    turn.remove("reasoning");
    turn.insert("reasoning_content".into(), merged.clone());
    turn.insert("thinking".into(), merged);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{ChatTemplate, SpecialTokens};
    use serde_json::json;

    fn call(id: &str, name: &str, args: Value) -> Value {
        json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
    }

    fn conversation() -> Vec<Value> {
        vec![
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "Weather and time in Oslo?"}),
            json!({"role": "assistant", "content": "Checking both.", "reasoning_content": "Two tools.",
                   "tool_calls": [call("c1", "get_weather", json!({"city": "Oslo"})),
                                  call("c2", "get_time", json!({"tz": "Europe/Oslo"}))]}),
            // Results out of order: matched by id.
            json!({"role": "tool", "tool_call_id": "c2", "content": "12:00"}),
            json!({"role": "tool", "tool_call_id": "c1", "content": "sunny"}),
        ]
    }

    #[test]
    fn calls_are_split_and_results_follow_them() {
        let out = harmony_messages(&conversation());
        let roles: Vec<&str> = out.iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(
            roles,
            ["system", "user", "assistant", "tool", "assistant", "tool"]
        );
        assert_eq!(out[2]["tool_calls"][0]["id"], "c1");
        assert_eq!(out[2]["thinking"], "Two tools.\n\nChecking both.");
        assert!(out[2].get("content").is_none());
        assert_eq!(out[3]["content"], "sunny");
        assert_eq!(out[4]["tool_calls"][0]["id"], "c2");
        assert!(out[4].get("thinking").is_none());
        assert_eq!(out[5]["content"], "12:00");
        // Without ids, results pair in order; a turn with one call and no content is as it was.
        let plain = vec![
            json!({"role": "assistant", "tool_calls": [call("", "a", json!({})), call("", "b", json!({}))]}),
            json!({"role": "tool", "content": "ra"}),
            json!({"role": "tool", "content": "rb"}),
            json!({"role": "assistant", "content": null}),
        ];
        let out = harmony_messages(&plain);
        let seq: Vec<String> = out
            .iter()
            .map(|m| match m["role"].as_str().unwrap() {
                "tool" => m["content"].as_str().unwrap().to_string(),
                _ => m["tool_calls"][0]["function"]["name"]
                    .as_str()
                    .map_or_else(|| format!("text:{}", m["content"]), str::to_string),
            })
            .collect();
        assert_eq!(seq, ["a", "ra", "b", "rb", "text:\"\""]);
    }

    /// The real gpt-oss template renders the converted history: the reasoning (with the
    /// preamble) before the first call, each result under its own call's name.
    #[test]
    fn gpt_oss_template_renders_history() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("third_party/llama.cpp/templates/openai-gpt-oss-120b.jinja");
        let Ok(source) = std::fs::read_to_string(&path) else {
            eprintln!(
                "skipped: {} is missing (run scripts/setup.sh --tests)",
                path.display()
            );
            return;
        };
        let template = ChatTemplate::new(&source, SpecialTokens::default()).unwrap();
        let tools = [
            json!({"type": "function", "function": {"name": "get_weather", "description": "Weather.",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}),
            json!({"type": "function", "function": {"name": "get_time", "description": "Time.",
                   "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}}),
        ];
        let kwargs = Map::new();
        // As sent, the template refuses the turn (content and thinking beside a call).
        assert!(template
            .render(&conversation(), Some(&tools), true, &kwargs)
            .is_err());
        let text = template
            .render(
                &harmony_messages(&conversation()),
                Some(&tools),
                true,
                &kwargs,
            )
            .unwrap();
        let tail = &text[text.find("<|start|>user").unwrap()..];
        assert_eq!(
            tail,
            "<|start|>user<|message|>Weather and time in Oslo?<|end|>\
             <|start|>assistant<|channel|>analysis<|message|>Two tools.\n\nChecking both.<|end|>\
             <|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{\"city\": \"Oslo\"}<|call|>\
             <|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>\"sunny\"<|end|>\
             <|start|>assistant to=functions.get_time<|channel|>commentary json<|message|>{\"tz\": \"Europe/Oslo\"}<|call|>\
             <|start|>functions.get_time to=assistant<|channel|>commentary<|message|>\"12:00\"<|end|>\
             <|start|>assistant"
        );
        // A finished turn after the calls drops their analysis, and renders without content.
        let mut more = harmony_messages(&conversation());
        more.push(json!({"role": "assistant", "content": null, "reasoning_content": "done"}));
        more.push(json!({"role": "user", "content": "Thanks"}));
        let text = template
            .render(&harmony_messages(&more), Some(&tools), true, &kwargs)
            .unwrap();
        assert!(!text.contains("Two tools."), "{text}");
        assert!(text.contains(
            "<|start|>assistant<|channel|>final<|message|><|end|><|start|>user<|message|>Thanks"
        ));
    }
}
