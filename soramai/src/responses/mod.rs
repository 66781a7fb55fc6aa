//! OpenAI's Responses API over the platform's chat.
//!
//! A [`ResponseRequest`] (input items, instructions, function tools, `text.format`,
//! `previous_response_id`) runs as one chat generation — the same batched engine, tenant checks,
//! credits and constrained decoding as chat completions — and streams as the Responses API's
//! typed events ([`ResponseEvent`]). The finished [`Response`] is stored, unless `store: false`,
//! with the conversation so far, encrypted under the tenant's key; a later request names it in
//! `previous_response_id` to go on from it (its instructions are not carried over, as OpenAI's
//! are not).
//!
//! The subset served, as vLLM's and llama.cpp's servers serve it: text and function-call input
//! items, function tools, `tool_choice`, `parallel_tool_calls`, `text.format` (`text`,
//! `json_object`, `json_schema`), `max_output_tokens`, `temperature`, `top_p`, `metadata`,
//! `store`, `previous_response_id`, `truncation: disabled`. Built-in tools (web or file search,
//! computer use), images and files, reasoning, background mode and conversations are refused by
//! name.

mod input;
mod types;

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use soramai_core::{Core, ObjectPath, Principal, Scope, TenantId};

use crate::PlatformError;
use crate::platform::{
    ChatMessage, FinishReason, FunctionDef, GenerationOptions, GenerationStream, JsonSchemaFormat, NamedFunction,
    NamedTool, Platform, Prompt, ResponseFormat, StreamEvent, Tool, ToolCall, ToolChoice, ToolKind, ToolMode,
};

pub use input::{InputItem, input_items};
use input::{bad, listed, to_messages};
pub use types::*;

/// What is stored of a response: it, and the conversation that continues from it.
#[derive(Serialize, Deserialize)]
struct Record {
    response: Response,
    /// The messages before it, its input and its output (its instructions left out).
    conversation: Vec<ChatMessage>,
    /// Its input items as OpenAI lists them.
    #[serde(default)]
    input: Vec<serde_json::Value>,
}

/// Where a finished response is kept, with its input items.
struct Keep {
    core: Arc<Core>,
    tenant: TenantId,
    input: Vec<serde_json::Value>,
}

/// Where a stored response lives; None for an id no response can have.
fn record_path(id: &str) -> Option<ObjectPath> {
    let hex = id.strip_prefix("resp_")?;
    if hex.len() != 24 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    ObjectPath::new(format!("responses/{id}.json")).ok()
}

fn not_found() -> PlatformError {
    soramai_core::Error::NotFound { kind: "response" }.into()
}

fn load(core: &Core, tenant: &TenantId, id: &str) -> Result<Record, PlatformError> {
    let path = record_path(id).ok_or_else(not_found)?;
    let bytes = core.get_object(tenant, &path).map_err(|e| match e {
        soramai_core::Error::NotFound { .. } => not_found(),
        other => other.into(),
    })?;
    serde_json::from_slice(&bytes).map_err(|_| PlatformError::Engine("a stored response does not parse".into()))
}

/// The request's generation options, its parameters named as the Responses API names them.
fn options(req: &ResponseRequest) -> Result<GenerationOptions, PlatformError> {
    if let Some(m) = &req.metadata {
        if m.len() > MAX_METADATA {
            return bad("metadata", format!("metadata holds at most {MAX_METADATA} pairs"));
        }
        if m.iter().any(|(k, v)| k.chars().count() > 64 || v.chars().count() > 512) {
            return bad("metadata", "a metadata key is at most 64 characters and a value 512");
        }
    }
    let response_format = req.text.as_ref().map(|t| match &t.format {
        TextFormat::Text => ResponseFormat::Text {},
        TextFormat::JsonObject => ResponseFormat::JsonObject {},
        TextFormat::JsonSchema { name, schema, description, strict } => ResponseFormat::JsonSchema {
            json_schema: JsonSchemaFormat {
                name: name.clone(),
                description: description.clone(),
                schema: Some(schema.clone()),
                strict: *strict,
            },
        },
    });
    let tools = req
        .tools
        .iter()
        .map(|t| Tool {
            kind: ToolKind::Function,
            function: FunctionDef {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: t.parameters.clone(),
                strict: t.strict,
            },
        })
        .collect();
    let tool_choice = req.tool_choice.as_ref().map(|c| match c {
        ResponseToolChoice::Mode(m) => ToolChoice::Mode(*m),
        ResponseToolChoice::Function(f) => {
            ToolChoice::Named(NamedTool { kind: ToolKind::Function, function: NamedFunction { name: f.name.clone() } })
        }
    });
    Ok(GenerationOptions {
        max_tokens: req.max_output_tokens.map(|t| t as usize),
        temperature: req.temperature,
        top_p: req.top_p,
        response_format,
        tools,
        tool_choice,
        parallel_tool_calls: req.parallel_tool_calls,
        ..GenerationOptions::default()
    })
}

