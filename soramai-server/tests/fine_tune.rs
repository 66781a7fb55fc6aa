//! Fine-tuning jobs end to end on the reference model: a tenant's encrypted chat dataset trains a
//! LoRA adapter in the `soramai job-runner` child process; progress, checkpoints and credits are
//! recorded; the adapter is stored encrypted, registered under an `ft:` model id only its tenant
//! resolves, and serves. A worker killed mid-run leaves the job to resume from its checkpoint.
//! Neither the dataset nor the adapter is ever on disk in plaintext.
//!
//! The crash test's victim is this test binary re-run on an ignored "child" test, by name.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use soramai::core::Scope;
use soramai::kernels::{Engine, Precision};
use soramai::{
    Config, Core, Error, FineTuneSpec, Hyperparameters, JobSpec, JobState, LocalRootKey, ModelId, PoolId, Principal,
    RunnerCommand, TenantId, Tier, Worker,
};

#[path = "../../soramai-kernels/tests/common/reference_model.rs"]
mod reference_model;
use reference_model::reference_model;
#[path = "../../soramai-kernels/tests/common/gemma_model.rs"]
mod gemma_model;

const CANARY: &str = "zq7-canary-Kumo-4471";
const DIR_VAR: &str = "SORAMAI_FT_CRASH_DIR";

fn runner() -> RunnerCommand {
    RunnerCommand { args: vec!["job-runner".into()], ..RunnerCommand::new(env!("CARGO_BIN_EXE_soramai")) }
}

fn open_core(dir: &Path) -> Core {
    let root = LocalRootKey::from_file(&dir.join("root.key")).expect("root");
    Core::open(Config::new(dir.join("data"), Arc::new(root))).expect("open")
}

/// A fresh data directory with a registered base model and a funded tenant.
fn setup(dir: &Path, model: &Path, tenant: &str) -> (Arc<Core>, Principal) {
    drop(LocalRootKey::create_file(&dir.join("root.key")).expect("root"));
    let core = Arc::new(open_core(dir));
    core.register_base_model(&ModelId::new("smollm2").expect("id"), model).expect("register");
    let t = TenantId::new(tenant).expect("tenant");
    core.create_tenant(&t, Tier::Basic).expect("create");
    core.grant_credits(&t, 1_000_000, "test").expect("grant");
    (core, Principal::operator(&t))
}

fn dataset(n: usize) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..n {
        let line = serde_json::json!({"messages": [
            {"role": "system", "content": "You answer in one sentence."},
            {"role": "user", "content": format!("Where does the cloud council meet? ({i})")},
            {"role": "assistant", "content": format!("The cloud council meets in Kumo. {CANARY}")},
        ]});
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out.into_bytes()
}

fn spec(dataset: soramai::DatasetId, epochs: u32, batch: u32, checkpoint_every: u32) -> JobSpec {
    JobSpec::FineTune(FineTuneSpec {
        dataset,
        base_model: ModelId::new("smollm2").expect("id"),
        suffix: Some("kumo".into()),
        hyperparameters: Hyperparameters {
            n_epochs: epochs,
            batch_size: batch,
            learning_rate_multiplier: 10.0,
            rank: 4,
            alpha: 8.0,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            max_seq: 64,
            seed: 3,
            checkpoint_every,
        },
    })
}

#[path = "../../soramai-kernels/tests/common/files.rs"]
mod files;
use files::{contains, files_under};

/// No file under `dir` holds the canary or a 64-byte stretch of the adapter's tensor data.
fn assert_no_plaintext(dir: &Path, adapter_weights: &[u8]) {
    // The last 64 bytes of the safetensors file are tensor data (the header comes first).
    let tail = &adapter_weights[adapter_weights.len() - 64..];
    assert!(tail.iter().any(|&b| b != 0), "the probe must be non-trivial");
    for f in files_under(dir) {
        let bytes = std::fs::read(&f).expect("read");
        assert!(!contains(&bytes, CANARY.as_bytes()), "dataset text in plaintext in {}", f.display());
        assert!(!contains(&bytes, tail), "adapter bytes in plaintext in {}", f.display());
    }
}

