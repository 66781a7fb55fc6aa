//! Inference: chat and text completions (streamed as server-sent events) and embeddings.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use soramai::platform::{FinishReason, GenerationStream, TokenLogprob};
use soramai::{ChatMessage, GenerationOptions, Principal, Prompt, StreamEvent};

use super::*;

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    /// Anything else a part carries (`cache_control`, an image's URL, …): refused by name.
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    tool_calls: Option<Vec<soramai::ToolCall>>,
    #[serde(default)]
    tool_call_id: Option<String>,
    // What OpenAI's messages may carry and this server does not render: refused by name when
    // set (a null, as clients echo an assistant message back, is nothing).
    #[serde(default)]
    name: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    function_call: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    refusal: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    audio: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    annotations: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The sampling fields chat and completions share.
#[derive(Deserialize)]
struct Sampling {
    model: String,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    #[serde(default)]
    response_format: Option<soramai::ResponseFormat>,
}

/// The fields of [`Sampling`] that chat and completions share (`max_completion_tokens` is chat's
/// alone, as in OpenAI's API).
const SAMPLING_FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "n",
    "stream",
    "stream_options",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "response_format",
];

impl Sampling {
    pub(super) fn options(&self, logprobs: Option<usize>) -> ApiResult<GenerationOptions> {
        if self.n.is_some_and(|n| n == 0 || n as usize > soramai::MAX_CHOICES) {
            return Err(ApiError::invalid(format!("n is 1 to {}.", soramai::MAX_CHOICES)).param("n"));
        }
        if let (Some(a), Some(b)) = (self.max_tokens, self.max_completion_tokens)
            && a != b
        {
            return Err(
                ApiError::invalid("Set max_completion_tokens or max_tokens, not both.").param("max_completion_tokens")
            );
        }
        let mut logit_bias = std::collections::BTreeMap::new();
        for (token, &bias) in self.logit_bias.iter().flatten() {
            let Ok(id) = token.parse::<u32>() else {
                return Err(ApiError::invalid("logit_bias maps token ids (numbers) to biases.").param("logit_bias"));
            };
            logit_bias.insert(id, bias);
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        Ok(GenerationOptions {
            max_tokens: self.max_completion_tokens.or(self.max_tokens).map(|t| t as usize),
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop,
            logprobs,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias,
            n: self.n.map(|n| n as usize),
            response_format: self.response_format.clone(),
            // Chat sets its tools; completions have none.
            ..GenerationOptions::default()
        })
    }
}

#[derive(Deserialize)]
pub(super) struct ChatBody {
    #[serde(flatten)]
    sampling: Sampling,
    messages: Vec<InMessage>,
    #[serde(default)]
    logprobs: bool,
    #[serde(default)]
    top_logprobs: Option<u32>,
    #[serde(default)]
    tools: Option<Vec<soramai::Tool>>,
    #[serde(default)]
    tool_choice: Option<soramai::ToolChoice>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
}

impl Fields for ChatBody {
    const KNOWN: &'static [&'static str] = &[
        "messages",
        "max_completion_tokens",
        "logprobs",
        "top_logprobs",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
    ];
    const SHARED: &'static [&'static str] = SAMPLING_FIELDS;
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PromptIn {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
pub(super) struct CompletionBody {
    #[serde(flatten)]
    sampling: Sampling,
    prompt: PromptIn,
    #[serde(default)]
    logprobs: Option<u32>,
    #[serde(default)]
    echo: bool,
}

impl Fields for CompletionBody {
    const KNOWN: &'static [&'static str] = &["prompt", "logprobs", "echo"];
    const SHARED: &'static [&'static str] = SAMPLING_FIELDS;
}