/// A chat error's parameter as the Responses API names it.
fn renamed(e: PlatformError) -> PlatformError {
    match e {
        PlatformError::InvalidParameter { param, message } => {
            let param = match param {
                "messages" => "input",
                "response_format" => "text",
                "max_tokens" => "max_output_tokens",
                other => other,
            };
            let message = message.replace("response_format", "text.format").replace("messages[", "input[");
            PlatformError::InvalidParameter { param, message }
        }
        other => other,
    }
}

impl Platform {
    /// Starts a response (inference scope): the stored conversation it continues, the
    /// instructions and the input run as one chat. Checks everything before anything is charged.
    pub fn create_response(
        &self,
        principal: &Principal,
        request: &ResponseRequest,
    ) -> Result<ResponseStream, PlatformError> {
        principal.require(Scope::Inference)?;
        let items = input_items(&request.input)?;
        let options = options(request)?;
        let mut conversation = match &request.previous_response_id {
            None => Vec::new(),
            Some(id) => match load(&self.core, principal.tenant(), id) {
                Ok(r) => r.conversation,
                Err(e) if e.kind() == crate::ErrorKind::NotFound => {
                    return bad("previous_response_id", "previous_response_id names no stored response of this tenant");
                }
                Err(e) => return Err(e),
            },
        };
        let given = items.clone();
        conversation.extend(to_messages(items));
        let mut messages = Vec::with_capacity(conversation.len() + 1);
        if let Some(i) = &request.instructions {
            messages.push(ChatMessage::new("system", i.clone()));
        }
        messages.extend(conversation.iter().cloned());
        let stream = self.generate(principal, &request.model, &Prompt::Chat(messages), &options).map_err(renamed)?;
        let suffix = stream.id().rsplit('-').next().unwrap_or_default().to_owned();
        let response = Response {
            id: format!("resp_{suffix}"),
            object: "response".into(),
            created_at: stream.created(),
            completed_at: None,
            status: ResponseStatus::InProgress,
            error: None,
            incomplete_details: None,
            instructions: request.instructions.clone(),
            max_output_tokens: request.max_output_tokens,
            model: request.model.clone(),
            output: Vec::new(),
            parallel_tool_calls: request.parallel_tool_calls.unwrap_or(true),
            previous_response_id: request.previous_response_id.clone(),
            store: request.store.unwrap_or(true),
            temperature: request.temperature.unwrap_or(1.0),
            text: request.text.clone().unwrap_or_default(),
            tool_choice: request.tool_choice.clone().unwrap_or(ResponseToolChoice::Mode(ToolMode::Auto)),
            tools: request.tools.clone(),
            top_p: request.top_p.unwrap_or(1.0),
            truncation: Truncation::Disabled,
            usage: None,
            metadata: request.metadata.clone().unwrap_or_default(),
        };
        let store = response.store.then(|| Keep {
            core: self.core.clone(),
            tenant: principal.tenant().clone(),
            input: listed(&given, &suffix),
        });
        Ok(ResponseStream::new(stream, Box::new(response), conversation, store, suffix))
    }

    /// A stored response of the caller's tenant (inference scope); another tenant's id, or one
    /// made with `store: false`, is not found.
    pub fn response(&self, principal: &Principal, id: &str) -> Result<Response, PlatformError> {
        principal.require(Scope::Inference)?;
        Ok(load(&self.core, principal.tenant(), id)?.response)
    }

    /// A stored response's input items (inference scope), in the order given, as OpenAI lists
    /// them (`GET /v1/responses/{id}/input_items`).
    pub fn response_input_items(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<Vec<serde_json::Value>, PlatformError> {
        principal.require(Scope::Inference)?;
        Ok(load(&self.core, principal.tenant(), id)?.input)
    }

    /// Deletes a stored response (inference scope); a response that continued it keeps its own
    /// copy of the conversation.
    pub fn delete_response(&self, principal: &Principal, id: &str) -> Result<(), PlatformError> {
        principal.require(Scope::Inference)?;
        let path = record_path(id).ok_or_else(not_found)?;
        self.core.delete_object(principal.tenant(), &path).map_err(|e| match e {
            soramai_core::Error::NotFound { .. } => not_found(),
            other => other.into(),
        })
    }
}

/// A response in progress: yields [`ResponseEvent`]s, blocking ([`Iterator`]) or async
/// ([`ResponseStream::next_event`]); [`ResponseStream::collect`] runs it to its end. When it ends
/// it is stored (unless `store: false`) before its last event. Dropped early, the generation is
/// cancelled and nothing is stored.
pub struct ResponseStream {
    inner: Option<GenerationStream>,
    response: Box<Response>,
    conversation: Vec<ChatMessage>,
    store: Option<Keep>,
    suffix: String,
    queued: VecDeque<ResponseEvent>,
    seq: u64,
    /// The open message's text, while one is open.
    text: Option<String>,
}

impl std::fmt::Debug for ResponseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStream").field("id", &self.response.id).finish()
    }
}

