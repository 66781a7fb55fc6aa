//! The `soramai` command-line tool.
//!
//! - `soramai quickstart [--data-dir DIR]`: runs what exists of the pipeline on the embedded
//!   default (SQLite + local encrypted blobs) in a data directory it creates.
//! - `soramai train --model M.gguf --data train.jsonl --out DIR`: trains a LoRA adapter on the
//!   quantized model with a progress bar, and writes the PEFT adapter, `training.json` and a loss
//!   curve (`loss.svg`) to DIR.
//! - `soramai job-runner [limits]`: the child process a worker runs each job in.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod conn;
mod dashboard;
mod http;
mod operator;
mod passkeys;
mod sso;
mod web;

use clap::{Parser, Subcommand};
use soramai::core::crypto::envelope;
use soramai::kernels;
use soramai::{
    Core, JobSpec, KeyOptions, ModelId, PoolId, Principal, RunnerCommand, Scope, SecretName, TenantId, Tier, Worker,
};

#[derive(Parser, Debug)]
#[command(name = "soramai", version, about = "Soramai: a private fine-tune-and-serve platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// A PEFT adapter, its base and the GGUF to write (`merge`, `export-lora`).
#[derive(clap::Args, Debug)]
struct AdapterFiles {
    /// GGUF base model the adapter was trained on.
    #[arg(long)]
    model: PathBuf,
    /// PEFT adapter directory.
    #[arg(long)]
    adapter: PathBuf,
    /// Output GGUF path.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a tenant and a key, store a dataset encrypted and read it back, run a job in an
    /// isolated child process, meter usage, and verify the audit log.
    Quickstart {
        /// Data directory (created, mode 0700).
        #[arg(long, default_value = ".soramai-data")]
        data_dir: PathBuf,
        /// The GGUF base model: with it the quickstart also fine-tunes an adapter, chats with it
        /// and answers a question grounded in the indexed documents.
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Print the token ids of TEXT as a JSON array.
    Tokenize {
        /// GGUF model file.
        #[arg(long)]
        model: PathBuf,
        /// Treat special-token text (`<|im_start|>`) as plain text.
        #[arg(long)]
        no_special: bool,
        /// The text.
        text: String,
    },
    /// Generate text and print `{"prompt_ids", "output_ids", "text"}` as JSON.
    Generate(GenerateArgs),
    /// Write the last position's full-vocabulary logits as a float32 .npy file.
    Logits {
        /// GGUF model file.
        #[arg(long)]
        model: PathBuf,
        /// PEFT adapter directory.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Treat special-token text as plain text.
        #[arg(long)]
        no_special: bool,
        /// `fast` (8-bit activations) or `exact` (f32 on dequantized weights).
        #[arg(long, default_value = "fast")]
        precision: String,
        /// The prompt (raw text).
        #[arg(long)]
        prompt: String,
        /// Output .npy path.
        #[arg(long)]
        out: PathBuf,
    },
    /// Train a LoRA adapter on a chat JSONL dataset (OpenAI fine-tuning format) and write it in
    /// PEFT layout, with `training.json` and a loss curve `loss.svg`, to DIR.
    Train(TrainArgs),
    /// Merge a PEFT adapter into its base model and write a standalone GGUF.
    Merge {
        #[command(flatten)]
        files: AdapterFiles,
        /// `f16` (every weight matrix F16) or `base` (merged projections requantized to the base's
        /// format, the rest copied).
        #[arg(long, default_value = "base")]
        r#type: String,
    },
    /// Write a PEFT adapter as a llama.cpp LoRA GGUF (`llama-server --lora FILE`).
    ExportLora(AdapterFiles),
    /// Serve the OpenAI-compatible API. On a fresh data directory: creates it, registers the
    /// model, and prints a bootstrap admin key once.
    Serve(ServeArgs),
    /// Back up a data directory (its SQLite metadata and every encrypted object) to a target:
    /// `file:///path` or `s3://bucket`. Incremental; nothing in it opens without the root key.
    /// `backup verify --from URL` re-reads a snapshot; `backup list --from URL` lists them.
    Backup(BackupArgs),
    /// Restore a snapshot (the latest by default) into a fresh data directory, with the root key
    /// the backup was taken under, and verify every tenant's audit chain.
    Restore {
        /// The backup target.
        #[arg(long)]
        from: String,
        /// The data directory to create.
        #[arg(long)]
        data_dir: PathBuf,
        /// A snapshot id (default: the latest).
        #[arg(long)]
        snapshot: Option<String>,
        /// The root key file (64 hex digits); default: the SORAMAI_ROOT_KEY environment variable.
        /// A file is copied into the new data directory as its `root.key`.
        #[arg(long)]
        root_key_file: Option<PathBuf>,
    },
    /// Run one job from stdin (started by a worker; not for interactive use).
    #[command(hide = true, disable_help_flag = true)]
    JobRunner {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct BackupArgs {
    #[command(subcommand)]
    action: Option<BackupAction>,
    /// The data directory to back up.
    #[arg(long, default_value = ".soramai-data")]
    data_dir: PathBuf,
    /// The target: `file:///path` or `s3://bucket` (registered, so that closing a tenant or
    /// shredding a corpus reaches it).
    #[arg(long)]
    to: Option<String>,
}

#[derive(Subcommand, Debug)]
enum BackupAction {
    /// Re-read a snapshot (default: the latest): manifest, metadata and every object's digest.
    Verify {
        /// The backup target.
        #[arg(long)]
        from: String,
        /// A snapshot id.
        #[arg(long)]
        snapshot: Option<String>,
        /// The root key file; default: SORAMAI_ROOT_KEY.
        #[arg(long)]
        root_key_file: Option<PathBuf>,
    },
    /// List a target's snapshots.
    List {
        /// The backup target.
        #[arg(long)]
        from: String,
        /// The root key file; default: SORAMAI_ROOT_KEY.
        #[arg(long)]
        root_key_file: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Data directory (created, mode 0700).
    #[arg(long, default_value = ".soramai-data")]
    data_dir: PathBuf,
    /// Address to listen on (port 0 picks a free one; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// A GGUF base model to register (under --model-id) if it is not registered yet.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The id the model is served under.
    #[arg(long, default_value = "smollm2-135m-instruct")]
    model_id: String,
    /// Job worker threads (each runs one fine-tuning job at a time, in its own child process).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// The metadata database: `sqlite` (default, in the data directory) or
    /// `postgres://user:password@host:5432/db`, shared by every node. Prefer the
    /// SORAMAI_DATABASE_URL environment variable: other users can read a process's arguments.
    #[arg(long)]
    database_url: Option<String>,
    /// The blob store shared by every node: `file:///mnt/shared` or `s3://bucket` (AWS_*
    /// variables for credentials, region and endpoint); default `<data-dir>/blobs`.
    #[arg(long)]
    blob_store: Option<String>,
    /// Most requests in one forward pass.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Most prompt tokens one forward pass prefills: a long prompt arriving while others decode
    /// runs in chunks of this size instead of stalling them.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=65536))]
    prefill_chunk: u64,
    /// MiB of key/value state each base model keeps of its tenants' recent prompts, each
    /// tenant's reused by that tenant only (0: off).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(0..=1048576))]
    prefix_cache_mib: u64,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Seconds a client has to send a request's whole head once it has begun (slow-loris).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    header_timeout: u64,
    /// Seconds a connection may sit with no request in progress before it is closed.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    idle_timeout: u64,
    /// Most open connections.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: u64,
    /// Most open connections from one client address (0: no such cap, e.g. behind a proxy).
    #[arg(long, default_value_t = 128)]
    max_connections_per_ip: u64,
    /// Largest customer GGUF upload (Pro and up), in bytes.
    #[arg(long, default_value_t = 16 << 30)]
    max_model_bytes: u64,
    /// Let anyone make an account (and a Free tenant they own) at /sign_up. Closed by default:
    /// people join by invitation.
    #[arg(long)]
    open_sign_up: bool,
    /// Password attempts (sign-in, sign-up, invitations) one client address gets in a burst and
    /// back each minute; raise it behind a proxy that sends many people from one address.
    #[arg(long, default_value_t = web::ATTEMPTS_PER_ADDRESS, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    password_attempts_per_minute: u32,
    /// The site's address as people's browsers see it (`https://soramai.example`, or
    /// `http://localhost:8080`): turns on passkey sign-in, bound to that origin.
    #[arg(long)]
    public_url: Option<String>,
    /// Let tenants' single sign-on reach an `http://` provider on a loopback host (a provider on
    /// this machine, tests); otherwise providers are reached over https only.
    #[arg(long)]
    sso_allow_http_loopback: bool,
}

impl ServeArgs {
    fn limits(&self) -> conn::ServeLimits {
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        conn::ServeLimits {
            header_timeout: Duration::from_secs(self.header_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            max_connections: count(self.max_connections),
            max_connections_per_ip: count(self.max_connections_per_ip),
            ..conn::ServeLimits::default()
        }
    }
}

#[derive(clap::Args, Debug)]
struct GenerateArgs {
    /// GGUF model file.
    #[arg(long)]
    model: PathBuf,
    /// PEFT adapter directory (repeat to load several; the first one is applied).
    #[arg(long)]
    adapter: Vec<PathBuf>,
    /// Render the prompt as the user turn of the model's chat template.
    #[arg(long)]
    chat: bool,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Top-k (0: off).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Top-p.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Min-p.
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Repetition penalty (1: off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// RNG seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// `fast` or `exact`.
    #[arg(long, default_value = "fast")]
    precision: String,
    /// Print JSON (otherwise the text streams to stdout).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// GGUF base model.
    #[arg(long)]
    model: PathBuf,
    /// Chat fine-tuning JSONL (`{"messages": [...]}` per line, optional `weight` on assistant turns).
    #[arg(long)]
    data: PathBuf,
    /// Output directory (adapter_config.json, adapter_model.safetensors, training.json, loss.svg).
    #[arg(long)]
    out: PathBuf,
    /// Optimizer steps (default: `epochs` passes over the data).
    #[arg(long)]
    steps: Option<usize>,
    /// Passes over the data when `--steps` is not given.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Examples per step.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    learning_rate: f32,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// LoRA alpha.
    #[arg(long, default_value_t = 16.0)]
    alpha: f32,
    /// Comma-separated PEFT module names (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj).
    #[arg(long, default_value = "q_proj,k_proj,v_proj,o_proj")]
    targets: String,
    /// Longest example in tokens (longer ones are cut, and reported).
    #[arg(long, default_value_t = 512)]
    max_seq: usize,
    /// Linear warmup steps.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// `linear`, `cosine` or `constant` decay after warmup.
    #[arg(long, default_value = "linear")]
    schedule: String,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f32,
    /// Seed (initialisation and data order).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Recompute each layer in the backward pass instead of keeping its activations.
    #[arg(long)]
    checkpoint_activations: bool,
    /// Name of the base model recorded in adapter_config.json.
    #[arg(long)]
    base_model_name: Option<String>,
}

fn main() -> ExitCode {
    // The one TLS crypto provider (ring) for every rustls client and server in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Tokenize { model, no_special, text } => report(tokenize(&model, no_special, &text)),
        Command::Generate(args) => report(generate(&args)),
        Command::Logits { model, adapter, no_special, precision, prompt, out } => {
            report(logits(&model, adapter.as_deref(), no_special, &precision, &prompt, &out))
        }
        Command::Train(args) => report(train(&args)),
        Command::Merge { files, r#type } => report(merge(&files.model, &files.adapter, &files.out, &r#type)),
        Command::ExportLora(files) => report(export_lora(&files.model, &files.adapter, &files.out)),
        Command::Serve(args) => report(serve(&args)),
        Command::JobRunner { args } => ExitCode::from(u8::try_from(soramai::job_runner_main(&args)).unwrap_or(2)),
        Command::Backup(args) => report(backup(&args)),
        Command::Restore { from, data_dir, snapshot, root_key_file } => {
            report(restore(&from, &data_dir, snapshot.as_deref(), root_key_file.as_deref()))
        }
        Command::Quickstart { data_dir, model } => match quickstart(&data_dir, model.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("quickstart failed: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(a: &ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    std::fs::create_dir_all(&a.data_dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&a.data_dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(http::tls_config(cert, key)?),
        _ => None,
    };
    let runner = RunnerCommand { args: vec!["job-runner".into()], ..RunnerCommand::new(std::env::current_exe()?) };
    let options = soramai::OpenOptions {
        model: a.model.clone(),
        model_id: Some(a.model_id.clone()),
        workers: Some(a.workers),
        max_batch: Some(a.max_batch),
        database: a.database_url.clone().or_else(|| std::env::var("SORAMAI_DATABASE_URL").ok()),
        blob_store: a.blob_store.clone(),
        max_model_bytes: Some(a.max_model_bytes),
        prefill_chunk: Some(a.prefill_chunk as usize),
        prefix_cache_bytes: Some(a.prefix_cache_mib << 20),
    };
    let platform = soramai::Platform::open_with(&a.data_dir, &options, Some(runner))?;
    let mut out = std::io::stdout();
    if let Some(key) = platform.bootstrap_operator()? {
        writeln!(out, "bootstrap admin key (shown once, store it now): {}", key.secret())?;
    }
    let passkeys = a.public_url.as_deref().map(soramai::core::passkeys::PasskeyConfig::new).transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&a.addr).await?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        writeln!(out, "listening on {scheme}://{}", listener.local_addr()?)?;
        out.flush()?;
        let state = http::AppState::new(platform.clone())
            .with_sign_up(a.open_sign_up)
            .with_password_attempts(a.password_attempts_per_minute);
        let state = match passkeys {
            Some(config) => state.with_passkeys(config),
            None => state,
        };
        // Single sign-on needs the address providers send people back to.
        let state = match &a.public_url {
            Some(url) => state.with_sso(sso::SsoOptions {
                redirect: format!("{}/sso/callback", url.trim_end_matches('/')),
                allow_http_loopback: a.sso_allow_http_loopback,
            }),
            None => state,
        };
        http::serve(listener, tls, state, a.limits()).await
    });
    // Blocking work still running (an ingestion stops at its next batch once shutdown began)
    // gets a bounded wait, never an unbounded one.
    rt.shutdown_timeout(SHUTDOWN_TAIL);
    served?;
    platform.shutdown();
    Ok(())
}

/// How long blocking work may run on after the server stopped serving.
const SHUTDOWN_TAIL: std::time::Duration = std::time::Duration::from_secs(10);

/// The root key from a file, or from SORAMAI_ROOT_KEY.
fn root_key(file: Option<&std::path::Path>) -> Result<soramai::LocalRootKey, Box<dyn std::error::Error>> {
    match file {
        Some(f) => Ok(soramai::LocalRootKey::from_file(f)?),
        None if std::env::var_os("SORAMAI_ROOT_KEY").is_some() => {
            Ok(soramai::LocalRootKey::from_env("SORAMAI_ROOT_KEY")?)
        }
        None => Err("the root key: --root-key-file PATH, or SORAMAI_ROOT_KEY (a backup never holds it)".into()),
    }
}

fn backup(a: &BackupArgs) -> Result<(), Box<dyn std::error::Error>> {
    use soramai::core::backup;
    match &a.action {
        Some(BackupAction::Verify { from, snapshot, root_key_file }) => {
            let root = root_key(root_key_file.as_deref())?;
            let info = backup::verify_backup(&backup::open_target(from)?, Arc::new(root), snapshot.as_deref())?;
            println!("{}", serde_json::to_string(&info)?);
        }
        Some(BackupAction::List { from, root_key_file }) => {
            let root = root_key(root_key_file.as_deref())?;
            for info in backup::list_snapshots(backup::open_target(from)?.as_ref(), &root)? {
                println!("{}", serde_json::to_string(&info)?);
            }
        }
        None => {
            let to = a.to.as_deref().ok_or("backup --to URL (file:///path or s3://bucket)")?;
            let core = Core::open_embedded(&a.data_dir)?;
            println!("{}", serde_json::to_string(&core.backup(to)?)?);
        }
    }
    Ok(())
}

fn restore(
    from: &str,
    data_dir: &std::path::Path,
    snapshot: Option<&str>,
    root_file: Option<&std::path::Path>,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = Arc::new(root_key(root_file)?);
    let target = soramai::core::backup::open_target(from)?;
    let config = soramai::Config::new(data_dir, root);
    let (core, report) = soramai::core::backup::restore_backup(target.as_ref(), snapshot, config)?;
    if let Some(file) = root_file {
        // The embedded default finds its root key in the data directory.
        let dest = data_dir.join("root.key");
        std::fs::copy(file, &dest)?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600))?;
    }
    drop(core);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Operator logs on stderr: `SORAMAI_LOG` sets the level (`error`, `warn`, `info` — the default —,
/// `debug`, `off`), `SORAMAI_LOG_FORMAT=json` writes JSON lines. Lines hold ids, routes,
/// statuses, timings and error kinds; never prompt text, file content, names or keys.
fn init_logging() {
    use tracing_subscriber::filter::LevelFilter;
    let level = match std::env::var("SORAMAI_LOG").as_deref() {
        Ok("off") => LevelFilter::OFF,
        Ok("error") => LevelFilter::ERROR,
        Ok("warn") => LevelFilter::WARN,
        Ok("debug") => LevelFilter::DEBUG,
        _ => LevelFilter::INFO,
    };
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(level).with_ansi(false);
    // A second subscriber (none here) would be refused; logging is never a reason to fail.
    let _ = if std::env::var("SORAMAI_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

fn report(r: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn merge(
    model: &std::path::Path,
    adapter: &std::path::Path,
    out: &std::path::Path,
    ty: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let ty: kernels::merge::MergeType = ty.parse()?;
    let m = kernels::Model::load(model)?;
    let a = kernels::lora::Adapter::load(adapter, &m.config)?;
    let w = kernels::merge::merge(&m, &a, ty)?;
    w.write(out)?;
    eprintln!("merged {} into {}", adapter.display(), out.display());
    Ok(())
}

fn export_lora(
    model: &std::path::Path,
    adapter: &std::path::Path,
    out: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let m = kernels::Model::load(model)?;
    let a = kernels::lora::Adapter::load(adapter, &m.config)?;
    kernels::merge::to_llama_lora(&m.config, &a)?.write(out)?;
    eprintln!("wrote {} as a llama.cpp LoRA to {}", adapter.display(), out.display());
    Ok(())
}

/// Largest training file read.
const MAX_TRAIN_FILE: u64 = 1 << 30;

fn train(a: &TrainArgs) -> Result<(), Box<dyn std::error::Error>> {
    use kernels::lora::Target;
    use kernels::train::{AdamW, Schedule, TrainConfig, Trainer, batch_plan};
    use std::io::Read;

    let mut targets = Vec::new();
    for m in a.targets.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        targets.push(Target::from_module(m).ok_or_else(|| format!("unknown target module {m:?}"))?);
    }
    let schedule = match a.schedule.as_str() {
        "linear" => Schedule::Linear,
        "cosine" => Schedule::Cosine,
        "constant" => Schedule::Constant,
        other => return Err(format!("schedule {other:?} is not linear, cosine or constant").into()),
    };
    if a.batch_size == 0 || a.epochs == 0 || a.steps == Some(0) {
        return Err("batch size, epochs and steps must be at least 1".into());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(&a.data)
        .map_err(|e| format!("{}: {e}", a.data.display()))?
        .take(MAX_TRAIN_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_TRAIN_FILE {
        return Err(format!("{} is larger than {MAX_TRAIN_FILE} bytes", a.data.display()).into());
    }
    let conversations = soramai::finetune::parse_chat_jsonl(&bytes)?;
    let engine = kernels::Engine::load(&a.model)?;
    let (examples, data_report) = soramai::finetune::examples(&engine, &conversations, a.max_seq)?;
    eprintln!(
        "{} examples, {} tokens ({} trained), longest {} tokens, {} cut to {}",
        data_report.examples,
        data_report.tokens,
        data_report.trained_tokens,
        data_report.longest,
        data_report.truncated_lines.len(),
        a.max_seq
    );
    let plan = batch_plan(examples.len(), a.batch_size, a.epochs, a.seed);
    let steps = a.steps.unwrap_or(plan.len());
    let config = TrainConfig {
        rank: a.rank,
        alpha: a.alpha,
        targets,
        learning_rate: a.learning_rate,
        adamw: AdamW { weight_decay: a.weight_decay, ..AdamW::default() },
        warmup_steps: a.warmup,
        schedule,
        total_steps: steps,
        max_seq: a.max_seq,
        seed: a.seed,
        checkpoint_activations: a.checkpoint_activations,
        base_model: a.base_model_name.clone(),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(Arc::clone(&engine.model), config)?;
    let bar = indicatif::ProgressBar::new(steps as u64);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} elapsed, eta {eta_precise}]",
    )?);
    let started = Instant::now();
    let mut history = Vec::with_capacity(steps);
    let mut tokens = 0usize;
    for i in 0..steps {
        let batch: Vec<_> = plan[i % plan.len()].iter().map(|&j| examples[j].clone()).collect();
        let s = trainer.step(&batch)?;
        tokens += s.tokens;
        let rate = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("loss {:.4}  {rate:.0} tokens/s", s.loss));
        bar.inc(1);
        history.push(s);
    }
    bar.finish();
    std::fs::create_dir_all(&a.out)?;
    trainer.adapter().save(&a.out, &engine.model.config)?;
    let secs = started.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "config": trainer.config(),
        "data": data_report,
        "steps": history,
        "seconds": secs,
        "tokens_per_second": tokens as f64 / secs.max(1e-9),
    });
    std::fs::write(a.out.join("training.json"), serde_json::to_vec_pretty(&summary)?)?;
    loss_curve(&a.out.join("loss.svg"), &history.iter().map(|s| s.loss).collect::<Vec<_>>())?;
    let first = history.first().map_or(0.0, |s| s.loss);
    let last = history.last().map_or(0.0, |s| s.loss);
    eprintln!(
        "loss {first:.4} -> {last:.4} in {steps} steps, {:.0} tokens/s; adapter in {}",
        tokens as f64 / secs.max(1e-9),
        a.out.display()
    );
    Ok(())
}

/// The training loss per step as an SVG line chart.
fn loss_curve(path: &std::path::Path, losses: &[f32]) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = losses.iter().copied().fold(0f32, f32::max).max(1e-3) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption("training loss", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(1f32..(losses.len().max(2) as f32), 0f32..top)?;
    chart.configure_mesh().x_desc("step").y_desc("loss").draw()?;
    chart.draw_series(LineSeries::new(losses.iter().enumerate().map(|(i, &l)| ((i + 1) as f32, l)), &BLUE))?;
    root.present()?;
    Ok(())
}

fn tokenize(model: &std::path::Path, no_special: bool, text: &str) -> Result<(), Box<dyn std::error::Error>> {
    let g = kernels::gguf::Gguf::open(model)?;
    let tk = kernels::Tokenizer::from_gguf(&g)?;
    println!("{}", serde_json::to_string(&tk.encode(text, true, !no_special))?);
    Ok(())
}

fn generate(a: &GenerateArgs) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    let engine = kernels::Engine::load(&a.model)?;
    let mut adapter = None;
    for (i, dir) in a.adapter.iter().enumerate() {
        let name = format!("adapter-{i}");
        engine.load_adapter(&name, dir)?;
        adapter.get_or_insert(name);
    }
    let prompt = if a.chat {
        engine.chat_tokens(&[kernels::tokenizer::template::Message::new("user", &a.prompt)])?
    } else {
        engine.tokenizer.encode(&a.prompt, true, true)
    };
    let req = kernels::Request {
        prompt,
        adapter,
        max_tokens: a.max_tokens,
        sampling: kernels::sample::SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repeat_penalty: a.repeat_penalty,
            repeat_last_n: 64,
            seed: a.seed,
        },
        stop: a.stop.clone(),
        precision: a.precision.parse()?,
        logprobs: None,
        prefix_scope: None,
    };
    let json = a.json;
    let mut stdout = std::io::stdout();
    let g = engine.generate(&req, &mut |_, piece| {
        if !json {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
        true
    })?;
    if json {
        let v = serde_json::json!({"prompt_ids": g.prompt_ids, "output_ids": g.output_ids, "text": g.text});
        println!("{v}");
    } else {
        println!();
    }
    Ok(())
}

fn logits(
    model: &std::path::Path,
    adapter: Option<&std::path::Path>,
    no_special: bool,
    precision: &str,
    prompt: &str,
    out: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let engine = kernels::Engine::load(model)?;
    if let Some(dir) = adapter {
        engine.load_adapter("adapter", dir)?;
    }
    let ids = engine.tokenizer.encode(prompt, true, !no_special);
    let l = engine.logits(&ids, adapter.map(|_| "adapter"), precision.parse()?)?;
    std::fs::write(out, kernels::npy::f32_vector(&l))?;
    Ok(())
}

const SAMPLE: &[u8] = include_bytes!("../assets/quickstart.jsonl");

/// The quickstart's steps on the model: fine-tune, chat with the adapter, a grounded answer.
fn model_steps(
    core: &Arc<Core>,
    me: &Principal,
    data_dir: &std::path::Path,
    model: &std::path::Path,
    kb: &soramai::rag::CorpusId,
) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    let base = ModelId::new("smollm2-135m-instruct")?;
    if core.base_model(&base).is_err() {
        core.register_base_model(&base, model)?;
    }
    core.grant_credits(me.tenant(), 1_000_000, "quickstart-training")?;
    let platform = Arc::new(soramai::Platform::with_core(core.clone(), soramai::PlatformOptions::default())?);

    step(9, "fine-tune a LoRA adapter on the dataset (QLoRA on the GGUF, in a child process)");
    let ds = core.upload_dataset(me, "support-train.jsonl", SAMPLE)?;
    let spec = soramai::FineTuneSpec {
        dataset: ds.id,
        base_model: base.clone(),
        suffix: Some("support".into()),
        hyperparameters: soramai::Hyperparameters {
            n_epochs: 12,
            batch_size: 2,
            learning_rate_multiplier: 10.0,
            rank: 8,
            alpha: 16.0,
            target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"].map(String::from).to_vec(),
            max_seq: 128,
            seed: 7,
            checkpoint_every: 8,
        },
    };
    let job = platform.create_fine_tuning_job(me, spec)?;
    let runner = RunnerCommand { args: vec!["job-runner".into()], ..RunnerCommand::new(std::env::current_exe()?) };
    let worker = Worker::new(core.clone(), "quickstart-trainer", job.pool.clone(), runner);
    let training = std::thread::spawn(move || worker.run_once());
    let bar = indicatif::ProgressBar::new(24);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "      {bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise}]",
    )?);
    while !training.is_finished() {
        std::thread::sleep(Duration::from_millis(250));
        if let Some(e) = core.job_events(me, &job.id)?.iter().rev().find(|e| e.kind == "progress") {
            bar.set_position(e.data["step"].as_u64().unwrap_or(0));
            bar.set_message(format!(
                "loss {:.3}  {:.0} tokens/s",
                e.data["loss"].as_f64().unwrap_or(0.0),
                e.data["tokens_per_second"].as_f64().unwrap_or(0.0)
            ));
        }
    }
    bar.finish();
    let done = training.join().map_err(|_| "the training thread panicked")??.ok_or("the job was not claimed")?;
    let result = done.result.clone().unwrap_or_default();
    let ft =
        result["fine_tuned_model"].as_str().ok_or_else(|| format!("the job ended {}: {:?}", done.state, done.error))?;
    println!(
        "      {} {}: loss {:.3} -> {:.3}, {} trained tokens; model {ft}",
        done.id,
        done.state,
        result["first_loss"].as_f64().unwrap_or(0.0),
        result["final_loss"].as_f64().unwrap_or(0.0),
        result["trained_tokens"]
    );

    step(10, "chat with the fine-tuned model (streamed, batched with any other requests)");
    let question = "How do I rotate an API key?";
    println!("      user: {question}");
    print!("      {ft}: ");
    let options = soramai::GenerationOptions { max_tokens: Some(48), temperature: Some(0.0), ..Default::default() };
    let prompt = soramai::Prompt::Chat(vec![
        soramai::ChatMessage { role: "system".into(), content: "You are Soramai's support assistant.".into() },
        soramai::ChatMessage { role: "user".into(), content: question.into() },
    ]);
    for ev in platform.generate(me, ft, &prompt, &options)? {
        match ev? {
            soramai::StreamEvent::Delta { text, .. } => {
                print!("{text}");
                std::io::stdout().flush()?;
            }
            soramai::StreamEvent::Done { usage, .. } => {
                println!("\n      ({} prompt + {} completion tokens)", usage.prompt_tokens, usage.completion_tokens);
            }
        }
    }

    step(11, "ask a question grounded in the indexed documents, with citations");
    let question = "What happens to backups when I close my account?";
    let (stream, grounded) =
        platform.grounded_chat(me, base.as_str(), kb.as_str(), question, &soramai::Retrieval::default(), &options)?;
    let answer = stream.collect()?;
    println!("      user: {question}");
    println!("      answer: {}", answer.text.trim());
    let cited = grounded.citations(&answer.text);
    let sources: Vec<&str> = grounded.sources.iter().map(|s| s.chunk_id.as_str()).collect();
    println!("      sources in the prompt: {sources:?}; cited: {cited:?}");
    if !sources.contains(&"deletion#0") {
        return Err("the grounded prompt lacks the closure policy".into());
    }
    let usage = core.usage_summary(me, 0)?;
    println!(
        "      usage so far: {} requests, {} prompt + {} completion tokens; {} credits left",
        usage.requests,
        usage.input_tokens,
        usage.output_tokens,
        core.balance(me.tenant())?
    );
    let leaked = scan_for(data_dir, b"grace period you choose")?;
    println!("      files holding training text in plaintext: {leaked}");
    if leaked > 0 {
        return Err("plaintext training data found at rest".into());
    }
    platform.shutdown();
    Ok(())
}

