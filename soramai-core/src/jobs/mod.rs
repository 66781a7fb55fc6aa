//! Jobs: records, the state machine `queued -> running -> succeeded | failed | cancelled`, progress
//! and metric events, leases with heartbeats (an expired lease requeues the job), cancellation, and
//! pools (a dedicated-pool tenant's jobs are never claimed by a shared-pool worker).
//!
//! [`Worker`] runs each claimed job in a child process; see [`worker`].

mod leases;
pub mod runner;
pub mod worker;

use std::fmt;
use std::time::Duration;

use crate::params;
use crate::store::{Db, OptionalExt as _, Row};
use serde::{Deserialize, Serialize};

use crate::audit::vocabulary::{Action, Actor};
use crate::auth::{Principal, Scope};
use crate::clock::{Millis, millis};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::ids::{DatasetId, JobId, ModelId, ObjectPath, PoolId, TenantId};
use crate::metering::{CREDITS_PER_TRAINED_TOKEN, UsageEvent, UsageKind, UsageStatus};
use crate::tier::ComputePool;

pub(crate) mod state;
pub use state::JobState;
pub use worker::{Completion, RunnerCommand, Worker};

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a job does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobSpec {
    /// Checksums a dataset (SHA-256, lines, bytes): the test job that proves the machinery.
    /// `pace_ms` (at most 1000) sleeps between 64 KiB steps, for demonstrations and crash tests.
    Checksum {
        /// The dataset to read.
        dataset: DatasetId,
        /// Milliseconds to pause per step.
        pace_ms: u64,
    },
    /// Trains a LoRA adapter on a chat dataset over a registered base model; on success the
    /// adapter is stored encrypted and registered as a fine-tuned model id.
    FineTune(FineTuneSpec),
    /// Embeds a batch of documents already cut into chunks (its input, stored encrypted under
    /// the tenant key until the job ends) and indexes them into a corpus: the embedding runs in
    /// the child process, the indexing in the worker through its [`worker::Completion`].
    Ingest(IngestSpec),
}

/// An `ingest` job: where the documents go and how much work they are (counts only; the
/// documents themselves are the job's encrypted input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSpec {
    /// The corpus id.
    pub corpus: String,
    /// Documents added or replaced.
    pub documents: u64,
    /// Chunks to embed and index.
    pub chunks: u64,
    /// The base model whose hidden states embed the chunks; none: BM25 only.
    #[serde(default)]
    pub embedder: Option<ModelId>,
}

/// A `fine_tune` job: the dataset, the base model, and how to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FineTuneSpec {
    /// The training data (chat JSONL), one of the tenant's datasets.
    pub dataset: DatasetId,
    /// A registered base model.
    pub base_model: ModelId,
    /// Part of the model id, `a-z0-9-_`, up to 40 characters.
    #[serde(default)]
    pub suffix: Option<String>,
    /// Training settings.
    #[serde(default)]
    pub hyperparameters: Hyperparameters,
}

/// Training settings of a `fine_tune` job: OpenAI's three (`n_epochs`, `batch_size`,
/// `learning_rate_multiplier`) and the LoRA shape, with the defaults a plain request gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hyperparameters {
    /// Passes over the dataset (1..=50).
    pub n_epochs: u32,
    /// Examples per optimizer step (1..=256).
    pub batch_size: u32,
    /// Multiplies the base learning rate 2e-4 (above 0, at most 10).
    pub learning_rate_multiplier: f64,
    /// LoRA rank (1..=128).
    pub rank: u32,
    /// LoRA alpha (scale = alpha / rank; above 0, at most 1024).
    pub alpha: f64,
    /// PEFT module names: `q_proj k_proj v_proj o_proj gate_proj up_proj down_proj`.
    pub target_modules: Vec<String>,
    /// Longest example in tokens (16..=8192); longer ones are cut and reported.
    pub max_seq: u32,
    /// Initialisation and data order.
    pub seed: u64,
    /// Optimizer steps between encrypted checkpoints (1..=10000).
    pub checkpoint_every: u32,
}

/// The base learning rate that `learning_rate_multiplier` scales.
pub const BASE_LEARNING_RATE: f64 = 2e-4;

