//! The job machinery: a child process per job with a cleared environment, a private scratch
//! directory removed at the end, events, leases, requeue on expiry, cancellation, and pools.

mod common;

use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};
use soramai_core::{Error, JobSpec, JobState, KeyOptions, PoolId, RunnerCommand, Scope, Tier, Worker};

fn runner() -> RunnerCommand {
    RunnerCommand::new(env!("CARGO_BIN_EXE_soramai-job-runner"))
}

#[test]
fn checksum_job_runs_in_an_isolated_child() {
    let env = Env::new();
    let (_, p) = env.tenant("basic-co", Tier::Basic);
    let data = dataset(2000, "job");
    let ds = env.core.upload_dataset(&p, "d.jsonl", &data).expect("upload");
    let job = env.core.submit_job(&p, JobSpec::Checksum { dataset: ds.id, pace_ms: 0 }).expect("submit");
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.pool, PoolId::shared());
    let worker = Worker::new(env.core.clone(), "w-shared", PoolId::shared(), runner());
    let done = worker.run_once().expect("run").expect("claimed");
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.error);
    let result = done.result.expect("result");
    assert_eq!(result["sha256"], hex::encode(Sha256::digest(&data)));
    assert_eq!(result["bytes"], data.len());
    assert_eq!(result["lines"], 2000);
    assert_eq!(result["environment_variables"], 0, "the child's environment is cleared");
    assert_eq!(result["scratch_mode"], "700", "the scratch directory is private");
    assert_eq!(done.progress, 1.0);
    assert_eq!(std::fs::read_dir(env.data_dir().join("scratch")).expect("scratch").count(), 0, "scratch removed");
    let events = env.core.job_events(&p, &done.id).expect("events");
    assert!(events.iter().any(|e| e.kind == "progress"));
    assert!(events.iter().any(|e| e.kind == "metric"));
    assert_eq!(events.last().map(|e| e.data["state"].clone()), Some(serde_json::json!("succeeded")));
    assert!(worker.run_once().expect("run").is_none(), "queue is empty");
    let actions: Vec<String> = env
        .core
        .audit_log(&soramai_core::Principal::operator(p.tenant()))
        .expect("audit")
        .into_iter()
        .map(|r| r.action)
        .collect();
    for a in ["job.submitted", "job.started", "job.finished"] {
        assert!(actions.iter().any(|x| x == a), "{a}");
    }
}

#[test]
fn dedicated_pool_jobs_never_run_in_the_shared_pool() {
    let env = Env::new();
    let (pro, pp) = env.tenant("pro-co", Tier::Pro);
    let (org, po) = env.tenant("org-co", Tier::Org);
    let ds = env.core.upload_dataset(&pp, "d.jsonl", &dataset(3, "p")).expect("upload");
    let job = env.core.submit_job(&pp, JobSpec::Checksum { dataset: ds.id, pace_ms: 0 }).expect("submit");
    assert_eq!(job.pool, PoolId::dedicated_for(&pro));
    let shared = Worker::new(env.core.clone(), "shared-1", PoolId::shared(), runner());
    assert!(shared.run_once().expect("run").is_none(), "a shared worker must not take a Pro job");
    let other = Worker::new(env.core.clone(), "org-1", PoolId::dedicated_for(&org), runner());
    assert!(other.run_once().expect("run").is_none(), "another tenant's dedicated worker must not take it");
    let mine = Worker::new(env.core.clone(), "pro-1", PoolId::dedicated_for(&pro), runner());
    assert_eq!(mine.run_once().expect("run").expect("job").state, JobState::Succeeded);

    // An Org key bound to a named pool routes its jobs there.
    let mut opts = KeyOptions::new("gpu", &[Scope::Train]);
    opts.pool = Some(PoolId::new("dedicated:org-co-h100").expect("pool"));
    let key = env.core.create_api_key(&po, opts).expect("key");
    let principal = env.core.authenticate(key.secret()).expect("auth");
    let ds = env.core.upload_dataset(&principal, "o.jsonl", &dataset(3, "o")).expect("upload");
    let job = env.core.submit_job(&principal, JobSpec::Checksum { dataset: ds.id, pace_ms: 0 }).expect("submit");
    assert_eq!(job.pool.as_str(), "dedicated:org-co-h100");
}

