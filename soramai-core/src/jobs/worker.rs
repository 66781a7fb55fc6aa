//! The worker: claims jobs of one pool and runs each in a dedicated child process.
//!
//! Per job: a private scratch directory (mode 0700) that is removed at the end whatever happens; a
//! child started with a cleared environment, the scratch directory as its working directory and
//! resource limits it applies to itself before reading any input; the job's decrypted input passed
//! through a pipe (never written to disk); events read back as JSON lines. The worker heartbeats the
//! lease while the child runs and kills the child when the job is cancelled or the lease is lost.
//!
//! The child's stdout is JSON lines (`progress`, `metric`, `error`, `result`); a `checkpoint` or
//! `artifact` line announces `bytes` raw bytes that follow it at once. Those bytes (training state,
//! adapter files) stay in memory: a checkpoint is encrypted under the tenant key and stored at
//! once, an artifact when the job succeeds. A resumed job gets its last checkpoint through stdin
//! after the dataset, so nothing of either is ever written to the scratch directory.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::core::Core;
use crate::error::{Error, Result};
use crate::ids::PoolId;
use crate::jobs::{Job, JobSpec, Outcome};

/// Finishes the jobs whose result lives outside the core: an ingestion's chunks go into a RAG
/// index. Given the job, its input, the runner's result and its artifacts; answers the job's
/// result, or a message (no content) that fails it.
pub trait Completion: Send + Sync + std::fmt::Debug {
    /// Completes `job`.
    fn complete(
        &self,
        job: &Job,
        input: &[u8],
        result: serde_json::Value,
        artifacts: &[(String, Zeroizing<Vec<u8>>)],
    ) -> std::result::Result<serde_json::Value, String>;
}

/// The artifacts a job of this kind may hand back, by name.
fn artifact_names(spec: &JobSpec) -> &'static [&'static str] {
    match spec {
        JobSpec::FineTune(_) => &crate::models::ADAPTER_FILES,
        JobSpec::Ingest(_) => &["vectors"],
        JobSpec::Checksum { .. } => &[],
    }
}
use zeroize::Zeroizing;

/// Largest checkpoint or artifact a runner may hand back.
const MAX_BLOB: u64 = 2 << 30;

/// How to start the job runner process (the `soramai-job-runner` binary, or the `soramai` CLI's
/// `job-runner` subcommand), and the limits it is given.
#[derive(Debug, Clone)]
pub struct RunnerCommand {
    /// The program.
    pub program: PathBuf,
    /// Arguments before the runner's own.
    pub args: Vec<String>,
    /// Address-space limit in bytes.
    pub max_memory_bytes: u64,
    /// CPU-time limit in seconds.
    pub max_cpu_seconds: u64,
    /// Open-file limit.
    pub max_open_files: u64,
}

impl RunnerCommand {
    /// A runner at `program` with default limits (4 GiB, 1 hour CPU, 64 files).
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            max_memory_bytes: 4 << 30,
            max_cpu_seconds: 3600,
            max_open_files: 64,
        }
    }
}

/// A worker bound to one pool.
#[derive(Debug)]
pub struct Worker {
    core: Arc<Core>,
    id: String,
    pool: PoolId,
    runner: RunnerCommand,
    lease: Duration,
    completion: Option<Arc<dyn Completion>>,
    stop: Option<Arc<AtomicBool>>,
}

enum ChildMsg {
    Event(serde_json::Value),
    Blob(serde_json::Value, Zeroizing<Vec<u8>>),
    Closed,
}

