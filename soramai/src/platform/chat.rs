//! A chat's messages and the tools it may call: the functions offered, the prompt that offers
//! them, the grammar that holds the model's calls to their schemas, and the parse of its output
//! into calls.
//!
//! Soramai renders the protocol itself, the same for every model (a model's own template syntax
//! for tools is not used yet): the system prompt lists the tools as JSON inside `<tools>` tags; a
//! call is `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, one per line when several are
//! allowed; a result goes back as `<tool_response>…</tool_response>` in a user turn. This is the
//! layout Hermes- and Qwen-style models are trained on. The grammar makes every call valid: the
//! name one of the offered tools, the arguments valid under that tool's schema; with `auto` the
//! model may answer in text instead (text that does not begin with `<`).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use soramai_kernels::grammar::{Grammar, json_layout};

use crate::PlatformError;

/// Most tools one request may offer.
pub const MAX_TOOLS: usize = 128;

const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";

/// One message of a chat.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `developer` (as system), `user`, `assistant` or `tool` (a tool's result).
    pub role: String,
    /// The text.
    #[serde(default)]
    pub content: String,
    /// The calls an assistant turn made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a tool message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message with text only.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into(), ..ChatMessage::default() }
    }
}

/// A function the model may call (an entry of OpenAI's `tools`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: ToolKind,
    /// The function.
    pub function: FunctionDef,
}

/// The kind of a tool or call: functions only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolKind {
    /// A function.
    Function,
}

/// A function's name, purpose and parameters.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionDef {
    /// 1 to 64 letters, digits, `_` or `-`; unique among the tools.
    pub name: String,
    /// What it does (shown to the model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON schema of its arguments object (none: no arguments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// OpenAI's strict mode: arguments are held to the schema either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// Whether the model may, must or must not call a tool, or which one it must call.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ToolChoice {
    /// `none`, `auto` or `required`.
    Mode(ToolMode),
    /// `{"type": "function", "function": {"name": …}}`: that function.
    Named(NamedTool),
}

/// The modes of [`ToolChoice`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolMode {
    /// No call: the tools are not offered.
    None,
    /// A call or a text answer, as the model chooses (the default with tools).
    Auto,
    /// At least one call.
    Required,
}

/// A function the model must call.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NamedTool {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: ToolKind,
    /// Its name.
    pub function: NamedFunction,
}

/// The name in a [`NamedTool`].
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NamedFunction {
    /// The function's name.
    pub name: String,
}

/// A call the model made (or, in a chat's history, one it made before).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    /// The call's id, which the tool's result names.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: ToolKind,
    /// The function and its arguments.
    pub function: FunctionCall,
}

/// The function of a [`ToolCall`].
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionCall {
    /// Its name.
    pub name: String,
    /// Its arguments: a JSON object, as text.
    pub arguments: String,
}

