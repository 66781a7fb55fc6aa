//! Retrieval on the serving model: its tokenizer measures RAG chunks, its mean-pooled hidden
//! states embed chunks and queries for hybrid search, and [`answer`] runs a whole grounded chat —
//! retrieve, assemble a prompt within the model's context, generate, resolve citations.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use soramai_core::Principal;
use soramai_kernels::tokenizer::Tokenizer;
use soramai_kernels::tokenizer::template::Message;
use soramai_kernels::{Engine, Finish, Request};
use soramai_rag::{CorpusId, Embedder, GroundedPrompt, Rag, SearchRequest, Source, TokenCounter};

use crate::PlatformError;

/// Counts tokens with the serving model's tokenizer (no special tokens, no BOS): what RAG chunk
/// windows and prompt budgets are measured in.
#[derive(Debug, Clone)]
pub struct ModelTokens(pub Arc<Tokenizer>);

impl TokenCounter for ModelTokens {
    fn count(&self, text: &str) -> usize {
        self.0.encode(text, false, false).len()
    }
}

/// Embeddings from the base model: final hidden states mean-pooled over the text's tokens (at most
/// `max_tokens`), unit length. The id names the model by a digest of its shape and weights, so a
/// corpus embedded under one model is never compared with vectors of another.
#[derive(Debug, Clone)]
pub struct ModelEmbedder {
    engine: Arc<Engine>,
    id: String,
    max_tokens: usize,
}

impl ModelEmbedder {
    /// Embeds with `engine`'s base model, texts cut to 256 tokens.
    pub fn new(engine: Arc<Engine>) -> Self {
        let m = &engine.model;
        let mut h = Sha256::new();
        h.update(format!("{:?}", m.config).as_bytes());
        for v in &m.output_norm {
            h.update(v.to_le_bytes());
        }
        let emb = m.tok_embd.bytes();
        h.update(&emb[..emb.len().min(1 << 16)]);
        let digest = h.finalize();
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let id = format!("mean-hidden/{}/{hex}", m.config.arch);
        Self { engine, id, max_tokens: 256 }
    }

    /// The same embedder cutting texts at `max_tokens` tokens.
    pub fn with_max_tokens(mut self, max_tokens: usize) -> Self {
        self.max_tokens = max_tokens.max(1);
        self
    }
}

impl Embedder for ModelEmbedder {
    fn id(&self) -> &str {
        &self.id
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.engine.embed(texts, self.max_tokens)?)
    }
}

/// How a grounded answer is produced.
#[derive(Debug, Clone)]
pub struct GroundedOptions {
    /// Chunks retrieved before the budget cut.
    pub top_k: usize,
    /// Rerank by embedding similarity (the `Rag` must have an embedder).
    pub hybrid: bool,
    /// Most tokens generated.
    pub max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    pub temperature: f32,
    /// Sampling seed.
    pub seed: u64,
    /// The adapter to answer with, if any.
    pub adapter: Option<String>,
}

impl Default for GroundedOptions {
    fn default() -> Self {
        Self { top_k: 5, hybrid: false, max_tokens: 256, temperature: 0.0, seed: 0, adapter: None }
    }
}

/// An answer grounded in a corpus.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroundedAnswer {
    /// The model's answer.
    pub answer: String,
    /// The chunk ids the answer cites (`[n]` markers resolved), in order of first citation.
    pub citations: Vec<String>,
    /// The sources the prompt carried, in prompt order.
    pub sources: Vec<Source>,
    /// Prompt tokens (chat template included).
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Whether generation ended at the token limit rather than at the end of the answer.
    pub truncated: bool,
}

/// Tokens left for retrieved sources in a grounded prompt: the model's context less the answer's
/// `max_tokens` and what the chat template adds around a system and a user message.
pub(crate) fn source_budget(engine: &Engine, max_tokens: usize) -> Result<usize, PlatformError> {
    let n_ctx = engine.model.config.n_ctx;
    let frame = engine.chat_tokens(&[Message::new("system", ""), Message::new("user", "")])?.len();
    let budget = n_ctx.saturating_sub(max_tokens + frame);
    if budget == 0 {
        return Err(PlatformError::InvalidArgument(format!(
            "max_tokens {max_tokens} leaves no room for sources in the {n_ctx}-token context"
        )));
    }
    Ok(budget)
}

/// Retrieves from `corpus` for `question`, builds a prompt that leaves room for `max_tokens` of
/// answer inside the model's context, generates, and resolves the answer's citations. Access
/// rules are `Rag`'s: the principal needs the `rag` scope, a tier with RAG, and its own corpus.
pub fn answer(
    rag: &Rag,
    engine: &Engine,
    principal: &Principal,
    corpus: &CorpusId,
    question: &str,
    options: &GroundedOptions,
) -> Result<GroundedAnswer, PlatformError> {
    let budget = source_budget(engine, options.max_tokens)?;
    let mut request = SearchRequest::new(question, options.top_k);
    request.hybrid = options.hybrid;
    let hits = rag.search(principal, corpus, &request)?;
    let prompt: GroundedPrompt =
        soramai_rag::grounding::assemble(question, &hits, budget, &ModelTokens(engine.tokenizer.clone()));
    let ids = engine.chat_tokens(&[Message::new("system", &prompt.system), Message::new("user", &prompt.user)])?;
    let mut req = Request::new(ids, options.max_tokens);
    req.adapter = options.adapter.clone();
    req.sampling.temperature = options.temperature;
    req.sampling.seed = options.seed;
    let g = engine.generate(&req, &mut |_, _| true)?;
    Ok(GroundedAnswer {
        citations: prompt.citations(&g.text),
        sources: prompt.sources,
        prompt_tokens: g.prompt_ids.len(),
        completion_tokens: g.output_ids.len(),
        truncated: g.finish == Finish::Length,
        answer: g.text,
    })
}
