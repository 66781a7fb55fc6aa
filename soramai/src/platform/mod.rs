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
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use soramai_core::{
    AccessGrant, Action, CloseOptions, Closure, Core, DatasetId, FineTuneSpec, GrantId, GrantRequest, IssuedGrant,
    IssuedKey, Job, JobId, JobSpec, KeyOptions, ModelId, PoolId, Principal, Receipt, RunnerCommand, Scope, Tenant,
    TenantId, Tier, UsageEvent, UsageKind, UsageStatus,
};
use soramai_kernels::{Engine, Request};
use soramai_rag::{CorpusId, GroundedPrompt, Rag, RagOptions, SearchRequest};

use crate::PlatformError;

mod admin;
mod admission;
mod chat;
mod options;
mod serving;
mod stream;
mod workers;

pub use admission::Permit;
use admission::*;
use chat::ToolPlan;
pub use chat::{
    ChatMessage, FunctionCall, FunctionDef, MAX_TOOLS, NamedFunction, NamedTool, Tool, ToolCall, ToolChoice, ToolKind,
    ToolMode,
};
pub use options::{DEFAULT_MODEL_ID, OpenOptions, PlatformOptions};
use serving::*;
pub use serving::{GenerationOptions, JsonSchemaFormat, MAX_CHOICES, Prompt, ResponseFormat};
use stream::*;
pub use stream::{
    Choice, Completion, FinishReason, GenerationStream, PromptTokensDetails, StreamEvent, TokenLogprob, TopLogprob,
    Usage,
};
use workers::*;

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

/// How a grounded chat retrieves.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retrieval {
    /// Chunks retrieved before the context budget cut (1..=100).
    pub top_k: usize,
    /// Rerank BM25 candidates by embedding similarity.
    pub hybrid: bool,
    /// Hold the answer to citing its sources: it begins with one or more `[n]` markers, and
    /// every marker in it names a source in the prompt (a grammar over the answer). No effect
    /// when nothing was retrieved.
    pub cite: bool,
}

impl Default for Retrieval {
    fn default() -> Self {
        Self { top_k: 5, hybrid: false, cite: false }
    }
}

/// Decrypted index chunks kept in memory across every tenant's corpora.
pub const RAG_CACHE_BYTES: usize = 64 << 20;

/// The tenant whose admin keys administer the platform (tenants, tiers, credits).
pub const OPERATOR_TENANT: &str = "operator";

/// The platform: core, engines and job workers.
pub struct Platform {
    pub(crate) core: Arc<Core>,
    options: PlatformOptions,
    engines: Arc<Engines>,
    stop: Arc<AtomicBool>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    counter: AtomicU64,
    limiter: Arc<Limiter>,
}

/// The engines loaded for serving and the retrieval built on the first of them, shared with the
/// job workers, which index ingestions into the corpora the platform searches.
pub(crate) struct Engines {
    core: Arc<Core>,
    options: PlatformOptions,
    serving: Mutex<HashMap<ModelId, Arc<Serving>>>,
    rag: Mutex<Option<Arc<Rag>>>,
}

impl std::fmt::Debug for Engines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engines").finish_non_exhaustive()
    }
}

impl Engines {
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

    /// Retrieval, on the first registered base model's tokenizer (chunk windows) and embeddings
    /// (hybrid search); created on first use.
    pub(crate) fn rag(&self) -> Result<Arc<Rag>, PlatformError> {
        let mut slot = self.rag.lock().map_err(|_| PlatformError::Engine("rag poisoned".into()))?;
        if let Some(r) = slot.as_ref() {
            return Ok(r.clone());
        }
        let mut options = RagOptions::default();
        if let Some(base) = self.embedding_model()? {
            let engine = self.serving(&base)?.engine.clone();
            options.tokens = Arc::new(crate::grounded::ModelTokens(engine.tokenizer.clone()));
            options.embedder = Some(Arc::new(crate::grounded::ModelEmbedder::new(engine)));
        }
        let r = Arc::new(Rag::with_options(self.core.clone(), RAG_CACHE_BYTES, options));
        *slot = Some(r.clone());
        Ok(r)
    }

