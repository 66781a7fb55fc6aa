//! Serving a base model: the request types, and the scheduler thread that batches every running
//! request into one forward pass per step (continuous batching, chunked prefill).

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use soramai_kernels::grammar::Grammar;
use soramai_kernels::tokenizer::template::Message;
use soramai_kernels::{Engine, Finish, Precision, Request, TokenEvent};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::chat::{ChatMessage, Tool, ToolChoice, ToolPlan, add_system, flatten};
use super::*;

/// How to sample and when to stop.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationOptions {
    /// Most tokens to generate; by default what the context and the tenant's credits allow.
    pub max_tokens: Option<usize>,
    /// Softmax temperature (0 to 2; default 1, as OpenAI's). 0 is greedy.
    pub temperature: Option<f32>,
    /// Nucleus sampling (default 1: off).
    pub top_p: Option<f32>,
    /// Seed: the same seed, model and prompt give the same output. Random when absent.
    pub seed: Option<u64>,
    /// Up to 4 strings that end generation (not included in the text).
    pub stop: Vec<String>,
    /// Report each token's log-probability and this many alternatives (0..=20).
    pub logprobs: Option<usize>,
    /// Subtracted once from the logit of every token already generated (-2 to 2; default 0).
    pub presence_penalty: Option<f32>,
    /// Subtracted from a token's logit once per time it was generated (-2 to 2; default 0).
    pub frequency_penalty: Option<f32>,
    /// Added to the logits of these token ids (each -100 to 100; at most 1,024 tokens, each in
    /// the model's vocabulary).
    pub logit_bias: std::collections::BTreeMap<u32, f32>,
    /// Independent continuations of the prompt (1 to [`MAX_CHOICES`]; default 1). The prompt is
    /// prefilled once and every choice starts from its states; choice `i` samples with its own
    /// seed, derived from `seed` (the first keeps it).
    pub n: Option<usize>,
    /// What the output must be: free text (the default), any JSON object, JSON valid under a
    /// schema, or (an extension) text matching a regular expression or a Lark grammar. Enforced
    /// token by token by a mask over the model's vocabulary, so the output matches even on a
    /// small model (unless `max_tokens` cuts it short: `finish_reason` is then `length`).
    pub response_format: Option<ResponseFormat>,
    /// Functions the model may call (chat only; at most [`super::chat::MAX_TOOLS`]).
    pub tools: Vec<Tool>,
    /// Whether it may (`auto`, the default with tools), must (`required`, or a named function)
    /// or must not (`none`) call one.
    pub tool_choice: Option<ToolChoice>,
    /// Whether a reply may hold several calls (default true).
    pub parallel_tool_calls: Option<bool>,
}

/// What a generation's output must be (OpenAI's `response_format`, and two extensions).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseFormat {
    /// Free text.
    Text {},
    /// Any JSON object.
    JsonObject {},
    /// JSON valid under a schema.
    JsonSchema {
        /// The schema and its name.
        json_schema: JsonSchemaFormat,
    },
    /// Text matching a regular expression (Rust `regex` syntax), whole.
    Regex {
        /// The expression.
        pattern: String,
    },
    /// Text in a Lark grammar (llguidance's dialect).
    Lark {
        /// The grammar.
        grammar: String,
    },
}

/// `response_format.json_schema`, as OpenAI takes it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JsonSchemaFormat {
    /// 1 to 64 letters, digits, `_` or `-`.
    pub name: String,
    /// What the output is for: shown to the model in a chat's system prompt (refused on a text
    /// completion, which has none).
    #[serde(default)]
    pub description: Option<String>,
    /// The JSON schema; absent means any JSON value.
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
    /// OpenAI's strict mode. The output is held to the schema either way; a schema keyword the
    /// engine does not implement is refused either way.
    #[serde(default)]
    pub strict: Option<bool>,
}

