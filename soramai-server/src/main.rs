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
use std::time::Duration;

mod backups;
mod quickstart;
mod serving;
mod tools;

use soramai_server::conn;

use clap::{Parser, Subcommand};

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
    #[arg(long, default_value_t = soramai_server::state::ATTEMPTS_PER_ADDRESS, value_parser = clap::value_parser!(u32).range(1..=100_000))]
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
        Command::Tokenize { model, no_special, text } => report(tools::tokenize(&model, no_special, &text)),
        Command::Generate(args) => report(tools::generate(&args)),
        Command::Logits { model, adapter, no_special, precision, prompt, out } => {
            report(tools::logits(&model, adapter.as_deref(), no_special, &precision, &prompt, &out))
        }
        Command::Train(args) => report(tools::train(&args)),
        Command::Merge { files, r#type } => report(tools::merge(&files.model, &files.adapter, &files.out, &r#type)),
        Command::ExportLora(files) => report(tools::export_lora(&files.model, &files.adapter, &files.out)),
        Command::Serve(args) => report(serving::serve(&args)),
        Command::JobRunner { args } => ExitCode::from(u8::try_from(soramai::job_runner_main(&args)).unwrap_or(2)),
        Command::Backup(args) => report(backups::backup(&args)),
        Command::Restore { from, data_dir, snapshot, root_key_file } => {
            report(backups::restore(&from, &data_dir, snapshot.as_deref(), root_key_file.as_deref()))
        }
        Command::Quickstart { data_dir, model } => match quickstart::quickstart(&data_dir, model.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("quickstart failed: {e}");
                ExitCode::FAILURE
            }
        },
    }
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
