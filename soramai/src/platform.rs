//! The [`Platform`]: the security core, the inference engine and the job workers behind one API.
//!
//! Inference goes through one scheduler thread per base model that batches every running request
//! (from any tenant, each with its own adapter) into one forward pass per step, admitting new
//! requests between steps (continuous batching). A request reserves the credits its prompt and
//! `max_tokens` could cost before it starts and gets back what it did not use when it ends, so a
//! balance never goes negative however many requests run at once. Usage records hold counts only.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use soramai_core::{
    AccessGrant, Action, CloseOptions, Closure, Core, DatasetId, FineTuneSpec, GrantId, GrantRequest, IssuedGrant,
    IssuedKey, Job, JobId, JobSpec, KeyOptions, ModelId, PoolId, Principal, Receipt, RunnerCommand, Scope, Tenant,
    TenantId, Tier, UsageEvent, UsageKind, UsageStatus, Worker,
};
use soramai_kernels::sample::SamplingParams;
use soramai_kernels::tokenizer::template::Message;
use soramai_kernels::{Engine, Finish, Precision, Request, TokenEvent};
use soramai_rag::{CorpusId, GroundedPrompt, Rag, RagOptions, SearchRequest};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::PlatformError;

/// How a [`Platform`] runs.
#[derive(Clone, Debug)]
pub struct PlatformOptions {
    /// The program that runs jobs in child processes (`soramai job-runner`); without one this
    /// process runs no jobs (another process's workers may).
    pub runner: Option<RunnerCommand>,
    /// Job worker threads (each runs one job at a time in its own child process).
    pub workers: usize,
    /// Most requests in one forward pass.
    pub max_batch: usize,
    /// The inference arithmetic.
    pub precision: Precision,
    /// How often an idle worker looks for a job.
    pub poll: Duration,
    /// Also run the dedicated pools' jobs (Pro tiers and up), each pool on a worker of its own
    /// that no other tenant's job shares. Off for a node that serves the shared pool only.
    pub dedicated_pools: bool,
    /// Most prompt tokens one forward pass prefills, over all prompts: a long prompt arriving
    /// while others decode runs in chunks of this size instead of stalling them.
    pub prefill_chunk: usize,
    /// Bytes of key/value state each base model keeps of its tenants' recent prompts (each
    /// tenant's reused by that tenant only); 0 turns the prefix cache off.
    pub prefix_cache_bytes: usize,
}

impl Default for PlatformOptions {
    fn default() -> Self {
        Self {
            runner: None,
            workers: 1,
            max_batch: 32,
            precision: Precision::Fast,
            poll: Duration::from_millis(200),
            dedicated_pools: true,
            prefill_chunk: soramai_kernels::engine::DEFAULT_PREFILL_CHUNK,
            prefix_cache_bytes: soramai_kernels::engine::DEFAULT_PREFIX_CACHE_BYTES,
        }
    }
}

/// The id a base model gets when none is named.
pub const DEFAULT_MODEL_ID: &str = "smollm2";

/// How [`Platform::open_with`] sets up a platform.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenOptions {
    /// A GGUF file to register as a base model.
    pub model: Option<std::path::PathBuf>,
    /// Its id (default [`DEFAULT_MODEL_ID`]).
    pub model_id: Option<String>,
    /// Job worker threads (default 1).
    pub workers: Option<usize>,
    /// Most requests in one forward pass (default 32).
    pub max_batch: Option<usize>,
    /// The metadata database by URL: `sqlite` (the default: SQLite in the data directory) or
    /// `postgres://user:password@host:5432/db` (the `postgres` feature). Several nodes share one
    /// PostgreSQL, one blob store ([`OpenOptions::blob_store`]) and one root key
    /// (`SORAMAI_ROOT_KEY`, or the same `root.key` in each data directory).
    pub database: Option<String>,
    /// The blob store shared by several nodes: `file:///mnt/shared` or `s3://bucket` (the `s3`
    /// feature); default `<data_dir>/blobs`. See `BlobLocation`.
    pub blob_store: Option<String>,
    /// Largest customer GGUF upload in bytes (default 16 GiB).
    pub max_model_bytes: Option<u64>,
    /// Most prompt tokens one forward pass prefills (default 128; see
    /// [`PlatformOptions::prefill_chunk`]).
    pub prefill_chunk: Option<usize>,
    /// Bytes of each base model's per-tenant prefix cache (default 256 MiB; 0 turns it off).
    pub prefix_cache_bytes: Option<u64>,
}

impl std::fmt::Debug for OpenOptions {
    // The database URL can hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("model", &self.model)
            .field("model_id", &self.model_id)
            .field("workers", &self.workers)
            .field("max_batch", &self.max_batch)
            .field("database", &self.database.as_ref().map(|_| ".."))
            .field("blob_store", &self.blob_store)
            .field("max_model_bytes", &self.max_model_bytes)
            .field("prefill_chunk", &self.prefill_chunk)
            .field("prefix_cache_bytes", &self.prefix_cache_bytes)
            .finish()
    }
}

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
}

/// The prompt of a generation.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// A chat, rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
    /// Raw text.
    Text(String),
}

/// A token's log-probability, with the most likely alternatives (OpenAI's shape).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenLogprob {
    /// The token's text (invalid UTF-8 replaced).
    pub token: String,
    /// The token's bytes.
    pub bytes: Vec<u8>,
    /// Its log-probability under the model.
    pub logprob: f32,
    /// The most likely tokens at this position.
    pub top_logprobs: Vec<TopLogprob>,
}

/// An alternative token.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// The token's bytes.
    pub bytes: Vec<u8>,
    /// Its log-probability.
    pub logprob: f32,
}

/// Token counts of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
    /// How the prompt tokens were counted.
    pub prompt_tokens_details: PromptTokensDetails,
}

/// The prompt's part of [`Usage`], as OpenAI reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose states came from the tenant's own prefix cache (a prompt that begins
    /// like one of the tenant's recent ones); never from another tenant's.
    pub cached_tokens: u64,
}