/// Reads the runner's stdout: JSON lines, each `checkpoint`/`artifact` line followed by its bytes.
fn read_child(stdout: impl Read, tx: &mpsc::Sender<ChildMsg>) {
    let mut r = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.by_ref().take(64 << 10).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') {
            return; // an overlong line: the protocol is broken, stop listening
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else { continue };
        let blob = matches!(v.get("type").and_then(|t| t.as_str()), Some("checkpoint" | "artifact"));
        let msg = if blob {
            let Some(n) = v.pointer("/data/bytes").and_then(|b| b.as_u64()).filter(|&n| n <= MAX_BLOB) else { return };
            let Ok(len) = usize::try_from(n) else { return };
            let mut bytes = Zeroizing::new(vec![0u8; len]);
            if r.read_exact(&mut bytes).is_err() {
                return;
            }
            ChildMsg::Blob(v, bytes)
        } else {
            ChildMsg::Event(v)
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

impl Worker {
    /// A worker named `id` serving `pool`.
    pub fn new(core: Arc<Core>, id: impl Into<String>, pool: PoolId, runner: RunnerCommand) -> Self {
        Self { core, id: id.into(), pool, runner, lease: Duration::from_secs(30), completion: None, stop: None }
    }

    /// Finishes ingestions (and other jobs whose result lives outside the core) through `c`;
    /// without one they fail.
    pub fn with_completion(mut self, c: Arc<dyn Completion>) -> Self {
        self.completion = Some(c);
        self
    }

    /// Stops the running job when `stop` is set: its child is killed within 50 ms and the job
    /// goes back to its queue (a fine-tune resumes from its last checkpoint, an ingestion
    /// starts over; neither committed anything half-done).
    pub fn with_stop(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = Some(stop);
        self
    }

    fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst))
    }

    /// Sets the lease length (heartbeats happen every third of it).
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Claims and runs one job; `None` when the pool's queue is empty.
    pub fn run_once(&self) -> Result<Option<Job>> {
        let Some(claim) = self.core.claim_job(&self.id, &self.pool, self.lease)? else {
            return Ok(None);
        };
        let job = claim.job;
        let scratch = self.core.scratch_root().join(format!("{}-{}", job.id.as_str(), job.attempts));
        let outcome = self.run_in_scratch(&job, &scratch);
        // The scratch directory goes whatever happened.
        let _ = std::fs::remove_dir_all(&scratch);
        let outcome = match outcome {
            Ok(o) => o,
            Err(Error::LeaseLost) => return Err(Error::LeaseLost),
            Err(e) => Outcome::Failed(e.to_string()),
        };
        let done = self.core.finish_job(&job.id, &self.id, outcome)?;
        // An ended job needs no checkpoint or input (a lost lease returned above and keeps them
        // for a resume).
        self.core.drop_job_objects(&done)?;
        Ok(Some(done))
    }

    fn run_in_scratch(&self, job: &Job, scratch: &std::path::Path) -> Result<Outcome> {
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o700).create(scratch)?;
        }
        let input = Arc::new(self.core.job_input(job, &self.id)?);
        let feed = self.feed_for(job, &input)?;
        let mut child = self.spawn_runner(scratch)?;
        let stdin = child.stdin.take().ok_or_else(|| Error::Runner("no stdin".into()))?;
        let stdout = child.stdout.take().ok_or_else(|| Error::Runner("no stdout".into()))?;
        let feeder = std::thread::spawn(move || feed.write_to(stdin));
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            read_child(stdout, &tx);
            let _ = tx.send(ChildMsg::Closed);
        });
        let watched = self.watch(job, &mut child, &rx);
        if !matches!(watched, Ok(Watched::Ended(_))) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = feeder.join();
        let _ = reader.join();
        match watched? {
            Watched::Gave(outcome) => Ok(outcome),
            Watched::Released => {
                // The node is going down: the job goes back to its queue (it committed nothing
                // half-done), and this worker no longer holds it.
                self.core.release_job(&job.id, &self.id)?;
                Err(Error::LeaseLost)
            }
            Watched::Ended(ended) => self.finish(job, &input, ended),
        }
    }

    /// What the child reads on its stdin: the header line, the job's input, a resume's checkpoint,
    /// and a customer's own GGUF base (decrypted in memory only; a registered base model is a
    /// public file the child maps by its path).
    fn feed_for(&self, job: &Job, input: &Arc<Zeroizing<Vec<u8>>>) -> Result<Feed> {
        let mut feed =
            Feed { header: serde_json::Value::Null, input: input.clone(), checkpoint: None, custom_base: None };
        feed.header = match &job.spec {
            JobSpec::Checksum { pace_ms, .. } => {
                serde_json::json!({"kind": "checksum", "pace_ms": pace_ms, "input_len": input.len()})
            }
            JobSpec::FineTune(spec) => {
                feed.checkpoint = self.core.job_checkpoint(job, &self.id)?;
                let mut header = serde_json::json!({
                    "kind": "fine_tune",
                    "input_len": input.len(),
                    "checkpoint_len": feed.checkpoint.as_ref().map_or(0, |c| c.len()),
                    "base_model": spec.base_model.as_str(),
                    "hyperparameters": spec.hyperparameters,
                });
                if crate::models::is_custom_model(&spec.base_model) {
                    let reader = self.core.custom_model_reader(&job.tenant, &spec.base_model)?;
                    header["base_model_len"] = reader.len().into();
                    feed.custom_base = Some(reader);
                } else {
                    header["base_model_path"] = serde_json::json!(self.core.base_model(&spec.base_model)?.path);
                }
                header
            }
            JobSpec::Ingest(spec) => {
                let mut header = serde_json::json!({"kind": "ingest", "input_len": input.len(), "chunks": spec.chunks});
                if let Some(base) = &spec.embedder {
                    header["base_model_path"] = serde_json::json!(self.core.base_model(base)?.path);
                }
                header
            }
        };
        Ok(feed)
    }

    /// Starts the runner: a cleared environment, the scratch directory as its working directory,
    /// the resource limits as arguments it applies to itself before reading anything.
    fn spawn_runner(&self, scratch: &std::path::Path) -> Result<std::process::Child> {
        Command::new(&self.runner.program)
            .args(&self.runner.args)
            .arg("--max-memory-bytes")
            .arg(self.runner.max_memory_bytes.to_string())
            .arg("--max-cpu-seconds")
            .arg(self.runner.max_cpu_seconds.to_string())
            .arg("--max-open-files")
            .arg(self.runner.max_open_files.to_string())
            .env_clear()
            .current_dir(scratch)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::Runner(format!("cannot start the job runner: {e}")))
    }

    /// Follows the child until it exits: stores its checkpoints, records its progress and
    /// metrics, keeps its artifacts and result, heartbeats the lease (a cancel kills the child),
    /// and gives the job back when the worker stops. The caller kills the child on anything but
    /// its own exit.
    fn watch(&self, job: &Job, child: &mut std::process::Child, rx: &mpsc::Receiver<ChildMsg>) -> Result<Watched> {
        let beat = self.lease / 3;
        let mut next_beat = Instant::now() + beat;
        let mut ended = Ended::default();
        let mut closed = false;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(ChildMsg::Blob(ev, bytes)) => {
                    let data = ev.get("data").cloned().unwrap_or(serde_json::Value::Null);
                    if ev.get("type").and_then(|t| t.as_str()) == Some("artifact") {
                        let name = data.get("name").and_then(|n| n.as_str()).unwrap_or_default();
                        if artifact_names(&job.spec).contains(&name) && !ended.artifacts.iter().any(|(n, _)| n == name)
                        {
                            ended.artifacts.push((name.to_owned(), bytes));
                        }
                        continue;
                    }
                    let num = |k: &str| data.get(k).and_then(|v| v.as_u64());
                    let saved = match (num("step"), num("trained_tokens")) {
                        (Some(step), Some(tokens)) => {
                            self.core.save_job_checkpoint(job, &self.id, step, tokens, &bytes)
                        }
                        _ => Err(Error::Runner("a checkpoint without step and trained_tokens".into())),
                    };
                    match saved {
                        Ok(()) => {}
                        Err(Error::LeaseLost) => return Err(Error::LeaseLost),
                        Err(e) => return Ok(Watched::Gave(Outcome::Failed(e.to_string()))),
                    }
                }
                Ok(ChildMsg::Event(ev)) => match ev.get("type").and_then(|t| t.as_str()) {
                    Some("result") => ended.result = ev.get("data").cloned(),
                    Some("error") => {
                        let msg = ev.pointer("/data/message").and_then(|m| m.as_str()).unwrap_or("the job failed");
                        ended.error = Some(msg.chars().take(1000).collect());
                    }
                    Some(kind @ ("progress" | "metric")) => {
                        let data = ev.get("data").cloned().unwrap_or(serde_json::Value::Null);
                        self.core.report_job_event(&job.id, &self.id, kind, &data)?;
                    }
                    _ => {}
                },
                Ok(ChildMsg::Closed) => closed = true,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => closed = true,
            }
            if self.stopping() {
                return Ok(Watched::Released);
            }
            if Instant::now() >= next_beat {
                next_beat = Instant::now() + beat;
                if self.core.heartbeat(&job.id, &self.id, self.lease)? {
                    ended.cancelled = true;
                    let _ = child.kill();
                }
            }
            if closed && let Some(status) = child.try_wait()? {
                ended.status = Some(status);
                return Ok(Watched::Ended(ended));
            }
        }
    }

    /// The outcome of a child that exited: a fine-tune's adapter stored, an ingestion indexed
    /// through the worker's [`Completion`], or why it failed.
    fn finish(&self, job: &Job, input: &[u8], ended: Ended) -> Result<Outcome> {
        if ended.cancelled {
            return Ok(Outcome::Cancelled);
        }
        let status = ended.status.ok_or_else(|| Error::Runner("the job runner's status is unknown".into()))?;
        // The result is stored only if no cancel was asked for; once its commit has begun, no
        // cancel is accepted (a cancel asked for while the child ran still stops it here).
        if status.success() && ended.result.is_some() && !self.core.begin_commit(&job.id, &self.id)? {
            return Ok(Outcome::Cancelled);
        }
        match (status.success(), ended.result) {
            (true, Some(r)) => match &job.spec {
                JobSpec::FineTune(spec) => {
                    match self.core.complete_fine_tune(job, &self.id, spec, r, &ended.artifacts) {
                        Ok(r) => Ok(Outcome::Succeeded(r)),
                        Err(Error::LeaseLost) => Err(Error::LeaseLost),
                        Err(e) => Ok(Outcome::Failed(e.to_string())),
                    }
                }
                JobSpec::Ingest(_) => {
                    let Some(completion) = &self.completion else {
                        return Ok(Outcome::Failed("this worker cannot index ingestions".into()));
                    };
                    // The lease was checked as the commit began (a re-run replaces the same
                    // documents, so indexing twice after a lost lease does no harm).
                    match completion.complete(job, input, r, &ended.artifacts) {
                        Ok(r) => Ok(Outcome::Succeeded(r)),
                        Err(e) => Ok(Outcome::Failed(e)),
                    }
                }
                JobSpec::Checksum { .. } => Ok(Outcome::Succeeded(r)),
            },
            (true, None) => Ok(Outcome::Failed("the job runner ended without a result".into())),
            (false, _) => Ok(Outcome::Failed(match (ended.error, status.code()) {
                (Some(e), _) => e,
                (None, Some(c)) => format!("the job runner exited with status {c}"),
                (None, None) => "the job runner was killed by a signal (resource limit?)".into(),
            })),
        }
    }
}

