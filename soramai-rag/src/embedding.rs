//! Dense embeddings for hybrid search: what an embedder is, how vectors are stored in the index
//! (inside the encrypted index files, like every other field), and how BM25 and embedding ranks
//! are fused.
//!
//! Hidden states of a language model share a large common direction (they are anisotropic), which
//! swamps cosine similarity: every text looks alike. Similarities are therefore taken after
//! subtracting the mean vector of the query's candidates, a sample of the corpus drawn at query
//! time, so nothing extra is stored. On the handbook questions (`soramai/tests/rag_model.rs`) this
//! took embedding-only recall@5 from 4/12 to 9/12 with SmolLM2-135M's mean-pooled states.
//!
//! The RAG crate depends on `soramai-core` only; the SDK implements [`Embedder`] over the serving
//! model (mean-pooled hidden states of the base model) and passes it in [`crate::RagOptions`].

/// Turns texts into unit-length vectors.
pub trait Embedder: Send + Sync + std::fmt::Debug {
    /// Names the model and pooling: vectors from different ids are never compared (a corpus indexed
    /// under one model is searched by BM25 alone for chunks that carry another id).
    fn id(&self) -> &str;
    /// One vector per text, all of the same length.
    fn embed(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>>;
}

/// BM25 candidates reranked in hybrid mode (or `top_k`, if larger).
pub const HYBRID_CANDIDATES: usize = 50;

/// The constant of reciprocal rank fusion: a candidate at rank `r` (from 0) in a list scores
/// `1 / (RRF_K + r + 1)`.
pub const RRF_K: f32 = 60.0;

/// Little-endian f32 bytes.
pub(crate) fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The vector in `bytes`, or `None` when they are not a whole number of f32s of length `dim`.
pub(crate) fn from_bytes(bytes: &[u8], dim: usize) -> Option<Vec<f32>> {
    if bytes.len() != dim * 4 || dim == 0 {
        return None;
    }
    Some(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Cosine similarity (the embedder's vectors are unit length, but stored ones are not trusted to be).
pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 { 0.0 } else { ab / (aa.sqrt() * bb.sqrt()) }
}

/// Fewest candidate vectors whose mean is worth subtracting.
const MIN_TO_CENTER: usize = 3;

/// Cosine similarity of `query` to each candidate vector that exists, both centered on the mean
/// of the candidate vectors (when there are enough of them to estimate it).
pub(crate) fn centered_similarities(query: &[f32], vectors: &[Option<Vec<f32>>]) -> Vec<Option<f32>> {
    let present: Vec<&Vec<f32>> = vectors.iter().flatten().collect();
    let mut mean = vec![0f32; query.len()];
    if present.len() >= MIN_TO_CENTER {
        for v in &present {
            for (m, x) in mean.iter_mut().zip(v.iter()) {
                *m += x;
            }
        }
        let inv = 1.0 / present.len() as f32;
        mean.iter_mut().for_each(|m| *m *= inv);
    }
    let center = |v: &[f32]| -> Vec<f32> { v.iter().zip(&mean).map(|(x, m)| x - m).collect() };
    let q = center(query);
    vectors.iter().map(|v| v.as_ref().map(|v| cosine(&q, &center(v)))).collect()
}

/// Reciprocal rank fusion of BM25 order (the candidates' order) and similarity order. Candidates
/// without a similarity get the BM25 term only. Returns `(candidate index, fused score)`, best first;
/// ties keep BM25 order.
pub(crate) fn fuse(similarities: &[Option<f32>]) -> Vec<(usize, f32)> {
    let mut by_sim: Vec<usize> = (0..similarities.len()).filter(|&i| similarities[i].is_some()).collect();
    by_sim.sort_by(|&a, &b| {
        let (x, y) = (similarities[a].unwrap_or(f32::MIN), similarities[b].unwrap_or(f32::MIN));
        y.total_cmp(&x).then(a.cmp(&b))
    });
    let mut score: Vec<f32> = (0..similarities.len()).map(|r| 1.0 / (RRF_K + r as f32 + 1.0)).collect();
    for (r, &i) in by_sim.iter().enumerate() {
        score[i] += 1.0 / (RRF_K + r as f32 + 1.0);
    }
    let mut order: Vec<(usize, f32)> = score.into_iter().enumerate().collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_and_bad_bytes_are_refused() {
        let v = vec![0.5f32, -1.25, 3.0];
        assert_eq!(from_bytes(&to_bytes(&v), 3), Some(v));
        assert_eq!(from_bytes(&[0u8; 11], 3), None);
        assert_eq!(from_bytes(&[], 0), None);
    }

    #[test]
    fn fusion_promotes_similar_candidates_and_keeps_bm25_ties() {
        // Candidate 2 is third by BM25 but most similar: it overtakes candidate 1.
        let order = fuse(&[Some(0.5), Some(0.1), Some(0.9)]);
        assert_eq!(order.iter().map(|o| o.0).collect::<Vec<_>>(), vec![0, 2, 1]);
        // Without similarities the BM25 order stands.
        let order = fuse(&[None, None, None]);
        assert_eq!(order.iter().map(|o| o.0).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-6);
        // Centering removes a direction every vector shares.
        let shared = [Some(vec![10.0, 1.0]), Some(vec![10.0, -1.0]), Some(vec![10.0, 0.0]), None];
        let raw: Vec<f32> = shared.iter().flatten().map(|v| cosine(&[10.0, 1.0], v)).collect();
        assert!(raw.iter().all(|&c| c > 0.98), "everything looks alike uncentered: {raw:?}");
        let sims = centered_similarities(&[10.0, 1.0], &shared);
        assert!((sims[0].expect("present") - 1.0).abs() < 1e-5 && sims[1].expect("present") < -0.99);
        assert_eq!(sims[3], None);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }
}