#[test]
fn leases_expire_and_requeue_then_fail_after_max_attempts() {
    let env = Env::new();
    let (_, p) = env.tenant("acme", Tier::Basic);
    let ds = env.core.upload_dataset(&p, "d.jsonl", &dataset(3, "x")).expect("upload");
    let job = env.core.submit_job(&p, JobSpec::Checksum { dataset: ds.id, pace_ms: 0 }).expect("submit");
    let pool = PoolId::shared();
    for attempt in 1..=3 {
        let claim = env.core.claim_job("dying-worker", &pool, Duration::from_secs(30)).expect("claim").expect("job");
        assert_eq!(claim.job.attempts, attempt);
        assert_eq!(claim.job.state, JobState::Running);
        env.clock.advance(Duration::from_secs(20));
        assert!(!env.core.heartbeat(&job.id, "dying-worker", Duration::from_secs(30)).expect("beat"));
        // Another worker cannot touch it while the lease holds.
        assert!(matches!(env.core.heartbeat(&job.id, "intruder", Duration::from_secs(30)), Err(Error::LeaseLost)));
        assert!(env.core.claim_job("other", &pool, Duration::from_secs(30)).expect("claim").is_none());
        env.clock.advance(Duration::from_secs(31));
        assert_eq!(env.core.reap_expired_leases().expect("reap"), 1);
        let state = env.core.job(&p, &job.id).expect("job").state;
        assert_eq!(state, if attempt < 3 { JobState::Queued } else { JobState::Failed });
        // The dead worker's late report is refused.
        assert!(matches!(
            env.core.finish_job(&job.id, "dying-worker", soramai_core::Outcome::Succeeded(serde_json::json!({}))),
            Err(Error::LeaseLost)
        ));
    }
    assert!(env.core.job(&p, &job.id).expect("job").error.is_some());
}

#[test]
fn cancellation_of_queued_and_running_jobs() {
    let env = Env::new();
    let (_, p) = env.tenant("acme", Tier::Basic);
    let ds = env.core.upload_dataset(&p, "d.jsonl", &dataset(3000, "c")).expect("upload");
    let queued = env.core.submit_job(&p, JobSpec::Checksum { dataset: ds.id.clone(), pace_ms: 0 }).expect("submit");
    assert_eq!(env.core.cancel_job(&p, &queued.id).expect("cancel").state, JobState::Cancelled);
    assert!(matches!(
        env.core.cancel_job(&p, &queued.id),
        Err(Error::InvalidJobState { state: JobState::Cancelled, .. })
    ));

    // A running job: the worker sees the request at its next heartbeat and kills the child.
    let slow = env.core.submit_job(&p, JobSpec::Checksum { dataset: ds.id, pace_ms: 200 }).expect("submit");
    let core = env.core.clone();
    let worker = Worker::new(env.core.clone(), "w", PoolId::shared(), runner()).with_lease(Duration::from_millis(300));
    let handle = std::thread::spawn(move || worker.run_once());
    while core.job(&p, &slow.id).expect("job").state != JobState::Running {
        std::thread::sleep(Duration::from_millis(10));
    }
    core.cancel_job(&p, &slow.id).expect("cancel");
    let done = handle.join().expect("thread").expect("run").expect("job");
    assert_eq!(done.state, JobState::Cancelled);
    assert_eq!(std::fs::read_dir(env.data_dir().join("scratch")).expect("scratch").count(), 0);
}