#[test]
fn a_fine_tune_job_trains_charges_registers_and_serves_its_adapter() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let (core, p) = setup(dir.path(), &model, "acme");
    let ds = core.upload_dataset(&p, "train.jsonl", &dataset(8)).expect("upload");
    let job = core.submit_job(&p, spec(ds.id, 2, 4, 2)).expect("submit");
    let done = Worker::new(core.clone(), "w", PoolId::shared(), runner()).run_once().expect("run").expect("job");
    assert_eq!(done.id, job.id);
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.error);
    let result = done.result.expect("result");
    let trained = result["trained_tokens"].as_u64().expect("trained tokens");
    assert!(trained > 0);
    assert_eq!(result["steps"], 4, "8 examples, batch 4, 2 epochs");
    assert!(result["final_loss"].as_f64() < result["first_loss"].as_f64(), "{result}");
    let id = ModelId::new(result["fine_tuned_model"].as_str().expect("model id")).expect("valid id");
    assert!(id.as_str().starts_with("ft:smollm2:acme:kumo:"), "{id}");

    // Events: validation report, progress with loss, speed and eta, checkpoints; numbers only.
    let events = core.job_events(&p, &job.id).expect("events");
    let validation = events.iter().find(|e| e.data["name"] == "validation").expect("validation metric");
    assert_eq!(validation.data["report"]["examples"], 8);
    let progress: Vec<_> = events.iter().filter(|e| e.kind == "progress").collect();
    assert_eq!(progress.len(), 4);
    for e in &progress {
        for k in ["step", "total_steps", "loss", "tokens_per_second", "eta_seconds", "trained_tokens"] {
            assert!(e.data.get(k).is_some(), "progress event without {k}: {}", e.data);
        }
    }
    assert_eq!(progress.last().map(|e| e.data["eta_seconds"].as_f64()), Some(Some(0.0)));
    assert_eq!(events.iter().filter(|e| e.kind == "checkpoint").count(), 1, "at step 2 (step 4 is the end)");
    for e in &events {
        assert!(!e.data.to_string().contains(CANARY), "content in a job event");
    }

    // Credits: one per trained token, charged in full; a training usage record.
    assert_eq!(core.balance(p.tenant()).expect("balance"), 1_000_000 - trained as i64);
    let receipts = core.receipts(p.tenant()).expect("receipts");
    let charged: i64 = receipts.iter().filter(|r| r.kind == "usage").map(|r| -r.amount).sum();
    assert_eq!(charged, trained as i64);

    // The model id serves: the adapter loads and changes the logits. Another tenant cannot see it.
    let engine = Engine::load(&model).expect("engine");
    let ft = soramai::finetune::load_fine_tuned(&core, &p, &id, &engine).expect("load");
    assert_eq!(ft.trained_tokens, trained);
    let prompt = engine
        .chat_tokens(&[soramai::kernels::tokenizer::template::Message::new(
            "user",
            "Where does the cloud council meet?",
        )])
        .expect("prompt");
    let base = engine.logits(&prompt, None, Precision::Fast).expect("base");
    let tuned = engine.logits(&prompt, Some(id.as_str()), Precision::Fast).expect("tuned");
    let moved = base.iter().zip(&tuned).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(moved > 0.1, "the adapter changes the logits ({moved})");
    assert_eq!(core.list_fine_tuned_models(&p).expect("list").len(), 1);
    let other = TenantId::new("globex").expect("id");
    core.create_tenant(&other, Tier::Basic).expect("tenant");
    let op = Principal::operator(&other);
    assert!(matches!(core.fine_tuned_model(&op, &id), Err(Error::NotFound { .. })));
    assert!(matches!(
        soramai::finetune::load_fine_tuned(&core, &op, &id, &engine),
        Err(soramai::PlatformError::Core(Error::NotFound { .. }))
    ));
    assert!(core.list_fine_tuned_models(&op).expect("list").is_empty());
    let key = core.create_api_key(&p, soramai::KeyOptions::new("rag", &[Scope::Rag])).expect("key");
    let rag_only = core.authenticate(key.secret()).expect("auth");
    assert!(matches!(core.fine_tuned_adapter(&rag_only, &id), Err(Error::MissingScope(Scope::Inference))));

    // At rest: nothing of the dataset or the adapter in clear; the scratch directory is gone.
    let files = core.fine_tuned_adapter(&p, &id).expect("adapter");
    assert_no_plaintext(dir.path(), &files.weights);
    assert_eq!(std::fs::read_dir(dir.path().join("data/scratch")).expect("scratch").count(), 0);

    core.delete_fine_tuned_model(&p, &id).expect("delete");
    assert!(matches!(core.fine_tuned_model(&p, &id), Err(Error::NotFound { .. })));
}

