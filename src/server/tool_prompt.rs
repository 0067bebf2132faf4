//! Tools for models whose chat template cannot render them (SmolLM2's cannot): kooka
//! describes the offered functions in a system message of its own and asks for the
//! json_tools markup (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`), which the
//! json_tools parser then reads back. Earlier tool calls and tool results in the
//! conversation are written out as text in the same markup, since such templates drop them.

use serde_json::{json, Value};

use super::request::ToolChoice;

/// `messages` with the tool description merged into (or prepended as) the system message.
pub fn with_tool_system_message(
    messages: &[Value],
    tools: &[Value],
    choice: &ToolChoice,
) -> Vec<Value> {
    let description = describe(tools, choice);
    let mut out = flatten_tool_turns(messages);
    match out.first_mut() {
        Some(first) if first.get("role").and_then(Value::as_str) == Some("system") => {
            let text = first.get("content").and_then(Value::as_str).unwrap_or("");
            let merged = if text.is_empty() {
                description
            } else {
                format!("{text}\n\n{description}")
            };
            first["content"] = Value::String(merged);
        }
        _ => out.insert(0, json!({"role": "system", "content": description})),
    }
    out
}

fn describe(tools: &[Value], choice: &ToolChoice) -> String {
    let mut s = String::from(
        "You can call functions. The available functions, as JSON schemas:\n<tools>\n",
    );
    for t in tools {
        let f = t.get("function").unwrap_or(t);
        s.push_str(&serde_json::to_string(f).unwrap_or_default());
        s.push('\n');
    }
    s.push_str(
        "</tools>\n\nTo call a function, reply with a JSON object holding the function's name \
         and its arguments inside <tool_call></tool_call> tags, like this:\n<tool_call>\n\
         {\"name\": \"function_name\", \"arguments\": {\"argument\": \"value\"}}\n</tool_call>",
    );
    match choice {
        ToolChoice::Required => s.push_str("\nYou must call at least one function now."),
        ToolChoice::Named(name) => {
            s.push_str(&format!("\nYou must call the function \"{name}\" now."))
        }
        ToolChoice::Auto | ToolChoice::None => {}
    }
    s
}

/// Assistant turns with `tool_calls` and `tool` results as plain text the template keeps.
pub fn flatten_tool_turns(messages: &[Value]) -> Vec<Value> {
    messages.iter().map(flatten_turn).collect()
}

fn flatten_turn(m: &Value) -> Value {
    let role = m.get("role").and_then(Value::as_str).unwrap_or("");
    let content = m.get("content").and_then(Value::as_str).unwrap_or("");
    match role {
        "assistant" => {
            let Some(Value::Array(calls)) = m.get("tool_calls") else {
                return m.clone();
            };
            let mut text = content.to_string();
            for call in calls {
                let f = call.get("function").unwrap_or(call);
                // Name first, as the markup the model was shown.
                let body = format!(
                    "{{\"name\": {}, \"arguments\": {}}}",
                    f.get("name").cloned().unwrap_or(Value::Null),
                    f.get("arguments").cloned().unwrap_or(json!({}))
                );
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&format!("<tool_call>\n{body}\n</tool_call>"));
            }
            json!({"role": "assistant", "content": text})
        }
        "tool" => json!({
            "role": "user",
            "content": format!("<tool_response>\n{content}\n</tool_response>"),
        }),
        _ => m.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_into_the_system_message_and_flattens_tool_turns() {
        let tools = vec![json!({"type": "function", "function": {"name": "echo",
            "parameters": {"type": "object", "properties": {"text": {"type": "string"}}}}})];
        let messages = vec![
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "hi"}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "echo", "arguments": {"text": "hi"}}}]}),
            json!({"role": "tool", "tool_call_id": "c1", "content": "hi"}),
        ];
        let out = with_tool_system_message(&messages, &tools, &ToolChoice::Named("echo".into()));
        assert_eq!(out.len(), 4);
        let system = out[0]["content"].as_str().unwrap();
        assert!(system.starts_with("Be brief.\n\n"));
        assert!(system.contains("\"name\":\"echo\""));
        assert!(system.ends_with("You must call the function \"echo\" now."));
        assert_eq!(
            out[2]["content"],
            "<tool_call>\n{\"name\": \"echo\", \"arguments\": {\"text\":\"hi\"}}\n</tool_call>"
        );
        assert_eq!(out[3]["role"], "user");
    }
}
