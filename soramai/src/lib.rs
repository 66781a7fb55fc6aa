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

pub mod access;
pub mod finetune;
pub mod grounded;
pub mod ingest;
pub mod models;
pub mod platform;
pub mod session;

pub use access::Needs;
pub use grounded::{GroundedAnswer, GroundedOptions, ModelEmbedder, ModelTokens};
pub use ingest::job_runner_main;
pub use platform::{
    ChatMessage, Completion, DEFAULT_MODEL_ID, Embeddings, FinishReason, GenerationOptions, GenerationStream,
    ModelInfo, OPERATOR_TENANT, OpenOptions, Permit, Platform, PlatformOptions, Prompt, PromptTokensDetails, Retrieval,
    StreamEvent, TokenLogprob, TopLogprob, Usage,
};
pub use session::{
    DocumentInput, FineTuneRequest, GrantInput, GroundedChat, KeyRequest, NewGrant, NewKey, SearchInput, Session,
    UsageReport,
};

pub use soramai_core::{
    AccessGrant, ApiKeyId, ApiKeyInfo, AuditRecord, AuditReport, AuditVerification, BaseModel, CloseOptions, Closure,
    Config, Core, CustomModel, Database, DatasetId, DatasetInfo, Error, FineTuneSpec, FineTunedModel, GrantId,
    GrantRequest, GrantStatus, Hyperparameters, IssuedGrant, IssuedKey, Job, JobEvent, JobId, JobSpec, JobState,
    KeyOptions, KeyProvider, LocalRootKey, ModelId, ObjectPath, PoolId, Principal, Receipt, Result, RunnerCommand,
    Scope, SecretName, Tenant, TenantId, Tier, UsageEvent, UsageKind, UsageStatus, Worker,
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

impl From<soramai_core::names::UnknownName> for PlatformError {
    /// A tier, scope or state name outside its set: the core's invalid argument.
    fn from(e: soramai_core::names::UnknownName) -> Self {
        PlatformError::Core(e.into())
    }
}

/// What kind of failure a [`PlatformError`] is, for callers that answer it (an HTTP status, an
/// exception class): every layer's errors folded into the handful a client acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No key, or a key that is unknown, revoked or expired.
    Authentication,
    /// The key lacks the scope, the tier lacks the feature, or the tenant is locked.
    PermissionDenied,
    /// No such resource for this caller (another tenant's resources are not found either).
    NotFound,
    /// The resource exists already, or is in a state that refuses the request.
    Conflict,
    /// A malformed or out-of-range argument.
    InvalidRequest,
    /// Over a size limit.
    TooLarge,
    /// The prompt does not fit the model's context.
    ContextLength,
    /// The tenant's credits do not cover the request.
    InsufficientCredits,
    /// A tier limit (requests per minute, concurrent requests).
    RateLimited,
    /// The work was stopped before it finished (the server is shutting down, or the caller went
    /// away); nothing was committed. Try again.
    Unavailable,
    /// Stored data failed its integrity check (a tampered or corrupted object, a broken audit
    /// chain). Not the caller's fault; the failure is logged and recorded in the tenant's audit log.
    Integrity,
    /// Anything else: storage, the engine. Not the caller's fault.
    Internal,
}

impl ErrorKind {
    /// The HTTP status this kind is answered with, by the API and the dashboard alike. Insufficient
    /// credits is 429 with the code `insufficient_quota`, as OpenAI answers it (clients already
    /// handle that pair); an integrity failure is 500 with the code `integrity_error`.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::Authentication => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::InvalidRequest | ErrorKind::ContextLength => 400,
            ErrorKind::TooLarge => 413,
            ErrorKind::InsufficientCredits | ErrorKind::RateLimited => 429,
            ErrorKind::Unavailable => 503,
            ErrorKind::Integrity | ErrorKind::Internal => 500,
        }
    }

    /// The exception class the bindings raise for this kind (Python and Node alike).
    pub fn exception_name(self) -> &'static str {
        match self {
            ErrorKind::Authentication => "AuthenticationError",
            ErrorKind::PermissionDenied => "PermissionDeniedError",
            ErrorKind::NotFound => "NotFoundError",
            ErrorKind::Conflict => "ConflictError",
            ErrorKind::InvalidRequest => "InvalidRequestError",
            ErrorKind::TooLarge => "TooLargeError",
            ErrorKind::ContextLength => "ContextLengthError",
            ErrorKind::InsufficientCredits => "InsufficientCreditsError",
            ErrorKind::RateLimited => "RateLimitError",
            ErrorKind::Unavailable => "UnavailableError",
            ErrorKind::Integrity => "IntegrityError",
            ErrorKind::Internal => "InternalError",
        }
    }
}

