//! Text generation over a [`Model`]: tokenizer, chat template, adapters that come and go while
//! others run, sampling, stop conditions and token streaming, one sequence or a batch.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock};

use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::grammar::{Constraint, Grammar, Grammars};
use crate::lora::Adapter;
use crate::model::{KvCache, Lane, Logits, Model, Precision};
use crate::prefix::PrefixCache;
use crate::sample::{Sampler, SamplingParams};
use crate::tokenizer::template::{ChatTemplate, Message};
use crate::tokenizer::{TokenId, Tokenizer};

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// EOS or end of turn.
    Stop,
    /// A stop string appeared.
    StopString,
    /// `max_tokens` reached.
    Length,
    /// The context is full.
    Context,
    /// The streaming callback asked to stop.
    Cancelled,
    /// The output constraint could not go on (the grammar engine failed; the reason is in
    /// [`Generation::error`]).
    Constraint,
}

/// A generation request.
#[derive(Clone, Debug)]
pub struct Request {
    /// Prompt tokens.
    pub prompt: Vec<TokenId>,
    /// Adapter name (registered with [`Engine::add_adapter`]), or none.
    pub adapter: Option<String>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Strings that end generation (not included in the text).
    pub stop: Vec<String>,
    /// Arithmetic path.
    pub precision: Precision,
    /// Report log-probabilities of each sampled token and of this many alternatives (0..=20).
    pub logprobs: Option<usize>,
    /// The prefix cache's scope: the prompt may reuse, and adds to, the cached key/value states
    /// of earlier prompts under the same scope and adapter ([`crate::prefix`]). A serving
    /// platform passes the tenant's id; None neither reads nor writes the cache.
    pub prefix_scope: Option<String>,
    /// What the output must match ([`Engine::constrain`]); None leaves it free.
    pub constraint: Option<Constraint>,
}

impl Request {
    /// Greedy, fast, no adapter.
    pub fn new(prompt: Vec<TokenId>, max_tokens: usize) -> Self {
        Request {
            prompt,
            adapter: None,
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
            precision: Precision::Fast,
            logprobs: None,
            prefix_scope: None,
            constraint: None,
        }
    }
}

/// A finished generation.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// The prompt tokens.
    pub prompt_ids: Vec<TokenId>,
    /// Generated tokens (the stop token excluded).
    pub output_ids: Vec<TokenId>,
    /// Generated text (cut before a stop string).
    pub text: String,
    /// Why it ended.
    pub finish: Finish,
    /// Prompt tokens whose states came from the prefix cache instead of a prefill.
    pub cached_tokens: usize,
    /// Why the output constraint failed ([`Finish::Constraint`]).
    pub error: Option<String>,
}

/// What a GGUF file's header says of the model in it ([`Engine::check_header`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelHeader {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Tensors in the file.
    pub tensors: usize,
    /// Where the tensor data starts.
    pub data_offset: u64,
    /// The architecture's hyper-parameters.
    pub config: crate::model::Config,
}

/// A model with its tokenizer and a registry of adapters.
#[derive(Debug)]
pub struct Engine {
    /// The model.
    pub model: Arc<Model>,
    /// Its tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    template: Option<ChatTemplate>,
    adapters: RwLock<HashMap<String, Arc<Adapter>>>,
    prefixes: PrefixCache,
    grammars: OnceLock<std::result::Result<Grammars, String>>,
}

/// The prefix cache's default budget: 256 MiB of key/value state.
pub const DEFAULT_PREFIX_CACHE_BYTES: usize = 256 << 20;

/// Prompt tokens a [`Batch`] step prefills at most by default, over all its prompts together:
/// a long prompt admitted while others decode runs in chunks of this size, so their next tokens
/// come after one chunk's work instead of the whole prompt's.
pub const DEFAULT_PREFILL_CHUNK: usize = 128;

