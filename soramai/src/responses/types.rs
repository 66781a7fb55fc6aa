//! The Responses API's wire types: the request, the response, its output items and its stream's
//! events, in OpenAI's shapes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::platform::{ToolKind, ToolMode, Usage};

/// Most input items one request may carry.
pub const MAX_INPUT_ITEMS: usize = 2_048;

/// Most `metadata` pairs (OpenAI's limit), each key at most 64 characters and value 512.
pub const MAX_METADATA: usize = 16;

/// A response as a caller asks for it (`POST /v1/responses`, less `stream`, which is the
/// transport's to honour).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseRequest {
    /// A base model id or one of the tenant's fine-tuned ones.
    pub model: String,
    /// A user message as text, or input items: messages (`role` and `content`, text or
    /// `input_text`/`output_text` parts), `function_call` items and `function_call_output` items.
    pub input: ResponseInput,
    /// A system message put before the conversation (not carried over to a response that
    /// continues this one).
    #[serde(default)]
    pub instructions: Option<String>,
    /// A stored response of the tenant's to continue: its conversation, output included, comes
    /// before `input`.
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// Whether to keep the response for retrieval and continuation (default true).
    #[serde(default)]
    pub store: Option<bool>,
    /// Functions the model may call.
    #[serde(default)]
    pub tools: Vec<FunctionTool>,
    /// `none`, `auto`, `required`, or `{"type": "function", "name": …}`.
    #[serde(default)]
    pub tool_choice: Option<ResponseToolChoice>,
    /// Whether the output may hold several calls (default true).
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// The output's format: text, any JSON object or JSON valid under a schema.
    #[serde(default)]
    pub text: Option<TextConfig>,
    /// Most tokens to generate.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    /// Softmax temperature (0 to 2).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Up to 16 pairs kept with the response.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// `disabled` only: a conversation longer than the context is refused, never cut.
    #[serde(default)]
    pub truncation: Option<Truncation>,
}

/// [`ResponseRequest::input`].
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ResponseInput {
    /// One user message.
    Text(String),
    /// Input items, read by [`input_items`].
    Items(Vec<Value>),
}

/// How a conversation longer than the context is handled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Refused with a context-length error.
    #[default]
    Disabled,
}

/// A function tool, in the Responses API's flat shape.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionTool {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: ToolKind,
    /// Its name.
    pub name: String,
    /// What it does (shown to the model).
    #[serde(default)]
    pub description: Option<String>,
    /// A JSON schema of its arguments object.
    #[serde(default)]
    pub parameters: Option<Value>,
    /// OpenAI's strict mode: the arguments are held to the schema either way.
    #[serde(default)]
    pub strict: Option<bool>,
}

/// [`ResponseRequest::tool_choice`].
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ResponseToolChoice {
    /// `none`, `auto` or `required`.
    Mode(ToolMode),
    /// That function.
    Function(NamedFunctionChoice),
}

/// `{"type": "function", "name": …}`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NamedFunctionChoice {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: ToolKind,
    /// The function's name.
    pub name: String,
}

/// [`ResponseRequest::text`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    /// The format.
    #[serde(default)]
    pub format: TextFormat,
}

/// The output's format.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TextFormat {
    /// Free text.
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid under a schema (held to it token by token).
    JsonSchema {
        /// 1 to 64 letters, digits, `_` or `-`.
        name: String,
        /// The schema.
        schema: Value,
        /// What the output is for (shown to the model in the system prompt).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        /// OpenAI's strict mode: the output is held to the schema either way.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        strict: Option<bool>,
    },
}