impl ResponseStream {
    fn new(
        inner: GenerationStream,
        response: Box<Response>,
        conversation: Vec<ChatMessage>,
        store: Option<Keep>,
        suffix: String,
    ) -> Self {
        let mut s = ResponseStream {
            inner: Some(inner),
            response,
            conversation,
            store,
            suffix,
            queued: VecDeque::new(),
            seq: 0,
            text: None,
        };
        let r = s.response.clone();
        s.push(ResponseEventKind::Created { response: r.clone() });
        s.push(ResponseEventKind::InProgress { response: r });
        s
    }

    /// The response's id.
    pub fn id(&self) -> &str {
        &self.response.id
    }

    /// Keeps a tier permit until the stream ends or is dropped.
    pub fn hold(mut self, permit: crate::Permit) -> Self {
        self.inner = self.inner.take().map(|s| s.hold(permit));
        self
    }

    fn push(&mut self, kind: ResponseEventKind) {
        self.queued.push_back(ResponseEvent { sequence_number: self.seq, kind });
        self.seq += 1;
    }

    fn message_id(&self) -> String {
        format!("msg_{}", self.suffix)
    }

    fn open_message(&mut self) {
        if self.text.is_some() {
            return;
        }
        self.text = Some(String::new());
        let item = OutputItem::Message {
            id: self.message_id(),
            status: ResponseStatus::InProgress,
            role: "assistant".into(),
            content: Vec::new(),
        };
        let output_index = self.response.output.len();
        self.push(ResponseEventKind::OutputItemAdded { output_index, item });
        let part = OutputContent::OutputText { text: String::new(), annotations: Vec::new() };
        self.push(ResponseEventKind::ContentPartAdded {
            item_id: self.message_id(),
            output_index,
            content_index: 0,
            part,
        });
    }

    fn close_message(&mut self) {
        let Some(text) = self.text.take() else { return };
        let output_index = self.response.output.len();
        let item_id = self.message_id();
        self.push(ResponseEventKind::OutputTextDone {
            item_id: item_id.clone(),
            output_index,
            content_index: 0,
            text: text.clone(),
            logprobs: Vec::new(),
        });
        let part = OutputContent::OutputText { text: text.clone(), annotations: Vec::new() };
        self.push(ResponseEventKind::ContentPartDone { item_id, output_index, content_index: 0, part: part.clone() });
        let item = OutputItem::Message {
            id: self.message_id(),
            status: ResponseStatus::Completed,
            role: "assistant".into(),
            content: vec![part],
        };
        self.push(ResponseEventKind::OutputItemDone { output_index, item: item.clone() });
        self.response.output.push(item);
        self.conversation.push(ChatMessage::new("assistant", text));
    }

    fn calls(&mut self, calls: Vec<ToolCall>) {
        self.close_message();
        for (k, c) in calls.iter().enumerate() {
            let output_index = self.response.output.len();
            let id = format!("fc_{}_{k}", self.suffix);
            let item = |arguments: String, status| OutputItem::FunctionCall {
                id: id.clone(),
                call_id: c.id.clone(),
                name: c.function.name.clone(),
                arguments,
                status,
            };
            self.push(ResponseEventKind::OutputItemAdded {
                output_index,
                item: item(String::new(), ResponseStatus::InProgress),
            });
            let arguments = c.function.arguments.clone();
            self.push(ResponseEventKind::FunctionCallArgumentsDelta {
                item_id: id.clone(),
                output_index,
                delta: arguments.clone(),
            });
            self.push(ResponseEventKind::FunctionCallArgumentsDone {
                item_id: id.clone(),
                output_index,
                name: c.function.name.clone(),
                arguments: arguments.clone(),
            });
            let done = item(arguments, ResponseStatus::Completed);
            self.push(ResponseEventKind::OutputItemDone { output_index, item: done.clone() });
            self.response.output.push(done);
        }
        self.conversation.push(ChatMessage { tool_calls: calls, ..ChatMessage::new("assistant", "") });
    }

