//! An ingestion in three steps that may run in different places: documents are checked and cut
//! into chunks where the request arrives ([`crate::Rag::prepare`]), the chunks are embedded where
//! the compute is (in-process, or a job's child process that reads an encoded [`Batch`]), and the
//! chunks with their vectors are indexed into the corpus ([`crate::Rag::commit`]).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Documents cut into chunks, ready to embed and index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// The corpus id.
    pub corpus: String,
    /// The documents, in request order.
    pub documents: Vec<CutDocument>,
}

/// One document of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutDocument {
    /// The caller's id (replaces any document of that id).
    pub id: String,
    /// The title.
    pub title: String,
    /// Metadata to filter on.
    pub metadata: Vec<(String, String)>,
    /// The chunks.
    pub chunks: Vec<CutChunk>,
}

/// One chunk of a [`CutDocument`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutChunk {
    /// Its position in the document.
    pub ordinal: usize,
    /// The heading of its section.
    pub heading: String,
    /// The text.
    pub text: String,
}

/// Vectors for a [`Batch`]'s chunks, in order, from one embedder.
#[derive(Debug, Clone, PartialEq)]
pub struct Vectors {
    /// The embedder's id ([`crate::Embedder::id`]).
    pub embedder: String,
    /// One unit vector per chunk.
    pub vectors: Vec<Vec<f32>>,
}

/// What a chunk's embedding is computed from: its title and heading give it context.
pub(crate) fn embedding_text(title: &str, heading: &str, text: &str) -> String {
    [title, heading, text].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join("\n")
}

impl Batch {
    /// How many chunks the batch holds.
    pub fn chunks(&self) -> usize {
        self.documents.iter().map(|d| d.chunks.len()).sum()
    }

    /// The texts to embed, one per chunk, in order.
    pub fn embedding_texts(&self) -> Vec<String> {
        self.documents
            .iter()
            .flat_map(|d| d.chunks.iter().map(|c| embedding_text(&d.title, &c.heading, &c.text)))
            .collect()
    }

    /// The batch as a job's input.
    pub fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::InvalidArgument(format!("encoding the batch: {e}")))
    }

    /// A batch from a job's input; anything else is refused by name.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::InvalidArgument(format!("not an ingestion batch: {e}")))
    }
}

impl Vectors {
    /// Vectors sent as little-endian f32, `dim` per chunk, checked against `chunks`: a whole
    /// number of finite vectors, one per chunk.
    pub fn from_le_bytes(embedder: &str, dim: usize, chunks: usize, bytes: &[u8]) -> Result<Self> {
        let bad = |why: &str| Error::Embedding(format!("the vectors of {embedder:?} {why}"));
        if dim == 0 || dim > 1 << 16 || bytes.len() != dim.saturating_mul(chunks).saturating_mul(4) {
            return Err(bad(&format!("are not {chunks} vectors of {dim} floats")));
        }
        let vectors: Vec<Vec<f32>> = bytes
            .chunks_exact(dim * 4)
            .map(|v| v.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
            .collect();
        if vectors.iter().flatten().any(|x| !x.is_finite()) {
            return Err(bad("hold non-finite values"));
        }
        Ok(Self { embedder: embedder.to_owned(), vectors })
    }

    /// The vectors as little-endian f32 bytes.
    pub fn to_le_bytes(vectors: &[Vec<f32>]) -> Vec<u8> {
        vectors.iter().flatten().flat_map(|x| x.to_le_bytes()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        Batch {
            corpus: "kb".into(),
            documents: vec![CutDocument {
                id: "d".into(),
                title: "T".into(),
                metadata: vec![("k".into(), "v".into())],
                chunks: vec![
                    CutChunk { ordinal: 0, heading: String::new(), text: "one".into() },
                    CutChunk { ordinal: 1, heading: "H".into(), text: "two".into() },
                ],
            }],
        }
    }

    #[test]
    fn a_batch_round_trips_and_hostile_input_is_refused() {
        let b = batch();
        assert_eq!(Batch::decode(&b.encode().expect("encode")).expect("decode"), b);
        assert_eq!(b.chunks(), 2);
        assert_eq!(b.embedding_texts(), ["T\none", "T\nH\ntwo"]);
        let bad: [&[u8]; 5] = [b"", b"{}", b"[1,2]", b"{\"corpus\":\"kb\",\"documents\":[],\"extra\":1}", &[0xff; 9]];
        for bad in bad {
            assert!(matches!(Batch::decode(bad), Err(Error::InvalidArgument(_))), "{bad:?}");
        }
    }

    #[test]
    fn vectors_are_checked_against_the_chunks() {
        let v = vec![vec![0.5f32, -1.0], vec![2.0, 0.25]];
        let bytes = Vectors::to_le_bytes(&v);
        assert_eq!(Vectors::from_le_bytes("e", 2, 2, &bytes).expect("ok").vectors, v);
        assert!(Vectors::from_le_bytes("e", 2, 3, &bytes).is_err());
        assert!(Vectors::from_le_bytes("e", 0, 0, &[]).is_err());
        assert!(Vectors::from_le_bytes("e", 3, 1, &bytes[..12]).is_ok());
        let nan = Vectors::to_le_bytes(&[vec![f32::NAN, 0.0]]);
        assert!(Vectors::from_le_bytes("e", 2, 1, &nan).is_err());
    }
}