/// Why a generation ended, in OpenAI's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of turn or a stop string.
    Stop,
    /// `max_tokens`, the credits or the context ran out.
    Length,
}

/// What a generation stream yields.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// New text (possibly empty, when a token only completes part of a character).
    Delta {
        /// The text.
        text: String,
        /// The token's log-probabilities, when asked for.
        logprob: Option<TokenLogprob>,
    },
    /// The end, with the token counts.
    Done {
        /// Why it ended.
        finish_reason: FinishReason,
        /// Token counts.
        usage: Usage,
    },
}

/// A finished generation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Completion {
    /// The request id (`chatcmpl-…`/`cmpl-…`).
    pub id: String,
    /// The model id the caller named.
    pub model: String,
    /// The generated text.
    pub text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Per-token log-probabilities, when asked for.
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// Unix seconds.
    pub created: u64,
}

enum Msg {
    Token(TokenEvent),
    Done { finish: Finish, generated: u64, cached: u64 },
    Failed(String),
}

struct Submission {
    req: Request,
    events: UnboundedSender<Msg>,
}

/// One base model being served: its engine and the scheduler thread that batches its requests.
struct Serving {
    engine: Arc<Engine>,
    submit: Mutex<Sender<Submission>>,
}

impl Serving {
    fn start(engine: Arc<Engine>, options: &PlatformOptions) -> std::io::Result<Self> {
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

/// A generation in progress: yields [`StreamEvent`]s, blocking ([`Iterator`]) or async
/// ([`GenerationStream::next_event`]). It settles the request's credits and records its usage when
/// it ends, or when it is dropped early (the generation is then cancelled).
pub struct GenerationStream {
    id: String,
    model: String,
    rx: UnboundedReceiver<Msg>,
    engine: Arc<Engine>,
    settle: Option<Settlement>,
    prompt_tokens: u64,
    seen: u64,
    want_logprobs: bool,
    created: u64,
    permit: Option<Permit>,
}

impl std::fmt::Debug for GenerationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationStream").field("id", &self.id).field("model", &self.model).finish()
    }
}

struct Settlement {
    core: Arc<Core>,
    tenant: TenantId,
    reserved: u64,
    base: ModelId,
    adapter: Option<ModelId>,
    started: Instant,
}

impl Settlement {
    fn settle(self, used: u64, input: u64, status: UsageStatus) -> Result<(), PlatformError> {
        let refund = self.reserved.saturating_sub(used);
        if refund > 0 {
            self.core.refund_credits(&self.tenant, refund as i64, "inference: unused reservation")?;
        }
        self.core.record_usage(
            &self.tenant,
            &UsageEvent {
                kind: UsageKind::Inference,
                model: self.base,
                adapter: self.adapter,
                input_tokens: input,
                output_tokens: used.saturating_sub(input),
                latency_ms: self.started.elapsed().as_millis() as u64,
                status,
            },
        )?;
        Ok(())
    }
}

impl GenerationStream {
    /// The request id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The model id as the caller named it.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Unix seconds when the request was made.
    pub fn created(&self) -> u64 {
        self.created
    }

    /// Prompt tokens.
    pub fn prompt_tokens(&self) -> u64 {
        self.prompt_tokens
    }

    /// Keeps a tier permit until the stream ends or is dropped.
    pub fn hold(mut self, permit: Permit) -> Self {
        self.permit = Some(permit);
        self
    }

    /// The next event, waiting for it without blocking the async runtime; `None` after `Done`.
    pub async fn next_event(&mut self) -> Option<Result<StreamEvent, PlatformError>> {
        self.settle.as_ref()?;
        let msg = self.rx.recv().await;
        Some(self.observe(msg))
    }

    fn observe(&mut self, msg: Option<Msg>) -> Result<StreamEvent, PlatformError> {
        let ev = self.observe_msg(msg);
        if self.settle.is_none() {
            // Ended: the tier place is free for the tenant's next request.
            self.permit = None;
        }
        ev
    }

    fn observe_msg(&mut self, msg: Option<Msg>) -> Result<StreamEvent, PlatformError> {
        match msg {
            Some(Msg::Token(ev)) => {
                self.seen += 1;
                let logprob =
                    if self.want_logprobs { ev.logprobs.as_ref().map(|lp| self.logprob(ev.token, lp)) } else { None };
                Ok(StreamEvent::Delta { text: ev.text, logprob })
            }
            Some(Msg::Done { finish, generated, cached }) => {
                let used = self.prompt_tokens + generated;
                if let Some(s) = self.settle.take() {
                    s.settle(used, self.prompt_tokens, UsageStatus::Ok)?;
                }
                let finish_reason = match finish {
                    Finish::Stop | Finish::StopString | Finish::Cancelled => FinishReason::Stop,
                    Finish::Length | Finish::Context => FinishReason::Length,
                };
                Ok(StreamEvent::Done {
                    finish_reason,
                    usage: Usage {
                        prompt_tokens: self.prompt_tokens,
                        completion_tokens: generated,
                        total_tokens: used,
                        prompt_tokens_details: PromptTokensDetails { cached_tokens: cached },
                    },
                })
            }
            Some(Msg::Failed(message)) => {
                if let Some(s) = self.settle.take() {
                    s.settle(self.prompt_tokens + self.seen, self.prompt_tokens, UsageStatus::Error)?;
                }
                Err(PlatformError::Engine(message))
            }
            None => {
                if let Some(s) = self.settle.take() {
                    s.settle(self.prompt_tokens + self.seen, self.prompt_tokens, UsageStatus::Error)?;
                }
                Err(PlatformError::Engine("the scheduler stopped".into()))
            }
        }
    }

    fn logprob(&self, token: u32, lp: &soramai_kernels::TokenLogprobs) -> TokenLogprob {
        let piece = |t: u32| {
            let bytes = self.engine.tokenizer.token_bytes(t, false).to_vec();
            (String::from_utf8_lossy(&bytes).into_owned(), bytes)
        };
        let (token, bytes) = piece(token);
        TokenLogprob {
            token,
            bytes,
            logprob: lp.logprob,
            top_logprobs: lp
                .top
                .iter()
                .map(|&(t, logprob)| {
                    let (token, bytes) = piece(t);
                    TopLogprob { token, bytes, logprob }
                })
                .collect(),
        }
    }

