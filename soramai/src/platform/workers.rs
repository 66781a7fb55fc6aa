//! The job workers' loops: the shared pool's, and a supervisor giving each dedicated pool its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use soramai_core::{PoolId, RunnerCommand, Worker};

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
        .with_completion(Arc::new(crate::ingest::Indexer(engines.clone())))
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