impl PlatformError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        use soramai_core::Error as C;
        match self {
            PlatformError::Core(c) | PlatformError::Rag(soramai_rag::Error::Core(c)) => match c {
                C::Unauthenticated | C::SecondFactorRequired => ErrorKind::Authentication,
                C::Locked { .. } | C::Busy { .. } => ErrorKind::RateLimited,
                C::MissingScope(_)
                | C::NotAllowed { .. }
                | C::TenantLocked
                | C::OperatorAccess(_)
                | C::NotAllowedForSession => ErrorKind::PermissionDenied,
                C::NotFound { .. } => ErrorKind::NotFound,
                C::AlreadyExists { .. } | C::InvalidJobState { .. } => ErrorKind::Conflict,
                C::InvalidArgument(_) | C::InvalidDataset { .. } => ErrorKind::InvalidRequest,
                C::TooLarge { .. } => ErrorKind::TooLarge,
                C::InsufficientCredits { .. } => ErrorKind::InsufficientCredits,
                C::Integrity | C::AuditChainBroken { .. } | C::IntegrityFailures(_) => ErrorKind::Integrity,
                _ => ErrorKind::Internal,
            },
            PlatformError::Rag(r) => match r {
                soramai_rag::Error::CorpusNotFound => ErrorKind::NotFound,
                soramai_rag::Error::CorpusExists => ErrorKind::Conflict,
                soramai_rag::Error::InvalidArgument(_) => ErrorKind::InvalidRequest,
                soramai_rag::Error::TooLarge { .. } | soramai_rag::Error::TooManyChunks { .. } => ErrorKind::TooLarge,
                soramai_rag::Error::Busy { .. } => ErrorKind::RateLimited,
                soramai_rag::Error::Cancelled => ErrorKind::Unavailable,
                soramai_rag::Error::Integrity => ErrorKind::Integrity,
                _ => ErrorKind::Internal,
            },
            PlatformError::InvalidArgument(_) | PlatformError::Inference(soramai_kernels::Error::Request(_)) => {
                ErrorKind::InvalidRequest
            }
            PlatformError::ContextLength { .. } => ErrorKind::ContextLength,
            PlatformError::RateLimited(_) => ErrorKind::RateLimited,
            _ => ErrorKind::Internal,
        }
    }

    /// A stable machine-readable code in OpenAI's style: `invalid_api_key`, `permission_denied`,
    /// `<kind>_not_found`, `already_exists`, `invalid_state`, `invalid_request`, `too_large`,
    /// `context_length_exceeded`, `insufficient_quota`, `rate_limit_exceeded`, `unavailable`, `integrity_error`,
    /// `internal_error`.
    pub fn code(&self) -> String {
        use soramai_core::Error as C;
        match (self.kind(), self) {
            (ErrorKind::NotFound, PlatformError::Core(C::NotFound { kind }))
            | (ErrorKind::NotFound, PlatformError::Rag(soramai_rag::Error::Core(C::NotFound { kind }))) => {
                format!("{}_not_found", kind.replace(' ', "_"))
            }
            (ErrorKind::NotFound, _) => "corpus_not_found".into(),
            (ErrorKind::Conflict, PlatformError::Core(C::InvalidJobState { .. })) => "invalid_state".into(),
            (kind, _) => match kind {
                ErrorKind::Authentication => "invalid_api_key",
                ErrorKind::PermissionDenied => "permission_denied",
                ErrorKind::Conflict => "already_exists",
                ErrorKind::InvalidRequest => "invalid_request",
                ErrorKind::TooLarge => "too_large",
                ErrorKind::ContextLength => "context_length_exceeded",
                ErrorKind::InsufficientCredits => "insufficient_quota",
                ErrorKind::RateLimited => "rate_limit_exceeded",
                ErrorKind::Integrity => "integrity_error",
                ErrorKind::Unavailable => "unavailable",
                ErrorKind::NotFound | ErrorKind::Internal => "internal_error",
            }
            .into(),
        }
    }
}
