//! The crate's one error type.

use crate::crypto::opaque::CryptoError;

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `soramai-core`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument was malformed (an id, a path, a size, an option).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The named thing does not exist, or belongs to another tenant (the two are not told apart).
    #[error("{kind} not found")]
    NotFound {
        /// What was looked for: "tenant", "dataset", "job", "api key", "secret", "object".
        kind: &'static str,
    },
    /// A thing with this id already exists.
    #[error("{kind} already exists")]
    AlreadyExists {
        /// What already exists.
        kind: &'static str,
    },
    /// The API key is malformed, unknown, wrong, revoked or expired (deliberately not told apart).
    #[error("invalid API key")]
    Unauthenticated,
    /// The password was right; the account also needs its TOTP code.
    #[error("a TOTP code is required")]
    SecondFactorRequired,
    /// A session a tenant's single sign-on opened reaches that tenant only, not the account's
    /// own settings: sign in with a password or passkey for those.
    #[error("this session is confined to one tenant; sign in with your password or passkey")]
    NotAllowedForSession,
    /// Too many failed sign-ins for this email: it is locked for a while.
    #[error("too many failed sign-ins; try again in {retry_after_seconds} s")]
    Locked {
        /// Seconds until the lock lifts.
        retry_after_seconds: u64,
    },
    /// The API key is valid but lacks a scope the operation needs.
    #[error("the API key lacks the `{0}` scope")]
    MissingScope(crate::auth::scope::Scope),
    /// The tenant's tier does not allow the operation.
    #[error("not available on the {tier} tier: {what}")]
    NotAllowed {
        /// The tenant's tier.
        tier: crate::tier::Tier,
        /// What was refused.
        what: &'static str,
    },
    /// The operator may not do this to a tenant's data without the tenant's consent: a later key
    /// for a tenant that has one, any read without an access grant, a grant on a tenant whose keys
    /// the customer holds, or what a break-glass grant's key may never do (mint keys, approve).
    #[error("operator access refused: {0}")]
    OperatorAccess(&'static str),
    /// The tenant's keys are customer-held and the customer key has not been supplied.
    #[error("the tenant's customer-held key is not loaded")]
    TenantLocked,
    /// Stored data failed authentication or decryption (tampered, truncated, moved, or under a
    /// destroyed key). Deliberately opaque.
    #[error("integrity check failed")]
    Integrity,
    /// The audit log's hash chain is broken at this record (edited, dropped or reordered records).
    #[error("audit log integrity check failed at record {seq}")]
    AuditChainBroken {
        /// The first record (1-based sequence number) that does not verify.
        seq: u64,
    },
    /// A check over stored data (a backup, a restore, a verification) found these objects or
    /// audit chains failing their integrity check; each was also logged and audited.
    #[error("integrity check failed: {0}")]
    IntegrityFailures(Box<crate::integrity::report::IntegrityReport>),
    /// A dataset line is invalid.
    #[error("invalid dataset, line {line}: {reason}")]
    InvalidDataset {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// An upload or value exceeds a size limit.
    #[error("too large: {what} exceeds {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The limit in bytes.
        limit: u64,
    },
    /// The tenant's credit balance cannot cover a charge.
    #[error("insufficient credits: balance {balance}, needed {needed}")]
    InsufficientCredits {
        /// Current balance.
        balance: i64,
        /// Amount asked for.
        needed: i64,
    },
    /// The tenant's tier already runs as many of these at once as it may.
    #[error("at most {limit} {what} at once on this tier; try again when one ends")]
    Busy {
        /// What is bounded (`ingestions`).
        what: &'static str,
        /// The tier's bound.
        limit: u32,
    },
    /// A job state change that the state machine does not allow.
    #[error("job is {state}; cannot {action}")]
    InvalidJobState {
        /// The job's current state.
        state: crate::jobs::state::JobState,
        /// What was attempted.
        action: &'static str,
    },
    /// A worker's lease on a job was lost (expired and re-claimed, or cancelled).
    #[error("job lease lost")]
    LeaseLost,
    /// The job runner process failed.
    #[error("job runner: {0}")]
    Runner(String),
    /// A key provider could not supply or use the root key.
    #[error("key provider: {0}")]
    KeyProvider(String),
    /// The metadata database failed.
    #[error("metadata store: {0}")]
    Database(#[from] crate::store::DbError),
    /// An I/O failure in the blob store or a file.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl From<CryptoError> for Error {
    fn from(_: CryptoError) -> Self {
        Error::Integrity
    }
}

impl From<serde_json::Error> for Error {
    // serde's own message can quote the input (an unknown variant, a string of the wrong
    // type), and input may be customer content: only the kind and position are kept.
    fn from(e: serde_json::Error) -> Self {
        Error::InvalidArgument(json_error_message(&e))
    }
}

/// A description of a JSON error that echoes none of the input: what kind of error, and where.
pub fn json_error_message(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax => "not valid JSON",
        Category::Eof => "JSON that ends early",
        Category::Data => "a field that is missing, unknown, or of the wrong type or value",
        Category::Io => "unreadable",
    };
    if e.line() == 0 {
        // A value already parsed (no text, so no position).
        return format!("json: {what}");
    }
    format!("json: {what} (line {}, column {})", e.line(), e.column())
}

impl From<crate::names::UnknownName> for Error {
    fn from(e: crate::names::UnknownName) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}
