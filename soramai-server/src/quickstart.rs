//! `soramai quickstart`: the whole pipeline on the embedded default in a fresh data directory,
//! through the library's one door: the operator's session makes a tenant and its key, and the
//! tenant's own session (opened with that key) does the rest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use soramai::{
    DocumentInput, FineTuneRequest, GenerationOptions, JobState, KeyRequest, OpenOptions, Platform, RunnerCommand,
    Scope, SearchInput, Session, StreamEvent, Tier,
};

const SAMPLE: &[u8] = include_bytes!("../assets/quickstart.jsonl");

/// The base model's id in the quickstart's data directory.
const BASE: &str = "smollm2-135m-instruct";

/// The quickstart's corpus.
const KB: &str = "support-kb";

pub(crate) fn step(n: usize, what: &str) {
    println!("[{n}/12] {what}");
}

pub(crate) fn quickstart(
    data_dir: &std::path::Path,
    model: Option<&std::path::Path>,
) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let runner = RunnerCommand { args: vec!["job-runner".into()], ..RunnerCommand::new(std::env::current_exe()?) };
    let options = OpenOptions {
        model: model.map(std::path::Path::to_path_buf),
        model_id: Some(BASE.into()),
        ..Default::default()
    };
    let platform = Platform::open_with(data_dir, &options, Some(runner))?;
    println!("data directory: {} (embedded default: SQLite + encrypted local blobs)", data_dir.display());
    let outcome = pipeline(&platform, data_dir, model.is_some());
    platform.shutdown();
    outcome?;
    println!("quickstart finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn pipeline(
    platform: &Arc<Platform>,
    data_dir: &std::path::Path,
    model: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    step(1, "create a tenant (the operator's session)");
    let operator = platform.operator_session()?;
    let tenant = format!("quickstart-{}", hex_suffix());
    operator.create_tenant(&tenant, Tier::Org)?;
    let policy = Tier::Org.policy();
    println!(
        "      tenant {tenant} on tier {} (compute {:?}, RAG {:?}; its own audit log)",
        Tier::Org,
        policy.compute,
        policy.rag
    );

    step(2, "issue an API key (shown once; only its hash is stored)");
    let issued = operator.create_api_key(KeyRequest {
        name: "quickstart".into(),
        scopes: vec![Scope::Train, Scope::Admin, Scope::Inference, Scope::Rag],
        tenant: Some(tenant.clone()),
        expires_in_seconds: None,
    })?;
    println!("      {}", issued.secret());
    let me = platform.session(issued.secret())?;

    step(3, "upload a chat dataset (validated, sealed under the tenant key)");
    let ds = me.upload_dataset("support.jsonl", SAMPLE)?;
    println!("      {} {} bytes, {} examples", ds.id, ds.bytes, ds.examples);

    step(4, "read it back and check nothing is plaintext at rest");
    let back = me.download_dataset(ds.id.as_str())?;
    if back[..] != SAMPLE[..] {
        return Err("the dataset did not round-trip".into());
    }
    let leaked = scan_for(data_dir, b"sealed under your tenant's own key")?;
    println!("      round trip ok; files holding dataset text in plaintext: {leaked}");
    if leaked > 0 {
        return Err("plaintext found at rest".into());
    }
    println!(
        "      {} files on disk begin {} (Cobblestone-256: AES-256-GCM, 16 KiB chunks, a key per object)",
        count_sealed(data_dir)?,
        String::from_utf8_lossy(&soramai::ENVELOPE_MAGIC),
    );

    step(5, "give the tenant credits (every call is metered: ids and counts only)");
    let receipt = operator.grant_credits(&tenant, 1_000_000, "quickstart")?;
    println!("      receipt {} leaves {} credits", receipt.receipt, receipt.balance_after);

    step(6, "rotate the key (grace 60 s) and revoke the old one");
    let rotated = me.rotate_api_key(issued.info.id.as_str(), Duration::from_secs(60))?;
    me.revoke_api_key(issued.info.id.as_str())?;
    let old_refused = platform.session(issued.secret()).is_err();
    let new_works = platform.session(rotated.secret()).is_ok();
    println!("      old key refused: {old_refused}; new key works: {new_works}");
    if !old_refused || !new_works {
        return Err("key rotation did not behave".into());
    }
    let me = platform.session(rotated.secret())?;

    step(7, "index documents and search them with the new key (tantivy on the encrypted store)");
    index_and_search(&me, data_dir)?;

    if model {
        model_steps(&me, data_dir)?;
    } else {
        println!("      (no --model: skipping fine-tuning, chat and grounded answers)");
    }

    step(12, "verify the tamper-evident audit log");
    let report = me.verify_audit()?;
    for r in me.audit_log()? {
        println!("      #{:<2} {:<20} {:<18} {}", r.seq, r.action, r.actor, r.target);
    }
    println!("      audit chain verified: {} records", report.records);
    Ok(())
}