    /// Runs the generation to its end and returns the whole text.
    pub fn collect(mut self) -> Result<Completion, PlatformError> {
        let mut text = String::new();
        let mut logprobs = self.want_logprobs.then(Vec::new);
        for ev in self.by_ref() {
            match ev? {
                StreamEvent::Delta { text: t, logprob } => {
                    text.push_str(&t);
                    if let (Some(v), Some(lp)) = (logprobs.as_mut(), logprob) {
                        v.push(lp);
                    }
                }
                StreamEvent::Done { finish_reason, usage } => {
                    return Ok(Completion {
                        id: self.id.clone(),
                        model: self.model.clone(),
                        text,
                        finish_reason,
                        usage,
                        logprobs,
                        created: self.created,
                    });
                }
            }
        }
        Err(PlatformError::Engine("the generation ended without a result".into()))
    }
}

impl Iterator for GenerationStream {
    type Item = Result<StreamEvent, PlatformError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.settle.as_ref()?;
        let msg = self.rx.blocking_recv();
        Some(self.observe(msg))
    }
}

impl Drop for GenerationStream {
    fn drop(&mut self) {
        // Dropped before the end: the scheduler cancels it at its next token; at most one more
        // token than seen was generated.
        if let Some(s) = self.settle.take() {
            let used = (self.prompt_tokens + self.seen + 1).min(s.reserved);
            let _ = s.settle(used, self.prompt_tokens, UsageStatus::Cancelled);
        }
    }
}

/// A model as listed for a caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelInfo {
    /// The id requests name.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// `soramai` for base models, the tenant for its fine-tuned ones.
    pub owned_by: String,
}

/// Embedding vectors with their token count.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Embeddings {
    /// One unit vector per input.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens read.
    pub prompt_tokens: u64,
}

/// Longest input of an embedding request, in tokens.
pub const EMBEDDING_MAX_TOKENS: usize = 512;
/// Most inputs in one embedding request.
pub const EMBEDDING_MAX_INPUTS: usize = 256;

/// Per-tenant load: a token bucket for requests per minute and a count of requests in flight.
#[derive(Debug)]
struct Load {
    tokens: f64,
    refilled: Instant,
    in_flight: u32,
}

/// The tier limits of every tenant.
#[derive(Debug, Default)]
struct Limiter {
    loads: Mutex<HashMap<TenantId, Load>>,
}

/// A request's place within its tenant's concurrency limit; dropping it frees the place.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<Limiter>,
    tenant: TenantId,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut loads) = self.limiter.loads.lock()
            && let Some(l) = loads.get_mut(&self.tenant)
        {
            l.in_flight = l.in_flight.saturating_sub(1);
        }
    }
}

/// How a grounded chat retrieves.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retrieval {
    /// Chunks retrieved before the context budget cut (1..=100).
    pub top_k: usize,
    /// Rerank BM25 candidates by embedding similarity.
    pub hybrid: bool,
}

impl Default for Retrieval {
    fn default() -> Self {
        Self { top_k: 5, hybrid: false }
    }
}

/// Decrypted index chunks kept in memory across every tenant's corpora.
pub const RAG_CACHE_BYTES: usize = 64 << 20;

/// The tenant whose admin keys administer the platform (tenants, tiers, credits).
pub const OPERATOR_TENANT: &str = "operator";

/// The platform: core, engines and job workers.
pub struct Platform {
    core: Arc<Core>,
    options: PlatformOptions,
    serving: Mutex<HashMap<ModelId, Arc<Serving>>>,
    stop: Arc<AtomicBool>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    counter: AtomicU64,
    limiter: Arc<Limiter>,
    rag: Mutex<Option<Arc<Rag>>>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform").field("data_dir", &self.core.data_dir()).field("options", &self.options).finish()
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Platform {
    /// Opens (or creates) the embedded default in `data_dir`: SQLite and local encrypted blobs,
    /// the root key in a 0600 file there.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self, PlatformError> {
        Self::with_core(Arc::new(Core::open_embedded(data_dir.as_ref())?), PlatformOptions::default())
    }

    /// A platform over an opened core (any store configuration), with options. Starts the job
    /// workers when a runner is given.
    pub fn with_core(core: Arc<Core>, options: PlatformOptions) -> Result<Self, PlatformError> {
        let p = Platform {
            core,
            options,
            serving: Mutex::new(HashMap::new()),
            stop: Arc::new(AtomicBool::new(false)),
            workers: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
            limiter: Arc::new(Limiter::default()),
            rag: Mutex::new(None),
        };
        if let Some(runner) = p.options.runner.clone() {
            let mut handles = p.workers.lock().map_err(|_| PlatformError::Engine("worker list poisoned".into()))?;
            for i in 0..p.options.workers {
                let worker = Worker::new(
                    p.core.clone(),
                    format!("worker-{}-{i}", std::process::id()),
                    PoolId::shared(),
                    runner.clone(),
                );
                let (stop, poll) = (p.stop.clone(), p.options.poll);
                handles.push(
                    std::thread::Builder::new()
                        .name(format!("soramai-worker-{i}"))
                        .spawn(move || work(&worker, &stop, poll))
                        .map_err(|e| PlatformError::Engine(format!("starting a worker: {e}")))?,
                );
            }
            if p.options.dedicated_pools {
                let (core, stop, poll) = (p.core.clone(), p.stop.clone(), p.options.poll);
                handles.push(
                    std::thread::Builder::new()
                        .name("soramai-dedicated".into())
                        .spawn(move || supervise_dedicated(&core, &runner, &stop, poll))
                        .map_err(|e| PlatformError::Engine(format!("starting a worker: {e}")))?,
                );
            }
        }
        Ok(p)
    }

