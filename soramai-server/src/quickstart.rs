//! `soramai quickstart`: the whole pipeline on the embedded default in a fresh data directory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use soramai::core::crypto::envelope;
use soramai::{
    Core, JobSpec, KeyOptions, ModelId, PoolId, Principal, RunnerCommand, Scope, SecretName, TenantId, Tier, Worker,
};

const SAMPLE: &[u8] = include_bytes!("../assets/quickstart.jsonl");

/// The quickstart's steps on the model: fine-tune, chat with the adapter, a grounded answer.
pub(crate) fn model_steps(
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

pub(crate) fn step(n: usize, what: &str) {
    println!("[{n}/12] {what}");
}

pub(crate) fn quickstart(
    data_dir: &std::path::Path,
    model: Option<&std::path::Path>,
) -> Result<(), Box<dyn std::error::Error>> {
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

pub(crate) fn hex_suffix() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{:06x}", (nanos ^ std::process::id()) & 0xff_ffff)
}

/// Counts the files under `dir` that contain `needle`.
pub(crate) fn scan_for(dir: &std::path::Path, needle: &[u8]) -> std::io::Result<usize> {
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
