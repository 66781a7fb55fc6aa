//! Serving a base model: the request types, and the scheduler thread that batches every running
//! request into one forward pass per step (continuous batching, chunked prefill).

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use soramai_kernels::tokenizer::template::Message;
use soramai_kernels::{Engine, Finish, Precision, Request, TokenEvent};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::*;

/// One message of a chat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `developer` (as system), `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

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
}

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
        match self.sampling(0).validate() {
            Err(soramai_kernels::Error::Request(m)) => Err(PlatformError::InvalidArgument(m)),
            other => Ok(other?),
        }
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

pub(super) enum Msg {
    Token(TokenEvent),
    Done { finish: Finish, generated: u64, cached: u64 },
    Failed(String),
}

pub(super) struct Submission {
    pub(super) req: Request,
    pub(super) events: UnboundedSender<Msg>,
}

/// One base model being served: its engine and the scheduler thread that batches its requests.
pub(super) struct Serving {
    pub(super) engine: Arc<Engine>,
    pub(super) submit: Mutex<Sender<Submission>>,
}

impl Serving {
    /// Hands a request to the scheduler; its events come on the returned channel.
    pub(super) fn submit(&self, req: Request) -> Result<UnboundedReceiver<Msg>, PlatformError> {
        let (tx, rx) = unbounded_channel();
        let submit = self.submit.lock().map_err(|_| PlatformError::Engine("scheduler poisoned".into()))?;
        submit
            .send(Submission { req, events: tx })
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
    let mut sinks: HashMap<u64, UnboundedSender<Msg>> = HashMap::new();
    let mut next_id = 0u64;
    let mut open = true;
    loop {
        let mut waiting = Vec::new();
        if batch.is_empty() {
            if !open {
                return;
            }
            match rx.recv() {
                Ok(s) => waiting.push(s),
                Err(_) => return,
            }
        }
        while batch.len() + waiting.len() < max_batch && open {
            match rx.try_recv() {
                Ok(s) => waiting.push(s),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        for s in waiting {
            next_id += 1;
            match batch.admit(next_id, s.req) {
                Ok(()) => {
                    sinks.insert(next_id, s.events);
                }
                Err(e) => {
                    let _ = s.events.send(Msg::Failed(e.to_string()));
                }
            }
        }
        // A request whose stream was dropped before it started leaves at once.
        for (id, tx) in &sinks {
            if tx.is_closed() {
                batch.cancel(*id);
            }
        }
        match batch.step(&mut |id, ev| sinks.get(&id).is_some_and(|tx| tx.send(Msg::Token(ev)).is_ok())) {
            Ok(finished) => {
                for (id, g) in finished {
                    if let Some(tx) = sinks.remove(&id) {
                        let _ = tx.send(Msg::Done {
                            finish: g.finish,
                            generated: g.output_ids.len() as u64,
                            cached: g.cached_tokens as u64,
                        });
                    }
                }
            }
            Err(e) => {
                for (_, tx) in sinks.drain() {
                    let _ = tx.send(Msg::Failed(e.to_string()));
                }
            }
        }
    }
}

/// A prompt's tokens: a chat rendered with the model's template, or raw text.
pub(super) fn prompt_tokens(engine: &Engine, prompt: &Prompt) -> Result<Vec<u32>, PlatformError> {
    let bad = |m: &str| Err(PlatformError::InvalidArgument(m.into()));
    match prompt {
        Prompt::Chat(messages) => {
            if messages.is_empty() {
                return bad("messages is empty");
            }
            let mut msgs = Vec::with_capacity(messages.len());
            for m in messages {
                let role = match m.role.as_str() {
                    "system" | "developer" => "system",
                    "user" => "user",
                    "assistant" => "assistant",
                    _ => return bad("a message role is system, developer, user or assistant"),
                };
                msgs.push(Message::new(role, &m.content));
            }
            Ok(engine.chat_tokens(&msgs)?)
        }
        Prompt::Text(text) => {
            if text.is_empty() {
                return bad("prompt is empty");
            }
            Ok(engine.tokenizer.encode(text, true, false))
        }
    }
}