#[test]
fn an_accepted_cancel_always_ends_cancelled_and_a_late_one_gets_the_final_state() {
    let env = Env::new();
    let (_, p) = env.tenant("acme", Tier::Basic);
    let ds = env.core.upload_dataset(&p, "d.jsonl", &dataset(3, "r")).expect("upload");
    let pool = PoolId::shared();
    let lease = Duration::from_secs(30);

    // Before the commit: the cancel is accepted, the worker's commit is refused, and even a
    // failure it reports afterwards ends the job cancelled.
    for report in [soramai_core::Outcome::Succeeded(serde_json::json!({})), soramai_core::Outcome::Failed("x".into())] {
        let job = env.core.submit_job(&p, JobSpec::Checksum { dataset: ds.id.clone(), pace_ms: 0 }).expect("submit");
        env.core.claim_job("w", &pool, lease).expect("claim").expect("job");
        assert_eq!(env.core.cancel_job(&p, &job.id).expect("accepted").state, JobState::Running);
        assert!(!env.core.begin_commit(&job.id, "w").expect("begin"), "a cancelled job's result is not stored");
        let outcome = match report {
            soramai_core::Outcome::Succeeded(_) => soramai_core::Outcome::Cancelled,
            failed => failed,
        };
        assert_eq!(env.core.finish_job(&job.id, "w", outcome).expect("finish").state, JobState::Cancelled);
    }

    // After the commit began: the cancel waits for the end and answers with the final state,
    // and the job is not cancelled.
    let job = env.core.submit_job(&p, JobSpec::Checksum { dataset: ds.id.clone(), pace_ms: 0 }).expect("submit");
    env.core.claim_job("w", &pool, lease).expect("claim").expect("job");
    assert!(env.core.begin_commit(&job.id, "w").expect("begin"));
    let (core, principal, id) = (env.core.clone(), p.clone(), job.id.clone());
    let cancel = std::thread::spawn(move || core.cancel_job(&principal, &id));
    std::thread::sleep(Duration::from_millis(100));
    let done =
        env.core.finish_job(&job.id, "w", soramai_core::Outcome::Succeeded(serde_json::json!({}))).expect("finish");
    assert_eq!(done.state, JobState::Succeeded);
    assert!(matches!(
        cancel.join().expect("thread"),
        Err(Error::InvalidJobState { state: JobState::Succeeded, action: "cancel" })
    ));
    assert!(!env.core.job(&p, &job.id).expect("job").cancel_requested);

    // A job whose worker died mid-commit runs again, and takes a cancel again.
    let job = env.core.submit_job(&p, JobSpec::Checksum { dataset: ds.id, pace_ms: 0 }).expect("submit");
    env.core.claim_job("dead", &pool, lease).expect("claim").expect("job");
    assert!(env.core.begin_commit(&job.id, "dead").expect("begin"));
    env.clock.advance(Duration::from_secs(31));
    env.core.reap_expired_leases().expect("reap");
    env.core.claim_job("w2", &pool, lease).expect("claim").expect("job");
    assert_eq!(env.core.cancel_job(&p, &job.id).expect("accepted").state, JobState::Running);
    assert!(!env.core.begin_commit(&job.id, "w2").expect("begin"));
}

#[test]
fn a_failing_runner_fails_the_job_and_cleans_up() {
    let env = Env::new();
    let (_, p) = env.tenant("acme", Tier::Basic);
    let ds = env.core.upload_dataset(&p, "d.jsonl", &dataset(3, "f")).expect("upload");
    env.core.submit_job(&p, JobSpec::Checksum { dataset: ds.id.clone(), pace_ms: 0 }).expect("submit");
    let missing = Worker::new(env.core.clone(), "w", PoolId::shared(), RunnerCommand::new("/nonexistent/runner"));
    let done = missing.run_once().expect("run").expect("job");
    assert_eq!(done.state, JobState::Failed);
    assert!(done.error.expect("error").contains("cannot start"));
    // The child applies the configured resource limits to itself before touching input.
    env.core.submit_job(&p, JobSpec::Checksum { dataset: ds.id, pace_ms: 0 }).expect("submit");
    let mut limited = runner();
    limited.max_memory_bytes = 3 << 30;
    limited.max_cpu_seconds = 120;
    limited.max_open_files = 32;
    let done = Worker::new(env.core.clone(), "w", PoolId::shared(), limited).run_once().expect("run").expect("job");
    let limits = &done.result.expect("result")["rlimits"];
    assert_eq!(limits["address_space_bytes"], 3u64 << 30);
    assert_eq!(limits["cpu_seconds"], 120);
    assert_eq!(limits["open_files"], 32);
    assert_eq!(std::fs::read_dir(env.data_dir().join("scratch")).expect("scratch").count(), 0);
}