/// A response: what OpenAI's `GET /v1/responses/{id}` returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// `resp_…`.
    pub id: String,
    /// Always `response`.
    pub object: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds, once finished.
    pub completed_at: Option<u64>,
    /// `in_progress`, `completed` or `incomplete`.
    pub status: ResponseStatus,
    /// Always null: a failed response is an error, never stored.
    pub error: Option<Value>,
    /// Why it is incomplete.
    pub incomplete_details: Option<IncompleteDetails>,
    /// The request's instructions.
    pub instructions: Option<String>,
    /// The request's limit.
    pub max_output_tokens: Option<u32>,
    /// The model as the caller named it.
    pub model: String,
    /// A message, or the function calls the model made.
    pub output: Vec<OutputItem>,
    /// Whether several calls were allowed.
    pub parallel_tool_calls: bool,
    /// The response this one continues.
    pub previous_response_id: Option<String>,
    /// Whether it is stored.
    pub store: bool,
    /// The temperature used.
    pub temperature: f32,
    /// The output's format.
    pub text: TextConfig,
    /// The tool choice.
    pub tool_choice: ResponseToolChoice,
    /// The tools offered.
    pub tools: Vec<FunctionTool>,
    /// The nucleus used.
    pub top_p: f32,
    /// Always `disabled`.
    pub truncation: Truncation,
    /// Token counts, once finished.
    pub usage: Option<ResponseUsage>,
    /// The request's metadata.
    pub metadata: BTreeMap<String, String>,
}

impl Response {
    /// The output's text: every message's text parts, joined.
    pub fn output_text(&self) -> String {
        let mut s = String::new();
        for item in &self.output {
            if let OutputItem::Message { content, .. } = item {
                for OutputContent::OutputText { text, .. } in content {
                    s.push_str(text);
                }
            }
        }
        s
    }
}

/// Where a response or an output item stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseStatus {
    /// Being generated.
    InProgress,
    /// Finished.
    Completed,
    /// Cut short (`max_output_tokens`, the credits or the context).
    Incomplete,
}

/// [`Response::incomplete_details`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncompleteDetails {
    /// `max_output_tokens`.
    pub reason: String,
}

/// One item of a response's output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    /// The assistant's text.
    Message {
        /// `msg_…`.
        id: String,
        /// Where it stands.
        status: ResponseStatus,
        /// Always `assistant`.
        role: String,
        /// Its text.
        content: Vec<OutputContent>,
    },
    /// A call of one of the offered functions.
    FunctionCall {
        /// `fc_…`.
        id: String,
        /// The id a `function_call_output` item names.
        call_id: String,
        /// The function.
        name: String,
        /// Its arguments: a JSON object, as text.
        arguments: String,
        /// Where it stands.
        status: ResponseStatus,
    },
}

/// A part of an output message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputContent {
    /// Text.
    OutputText {
        /// The text.
        text: String,
        /// Always empty.
        annotations: Vec<Value>,
    },
}

/// A response's token counts, in the Responses API's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseUsage {
    /// Prompt tokens (the whole conversation).
    pub input_tokens: u64,
    /// How they were counted.
    pub input_tokens_details: InputTokensDetails,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Reasoning tokens among them (none).
    pub output_tokens_details: OutputTokensDetails,
    /// Their sum.
    pub total_tokens: u64,
}

/// [`ResponseUsage::input_tokens_details`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputTokensDetails {
    /// Prompt tokens whose states came from the tenant's prefix cache.
    pub cached_tokens: u64,
    /// Always 0: keeping a prompt's states in the prefix cache is not counted or charged apart.
    pub cache_write_tokens: u64,
}

/// [`ResponseUsage::output_tokens_details`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputTokensDetails {
    /// Always 0.
    pub reasoning_tokens: u64,
}

impl From<Usage> for ResponseUsage {
    fn from(u: Usage) -> Self {
        ResponseUsage {
            input_tokens: u.prompt_tokens,
            input_tokens_details: InputTokensDetails {
                cached_tokens: u.prompt_tokens_details.cached_tokens,
                cache_write_tokens: 0,
            },
            output_tokens: u.completion_tokens,
            output_tokens_details: OutputTokensDetails { reasoning_tokens: 0 },
            total_tokens: u.total_tokens,
        }
    }
}

/// One event of a streamed response, numbered in order (`sequence_number`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResponseEvent {
    /// Its place in the stream, from 0.
    pub sequence_number: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: ResponseEventKind,
}