fn chat_messages(messages: Vec<InMessage>) -> ApiResult<Vec<ChatMessage>> {
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        let unsupported = [
            ("name", m.name.is_some()),
            ("function_call", m.function_call.is_some()),
            ("refusal", m.refusal.is_some()),
            ("audio", m.audio.is_some()),
            ("annotations", m.annotations.is_some()),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, given)| *given) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "unsupported_parameter",
                format!("A message's {field} is not supported by this server."),
            )
            .param("messages"));
        }
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut t = String::new();
                for p in parts {
                    if p.kind != "text" {
                        return Err(ApiError::invalid("Only text content parts are supported.").param("messages"));
                    }
                    if let Some(field) = p.other.keys().next() {
                        return Err(ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_request_error",
                            "unsupported_parameter",
                            format!("A content part's {} is not supported by this server.", shown_name(field)),
                        )
                        .param("messages"));
                    }
                    t.push_str(p.text.as_deref().unwrap_or_default());
                }
                t
            }
        };
        out.push(ChatMessage {
            role: m.role,
            content,
            tool_calls: m.tool_calls.unwrap_or_default(),
            tool_call_id: m.tool_call_id,
        });
    }
    Ok(out)
}

fn logprob_json(lp: &TokenLogprob) -> Value {
    json!({
        "token": lp.token, "logprob": lp.logprob, "bytes": lp.bytes,
        "top_logprobs": lp.top_logprobs.iter().map(|t| json!({"token": t.token, "logprob": t.logprob, "bytes": t.bytes})).collect::<Vec<_>>(),
    })
}

pub(super) fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
    }
}

pub(super) async fn start(
    s: &AppState,
    p: Principal,
    model: String,
    prompt: Prompt,
    options: GenerationOptions,
) -> ApiResult<GenerationStream> {
    let platform = s.platform.clone();
    blocking(move || platform.generate(&p, &model, &prompt, &options)).await
}

pub(super) fn note_usage(s: &AppState, u: &soramai::Usage) {
    note_tokens(s, u.prompt_tokens, u.completion_tokens);
}

/// Counts one finished generation and its tokens in the server's metrics.
pub(super) fn note_tokens(s: &AppState, prompt: u64, completion: u64) {
    s.metrics.completions.fetch_add(1, Ordering::Relaxed);
    s.metrics.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
    s.metrics.completion_tokens.fetch_add(completion, Ordering::Relaxed);
}

pub(super) async fn chat_completions(
    State(s): State<AppState>,
    Caller(p): Caller,
    Checked(body): Checked<ChatBody>,
) -> ApiResult<Response> {
    let top = body.top_logprobs.unwrap_or(0) as usize;
    if body.top_logprobs.is_some() && !body.logprobs {
        return Err(ApiError::invalid("top_logprobs needs logprobs: true.").param("top_logprobs"));
    }
    let mut options = body.sampling.options(body.logprobs.then_some(top))?;
    options.tools = body.tools.unwrap_or_default();
    options.tool_choice = body.tool_choice;
    options.parallel_tool_calls = body.parallel_tool_calls;
    let messages = chat_messages(body.messages)?;
    let model = body.sampling.model.clone();
    let stream = start(&s, p, model, Prompt::Chat(messages), options).await?;
    let include_usage = body.sampling.stream_options.as_ref().is_some_and(|o| o.include_usage);
    if body.sampling.stream {
        return Ok(sse(s, stream, include_usage, true));
    }
    let state = s.clone();
    let c = blocking(move || stream.collect()).await?;
    note_usage(&state, &c.usage);
    let choices: Vec<Value> = c
        .choices
        .iter()
        .map(|ch| {
            let logprobs = ch
                .logprobs
                .as_ref()
                .map(|v| json!({"content": v.iter().map(logprob_json).collect::<Vec<_>>(), "refusal": null}));
            let message = if ch.tool_calls.is_empty() {
                json!({"role": "assistant", "content": ch.text, "refusal": null})
            } else {
                json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": ch.tool_calls})
            };
            json!({"index": ch.index, "message": message, "logprobs": logprobs,
                   "finish_reason": finish_str(ch.finish_reason)})
        })
        .collect();
    Ok(axum::Json(json!({
        "id": c.id, "object": "chat.completion", "created": c.created, "model": c.model,
        "system_fingerprint": null, "choices": choices, "usage": c.usage,
    }))
    .into_response())
}

