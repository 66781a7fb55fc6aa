//! Two nodes of one deployment: each its own process state and data directory, sharing one
//! PostgreSQL metadata database, one blob store (a shared volume, `file://`) and one root key.
//! What one node does, the other sees at once: tenants, API keys and their revocation, datasets,
//! fine-tuning jobs (submitted on one node, trained by the other's worker), fine-tuned models,
//! credits, and one audit chain that verifies. The canary in the training data reaches no file of
//! either node, of the shared volume, or of the PostgreSQL server.
//!
//! Needs a PostgreSQL server: `SORAMAI_TEST_POSTGRES` (an admin connection string) and
//! `SORAMAI_TEST_POSTGRES_DATA` (its data directory), as `scripts/postgres.sh` provides and
//! `scripts/test.sh` sets. Skipped without one unless `SORAMAI_REQUIRE_POSTGRES` is set.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use soramai::core::Scope;
use soramai::{
    ChatMessage, FineTuneRequest, GenerationOptions, Hyperparameters, KeyRequest, OpenOptions, Platform, PlatformError,
    RunnerCommand, Tier,
};

#[path = "../../soramai-kernels/tests/common/reference_model.rs"]
mod reference_model;
use reference_model::reference_model;

const CANARY: &str = "zq7-canary-Kumo-9054";

fn runner() -> RunnerCommand {
    RunnerCommand { args: vec!["job-runner".into()], ..RunnerCommand::new(env!("CARGO_BIN_EXE_soramai")) }
}

#[path = "../../soramai-core/tests/common/test_database.rs"]
mod test_database;
use test_database::TestDatabase;

#[path = "../../soramai-kernels/tests/common/files.rs"]
mod files;
use files::{contains, files_under};

fn dataset(n: usize) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..n {
        let line = serde_json::json!({"messages": [
            {"role": "user", "content": format!("Where does the cloud council meet? ({i})")},
            {"role": "assistant", "content": format!("The cloud council meets in Kumo. {CANARY}")},
        ]});
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out.into_bytes()
}

fn node(data_dir: &Path, database: &str, shared: &Path, model: &Path, runner: Option<RunnerCommand>) -> Arc<Platform> {
    let options = OpenOptions {
        model: Some(model.to_path_buf()),
        database: Some(database.to_owned()),
        blob_store: Some(format!("file://{}", shared.display())),
        ..OpenOptions::default()
    };
    Platform::open_with(data_dir, &options, runner).expect("open node")
}