impl Engine {
    /// Loads a GGUF model and its tokenizer.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let model = Model::load(path)?;
        Self::new(model)
    }

    /// Wraps a loaded model.
    pub fn new(model: Model) -> Result<Self> {
        let (tokenizer, template) = Self::tokenizer_for(&model.gguf, &model.config)?;
        Ok(Engine {
            model: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
            template,
            adapters: RwLock::new(HashMap::new()),
            prefixes: PrefixCache::new(DEFAULT_PREFIX_CACHE_BYTES),
            grammars: OnceLock::new(),
        })
    }

    /// Loads a model held in memory (a customer's GGUF, decrypted): the bytes are zeroed when
    /// the last engine or view over them is dropped.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::new(Model::from_gguf(Arc::new(Gguf::from_bytes(bytes)?))?)
    }

    /// Checks a GGUF file from its first bytes and its length, before any tensor data is read:
    /// the header with the reader's hostile-input checks (every count, offset and size; each
    /// tensor inside a file of `file_len` bytes), the architecture's hyper-parameters, every
    /// tensor the model loads with its shape and format ([`Model::check_layout`]), the tokenizer
    /// and its chat template. `prefix` must hold the whole header; a file that passes loads.
    pub fn check_header(prefix: &[u8], file_len: u64) -> Result<ModelHeader> {
        let g = Gguf::header(prefix.to_vec(), file_len)?;
        let config = Model::check_layout(&g)?;
        Self::tokenizer_for(&g, &config)?;
        Ok(ModelHeader { version: g.version, tensors: g.tensors.len(), data_offset: g.data_offset as u64, config })
    }

    fn tokenizer_for(g: &Gguf, config: &crate::model::Config) -> Result<(Tokenizer, Option<ChatTemplate>)> {
        let tokenizer = Tokenizer::from_gguf(g)?;
        if tokenizer.vocab_size() != config.vocab {
            return Err(Error::Metadata(format!(
                "tokenizer has {} tokens, the model {}",
                tokenizer.vocab_size(),
                config.vocab
            )));
        }
        // A file without a template gets its family's turn format where the family has a fixed
        // one (Gemma); otherwise chat is refused at render time ("the model has no chat template").
        let source = tokenizer.chat_template.as_deref().or(config.family.default_chat_template());
        let template = source.map(ChatTemplate::new).transpose()?;
        Ok((tokenizer, template))
    }

    /// Registers (or replaces) an adapter under a name; running generations keep the one they began with.
    pub fn add_adapter(&self, name: impl Into<String>, adapter: Adapter) -> Result<()> {
        if adapter.layers.len() != self.model.config.n_layer {
            return Err(Error::Adapter("adapter was built for another model shape".into()));
        }
        let replaced = self
            .adapters
            .write()
            .map_err(|_| Error::Adapter("adapter registry poisoned".into()))?
            .insert(name.into(), Arc::new(adapter));
        if let Some(old) = &replaced {
            self.prefixes.forget_adapter(old);
        }
        Ok(())
    }

    /// Loads a PEFT adapter directory and registers it.
    pub fn load_adapter(&self, name: impl Into<String>, dir: impl AsRef<Path>) -> Result<()> {
        let a = Adapter::load(dir, &self.model.config)?;
        self.add_adapter(name, a)
    }

    /// Removes an adapter (and the prefixes cached with it); generations already using it
    /// finish with it.
    pub fn remove_adapter(&self, name: &str) -> bool {
        let removed = self.adapters.write().ok().and_then(|mut m| m.remove(name));
        if let Some(a) = &removed {
            self.prefixes.forget_adapter(a);
        }
        removed.is_some()
    }

    /// The cache of prompt prefixes' key/value states shared by this engine's batches.
    pub fn prefix_cache(&self) -> &PrefixCache {
        &self.prefixes
    }

    /// Compiles what a request's output must match, over this model's vocabulary (the grammar
    /// compiler is built on first use). A grammar that does not compile is an [`Error::Request`].
    pub fn constrain(&self, grammar: &Grammar) -> Result<Constraint> {
        let grammars = self.grammars.get_or_init(|| Grammars::new(&self.tokenizer).map_err(|e| e.to_string()));
        match grammars {
            Ok(g) => g.compile(grammar),
            Err(e) => Err(Error::Tokenizer(e.clone())),
        }
    }

    /// Names of registered adapters.
    pub fn adapter_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.adapters.read().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        v.sort();
        v
    }

    fn adapter(&self, name: Option<&str>) -> Result<Option<Arc<Adapter>>> {
        let Some(name) = name else { return Ok(None) };
        let m = self.adapters.read().map_err(|_| Error::Adapter("adapter registry poisoned".into()))?;
        m.get(name).cloned().map(Some).ok_or_else(|| Error::Request(format!("no adapter named {name:?}")))
    }

    /// Renders messages with the model's chat template (generation prompt opened).
    pub fn render_chat(&self, messages: &[Message]) -> Result<String> {
        self.render_messages(messages, true)
    }

    /// Renders messages with the model's chat template, opening the assistant's turn or not.
    pub fn render_messages(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let t = self.template.as_ref().ok_or_else(|| Error::Template("the model has no chat template".into()))?;
        let tk = &self.tokenizer;
        let name = |id: Option<TokenId>| id.and_then(|i| tk.token_text(i)).unwrap_or("").to_owned();
        t.render(messages, add_generation_prompt, &name(tk.bos), &name(tk.eos))
    }

    /// Tokenizes a rendered chat prompt (special tokens recognised, BOS per metadata).
    pub fn chat_tokens(&self, messages: &[Message]) -> Result<Vec<TokenId>> {
        let text = self.render_chat(messages)?;
        Ok(self.tokenizer.encode(&text, true, true))
    }

    /// Last-position logits of a prompt.
    pub fn logits(&self, prompt: &[TokenId], adapter: Option<&str>, precision: Precision) -> Result<Vec<f32>> {
        let a = self.adapter(adapter)?;
        let mut cache = self.model.new_cache();
        let mut lanes = [Lane { cache: &mut cache, tokens: prompt, adapter: a.as_deref(), logits: Logits::Last }];
        let mut out = self.model.forward(&mut lanes, precision)?;
        out.pop().ok_or_else(|| Error::Request("no logits".into()))
    }

    /// Text embeddings from the base model: each text tokenized (no special tokens; BOS per
    /// metadata), cut to `max_tokens`, run without adapters, its final hidden states mean-pooled and
    /// scaled to unit length. Texts run in batches of about 1024 tokens through one forward pass.
    pub fn embed(&self, texts: &[&str], max_tokens: usize) -> Result<Vec<Vec<f32>>> {
        if max_tokens == 0 {
            return Err(Error::Request("max_tokens for an embedding is at least 1".into()));
        }
        let limit = max_tokens.min(self.model.config.n_ctx);
        let ids: Vec<Vec<TokenId>> = texts
            .iter()
            .map(|t| {
                let mut v = self.tokenizer.encode(t, true, false);
                v.truncate(limit);
                if v.is_empty() {
                    // An empty text embeds as the BOS (or first) token alone.
                    v.push(self.tokenizer.bos.unwrap_or(0));
                }
                v
            })
            .collect();
        let mut out = Vec::with_capacity(texts.len());
        let mut start = 0;
        while start < ids.len() {
            let mut end = start + 1;
            let mut tokens = ids[start].len();
            while end < ids.len() && tokens + ids[end].len() <= 1024 {
                tokens += ids[end].len();
                end += 1;
            }
            let mut caches: Vec<KvCache> = (start..end).map(|_| self.model.new_cache()).collect();
            let mut lanes: Vec<Lane<'_>> = caches
                .iter_mut()
                .zip(&ids[start..end])
                .map(|(cache, t)| Lane { cache, tokens: t, adapter: None, logits: Logits::MeanHidden })
                .collect();
            for mut v in self.model.forward(&mut lanes, Precision::Fast)? {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                out.push(v);
            }
            start = end;
        }
        Ok(out)
    }

    /// Generates for one request, calling `on_text` with each new piece of text (return false to stop).
    pub fn generate(&self, req: &Request, on_text: &mut dyn FnMut(TokenId, &str) -> bool) -> Result<Generation> {
        let mut cb = |_: usize, t: TokenId, s: &str| on_text(t, s);
        let mut g = self.run(std::slice::from_ref(req), &mut cb)?;
        g.pop().ok_or_else(|| Error::Request("no result".into()))
    }

    /// Generates for several requests in one batch (each with its own adapter and sampler). The
    /// callback gets the request index, token and new text.
    pub fn generate_batch(
        &self,
        reqs: &[Request],
        on_text: &mut dyn FnMut(usize, TokenId, &str) -> bool,
    ) -> Result<Vec<Generation>> {
        self.run(reqs, on_text)
    }

    /// A running batch that requests join and leave between steps (continuous batching).
    pub fn batch(&self, precision: Precision) -> Batch<'_> {
        Batch { engine: self, precision, seqs: Vec::new(), prefill_chunk: DEFAULT_PREFILL_CHUNK, prefilled: 0 }
    }

    fn run(&self, reqs: &[Request], on_text: &mut dyn FnMut(usize, TokenId, &str) -> bool) -> Result<Vec<Generation>> {
        let precision = reqs.first().map_or(Precision::Fast, |r| r.precision);
        if reqs.iter().any(|r| r.precision != precision) {
            return Err(Error::Request("one batch runs at one precision".into()));
        }
        let mut batch = self.batch(precision);
        for (i, r) in reqs.iter().enumerate() {
            batch.admit(i as u64, r.clone())?;
        }
        let mut done: Vec<Option<Generation>> = vec![None; reqs.len()];
        while !batch.is_empty() {
            let finished = batch.step(&mut |id, ev| on_text(id as usize, ev.token, &ev.text))?;
            for (id, g) in finished {
                done[id as usize] = Some(g);
            }
        }
        done.into_iter().map(|g| g.ok_or_else(|| Error::Request("no result".into()))).collect()
    }
}

