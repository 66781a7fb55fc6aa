//! How a platform is opened and runs: [`PlatformOptions`] and [`OpenOptions`].

use std::time::Duration;

use serde::Deserialize;
use soramai_core::RunnerCommand;
use soramai_kernels::Precision;

/// How a [`Platform`] runs.
#[derive(Clone, Debug)]
pub struct PlatformOptions {
    /// The program that runs jobs in child processes (`soramai job-runner`); without one this
    /// process runs no jobs (another process's workers may).
    pub runner: Option<RunnerCommand>,
    /// Job worker threads (each runs one job at a time in its own child process).
    pub workers: usize,
    /// Most requests in one forward pass.
    pub max_batch: usize,
    /// The inference arithmetic.
    pub precision: Precision,
    /// How often an idle worker looks for a job.
    pub poll: Duration,
    /// Also run the dedicated pools' jobs (Pro tiers and up), each pool on a worker of its own
    /// that no other tenant's job shares. Off for a node that serves the shared pool only.
    pub dedicated_pools: bool,
    /// Most prompt tokens one forward pass prefills, over all prompts: a long prompt arriving
    /// while others decode runs in chunks of this size instead of stalling them.
    pub prefill_chunk: usize,
    /// Bytes of key/value state each base model keeps of its tenants' recent prompts (each
    /// tenant's reused by that tenant only); 0 turns the prefix cache off.
    pub prefix_cache_bytes: usize,
}

impl Default for PlatformOptions {
    fn default() -> Self {
        Self {
            runner: None,
            workers: 1,
            max_batch: 32,
            precision: Precision::Fast,
            poll: Duration::from_millis(200),
            dedicated_pools: true,
            prefill_chunk: soramai_kernels::engine::DEFAULT_PREFILL_CHUNK,
            prefix_cache_bytes: soramai_kernels::engine::DEFAULT_PREFIX_CACHE_BYTES,
        }
    }
}

/// The id a base model gets when none is named.
pub const DEFAULT_MODEL_ID: &str = "smollm2";

/// How [`Platform::open_with`] sets up a platform.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenOptions {
    /// A GGUF file to register as a base model.
    pub model: Option<std::path::PathBuf>,
    /// Its id (default [`DEFAULT_MODEL_ID`]).
    pub model_id: Option<String>,
    /// Job worker threads (default 1).
    pub workers: Option<usize>,
    /// Most requests in one forward pass (default 32).
    pub max_batch: Option<usize>,
    /// The metadata database by URL: `sqlite` (the default: SQLite in the data directory) or
    /// `postgres://user:password@host:5432/db` (the `postgres` feature). Several nodes share one
    /// PostgreSQL, one blob store ([`OpenOptions::blob_store`]) and one root key
    /// (`SORAMAI_ROOT_KEY`, or the same `root.key` in each data directory).
    pub database: Option<String>,
    /// The blob store shared by several nodes: `file:///mnt/shared` or `s3://bucket` (the `s3`
    /// feature); default `<data_dir>/blobs`. See `BlobLocation`.
    pub blob_store: Option<String>,
    /// Largest customer GGUF upload in bytes (default 16 GiB).
    pub max_model_bytes: Option<u64>,
    /// Most prompt tokens one forward pass prefills (default 128; see
    /// [`PlatformOptions::prefill_chunk`]).
    pub prefill_chunk: Option<usize>,
    /// Bytes of each base model's per-tenant prefix cache (default 256 MiB; 0 turns it off).
    pub prefix_cache_bytes: Option<u64>,
}

impl std::fmt::Debug for OpenOptions {
    // The database URL can hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("model", &self.model)
            .field("model_id", &self.model_id)
            .field("workers", &self.workers)
            .field("max_batch", &self.max_batch)
            .field("database", &self.database.as_ref().map(|_| ".."))
            .field("blob_store", &self.blob_store)
            .field("max_model_bytes", &self.max_model_bytes)
            .field("prefill_chunk", &self.prefill_chunk)
            .field("prefix_cache_bytes", &self.prefix_cache_bytes)
            .finish()
    }
}
