//! Corpora, documents and BM25 search over [`EncryptedDirectory`] indexes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use soramai_core::{Action, Core, ObjectPath, Principal, RagIsolation, Scope, TenantId};
use tantivy::collector::{DocSetCollector, TopDocs};
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, STORED, STRING, Schema, TantivyDocument, TextFieldIndexing, TextOptions, Value,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Term};

use crate::directory::{ChunkCache, EncryptedDirectory};
use crate::embedding::{self, Embedder};
use crate::error::{Error, Result};
use crate::grounding::GroundedPrompt;
pub use crate::hit::Hit;
use crate::ingest::{Batch, CutChunk, CutDocument, Vectors};
use crate::text::{self, ChunkingOptions, Format, TokenCounter, WordCount};

/// A corpus id: `a-z0-9`, `-`, `_`, 1-64 characters, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct CorpusId(String);

impl CorpusId {
    /// Validates a corpus id.
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && s.as_bytes()[0].is_ascii_alphanumeric();
        if ok { Ok(Self(s)) } else { Err(Error::InvalidArgument("invalid corpus id".into())) }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A document to index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// The caller's id for the document; adding the same id again replaces it.
    pub id: String,
    /// A title (searched, stored).
    pub title: String,
    /// The body.
    pub body: String,
    /// How to read the body.
    pub format: Format,
    /// Metadata to filter on: keys `a-z0-9_.-`, values printable.
    pub metadata: BTreeMap<String, String>,
}

impl Document {
    /// A plain-text document with no metadata.
    pub fn text(id: impl Into<String>, title: impl Into<String>, body: impl Into<String>) -> Self {
        Self { id: id.into(), title: title.into(), body: body.into(), format: Format::Text, metadata: BTreeMap::new() }
    }
}

/// A search request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchRequest {
    /// Query text (tantivy query syntax, parsed leniently: a malformed query still searches).
    pub query: String,
    /// How many hits, 1..=100.
    pub top_k: usize,
    /// Metadata filters `(key, value)`, all of which must match.
    pub filters: Vec<(String, String)>,
    /// Rerank the BM25 candidates by embedding similarity (needs an embedder in [`RagOptions`]).
    pub hybrid: bool,
}

impl SearchRequest {
    /// `top_k` hits for `query`, no filters.
    pub fn new(query: impl Into<String>, top_k: usize) -> Self {
        Self { query: query.into(), top_k, filters: Vec::new(), hybrid: false }
    }

    /// The same request in hybrid mode: the best [`crate::embedding::HYBRID_CANDIDATES`] BM25
    /// candidates reranked by fusing their BM25 rank with their embedding-similarity rank.
    pub fn hybrid(mut self) -> Self {
        self.hybrid = true;
        self
    }
}

/// What an ingestion did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IngestReport {
    /// Documents added or replaced.
    pub documents: usize,
    /// Chunks indexed.
    pub chunks: usize,
}

/// Limits on what a tenant may send.
#[derive(Debug, Clone)]
pub struct RagOptions {
    /// How documents are cut.
    pub chunking: ChunkingOptions,
    /// What chunk windows are measured in (the serving model's tokenizer, or words).
    pub tokens: Arc<dyn TokenCounter>,
    /// Largest document body, in bytes.
    pub max_document_bytes: usize,
    /// Documents per ingestion call.
    pub max_documents_per_call: usize,
    /// Indexing memory budget per writer, in bytes.
    pub writer_memory_bytes: usize,
    /// Computes chunk and query embeddings for hybrid search; chunks indexed without one carry
    /// none and rank by BM25 alone.
    pub embedder: Option<Arc<dyn Embedder>>,
}

impl Default for RagOptions {
    fn default() -> Self {
        Self {
            chunking: ChunkingOptions::default(),
            tokens: Arc::new(WordCount),
            max_document_bytes: 8 << 20,
            max_documents_per_call: 10_000,
            writer_memory_bytes: 64 << 20,
            embedder: None,
        }
    }
}

#[derive(Clone, Copy)]
struct Fields {
    chunk_id: Field,
    doc_id: Field,
    title: Field,
    heading: Field,
    text: Field,
    tags: Field,
    embedding: Field,
    embedder: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let stemmed = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("en_stem")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
        .set_stored();
    let fields = Fields {
        chunk_id: b.add_text_field("chunk_id", STRING | STORED),
        doc_id: b.add_text_field("doc_id", STRING | STORED),
        title: b.add_text_field("title", stemmed.clone()),
        heading: b.add_text_field("heading", stemmed.clone()),
        text: b.add_text_field("text", stemmed),
        tags: b.add_text_field("tags", STRING | STORED),
        embedding: b.add_bytes_field("embedding", STORED),
        embedder: b.add_text_field("embedder", STRING | STORED),
    };
    (b.build(), fields)
}