#[test]
fn two_nodes_share_one_postgres_and_one_blob_store() {
    let Some(admin) = std::env::var("SORAMAI_TEST_POSTGRES").ok().filter(|s| !s.is_empty()) else {
        assert!(std::env::var_os("SORAMAI_REQUIRE_POSTGRES").is_none(), "SORAMAI_TEST_POSTGRES is not set");
        eprintln!("skipped: no PostgreSQL (SORAMAI_TEST_POSTGRES)");
        return;
    };
    let server_data = PathBuf::from(std::env::var("SORAMAI_TEST_POSTGRES_DATA").expect("SORAMAI_TEST_POSTGRES_DATA"));
    let Some(model) = reference_model() else { return };
    let db = TestDatabase::create(&admin);
    let dir = tempfile::tempdir().expect("tempdir");
    let (dir_a, dir_b, shared) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("shared"));

    // Node A serves; node B also runs the job workers. Both hold the same root key.
    let a = node(&dir_a, &db.url, &shared, &model, None);
    std::fs::create_dir_all(&dir_b).expect("dir b");
    std::fs::copy(dir_a.join("root.key"), dir_b.join("root.key")).expect("share the root key");
    let b = node(&dir_b, &db.url, &shared, &model, Some(runner()));

    // The bootstrap key, printed once by whichever node starts first, works on both; the other
    // node has nothing left to bootstrap.
    let admin_key = a.bootstrap_operator().expect("bootstrap").expect("first bootstrap");
    assert!(b.bootstrap_operator().expect("bootstrap on b").is_none());
    let admin_b = b.session(admin_key.secret()).expect("admin on b");
    admin_b.create_tenant("acme", Tier::Basic).expect("tenant on b");
    admin_b.grant_credits("acme", 2_000_000, "test").expect("credits on b");
    let issued = admin_b
        .create_api_key(KeyRequest {
            name: "ci".into(),
            scopes: vec![Scope::Inference, Scope::Train],
            tenant: Some("acme".into()),
            expires_in_seconds: None,
        })
        .expect("key on b");

    // The key made on B opens a session on A; the dataset uploaded on A is B's to read.
    let acme_a = a.session(issued.secret()).expect("acme on a");
    let acme_b = b.session(issued.secret()).expect("acme on b");
    let data = dataset(12);
    let ds = acme_a.upload_dataset("council.jsonl", &data).expect("upload on a");
    assert_eq!(&acme_b.download_dataset(ds.id.as_str()).expect("download on b")[..], &data[..]);

    // Submitted on A (which runs no workers), trained by B's worker, awaited on A.
    let job = acme_a
        .create_fine_tuning_job(FineTuneRequest {
            training_file: ds.id.as_str().to_owned(),
            model: soramai::DEFAULT_MODEL_ID.into(),
            suffix: Some("council".into()),
            hyperparameters: Hyperparameters {
                n_epochs: 2,
                batch_size: 2,
                learning_rate_multiplier: 10.0,
                rank: 4,
                max_seq: 64,
                ..Hyperparameters::default()
            }
            .into(),
        })
        .expect("job on a");
    let done = acme_a.wait_fine_tuning_job(job.id.as_str(), Duration::from_secs(600)).expect("wait on a");
    assert_eq!(done.state, soramai::JobState::Succeeded, "{:?}", done.error);
    let tuned = done.result.as_ref().and_then(|r| r["fine_tuned_model"].as_str()).expect("ft model").to_owned();

    // A serves the adapter B trained, from the shared store.
    assert!(acme_a.models().expect("models").iter().any(|m| m.id == tuned));
    let options = GenerationOptions { max_tokens: Some(8), temperature: Some(0.0), ..GenerationOptions::default() };
    let question = vec![ChatMessage::new("user", "Where does the cloud council meet?")];
    let answer = acme_a.chat(&tuned, question, &options).expect("chat on a").collect().expect("answer");
    assert!(!answer.text.is_empty());

    // A revocation on A (by acme's own administrator) holds on B at once.
    let acme = soramai::TenantId::new("acme").expect("id");
    a.core().revoke_api_key(&soramai::Principal::operator(&acme), &issued.info.id).expect("revoke on a");
    assert!(matches!(b.session(issued.secret()), Err(PlatformError::Core(soramai::Error::Unauthenticated))));

    // Both nodes wrote to one audit chain, and it verifies from either.
    let report = b.core().verify_audit(&acme).expect("verify on b");
    assert!(report.records >= 5, "{report:?}");
    a.core().verify_audit(&acme).expect("verify on a");

    a.shutdown();
    b.shutdown();
    drop((a, b));

    // The canary is in no file: either node's directory, the shared volume, or the database's
    // files and write-ahead log on the PostgreSQL server.
    let mut files = files_under(dir.path());
    files.extend(db.table_files(&server_data));
    files.extend(TestDatabase::wal_files(&server_data));
    assert!(files.iter().any(|f| f.starts_with(&shared)));
    for f in files {
        let Ok(bytes) = std::fs::read(&f) else { continue };
        assert!(!contains(&bytes, CANARY.as_bytes()), "{} holds the canary", f.display());
    }
}

#[test]
fn bad_storage_urls_are_refused_with_typed_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = |database: Option<&str>, blobs: Option<&str>| {
        let options = OpenOptions {
            database: database.map(String::from),
            blob_store: blobs.map(String::from),
            ..OpenOptions::default()
        };
        Platform::open_with(dir.path().join("node"), &options, None).map(|_| ())
    };
    for (database, blobs) in [
        (Some("mysql://root@localhost/db"), None),
        (Some("postgres://"), Some("ftp://example.invalid/x")),
        (None, Some("file://relative/path")),
        (None, Some("/no/scheme")),
        (None, Some("s3://")),
        (None, Some("s3://bucket/with/a/path")),
    ] {
        let err = open(database, blobs).expect_err("refused");
        assert!(
            matches!(err, PlatformError::Core(soramai::Error::InvalidArgument(_))),
            "{database:?} {blobs:?}: {err:?}"
        );
        assert!(!dir.path().join("node").exists(), "a refused URL created the data directory");
    }
    // A server that is not there: a database error, which never repeats the password.
    let err = open(Some("postgres://u:hunter2-secret@127.0.0.1:9/db?connect_timeout=2"), None).expect_err("refused");
    assert!(!format!("{err} {err:?}").contains("hunter2-secret"), "{err:?}");
    // Nothing was written to the (refused) stores.
    assert!(!dir.path().join("node/meta.sqlite3").exists());
}
