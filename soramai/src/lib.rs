//! # soramai
//!
//! The Soramai SDK: a private, multi-tenant fine-tune-and-serve platform as a library, and the one
//! door into it. A [`Platform`] ties the security core, the inference engine and retrieval together;
//! callers act through:
//!
//! - [`Session`]: one caller (an API key, or a signed-in member's role): models, chat and
//!   completions, responses (stored and chained: [`responses`]), embeddings, datasets,
//!   fine-tuning jobs, corpora and ingestions, API keys, members and single sign-on, tenants and
//!   credits, break-glass grants, audit and usage. Every scope, tier and tenant check is made
//!   inside.
//! - [`Accounts`]: people before they hold a session (sign-up and sign-in, TOTP, passkeys, single
//!   sign-on, invitations, password resets).
//! - [`local`]: the compute engine on the caller's own files, outside any tenant.
//! - [`backup`]: the operator's snapshots and restores.
//!
//! Errors map once to HTTP statuses and binding exception names through [`ErrorKind`]; every
//! embedder's job runner is [`job_runner_main`]. The layers under the facade (`core`, `kernels`,
//! `rag`, `Platform::core`) are behind the `internals` feature, for tests and fuzzing only.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let dir = tempfile::tempdir()?;
//! let platform = Arc::new(soramai::Platform::open(dir.path())?);
//! let operator = platform.bootstrap_operator()?.ok_or("a first operator key")?;
//! let admin = platform.session(operator.secret())?;
//! admin.create_tenant("acme", soramai::Tier::Basic)?;
//! let key = admin.create_api_key(soramai::KeyRequest {
//!     name: "ci".into(),
//!     scopes: vec![soramai::Scope::Inference],
//!     tenant: Some("acme".into()),
//!     expires_in_seconds: None,
//! })?;
//! let acme = platform.session(key.secret())?;
//! assert_eq!(acme.principal().tenant().as_str(), "acme");
//! assert!(acme.api_keys().is_err(), "an inference key lists no keys");
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod access;
pub mod accounts;
pub mod backup;
pub mod finetune;
pub mod grounded;
pub mod ingest;
pub mod local;
pub mod models;
mod people;
pub mod platform;
pub mod responses;
pub mod session;

pub use access::Needs;
pub use accounts::Accounts;
pub use finetune::HyperparametersRequest;
pub use grounded::{GroundedAnswer, GroundedOptions, ModelEmbedder, ModelTokens};
pub use ingest::job_runner_main;
pub use platform::{
    ChatMessage, Choice, Completion, DEFAULT_MODEL_ID, Embeddings, FinishReason, GenerationOptions, GenerationStream,
    JsonSchemaFormat, MAX_CHOICES, ModelInfo, OPERATOR_TENANT, OpenOptions, Permit, Platform, PlatformOptions, Prompt,
    PromptTokensDetails, ResponseFormat, Retrieval, StreamEvent, TokenLogprob, TopLogprob, Usage,
};
pub use platform::{
    FunctionCall, FunctionDef, MAX_TOOLS, NamedFunction, NamedTool, Tool, ToolCall, ToolChoice, ToolKind, ToolMode,
};
pub use responses::{Response, ResponseEvent, ResponseRequest, ResponseStream};
pub use session::{
    DocumentInput, FineTuneRequest, GrantInput, GroundedChat, KeyRequest, NewGrant, NewKey, SearchInput, Session,
    UsageReport,
};

pub use soramai_core::{
    AccessGrant, ApiKeyId, ApiKeyInfo, AuditRecord, AuditReport, AuditVerification, BaseModel, CloseOptions, Closure,
    CustomModel, DatasetId, DatasetInfo, Error, FineTuneSpec, FineTunedModel, GrantId, GrantRequest, GrantStatus,
    Hyperparameters, IssuedGrant, IssuedKey, Job, JobEvent, JobId, JobSpec, JobState, KeyOptions, KeyProvider,
    LocalRootKey, ModelId, ObjectPath, PoolId, Principal, Receipt, Result, RunnerCommand, Scope, SecretName, Tenant,
    TenantId, Tier, UsageEvent, UsageKind, UsageStatus,
};

pub use soramai_core::crypto::envelope::MAGIC as ENVELOPE_MAGIC;
pub use soramai_core::error::json_error_message;
pub use soramai_core::{DatasetStats, UsageSummary};
pub use soramai_rag::{CorpusId, Document, Error as RagError, Hit, IngestReport, SearchRequest};

/// The security core's full API, for tests and fuzzing only (feature `internals`): an embedder
/// goes through [`Session`] and [`Accounts`].
#[cfg(feature = "internals")]
#[doc(hidden)]
pub use soramai_core as core;
/// The security core's handle and its job worker, for tests and tools only (feature `internals`).
#[cfg(feature = "internals")]
#[doc(hidden)]
pub use soramai_core::{Config, Core, Database, Worker};
/// The compute engine, for tests and benchmarks only (feature `internals`).
#[cfg(feature = "internals")]
#[doc(hidden)]
pub use soramai_kernels as kernels;
/// Retrieval, for tests and benchmarks only (feature `internals`).
#[cfg(feature = "internals")]
#[doc(hidden)]
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
    /// A request parameter the SDK refuses, named as the caller sent it (`tools`,
    /// `response_format`, `messages`, …) so an API can point at it.
    #[error("invalid argument: {message}")]
    InvalidParameter {
        /// The parameter.
        param: &'static str,
        /// Why.
        message: String,
    },
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
    /// The request parameter a refusal names, when it names one.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            PlatformError::InvalidParameter { param, .. } => Some(param),
            _ => None,
        }
    }

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
            PlatformError::InvalidArgument(_)
            | PlatformError::InvalidParameter { .. }
            | PlatformError::Inference(soramai_kernels::Error::Request(_)) => ErrorKind::InvalidRequest,
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