struct OpenCorpus {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    writer: Mutex<()>,
}

/// Retrieval for every tenant of a [`Core`]: corpora, documents and search, each index stored
/// encrypted under its tenant's key.
pub struct Rag {
    core: Arc<Core>,
    cache: Arc<ChunkCache>,
    options: RagOptions,
    open: Mutex<HashMap<(TenantId, CorpusId), Arc<OpenCorpus>>>,
    /// Ingestions running, per tenant.
    ingesting: Arc<Mutex<HashMap<TenantId, u32>>>,
}

/// Chunks embedded per call: six default chunks (160 tokens) make one forward pass of the
/// serving engine's embedding batch (up to 1,024 tokens), so a cancelled ingestion stops within
/// one forward pass.
const EMBED_BATCH: usize = 6;

/// A tenant's place among its running ingestions, given back when dropped.
struct IngestSlot {
    running: Arc<Mutex<HashMap<TenantId, u32>>>,
    tenant: TenantId,
}

impl Drop for IngestSlot {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = running.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.tenant);
            }
        }
    }
}

impl std::fmt::Debug for Rag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rag").field("cache", &self.cache).finish_non_exhaustive()
    }
}

fn prefix(corpus: &CorpusId) -> String {
    format!("rag/{}", corpus.as_str())
}

/// Embeds `texts` and checks the embedder kept its contract: one finite vector per text, all of one
/// non-zero length.
fn embed_checked(e: &dyn Embedder, texts: &[String]) -> Result<Vec<Vec<f32>>> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let vs = e.embed(&refs).map_err(|err| Error::Embedding(err.to_string()))?;
    let dim = vs.first().map_or(0, Vec::len);
    if vs.len() != texts.len()
        || (!vs.is_empty() && dim == 0)
        || vs.iter().any(|v| v.len() != dim || v.iter().any(|x| !x.is_finite()))
    {
        return Err(Error::Embedding(format!(
            "the embedder {:?} returned {} vectors for {} texts, or vectors of unequal length or non-finite values",
            e.id(),
            vs.len(),
            texts.len()
        )));
    }
    Ok(vs)
}

fn check_doc(doc: &Document, options: &RagOptions) -> Result<()> {
    let printable = |s: &str| !s.chars().any(char::is_control);
    if doc.id.is_empty() || doc.id.len() > 128 || !printable(&doc.id) || doc.id.contains('#') {
        return Err(Error::InvalidArgument("a document id is 1-128 printable characters without '#'".into()));
    }
    if doc.title.len() > 1024 {
        return Err(Error::InvalidArgument(format!("document {:?}: the title is over 1024 bytes", doc.id)));
    }
    if doc.body.len() > options.max_document_bytes {
        return Err(Error::TooLarge { what: "document", limit: options.max_document_bytes as u64 });
    }
    if doc.metadata.len() > 32 {
        return Err(Error::InvalidArgument(format!("document {:?}: at most 32 metadata entries", doc.id)));
    }
    for (k, v) in &doc.metadata {
        let key_ok = !k.is_empty()
            && k.len() <= 64
            && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
        if !key_ok || v.len() > 256 || !printable(v) {
            return Err(Error::InvalidArgument(format!("document {:?}: invalid metadata entry", doc.id)));
        }
    }
    Ok(())
}

impl Rag {
    /// Retrieval over `core`, with a shared decrypted-chunk cache of `cache_bytes`.
    pub fn new(core: Arc<Core>, cache_bytes: usize) -> Self {
        Self::with_options(core, cache_bytes, RagOptions::default())
    }

    /// Retrieval with explicit options.
    pub fn with_options(core: Arc<Core>, cache_bytes: usize, options: RagOptions) -> Self {
        Self {
            core,
            cache: Arc::new(ChunkCache::new(cache_bytes)),
            options,
            open: Mutex::new(HashMap::new()),
            ingesting: Arc::default(),
        }
    }

    /// The shared chunk cache (for statistics).
    pub fn cache(&self) -> &ChunkCache {
        &self.cache
    }