/// One generated token, as a [`Batch`] step reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEvent {
    /// The token.
    pub token: TokenId,
    /// New text this token completes (may be empty: an incomplete UTF-8 sequence, or text held
    /// back while a stop string could still be completing).
    pub text: String,
    /// Log-probabilities, when the request asked for them.
    pub logprobs: Option<TokenLogprobs>,
}

/// The model's log-probability of a sampled token and of the most likely alternatives (from the
/// raw logits, before temperature and filtering, as OpenAI reports them).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    /// Log-probability of the sampled token.
    pub logprob: f32,
    /// The most likely tokens with theirs, most likely first.
    pub top: Vec<(TokenId, f32)>,
}

struct Seq {
    id: u64,
    req: Request,
    cache: KvCache,
    adapter: Option<Arc<Adapter>>,
    sampler: Sampler,
    history: Vec<TokenId>,
    out: Vec<TokenId>,
    bytes: Vec<u8>,
    emitted: usize,
    finish: Option<Finish>,
    /// Tokens not yet run: the prompt (less what the prefix cache gave), then the last sampled.
    pending: Vec<TokenId>,
    cached: usize,
    /// Why the output constraint failed.
    error: Option<String>,
    /// Another choice of the same request whose prompt prefill this one waits for; it then
    /// starts from a copy of that choice's key/value states ([`Batch::admit_choices`]).
    follows: Option<u64>,
}