pub(super) async fn completions(
    State(s): State<AppState>,
    Caller(p): Caller,
    Checked(body): Checked<CompletionBody>,
) -> ApiResult<Response> {
    let text = match body.prompt {
        PromptIn::One(t) => t,
        PromptIn::Many(mut v) if v.len() == 1 => v.remove(0),
        PromptIn::Many(_) => return Err(ApiError::invalid("One prompt per request.").param("prompt")),
    };
    if body.logprobs.is_some_and(|n| n > 5) {
        return Err(ApiError::invalid("logprobs is 0 to 5.").param("logprobs"));
    }
    let options = body.sampling.options(body.logprobs.map(|n| n as usize))?;
    let model = body.sampling.model.clone();
    let echo = body.echo.then(|| text.clone());
    let stream = start(&s, p, model, Prompt::Text(text), options).await?;
    let include_usage = body.sampling.stream_options.as_ref().is_some_and(|o| o.include_usage);
    if body.sampling.stream {
        return Ok(sse(s, stream, include_usage, false));
    }
    let state = s.clone();
    let c = blocking(move || stream.collect()).await?;
    note_usage(&state, &c.usage);
    let choices: Vec<Value> = c
        .choices
        .iter()
        .map(|ch| {
            let logprobs = ch.logprobs.as_ref().map(|v| {
                let mut offset = echo.as_ref().map_or(0, String::len);
                let mut offsets = Vec::with_capacity(v.len());
                for lp in v {
                    offsets.push(offset);
                    offset += lp.token.len();
                }
                json!({
                    "tokens": v.iter().map(|l| l.token.clone()).collect::<Vec<_>>(),
                    "token_logprobs": v.iter().map(|l| l.logprob).collect::<Vec<_>>(),
                    "top_logprobs": v.iter().map(|l| l.top_logprobs.iter().map(|t| (t.token.clone(), json!(t.logprob))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
                    "text_offset": offsets,
                })
            });
            let text = echo.clone().unwrap_or_default() + &ch.text;
            json!({"index": ch.index, "text": text, "logprobs": logprobs, "finish_reason": finish_str(ch.finish_reason)})
        })
        .collect();
    Ok(axum::Json(json!({
        "id": c.id, "object": "text_completion", "created": c.created, "model": c.model,
        "system_fingerprint": null, "choices": choices, "usage": c.usage,
    }))
    .into_response())
}

/// Server-sent events: the role chunk of each choice (chat), one chunk per token, a chunk with
/// each choice's finish reason, the usage chunk when asked for, then `[DONE]`. A client that goes
/// away cancels the generation.
fn sse(s: AppState, stream: GenerationStream, include_usage: bool, chat: bool) -> Response {
    let chunks = Chunks {
        id: stream.id().to_owned(),
        model: stream.model().to_owned(),
        created: stream.created(),
        chat,
        include_usage,
    };
    let mut queue = VecDeque::new();
    if chat {
        for index in 0..stream.choices() {
            let role = json!({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null,
                              "finish_reason": null});
            queue.push_back(chunks.event(role, None));
        }
    }
    let events =
        futures_util::stream::unfold(SseStream { stream: Some(stream), queue, chunks, app: s }, |mut st| async {
            st.next().await.map(|ev| (Ok::<_, Infallible>(ev), st))
        });
    Sse::new(events).into_response()
}

/// The shape of one stream's chunks (OpenAI's `chat.completion.chunk` or `text_completion`).
struct Chunks {
    id: String,
    model: String,
    created: u64,
    chat: bool,
    include_usage: bool,
}

impl Chunks {
    fn event(&self, choice: Value, usage: Option<Value>) -> Event {
        let object = if self.chat { "chat.completion.chunk" } else { "text_completion" };
        let mut v = json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
                           "system_fingerprint": null, "choices": [choice]});
        if let Some(u) = usage {
            v["choices"] = json!([]);
            v["usage"] = u;
        } else if self.include_usage {
            v["usage"] = Value::Null;
        }
        Event::default().data(v.to_string())
    }

    fn delta(&self, index: usize, text: String, logprob: Option<&TokenLogprob>) -> Event {
        let choice = if self.chat {
            let lp = logprob.map(|l| json!({"content": [logprob_json(l)], "refusal": null}));
            json!({"index": index, "delta": {"content": text}, "logprobs": lp, "finish_reason": null})
        } else {
            let lp = logprob.map(|l| {
                let top: serde_json::Map<_, _> =
                    l.top_logprobs.iter().map(|t| (t.token.clone(), json!(t.logprob))).collect();
                json!({"tokens": [l.token], "token_logprobs": [l.logprob], "top_logprobs": [top], "text_offset": [0]})
            });
            json!({"index": index, "text": text, "logprobs": lp, "finish_reason": null})
        };
        self.event(choice, None)
    }

    /// A choice's calls, as the official clients put a streamed call together.
    fn tool_calls(&self, index: usize, calls: &[soramai::ToolCall]) -> Event {
        let deltas: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(k, c)| {
                json!({"index": k, "id": c.id, "type": "function",
                       "function": {"name": c.function.name, "arguments": c.function.arguments}})
            })
            .collect();
        let choice = json!({"index": index, "delta": {"tool_calls": deltas}, "logprobs": null, "finish_reason": null});
        self.event(choice, None)
    }

    fn finish(&self, index: usize, reason: FinishReason) -> Event {
        let choice = if self.chat {
            json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": finish_str(reason)})
        } else {
            json!({"index": index, "text": "", "logprobs": null, "finish_reason": finish_str(reason)})
        };
        self.event(choice, None)
    }
}