    /// A place among the tenant's running ingestions, or [`Error::Busy`] when all are taken.
    fn ingest_slot(&self, tenant: &TenantId, max: u32) -> Result<IngestSlot> {
        let mut running = self.ingesting.lock().unwrap_or_else(|e| e.into_inner());
        let n = running.entry(tenant.clone()).or_insert(0);
        if *n >= max {
            return Err(Error::Busy { limit: max });
        }
        *n += 1;
        Ok(IngestSlot { running: self.ingesting.clone(), tenant: tenant.clone() })
    }

    /// Checks scope and tier: RAG needs the `rag` scope and a tier that has RAG.
    fn admit(&self, principal: &Principal) -> Result<()> {
        principal.require(Scope::Rag)?;
        let tenant = self.core.tenant(principal.tenant())?;
        if tenant.tier.policy().rag == RagIsolation::None {
            return Err(soramai_core::Error::NotAllowed { tier: tenant.tier, what: "RAG" }.into());
        }
        Ok(())
    }

    fn directory(&self, tenant: &TenantId, corpus: &CorpusId) -> Result<EncryptedDirectory> {
        Ok(EncryptedDirectory::new(self.core.clone(), tenant.clone(), &prefix(corpus), self.cache.clone())?)
    }

    fn exists(&self, tenant: &TenantId, corpus: &CorpusId) -> Result<bool> {
        let meta = ObjectPath::new(format!("{}/meta.json", prefix(corpus)))?;
        match self.core.object_info(tenant, &meta) {
            Ok(_) => Ok(true),
            Err(soramai_core::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn handle(&self, tenant: &TenantId, corpus: &CorpusId) -> Result<Arc<OpenCorpus>> {
        let key = (tenant.clone(), corpus.clone());
        if let Some(h) = self.open.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(h.clone());
        }
        if !self.exists(tenant, corpus)? {
            return Err(Error::CorpusNotFound);
        }
        let index = Index::open(self.directory(tenant, corpus)?)?;
        let (expected, fields) = schema();
        if index.schema() != expected {
            return Err(Error::Integrity);
        }
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let h = Arc::new(OpenCorpus { index, reader, fields, writer: Mutex::new(()) });
        self.open.lock().unwrap_or_else(|e| e.into_inner()).insert(key, h.clone());
        Ok(h)
    }

    /// Creates an empty corpus for the principal's tenant. Its index files get a key of their own
    /// (a core key scope), so deleting the corpus crypto-shreds it.
    pub fn create_corpus(&self, principal: &Principal, corpus: &CorpusId) -> Result<()> {
        self.admit(principal)?;
        let tenant = principal.tenant();
        if self.exists(tenant, corpus)? {
            return Err(Error::CorpusExists);
        }
        match self.core.create_key_scope(tenant, &ObjectPath::new(prefix(corpus))?) {
            // A scope without an index is what an interrupted create leaves: reuse it.
            Ok(()) | Err(soramai_core::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let (schema, _) = schema();
        Index::create(self.directory(tenant, corpus)?, schema, tantivy::IndexSettings::default())?;
        self.core.record_audit(principal, Action::CorpusCreated, corpus.as_str(), serde_json::json!({}))?;
        Ok(())
    }

    /// The principal's tenant's corpora.
    pub fn list_corpora(&self, principal: &Principal) -> Result<Vec<CorpusId>> {
        self.admit(principal)?;
        let objects = self.core.list_objects(principal.tenant(), "rag/")?;
        Ok(objects
            .iter()
            .filter_map(|o| o.path.strip_prefix("rag/")?.strip_suffix("/meta.json"))
            .filter_map(|c| CorpusId::new(c).ok())
            .collect())
    }

    /// Deletes a corpus by crypto-shredding it: its key is destroyed (copies of its files anywhere,
    /// backups included, become undecryptable) and its blobs are purged.
    pub fn delete_corpus(&self, principal: &Principal, corpus: &CorpusId) -> Result<()> {
        self.admit(principal)?;
        let tenant = principal.tenant();
        if !self.exists(tenant, corpus)? {
            return Err(Error::CorpusNotFound);
        }
        let handle = self.open.lock().unwrap_or_else(|e| e.into_inner()).remove(&(tenant.clone(), corpus.clone()));
        let _guard = handle.as_ref().map(|h| h.writer.lock().unwrap_or_else(|e| e.into_inner()));
        let files = self.core.shred_key_scope(tenant, &ObjectPath::new(prefix(corpus))?)?;
        self.core.record_audit(
            principal,
            Action::CorpusDeleted,
            corpus.as_str(),
            serde_json::json!({"files": files}),
        )?;
        Ok(())
    }

    /// Adds (or replaces, by id) documents, chunked and indexed in one commit.
    pub fn add_documents(&self, principal: &Principal, corpus: &CorpusId, docs: &[Document]) -> Result<IngestReport> {
        self.add_documents_until(principal, corpus, docs, &|| false)
    }

    /// [`Rag::add_documents`], bounded by the tenant's tier ([`soramai_core::tier::IngestLimits`]:
    /// document bytes and chunks per request, checked before anything is embedded, and
    /// ingestions at once) and stopped when `cancelled` says so (polled between embedding batches
    /// of [`EMBED_BATCH`] chunks): a cancelled ingestion commits nothing and is
    /// [`Error::Cancelled`].
    pub fn add_documents_until(
        &self,
        principal: &Principal,
        corpus: &CorpusId,
        docs: &[Document],
        cancelled: &dyn Fn() -> bool,
    ) -> Result<IngestReport> {
        let batch = self.prepare(principal, corpus, docs)?;
        let _slot = self.ingest_slot(principal.tenant(), self.max_concurrent(principal)?)?;
        let vectors = match &self.options.embedder {
            Some(e) => {
                let texts = batch.embedding_texts();
                let mut vs = Vec::with_capacity(texts.len());
                for part in texts.chunks(EMBED_BATCH) {
                    if cancelled() {
                        return Err(Error::Cancelled);
                    }
                    vs.extend(embed_checked(e.as_ref(), part)?);
                }
                Some(Vectors { embedder: e.id().to_owned(), vectors: vs })
            }
            None => None,
        };
        if cancelled() {
            return Err(Error::Cancelled);
        }
        let report = self.commit_as(principal.tenant(), &batch, vectors.as_ref(), Some(principal))?;
        self.core.record_access(principal, &format!("rag:{}", corpus.as_str()), "ingest", None)?;
        Ok(report)
    }

    /// The first step of an ingestion: checks scope and tier, each document, and the tier's
    /// bounds on bytes and chunks per request ([`soramai_core::tier::IngestLimits`]), then cuts
    /// the documents into chunks (cheap; embedding is not, so the chunk bound holds before any).
    /// The corpus must exist.
    pub fn prepare(&self, principal: &Principal, corpus: &CorpusId, docs: &[Document]) -> Result<Batch> {
        self.admit(principal)?;
        if docs.len() > self.options.max_documents_per_call {
            return Err(Error::InvalidArgument(format!(
                "at most {} documents per call",
                self.options.max_documents_per_call
            )));
        }
        for d in docs {
            check_doc(d, &self.options)?;
        }
        let limits = self.core.tenant(principal.tenant())?.tier.policy().ingest;
        let bytes: usize = docs.iter().map(|d| d.body.len() + d.title.len()).sum();
        if bytes > limits.max_bytes {
            return Err(Error::TooLarge { what: "the documents of one request", limit: limits.max_bytes as u64 });
        }
        // Cutting is cheap and embedding is not: the chunk bound holds before any embedding.
        let cuts: Vec<_> = docs
            .iter()
            .map(|d| text::chunk_with(&d.body, d.format, self.options.chunking, self.options.tokens.as_ref()))
            .collect();
        let total: usize = cuts.iter().map(Vec::len).sum();
        if total > limits.max_chunks {
            return Err(Error::TooManyChunks { chunks: total, limit: limits.max_chunks });
        }
        let documents = docs
            .iter()
            .zip(cuts)
            .map(|(d, cut)| CutDocument {
                id: d.id.clone(),
                title: d.title.clone(),
                metadata: d.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                chunks: cut
                    .into_iter()
                    .map(|c| CutChunk { ordinal: c.ordinal, heading: c.heading, text: c.text })
                    .collect(),
            })
            .collect();
        if !self.exists(principal.tenant(), corpus)? {
            return Err(Error::CorpusNotFound);
        }
        Ok(Batch { corpus: corpus.as_str().to_owned(), documents })
    }

    /// How many ingestions the principal's tier runs at once.
    pub fn max_concurrent(&self, principal: &Principal) -> Result<u32> {
        Ok(self.core.tenant(principal.tenant())?.tier.policy().ingest.max_concurrent)
    }

    /// The embedder chunks are embedded with, if any.
    pub fn embedder(&self) -> Option<&Arc<dyn Embedder>> {
        self.options.embedder.as_ref()
    }

    /// The last step of an ingestion: indexes a prepared batch into its corpus of `tenant`, each
    /// chunk with its vector when `vectors` are given (one per chunk, in order), replacing any
    /// document of the same id, in one commit; audited as the platform's work.
    pub fn commit(&self, tenant: &TenantId, batch: &Batch, vectors: Option<&Vectors>) -> Result<IngestReport> {
        self.commit_as(tenant, batch, vectors, None)
    }

    /// [`Rag::commit`], audited as `principal`'s when one asked in person.
    fn commit_as(
        &self,
        tenant: &TenantId,
        batch: &Batch,
        vectors: Option<&Vectors>,
        principal: Option<&Principal>,
    ) -> Result<IngestReport> {
        let corpus = CorpusId::new(batch.corpus.clone())?;
        let chunks = batch.chunks();
        if let Some(v) = vectors
            && v.vectors.len() != chunks
        {
            return Err(Error::Embedding(format!("{} vectors for {chunks} chunks", v.vectors.len())));
        }
        let h = self.handle(tenant, &corpus)?;
        let _guard = h.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut writer: IndexWriter = h.index.writer_with_num_threads(1, self.options.writer_memory_bytes)?;
        let f = h.fields;
        let mut vectors_in_order = vectors.map(|v| v.vectors.iter());
        for d in &batch.documents {
            writer.delete_term(Term::from_field_text(f.doc_id, &d.id));
            for c in &d.chunks {
                let mut doc = TantivyDocument::default();
                doc.add_text(f.chunk_id, format!("{}#{}", d.id, c.ordinal));
                doc.add_text(f.doc_id, &d.id);
                doc.add_text(f.title, &d.title);
                doc.add_text(f.heading, &c.heading);
                doc.add_text(f.text, &c.text);
                for (k, v) in &d.metadata {
                    doc.add_text(f.tags, format!("{k}={v}"));
                }
                if let (Some(vs), Some(v)) = (vectors_in_order.as_mut().and_then(Iterator::next), vectors) {
                    doc.add_bytes(f.embedding, &embedding::to_bytes(vs));
                    doc.add_text(f.embedder, &v.embedder);
                }
                writer.add_document(doc)?;
            }
        }
        writer.commit()?;
        writer.wait_merging_threads()?;
        h.reader.reload()?;
        let detail = serde_json::json!({"documents": batch.documents.len(), "chunks": chunks});
        match principal {
            Some(p) => self.core.record_audit(p, Action::DocumentsIndexed, corpus.as_str(), detail)?,
            None => self.core.record_system_audit(tenant, Action::DocumentsIndexed, corpus.as_str(), detail)?,
        }
        Ok(IngestReport { documents: batch.documents.len(), chunks })
    }

    /// Deletes documents by id (absent ids are ignored).
    pub fn delete_documents(&self, principal: &Principal, corpus: &CorpusId, ids: &[String]) -> Result<()> {
        self.admit(principal)?;
        let h = self.handle(principal.tenant(), corpus)?;
        let _guard = h.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut writer: IndexWriter = h.index.writer_with_num_threads(1, self.options.writer_memory_bytes)?;
        for id in ids {
            writer.delete_term(Term::from_field_text(h.fields.doc_id, id));
        }
        writer.commit()?;
        writer.wait_merging_threads()?;
        h.reader.reload()?;
        self.core.record_audit(
            principal,
            Action::DocumentsDeleted,
            corpus.as_str(),
            serde_json::json!({"documents": ids.len()}),
        )?;
        Ok(())
    }

    /// The ids of the corpus's documents.
    pub fn list_documents(&self, principal: &Principal, corpus: &CorpusId) -> Result<Vec<String>> {
        self.admit(principal)?;
        let h = self.handle(principal.tenant(), corpus)?;
        let searcher = h.reader.searcher();
        let all = searcher.search(&AllQuery, &DocSetCollector)?;
        let mut ids = HashSet::new();
        for addr in all {
            let doc: TantivyDocument = searcher.doc(addr)?;
            if let Some(id) = doc.get_first(h.fields.doc_id).and_then(|v| v.as_str()) {
                ids.insert(id.to_string());
            }
        }
        let mut ids: Vec<String> = ids.into_iter().collect();
        ids.sort();
        Ok(ids)
    }

    /// BM25 search with metadata filters; returns up to `top_k` chunks with snippets.
    pub fn search(&self, principal: &Principal, corpus: &CorpusId, request: &SearchRequest) -> Result<Vec<Hit>> {
        self.admit(principal)?;
        if request.top_k == 0 || request.top_k > 100 {
            return Err(Error::InvalidArgument("top_k is 1..=100".into()));
        }
        if request.query.len() > 4096 || request.filters.len() > 16 {
            return Err(Error::InvalidArgument("the query is over 4096 bytes or has over 16 filters".into()));
        }
        let h = self.handle(principal.tenant(), corpus)?;
        let f = h.fields;
        let mut parser = QueryParser::for_index(&h.index, vec![f.title, f.heading, f.text]);
        parser.set_field_boost(f.title, 1.5);
        parser.set_field_boost(f.heading, 1.2);
        let (parsed, _errors) = parser.parse_query_lenient(&request.query);
        let query: Box<dyn Query> = if request.filters.is_empty() {
            parsed
        } else {
            let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, parsed)];
            for (k, v) in &request.filters {
                let term = Term::from_field_text(f.tags, &format!("{k}={v}"));
                clauses.push((Occur::Must, Box::new(TermQuery::new(term, IndexRecordOption::Basic))));
            }
            Box::new(BooleanQuery::new(clauses))
        };
        let embedder = match (request.hybrid, &self.options.embedder) {
            (false, _) => None,
            (true, Some(e)) => Some(e.clone()),
            (true, None) => {
                return Err(Error::InvalidArgument("hybrid search needs an embedder configured".into()));
            }
        };
        let searcher = h.reader.searcher();
        let limit = if embedder.is_some() { request.top_k.max(embedding::HYBRID_CANDIDATES) } else { request.top_k };
        let top = searcher.search(&*query, &TopDocs::with_limit(limit).order_by_score())?;
        let mut candidates = Vec::with_capacity(top.len());
        for (score, addr) in top {
            candidates.push((score, searcher.doc::<TantivyDocument>(addr)?));
        }
        // Hybrid: cosine of each candidate's stored vector (from the same embedder) to the query's,
        // then reciprocal rank fusion with the BM25 order.
        let mut ranked: Vec<(usize, f32, Option<f32>)> =
            candidates.iter().enumerate().map(|(i, (score, _))| (i, *score, None)).collect();
        if let Some(e) = embedder
            && !candidates.is_empty()
        {
            let q = embed_checked(e.as_ref(), std::slice::from_ref(&request.query))?.remove(0);
            let vectors: Vec<Option<Vec<f32>>> = candidates
                .iter()
                .map(|(_, doc)| {
                    let same = doc.get_first(f.embedder).and_then(|v| v.as_str()) == Some(e.id());
                    let bytes = doc.get_first(f.embedding).and_then(|v| v.as_bytes())?;
                    embedding::from_bytes(bytes, q.len()).filter(|_| same)
                })
                .collect();
            let sims = embedding::centered_similarities(&q, &vectors);
            ranked = embedding::fuse(&sims).into_iter().map(|(i, fused)| (i, fused, sims[i])).collect();
        }
        ranked.truncate(request.top_k);
        let snippets = SnippetGenerator::create(&searcher, &*query, f.text)?;
        let mut hits = Vec::with_capacity(ranked.len());
        for (i, score, similarity) in ranked {
            let doc = &candidates[i].1;
            let get = |field: Field| doc.get_first(field).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            hits.push(Hit {
                chunk_id: get(f.chunk_id),
                doc_id: get(f.doc_id),
                title: get(f.title),
                heading: get(f.heading),
                text: get(f.text),
                snippet: snippets.snippet_from_doc(doc).to_html(),
                score,
                similarity,
            });
        }
        // The query text is kept only if the tenant opted in, and then sealed under its key.
        self.core.record_access(principal, &format!("rag:{}", corpus.as_str()), "search", Some(&request.query))?;
        Ok(hits)
    }

    /// Retrieves the best chunks for `question` and assembles a grounded prompt that fits in
    /// `budget` tokens (by the configured token counter). Send its messages to the chat model, then
    /// read the answer's citations with [`GroundedPrompt::citations`].
    pub fn grounded_prompt(
        &self,
        principal: &Principal,
        corpus: &CorpusId,
        question: &str,
        top_k: usize,
        budget: usize,
    ) -> Result<GroundedPrompt> {
        let hits = self.search(principal, corpus, &SearchRequest::new(question, top_k))?;
        Ok(crate::grounding::assemble(question, &hits, budget, self.options.tokens.as_ref()))
    }
}