impl ResponseFormat {
    /// The grammar the output is held to; None for free text.
    pub(super) fn grammar(&self) -> Result<Option<Grammar>, PlatformError> {
        Ok(Some(match self {
            ResponseFormat::Text {} => return Ok(None),
            ResponseFormat::JsonObject {} => Grammar::JsonObject,
            ResponseFormat::JsonSchema { json_schema } => {
                let name = &json_schema.name;
                if name.is_empty()
                    || name.len() > 64
                    || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    return Err(PlatformError::InvalidParameter {
                        param: "response_format",
                        message: "response_format.json_schema.name is 1 to 64 letters, digits, _ or -".into(),
                    });
                }
                Grammar::JsonSchema(json_schema.schema.clone().unwrap_or(serde_json::Value::Bool(true)))
            }
            ResponseFormat::Regex { pattern } => Grammar::Regex(pattern.clone()),
            ResponseFormat::Lark { grammar } => Grammar::Lark(grammar.clone()),
        }))
    }
}

/// Most choices one generation may ask for.
pub const MAX_CHOICES: usize = 16;

impl GenerationOptions {
    /// Refuses what no model could honour (before anything is charged).
    pub(super) fn check(&self) -> Result<(), PlatformError> {
        let bad = |m: &str| Err(PlatformError::InvalidArgument(m.into()));
        if let Some(t) = self.temperature
            && !(t.is_finite() && (0.0..=2.0).contains(&t))
        {
            return bad("temperature is 0 to 2");
        }
        if let Some(p) = self.top_p
            && !(p.is_finite() && p > 0.0 && p <= 1.0)
        {
            return bad("top_p is above 0 and at most 1");
        }
        if self.stop.len() > 4 || self.stop.iter().any(|s| s.is_empty() || s.len() > 256) {
            return bad("stop is up to 4 non-empty strings of at most 256 bytes");
        }
        if self.logprobs.is_some_and(|n| n > soramai_kernels::engine::MAX_TOP_LOGPROBS) {
            return bad("top_logprobs is 0 to 20");
        }
        if self.max_tokens == Some(0) {
            return bad("max_tokens is at least 1");
        }
        if self.n.is_some_and(|n| !(1..=MAX_CHOICES).contains(&n)) {
            return bad("n is 1 to 16");
        }
        match self.sampling(0).validate() {
            Err(soramai_kernels::Error::Request(m)) => Err(PlatformError::InvalidArgument(m)),
            other => Ok(other?),
        }
    }

    /// Choices asked for.
    pub(super) fn choices(&self) -> usize {
        self.n.unwrap_or(1)
    }

    /// The engine's sampling settings for these options (`seed` when none was asked for).
    pub(super) fn sampling(&self, seed: u64) -> soramai_kernels::sample::SamplingParams {
        soramai_kernels::sample::SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed.unwrap_or(seed),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            logit_bias: self.logit_bias.iter().map(|(&t, &b)| (t, b)).collect(),
            ..soramai_kernels::sample::SamplingParams::default()
        }
    }
}

/// The prompt of a generation.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// A chat, rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
    /// Raw text.
    Text(String),
}

/// What the scheduler tells a generation, each token and end naming its choice.
pub(super) enum Msg {
    Token { index: usize, ev: TokenEvent },
    Done { index: usize, finish: Finish, generated: u64, cached: u64 },
    Failed(String),
}

pub(super) struct Submission {
    pub(super) req: Request,
    pub(super) choices: usize,
    pub(super) events: UnboundedSender<Msg>,
}

/// One base model being served: its engine and the scheduler thread that batches its requests.
pub(super) struct Serving {
    pub(super) engine: Arc<Engine>,
    pub(super) submit: Mutex<Sender<Submission>>,
}

impl Serving {
    /// Hands a request to the scheduler; its events come on the returned channel.
    pub(super) fn submit(&self, req: Request, choices: usize) -> Result<UnboundedReceiver<Msg>, PlatformError> {
        let (tx, rx) = unbounded_channel();
        let submit = self.submit.lock().map_err(|_| PlatformError::Engine("scheduler poisoned".into()))?;
        submit
            .send(Submission { req, choices, events: tx })
            .map_err(|_| PlatformError::Engine("the scheduler stopped".into()))?;
        Ok(rx)
    }

    pub(super) fn start(engine: Arc<Engine>, options: &PlatformOptions) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let e = engine.clone();
        e.prefix_cache().set_capacity(options.prefix_cache_bytes);
        let (max_batch, precision, chunk) = (options.max_batch.max(1), options.precision, options.prefill_chunk);
        std::thread::Builder::new()
            .name("soramai-scheduler".into())
            .spawn(move || schedule(&e, &rx, max_batch, precision, chunk))?;
        Ok(Self { engine, submit: Mutex::new(tx) })
    }
}