fn document(id: &str, title: &str, text: &str) -> DocumentInput {
    DocumentInput { id: id.into(), title: title.into(), text: text.into(), format: None, metadata: Default::default() }
}

/// Step 7: a corpus of three documents, searched for the closure policy.
fn index_and_search(me: &Session, data_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    me.create_corpus(KB)?;
    let docs = vec![
        document(
            "keys",
            "API keys",
            "Keys are shown once. Rotate a key to get a new one; the old key works for the grace period, and revocation is immediate.",
        ),
        document(
            "deletion",
            "Account closure",
            "Closing an account destroys its encryption keys at once, which makes every copy of its data unreadable, backups included.",
        ),
        document(
            "logs",
            "Inference logs",
            "Inference logs hold counts and latencies only, never prompt or completion text.",
        ),
    ];
    let report = me.add_documents(KB, docs)?;
    let query = "what happens to backups when I close my account";
    let hits =
        me.search(KB, SearchInput { query: query.into(), top_k: 2, filters: Default::default(), hybrid: false })?;
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
    Ok(())
}

/// The quickstart's steps on the model: fine-tune, chat with the adapter, a grounded answer.
fn model_steps(me: &Session, data_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    step(8, "fine-tune a LoRA adapter on the dataset (QLoRA on the GGUF, in a child process)");
    let ft = fine_tune(me)?;

    step(9, "chat with the fine-tuned model (streamed, batched with any other requests)");
    use std::io::Write;
    let question = "How do I rotate an API key?";
    println!("      user: {question}");
    print!("      {ft}: ");
    let options = GenerationOptions { max_tokens: Some(48), temperature: Some(0.0), ..Default::default() };
    let messages = vec![
        soramai::ChatMessage::new("system", "You are Soramai's support assistant."),
        soramai::ChatMessage::new("user", question),
    ];
    for ev in me.chat(&ft, messages, &options)? {
        match ev? {
            StreamEvent::Delta { text, .. } => {
                print!("{text}");
                std::io::stdout().flush()?;
            }
            StreamEvent::Done { usage, .. } => {
                println!("\n      ({} prompt + {} completion tokens)", usage.prompt_tokens, usage.completion_tokens);
            }
            // No tools were offered, so there are no calls.
            StreamEvent::ToolCalls { .. } => {}
        }
    }

    step(10, "ask a question grounded in the indexed documents, with citations");
    let question = "What happens to backups when I close my account?";
    // The answer is held to citing its sources: it begins with [n] markers that name them.
    let retrieval = soramai::Retrieval { cite: true, ..soramai::Retrieval::default() };
    let grounded = me.grounded_chat(BASE, KB, question, &retrieval, &options)?;
    let answer = grounded.stream.collect()?;
    println!("      user: {question}");
    println!("      answer: {}", answer.text.trim());
    let cited = grounded.prompt.citations(&answer.text);
    let sources: Vec<&str> = grounded.prompt.sources.iter().map(|s| s.chunk_id.as_str()).collect();
    println!("      sources in the prompt: {sources:?}; cited: {cited:?}");
    if !sources.contains(&"deletion#0") {
        return Err("the grounded prompt lacks the closure policy".into());
    }
    if cited.is_empty() {
        return Err("the grounded answer cites no source".into());
    }

    step(11, "read the tenant's usage and check no training text reached the disk");
    let usage = me.usage(0)?;
    println!(
        "      usage so far: {} requests, {} prompt + {} completion tokens; {} credits left",
        usage.summary.requests, usage.summary.input_tokens, usage.summary.output_tokens, usage.balance
    );
    let leaked = scan_for(data_dir, b"grace period you choose")?;
    println!("      files holding training text in plaintext: {leaked}");
    if leaked > 0 {
        return Err("plaintext training data found at rest".into());
    }
    Ok(())
}