/// The projections a LoRA adapter can target.
pub const TARGET_MODULES: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

impl Default for Hyperparameters {
    fn default() -> Self {
        Self {
            n_epochs: 3,
            batch_size: 4,
            learning_rate_multiplier: 1.0,
            rank: 8,
            alpha: 16.0,
            target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"].map(String::from).to_vec(),
            max_seq: 512,
            seed: 0,
            checkpoint_every: 10,
        }
    }
}

impl Hyperparameters {
    /// Checks every range; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidArgument(m.into()));
        if !(1..=50).contains(&self.n_epochs) {
            return bad("n_epochs is 1 to 50");
        }
        if !(1..=256).contains(&self.batch_size) {
            return bad("batch_size is 1 to 256");
        }
        if !(self.learning_rate_multiplier > 0.0 && self.learning_rate_multiplier <= 10.0) {
            return bad("learning_rate_multiplier is above 0 and at most 10");
        }
        if !(1..=128).contains(&self.rank) {
            return bad("rank is 1 to 128");
        }
        if !(self.alpha > 0.0 && self.alpha <= 1024.0) {
            return bad("alpha is above 0 and at most 1024");
        }
        if self.target_modules.is_empty() || self.target_modules.len() > TARGET_MODULES.len() {
            return bad("target_modules names 1 to 7 projections");
        }
        for (i, m) in self.target_modules.iter().enumerate() {
            if !TARGET_MODULES.contains(&m.as_str()) {
                return bad("target_modules may name q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj");
            }
            if self.target_modules[..i].contains(m) {
                return bad("target_modules names a projection twice");
            }
        }
        if !(16..=8192).contains(&self.max_seq) {
            return bad("max_seq is 16 to 8192");
        }
        if !(1..=10_000).contains(&self.checkpoint_every) {
            return bad("checkpoint_every is 1 to 10000");
        }
        Ok(())
    }
}

impl JobSpec {
    fn kind(&self) -> &'static str {
        match self {
            JobSpec::Checksum { .. } => "checksum",
            JobSpec::FineTune(_) => "fine_tune",
            JobSpec::Ingest(_) => "ingest",
        }
    }

    /// The scope that submits, reads and cancels jobs of this kind.
    pub fn scope(&self) -> Scope {
        match self {
            JobSpec::Checksum { .. } | JobSpec::FineTune(_) => Scope::Train,
            JobSpec::Ingest(_) => Scope::Rag,
        }
    }

    fn to_stored(&self) -> Result<serde_json::Value> {
        Ok(match self {
            JobSpec::Checksum { dataset, pace_ms } => {
                serde_json::json!({"dataset": dataset.as_str(), "pace_ms": pace_ms})
            }
            JobSpec::FineTune(spec) => serde_json::to_value(spec)?,
            JobSpec::Ingest(spec) => serde_json::to_value(spec)?,
        })
    }

    fn from_stored(kind: &str, spec: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(spec)?;
        match kind {
            "checksum" => Ok(JobSpec::Checksum {
                dataset: DatasetId::new(v.get("dataset").and_then(|d| d.as_str()).unwrap_or_default())?,
                pace_ms: v.get("pace_ms").and_then(|p| p.as_u64()).unwrap_or(0),
            }),
            "fine_tune" => Ok(JobSpec::FineTune(serde_json::from_value(v)?)),
            "ingest" => Ok(JobSpec::Ingest(serde_json::from_value(v)?)),
            other => Err(Error::InvalidArgument(format!("unknown job kind {other:?}"))),
        }
    }

    /// The dataset the job reads (an ingestion reads its own input instead).
    pub fn dataset(&self) -> Option<&DatasetId> {
        match self {
            JobSpec::Checksum { dataset, .. } => Some(dataset),
            JobSpec::FineTune(spec) => Some(&spec.dataset),
            JobSpec::Ingest(_) => None,
        }
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    /// `job-<hex>`.
    pub id: JobId,
    /// Owner.
    pub tenant: TenantId,
    /// What it does.
    pub spec: JobSpec,
    /// Where it may run.
    pub pool: PoolId,
    /// State.
    pub state: JobState,
    /// 0..=1.
    pub progress: f64,
    /// Claims so far.
    pub attempts: u32,
    /// Claims allowed before an expired lease fails the job.
    pub max_attempts: u32,
    /// Whether cancellation was asked for while running.
    pub cancel_requested: bool,
    /// The result, when succeeded.
    pub result: Option<serde_json::Value>,
    /// The error, when failed.
    pub error: Option<String>,
    /// Submitted, Unix ms.
    pub created_at: Millis,
    /// Ended, Unix ms.
    pub finished_at: Option<Millis>,
}

