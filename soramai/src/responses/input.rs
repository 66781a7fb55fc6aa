//! A request's input items, read and checked, and as chat messages.

use serde_json::{Map, Value, json};

use crate::PlatformError;
use crate::platform::{ChatMessage, FunctionCall, ToolCall, ToolKind};

use super::types::{MAX_INPUT_ITEMS, ResponseInput};

/// One input item, as read from a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputItem {
    /// A message: `user`, `assistant`, `system` or `developer`.
    Message {
        /// Its role.
        role: String,
        /// Its text.
        text: String,
    },
    /// A call the model made earlier.
    FunctionCall {
        /// The id its output names.
        call_id: String,
        /// The function.
        name: String,
        /// Its arguments, as text.
        arguments: String,
    },
    /// A call's result.
    FunctionCallOutput {
        /// The call it answers.
        call_id: String,
        /// The result, as text.
        output: String,
    },
}

pub(super) fn bad<T>(param: &'static str, m: impl Into<String>) -> Result<T, PlatformError> {
    Err(PlatformError::InvalidParameter { param, message: m.into() })
}

/// A field name to quote back: short identifiers only (anything else could be content).
fn named(key: &str) -> String {
    if !key.is_empty() && key.len() <= 64 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        format!("{key:?}")
    } else {
        "a field".to_owned()
    }
}

fn text_field(i: usize, obj: &Map<String, Value>, key: &str) -> Result<String, PlatformError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => bad("input", format!("input[{i}].{key} is a string")),
    }
}

/// A message's or a call output's content: text, or text parts (`input_text`, `output_text`).
fn content_text(i: usize, v: Option<&Value>) -> Result<String, PlatformError> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                let Some(p) = p.as_object() else {
                    return bad("input", format!("input[{i}].content[{j}] is an object"));
                };
                match p.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => {}
                    _ => {
                        return bad(
                            "input",
                            format!("input[{i}].content[{j}]: only input_text and output_text parts are supported"),
                        );
                    }
                }
                if let Some(k) = p.keys().find(|k| !["type", "text", "annotations", "logprobs"].contains(&k.as_str())) {
                    return bad("input", format!("input[{i}].content[{j}].{} is not supported", named(k)));
                }
                for k in ["annotations", "logprobs"] {
                    if p.get(k).is_some_and(|a| !a.is_null() && a.as_array().is_none_or(|a| !a.is_empty())) {
                        return bad("input", format!("input[{i}].content[{j}].{k} is not supported"));
                    }
                }
                match p.get("text") {
                    Some(Value::String(s)) => text.push_str(s),
                    _ => return bad("input", format!("input[{i}].content[{j}].text is a string")),
                }
            }
            Ok(text)
        }
        _ => bad("input", format!("input[{i}].content is a string or an array of text parts")),
    }
}

/// Reads a request's input items: messages, function calls and their outputs. Anything else (an
/// image, a file, a built-in tool's call, an item reference) is refused naming its place.
pub fn input_items(input: &ResponseInput) -> Result<Vec<InputItem>, PlatformError> {
    let items = match input {
        ResponseInput::Text(t) => return Ok(vec![InputItem::Message { role: "user".into(), text: t.clone() }]),
        ResponseInput::Items(items) => items,
    };
    if items.is_empty() {
        return bad("input", "input holds at least one item");
    }
    if items.len() > MAX_INPUT_ITEMS {
        return bad("input", format!("input holds at most {MAX_INPUT_ITEMS} items"));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, v) in items.iter().enumerate() {
        let Some(obj) = v.as_object() else { return bad("input", format!("input[{i}] is an object")) };
        let kind = match obj.get("type") {
            None => "message",
            Some(Value::String(t)) => t.as_str(),
            Some(_) => return bad("input", format!("input[{i}].type is a string")),
        };
        let allowed: &[&str] = match kind {
            "message" => &["type", "role", "content", "id", "status"],
            "function_call" => &["type", "call_id", "name", "arguments", "id", "status"],
            "function_call_output" => &["type", "call_id", "output", "id", "status"],
            other => {
                return bad("input", format!("input[{i}].type {} is not supported", named(other)));
            }
        };
        if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
            return bad("input", format!("input[{i}].{} is not supported", named(k)));
        }
        out.push(match kind {
            "message" => {
                let role = text_field(i, obj, "role")?;
                if !["user", "assistant", "system", "developer"].contains(&role.as_str()) {
                    return bad("input", format!("input[{i}].role is user, assistant, system or developer"));
                }
                InputItem::Message { role, text: content_text(i, obj.get("content"))? }
            }
            "function_call" => InputItem::FunctionCall {
                call_id: text_field(i, obj, "call_id")?,
                name: text_field(i, obj, "name")?,
                arguments: text_field(i, obj, "arguments")?,
            },
            _ => InputItem::FunctionCallOutput {
                call_id: text_field(i, obj, "call_id")?,
                output: content_text(i, obj.get("output"))?,
            },
        });
    }
    Ok(out)
}