impl Seq {
    /// A sequence for `req` starting from `cache` (the prompt states it already holds).
    fn new(
        id: u64,
        req: Request,
        cache: KvCache,
        adapter: Option<Arc<Adapter>>,
        sampling: SamplingParams,
    ) -> Result<Self> {
        let cached = cache.len();
        Ok(Seq {
            id,
            cache,
            adapter,
            sampler: Sampler::new(sampling)?,
            history: req.prompt.clone(),
            out: Vec::new(),
            bytes: Vec::new(),
            emitted: 0,
            finish: if req.max_tokens == 0 { Some(Finish::Length) } else { None },
            pending: req.prompt[cached..].to_vec(),
            cached,
            error: None,
            follows: None,
            req,
        })
    }

    fn prefilling(&self) -> bool {
        self.cache.len() < self.req.prompt.len()
    }
}

/// Requests generating together: each step runs one forward pass over every active sequence (a
/// chunk of the prompts being prefilled, the last token of the others), each with its own adapter,
/// KV cache and sampler. Requests join with [`Batch::admit`] and leave when they finish or are
/// cancelled. Prompts under a prefix scope start from the engine's prefix cache.
pub struct Batch<'e> {
    engine: &'e Engine,
    precision: Precision,
    seqs: Vec<Seq>,
    prefill_chunk: usize,
    prefilled: u64,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("precision", &self.precision)
            .field("active", &self.seqs.len())
            .field("prefill_chunk", &self.prefill_chunk)
            .finish()
    }
}

/// Most alternatives a request may ask log-probabilities for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