fn step(n: usize, what: &str) {
    println!("[{n}/12] {what}");
}

fn quickstart(data_dir: &std::path::Path, model: Option<&std::path::Path>) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let core = Arc::new(Core::open_embedded(data_dir)?);
    println!("data directory: {} (embedded default: SQLite + encrypted local blobs)", data_dir.display());

    step(1, "create a tenant");
    let tenant = TenantId::new(format!("quickstart-{}", &hex_suffix()))?;
    core.create_tenant(&tenant, Tier::Pro)?;
    let policy = Tier::Pro.policy();
    println!("      tenant {tenant} on tier {} (compute {:?}, RAG {:?})", Tier::Pro, policy.compute, policy.rag);

    step(2, "issue an API key (shown once; only its hash is stored)");
    let issued = core.create_api_key(
        &Principal::operator(&tenant),
        KeyOptions::new("quickstart", &[Scope::Train, Scope::Admin, Scope::Inference, Scope::Rag]),
    )?;
    println!("      {}", issued.secret());
    let me = core.authenticate(issued.secret())?;

    step(3, "upload a chat dataset (validated, sealed under the tenant key)");
    let ds = core.upload_dataset(&me, "support.jsonl", SAMPLE)?;
    println!("      {} {} bytes, {} examples", ds.id, ds.bytes, ds.examples);

    step(4, "read it back and check nothing is plaintext at rest");
    let back = core.download_dataset(&me, &ds.id)?;
    if back[..] != SAMPLE[..] {
        return Err("the dataset did not round-trip".into());
    }
    core.put_secret(&me, &SecretName::new("hf-token")?, b"hf_quickstart_secret_value")?;
    let probe = b"sealed under your tenant's own key";
    let leaked = scan_for(data_dir, probe)?;
    println!("      round trip ok; files holding dataset text in plaintext: {leaked}");
    if leaked > 0 {
        return Err("plaintext found at rest".into());
    }
    let objects = core.list_objects(&tenant, "")?;
    println!(
        "      {} objects, each {} + Cobblestone-256 (AES-256-GCM, 16 KiB chunks), key version {}",
        objects.len(),
        String::from_utf8_lossy(&envelope::MAGIC),
        objects.first().map_or(0, |o| o.key_version)
    );

    step(5, "run a job in a dedicated child process (cleared env, private scratch, rlimits)");
    let job = core.submit_job(&me, JobSpec::Checksum { dataset: ds.id.clone(), pace_ms: 0 })?;
    let runner = RunnerCommand { args: vec!["job-runner".into()], ..RunnerCommand::new(std::env::current_exe()?) };
    let worker = Worker::new(core.clone(), "quickstart-worker", PoolId::dedicated_for(&tenant), runner);
    let done = worker.run_once()?.ok_or("the job was not claimed")?;
    let result = done.result.clone().unwrap_or_default();
    println!(
        "      {} {} in pool {}: sha256 {} over {} lines",
        done.id,
        done.state,
        done.pool,
        result["sha256"].as_str().unwrap_or("?"),
        result["lines"]
    );
    if done.id != job.id || done.state != soramai::JobState::Succeeded {
        return Err(format!("the job ended {}: {:?}", done.state, done.error).into());
    }

    step(6, "meter usage (ids and counts only) and charge credits");
    core.grant_credits(&tenant, 10_000, "quickstart-grant")?;
    core.record_usage(
        &tenant,
        &soramai::UsageEvent {
            kind: soramai::UsageKind::Inference,
            model: ModelId::new("smollm2-135m-instruct")?,
            adapter: None,
            input_tokens: 42,
            output_tokens: 17,
            latency_ms: 85,
            status: soramai::UsageStatus::Ok,
        },
    )?;
    let receipt = core.charge_credits(&tenant, 59, "quickstart-usage")?;
    let usage = core.usage_summary(&me, 0)?;
    println!(
        "      {} requests, {} + {} tokens; receipt {} leaves {} credits",
        usage.requests, usage.input_tokens, usage.output_tokens, receipt.receipt, receipt.balance_after
    );

    step(7, "rotate the key (grace 60 s) and revoke the old one");
    let rotated = core.rotate_api_key(&me, &issued.info.id, Duration::from_secs(60))?;
    core.revoke_api_key(&me, &issued.info.id)?;
    let old_refused = core.authenticate(issued.secret()).is_err();
    let new_works = core.authenticate(rotated.secret()).is_ok();
    println!("      old key refused: {old_refused}; new key works: {new_works}");
    if !old_refused || !new_works {
        return Err("key rotation did not behave".into());
    }

    let me = core.authenticate(rotated.secret())?;

    step(8, "index documents and search them with the new key (tantivy on the encrypted store)");
    let rag = soramai::rag::Rag::new(core.clone(), 32 << 20);
    let kb = soramai::rag::CorpusId::new("support-kb")?;
    rag.create_corpus(&me, &kb)?;
    let docs = [
        soramai::rag::Document::text(
            "keys",
            "API keys",
            "Keys are shown once. Rotate a key to get a new one; the old key works for the grace period, and revocation is immediate.",
        ),
        soramai::rag::Document::text(
            "deletion",
            "Account closure",
            "Closing an account destroys its encryption keys at once, which makes every copy of its data unreadable, backups included.",
        ),
        soramai::rag::Document::text(
            "logs",
            "Inference logs",
            "Inference logs hold counts and latencies only, never prompt or completion text.",
        ),
    ];
    let report = rag.add_documents(&me, &kb, &docs)?;
    let hits =
        rag.search(&me, &kb, &soramai::rag::SearchRequest::new("what happens to backups when I close my account", 2))?;
    println!(
        "      {} documents, {} chunks indexed; best hit for \"close my account\": {} (score {:.2})",
        report.documents,
        report.chunks,
        hits.first().map_or("-", |h| h.chunk_id.as_str()),
        hits.first().map_or(0.0, |h| h.score)
    );
    if hits.first().map(|h| h.doc_id.as_str()) != Some("deletion") {
        return Err("search did not find the closure policy".into());
    }
    let leaked = scan_for(data_dir, b"completion text")?;
    println!("      files holding indexed text in plaintext: {leaked}");
    if leaked > 0 {
        return Err("plaintext index data found at rest".into());
    }

    if let Some(model) = model {
        model_steps(&core, &me, data_dir, model, &kb)?;
    } else {
        println!("      (no --model: skipping fine-tuning, chat and grounded answers)");
    }

    step(12, "verify the tamper-evident audit log");
    let report = core.verify_audit(&tenant)?;
    for r in core.audit_log(&Principal::operator(&tenant))? {
        println!("      #{:<2} {:<20} {:<18} {}", r.seq, r.action, r.actor, r.target);
    }
    println!("      audit chain verified: {} records", report.records);
    println!("quickstart finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn hex_suffix() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{:06x}", (nanos ^ std::process::id()) & 0xff_ffff)
}

/// Counts the files under `dir` that contain `needle`.
fn scan_for(dir: &std::path::Path, needle: &[u8]) -> std::io::Result<usize> {
    let mut found = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)?.windows(needle.len()).any(|w| w == needle) {
                found += 1;
            }
        }
    }
    Ok(found)
}