#[test]
fn a_fine_tune_job_trains_an_adapter_on_gemma3() {
    let Some(model) = gemma_model::gemma_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    drop(LocalRootKey::create_file(&dir.path().join("root.key")).expect("root"));
    let core = Arc::new(open_core(dir.path()));
    let base = ModelId::new("gemma3").expect("id");
    core.register_base_model(&base, &model).expect("register");
    let t = TenantId::new("acme").expect("tenant");
    core.create_tenant(&t, Tier::Basic).expect("create");
    core.grant_credits(&t, 1_000_000, "test").expect("grant");
    let p = Principal::operator(&t);
    let ds = core.upload_dataset(&p, "train.jsonl", &dataset(4)).expect("upload");
    let JobSpec::FineTune(mut s) = spec(ds.id, 1, 2, 10) else { unreachable!() };
    s.base_model = base;
    let job = core.submit_job(&p, JobSpec::FineTune(s)).expect("submit");
    let done = Worker::new(core.clone(), "w", PoolId::shared(), runner()).run_once().expect("run").expect("job");
    assert_eq!(done.id, job.id);
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.error);
    let result = done.result.expect("result");
    assert_eq!(result["steps"], 2, "4 examples, batch 2, 1 epoch");
    let id = ModelId::new(result["fine_tuned_model"].as_str().expect("model id")).expect("valid id");
    assert!(id.as_str().starts_with("ft:gemma3:acme:kumo:"), "{id}");
    // The adapter loads on Gemma and changes its answer's logits.
    let engine = Engine::load(&model).expect("engine");
    soramai::finetune::load_fine_tuned(&core, &p, &id, &engine).expect("load");
    let prompt = engine
        .chat_tokens(&[soramai::kernels::tokenizer::template::Message::new(
            "user",
            "Where does the cloud council meet?",
        )])
        .expect("prompt");
    let before = engine.logits(&prompt, None, Precision::Fast).expect("base");
    let after = engine.logits(&prompt, Some(id.as_str()), Precision::Fast).expect("tuned");
    let moved = before.iter().zip(&after).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(moved > 0.1, "the adapter changes the logits ({moved})");
}