    /// The base model whose tokenizer and hidden states RAG uses: the first registered.
    pub(crate) fn embedding_model(&self) -> Result<Option<ModelId>, PlatformError> {
        Ok(self.core.base_models()?.into_iter().next().map(|b| b.id))
    }
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
        Self::build(Arc::new(Core::open_embedded(data_dir.as_ref())?), PlatformOptions::default())
    }

    /// A platform over a core opened elsewhere, for tests and tools (feature `internals`).
    #[cfg(feature = "internals")]
    #[doc(hidden)]
    pub fn with_core(core: Arc<Core>, options: PlatformOptions) -> Result<Self, PlatformError> {
        Self::build(core, options)
    }

    /// A platform over an opened core (any store configuration), with options. Starts the job
    /// workers when a runner is given.
    pub(crate) fn build(core: Arc<Core>, options: PlatformOptions) -> Result<Self, PlatformError> {
        let engines = Arc::new(Engines {
            core: core.clone(),
            options: options.clone(),
            serving: Mutex::new(HashMap::new()),
            rag: Mutex::new(None),
        });
        let p = Platform {
            core,
            options,
            engines,
            stop: Arc::new(AtomicBool::new(false)),
            workers: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
            limiter: Arc::new(Limiter::default()),
        };
        if let Some(runner) = p.options.runner.clone() {
            let mut handles = p.workers.lock().map_err(|_| PlatformError::Engine("worker list poisoned".into()))?;
            for i in 0..p.options.workers {
                let worker = new_worker(
                    &p.engines,
                    format!("worker-{}-{i}", std::process::id()),
                    PoolId::shared(),
                    &runner,
                    &p.stop,
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
                let (engines, stop, poll) = (p.engines.clone(), p.stop.clone(), p.options.poll);
                handles.push(
                    std::thread::Builder::new()
                        .name("soramai-dedicated".into())
                        .spawn(move || supervise_dedicated(&engines, &runner, &stop, poll))
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
        // What a crash left behind (half-written blobs, dead jobs' scratch) goes before any work.
        core.recover_after_restart()?;
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
        Ok(Arc::new(Self::build(core, platform_options)?))
    }

    pub(crate) fn engines(&self) -> &Arc<Engines> {
        &self.engines
    }

    /// The security core (tenants, keys, datasets, jobs, audit, metering), for tests and fuzzing
    /// only: everything else goes through [`Session`](crate::Session) and
    /// [`Accounts`](crate::Accounts), where the policy is.
    #[cfg(feature = "internals")]
    #[doc(hidden)]
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The most bytes a tenant's own model upload may have (a server bounds its streamed body by it).
    pub fn max_model_upload_bytes(&self) -> u64 {
        self.core.limits().max_custom_model_bytes
    }

    /// Whether the platform can serve: at least one base model is registered.
    pub fn ready(&self) -> Result<bool, PlatformError> {
        Ok(!self.core.base_models()?.is_empty())
    }

    /// Checks an API key (`sk-…`).
    pub fn authenticate(&self, token: &str) -> Result<Principal, PlatformError> {
        Ok(self.core.authenticate(token)?)
    }

    /// Admits one request of a caller within its tier's limits (requests per minute, as a token
    /// bucket, and concurrent requests); the permit holds its place until dropped.
    pub fn admit(&self, principal: &Principal) -> Result<Permit, PlatformError> {
        let policy = self.core.tenant(principal.tenant())?.tier.policy();
        self.limiter.admit(principal.tenant(), &policy)
    }

    /// Counts a call refused before it ran (a key without the route's scope) against the
    /// tenant's requests per minute; `rate_limit_exceeded` when the tenant is over.
    pub fn charge_refused(&self, principal: &Principal) -> Result<(), PlatformError> {
        let policy = self.core.tenant(principal.tenant())?.tier.policy();
        self.limiter.charge(principal.tenant(), &policy)
    }

    /// Stops the job workers and waits for them: a running job's child is killed within 50 ms
    /// and the job queued again (a fine-tune resumes from its last checkpoint, an ingestion
    /// starts over; neither has committed anything half-done).
    pub fn shutdown(&self) {
        self.begin_shutdown();
        let handles = self.workers.lock().map(|mut h| std::mem::take(&mut *h)).unwrap_or_default();
        for h in handles {
            let _ = h.join();
        }
    }

    /// Marks the platform as stopping: long work in progress (an ingestion) stops at its next
    /// check and commits nothing, and workers take no new job. [`Platform::shutdown`] then waits
    /// for the workers.
    pub fn begin_shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether [`Platform::begin_shutdown`] was called.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn serving(&self, base: &ModelId) -> Result<Arc<Serving>, PlatformError> {
        self.engines.serving(base)
    }

    /// The engine serving a base model for a caller: a registered one, or one of the caller's
    /// tenant's own GGUF models, whose ownership is checked on every call (the loaded engine is
    /// shared by nothing else). A customer model is decrypted into memory on first use.
    fn serving_for(&self, principal: &Principal, base: &ModelId) -> Result<Arc<Serving>, PlatformError> {
        if !soramai_core::is_custom_model(base) {
            return self.serving(base);
        }
        self.core.custom_model(principal, base)?;
        let mut map =
            self.engines.serving.lock().map_err(|_| PlatformError::Engine("engine registry poisoned".into()))?;
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
        let Ok(mut map) = self.engines.serving.lock() else { return };
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
        options.check()?;
        let (serving, base, adapter) = self.resolve(principal, model)?;
        if let Some(&t) = options.logit_bias.keys().find(|&&t| t as usize >= serving.engine.model.config.vocab) {
            return Err(PlatformError::InvalidArgument(format!(
                "logit_bias token {t} is outside the model's {}-token vocabulary",
                serving.engine.model.config.vocab
            )));
        }
        let format = options.response_format.as_ref().map(ResponseFormat::grammar).transpose()?.flatten();
        let tools =
            ToolPlan::new(&options.tools, options.tool_choice.as_ref(), options.parallel_tool_calls, format.is_some())?;
        let tokens = prompt_tokens(&serving.engine, prompt, tools.as_ref(), options.response_format.as_ref())?;
        // What the output is held to, and the parameter to name when it does not compile.
        let held = match (&tools, format) {
            (Some(plan), _) => Some((plan.grammar(), "tools")),
            (None, Some(grammar)) => Some((grammar, "response_format")),
            (None, None) => None,
        };
        let constraint = match held {
            None => None,
            Some((grammar, param)) => Some(serving.engine.constrain(&grammar).map_err(|e| match e {
                soramai_kernels::Error::Request(m) => {
                    PlatformError::InvalidParameter { param, message: format!("{param}: {m}") }
                }
                other => other.into(),
            })?),
        };
        let n_ctx = serving.engine.model.config.n_ctx;
        let prompt_len = tokens.len();
        if prompt_len >= n_ctx {
            return Err(PlatformError::ContextLength { tokens: prompt_len, context: n_ctx });
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let id =
            format!("{}-{}", if matches!(prompt, Prompt::Chat(_)) { "chatcmpl" } else { "cmpl" }, request_suffix(n));
        let wanted = options.max_tokens.unwrap_or(usize::MAX).min(n_ctx - prompt_len);
        let choices = options.choices();
        let (max_tokens, settlement) = self.reserve(
            principal.tenant(),
            Ask { prompt: prompt_len, choices, tokens: wanted },
            &id,
            base,
            adapter.clone(),
        )?;
        let req = Request {
            prompt: tokens,
            adapter: adapter.as_ref().map(|a| a.as_str().to_owned()),
            max_tokens,
            sampling: options.sampling(random_seed(n)),
            stop: options.stop.clone(),
            precision: self.options.precision,
            logprobs: options.logprobs,
            // Prompt prefixes are reused within the tenant only: another tenant's request never
            // reads them, nor learns from its timing whether a prompt was sent before.
            prefix_scope: Some(principal.tenant().as_str().to_owned()),
            constraint,
        };
        let rx = match serving.submit(req, choices) {
            Ok(rx) => rx,
            Err(e) => {
                settlement.settle(0, 0, UsageStatus::Error)?;
                return Err(e);
            }
        };
        Ok(GenerationStream {
            id,
            model: model.to_owned(),
            rx,
            engine: serving.engine.clone(),
            settle: Some(settlement),
            prompt_tokens: prompt_len as u64,
            seen: 0,
            choices: vec![ChoiceState::default(); choices],
            tools: tools.is_some(),
            queued: Default::default(),
            want_logprobs: options.logprobs.is_some(),
            created: unix_seconds(),
            permit: None,
        })
    }

    /// Reserves what a request may cost, its prompt and up to `ask.tokens` new tokens for each of
    /// its choices, clipped to the tenant's balance: the tokens each choice may generate, and the
    /// settlement that gives back what it does not use. Refused when the balance does not cover
    /// the prompt and one token a choice.
    fn reserve(
        &self,
        tenant: &TenantId,
        ask: Ask,
        id: &str,
        base: ModelId,
        adapter: Option<ModelId>,
    ) -> Result<(usize, Settlement), PlatformError> {
        let Ask { prompt: prompt_len, choices, tokens: wanted } = ask;
        let balance = self.core.balance(tenant)?.max(0) as u64;
        let choices = choices.max(1) as u64;
        let needed = prompt_len as u64 + choices;
        if balance < needed {
            return Err(
                soramai_core::Error::InsufficientCredits { balance: balance as i64, needed: needed as i64 }.into()
            );
        }
        let max_tokens = wanted.min(((balance - prompt_len as u64) / choices) as usize);
        let reserved = prompt_len as u64 + max_tokens as u64 * choices;
        self.core.charge_credits(tenant, reserved as i64, id)?;
        let settlement = Settlement {
            core: self.core.clone(),
            tenant: tenant.clone(),
            reserved,
            base,
            adapter,
            started: Instant::now(),
        };
        Ok((max_tokens, settlement))
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

    /// Retrieval, on the first registered base model's tokenizer (chunk windows) and embeddings
    /// (hybrid search); created on first use.
    pub fn rag(&self) -> Result<Arc<Rag>, PlatformError> {
        self.engines.rag()
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
        if options.choices() != 1 {
            return Err(PlatformError::InvalidArgument("a grounded answer has one choice: n is 1".into()));
        }
        if options.response_format.as_ref().is_some_and(|f| *f != ResponseFormat::Text {}) {
            return Err(PlatformError::InvalidArgument("a grounded answer is text: response_format is text".into()));
        }
        if !options.tools.is_empty() {
            return Err(PlatformError::InvalidArgument("a grounded answer offers no tools".into()));
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
            ChatMessage::new("system", prompt.system.clone()),
            ChatMessage::new("user", prompt.user.clone()),
        ]);
        let mut options = GenerationOptions { max_tokens: Some(max_tokens), ..options.clone() };
        if retrieval.cite && !prompt.sources.is_empty() {
            options.response_format = Some(ResponseFormat::Lark { grammar: citing_grammar(prompt.sources.len()) });
        }
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

/// What a generation asks to reserve: its prompt, its choices and the new tokens each may take.
struct Ask {
    prompt: usize,
    choices: usize,
    tokens: usize,
}

/// An answer that cites its sources: it begins with `[n]` markers naming sources 1 to `sources`,
/// and any later `[` opens such a marker.
fn citing_grammar(sources: usize) -> String {
    let markers: Vec<String> = (1..=sources).map(|n| format!("\"[{n}]\"")).collect();
    let numbers: Vec<String> = (1..=sources).map(|n| n.to_string()).collect();
    format!("start: cite+ \" \" TEXT\ncite: {}\nTEXT: /([^\\[]|\\[({})\\])*/\n", markers.join(" | "), numbers.join("|"))
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