/// The scheduler: admit what is waiting (blocking only when idle), step the batch, route tokens.
/// It ends when every sender is gone and the batch has drained.
fn schedule(engine: &Engine, rx: &Receiver<Submission>, max_batch: usize, precision: Precision, chunk: usize) {
    let mut batch = engine.batch(precision);
    batch.set_prefill_chunk(chunk);
    // Each sequence's stream and the choice it is.
    let mut sinks: HashMap<u64, (UnboundedSender<Msg>, usize)> = HashMap::new();
    let mut next_id = 0u64;
    let mut open = true;
    loop {
        let mut waiting: Vec<Submission> = Vec::new();
        if batch.is_empty() {
            if !open {
                return;
            }
            match rx.recv() {
                Ok(s) => waiting.push(s),
                Err(_) => return,
            }
        }
        while batch.len() + waiting.iter().map(|s| s.choices).sum::<usize>() < max_batch && open {
            match rx.try_recv() {
                Ok(s) => waiting.push(s),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        for s in waiting {
            let ids: Vec<u64> = (next_id + 1..=next_id + s.choices.max(1) as u64).collect();
            next_id += ids.len() as u64;
            match batch.admit_choices(&ids, s.req) {
                Ok(()) => {
                    for (index, id) in ids.into_iter().enumerate() {
                        sinks.insert(id, (s.events.clone(), index));
                    }
                }
                Err(e) => {
                    let _ = s.events.send(Msg::Failed(e.to_string()));
                }
            }
        }
        // A request whose stream was dropped before it started leaves at once.
        for (id, (tx, _)) in &sinks {
            if tx.is_closed() {
                batch.cancel(*id);
            }
        }
        let step = batch.step(&mut |id, ev| {
            sinks.get(&id).is_some_and(|(tx, index)| tx.send(Msg::Token { index: *index, ev }).is_ok())
        });
        match step {
            Ok(finished) => {
                for (id, g) in finished {
                    if let Some((tx, index)) = sinks.remove(&id) {
                        let msg = match g.finish {
                            Finish::Constraint => Msg::Failed(format!(
                                "the output constraint failed: {}",
                                g.error.as_deref().unwrap_or("no reason given")
                            )),
                            finish => Msg::Done {
                                index,
                                finish,
                                generated: g.output_ids.len() as u64,
                                cached: g.cached_tokens as u64,
                            },
                        };
                        let _ = tx.send(msg);
                    }
                }
            }
            Err(e) => {
                for (_, (tx, _)) in sinks.drain() {
                    let _ = tx.send(Msg::Failed(e.to_string()));
                }
            }
        }
    }
}

/// A prompt's tokens: a chat rendered with the model's template (the tools offered, when there
/// are), or raw text.
pub(super) fn prompt_tokens(
    engine: &Engine,
    prompt: &Prompt,
    tools: Option<&ToolPlan>,
    format: Option<&ResponseFormat>,
) -> Result<Vec<u32>, PlatformError> {
    let bad = |m: &str| Err(PlatformError::InvalidArgument(m.into()));
    let described = match format {
        Some(ResponseFormat::JsonSchema { json_schema }) => json_schema.description.as_deref(),
        _ => None,
    };
    match prompt {
        Prompt::Chat(messages) => {
            if messages.is_empty() {
                return bad("messages is empty");
            }
            let mut flat = flatten(messages)?;
            if let Some(plan) = tools {
                plan.offer(&mut flat);
            }
            if let Some(d) = described {
                add_system(&mut flat, &format!("Reply with JSON. What it is for: {d}"));
            }
            let msgs: Vec<Message> = flat.iter().map(|(role, text)| Message::new(role, text)).collect();
            Ok(engine.chat_tokens(&msgs)?)
        }
        Prompt::Text(text) => {
            if text.is_empty() {
                return bad("prompt is empty");
            }
            if tools.is_some() {
                return bad("tools are offered in a chat, not a text completion");
            }
            if described.is_some() {
                return Err(PlatformError::InvalidParameter {
                    param: "response_format",
                    message: "response_format.json_schema.description is shown to the model in a chat's system \
                              prompt; a text completion has none"
                        .into(),
                });
            }
            Ok(engine.tokenizer.encode(text, true, false))
        }
    }
}