/// Step 8: a fine-tuning job run by the platform's workers, followed to its end with a progress
/// bar; the fine-tuned model's id.
fn fine_tune(me: &Session) -> Result<String, Box<dyn std::error::Error>> {
    let ds = me.upload_dataset("support-train.jsonl", SAMPLE)?;
    let job = me.create_fine_tuning_job(FineTuneRequest {
        training_file: ds.id.as_str().to_owned(),
        model: BASE.into(),
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
        }
        .into(),
    })?;
    let bar = indicatif::ProgressBar::new(24);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "      {bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise}]",
    )?);
    let deadline = Instant::now() + Duration::from_secs(1800);
    let done = loop {
        let j = me.fine_tuning_job(job.id.as_str())?;
        if let Some(e) = me.fine_tuning_job_events(job.id.as_str())?.iter().rev().find(|e| e.kind == "progress") {
            bar.set_position(e.data["step"].as_u64().unwrap_or(0));
            bar.set_message(format!(
                "loss {:.3}  {:.0} tokens/s",
                e.data["loss"].as_f64().unwrap_or(0.0),
                e.data["tokens_per_second"].as_f64().unwrap_or(0.0)
            ));
        }
        if j.state.is_terminal() {
            break j;
        }
        if Instant::now() >= deadline {
            return Err(format!("the fine-tuning job {} did not end in 30 minutes", j.id).into());
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    bar.finish();
    let result = done.result.clone().unwrap_or_default();
    let ft = match (done.state, result["fine_tuned_model"].as_str()) {
        (JobState::Succeeded, Some(ft)) => ft.to_owned(),
        _ => return Err(format!("the job ended {}: {:?}", done.state, done.error).into()),
    };
    println!(
        "      {} {}: loss {:.3} -> {:.3}, {} trained tokens; model {ft}",
        done.id,
        done.state,
        result["first_loss"].as_f64().unwrap_or(0.0),
        result["final_loss"].as_f64().unwrap_or(0.0),
        result["trained_tokens"]
    );
    Ok(ft)
}

pub(crate) fn hex_suffix() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{:06x}", (nanos ^ std::process::id()) & 0xff_ffff)
}

/// Every file under `dir`, depth first.
fn files(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    Ok(found)
}

/// Counts the files under `dir` that contain `needle`.
pub(crate) fn scan_for(dir: &std::path::Path, needle: &[u8]) -> std::io::Result<usize> {
    let mut found = 0;
    for path in files(dir)? {
        if std::fs::read(&path)?.windows(needle.len()).any(|w| w == needle) {
            found += 1;
        }
    }
    Ok(found)
}

/// Counts the files under `dir` that are sealed objects (they begin with the envelope's magic).
fn count_sealed(dir: &std::path::Path) -> std::io::Result<usize> {
    let mut sealed = 0;
    for path in files(dir)? {
        let mut head = [0u8; 8];
        let n = std::io::Read::read(&mut std::fs::File::open(&path)?, &mut head)?;
        if n >= soramai::ENVELOPE_MAGIC.len() && head[..soramai::ENVELOPE_MAGIC.len()] == soramai::ENVELOPE_MAGIC[..] {
            sealed += 1;
        }
    }
    Ok(sealed)
}