impl Batch<'_> {
    /// Sets how many prompt tokens one step prefills at most, over all prompts (at least 1;
    /// [`DEFAULT_PREFILL_CHUNK`] by default). Decoding requests run every step regardless.
    pub fn set_prefill_chunk(&mut self, tokens: usize) {
        self.prefill_chunk = tokens.max(1);
    }

    /// Adds a request under a caller-chosen id; it starts with the next step. A request that is
    /// invalid (empty or over-long prompt, empty stop string, unknown adapter, bad sampling) is
    /// refused and the batch is unchanged.
    pub fn admit(&mut self, id: u64, req: Request) -> Result<()> {
        self.admit_choices(&[id], req)
    }

    /// Adds one request that wants `ids.len()` independent continuations (OpenAI's `n`), one
    /// per id. The prompt is prefilled once, under the first id; when that prefill ends, every
    /// other id starts from a copy of its key/value states and samples its first token from the
    /// same logits, each with its own seed ([`choice_seed`]: the first id keeps the request's), so
    /// choice `i` generates what the request alone would with seed `choice_seed(seed, i)`. The
    /// choices then run and finish on their own. If the first id ends before its prompt is
    /// prefilled, the others prefill it themselves. Refused as a whole, leaving the batch
    /// unchanged, like [`Batch::admit`], or when an id repeats.
    pub fn admit_choices(&mut self, ids: &[u64], req: Request) -> Result<()> {
        let Some((&lead, rest)) = ids.split_first() else {
            return Err(Error::Request("a request needs at least one choice".into()));
        };
        let adapter = self.check(&req)?;
        for (k, &id) in ids.iter().enumerate() {
            if self.seqs.iter().any(|s| s.id == id) || ids[..k].contains(&id) {
                return Err(Error::Request(format!("request id {id} is already in the batch")));
            }
        }
        let mut followers = Vec::with_capacity(rest.len());
        for (i, &id) in rest.iter().enumerate() {
            let sampling = SamplingParams { seed: choice_seed(req.sampling.seed, i + 1), ..req.sampling.clone() };
            let mut seq = Seq::new(id, req.clone(), self.engine.model.new_cache(), adapter.clone(), sampling)?;
            seq.pending.clear();
            seq.follows = Some(lead);
            followers.push(seq);
        }
        let cache = req
            .prefix_scope
            .as_deref()
            .and_then(|scope| self.engine.prefixes.lookup(scope, adapter.as_ref(), &req.prompt))
            .unwrap_or_else(|| self.engine.model.new_cache());
        let sampling = req.sampling.clone();
        self.seqs.push(Seq::new(lead, req, cache, adapter, sampling)?);
        self.seqs.extend(followers);
        Ok(())
    }

    /// Refuses what no step could run; the request's adapter.
    fn check(&self, req: &Request) -> Result<Option<Arc<Adapter>>> {
        let n_ctx = self.engine.model.config.n_ctx;
        if req.prompt.is_empty() {
            return Err(Error::Request("empty prompt".into()));
        }
        if req.prompt.len() > n_ctx {
            return Err(Error::Request(format!(
                "prompt of {} tokens exceeds the {n_ctx}-token context",
                req.prompt.len()
            )));
        }
        if let Some(&bad) = req.prompt.iter().find(|&&t| t as usize >= self.engine.model.config.vocab) {
            return Err(Error::Request(format!("token id {bad} is outside the vocabulary")));
        }
        if req.stop.iter().any(String::is_empty) {
            return Err(Error::Request("empty stop string".into()));
        }
        if req.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(Error::Request(format!("top_logprobs is at most {MAX_TOP_LOGPROBS}")));
        }
        if req.precision != self.precision {
            return Err(Error::Request("one batch runs at one precision".into()));
        }
        let adapter = self.engine.adapter(req.adapter.as_deref())?;
        req.sampling.validate_for(self.engine.model.config.vocab)?;
        Ok(adapter)
    }

    /// Prompt tokens this batch has run through the model (what the prefix cache and shared
    /// choices saved is not counted).
    pub fn prefilled_tokens(&self) -> u64 {
        self.prefilled
    }

    /// Requests in the batch.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Whether no request is in the batch.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Ends a request at the next step (its generation is reported as cancelled).
    pub fn cancel(&mut self, id: u64) {
        if let Some(s) = self.seqs.iter_mut().find(|s| s.id == id) {
            s.finish.get_or_insert(Finish::Cancelled);
        }
    }

    /// Runs one forward pass over every active request and samples one token for each. `on_token`
    /// gets each request's new token (return false to cancel that request). Returns the requests
    /// that finished, which leave the batch. On an error the batch is emptied (its caches could be
    /// half-written); the caller fails those requests.
    pub fn step(&mut self, on_token: &mut dyn FnMut(u64, TokenEvent) -> bool) -> Result<Vec<(u64, Generation)>> {
        let result = self.forward_and_sample(on_token);
        if result.is_err() {
            self.seqs.clear();
            return result.map(|_| Vec::new());
        }
        let mut finished = Vec::new();
        let mut i = 0;
        while i < self.seqs.len() {
            if let Some(finish) = self.seqs[i].finish {
                let s = self.seqs.swap_remove(i);
                finished.push((
                    s.id,
                    Generation {
                        prompt_ids: s.req.prompt,
                        output_ids: s.out,
                        text: String::from_utf8_lossy(&s.bytes).into_owned(),
                        finish,
                        cached_tokens: s.cached,
                        error: s.error,
                    },
                ));
            } else {
                i += 1;
            }
        }
        // A choice whose first choice ended before its prompt was prefilled prefills it itself.
        for i in 0..self.seqs.len() {
            if let Some(lead) = self.seqs[i].follows
                && !self.seqs.iter().any(|s| s.id == lead)
            {
                let s = &mut self.seqs[i];
                s.follows = None;
                s.pending = s.req.prompt.clone();
            }
        }
        finished.sort_by_key(|(id, _)| *id);
        Ok(finished)
    }

    fn forward_and_sample(&mut self, on_token: &mut dyn FnMut(u64, TokenEvent) -> bool) -> Result<()> {
        let engine = self.engine;
        // Every decoding request runs; prompts take chunks from one budget, first admitted first.
        let mut budget = self.prefill_chunk;
        let mut taken = vec![0usize; self.seqs.len()];
        for (s, t) in self.seqs.iter().zip(&mut taken) {
            if s.finish.is_some() {
                continue;
            }
            *t = if s.prefilling() { s.pending.len().min(budget) } else { s.pending.len() };
            if s.prefilling() {
                budget -= *t;
            }
        }
        let logits = {
            let mut lanes: Vec<Lane<'_>> = self
                .seqs
                .iter_mut()
                .zip(&taken)
                .filter(|(_, t)| **t > 0)
                .map(|(s, &t)| Lane {
                    logits: if t == s.pending.len() { Logits::Last } else { Logits::None },
                    cache: &mut s.cache,
                    tokens: &s.pending[..t],
                    adapter: s.adapter.as_deref(),
                })
                .collect();
            if lanes.is_empty() {
                return Ok(());
            }
            engine.model.forward(&mut lanes, self.precision)?
        };
        let leads: Vec<u64> = self.seqs.iter().filter_map(|s| s.follows).collect();
        let mut forks = Vec::new();
        for ((s, &t), lg) in self.seqs.iter_mut().zip(&taken).filter(|(_, t)| **t > 0).zip(logits) {
            if s.history.len() == s.req.prompt.len() {
                // Nothing sampled yet: these were prompt tokens.
                self.prefilled += t as u64;
            }
            s.pending.drain(..t);
            if !s.pending.is_empty() {
                continue;
            }
            if s.history.len() == s.req.prompt.len() {
                if let Some(scope) = s.req.prefix_scope.as_deref() {
                    engine.prefixes.store(scope, s.adapter.as_ref(), &s.req.prompt, &s.cache);
                }
                if leads.contains(&s.id) {
                    forks.push((s.id, s.cache.clone(), s.cached, lg.clone()));
                }
            }
            accept(engine, s, &lg, on_token);
        }
        // The other choices of a request whose prompt was just prefilled start from its states.
        for (lead, cache, cached, lg) in forks {
            for s in self.seqs.iter_mut().filter(|s| s.follows == Some(lead)) {
                s.follows = None;
                s.cache = cache.clone();
                s.cached = cached;
                if s.finish.is_none() {
                    accept(engine, s, &lg, on_token);
                }
            }
        }
        Ok(())
    }
}