    /// Takes in the generation's next event, queueing what it means.
    fn observe(&mut self, ev: Option<Result<StreamEvent, PlatformError>>) -> Result<(), PlatformError> {
        match ev {
            Some(Ok(StreamEvent::Delta { index: 0, text, .. })) => {
                self.open_message();
                if let Some(t) = self.text.as_mut() {
                    t.push_str(&text);
                }
                if !text.is_empty() {
                    let output_index = self.response.output.len();
                    self.push(ResponseEventKind::OutputTextDelta {
                        item_id: self.message_id(),
                        output_index,
                        content_index: 0,
                        delta: text,
                        logprobs: Vec::new(),
                    });
                }
                Ok(())
            }
            Some(Ok(StreamEvent::ToolCalls { index: 0, calls })) => {
                self.calls(calls);
                Ok(())
            }
            // One choice only: a response has no `n`.
            Some(Ok(StreamEvent::Delta { .. } | StreamEvent::ToolCalls { .. })) => Ok(()),
            Some(Ok(StreamEvent::Done { finish_reason, usage, .. })) => {
                self.inner = None;
                if self.response.output.is_empty() {
                    self.open_message();
                }
                self.close_message();
                let incomplete = finish_reason == FinishReason::Length;
                self.response.status = if incomplete { ResponseStatus::Incomplete } else { ResponseStatus::Completed };
                self.response.incomplete_details =
                    incomplete.then(|| IncompleteDetails { reason: "max_output_tokens".into() });
                self.response.usage = Some(usage.into());
                self.response.completed_at = Some(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(self.response.created_at, |d| d.as_secs()),
                );
                if let Some(Keep { core, tenant, input }) = self.store.take() {
                    let record = Record {
                        response: (*self.response).clone(),
                        conversation: std::mem::take(&mut self.conversation),
                        input,
                    };
                    let bytes = serde_json::to_vec(&record)
                        .map_err(|e| PlatformError::Engine(format!("a response could not be written: {e}")))?;
                    let path = record_path(&self.response.id).ok_or_else(not_found)?;
                    core.put_object(&tenant, &path, &bytes)?;
                }
                let response = self.response.clone();
                self.push(if incomplete {
                    ResponseEventKind::Incomplete { response }
                } else {
                    ResponseEventKind::Completed { response }
                });
                Ok(())
            }
            Some(Err(e)) => {
                self.inner = None;
                Err(e)
            }
            None => {
                let ended = self.inner.take().is_some();
                if ended { Err(PlatformError::Engine("the generation ended without a result".into())) } else { Ok(()) }
            }
        }
    }

    /// The next event, waiting for it without blocking the async runtime; `None` after the last.
    pub async fn next_event(&mut self) -> Option<Result<ResponseEvent, PlatformError>> {
        loop {
            if let Some(ev) = self.queued.pop_front() {
                return Some(Ok(ev));
            }
            let ev = self.inner.as_mut()?.next_event().await;
            if let Err(e) = self.observe(ev) {
                return Some(Err(e));
            }
        }
    }

    /// Runs the response to its end and returns it.
    pub fn collect(mut self) -> Result<Response, PlatformError> {
        for ev in self.by_ref() {
            if let ResponseEventKind::Completed { response } | ResponseEventKind::Incomplete { response } = ev?.kind {
                return Ok(*response);
            }
        }
        Err(PlatformError::Engine("the response ended without a result".into()))
    }
}

impl Iterator for ResponseStream {
    type Item = Result<ResponseEvent, PlatformError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(ev) = self.queued.pop_front() {
                return Some(Ok(ev));
            }
            let ev = self.inner.as_mut()?.next();
            if let Err(e) = self.observe(ev) {
                return Some(Err(e));
            }
        }
    }
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_well_formed_ids_have_a_path() {
        assert!(record_path("resp_0123456789abcdef01234567").is_some());
        for id in ["resp_../../x", "resp_", "chatcmpl-0123456789abcdef01234567", "resp_0123456789abcdef0123456z"] {
            assert!(record_path(id).is_none(), "{id}");
        }
    }

    #[test]
    fn unknown_request_fields_are_refused() {
        let r: Result<ResponseRequest, _> =
            serde_json::from_value(json!({"model": "m", "input": "x", "reasoning": {"effort": "high"}}));
        assert!(r.is_err());
        let r: Result<ResponseRequest, _> =
            serde_json::from_value(json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}));
        assert!(r.is_err());
        let r: Result<ResponseRequest, _> =
            serde_json::from_value(json!({"model": "m", "input": "x", "truncation": "auto"}));
        assert!(r.is_err());
    }
}