#[test]
fn fine_tune_jobs_refuse_bad_requests_and_fail_cleanly_on_data_that_cannot_train() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let (core, p) = setup(dir.path(), &model, "acme");
    let ds = core.upload_dataset(&p, "train.jsonl", &dataset(2)).expect("upload");
    let with = |f: &dyn Fn(&mut FineTuneSpec)| {
        let JobSpec::FineTune(mut s) = spec(ds.id.clone(), 1, 1, 1) else { unreachable!() };
        f(&mut s);
        core.submit_job(&p, JobSpec::FineTune(s))
    };
    type Edit<'a> = &'a dyn Fn(&mut FineTuneSpec);
    let invalid: [(&str, Edit<'_>); 9] = [
        ("rank 0", &|s| s.hyperparameters.rank = 0),
        ("epochs", &|s| s.hyperparameters.n_epochs = 51),
        ("batch", &|s| s.hyperparameters.batch_size = 0),
        ("lr", &|s| s.hyperparameters.learning_rate_multiplier = f64::NAN),
        ("alpha", &|s| s.hyperparameters.alpha = -1.0),
        ("module", &|s| s.hyperparameters.target_modules = vec!["lm_head".into()]),
        ("twice", &|s| s.hyperparameters.target_modules = vec!["q_proj".into(), "q_proj".into()]),
        ("max_seq", &|s| s.hyperparameters.max_seq = 100_000),
        ("suffix", &|s| s.suffix = Some("Has Spaces".into())),
    ];
    for (what, f) in invalid {
        assert!(matches!(with(f), Err(Error::InvalidArgument(_))), "{what}");
    }
    assert!(matches!(
        with(&|s| s.base_model = ModelId::new("no-such-model").expect("id")),
        Err(Error::NotFound { kind: "base model" })
    ));
    // Another tenant's dataset is not found.
    let other = TenantId::new("globex").expect("id");
    core.create_tenant(&other, Tier::Basic).expect("tenant");
    core.grant_credits(&other, 10, "t").expect("grant");
    let op = Principal::operator(&other);
    let JobSpec::FineTune(s) = spec(ds.id.clone(), 1, 1, 1) else { unreachable!() };
    assert!(matches!(core.submit_job(&op, JobSpec::FineTune(s)), Err(Error::NotFound { .. })));
    // No credits, no job.
    let broke = TenantId::new("broke").expect("id");
    core.create_tenant(&broke, Tier::Basic).expect("tenant");
    let bp = Principal::operator(&broke);
    let bds = core.upload_dataset(&bp, "d.jsonl", &dataset(1)).expect("upload");
    let JobSpec::FineTune(s) = spec(bds.id, 1, 1, 1) else { unreachable!() };
    assert!(matches!(core.submit_job(&bp, JobSpec::FineTune(s)), Err(Error::InsufficientCredits { .. })));
    // Unknown fields in a stored spec are refused rather than ignored.
    assert!(serde_json::from_str::<Hyperparameters>(r#"{"n_epoch": 3}"#).is_err());

    // Valid JSONL whose only answer lies past max_seq: the job fails naming the line and the fix,
    // charges nothing, and leaves no checkpoint or model behind.
    let long_user = "word ".repeat(200);
    let line = serde_json::json!({"messages": [
        {"role": "user", "content": long_user},
        {"role": "assistant", "content": CANARY},
    ]});
    let ds = core.upload_dataset(&p, "long.jsonl", format!("{line}\n").as_bytes()).expect("upload");
    let JobSpec::FineTune(mut s) = spec(ds.id, 1, 1, 1) else { unreachable!() };
    s.hyperparameters.max_seq = 32;
    let job = core.submit_job(&p, JobSpec::FineTune(s)).expect("submit");
    let done = Worker::new(core.clone(), "w", PoolId::shared(), runner()).run_once().expect("run").expect("job");
    assert_eq!(done.id, job.id);
    assert_eq!(done.state, JobState::Failed);
    let err = done.error.expect("error");
    assert!(err.contains("line 1") && err.contains("max_seq"), "{err}");
    assert!(!err.contains(CANARY) && !err.contains("word word"), "the error echoes content: {err}");
    assert_eq!(core.balance(p.tenant()).expect("balance"), 1_000_000);
    assert!(core.list_fine_tuned_models(&p).expect("list").is_empty());
}

#[test]
fn a_running_fine_tune_can_be_cancelled() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let (core, p) = setup(dir.path(), &model, "acme");
    let ds = core.upload_dataset(&p, "train.jsonl", &dataset(8)).expect("upload");
    let job = core.submit_job(&p, spec(ds.id, 20, 1, 1)).expect("submit");
    let worker = Worker::new(core.clone(), "w", PoolId::shared(), runner()).with_lease(Duration::from_millis(600));
    let handle = std::thread::spawn(move || worker.run_once());
    let deadline = Instant::now() + Duration::from_secs(120);
    while !core.job_events(&p, &job.id).expect("events").iter().any(|e| e.kind == "checkpoint") {
        assert!(Instant::now() < deadline, "no checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    core.cancel_job(&p, &job.id).expect("cancel");
    let done = handle.join().expect("join").expect("run").expect("job");
    assert_eq!(done.state, JobState::Cancelled);
    assert!(core.list_fine_tuned_models(&p).expect("list").is_empty());
    // The checkpoint went with the job; the tokens trained up to it stay paid for.
    assert!(
        files_under(&dir.path().join("data"))
            .iter()
            .all(|f| !contains(&std::fs::read(f).expect("read"), CANARY.as_bytes()))
    );
    let charged = 1_000_000 - core.balance(p.tenant()).expect("balance");
    assert!(charged > 0);
}

#[test]
#[ignore = "child process of a_worker_killed_mid_fine_tune_resumes_from_its_checkpoint"]
fn fine_tune_crash_child_worker() {
    let Some(dir) = std::env::var_os(DIR_VAR) else { return };
    let core = Arc::new(open_core(Path::new(&dir)));
    let worker = Worker::new(core, "doomed", PoolId::shared(), runner()).with_lease(Duration::from_millis(1500));
    let _ = worker.run_once();
}

#[test]
fn a_worker_killed_mid_fine_tune_resumes_from_its_checkpoint() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let (core, p) = setup(dir.path(), &model, "acme");
    let ds = core.upload_dataset(&p, "train.jsonl", &dataset(8)).expect("upload");
    // 8 steps (batch 2, 2 epochs), a checkpoint every 2.
    let job = core.submit_job(&p, spec(ds.id, 2, 2, 2)).expect("submit");
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args(["--ignored", "--exact", "fine_tune_crash_child_worker", "--test-threads=1"])
        .env(DIR_VAR, dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(180);
    let checkpoint_step = loop {
        let events = core.job_events(&p, &job.id).expect("events");
        if let Some(e) = events.iter().find(|e| e.kind == "checkpoint") {
            break e.data["step"].as_u64().expect("step");
        }
        assert!(Instant::now() < deadline, "the child worker never checkpointed");
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().expect("kill");
    child.wait().expect("wait");
    let paid_at_kill = 1_000_000 - core.balance(p.tenant()).expect("balance");
    assert!(paid_at_kill > 0, "the checkpoint's tokens are paid");

    // The lease runs out; the job is requeued and a new worker resumes it from the checkpoint.
    std::thread::sleep(Duration::from_millis(1600));
    core.reap_expired_leases().expect("reap");
    let requeued = core.job(&p, &job.id).expect("job");
    assert_eq!(requeued.state, JobState::Queued);
    let done = Worker::new(core.clone(), "survivor", PoolId::shared(), runner()).run_once().expect("run").expect("job");
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.error);
    assert_eq!(done.attempts, 2);
    let result = done.result.expect("result");
    let resumed = result["resumed_at_step"].as_u64().expect("resumed");
    assert!(resumed >= checkpoint_step && resumed < 8, "resumed at {resumed}, checkpoint at {checkpoint_step}");
    let events = core.job_events(&p, &job.id).expect("events");
    assert!(events.iter().any(|e| e.data["name"] == "resumed"));

    // Every trained token paid exactly once across both attempts.
    let trained = result["trained_tokens"].as_u64().expect("trained") as i64;
    assert_eq!(1_000_000 - core.balance(p.tenant()).expect("balance"), trained);

    // Nothing in clear anywhere under the data directory, the dead worker's scratch included.
    let id = ModelId::new(result["fine_tuned_model"].as_str().expect("id")).expect("id");
    let files = core.fine_tuned_adapter(&p, &id).expect("adapter");
    assert_no_plaintext(dir.path(), &files.weights);
}

/// Probes of a GGUF's own bytes: a stretch of its metadata (the chat template) and 64 bytes from
/// the middle of its tensor data.
fn gguf_probes(bytes: &[u8]) -> [Vec<u8>; 2] {
    let template = b"{% for message in messages %}";
    let at = bytes.windows(template.len()).position(|w| w == template).expect("the model has a chat template");
    let mid = bytes.len() / 2;
    [bytes[at..at + 64].to_vec(), bytes[mid..mid + 64].to_vec()]
}

/// A customer GGUF on Pro: streamed in and sealed on the tenant's dedicated store, checked before
/// it is accepted, served to that tenant only under its `gguf:` id (the same tokens as the same
/// file registered as a base), fine-tuned in a job whose child gets the decrypted model through its
/// pipe, and never on disk in the clear. Free and Basic are refused; malformed, truncated and
/// oversized files leave nothing; another tenant finds nothing.
#[test]
fn a_customer_gguf_is_sealed_served_and_fine_tuned_for_its_tenant_only() {
    use soramai::{ChatMessage, GenerationOptions, Platform, PlatformError, PlatformOptions, Prompt};

    let Some(model) = reference_model() else { return };
    let gguf = std::fs::read(&model).expect("model bytes");
    let probes = gguf_probes(&gguf);
    let dir = tempfile::tempdir().expect("dir");
    let (core, basic) = setup(dir.path(), &model, "basic-co");
    let p = Platform::with_core(core.clone(), PlatformOptions::default()).expect("platform");
    let pro = |name: &str| {
        let t = TenantId::new(name).expect("tenant");
        core.create_tenant(&t, Tier::Pro).expect("create");
        core.grant_credits(&t, 1_000_000, "test").expect("grant");
        Principal::operator(&t)
    };
    let (acme, globex) = (pro("acme"), pro("globex"));
    let upload = |who: &Principal, name: &str, bytes: &[u8]| p.upload_model(who, name, &mut &bytes[..]);
    let stored = |who: &Principal| core.list_objects(who.tenant(), "").expect("objects").len();
    let blobs = |tenant: &str| files_under(&dir.path().join("data/dedicated").join(tenant)).len();

    // Below Pro: refused before a byte is stored.
    let free = TenantId::new("free-co").expect("tenant");
    core.create_tenant(&free, Tier::Free).expect("create");
    for (who, tier) in [(&basic, Tier::Basic), (&Principal::operator(&free), Tier::Free)] {
        let e = upload(who, "mine", &gguf).expect_err("below Pro");
        assert!(matches!(e, PlatformError::Core(Error::NotAllowed { tier: t, .. }) if t == tier), "{e}");
        assert_eq!(stored(who), 0);
    }
    // Malformed, truncated, hostile, misnamed: refused, and nothing stays.
    let before = (stored(&acme), blobs("acme"));
    let mut hostile = gguf.clone();
    hostile[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // tensor count
    for (what, bytes, name) in [
        ("empty", &b""[..], "m"),
        ("not a GGUF", &b"certainly not a model file"[..], "m"),
        ("truncated", &gguf[..gguf.len() / 3], "m"),
        ("one byte short", &gguf[..gguf.len() - 1], "m"),
        ("hostile count", &hostile[..], "m"),
        ("bad name", &gguf[..], "Not A Name"),
    ] {
        let e = upload(&acme, name, bytes).expect_err(what);
        assert!(
            matches!(e, PlatformError::InvalidArgument(_) | PlatformError::Core(Error::InvalidArgument(_))),
            "{what}: {e}"
        );
    }
    assert_eq!((stored(&acme), blobs("acme")), before, "a refused upload leaves no object and no blob");
    assert!(p.custom_models(&acme).expect("list").is_empty());

    // Accepted: sealed on acme's dedicated store, listed for acme only.
    let m = upload(&acme, "my-smol", &gguf).expect("upload");
    assert!(m.id.as_str().starts_with("gguf:acme:my-smol:"), "{}", m.id);
    assert_eq!((m.bytes, m.architecture.as_str()), (gguf.len() as u64, "llama"));
    assert_eq!(m.sha256.len(), 64);
    assert!(blobs("acme") > before.1, "the sealed file lives on the tenant's dedicated store");
    let ids = |who: &Principal| p.list_models(who).expect("models").into_iter().map(|m| m.id).collect::<Vec<_>>();
    assert!(ids(&acme).contains(&m.id.as_str().to_owned()));
    assert!(!ids(&globex).contains(&m.id.as_str().to_owned()));

    // Served under its id: the same greedy answer as the same file registered as the base.
    let ask = |who: &Principal, model: &str| {
        let prompt = Prompt::Chat(vec![ChatMessage::new("user", "Name a color.")]);
        let options = GenerationOptions { max_tokens: Some(8), temperature: Some(0.0), ..GenerationOptions::default() };
        p.generate(who, model, &prompt, &options).and_then(|s| s.collect()).map(|c| c.text)
    };
    assert_eq!(ask(&acme, m.id.as_str()).expect("custom"), ask(&acme, "smollm2").expect("base"));

    // Another tenant finds nothing: not to read, serve, train on or delete.
    let not_found = |r: Result<(), PlatformError>| matches!(r, Err(PlatformError::Core(Error::NotFound { .. })));
    assert!(not_found(p.custom_model(&globex, m.id.as_str()).map(drop)));
    assert!(not_found(ask(&globex, m.id.as_str()).map(drop)));
    assert!(not_found(p.delete_model(&globex, m.id.as_str())));
    let theirs = core.upload_dataset(&globex, "train.jsonl", &dataset(2)).expect("dataset");
    let JobSpec::FineTune(mut on_theirs) = spec(theirs.id, 1, 1, 1) else { unreachable!() };
    on_theirs.base_model = m.id.clone();
    assert!(matches!(core.submit_job(&globex, JobSpec::FineTune(on_theirs)), Err(Error::NotFound { .. })));

    // Fine-tuned like the reference base, on acme's dedicated pool.
    let ds = core.upload_dataset(&acme, "train.jsonl", &dataset(4)).expect("dataset");
    let JobSpec::FineTune(mut ft) = spec(ds.id, 1, 2, 10) else { unreachable!() };
    ft.base_model = m.id.clone();
    core.submit_job(&acme, JobSpec::FineTune(ft)).expect("submit");
    let pool = PoolId::dedicated_for(acme.tenant());
    let done = Worker::new(core.clone(), "w", pool, runner()).run_once().expect("run").expect("job");
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.error);
    let tuned = done.result.expect("result")["fine_tuned_model"].as_str().expect("id").to_owned();
    assert!(tuned.starts_with(&format!("ft:{}:acme:kumo:", m.id.as_str())), "{tuned}");
    assert!(!ask(&acme, &tuned).expect("tuned").is_empty());
    assert!(not_found(ask(&globex, &tuned).map(drop)));

    // Never in the clear on disk: not the metadata, not the tensors, anywhere under the data.
    for f in files_under(dir.path()) {
        let bytes = std::fs::read(&f).expect("read");
        for probe in &probes {
            assert!(!contains(&bytes, probe), "GGUF bytes in plaintext in {}", f.display());
        }
    }

    // Deleted: refused while a fine-tuned model stands on it, then gone and no longer served.
    let e = p.delete_model(&acme, m.id.as_str()).expect_err("dependent");
    assert!(matches!(e, PlatformError::Core(Error::InvalidArgument(_))), "{e}");
    p.delete_model(&acme, &tuned).expect("delete tuned");
    p.delete_model(&acme, m.id.as_str()).expect("delete");
    assert!(not_found(ask(&acme, m.id.as_str()).map(drop)));
    assert!(p.custom_models(&acme).expect("list").is_empty());
    core.verify_audit(acme.tenant()).expect("the audit chain verifies");
}

/// The size limit holds while the bytes stream: the upload stops at the limit and leaves nothing.
#[test]
fn an_oversized_customer_gguf_stops_at_the_limit_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    drop(LocalRootKey::create_file(&dir.path().join("root.key")).expect("root"));
    let root = LocalRootKey::from_file(&dir.path().join("root.key")).expect("root");
    let mut config = Config::new(dir.path().join("data"), Arc::new(root));
    config.limits.max_custom_model_bytes = 1 << 20;
    let core = Arc::new(Core::open(config).expect("open"));
    let t = TenantId::new("acme").expect("tenant");
    core.create_tenant(&t, Tier::Pro).expect("create");
    let p = soramai::Platform::with_core(core.clone(), soramai::PlatformOptions::default()).expect("platform");
    // A source that would never end: only the limit stops it.
    let mut endless = std::io::repeat(7);
    let e = p.upload_model(&Principal::operator(&t), "big", &mut endless).expect_err("too large");
    assert!(matches!(e, soramai::PlatformError::Core(Error::TooLarge { limit: 1048576, .. })), "{e}");
    assert!(core.list_objects(&t, "").expect("objects").is_empty());
    assert!(files_under(&dir.path().join("data/dedicated")).is_empty(), "no blob is left behind");
}