/// The seed of a request's choice `index` (OpenAI's `n`): the request's own for the first, a
/// distinct one derived from it for each other.
pub fn choice_seed(seed: u64, index: usize) -> u64 {
    seed.wrapping_add((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Samples a sequence's next token from its last-position logits, streams its text and decides
/// whether it ends (a stop token or string, the callback, `max_tokens`, the context).
fn accept(engine: &Engine, s: &mut Seq, raw: &[f32], on_token: &mut dyn FnMut(u64, TokenEvent) -> bool) {
    let mut masked = Vec::new();
    let lg = match s.req.constraint.as_mut() {
        None => raw,
        Some(c) => {
            masked.extend_from_slice(raw);
            if let Err(e) = c.mask(&mut masked) {
                s.error = Some(e.to_string());
                s.finish = Some(Finish::Constraint);
                return;
            }
            &masked[..]
        }
    };
    let tok = s.sampler.sample(lg, &s.history);
    if engine.tokenizer.is_stop(tok) {
        s.finish = Some(Finish::Stop);
        return;
    }
    if let Some(c) = s.req.constraint.as_mut()
        && let Err(e) = c.advance(tok)
    {
        s.error = Some(e.to_string());
        s.finish = Some(Finish::Constraint);
        return;
    }
    let logprobs = s.req.logprobs.map(|n| token_logprobs(raw, tok, n));
    s.out.push(tok);
    s.history.push(tok);
    s.pending = vec![tok];
    s.bytes.extend(engine.tokenizer.token_bytes(tok, false));
    // Stop strings are found in bytes; text streams up to any incomplete UTF-8 sequence at the
    // end, held back while a stop string could still be completing.
    if let Some(cut) = s.req.stop.iter().filter_map(|st| find_bytes(&s.bytes, st.as_bytes())).min() {
        s.bytes.truncate(cut);
        let text = String::from_utf8_lossy(&s.bytes[s.emitted.min(cut)..cut]).into_owned();
        s.emitted = cut;
        s.finish = Some(Finish::StopString);
        on_token(s.id, TokenEvent { token: tok, text, logprobs });
        return;
    }
    let hold = s.req.stop.iter().map(|st| partial_suffix(&s.bytes, st.as_bytes())).max().unwrap_or(0);
    let safe = complete_len(&s.bytes[..s.bytes.len() - hold]);
    let text = if safe > s.emitted {
        let piece = String::from_utf8_lossy(&s.bytes[s.emitted..safe]).into_owned();
        s.emitted = safe;
        piece
    } else {
        String::new()
    };
    if !on_token(s.id, TokenEvent { token: tok, text, logprobs }) {
        s.finish = Some(Finish::Cancelled);
        return;
    }
    if s.req.constraint.as_ref().is_some_and(Constraint::is_complete) {
        // The grammar is complete and allows nothing but a stop token.
        s.finish = Some(Finish::Stop);
    } else if s.out.len() >= s.req.max_tokens {
        s.finish = Some(Finish::Length);
    } else if s.history.len() >= engine.model.config.n_ctx {
        s.finish = Some(Finish::Context);
    }
}

/// Log-softmax of `logits` at `tok`, and the `n` most likely tokens with theirs.
fn token_logprobs(logits: &[f32], tok: TokenId, n: usize) -> TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32;
    let logprob = logits.get(tok as usize).map_or(f32::NEG_INFINITY, |&l| l - lse);
    let mut top: Vec<(TokenId, f32)> = Vec::with_capacity(n + 1);
    if n > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if top.len() < n || l > top[top.len() - 1].1 {
                let at = top.partition_point(|&(_, v)| v >= l);
                top.insert(at, (i as TokenId, l));
                top.truncate(n);
            }
        }
    }
    for t in &mut top {
        t.1 -= lse;
    }
    TokenLogprobs { logprob, top }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn partial_suffix(text: &[u8], stop: &[u8]) -> usize {
    (1..stop.len().min(text.len() + 1)).rev().find(|&k| text.ends_with(&stop[..k])).unwrap_or(0)
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `b.len()` less an incomplete UTF-8 sequence at its end (which the next token may complete).
fn complete_len(b: &[u8]) -> usize {
    for k in 1..=b.len().min(3) {
        let lead = b[b.len() - k];
        if lead & 0xC0 == 0x80 {
            continue;
        }
        let need = match lead {
            0xF0..=0xF7 => 4,
            0xE0..=0xEF => 3,
            0xC0..=0xDF => 2,
            _ => 1,
        };
        return if need > k { b.len() - k } else { b.len() };
    }
    b.len()
}
