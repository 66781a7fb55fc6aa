//! Embedding Soramai in a program: a platform over a data directory, a tenant with its first key,
//! a dataset, a fine-tuning job, a streamed chat with the resulting `ft:` model, and an answer
//! grounded in the tenant's own documents, with the audit chain verified at the end.
//!
//! ```sh
//! cargo run -p soramai-examples --bin embed -- --model SmolLM2-135M-Instruct.Q4_1.gguf [--data-dir DIR]
//! ```
//!
//! Fine-tuning jobs run in child processes; the program is its own job runner: started as
//! `embed job-runner …`, it runs the one job it is handed and exits.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use soramai::{
    ChatMessage, DocumentInput, FineTuneRequest, GenerationOptions, Hyperparameters, KeyRequest, OpenOptions, Platform,
    Retrieval, RunnerCommand, Scope, StreamEvent, Tier,
};

const DATASET: &[u8] = include_bytes!("../soramai-server/assets/quickstart.jsonl");

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("job-runner") {
        // A worker started this process to run one job (a fine-tune, an ingestion).
        let code = soramai::job_runner_main(&args[2..]);
        return std::process::ExitCode::from(u8::try_from(code).unwrap_or(2));
    }
    match run(&args[1..]) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn flag(args: &[String], name: &str) -> Option<PathBuf> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(PathBuf::from)
}

fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let model = flag(args, "--model").ok_or("--model PATH (the reference model: ./scripts/fetch-model.sh)")?;
    let scratch = tempfile::tempdir()?;
    let data_dir = flag(args, "--data-dir").unwrap_or_else(|| scratch.path().join("data"));

    // 1. The platform: SQLite and encrypted local blobs in the data directory, the model
    //    registered as a base, and job workers that start this very program as their runner.
    let runner = RunnerCommand { args: vec!["job-runner".into()], ..RunnerCommand::new(std::env::current_exe()?) };
    let options = OpenOptions { model: Some(model), workers: Some(1), ..OpenOptions::default() };
    let platform = Platform::open_with(&data_dir, &options, Some(runner))?;
    let admin_key = platform.bootstrap_operator()?.ok_or("this data directory was bootstrapped before")?;
    let admin = platform.session(admin_key.secret())?;

    // 2. A tenant, its credits, and its first key (the operator hands out no other).
    admin.create_tenant("acme", Tier::Basic)?;
    admin.grant_credits("acme", 2_000_000, "trial")?;
    let key = admin.create_api_key(KeyRequest {
        name: "app".into(),
        scopes: vec![Scope::Admin, Scope::Inference, Scope::Train, Scope::Rag],
        tenant: Some("acme".into()),
        expires_in_seconds: None,
    })?;
    let acme = platform.session(key.secret())?;
    println!("tenant acme, key {} (shown once)", key.info.id);

    // 3. A dataset (validated, sealed under acme's key) and a fine-tuning job on it.
    let ds = acme.upload_dataset("support.jsonl", DATASET)?;
    println!("dataset {}: {} examples", ds.id, ds.examples);
    let hyperparameters =
        Hyperparameters { n_epochs: 2, batch_size: 2, rank: 4, max_seq: 96, ..Hyperparameters::default() };
    let job = acme.create_fine_tuning_job(FineTuneRequest {
        training_file: ds.id.as_str().to_owned(),
        model: soramai::DEFAULT_MODEL_ID.into(),
        suffix: Some("support".into()),
        hyperparameters: hyperparameters.into(),
    })?;
    let job = acme.wait_fine_tuning_job(job.id.as_str(), Duration::from_secs(600))?;
    let tuned = job
        .result
        .as_ref()
        .and_then(|r| r.get("fine_tuned_model"))
        .and_then(|m| m.as_str())
        .ok_or_else(|| format!("the job ended {:?}: {:?}", job.state, job.error))?
        .to_owned();
    println!("fine-tuned model {tuned}");

    // 4. A streamed chat with the tenant's own model.
    let question = vec![ChatMessage::new("user", "How do I rotate an API key?")];
    let greedy = GenerationOptions { max_tokens: Some(32), temperature: Some(0.0), ..GenerationOptions::default() };
    print!("chat: ");
    for event in acme.chat(&tuned, question, &greedy)? {
        match event? {
            StreamEvent::Delta { text, .. } => print!("{text}"),
            StreamEvent::Done { usage, .. } => println!("  [{} tokens]", usage.total_tokens),
            // No tools were offered, so there are no calls.
            StreamEvent::ToolCalls { .. } => {}
        }
        std::io::stdout().flush()?;
    }

    // 5. RAG: the tenant's documents, indexed encrypted, and an answer that cites them.
    acme.create_corpus("handbook")?;
    let doc = |id: &str, text: &str| DocumentInput {
        id: id.into(),
        title: String::new(),
        text: text.into(),
        format: None,
        metadata: Default::default(),
    };
    acme.add_documents(
        "handbook",
        vec![
            doc("rotation", "API keys are rotated from the dashboard; the old key keeps working for its grace period."),
            doc("council", "The cloud council meets in Kumo every spring."),
        ],
    )?;
    let grounded = acme.grounded_chat(
        soramai::DEFAULT_MODEL_ID,
        "handbook",
        "Where does the cloud council meet?",
        &Retrieval::default(),
        &greedy,
    )?;
    let sources: Vec<&str> = grounded.prompt.sources.iter().map(|s| s.doc_id.as_str()).collect();
    let answer = grounded.stream.collect()?;
    println!("grounded: {} (sources: {})", answer.text.trim(), sources.join(", "));

    // 6. Every security-relevant step above is in acme's hash-chained audit log.
    let report = acme.verify_audit()?;
    println!("audit chain verified: {} records", report.records);
    platform.shutdown();
    Ok(())
}