fn bad<T>(param: &'static str, m: impl Into<String>) -> Result<T, PlatformError> {
    Err(PlatformError::InvalidParameter { param, message: m.into() })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The tools a generation offers and how the model must use them.
#[derive(Clone, Debug)]
pub(super) struct ToolPlan {
    tools: Vec<Tool>,
    required: bool,
    parallel: bool,
}

impl ToolPlan {
    /// The plan for a request's tools, choice and `parallel_tool_calls`; None when no tool is
    /// offered (none given, or `tool_choice: none`). Malformed tools or choices are refused, and
    /// tools with a `response_format` (`formatted`) other than text.
    pub(super) fn new(
        tools: &[Tool],
        choice: Option<&ToolChoice>,
        parallel: Option<bool>,
        formatted: bool,
    ) -> Result<Option<Self>, PlatformError> {
        if tools.is_empty() {
            if choice.is_some() {
                return bad("tool_choice", "tool_choice needs tools");
            }
            if parallel.is_some() {
                return bad("parallel_tool_calls", "parallel_tool_calls needs tools");
            }
            return Ok(None);
        }
        if tools.len() > MAX_TOOLS {
            return bad("tools", format!("tools holds at most {MAX_TOOLS} functions"));
        }
        for (i, t) in tools.iter().enumerate() {
            let f = &t.function;
            if !valid_name(&f.name) {
                return bad("tools", format!("tools[{i}].function.name is 1 to 64 letters, digits, _ or -"));
            }
            if tools[..i].iter().any(|o| o.function.name == f.name) {
                return bad("tools", format!("tools[{i}].function.name {:?} is given twice", f.name));
            }
            if f.parameters.as_ref().is_some_and(|p| !p.is_object()) {
                return bad("tools", format!("tools[{i}].function.parameters is a JSON schema object"));
            }
        }
        let mut tools = tools.to_vec();
        let required = match choice {
            None | Some(ToolChoice::Mode(ToolMode::Auto)) => false,
            Some(ToolChoice::Mode(ToolMode::None)) => return Ok(None),
            Some(ToolChoice::Mode(ToolMode::Required)) => true,
            Some(ToolChoice::Named(n)) => {
                let Some(t) = tools.iter().find(|t| t.function.name == n.function.name).cloned() else {
                    return bad(
                        "tool_choice",
                        format!("tool_choice names {:?}, which is not in tools", n.function.name),
                    );
                };
                tools = vec![t];
                true
            }
        };
        if formatted {
            return bad("response_format", "response_format and tools together are not supported");
        }
        Ok(Some(ToolPlan { tools, required, parallel: parallel.unwrap_or(true) }))
    }

    /// The system text that offers the tools and says how to call them.
    fn system_text(&self) -> String {
        let mut s = String::from(
            "You can call functions to help answer. Their signatures are inside <tools></tools>:\n<tools>\n",
        );
        for t in &self.tools {
            let f = &t.function;
            let sig = json!({"name": f.name, "description": f.description, "parameters": parameters(f)});
            s.push_str(&sig.to_string());
            s.push('\n');
        }
        s.push_str("</tools>\nTo call a function, reply with its name and a JSON object of arguments inside tags:\n");
        s.push_str("<tool_call>{\"name\": \"function_name\", \"arguments\": {\"argument\": \"value\"}}</tool_call>\n");
        if self.parallel {
            s.push_str("Put each call on its own line. ");
        } else {
            s.push_str("Make at most one call. ");
        }
        s.push_str(if self.required { "Reply with function calls only." } else { "Otherwise answer in plain text." });
        s
    }

    /// What the output is held to: calls whose names are the tools' and whose arguments are
    /// valid under their schemas, or (unless a call is required) text that does not begin with `<`.
    pub(super) fn grammar(&self) -> Grammar {
        let calls: Vec<Value> = self
            .tools
            .iter()
            .map(|t| {
                json!({"type": "object", "properties": {"name": {"const": t.function.name},
                       "arguments": parameters(&t.function)},
                       "required": ["name", "arguments"], "additionalProperties": false})
            })
            .collect();
        let body = json_layout(json!({"anyOf": calls}));
        let calls_rule = if self.parallel { "call (\"\\n\" call)*" } else { "call" };
        let start = if self.required { "calls" } else { "calls | TEXT" };
        Grammar::Lark(format!(
            "start: {start}\ncalls: {calls_rule}\ncall: \"{CALL_OPEN}\" body \"{CALL_CLOSE}\"\nbody: %json {body}\nTEXT: /[^<][\\s\\S]*/\n"
        ))
    }

    /// Offers the tools in the system prompt of messages already [`flatten`]ed (earlier calls
    /// and their results as text in the protocol's layout).
    pub(super) fn offer(&self, messages: &mut Vec<(String, String)>) {
        add_system(messages, &self.system_text());
    }
}

/// Adds a text to the system prompt: after the first message's text when it is a system
/// message, else as a new first message.
pub(super) fn add_system(messages: &mut Vec<(String, String)>, text: &str) {
    match messages.first_mut() {
        Some((role, content)) if role == "system" => {
            content.push_str("\n\n");
            content.push_str(text);
        }
        _ => messages.insert(0, ("system".into(), text.to_owned())),
    }
}

/// A function's parameters schema (an empty object when it takes none).
fn parameters(f: &FunctionDef) -> Value {
    f.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}}))
}