/// What a job's child reads on its stdin.
struct Feed {
    header: serde_json::Value,
    input: Arc<Zeroizing<Vec<u8>>>,
    checkpoint: Option<Zeroizing<Vec<u8>>>,
    custom_base: Option<crate::core::ObjectReader>,
}

impl Feed {
    /// Writes it all (a customer's GGUF in 1 MiB pieces); ends with the pipe.
    fn write_to(self, mut stdin: std::process::ChildStdin) -> std::io::Result<()> {
        stdin.write_all(self.header.to_string().as_bytes())?;
        stdin.write_all(b"\n")?;
        stdin.write_all(&self.input)?;
        if let Some(c) = &self.checkpoint {
            stdin.write_all(c)?;
        }
        if let Some(model) = &self.custom_base {
            const PIECE: u64 = 1 << 20;
            let mut at = 0;
            while at < model.len() {
                let n = PIECE.min(model.len() - at);
                stdin.write_all(&model.read_range(at, n as usize).map_err(std::io::Error::other)?)?;
                at += n;
            }
        }
        stdin.flush()
    }
}

/// How following a child ended.
enum Watched {
    /// The child exited by itself (or after a cancel killed it).
    Ended(Ended),
    /// The job ends now with this outcome (the child is to be killed).
    Gave(Outcome),
    /// The worker is stopping: the job goes back to its queue (the child is to be killed).
    Released,
}

/// What an exited child left.
#[derive(Default)]
struct Ended {
    status: Option<std::process::ExitStatus>,
    result: Option<serde_json::Value>,
    error: Option<String>,
    artifacts: Vec<(String, Zeroizing<Vec<u8>>)>,
    cancelled: bool,
}