/// Input items as OpenAI lists them (`GET /v1/responses/{id}/input_items`), each with an id made
/// from the response's.
pub(super) fn listed(items: &[InputItem], suffix: &str) -> Vec<Value> {
    items
        .iter()
        .enumerate()
        .map(|(k, item)| match item {
            InputItem::Message { role, text } if role == "assistant" => json!({
                "type": "message", "id": format!("msg_{suffix}_in{k}"), "status": "completed", "role": role,
                "content": [{"type": "output_text", "text": text, "annotations": []}]}),
            InputItem::Message { role, text } => json!({
                "type": "message", "id": format!("msg_{suffix}_in{k}"), "status": "completed", "role": role,
                "content": [{"type": "input_text", "text": text}]}),
            InputItem::FunctionCall { call_id, name, arguments } => json!({
                "type": "function_call", "id": format!("fc_{suffix}_in{k}"), "status": "completed",
                "call_id": call_id, "name": name, "arguments": arguments}),
            InputItem::FunctionCallOutput { call_id, output } => json!({
                "type": "function_call_output", "id": format!("fco_{suffix}_in{k}"), "status": "completed",
                "call_id": call_id, "output": output}),
        })
        .collect()
}

/// Input items as chat messages: consecutive calls one assistant turn (joined to the assistant
/// text just before them), each output a tool message.
pub(super) fn to_messages(items: Vec<InputItem>) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(items.len());
    for item in items {
        match item {
            InputItem::Message { role, text } => out.push(ChatMessage::new(role, text)),
            InputItem::FunctionCall { call_id, name, arguments } => {
                let call =
                    ToolCall { id: call_id, kind: ToolKind::Function, function: FunctionCall { name, arguments } };
                match out.last_mut() {
                    Some(m) if m.role == "assistant" => m.tool_calls.push(call),
                    _ => out.push(ChatMessage { tool_calls: vec![call], ..ChatMessage::new("assistant", "") }),
                }
            }
            InputItem::FunctionCallOutput { call_id, output } => {
                out.push(ChatMessage { tool_call_id: Some(call_id), ..ChatMessage::new("tool", output) });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn items(v: Value) -> Result<Vec<InputItem>, PlatformError> {
        input_items(&serde_json::from_value(v).expect("input"))
    }

    #[test]
    fn input_items_read_messages_calls_and_outputs() {
        let got = items(json!([
            {"role": "user", "content": "hi"},
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}", "id": "fc_1", "status": "completed"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
        ]))
        .expect("items");
        assert_eq!(got.len(), 4);
        assert_eq!(got[1], InputItem::Message { role: "developer".into(), text: "ab".into() });
        let messages = to_messages(got);
        assert_eq!(messages.len(), 4);
        assert_eq!(messages[2].tool_calls[0].id, "c1");
        assert_eq!(messages[3].tool_call_id.as_deref(), Some("c1"));
    }

    #[test]
    fn hostile_input_items_are_refused_by_place() {
        let cases = [
            json!([]),
            json!([1]),
            json!([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]),
            json!([{"role": "root", "content": "x"}]),
            json!([{"role": "user", "content": "x", "name": "bob"}]),
            json!([{"type": "web_search_call", "id": "x"}]),
            json!([{"type": "item_reference", "id": "x"}]),
            json!([{"type": "function_call", "call_id": 1, "name": "f", "arguments": "{}"}]),
            json!([{"role": "user", "content": [{"type": "input_text", "text": "x", "annotations": [1]}]}]),
            json!([{"role": "user", "content": "x", "\u{0}secret prompt text\u{0}": 1}]),
        ];
        for c in cases {
            let e = items(c.clone()).expect_err("refused");
            match e {
                PlatformError::InvalidParameter { param, message } => {
                    assert_eq!(param, "input", "{c}");
                    assert!(!message.contains("secret prompt"), "{message}");
                }
                other => panic!("{c}: {other}"),
            }
        }
    }
}