/// A progress or metric event of a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobEvent {
    /// 1-based order.
    pub seq: u64,
    /// When, Unix ms.
    pub at: Millis,
    /// `progress`, `metric`, `state`.
    pub kind: String,
    /// Event data (numbers and states; never content).
    pub data: serde_json::Value,
}

const JOB_COLUMNS: &str = "id, tenant_id, kind, spec, pool, state, progress, attempts, max_attempts, cancel_requested, result, error, created_at, finished_at";

fn job_from_row(r: &Row) -> Result<Result<Job>> {
    let id: String = r.get(0)?;
    let tenant: String = r.get(1)?;
    let kind: String = r.get(2)?;
    let spec: String = r.get(3)?;
    let pool: String = r.get(4)?;
    let state: String = r.get(5)?;
    let result: Option<String> = r.get(10)?;
    let progress: f64 = r.get(6)?;
    let attempts: u32 = r.get(7)?;
    let max_attempts: u32 = r.get(8)?;
    let cancel: bool = r.get(9)?;
    let error: Option<String> = r.get(11)?;
    let created_at: Millis = r.get(12)?;
    let finished_at: Option<Millis> = r.get(13)?;
    Ok((|| {
        Ok(Job {
            id: JobId::new(id)?,
            tenant: TenantId::new(tenant)?,
            spec: JobSpec::from_stored(&kind, &spec)?,
            pool: PoolId::new(pool)?,
            state: JobState::parse(&state)?,
            progress,
            attempts,
            max_attempts,
            cancel_requested: cancel,
            result: result.map(|s| serde_json::from_str(&s)).transpose()?,
            error,
            created_at,
            finished_at,
        })
    })())
}

/// A worker's claim on a job: the job and the inputs it may see.
#[derive(Debug)]
pub struct Claim {
    /// The job.
    pub job: Job,
    /// The lease's expiry, Unix ms.
    pub lease_expires_at: Millis,
}

/// How a job ended, as a worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Success with a result.
    Succeeded(serde_json::Value),
    /// Failure with a message (no content).
    Failed(String),
    /// Stopped on request.
    Cancelled,
}