impl ResponseEvent {
    /// The event's type (`response.output_text.delta`, …): its `type` field and its SSE name.
    pub fn name(&self) -> &'static str {
        use ResponseEventKind::*;
        match self.kind {
            Created { .. } => "response.created",
            InProgress { .. } => "response.in_progress",
            OutputItemAdded { .. } => "response.output_item.added",
            ContentPartAdded { .. } => "response.content_part.added",
            OutputTextDelta { .. } => "response.output_text.delta",
            OutputTextDone { .. } => "response.output_text.done",
            ContentPartDone { .. } => "response.content_part.done",
            FunctionCallArgumentsDelta { .. } => "response.function_call_arguments.delta",
            FunctionCallArgumentsDone { .. } => "response.function_call_arguments.done",
            OutputItemDone { .. } => "response.output_item.done",
            Completed { .. } => "response.completed",
            Incomplete { .. } => "response.incomplete",
        }
    }
}

/// The events of a streamed response, as OpenAI names and shapes them.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum ResponseEventKind {
    /// The response began.
    #[serde(rename = "response.created")]
    Created {
        /// It, in progress, with no output yet.
        response: Box<Response>,
    },
    /// It is being generated.
    #[serde(rename = "response.in_progress")]
    InProgress {
        /// It.
        response: Box<Response>,
    },
    /// An output item began.
    #[serde(rename = "response.output_item.added")]
    OutputItemAdded {
        /// Its place in the output.
        output_index: usize,
        /// It, in progress.
        item: OutputItem,
    },
    /// A message's text part began.
    #[serde(rename = "response.content_part.added")]
    ContentPartAdded {
        /// The message.
        item_id: String,
        /// Its place in the output.
        output_index: usize,
        /// The part's place in the message.
        content_index: usize,
        /// The part, empty.
        part: OutputContent,
    },
    /// More text.
    #[serde(rename = "response.output_text.delta")]
    OutputTextDelta {
        /// The message.
        item_id: String,
        /// Its place in the output.
        output_index: usize,
        /// The part's place in the message.
        content_index: usize,
        /// The new text.
        delta: String,
        /// Always empty.
        logprobs: Vec<Value>,
    },
    /// A text part's whole text.
    #[serde(rename = "response.output_text.done")]
    OutputTextDone {
        /// The message.
        item_id: String,
        /// Its place in the output.
        output_index: usize,
        /// The part's place in the message.
        content_index: usize,
        /// The whole text.
        text: String,
        /// Always empty.
        logprobs: Vec<Value>,
    },
    /// A message's text part ended.
    #[serde(rename = "response.content_part.done")]
    ContentPartDone {
        /// The message.
        item_id: String,
        /// Its place in the output.
        output_index: usize,
        /// The part's place in the message.
        content_index: usize,
        /// The whole part.
        part: OutputContent,
    },
    /// A call's arguments (whole: a call is known once it is complete).
    #[serde(rename = "response.function_call_arguments.delta")]
    FunctionCallArgumentsDelta {
        /// The call item.
        item_id: String,
        /// Its place in the output.
        output_index: usize,
        /// The arguments.
        delta: String,
    },
    /// A call's whole arguments.
    #[serde(rename = "response.function_call_arguments.done")]
    FunctionCallArgumentsDone {
        /// The call item.
        item_id: String,
        /// Its place in the output.
        output_index: usize,
        /// The function.
        name: String,
        /// The arguments.
        arguments: String,
    },
    /// An output item ended.
    #[serde(rename = "response.output_item.done")]
    OutputItemDone {
        /// Its place in the output.
        output_index: usize,
        /// It, whole.
        item: OutputItem,
    },
    /// The response finished.
    #[serde(rename = "response.completed")]
    Completed {
        /// It, whole, with its usage.
        response: Box<Response>,
    },
    /// The response was cut short (`max_output_tokens`).
    #[serde(rename = "response.incomplete")]
    Incomplete {
        /// It, with its usage.
        response: Box<Response>,
    },
}