/// A chat's messages as (role, text) for the template: tool calls in assistant turns written out,
/// tool results in user turns (consecutive results in one). Refuses a tool message that answers
/// no earlier call, calls outside assistant turns and arguments that are not a JSON object.
pub(super) fn flatten(messages: &[ChatMessage]) -> Result<Vec<(String, String)>, PlatformError> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(messages.len());
    let mut call_ids: Vec<&str> = Vec::new();
    let mut in_results = false;
    for (i, m) in messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            _ => return bad("messages", "a message role is system, developer, user, assistant or tool"),
        };
        if !m.tool_calls.is_empty() && role != "assistant" {
            return bad("messages", format!("messages[{i}]: only an assistant message has tool_calls"));
        }
        if m.tool_call_id.is_some() != (role == "tool") {
            return bad(
                "messages",
                format!("messages[{i}]: a tool message, and only a tool message, has a tool_call_id"),
            );
        }
        if role == "tool" {
            let id = m.tool_call_id.as_deref().unwrap_or_default();
            if !call_ids.contains(&id) {
                return bad("messages", format!("messages[{i}]: tool_call_id {id:?} answers no earlier tool call"));
            }
            let result = format!("<tool_response>\n{}\n</tool_response>", m.content);
            match out.last_mut() {
                Some((_, text)) if in_results => {
                    text.push('\n');
                    text.push_str(&result);
                }
                _ => out.push(("user".into(), result)),
            }
            in_results = true;
            continue;
        }
        in_results = false;
        let mut text = m.content.clone();
        for (k, c) in m.tool_calls.iter().enumerate() {
            let Ok(arguments) = serde_json::from_str::<Value>(&c.function.arguments) else {
                return bad("messages", format!("messages[{i}].tool_calls[{k}].function.arguments is not JSON"));
            };
            if !arguments.is_object() {
                return bad(
                    "messages",
                    format!("messages[{i}].tool_calls[{k}].function.arguments is not a JSON object"),
                );
            }
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(CALL_OPEN);
            text.push_str(&json!({"name": c.function.name, "arguments": arguments}).to_string());
            text.push_str(CALL_CLOSE);
            call_ids.push(&c.id);
        }
        out.push((role.into(), text));
    }
    Ok(out)
}

/// Whether text is (the start of) a call rather than an answer.
pub(super) fn is_call(text: &str) -> bool {
    text.starts_with('<')
}

/// The calls an output holds, ids made from `id` (the request's) and the choice's index, and
/// whether the output is complete calls; None when it holds no complete call (a text answer, or
/// one call cut short). An output cut short after complete calls gives those.
pub(super) fn parse_calls(text: &str, id: &str, index: usize) -> Option<(Vec<ToolCall>, bool)> {
    let suffix = id.rsplit('-').next().unwrap_or(id);
    let lines: Vec<&str> = text.split('\n').collect();
    let mut calls = Vec::new();
    for (k, line) in lines.iter().enumerate() {
        let parsed = line
            .strip_prefix(CALL_OPEN)
            .and_then(|l| l.strip_suffix(CALL_CLOSE))
            .and_then(|body| serde_json::from_str::<Value>(body).ok())
            .and_then(|v| Some((v.get("name")?.as_str()?.to_owned(), v.get("arguments")?.to_string())));
        match parsed {
            Some((name, arguments)) => calls.push(ToolCall {
                id: format!("call_{suffix}_{index}_{k}"),
                kind: ToolKind::Function,
                function: FunctionCall { name, arguments },
            }),
            // Only the last line may be a call cut short.
            None if k + 1 == lines.len() && !calls.is_empty() => return Some((calls, false)),
            None => return None,
        }
    }
    (!calls.is_empty()).then_some((calls, true))
}