/// How long a cancel waits for a job that is storing its result to end, to answer with its final
/// state.
pub const COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Core {
    /// Submits a job (train scope). Its pool follows the tenant's tier, or the key's pool binding.
    pub fn submit_job(&self, principal: &Principal, spec: JobSpec) -> Result<Job> {
        principal.require(spec.scope())?;
        let tenant = self.tenant(principal.tenant())?;
        match &spec {
            JobSpec::Checksum { dataset, pace_ms } => {
                // The input must be the submitter's own.
                self.dataset(principal, dataset)?;
                if *pace_ms > 1000 {
                    return Err(Error::InvalidArgument("pace_ms is at most 1000".into()));
                }
            }
            JobSpec::FineTune(ft) => {
                self.dataset(principal, &ft.dataset)?;
                let balance = self.balance(&tenant.id)?;
                if balance < CREDITS_PER_TRAINED_TOKEN {
                    return Err(Error::InsufficientCredits { balance, needed: CREDITS_PER_TRAINED_TOKEN });
                }
                self.check_base_for(&tenant.id, &ft.base_model)?;
                if let Some(s) = &ft.suffix {
                    crate::models::check_suffix(s)?;
                }
                ft.hyperparameters.validate()?;
            }
            JobSpec::Ingest(_) => {
                return Err(Error::InvalidArgument("an ingestion is submitted with its documents".into()));
            }
        }
        let pool = self.job_pool(principal, &tenant);
        let id = JobId::generate();
        let spec_json = spec.to_stored()?;
        self.write(|tx| self.insert_job_tx(tx, principal, &tenant.id, &id, &spec, &spec_json, &pool))?;
        self.job_by_id(&id)
    }

    fn job_pool(&self, principal: &Principal, tenant: &crate::Tenant) -> PoolId {
        match (principal.pool(), tenant.tier.policy().compute) {
            (Some(p), _) => p.clone(),
            (None, ComputePool::Shared) => PoolId::shared(),
            (None, ComputePool::Dedicated) => PoolId::dedicated_for(&tenant.id),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_job_tx(
        &self,
        tx: &Db<'_>,
        principal: &Principal,
        tenant: &TenantId,
        id: &JobId,
        spec: &JobSpec,
        spec_json: &serde_json::Value,
        pool: &PoolId,
    ) -> Result<()> {
        tx.execute(
            "INSERT INTO jobs (id, tenant_id, kind, spec, pool, state, max_attempts, created_at) VALUES (?1, ?2, ?3, ?4, ?5, 'queued', 3, ?6)",
            params![id.as_str(), tenant.as_str(), spec.kind(), spec_json.to_string(), pool.as_str(), self.now()],
        )?;
        self.audit_tx(
            tx,
            tenant,
            principal.actor(),
            Action::JobSubmitted,
            id.as_str(),
            serde_json::json!({"kind": spec.kind(), "pool": pool.as_str()}),
        )
    }

    /// Submits an ingestion (rag scope): `input` (the documents cut into chunks, as the RAG layer
    /// encodes them) is stored encrypted under the tenant key in the same transaction that queues
    /// the job, and goes when the job ends. At most `max_concurrent` of the tenant's ingestions
    /// are queued or running at once ([`Error::Busy`] beyond).
    pub fn submit_ingest(
        &self,
        principal: &Principal,
        spec: IngestSpec,
        input: &[u8],
        max_concurrent: u32,
    ) -> Result<Job> {
        principal.require(Scope::Rag)?;
        let tenant = self.tenant(principal.tenant())?;
        if let Some(base) = &spec.embedder {
            self.base_model(base)?;
        }
        let pool = self.job_pool(principal, &tenant);
        let id = JobId::generate();
        let spec = JobSpec::Ingest(spec);
        let spec_json = spec.to_stored()?;
        self.put_object_with(&tenant.id, &input_path(&id)?, input, |tx| {
            let open: i64 = tx.query_row(
                "SELECT COUNT(*) FROM jobs WHERE tenant_id = ?1 AND kind = 'ingest' AND state IN ('queued', 'running')",
                [tenant.id.as_str()],
                |r| r.get(0),
            )?;
            if open >= i64::from(max_concurrent) {
                return Err(Error::Busy { what: "ingestions", limit: max_concurrent });
            }
            self.insert_job_tx(tx, principal, &tenant.id, &id, &spec, &spec_json, &pool)
        })?;
        self.job_by_id(&id)
    }

    pub(crate) fn job_by_id(&self, id: &JobId) -> Result<Job> {
        self.read(|c| {
            c.query_row(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"), [id.as_str()], job_from_row)
                .optional()
        })?
        .ok_or(Error::NotFound { kind: "job" })?
    }

    /// One of the principal's tenant's jobs.
    /// Needs the scope of the job's kind ([`JobSpec::scope`]).
    pub fn job(&self, principal: &Principal, id: &JobId) -> Result<Job> {
        if !principal.has(Scope::Train) && !principal.has(Scope::Rag) {
            return Err(Error::MissingScope(Scope::Train));
        }
        let job = match self.job_by_id(id) {
            Err(Error::InvalidArgument(_)) => return Err(Error::NotFound { kind: "job" }),
            other => other?,
        };
        if &job.tenant != principal.tenant() {
            return Err(Error::NotFound { kind: "job" });
        }
        principal.require(job.spec.scope())?;
        Ok(job)
    }

    /// The principal's tenant's jobs, newest first.
    /// Those of kinds whose scope the principal holds (train or rag, at least one).
    pub fn list_jobs(&self, principal: &Principal) -> Result<Vec<Job>> {
        if !principal.has(Scope::Rag) {
            principal.require(Scope::Train)?;
        }
        let jobs: Vec<Job> = self.read(|c| {
            let rows = c.query_map(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = ?1 ORDER BY created_at DESC, id"),
                [principal.tenant().as_str()],
                job_from_row,
            )?;
            rows.into_iter().collect()
        })?;
        Ok(jobs.into_iter().filter(|j| principal.has(j.spec.scope())).collect())
    }

    /// A job's events, oldest first.
    pub fn job_events(&self, principal: &Principal, id: &JobId) -> Result<Vec<JobEvent>> {
        self.job(principal, id)?;
        self.read(|c| {
            let rows = c.query_map(
                "SELECT seq, at, kind, data FROM job_events WHERE job_id = ?1 ORDER BY seq",
                [id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<String>(3)?)),
            )?;
            rows.into_iter()
                .map(|(seq, at, kind, data)| Ok(JobEvent { seq, at, kind, data: serde_json::from_str(&data)? }))
                .collect()
        })
    }

    /// Cancels a job: a queued one at once, a running one as soon as its worker's next heartbeat
    /// sees the request (or its lease expires).
    ///
    /// A cancel is accepted, and the job then ends `cancelled` (a fine-tune keeps no model and is
    /// billed for the tokens of its checkpoints only), while the job is queued or running and its
    /// worker has not begun to store its result. A job that ended, or whose result is being
    /// stored, is not cancelled: [`Error::InvalidJobState`] with its final state (after waiting
    /// up to [`COMMIT_WAIT`] for a commit under way to end).
    pub fn cancel_job(&self, principal: &Principal, id: &JobId) -> Result<Job> {
        let job = self.job(principal, id)?;
        if job.state.is_terminal() {
            return Err(Error::InvalidJobState { state: job.state, action: "cancel" });
        }
        let now = self.now();
        let accepted = self.write(|tx| {
            let dropped = tx.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?2 WHERE id = ?1 AND state = 'queued'",
                params![id.as_str(), now],
            )?;
            if dropped == 1 {
                self.audit_tx(
                    tx,
                    &job.tenant,
                    principal.actor(),
                    Action::JobCancelled,
                    id.as_str(),
                    serde_json::json!({}),
                )?;
                return Ok(true);
            }
            // A running job takes a cancel until its worker begins to commit its result.
            let asked = tx.execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE id = ?1 AND state = 'running' AND committing = 0",
                [id.as_str()],
            )?;
            Ok(asked == 1)
        })?;
        if !accepted {
            // It ended, or is storing its result: the answer is its final state, never an
            // accepted cancel that a success then overrides.
            let deadline = std::time::Instant::now() + COMMIT_WAIT;
            loop {
                let job = self.job_by_id(id)?;
                if job.state.is_terminal() || std::time::Instant::now() >= deadline {
                    return Err(Error::InvalidJobState { state: job.state, action: "cancel" });
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let job = self.job_by_id(id)?;
        // A job that never ran keeps nothing (an ingestion's input goes with it).
        if job.state.is_terminal() {
            self.drop_job_objects(&job)?;
        }
        Ok(job)
    }

    fn add_event(&self, tx: &Db<'_>, job: &JobId, kind: &str, data: &serde_json::Value) -> Result<()> {
        tx.execute(
            "INSERT INTO job_events (job_id, seq, at, kind, data)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM job_events WHERE job_id = ?1), ?2, ?3, ?4)",
            params![job.as_str(), self.now(), kind, data.to_string()],
        )?;
        Ok(())
    }
}

/// Where an ingestion's input waits, encrypted, while the job is queued or running.
fn input_path(job: &JobId) -> Result<ObjectPath> {
    ObjectPath::new(format!("jobs/{}/input", job.as_str()))
}

fn checkpoint_path(job: &JobId) -> Result<ObjectPath> {
    ObjectPath::new(format!("jobs/{}/checkpoint", job.as_str()))
}
