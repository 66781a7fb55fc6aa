//! # soramai
//!
//! The Soramai SDK: a private, multi-tenant fine-tune-and-serve platform as a library. This crate is
//! the facade users `cargo add`; today it exposes the security core (tenants, keys, encrypted
//! datasets, jobs, audit, metering), and it grows the `Platform` that ties in the inference engine
//! (`soramai-kernels`) and retrieval (`soramai-rag`) as those land.
//!
//! ```
//! # fn main() -> soramai::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let core = soramai::Core::open_embedded(dir.path())?;
//! let acme = soramai::TenantId::new("acme")?;
//! core.create_tenant(&acme, soramai::Tier::Basic)?;
//! let key = core.create_api_key(&soramai::Principal::operator(&acme), soramai::KeyOptions::new("ci", &[soramai::Scope::Inference]))?;
//! assert_eq!(core.authenticate(key.secret())?.tenant(), &acme);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod finetune;
pub mod grounded;
pub mod platform;

pub use grounded::{GroundedAnswer, GroundedOptions, ModelEmbedder, ModelTokens};
pub use platform::{
    ChatMessage, Completion, Embeddings, FinishReason, GenerationOptions, GenerationStream, ModelInfo, Permit,
    Platform, PlatformOptions, Prompt, Retrieval, StreamEvent, TokenLogprob, TopLogprob, Usage,
};

pub use soramai_core::{
    ApiKeyId, ApiKeyInfo, AuditRecord, AuditReport, BaseModel, Config, Core, DatasetId, DatasetInfo, Error,
    FineTuneSpec, FineTunedModel, Hyperparameters, IssuedKey, Job, JobEvent, JobId, JobSpec, JobState, KeyOptions,
    KeyProvider, LocalRootKey, ModelId, ObjectPath, PoolId, Principal, Receipt, Result, RunnerCommand, Scope,
    SecretName, Tenant, TenantId, Tier, UsageEvent, UsageKind, UsageStatus, Worker,
};

/// The security core's full API (storage, crypto, audit, metering, retention).
pub use soramai_core as core;
/// The compute engine: GGUF, kernels, model, LoRA, tokenizer, sampling.
pub use soramai_kernels as kernels;
/// Retrieval: corpora, documents and search over encrypted tantivy indexes.
pub use soramai_rag as rag;

/// An error from any layer the SDK ties together.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    /// The security core: tenants, keys, scopes, tiers, storage.
    #[error(transparent)]
    Core(#[from] soramai_core::Error),
    /// Retrieval.
    #[error(transparent)]
    Rag(#[from] soramai_rag::Error),
    /// The inference engine.
    #[error(transparent)]
    Inference(#[from] soramai_kernels::Error),
    /// A request the SDK itself refuses.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The prompt does not fit the model's context.
    #[error("the prompt has {tokens} tokens; the model's context holds {context}")]
    ContextLength {
        /// Prompt tokens.
        tokens: usize,
        /// The context length.
        context: usize,
    },
    /// A tier limit (requests per minute, concurrent requests) was reached.
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// The engine failed while running a request.
    #[error("inference failed: {0}")]
    Engine(String),
}