    /// Opens (or creates) the embedded default in `data_dir` as an embedding program wants it:
    /// `options.model` registered as a base model (under `options.model_id`, default
    /// [`DEFAULT_MODEL_ID`]) unless one of that id exists, and job workers running `runner`.
    pub fn open_with(
        data_dir: impl AsRef<Path>,
        options: &OpenOptions,
        runner: Option<RunnerCommand>,
    ) -> Result<Arc<Self>, PlatformError> {
        // Both URLs are checked before anything is created.
        let database = options.database.as_deref().map(soramai_core::Database::from_url).transpose()?;
        let blobs = options.blob_store.as_deref().map(soramai_core::BlobLocation::parse).transpose()?;
        let mut config = soramai_core::Config::embedded(data_dir.as_ref())?;
        if let Some(database) = database {
            config.database = database;
        }
        if let Some(blobs) = &blobs {
            config = config.with_blobs_at(blobs)?;
        }
        if let Some(n) = options.max_model_bytes {
            config.limits.max_custom_model_bytes = n;
        }
        let core = Arc::new(Core::open(config)?);
        if let Some(model) = &options.model {
            let id = options.model_id.as_deref().unwrap_or(DEFAULT_MODEL_ID);
            let id = ModelId::new(id)?;
            if core.base_model(&id).is_err() {
                core.register_base_model(&id, model)?;
            }
        }
        let defaults = PlatformOptions::default();
        let platform_options = PlatformOptions {
            runner,
            workers: options.workers.unwrap_or(defaults.workers),
            max_batch: options.max_batch.unwrap_or(defaults.max_batch).max(1),
            prefill_chunk: options.prefill_chunk.unwrap_or(defaults.prefill_chunk).max(1),
            prefix_cache_bytes: options
                .prefix_cache_bytes
                .map_or(defaults.prefix_cache_bytes, |b| usize::try_from(b).unwrap_or(usize::MAX)),
            ..defaults
        };
        Ok(Arc::new(Self::with_core(core, platform_options)?))
    }

    /// The security core (tenants, keys, datasets, jobs, audit, metering).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Checks an API key (`sk-…`).
    pub fn authenticate(&self, token: &str) -> Result<Principal, PlatformError> {
        Ok(self.core.authenticate(token)?)
    }

    /// Admits one request of a caller within its tier's limits (requests per minute, as a token
    /// bucket, and concurrent requests); the permit holds its place until dropped.
    pub fn admit(&self, principal: &Principal) -> Result<Permit, PlatformError> {
        let policy = self.core.tenant(principal.tenant())?.tier.policy();
        let rate = f64::from(policy.requests_per_minute.max(1));
        let now = Instant::now();
        let mut loads = self.limiter.loads.lock().map_err(|_| PlatformError::Engine("limiter poisoned".into()))?;
        let load =
            loads.entry(principal.tenant().clone()).or_insert(Load { tokens: rate, refilled: now, in_flight: 0 });
        load.tokens = (load.tokens + now.duration_since(load.refilled).as_secs_f64() * rate / 60.0).min(rate);
        load.refilled = now;
        if load.tokens < 1.0 {
            return Err(PlatformError::RateLimited(format!(
                "more than {} requests per minute on the {} tier",
                policy.requests_per_minute,
                policy.tier.as_str()
            )));
        }
        if load.in_flight >= policy.max_concurrent_requests {
            return Err(PlatformError::RateLimited(format!(
                "more than {} concurrent requests on the {} tier",
                policy.max_concurrent_requests,
                policy.tier.as_str()
            )));
        }
        load.tokens -= 1.0;
        load.in_flight += 1;
        Ok(Permit { limiter: self.limiter.clone(), tenant: principal.tenant().clone() })
    }

