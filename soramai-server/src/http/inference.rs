//! Inference: chat and text completions (streamed as server-sent events) and embeddings.

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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    // What OpenAI's messages may carry and this server does not render: refused by name.
    #[serde(default)]
    name: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    tool_calls: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    tool_call_id: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    function_call: Option<serde::de::IgnoredAny>,
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
}

/// The fields of a chat request.
const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
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
    "logprobs",
    "top_logprobs",
];

/// The fields of a text completion request.
const COMPLETION_FIELDS: &[&str] = &[
    "model",
    "prompt",
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
    "logprobs",
    "echo",
];

impl Sampling {
    pub(super) fn options(&self, logprobs: Option<usize>) -> ApiResult<GenerationOptions> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("Only n = 1 is supported.").param("n"));
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
}

impl Fields for ChatBody {
    const KNOWN: &'static [&'static str] = CHAT_FIELDS;
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
    const KNOWN: &'static [&'static str] = COMPLETION_FIELDS;
}

fn chat_messages(messages: Vec<InMessage>) -> ApiResult<Vec<ChatMessage>> {
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        let unsupported = [
            ("name", m.name.is_some()),
            ("tool_calls", m.tool_calls.is_some()),
            ("tool_call_id", m.tool_call_id.is_some()),
            ("function_call", m.function_call.is_some()),
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
                    t.push_str(p.text.as_deref().unwrap_or_default());
                }
                t
            }
        };
        out.push(ChatMessage { role: m.role, content });
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
    s.metrics.completions.fetch_add(1, Ordering::Relaxed);
    s.metrics.prompt_tokens.fetch_add(u.prompt_tokens, Ordering::Relaxed);
    s.metrics.completion_tokens.fetch_add(u.completion_tokens, Ordering::Relaxed);
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
    let options = body.sampling.options(body.logprobs.then_some(top))?;
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
    let logprobs = c
        .logprobs
        .as_ref()
        .map(|v| json!({"content": v.iter().map(logprob_json).collect::<Vec<_>>(), "refusal": null}));
    Ok(axum::Json(json!({
        "id": c.id, "object": "chat.completion", "created": c.created, "model": c.model,
        "system_fingerprint": null,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text, "refusal": null},
                     "logprobs": logprobs, "finish_reason": finish_str(c.finish_reason)}],
        "usage": c.usage,
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
    let logprobs = c.logprobs.as_ref().map(|v| {
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
    let text = match echo {
        Some(e) => e + &c.text,
        None => c.text,
    };
    Ok(axum::Json(json!({
        "id": c.id, "object": "text_completion", "created": c.created, "model": c.model,
        "system_fingerprint": null,
        "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_str(c.finish_reason)}],
        "usage": c.usage,
    }))
    .into_response())
}

/// Server-sent events: one chunk per token, a final chunk with the finish reason, the usage chunk
/// when asked for, then `[DONE]`. A client that goes away cancels the generation.
fn sse(s: AppState, stream: GenerationStream, include_usage: bool, chat: bool) -> Response {
    let chunks = Chunks {
        id: stream.id().to_owned(),
        model: stream.model().to_owned(),
        created: stream.created(),
        chat,
        include_usage,
    };
    let events =
        futures_util::stream::unfold(SseStream { phase: Phase::Start(stream), chunks, app: s }, |mut st| async {
            st.next().await.map(|ev| (Ok::<_, Infallible>(ev), st))
        });
    Sse::new(events).into_response()
}

/// Where a streamed completion stands: the role chunk (chat) still to send, tokens running, the
/// usage chunk still to send, `[DONE]` still to send, or ended.
enum Phase {
    Start(GenerationStream),
    Run(GenerationStream),
    Usage(Value),
    Done,
    End,
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

    fn delta(&self, text: String, logprob: Option<&TokenLogprob>) -> Event {
        let choice = if self.chat {
            let lp = logprob.map(|l| json!({"content": [logprob_json(l)], "refusal": null}));
            json!({"index": 0, "delta": {"content": text}, "logprobs": lp, "finish_reason": null})
        } else {
            let lp = logprob.map(|l| {
                let top: serde_json::Map<_, _> =
                    l.top_logprobs.iter().map(|t| (t.token.clone(), json!(t.logprob))).collect();
                json!({"tokens": [l.token], "token_logprobs": [l.logprob], "top_logprobs": [top], "text_offset": [0]})
            });
            json!({"index": 0, "text": text, "logprobs": lp, "finish_reason": null})
        };
        self.event(choice, None)
    }

    fn finish(&self, reason: FinishReason) -> Event {
        let choice = if self.chat {
            json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish_str(reason)})
        } else {
            json!({"index": 0, "text": "", "logprobs": null, "finish_reason": finish_str(reason)})
        };
        self.event(choice, None)
    }
}

/// A completion streamed as server-sent events: one chunk per token, a final chunk with the finish
/// reason, the usage chunk when asked for, then `[DONE]`; an error mid-stream is one error event.
struct SseStream {
    phase: Phase,
    chunks: Chunks,
    app: AppState,
}

impl SseStream {
    async fn next(&mut self) -> Option<Event> {
        let (event, next) = match std::mem::replace(&mut self.phase, Phase::End) {
            Phase::Start(g) if self.chunks.chat => {
                let role = json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null,
                                  "finish_reason": null});
                (self.chunks.event(role, None), Phase::Run(g))
            }
            Phase::Start(mut g) | Phase::Run(mut g) => match g.next_event().await {
                Some(Ok(StreamEvent::Delta { text, logprob })) => {
                    (self.chunks.delta(text, logprob.as_ref()), Phase::Run(g))
                }
                Some(Ok(StreamEvent::Done { finish_reason, usage })) => {
                    note_usage(&self.app, &usage);
                    let next = if self.chunks.include_usage { Phase::Usage(json!(usage)) } else { Phase::Done };
                    (self.chunks.finish(finish_reason), next)
                }
                Some(Err(e)) => (Event::default().data(ApiError::from(e).body().to_string()), Phase::Done),
                None => (Event::default().data("[DONE]"), Phase::End),
            },
            Phase::Usage(u) => (self.chunks.event(Value::Null, Some(u)), Phase::Done),
            Phase::Done => (Event::default().data("[DONE]"), Phase::End),
            Phase::End => return None,
        };
        self.phase = next;
        Some(event)
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
