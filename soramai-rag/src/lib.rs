//! Soramai's retrieval layer: chunking and a tantivy index stored through `soramai-core`'s encrypted
//! object format, so that no term, posting or document reaches disk in plaintext.
//!
//! Depends on `soramai-core` only (never the other way round). Its capabilities land issue by issue.
#![forbid(unsafe_code)]
