//! RAG ingestion as a job: the request checks the documents and cuts them into chunks
//! ([`soramai_rag::Rag::prepare`]) and queues an `ingest` job with them as its encrypted input;
//! the job's child process embeds the chunks through the serving engine's batched forward pass
//! ([`run_job`]), reporting progress, and hands the vectors back; the worker indexes chunks and
//! vectors into the corpus in one commit (the platform's workers' indexer). Cancelling kills the child; a stopping
//! platform kills it too and queues the job again; either way nothing half-done is committed.

use std::io::{Read, Write};
use std::sync::Arc;

use soramai_core::jobs::runner::{emit, emit_bytes};
use soramai_core::{Job, JobSpec};
use soramai_kernels::Engine;
use soramai_rag::{Batch, Embedder, Vectors};
use zeroize::Zeroizing;

use crate::grounded::ModelEmbedder;

/// Chunks embedded between two progress events: a few of the engine's forward passes (each
/// packs up to 1,024 tokens, six default chunks).
const PROGRESS_EVERY: usize = 24;

/// The `ingest` kind of the job runner: reads a [`Batch`] (`input_len` bytes) from stdin, embeds
/// its chunks with the base model at `base_model_path` (none: BM25 only, nothing to embed),
/// writes `progress` events (`fraction`, `chunks`), the vectors as the `vectors` artifact
/// (little-endian f32, one vector per chunk in order) and the `result` (`chunks`, `dim`,
/// `embedder`). Errors name what was wrong, never content.
pub fn run_job(header: &serde_json::Value, input: &mut dyn Read, out: &mut dyn Write) -> Result<(), String> {
    let io = |e: std::io::Error| format!("job output: {e}");
    let len = header
        .get("input_len")
        .and_then(|v| v.as_u64())
        .and_then(|n| usize::try_from(n).ok())
        .ok_or("header: no input_len")?;
    let mut bytes = Zeroizing::new(Vec::new());
    bytes.try_reserve_exact(len).map_err(|_| "the documents do not fit in memory".to_owned())?;
    input.take(len as u64).read_to_end(&mut bytes).map_err(|e| format!("reading the documents: {e}"))?;
    if bytes.len() != len {
        return Err(format!("the documents ended after {} of {len} bytes", bytes.len()));
    }
    let batch = Batch::decode(&bytes).map_err(|e| e.to_string())?;
    let total = batch.chunks();
    let Some(path) = header.get("base_model_path").and_then(|p| p.as_str()) else {
        emit(out, "progress", serde_json::json!({"fraction": 1.0, "chunks": total})).map_err(io)?;
        return emit(out, "result", serde_json::json!({"chunks": total, "dim": 0})).map_err(io);
    };
    let engine = Arc::new(Engine::load(std::path::Path::new(path)).map_err(|e| format!("loading the model: {e}"))?);
    let embedder = ModelEmbedder::new(engine);
    let texts = batch.embedding_texts();
    let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(total);
    let started = std::time::Instant::now();
    for part in texts.chunks(PROGRESS_EVERY) {
        let refs: Vec<&str> = part.iter().map(String::as_str).collect();
        let vs = embedder.embed(&refs).map_err(|e| format!("embedding: {e}"))?;
        if vs.len() != part.len() {
            return Err(format!("the embedder returned {} vectors for {} chunks", vs.len(), part.len()));
        }
        vectors.extend(vs);
        let done = vectors.len();
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
        emit(
            out,
            "progress",
            serde_json::json!({"fraction": done as f64 / total.max(1) as f64, "chunks": done, "chunks_per_second": rate}),
        )
        .map_err(io)?;
    }
    let dim = vectors.first().map_or(0, Vec::len);
    if total > 0 {
        emit_bytes(out, "artifact", serde_json::json!({"name": "vectors"}), &Vectors::to_le_bytes(&vectors))
            .map_err(io)?;
    }
    emit(out, "result", serde_json::json!({"chunks": total, "dim": dim, "embedder": embedder.id()})).map_err(io)
}

