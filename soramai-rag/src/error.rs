//! The crate's error type.

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in retrieval.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// From the security core: scopes, tiers, tenants, storage.
    #[error(transparent)]
    Core(#[from] soramai_core::Error),
    /// An index file failed authentication or decryption (tampered, truncated, moved). Search
    /// never returns hits from such an index.
    #[error("index integrity check failed")]
    Integrity,
    /// The corpus does not exist for this tenant.
    #[error("corpus not found")]
    CorpusNotFound,
    /// A corpus with this id already exists.
    #[error("corpus already exists")]
    CorpusExists,
    /// A malformed argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Too large.
    #[error("too large: {what} exceeds {limit} bytes")]
    TooLarge {
        /// What.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// One request would cut into more chunks than the tenant's tier embeds per request.
    #[error("too large: the documents make {chunks} chunks; this tier indexes at most {limit} per request")]
    TooManyChunks {
        /// Chunks the request would make.
        chunks: usize,
        /// The tier's bound.
        limit: usize,
    },
    /// The tenant already runs as many ingestions as its tier allows.
    #[error("this tier runs at most {limit} ingestion(s) at once; try again when one ends")]
    Busy {
        /// The tier's bound.
        limit: u32,
    },
    /// The ingestion was stopped (its client went away, or the server is shutting down); nothing
    /// was committed.
    #[error("the ingestion was cancelled; nothing was indexed")]
    Cancelled,
    /// The embedder failed or returned vectors of the wrong number or shape.
    #[error("embedding: {0}")]
    Embedding(String),
    /// The index engine failed for another reason.
    #[error("index: {0}")]
    Index(String),
}

fn is_integrity(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::InvalidData
        {
            return true;
        }
        cur = err.source();
    }
    false
}

impl From<tantivy::TantivyError> for Error {
    fn from(e: tantivy::TantivyError) -> Self {
        let text = e.to_string();
        if matches!(e, tantivy::TantivyError::DataCorruption(_))
            || is_integrity(&e)
            || text.contains("integrity check failed")
            || text.contains("InvalidData")
        {
            Error::Integrity
        } else {
            Error::Index(text)
        }
    }
}

impl From<tantivy::directory::error::OpenReadError> for Error {
    fn from(e: tantivy::directory::error::OpenReadError) -> Self {
        tantivy::TantivyError::from(e).into()
    }
}