/// A runner that prints `script`'s output instead of doing the job (its stdin is ignored).
fn scripted(script: &str) -> RunnerCommand {
    RunnerCommand { args: vec!["-c".into(), script.into(), "sh".into()], ..RunnerCommand::new("/bin/sh") }
}

#[test]
fn hostile_runner_output_fails_the_job_and_stores_nothing() {
    let env = Env::new();
    let (_, p) = env.tenant("acme", Tier::Basic);
    let ds = env.core.upload_dataset(&p, "d.jsonl", &dataset(3, "h")).expect("upload");
    let cases = [
        // A blob larger than any runner may hand back: the worker stops listening.
        (
            r#"printf '{"type":"checkpoint","data":{"step":1,"trained_tokens":5,"bytes":99999999999}}\n'"#,
            "without a result",
        ),
        // Fewer bytes than announced, then the runner ends.
        (
            r#"printf '{"type":"checkpoint","data":{"step":1,"trained_tokens":5,"bytes":100}}\nshort'"#,
            "without a result",
        ),
        // A checkpoint that does not say how far it got.
        (r#"printf '{"type":"checkpoint","data":{"bytes":3}}\nabc'; sleep 5"#, "without step"),
        // A checkpoint the tenant cannot pay for (no credits granted).
        (
            r#"printf '{"type":"checkpoint","data":{"step":1,"trained_tokens":5,"bytes":3}}\nabc'; sleep 5"#,
            "insufficient credits",
        ),
        // An artifact of an unknown name is ignored; a reported error becomes the job's error.
        (
            r#"printf '{"type":"artifact","data":{"name":"../../etc/passwd","bytes":3}}\nabc{"type":"error","data":{"message":"line 3: bad"}}\n'; exit 2"#,
            "line 3: bad",
        ),
    ];
    for (script, want) in cases {
        let job = env.core.submit_job(&p, JobSpec::Checksum { dataset: ds.id.clone(), pace_ms: 0 }).expect("submit");
        let done = Worker::new(env.core.clone(), "w", PoolId::shared(), scripted(script))
            .run_once()
            .expect("run")
            .expect("job");
        assert_eq!(done.id, job.id);
        assert_eq!(done.state, JobState::Failed, "{script}");
        let err = done.error.expect("error");
        assert!(err.to_lowercase().contains(want), "{script}: {err}");
        let path = soramai_core::ObjectPath::new(format!("jobs/{}/checkpoint", job.id.as_str())).expect("path");
        assert!(env.core.get_object(p.tenant(), &path).is_err(), "{script}: a checkpoint was stored");
        let events = env.core.job_events(&p, &job.id).expect("events");
        assert!(!events.iter().any(|e| e.kind == "checkpoint"), "{script}");
    }
    assert_eq!(env.core.balance(p.tenant()).expect("balance"), 0, "nothing was charged");
    assert_eq!(std::fs::read_dir(env.data_dir().join("scratch")).expect("scratch").count(), 0);
}

#[test]
fn ingest_jobs_need_the_rag_scope_are_bounded_per_tenant_and_leave_no_input_behind() {
    let env = Env::new();
    let (t, operator) = env.tenant("acme", Tier::Basic);
    let key = |scopes: &[Scope]| {
        let k = env.core.create_api_key(&operator, KeyOptions::new("k", scopes)).expect("key");
        env.core.authenticate(k.secret()).expect("auth")
    };
    let (rag, train) = (key(&[Scope::Rag]), key(&[Scope::Train]));
    let spec = || soramai_core::IngestSpec { corpus: "kb".into(), documents: 1, chunks: 1, embedder: None };
    let inputs = || env.core.list_objects(&t, "jobs/").expect("list").len();
    assert!(matches!(env.core.submit_ingest(&train, spec(), b"{}", 1), Err(Error::MissingScope(Scope::Rag))));
    assert!(matches!(
        env.core.submit_job(&rag, JobSpec::Ingest(spec())),
        Err(Error::MissingScope(Scope::Train)) | Err(Error::InvalidArgument(_))
    ));
    let job = env.core.submit_ingest(&rag, spec(), b"{\"corpus\":\"kb\"}", 1).expect("submit");
    assert_eq!(inputs(), 1, "the input waits, encrypted, with the job");
    // The tier's bound counts queued ones: a second is refused and stores nothing.
    assert!(matches!(env.core.submit_ingest(&rag, spec(), b"{}", 1), Err(Error::Busy { limit: 1, .. })));
    assert_eq!(inputs(), 1);
    // A train-only key of the same tenant neither lists nor reads it.
    assert!(env.core.list_jobs(&train).expect("list").iter().all(|j| j.id != job.id));
    assert!(matches!(env.core.job(&train, &job.id), Err(Error::MissingScope(Scope::Rag))));
    assert_eq!(env.core.list_jobs(&rag).expect("list").len(), 1);
    // Cancelled while queued: the input goes with it, and the place comes back.
    assert_eq!(env.core.cancel_job(&rag, &job.id).expect("cancel").state, JobState::Cancelled);
    assert_eq!(inputs(), 0);
    // A worker whose runner does not know the kind fails the job; the input goes too.
    let job = env.core.submit_ingest(&rag, spec(), b"{}", 1).expect("submit");
    let done = Worker::new(env.core.clone(), "w", PoolId::shared(), runner()).run_once().expect("run").expect("job");
    assert_eq!((done.id, done.state), (job.id, JobState::Failed));
    assert_eq!(inputs(), 0);
}

#[test]
fn a_stopping_worker_gives_its_running_job_back_to_the_queue() {
    let env = Env::new();
    let (_, p) = env.tenant("acme", Tier::Basic);
    let ds = env.core.upload_dataset(&p, "d.jsonl", &dataset(3000, "s")).expect("upload");
    let slow = env.core.submit_job(&p, JobSpec::Checksum { dataset: ds.id, pace_ms: 200 }).expect("submit");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = Worker::new(env.core.clone(), "w", PoolId::shared(), runner()).with_stop(stop.clone());
    let handle = std::thread::spawn(move || worker.run_once());
    while env.core.job(&p, &slow.id).expect("job").state != JobState::Running {
        std::thread::sleep(Duration::from_millis(10));
    }
    let stopping = std::time::Instant::now();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(handle.join().expect("thread"), Err(Error::LeaseLost)));
    assert!(stopping.elapsed() < Duration::from_secs(2), "stopping took {:?}", stopping.elapsed());
    let job = env.core.job(&p, &slow.id).expect("job");
    assert_eq!((job.state, job.attempts), (JobState::Queued, 0), "queued again, the attempt not counted");
    assert_eq!(std::fs::read_dir(env.data_dir().join("scratch")).expect("scratch").count(), 0);
    // Another worker runs it to the end.
    let done = Worker::new(env.core.clone(), "w2", PoolId::shared(), runner()).run_once().expect("run").expect("job");
    assert_eq!((done.id, done.state), (slow.id, JobState::Succeeded));
}