/// The job runner of every embedder (the `soramai` CLI's `job-runner`, the Python and Node
/// bindings, `examples/embed.rs`): the core's kinds plus `fine_tune` and `ingest`. Returns the
/// process exit code.
pub fn job_runner_main(args: &[String]) -> i32 {
    let kinds: [(&str, soramai_core::jobs::runner::KindHandler); 2] =
        [("fine_tune", crate::finetune::run_job), ("ingest", run_job)];
    soramai_core::jobs::runner::main_with(args, &kinds)
}

impl crate::Platform {
    /// Queues an ingestion of `docs` into one of the caller's corpora (rag scope, a tier with
    /// RAG) and returns its job at once: the documents are checked and cut now, against the
    /// tier's bounds on bytes and chunks per request, and queued only while the tenant has fewer
    /// ingestions queued or running than its tier allows (`rate_limit_exceeded` beyond).
    pub fn start_ingestion(
        &self,
        principal: &soramai_core::Principal,
        corpus: &str,
        docs: &[soramai_rag::Document],
    ) -> Result<Job, crate::PlatformError> {
        let corpus = soramai_rag::CorpusId::new(corpus).map_err(|_| soramai_rag::Error::CorpusNotFound)?;
        let rag = self.rag()?;
        let batch = rag.prepare(principal, &corpus, docs)?;
        let input = Zeroizing::new(batch.encode()?);
        let embedder = match rag.embedder() {
            Some(_) => self.engines().embedding_model()?,
            None => None,
        };
        let spec = soramai_core::IngestSpec {
            corpus: corpus.as_str().to_owned(),
            documents: batch.documents.len() as u64,
            chunks: batch.chunks() as u64,
            embedder,
        };
        let job = self.core.submit_ingest(principal, spec, &input, rag.max_concurrent(principal)?)?;
        self.core.record_access(principal, &format!("rag:{}", corpus.as_str()), "ingest", None)?;
        Ok(job)
    }

    /// One of the caller's ingestions into `corpus` (rag scope).
    pub fn ingestion(
        &self,
        principal: &soramai_core::Principal,
        corpus: &str,
        id: &str,
    ) -> Result<Job, crate::PlatformError> {
        let not_found = || crate::PlatformError::from(soramai_core::Error::NotFound { kind: "ingestion" });
        let id = soramai_core::JobId::new(id).map_err(|_| not_found())?;
        principal.require(soramai_core::Scope::Rag)?;
        let job = match self.core.job(principal, &id) {
            Err(soramai_core::Error::NotFound { .. }) | Err(soramai_core::Error::MissingScope(_)) => {
                return Err(not_found());
            }
            other => other?,
        };
        match &job.spec {
            JobSpec::Ingest(spec) if spec.corpus == corpus => Ok(job),
            _ => Err(not_found()),
        }
    }

    /// The caller's ingestions into `corpus`, newest first.
    pub fn ingestions(
        &self,
        principal: &soramai_core::Principal,
        corpus: &str,
    ) -> Result<Vec<Job>, crate::PlatformError> {
        principal.require(soramai_core::Scope::Rag)?;
        Ok(self
            .core
            .list_jobs(principal)?
            .into_iter()
            .filter(|j| matches!(&j.spec, JobSpec::Ingest(s) if s.corpus == corpus))
            .collect())
    }

    /// Cancels one of the caller's ingestions: a queued one never runs, a running one's child is
    /// killed at the worker's next heartbeat; nothing of it is committed.
    pub fn cancel_ingestion(
        &self,
        principal: &soramai_core::Principal,
        corpus: &str,
        id: &str,
    ) -> Result<Job, crate::PlatformError> {
        let job = self.ingestion(principal, corpus, id)?;
        Ok(self.core.cancel_job(principal, &job.id)?)
    }
}
