//! The job workers' loops: the shared pool's, and a supervisor giving each dedicated pool its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use soramai_core::{Completion, Job, JobSpec, PoolId, RunnerCommand, Worker};
use soramai_rag::{Batch, Vectors};
use zeroize::Zeroizing;

use super::Engines;

/// A worker that indexes ingestions into the platform's corpora and gives its job back when the
/// platform stops.
pub(super) fn new_worker(
    engines: &Arc<Engines>,
    name: String,
    pool: PoolId,
    runner: &RunnerCommand,
    stop: &Arc<AtomicBool>,
) -> Worker {
    Worker::new(engines.core.clone(), name, pool, runner.clone())
        .with_completion(Arc::new(Indexer(engines.clone())))
        .with_stop(stop.clone())
}

pub(super) fn work(worker: &Worker, stop: &AtomicBool, poll: Duration) {
    while !stop.load(Ordering::SeqCst) {
        match worker.run_once() {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => std::thread::sleep(poll),
        }
    }
}

/// Starts a worker for each dedicated pool with queued jobs (one per pool at a time) and lets it
/// run until its pool's queue is empty; joins them all when the platform stops.
pub(super) fn supervise_dedicated(
    engines: &Arc<Engines>,
    runner: &RunnerCommand,
    stop: &Arc<AtomicBool>,
    poll: Duration,
) {
    let core = &engines.core;
    let mut running: HashMap<PoolId, JoinHandle<()>> = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        running.retain(|_, h| !h.is_finished());
        for pool in core.queued_pools().unwrap_or_default() {
            if pool.is_shared() || running.contains_key(&pool) {
                continue;
            }
            let name = format!("worker-{}-{}", std::process::id(), pool.as_str());
            let worker = new_worker(engines, name, pool.clone(), runner, stop);
            let stop = stop.clone();
            let spawned = std::thread::Builder::new()
                .name("soramai-dedicated-worker".into())
                .spawn(move || while !stop.load(Ordering::SeqCst) && matches!(worker.run_once(), Ok(Some(_))) {});
            if let Ok(h) = spawned {
                running.insert(pool, h);
            }
        }
        std::thread::sleep(poll);
    }
    for (_, h) in running {
        let _ = h.join();
    }
}

/// Indexes a finished ingestion's chunks and vectors into the platform's corpus.
#[derive(Debug)]
pub(crate) struct Indexer(pub(crate) Arc<Engines>);

impl Completion for Indexer {
    fn complete(
        &self,
        job: &Job,
        input: &[u8],
        result: serde_json::Value,
        artifacts: &[(String, Zeroizing<Vec<u8>>)],
    ) -> Result<serde_json::Value, String> {
        let JobSpec::Ingest(spec) = &job.spec else {
            return Err("not an ingestion".into());
        };
        let batch = Batch::decode(input).map_err(|e| e.to_string())?;
        let chunks = batch.chunks();
        let count = |k: &str| result.get(k).and_then(|v| v.as_u64()).and_then(|n| usize::try_from(n).ok());
        if count("chunks") != Some(chunks) {
            return Err(format!("the runner embedded {:?} chunks of {chunks}", count("chunks")));
        }
        let dim = count("dim").unwrap_or(0);
        let vectors = match (result.get("embedder").and_then(|e| e.as_str()), dim, chunks) {
            (Some(embedder), d, n) if d > 0 && n > 0 => {
                let bytes = artifacts
                    .iter()
                    .find(|(name, _)| name == "vectors")
                    .map(|(_, b)| b)
                    .ok_or("the runner sent no vectors")?;
                Some(Vectors::from_le_bytes(embedder, d, n, bytes).map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        // An ingestion queued with an embedder is indexed with its vectors or not at all.
        if spec.embedder.is_some() && chunks > 0 && vectors.is_none() {
            return Err("the runner sent no vectors for an ingestion with an embedder".into());
        }
        let rag = self.0.rag().map_err(|e| e.to_string())?;
        let report = rag.commit(&job.tenant, &batch, vectors.as_ref()).map_err(|e| e.to_string())?;
        Ok(serde_json::json!({
            "corpus": spec.corpus,
            "documents": report.documents,
            "chunks": report.chunks,
            "embedded": vectors.is_some(),
        }))
    }
}