    /// Stops the job workers (running jobs finish first) and waits for them.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let handles = self.workers.lock().map(|mut h| std::mem::take(&mut *h)).unwrap_or_default();
        for h in handles {
            let _ = h.join();
        }
    }

    fn serving(&self, base: &ModelId) -> Result<Arc<Serving>, PlatformError> {
        let mut map = self.serving.lock().map_err(|_| PlatformError::Engine("engine registry poisoned".into()))?;
        if let Some(s) = map.get(base) {
            return Ok(s.clone());
        }
        let model = self.core.base_model(base)?;
        let engine = Arc::new(Engine::load(&model.path)?);
        let s = Arc::new(
            Serving::start(engine, &self.options)
                .map_err(|e| PlatformError::Engine(format!("starting the scheduler: {e}")))?,
        );
        map.insert(base.clone(), s.clone());
        Ok(s)
    }

    /// The engine serving a base model for a caller: a registered one, or one of the caller's
    /// tenant's own GGUF models, whose ownership is checked on every call (the loaded engine is
    /// shared by nothing else). A customer model is decrypted into memory on first use.
    fn serving_for(&self, principal: &Principal, base: &ModelId) -> Result<Arc<Serving>, PlatformError> {
        if !soramai_core::is_custom_model(base) {
            return self.serving(base);
        }
        self.core.custom_model(principal, base)?;
        let mut map = self.serving.lock().map_err(|_| PlatformError::Engine("engine registry poisoned".into()))?;
        if let Some(s) = map.get(base) {
            return Ok(s.clone());
        }
        let (_, reader) = self.core.open_custom_model(principal, base)?;
        let len = usize::try_from(reader.len()).map_err(|_| PlatformError::Engine("the model is too large".into()))?;
        let mut bytes = reader.read_range(0, len)?;
        // The decrypted bytes move into the engine's storage, which zeroes them when dropped.
        let engine = Arc::new(Engine::from_bytes(std::mem::take(&mut *bytes))?);
        let s = Arc::new(
            Serving::start(engine, &self.options)
                .map_err(|e| PlatformError::Engine(format!("starting the scheduler: {e}")))?,
        );
        map.insert(base.clone(), s.clone());
        Ok(s)
    }

    /// Stops serving a deleted model: a customer GGUF's engine (running streams keep it until
    /// they end), or a fine-tuned model's adapter in its base's engine.
    pub(crate) fn forget_model(&self, id: &ModelId, base: Option<&ModelId>) {
        let Ok(mut map) = self.serving.lock() else { return };
        map.remove(id);
        if let Some(s) = base.and_then(|b| map.get(b)) {
            s.engine.remove_adapter(id.as_str());
        }
    }

    /// Resolves a model id for a caller: a base model, one of the caller's tenant's own GGUF
    /// models, or one of its fine-tuned models (loading its adapter on first use). Returns the
    /// serving engine and the adapter name.
    fn resolve(
        &self,
        principal: &Principal,
        model: &str,
    ) -> Result<(Arc<Serving>, ModelId, Option<ModelId>), PlatformError> {
        let id = ModelId::new(model).map_err(|_| soramai_core::Error::NotFound { kind: "model" })?;
        if id.as_str().starts_with("ft:") {
            let ft = self.core.fine_tuned_model(principal, &id)?;
            let serving = self.serving_for(principal, &ft.base)?;
            if !serving.engine.adapter_names().iter().any(|n| n == id.as_str()) {
                crate::finetune::load_fine_tuned(&self.core, principal, &id, &serving.engine)?;
            }
            Ok((serving, ft.base, Some(id)))
        } else {
            let serving = self.serving_for(principal, &id)?;
            Ok((serving, id, None))
        }
    }

    /// The models a caller can use: every base model, its tenant's own GGUF models and its
    /// fine-tuned ones.
    pub fn list_models(&self, principal: &Principal) -> Result<Vec<ModelInfo>, PlatformError> {
        principal.require(Scope::Inference).or_else(|_| principal.require(Scope::Train))?;
        let mut out: Vec<ModelInfo> = self
            .core
            .base_models()?
            .into_iter()
            .map(|m| ModelInfo { id: m.id.as_str().to_owned(), created: 0, owned_by: "soramai".into() })
            .collect();
        for m in self.core.list_custom_models(principal)? {
            out.push(ModelInfo {
                id: m.id.as_str().to_owned(),
                created: (m.created_at / 1000).max(0) as u64,
                owned_by: m.tenant.as_str().to_owned(),
            });
        }
        for m in self.core.list_fine_tuned_models(principal)? {
            out.push(ModelInfo {
                id: m.id.as_str().to_owned(),
                created: (m.created_at / 1000).max(0) as u64,
                owned_by: m.tenant.as_str().to_owned(),
            });
        }
        Ok(out)
    }

    /// One model the caller can use.
    pub fn model(&self, principal: &Principal, id: &str) -> Result<ModelInfo, PlatformError> {
        self.list_models(principal)?
            .into_iter()
            .find(|m| m.id == id)
            .ok_or(PlatformError::Core(soramai_core::Error::NotFound { kind: "model" }))
    }

    /// Starts a generation (inference scope): a chat rendered with the model's template, or raw
    /// text. Checks everything before anything is charged; reserves credits for the prompt and
    /// `max_tokens` (clipped to what the balance covers) and settles when the stream ends.
    pub fn generate(
        &self,
        principal: &Principal,
        model: &str,
        prompt: &Prompt,
        options: &GenerationOptions,
    ) -> Result<GenerationStream, PlatformError> {
        principal.require(Scope::Inference)?;
        let bad = |m: &str| Err(PlatformError::InvalidArgument(m.into()));
        if let Some(t) = options.temperature
            && !(t.is_finite() && (0.0..=2.0).contains(&t))
        {
            return bad("temperature is 0 to 2");
        }
        if let Some(p) = options.top_p
            && !(p.is_finite() && p > 0.0 && p <= 1.0)
        {
            return bad("top_p is above 0 and at most 1");
        }
        if options.stop.len() > 4 || options.stop.iter().any(|s| s.is_empty() || s.len() > 256) {
            return bad("stop is up to 4 non-empty strings of at most 256 bytes");
        }
        if options.logprobs.is_some_and(|n| n > soramai_kernels::engine::MAX_TOP_LOGPROBS) {
            return bad("top_logprobs is 0 to 20");
        }
        if options.max_tokens == Some(0) {
            return bad("max_tokens is at least 1");
        }
        let (serving, base, adapter) = self.resolve(principal, model)?;
        let engine = &serving.engine;
        let tokens = match prompt {
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
                engine.chat_tokens(&msgs)?
            }
            Prompt::Text(text) => {
                if text.is_empty() {
                    return bad("prompt is empty");
                }
                engine.tokenizer.encode(text, true, false)
            }
        };
        let n_ctx = engine.model.config.n_ctx;
        let prompt_tokens = tokens.len();
        if prompt_tokens >= n_ctx {
            return Err(PlatformError::ContextLength { tokens: prompt_tokens, context: n_ctx });
        }
        let mut max_tokens = options.max_tokens.unwrap_or(usize::MAX).min(n_ctx - prompt_tokens);
        // Reserve what the request may cost, clipped to the balance.
        let tenant = principal.tenant().clone();
        let balance = self.core.balance(&tenant)?.max(0) as u64;
        let needed = prompt_tokens as u64 + 1;
        if balance < needed {
            return Err(
                soramai_core::Error::InsufficientCredits { balance: balance as i64, needed: needed as i64 }.into()
            );
        }
        max_tokens = max_tokens.min((balance - prompt_tokens as u64) as usize);
        let reserved = prompt_tokens as u64 + max_tokens as u64;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let id =
            format!("{}-{}", if matches!(prompt, Prompt::Chat(_)) { "chatcmpl" } else { "cmpl" }, request_suffix(n));
        self.core.charge_credits(&tenant, reserved as i64, &id)?;
        let settlement = Settlement {
            core: self.core.clone(),
            tenant,
            reserved,
            base,
            adapter: adapter.clone(),
            started: Instant::now(),
        };
        let seed = options.seed.unwrap_or_else(|| random_seed(n));
        let req = Request {
            prompt: tokens,
            adapter: adapter.as_ref().map(|a| a.as_str().to_owned()),
            max_tokens,
            sampling: SamplingParams {
                temperature: options.temperature.unwrap_or(1.0),
                top_p: options.top_p.unwrap_or(1.0),
                seed,
                ..SamplingParams::default()
            },
            stop: options.stop.clone(),
            precision: self.options.precision,
            logprobs: options.logprobs,
            // Prompt prefixes are reused within the tenant only: another tenant's request never
            // reads them, nor learns from its timing whether a prompt was sent before.
            prefix_scope: Some(principal.tenant().as_str().to_owned()),
        };
        let (tx, rx) = unbounded_channel();
        let sent =
            serving.submit.lock().map_err(|_| PlatformError::Engine("scheduler poisoned".into())).and_then(|s| {
                s.send(Submission { req, events: tx })
                    .map_err(|_| PlatformError::Engine("the scheduler stopped".into()))
            });
        if let Err(e) = sent {
            settlement.settle(0, 0, UsageStatus::Error)?;
            return Err(e);
        }
        Ok(GenerationStream {
            id,
            model: model.to_owned(),
            rx,
            engine: serving.engine.clone(),
            settle: Some(settlement),
            prompt_tokens: prompt_tokens as u64,
            seen: 0,
            want_logprobs: options.logprobs.is_some(),
            created: unix_seconds(),
            permit: None,
        })
    }

    /// Embeds texts with a model's base (inference scope): unit vectors, mean-pooled over each
    /// text's first [`EMBEDDING_MAX_TOKENS`] tokens. Charges one credit per token read.
    pub fn embed(&self, principal: &Principal, model: &str, inputs: &[String]) -> Result<Embeddings, PlatformError> {
        principal.require(Scope::Inference)?;
        if inputs.is_empty() || inputs.len() > EMBEDDING_MAX_INPUTS {
            return Err(PlatformError::InvalidArgument(format!("input holds 1 to {EMBEDDING_MAX_INPUTS} texts")));
        }
        let (serving, base, adapter) = self.resolve(principal, model)?;
        let engine = &serving.engine;
        let tokens: u64 = inputs
            .iter()
            .map(|t| engine.tokenizer.encode(t, true, false).len().clamp(1, EMBEDDING_MAX_TOKENS) as u64)
            .sum();
        let started = Instant::now();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.core.charge_credits(principal.tenant(), tokens as i64, &format!("embd-{}", request_suffix(n)))?;
        let texts: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let vectors = engine.embed(&texts, EMBEDDING_MAX_TOKENS);
        let status = if vectors.is_ok() { UsageStatus::Ok } else { UsageStatus::Error };
        self.core.record_usage(
            principal.tenant(),
            &UsageEvent {
                kind: UsageKind::Embedding,
                model: base,
                adapter,
                input_tokens: tokens,
                output_tokens: 0,
                latency_ms: started.elapsed().as_millis() as u64,
                status,
            },
        )?;
        Ok(Embeddings { vectors: vectors?, prompt_tokens: tokens })
    }

    /// Submits a fine-tuning job (train scope) on one of the tenant's datasets.
    pub fn create_fine_tuning_job(&self, principal: &Principal, spec: FineTuneSpec) -> Result<Job, PlatformError> {
        Ok(self.core.submit_job(principal, JobSpec::FineTune(spec))?)
    }

    /// One of the tenant's fine-tuning jobs.
    pub fn fine_tuning_job(&self, principal: &Principal, id: &str) -> Result<Job, PlatformError> {
        let id = JobId::new(id).map_err(|_| soramai_core::Error::NotFound { kind: "job" })?;
        let job = self.core.job(principal, &id)?;
        if !matches!(job.spec, JobSpec::FineTune(_)) {
            return Err(soramai_core::Error::NotFound { kind: "job" }.into());
        }
        Ok(job)
    }

    /// One of the tenant's fine-tuning jobs with its events, oldest first.
    pub fn fine_tuning_job_events(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<(Job, Vec<soramai_core::JobEvent>), PlatformError> {
        let job = self.fine_tuning_job(principal, id)?;
        let events = self.core.job_events(principal, &job.id)?;
        Ok((job, events))
    }

    /// The tenant's fine-tuning jobs, newest first.
    pub fn list_fine_tuning_jobs(&self, principal: &Principal) -> Result<Vec<Job>, PlatformError> {
        let mut jobs: Vec<Job> =
            self.core.list_jobs(principal)?.into_iter().filter(|j| matches!(j.spec, JobSpec::FineTune(_))).collect();
        jobs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.as_str().cmp(a.id.as_str())));
        Ok(jobs)
    }

    /// Cancels a fine-tuning job.
    pub fn cancel_fine_tuning_job(&self, principal: &Principal, id: &str) -> Result<Job, PlatformError> {
        let job = self.fine_tuning_job(principal, id)?;
        Ok(self.core.cancel_job(principal, &job.id)?)
    }

    /// Creates the operator tenant and its first admin key when the platform has none: the key
    /// is returned this once (print it, never store it). `None` when the operator exists.
    pub fn bootstrap_operator(&self) -> Result<Option<IssuedKey>, PlatformError> {
        let op = TenantId::new(OPERATOR_TENANT)?;
        match self.core.tenant(&op) {
            Ok(_) => return Ok(None),
            Err(soramai_core::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.core.create_tenant(&op, Tier::Org)?;
        let scopes = [Scope::Admin, Scope::Inference, Scope::Train, Scope::Rag];
        Ok(Some(self.core.create_api_key(&Principal::operator(&op), KeyOptions::new("bootstrap admin", &scopes))?))
    }

    /// Whether a caller administers the platform (an admin key of the operator tenant).
    pub fn is_platform_admin(principal: &Principal) -> bool {
        principal.tenant().as_str() == OPERATOR_TENANT && principal.require(Scope::Admin).is_ok()
    }

    fn require_platform_admin(principal: &Principal) -> Result<(), PlatformError> {
        if Self::is_platform_admin(principal) {
            Ok(())
        } else {
            Err(PlatformError::Core(soramai_core::Error::MissingScope(Scope::Admin)))
        }
    }

    /// Records a platform admin's change to a tenant in the operator's audit log (the tenant's
    /// own log records it in the same breath, naming the admin's key).
    fn audit_admin(
        &self,
        principal: &Principal,
        tenant: &TenantId,
        detail: serde_json::Value,
    ) -> Result<(), PlatformError> {
        Ok(self.core.record_audit(principal, Action::AdminAccess, tenant.as_str(), detail)?)
    }

    /// Creates a tenant on a tier (platform admin).
    pub fn create_tenant(&self, principal: &Principal, id: &str, tier: Tier) -> Result<Tenant, PlatformError> {
        Self::require_platform_admin(principal)?;
        let t = self.core.create_tenant_by(&principal.as_operator(), &TenantId::new(id)?, tier)?;
        self.audit_admin(principal, &t.id, serde_json::json!({"op": "tenant.create", "tier": t.tier.as_str()}))?;
        Ok(t)
    }

    /// Moves a tenant to another tier (platform admin).
    pub fn set_tier(&self, principal: &Principal, id: &str, tier: Tier) -> Result<Tenant, PlatformError> {
        Self::require_platform_admin(principal)?;
        let t = self.core.set_tier_by(&principal.as_operator(), &TenantId::new(id)?, tier)?;
        self.audit_admin(principal, &t.id, serde_json::json!({"op": "tenant.tier", "tier": t.tier.as_str()}))?;
        Ok(t)
    }

    /// Every tenant (platform admin).
    pub fn tenants(&self, principal: &Principal) -> Result<Vec<Tenant>, PlatformError> {
        Self::require_platform_admin(principal)?;
        Ok(self.core.tenants()?)
    }

    /// Grants credits to a tenant (platform admin).
    pub fn grant_credits(
        &self,
        principal: &Principal,
        tenant: &str,
        amount: i64,
        reference: &str,
    ) -> Result<Receipt, PlatformError> {
        Self::require_platform_admin(principal)?;
        let tenant = TenantId::new(tenant)?;
        let r = self.core.grant_credits_by(&principal.as_operator(), &tenant, amount, reference)?;
        let detail = serde_json::json!({"op": "credits.grant", "amount": r.amount, "receipt": r.receipt});
        self.audit_admin(principal, &tenant, detail)?;
        Ok(r)
    }

    /// Issues an API key in a tenant: a tenant's admin in its own tenant, or the platform admin
    /// a tenant's first key (while it has no live key; any later operator access goes through
    /// [`Platform::request_access_grant`]). A key never holds more than the calling key's scopes.
    /// The secret is shown once.
    pub fn create_api_key(
        &self,
        principal: &Principal,
        tenant: &str,
        options: KeyOptions,
    ) -> Result<IssuedKey, PlatformError> {
        let tenant = TenantId::new(tenant)?;
        if &tenant == principal.tenant() {
            return Ok(self.core.create_api_key(principal, options)?);
        }
        Self::require_platform_admin(principal)?;
        Ok(self.core.issue_first_key(principal, &tenant, options)?)
    }

    /// Closes a tenant's account: its own admin key for its own account, or a platform admin for
    /// any but the operator's. Access ends now; the data goes at the end of `options.window` (at
    /// most 30 days) or now with `options.immediate` (see [`soramai_core::closing`]).
    pub fn close_tenant(
        &self,
        principal: &Principal,
        id: &str,
        options: CloseOptions,
    ) -> Result<Closure, PlatformError> {
        let id = TenantId::new(id)?;
        if id.as_str() == OPERATOR_TENANT {
            return Err(PlatformError::InvalidArgument("the operator's own tenant is not closed this way".into()));
        }
        let actor = if Self::is_platform_admin(principal) {
            principal.as_operator()
        } else if principal.tenant() == &id && principal.grant().is_none() {
            principal.require(Scope::Admin)?;
            principal.actor().clone()
        } else {
            return Err(soramai_core::Error::MissingScope(Scope::Admin).into());
        };
        let closure = self.core.close_tenant(&actor, &id, options)?;
        // Its own models leave memory now: no key of the tenant can reach them any more.
        if let Ok(mut map) = self.serving.lock() {
            let prefix = format!("{}{}:", soramai_core::models::CUSTOM_MODEL_PREFIX, id.as_str());
            map.retain(|model, _| !model.as_str().starts_with(&prefix));
            // So do the states of its recent prompts.
            for serving in map.values() {
                serving.engine.prefix_cache().forget_scope(id.as_str());
            }
        }
        if Self::is_platform_admin(principal) {
            let detail =
                serde_json::json!({"op": "tenant.close", "immediate": options.immediate, "purge_at": closure.purge_at});
            self.audit_admin(principal, &id, detail)?;
        }
        Ok(closure)
    }

    /// Takes back a close within its window (platform admin; the tenant's keys are revoked).
    pub fn reopen_tenant(&self, principal: &Principal, id: &str) -> Result<(), PlatformError> {
        Self::require_platform_admin(principal)?;
        let id = TenantId::new(id)?;
        self.core.reopen_tenant(&principal.as_operator(), &id)?;
        self.audit_admin(principal, &id, serde_json::json!({"op": "tenant.reopen"}))
    }

    /// Asks for break-glass access to a tenant's data (platform admin): a reason, at most an
    /// hour, no more than the calling key's scopes. Active at once with a short-lived key on Free,
    /// Basic and Pro; pending the tenant's approval on Org; refused where the customer holds the
    /// keys. Recorded in the tenant's audit log and the operator's.
    pub fn request_access_grant(
        &self,
        principal: &Principal,
        tenant: &str,
        request: GrantRequest,
    ) -> Result<IssuedGrant, PlatformError> {
        Self::require_platform_admin(principal)?;
        Ok(self.core.request_access_grant(principal, &TenantId::new(tenant)?, request)?)
    }

    /// Approves a pending grant on the caller's tenant (the tenant's own admin key).
    pub fn approve_access_grant(&self, principal: &Principal, id: &str) -> Result<AccessGrant, PlatformError> {
        Ok(self.core.approve_access_grant(principal, &grant_id(id)?)?)
    }

    /// Ends a grant at once (the tenant's admin, or the operator's).
    pub fn revoke_access_grant(&self, principal: &Principal, id: &str) -> Result<AccessGrant, PlatformError> {
        Ok(self.core.revoke_access_grant(principal, &grant_id(id)?)?)
    }

    /// One grant the caller may see (on its tenant, or asked for by it).
    pub fn access_grant(&self, principal: &Principal, id: &str) -> Result<AccessGrant, PlatformError> {
        Ok(self.core.access_grant(principal, &grant_id(id)?)?)
    }

    /// The grants on the caller's tenant, or those its tenant asked for (the operator's).
    pub fn access_grants(&self, principal: &Principal) -> Result<Vec<AccessGrant>, PlatformError> {
        Ok(self.core.list_access_grants(principal)?)
    }

    /// Records one request made under a break-glass grant (`operation`: a route or method name)
    /// in both audit logs, failing once the grant is revoked or expired; nothing for other keys.
    pub fn record_request(&self, principal: &Principal, operation: &str) -> Result<(), PlatformError> {
        Ok(self.core.record_grant_request(principal, operation)?)
    }

    /// Retrieval, on the first registered base model's tokenizer (chunk windows) and embeddings
    /// (hybrid search); created on first use.
    pub fn rag(&self) -> Result<Arc<Rag>, PlatformError> {
        let mut slot = self.rag.lock().map_err(|_| PlatformError::Engine("rag poisoned".into()))?;
        if let Some(r) = slot.as_ref() {
            return Ok(r.clone());
        }
        let mut options = RagOptions::default();
        if let Some(base) = self.core.base_models()?.into_iter().next() {
            let engine = self.serving(&base.id)?.engine.clone();
            options.tokens = Arc::new(crate::grounded::ModelTokens(engine.tokenizer.clone()));
            options.embedder = Some(Arc::new(crate::grounded::ModelEmbedder::new(engine)));
        }
        let r = Arc::new(Rag::with_options(self.core.clone(), RAG_CACHE_BYTES, options));
        *slot = Some(r.clone());
        Ok(r)
    }

    /// Starts a chat grounded in one of the caller's corpora (rag and inference scopes, a tier
    /// with RAG): retrieves `top_k` chunks (reranked by embeddings when `hybrid`), fits them with
    /// the question into the model's context (leaving room for `max_tokens`, default 256), and
    /// generates like [`Platform::generate`]. Returns the stream and the prompt, whose sources
    /// resolve the answer's `[n]` citations.
    pub fn grounded_chat(
        &self,
        principal: &Principal,
        model: &str,
        corpus: &str,
        question: &str,
        retrieval: &Retrieval,
        options: &GenerationOptions,
    ) -> Result<(GenerationStream, GroundedPrompt), PlatformError> {
        principal.require(Scope::Inference)?;
        if question.trim().is_empty() {
            return Err(PlatformError::InvalidArgument("question is empty".into()));
        }
        let rag = self.rag()?;
        let corpus = CorpusId::new(corpus).map_err(|_| soramai_rag::Error::CorpusNotFound)?;
        let (serving, _, _) = self.resolve(principal, model)?;
        let engine = &serving.engine;
        let max_tokens = options.max_tokens.unwrap_or(256);
        let budget = crate::grounded::source_budget(engine, max_tokens)?;
        let mut request = SearchRequest::new(question, retrieval.top_k);
        request.hybrid = retrieval.hybrid;
        let hits = rag.search(principal, &corpus, &request)?;
        let prompt = soramai_rag::grounding::assemble(
            question,
            &hits,
            budget,
            &crate::grounded::ModelTokens(engine.tokenizer.clone()),
        );
        let chat = Prompt::Chat(vec![
            ChatMessage { role: "system".into(), content: prompt.system.clone() },
            ChatMessage { role: "user".into(), content: prompt.user.clone() },
        ]);
        let options = GenerationOptions { max_tokens: Some(max_tokens), ..options.clone() };
        let stream = self.generate(principal, model, &chat, &options)?;
        Ok((stream, prompt))
    }

    /// A dataset id as given by a caller, or not-found.
    pub fn dataset_id(id: &str) -> Result<DatasetId, PlatformError> {
        DatasetId::new(id).map_err(|_| soramai_core::Error::NotFound { kind: "dataset" }.into())
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn work(worker: &Worker, stop: &AtomicBool, poll: Duration) {
    while !stop.load(Ordering::SeqCst) {
        match worker.run_once() {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => std::thread::sleep(poll),
        }
    }
}

/// Starts a worker for each dedicated pool with queued jobs (one per pool at a time) and lets it
/// run until its pool's queue is empty; joins them all when the platform stops.
fn supervise_dedicated(core: &Arc<Core>, runner: &RunnerCommand, stop: &Arc<AtomicBool>, poll: Duration) {
    let mut running: HashMap<PoolId, JoinHandle<()>> = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        running.retain(|_, h| !h.is_finished());
        for pool in core.queued_pools().unwrap_or_default() {
            if pool.is_shared() || running.contains_key(&pool) {
                continue;
            }
            let name = format!("worker-{}-{}", std::process::id(), pool.as_str());
            let worker = Worker::new(core.clone(), name, pool.clone(), runner.clone());
            let stop = stop.clone();
            let spawned = std::thread::Builder::new()
                .name("soramai-dedicated-worker".into())
                .spawn(move || while !stop.load(Ordering::SeqCst) && matches!(worker.run_once(), Ok(Some(_))) {});
            if let Ok(h) = spawned {
                running.insert(pool, h);
            }
        }
        std::thread::sleep(poll);
    }
    for (_, h) in running {
        let _ = h.join();
    }
}

fn grant_id(id: &str) -> Result<GrantId, PlatformError> {
    GrantId::new(id).map_err(|_| soramai_core::Error::NotFound { kind: "access grant" }.into())
}

fn request_suffix(n: u64) -> String {
    let mut b = [0u8; 12];
    if getrandom::fill(&mut b).is_err() {
        b[..8].copy_from_slice(&n.to_le_bytes());
    }
    hex::encode(b)
}

fn random_seed(n: u64) -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return n ^ unix_seconds();
    }
    u64::from_le_bytes(b)
}
