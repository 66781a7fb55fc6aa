//! A search hit: what retrieval returns and grounding cites. A leaf, shared by both.

use serde::Serialize;

/// One search hit: a chunk of a document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// `<document id>#<ordinal>`: what grounded answers cite.
    pub chunk_id: String,
    /// The document id.
    pub doc_id: String,
    /// The document title.
    pub title: String,
    /// The section heading of the chunk.
    pub heading: String,
    /// The chunk text.
    pub text: String,
    /// The best fragment, with matches between `<b>` and `</b>`.
    pub snippet: String,
    /// The ranking score: BM25, or in hybrid mode the fused reciprocal-rank score.
    pub score: f32,
    /// Cosine similarity to the query, in hybrid mode (when the chunk has an embedding).
    pub similarity: Option<f32>,
}
