//! No plaintext at rest: after uploading a dataset and secrets that carry a canary, no file under
//! the data directory (SQLite and its WAL included) holds the canary, in UTF-8, UTF-16 or base64.

mod common;

use common::*;
use soramai_core::{JobSpec, KeyOptions, RunnerCommand, Scope, SecretName, Tier, Worker};

const CANARY: &str = "CANARY-7f3a9c1e-soramai-plaintext-probe";

fn base64(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

/// The forms the canary could take on disk: UTF-8, UTF-16 (both orders), and base64 at each of the
/// three alignments (the stable middle part of the encoding).
fn forms() -> Vec<Vec<u8>> {
    let mut forms = vec![CANARY.as_bytes().to_vec()];
    forms.push(CANARY.encode_utf16().flat_map(|u| u.to_le_bytes()).collect());
    forms.push(CANARY.encode_utf16().flat_map(|u| u.to_be_bytes()).collect());
    for pad in 0..3 {
        let mut d = vec![b'x'; pad];
        d.extend_from_slice(CANARY.as_bytes());
        let enc = base64(&d);
        let skip = (pad * 4).div_ceil(3) + 1;
        forms.push(enc.as_bytes()[skip..enc.len() - 4].to_vec());
    }
    forms
}

#[test]
fn canary_never_reaches_disk() {
    let env = Env::new();
    let core = &env.core;
    let (t, p) = env.tenant("canary-co", Tier::Pro);
    let data: Vec<u8> = (0..200)
        .map(|i| chat_line(&format!("tell me the code {i}"), &format!("the code is {CANARY} {i}")) + "\n")
        .collect::<String>()
        .into_bytes();
    let ds = core.upload_dataset(&p, "train.jsonl", &data).expect("upload");
    core.put_secret(&p, &SecretName::new("hf-token").expect("name"), CANARY.as_bytes()).expect("secret");
    core.put_object(
        &t,
        &soramai_core::ObjectPath::new("artifacts/adapter").expect("path"),
        CANARY.repeat(1000).as_bytes(),
    )
    .expect("object");
    let key = core.create_api_key(&p, KeyOptions::new("ci", &Scope::ALL)).expect("key");

    // Run a job over the dataset: the worker must not leave the plaintext in scratch either.
    let runner = RunnerCommand::new(env!("CARGO_BIN_EXE_soramai-job-runner"));
    let job = core.submit_job(&p, JobSpec::Checksum { dataset: ds.id.clone(), pace_ms: 0 }).expect("job");
    let worker = Worker::new(core.clone(), "w1", soramai_core::PoolId::dedicated_for(&t), runner);
    let done = worker.run_once().expect("run").expect("a job");
    assert_eq!(done.id, job.id);

    // Reads still work, and the data directory holds no plaintext.
    assert_eq!(&core.download_dataset(&p, &ds.id).expect("download")[..], &data[..]);
    let secret_text = key.secret().to_string();
    let files = env.stored_files();
    assert!(!env.metadata_files().is_empty());
    assert!(files.iter().any(|f| f.to_string_lossy().contains("/t/canary-co/o/")));
    for f in &files {
        let Ok(bytes) = std::fs::read(f) else { continue };
        for form in forms() {
            assert!(!contains(&bytes, &form), "{} holds the canary in some form", f.display());
        }
        assert!(!contains(&bytes, secret_text.as_bytes()), "{} holds an API key secret", f.display());
    }
    // No scratch directory is left behind.
    assert_eq!(std::fs::read_dir(env.data_dir().join("scratch")).expect("scratch").count(), 0);
}

/// File names and API key names are customer data too: sealed under the tenant's key in the
/// metadata (SQLite and its WAL, or PostgreSQL), shown opened, and a row written before names
/// were sealed is sealed when the node starts.
#[test]
fn file_and_key_names_are_sealed_at_rest() {
    const NAME: &str = "NAMECANARY-jones-medical-notes";
    let env = Env::new();
    let core = &env.core;
    let (t, p) = env.tenant("names-co", Tier::Basic);
    let ds = core.upload_dataset(&p, &format!("{NAME}.jsonl"), &dataset(2, "x")).expect("upload");
    assert_eq!(ds.name, format!("{NAME}.jsonl"));
    let key = core.create_api_key(&p, KeyOptions::new(format!("{NAME} key"), &[Scope::Train])).expect("key");
    assert_eq!(key.info.name, format!("{NAME} key"));
    assert_eq!(core.list_datasets(&p).expect("list")[0].name, format!("{NAME}.jsonl"));
    assert_eq!(core.dataset(&p, &ds.id).expect("one").name, format!("{NAME}.jsonl"));
    let keys = core.list_api_keys(&p).expect("keys");
    assert!(keys.iter().any(|k| k.name == format!("{NAME} key")), "{keys:?}");
    // A rotation keeps the name.
    let rotated = core.rotate_api_key(&p, &key.info.id, std::time::Duration::ZERO).expect("rotate");
    assert_eq!(rotated.info.name, format!("{NAME} key"));
    for f in env.stored_files() {
        let Ok(bytes) = std::fs::read(&f) else { continue };
        assert!(!contains(&bytes, NAME.as_bytes()), "{} holds a name in the clear", f.display());
    }

    // A row from before names were sealed: sealed at the next start, shown as it was.
    env.raw_sql(&format!("UPDATE datasets SET name = 'legacy-{NAME}.jsonl' WHERE tenant_id = '{}'", t.as_str()));
    assert_eq!(core.list_datasets(&p).expect("list")[0].name, format!("legacy-{NAME}.jsonl"));
    let report = env.reopen().recover_after_restart().expect("recover");
    assert_eq!(report.names_sealed, 1, "{report:?}");
    assert_eq!(core.list_datasets(&p).expect("list")[0].name, format!("legacy-{NAME}.jsonl"));
    assert_eq!(env.reopen().recover_after_restart().expect("again").names_sealed, 0);
}
