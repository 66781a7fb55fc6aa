//! # soramai-rag
//!
//! Retrieval for Soramai: each tenant's documents are chunked and indexed with tantivy, and every
//! index file is stored through `soramai-core`'s encrypted object format under that tenant's key,
//! so no term, posting, stored field or document ever reaches disk in plaintext.
//!
//! ```
//! use std::sync::Arc;
//! use soramai_core::{Core, Principal, TenantId, Tier};
//! use soramai_rag::{CorpusId, Document, Rag, SearchRequest};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let core = Arc::new(Core::open_embedded(dir.path())?);
//! let acme = TenantId::new("acme")?;
//! core.create_tenant(&acme, Tier::Basic)?;
//! let me = Principal::operator(&acme);
//! let rag = Rag::new(core, 64 << 20);
//! let kb = CorpusId::new("handbook")?;
//! rag.create_corpus(&me, &kb)?;
//! rag.add_documents(&me, &kb, &[Document::text("leave", "Leave policy", "Staff get thirty days of paid leave.")])?;
//! let hits = rag.search(&me, &kb, &SearchRequest::new("paid leave", 5))?;
//! assert_eq!(hits[0].chunk_id, "leave#0");
//! # Ok(()) }
//! ```
//!
//! Depends on `soramai-core` only (never the other way round).
#![forbid(unsafe_code)]

pub mod corpus;
pub mod directory;
pub mod embedding;
pub mod error;
pub mod grounding;
pub mod hit;
pub mod ingest;
pub mod text;

pub use corpus::{CorpusId, Document, Hit, IngestReport, Rag, RagOptions, SearchRequest};
pub use directory::{ChunkCache, EncryptedDirectory};
pub use embedding::Embedder;
pub use error::{Error, Result};
pub use grounding::{GroundedPrompt, Source};
pub use ingest::{Batch, Vectors};
pub use text::{ChunkingOptions, Format, TokenCounter, WordCount};