/// A completion streamed as server-sent events: the events still to send, then the generation's
/// next ones until it ends; an error mid-stream is one error event before `[DONE]`.
struct SseStream {
    stream: Option<GenerationStream>,
    queue: VecDeque<Event>,
    chunks: Chunks,
    app: AppState,
}

impl SseStream {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            let g = self.stream.as_mut()?;
            match g.next_event().await {
                Some(Ok(StreamEvent::Delta { index, text, logprob })) => {
                    let event = self.chunks.delta(index, text, logprob.as_ref());
                    self.queue.push_back(event);
                    continue;
                }
                Some(Ok(StreamEvent::ToolCalls { index, calls })) => {
                    let event = self.chunks.tool_calls(index, &calls);
                    self.queue.push_back(event);
                    continue;
                }
                Some(Ok(StreamEvent::Done { finish_reasons, usage, .. })) => {
                    note_usage(&self.app, &usage);
                    for (index, reason) in finish_reasons.into_iter().enumerate() {
                        let event = self.chunks.finish(index, reason);
                        self.queue.push_back(event);
                    }
                    if self.chunks.include_usage {
                        let event = self.chunks.event(Value::Null, Some(json!(usage)));
                        self.queue.push_back(event);
                    }
                }
                Some(Err(e)) => self.queue.push_back(Event::default().data(ApiError::from(e).body().to_string())),
                None => {}
            }
            self.queue.push_back(Event::default().data("[DONE]"));
            self.stream = None;
        }
    }
}

#[derive(Deserialize)]
pub(super) struct EmbeddingBody {
    model: String,
    input: PromptIn,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u32>,
}

impl Fields for EmbeddingBody {
    const KNOWN: &'static [&'static str] = &["model", "input", "encoding_format", "dimensions"];
}

pub(super) async fn embeddings(
    State(s): State<AppState>,
    Caller(p): Caller,
    Checked(body): Checked<EmbeddingBody>,
) -> ApiResult<Response> {
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => return Err(ApiError::invalid("encoding_format is float or base64.").param("encoding_format")),
    };
    if body.dimensions.is_some() {
        return Err(ApiError::invalid("dimensions is not supported.").param("dimensions"));
    }
    let inputs = match body.input {
        PromptIn::One(t) => vec![t],
        PromptIn::Many(v) => v,
    };
    let model = body.model.clone();
    let e = blocking(move || s.platform.embed(&p, &model, &inputs)).await?;
    let data: Vec<Value> = e
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data, "model": body.model,
                         "usage": {"prompt_tokens": e.prompt_tokens, "total_tokens": e.prompt_tokens}}))
    .into_response())
}
