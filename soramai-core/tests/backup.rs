//! Backups: a restore drill on a fresh data directory brings back every dataset, object, key
//! scope, API key and audit record; backups are incremental and hold no plaintext; deletion
//! reaches them (a closed tenant's and a shredded scope's data do not come back from a snapshot
//! taken before); snapshots past 30 days are pruned by the retention sweep; a tampered snapshot,
//! or a backup that fails half-way, never passes for a good one.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use soramai_core::backup::{self, BACKUP_RETENTION};
use soramai_core::store::{BlobKey, BlobStore, LocalBlobStore};
use soramai_core::{Config, Database, Error, KeyOptions, ObjectPath, Principal, Scope, SecretName, Tier};

/// A backup target directory and its URL.
fn target(env: &Env) -> (std::path::PathBuf, String, Arc<dyn BlobStore>) {
    let dir = env.dir.path().join("backups");
    let url = format!("file://{}", dir.display());
    let store = backup::open_target(&url).expect("target");
    (dir, url, store)
}

fn fresh_config(env: &Env, name: &str) -> Config {
    let mut config = Config::new(env.dir.path().join(name), env.root.clone());
    config.clock = env.clock.clone();
    config
}

/// `true` (after checking the refusal) when the environment runs on PostgreSQL, whose own tools
/// back up the metadata.
fn on_postgres(env: &Env, url: &str) -> bool {
    if matches!(env.database, Database::Postgres(_)) {
        assert!(matches!(env.core.backup(url), Err(Error::InvalidArgument(_))));
        return true;
    }
    false
}

#[test]
fn a_restore_drill_brings_everything_back_on_a_fresh_directory() {
    let env = Env::new();
    let (dir, url, store) = target(&env);
    if on_postgres(&env, &url) {
        return;
    }
    let (acme, p) = env.tenant("acme", Tier::Basic);
    let (initech, pi) = env.tenant("initech", Tier::Pro);
    let data = dataset(30, "drill-canary-Qx7");
    let ds = env.core.upload_dataset(&p, "a.jsonl", &data).expect("upload");
    let other = env.core.upload_dataset(&pi, "i.jsonl", &dataset(3, "initech")).expect("upload");
    env.core.put_secret(&p, &SecretName::new("hf-token").expect("name"), b"hf_secret_value").expect("secret");
    let scope = ObjectPath::new("corpora/kb").expect("path");
    env.core.create_key_scope(&acme, &scope).expect("scope");
    let in_scope = ObjectPath::new("corpora/kb/segment.idx").expect("path");
    env.core.put_object(&acme, &in_scope, b"index bytes").expect("put");
    env.core.rotate_tenant_key(&acme).expect("rotate");
    let rotated = ObjectPath::new("after/rotation").expect("path");
    env.core.put_object(&acme, &rotated, b"sealed under version 2").expect("put");
    let key = env.core.create_api_key(&p, KeyOptions::new("app", &[Scope::Train])).expect("key");

    let first = env.core.backup(&url).expect("backup");
    assert_eq!(first.copied, first.objects);
    assert!(first.objects >= 5, "{first:?}");
    assert_eq!(env.core.backup_targets().expect("targets"), vec![url.clone()]);
    // Incremental: nothing new, nothing copied; one new dataset, one object copied.
    let second = env.core.backup(&url).expect("backup");
    assert_eq!((second.objects, second.copied), (first.objects, 0));
    env.core.upload_dataset(&p, "b.jsonl", &dataset(2, "late")).expect("upload");
    let third = env.core.backup(&url).expect("backup");
    assert_eq!((third.objects, third.copied), (first.objects + 1, 1));
    assert_eq!(backup::list_snapshots(store.as_ref(), env.root.as_ref()).expect("list").len(), 3);
    let checked = backup::verify_backup(&store, env.root.clone(), None).expect("verify");
    assert_eq!(checked.id, third.snapshot);
    // Ciphertext only: neither the dataset nor the secret is in any file of the target.
    for f in files_under(&dir) {
        let bytes = std::fs::read(&f).expect("read");
        for needle in [&b"drill-canary-Qx7"[..], b"hf_secret_value", b"index bytes"] {
            assert!(!contains(&bytes, needle), "{} holds plaintext", f.display());
        }
    }

    // The drill: the node is gone; a fresh directory comes back from the latest snapshot.
    let live_records: u64 = [&acme, &initech].iter().map(|t| env.core.verify_audit(t).expect("chain").records).sum();
    let (restored, report) =
        backup::restore_backup(store.as_ref(), None, fresh_config(&env, "restored")).expect("restore");
    assert_eq!((report.tenants, report.shredded_tenants, report.shredded_objects), (2, 0, 0), "{report:?}");
    assert_eq!(report.objects, third.objects);
    assert_eq!(report.audit_records, live_records, "every audit chain restored and verified: {report:?}");
    for t in [&acme, &initech] {
        assert_eq!(restored.verify_audit(t).expect("chain").records, env.core.verify_audit(t).expect("chain").records);
    }
    let pa = Principal::operator(&acme);
    assert_eq!(&restored.download_dataset(&pa, &ds.id).expect("dataset")[..], &data[..]);
    assert_eq!(restored.list_datasets(&pa).expect("list").len(), 2);
    assert_eq!(
        &restored.get_secret(&pa, &SecretName::new("hf-token").expect("name")).expect("secret")[..],
        b"hf_secret_value"
    );
    assert_eq!(&restored.get_object(&acme, &in_scope).expect("scoped")[..], b"index bytes");
    assert_eq!(&restored.get_object(&acme, &rotated).expect("rotated")[..], b"sealed under version 2");
    assert_eq!(
        restored.download_dataset(&Principal::operator(&initech), &other.id).expect("pro").len(),
        other.bytes as usize
    );
    assert_eq!(restored.authenticate(key.secret()).expect("the key works").tenant(), &acme);
    // An older snapshot restores too; a directory in use is refused.
    let (_, older) =
        backup::restore_backup(store.as_ref(), Some(&first.snapshot), fresh_config(&env, "older")).expect("older");
    assert_eq!(older.objects, first.objects);
    let err = backup::restore_backup(store.as_ref(), None, fresh_config(&env, "restored")).expect_err("in use");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    let err =
        backup::restore_backup(store.as_ref(), Some("../../etc"), fresh_config(&env, "nope")).expect_err("bad id");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

#[test]
fn deletion_reaches_backups_taken_before_it() {
    let env = Env::new();
    let (_, url, store) = target(&env);
    if on_postgres(&env, &url) {
        return;
    }
    let (acme, p) = env.tenant("acme", Tier::Basic);
    let (globex, pg) = env.tenant("globex", Tier::Basic);
    let kept = env.core.upload_dataset(&p, "a.jsonl", &dataset(4, "acme")).expect("upload");
    let gone = env.core.upload_dataset(&pg, "g.jsonl", &dataset(4, "globex")).expect("upload");
    let scope = ObjectPath::new("corpora/kb").expect("path");
    env.core.create_key_scope(&acme, &scope).expect("scope");
    let in_scope = ObjectPath::new("corpora/kb/segment.idx").expect("path");
    env.core.put_object(&acme, &in_scope, b"index bytes").expect("put");
    let before = env.core.backup(&url).expect("backup");

    // Closing globex and shredding acme's corpus reach the target at once.
    env.core.delete_tenant(&globex).expect("close");
    env.core.shred_key_scope(&acme, &scope).expect("shred");
    assert!(matches!(store.get(&BlobKey::new("keys/globex").expect("key")), Err(Error::NotFound { .. })));

    let (restored, report) =
        backup::restore_backup(store.as_ref(), Some(&before.snapshot), fresh_config(&env, "restored"))
            .expect("restore");
    assert_eq!((report.shredded_tenants, report.shredded_objects), (1, 1), "{report:?}");
    assert!(matches!(restored.tenant(&globex), Err(Error::NotFound { .. })));
    assert!(restored.download_dataset(&Principal::operator(&globex), &gone.id).is_err());
    assert!(matches!(restored.get_object(&acme, &in_scope), Err(Error::NotFound { .. })));
    assert_eq!(
        restored.download_dataset(&Principal::operator(&acme), &kept.id).expect("kept").len() as u64,
        kept.bytes
    );
    // The ciphertext of globex's dataset is still in the target, and nothing there opens it: no
    // snapshot's metadata holds a wrapped key, and its keyring is gone.
    assert!(store.list("objects/").expect("list").len() >= report.objects + 2);
    let rings: Vec<String> = store.list("keys/").expect("list").iter().map(|k| k.as_str().to_owned()).collect();
    assert_eq!(rings, ["keys/acme"]);
}

#[test]
fn snapshots_past_thirty_days_are_pruned_by_the_retention_sweep() {
    let env = Env::new();
    let (_, url, store) = target(&env);
    if on_postgres(&env, &url) {
        return;
    }
    let (_, p) = env.tenant("acme", Tier::Basic);
    env.core.upload_dataset(&p, "a.jsonl", &dataset(2, "old")).expect("upload");
    let old = env.core.backup(&url).expect("backup");
    env.clock.advance(BACKUP_RETENTION + Duration::from_secs(60));
    let new = env.core.backup(&url).expect("backup");
    let report = env.core.sweep_retention().expect("sweep");
    assert_eq!(report.backups_pruned, 1);
    let err = backup::verify_backup(&store, env.root.clone(), Some(&old.snapshot)).expect_err("pruned");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert_eq!(backup::verify_backup(&store, env.root.clone(), None).expect("latest").id, new.snapshot);
    assert_eq!(env.core.sweep_retention().expect("sweep").backups_pruned, 0);
}

/// A target that fails every write after the first `ok` ones (a disk filling up, a process
/// killed): what a backup left half-done must not pass for a snapshot.
#[derive(Debug)]
struct FailingAfter {
    inner: LocalBlobStore,
    ok: AtomicUsize,
}

impl BlobStore for FailingAfter {
    fn put(&self, key: &BlobKey, data: &[u8]) -> soramai_core::Result<()> {
        if self.ok.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err() {
            return Err(Error::Io(std::io::Error::other("injected failure")));
        }
        self.inner.put(key, data)
    }
    fn get(&self, key: &BlobKey) -> soramai_core::Result<Vec<u8>> {
        self.inner.get(key)
    }
    fn get_range(&self, key: &BlobKey, range: std::ops::Range<u64>) -> soramai_core::Result<Vec<u8>> {
        self.inner.get_range(key, range)
    }
    fn size(&self, key: &BlobKey) -> soramai_core::Result<u64> {
        self.inner.size(key)
    }
    fn delete(&self, key: &BlobKey) -> soramai_core::Result<()> {
        self.inner.delete(key)
    }
    fn list(&self, prefix: &str) -> soramai_core::Result<Vec<BlobKey>> {
        self.inner.list(prefix)
    }
    fn age(&self, key: &BlobKey) -> soramai_core::Result<Option<Duration>> {
        self.inner.age(key)
    }
}

#[test]
fn a_tampered_or_half_written_snapshot_never_passes_for_a_good_one() {
    let env = Env::new();
    let (dir, url, store) = target(&env);
    if on_postgres(&env, &url) {
        return;
    }
    let (_, p) = env.tenant("acme", Tier::Basic);
    env.core.upload_dataset(&p, "a.jsonl", &dataset(3, "x")).expect("upload");
    let good = env.core.backup(&url).expect("backup");

    // A backup that fails at each of its writes in turn leaves the good snapshot the latest and
    // intact, until one gets through whole.
    env.core.upload_dataset(&p, "b.jsonl", &dataset(3, "y")).expect("upload");
    let mut failures = 0;
    for ok in 0..10 {
        let failing = FailingAfter { inner: LocalBlobStore::open(&dir).expect("store"), ok: AtomicUsize::new(ok) };
        match env.core.backup_into(&failing) {
            Err(_) => {
                failures += 1;
                let latest = backup::verify_backup(&store, env.root.clone(), None).expect("the good one");
                assert_eq!(latest.id, good.snapshot, "after {ok} writes");
            }
            Ok(done) => {
                assert_eq!(backup::verify_backup(&store, env.root.clone(), None).expect("new").id, done.snapshot);
                break;
            }
        }
    }
    assert!(failures >= 3, "{failures} failed backups");
    assert_eq!(backup::list_snapshots(store.as_ref(), env.root.as_ref()).expect("list").len(), 2);

    // A flipped byte in the manifest, the metadata or an object is caught.
    let flip = |key: &BlobKey| {
        let mut bytes = store.get(key).expect("read");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        store.put(key, &bytes).expect("write");
    };
    let objects: Vec<BlobKey> = store.list("objects/").expect("list");
    let cases = [
        vec![BlobKey::new(format!("snapshots/{}/manifest", good.snapshot)).expect("key")],
        vec![BlobKey::new(format!("snapshots/{}/meta", good.snapshot)).expect("key")],
        objects,
    ];
    for (i, keys) in cases.iter().enumerate() {
        keys.iter().for_each(&flip);
        let err = backup::verify_backup(&store, env.root.clone(), Some(&good.snapshot)).expect_err("tampered");
        assert!(matches!(err, Error::Integrity), "{keys:?}: {err:?}");
        let config = fresh_config(&env, &format!("tampered-{i}"));
        let data_dir = config.data_dir.clone();
        assert!(backup::restore_backup(store.as_ref(), Some(&good.snapshot), config).is_err(), "{keys:?}");
        assert!(!data_dir.join("meta.sqlite3").exists(), "a refused restore writes nothing");
        keys.iter().for_each(&flip);
    }
    backup::verify_backup(&store, env.root.clone(), Some(&good.snapshot)).expect("intact again");
    // Another root key opens nothing.
    let stranger = soramai_core::LocalRootKey::generate();
    assert!(backup::verify_backup(&store, Arc::new(stranger), None).is_err());
}

#[test]
fn a_backup_refuses_to_carry_a_corrupt_object_or_a_broken_chain_and_names_them() {
    let env = Env::new();
    let (_, url, store) = target(&env);
    if on_postgres(&env, &url) {
        return;
    }
    let (acme, p) = env.tenant("acme", Tier::Basic);
    let ds = env.core.upload_dataset(&p, "a.jsonl", &dataset(3, "x")).expect("upload");
    let good = env.core.backup(&url).expect("backup");
    env.core.upload_dataset(&p, "b.jsonl", &dataset(3, "y")).expect("upload");

    // The newest blob (b's), flipped: the backup authenticates what it copies and refuses.
    let mut blobs = files_under(&env.data_dir().join("blobs"));
    blobs.sort_by_key(|f| std::fs::metadata(f).and_then(|m| m.modified()).expect("mtime"));
    let blob = blobs.pop().expect("blob");
    let intact = std::fs::read(&blob).expect("read");
    let mut bad = intact.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 4;
    std::fs::write(&blob, &bad).expect("write");
    let err = env.core.backup(&url).expect_err("a corrupt object is not carried");
    let Error::IntegrityFailures(report) = &err else { panic!("{err:?}") };
    assert_eq!(report.corrupt_objects.len(), 1, "{report:?}");
    assert!(report.corrupt_objects[0].object.starts_with("datasets/"), "{report:?}");
    assert!(err.to_string().contains(&report.corrupt_objects[0].object), "{err}");
    let listed = backup::list_snapshots(store.as_ref(), env.root.as_ref()).expect("list");
    assert_eq!(listed.len(), 1, "no snapshot was written");
    assert_eq!(listed[0].id, good.snapshot);
    std::fs::write(&blob, &intact).expect("put back");

    // An edited audit record: refused too, naming the tenant and the record.
    env.raw_sql("UPDATE audit_log SET target = 'forged' WHERE seq = 2");
    let err = env.core.backup(&url).expect_err("a broken chain is not carried");
    let Error::IntegrityFailures(report) = &err else { panic!("{err:?}") };
    assert_eq!(report.broken_audit_chains.len(), 1, "{report:?}");
    assert_eq!(
        (report.broken_audit_chains[0].tenant.as_str(), report.broken_audit_chains[0].first_bad_record),
        ("acme", 2)
    );
    assert_eq!(backup::list_snapshots(store.as_ref(), env.root.as_ref()).expect("list").len(), 1);
    assert!(env.core.download_dataset(&p, &ds.id).is_ok());
    let _ = acme;
}

/// Re-seals a snapshot after `edit` changed its manifest or metadata copy, as one holding the
/// root key could (or a backup taken before objects were authenticated): only the deep checks
/// of the objects' tags and the audit chains can tell.
fn reseal(
    store: &Arc<dyn BlobStore>,
    root: &soramai_core::LocalRootKey,
    id: &str,
    edit: impl FnOnce(&mut serde_json::Value, &std::path::Path),
) {
    use sha2::Digest as _;
    use soramai_core::KeyProvider as _;
    let manifest_key = BlobKey::new(format!("snapshots/{id}/manifest")).expect("key");
    let meta_key = BlobKey::new(format!("snapshots/{id}/meta")).expect("key");
    let manifest_aad = format!("soramai backup manifest\0{id}");
    let meta_aad = format!("soramai backup metadata\0{id}");
    let manifest = root.unwrap(manifest_aad.as_bytes(), &store.get(&manifest_key).expect("manifest")).expect("opens");
    let mut manifest: serde_json::Value = serde_json::from_slice(&manifest).expect("json");
    let meta = root.unwrap(meta_aad.as_bytes(), &store.get(&meta_key).expect("meta")).expect("opens");
    let dir = tempfile::tempdir().expect("dir");
    let meta_path = dir.path().join("meta.sqlite3");
    std::fs::write(&meta_path, &meta[..]).expect("write");
    edit(&mut manifest, &meta_path);
    let meta = std::fs::read(&meta_path).expect("read");
    manifest["meta_sha256"] = hex::encode(sha2::Sha256::digest(&meta)).into();
    store.put(&meta_key, &root.wrap(meta_aad.as_bytes(), &meta).expect("seal")).expect("put");
    let manifest = serde_json::to_vec(&manifest).expect("json");
    store.put(&manifest_key, &root.wrap(manifest_aad.as_bytes(), &manifest).expect("seal")).expect("put");
}

/// Nothing of a failed restore is left: not the data directory, not a staging directory.
fn assert_nothing_restored(parent: &std::path::Path, name: &str) {
    assert!(!parent.join(name).exists(), "{name} was left behind");
    let staged: Vec<_> = std::fs::read_dir(parent)
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".restoring-"))
        .map(|e| e.path())
        .collect();
    assert!(staged.is_empty(), "staging left behind: {staged:?}");
}

#[test]
fn verify_and_restore_authenticate_every_object_and_audit_chain_and_a_failed_restore_leaves_nothing() {
    let env = Env::new();
    let (_, url, store) = target(&env);
    if on_postgres(&env, &url) {
        return;
    }
    let (_, p) = env.tenant("acme", Tier::Basic);
    env.core.upload_dataset(&p, "a.jsonl", &dataset(40, "x")).expect("upload");
    let good = env.core.backup(&url).expect("backup");
    backup::verify_backup(&store, env.root.clone(), Some(&good.snapshot)).expect("a good snapshot verifies");

    // An object whose bytes changed, with a manifest that agrees on its digest.
    let object_id = {
        let mut copy = None;
        reseal(&store, &env.root, &good.snapshot, |m, _| {
            let o = &mut m["objects"][0];
            let mut bytes = store
                .get(&BlobKey::new(format!("objects/{}", o["sha256"].as_str().expect("sha"))).expect("key"))
                .expect("object");
            let mid = bytes.len() / 2;
            bytes[mid] ^= 1;
            use sha2::Digest as _;
            let sha = hex::encode(sha2::Sha256::digest(&bytes));
            store.put(&BlobKey::new(format!("objects/{sha}")).expect("key"), &bytes).expect("put");
            copy = Some(o["blob"].as_str().expect("blob").to_owned());
            o["sha256"] = sha.into();
        });
        copy.expect("an object")
    };
    let err = backup::verify_backup(&store, env.root.clone(), Some(&good.snapshot)).expect_err("corrupt object");
    let Error::IntegrityFailures(report) = &err else { panic!("{err:?}") };
    assert_eq!(report.corrupt_objects.len(), 1, "{report:?} ({object_id})");
    let parent = env.dir.path();
    let err = backup::restore_backup(store.as_ref(), Some(&good.snapshot), fresh_config(&env, "restored-1"))
        .expect_err("refused");
    assert!(matches!(err, Error::IntegrityFailures(_)), "{err:?}");
    assert_nothing_restored(parent, "restored-1");

    // An edited audit record in the metadata copy.
    let second = env.core.backup(&url).expect("backup");
    reseal(&store, &env.root, &second.snapshot, |_, meta| {
        rusqlite::Connection::open(meta)
            .expect("db")
            .execute_batch("UPDATE audit_log SET target = 'forged' WHERE seq = 2")
            .expect("edit");
    });
    let err = backup::verify_backup(&store, env.root.clone(), Some(&second.snapshot)).expect_err("broken chain");
    let Error::IntegrityFailures(report) = &err else { panic!("{err:?}") };
    assert_eq!(report.broken_audit_chains.len(), 1, "{report:?}");
    assert_eq!(report.broken_audit_chains[0].first_bad_record, 2);
    // An empty directory waiting for the restore stays as it was.
    std::fs::create_dir(parent.join("restored-2")).expect("mkdir");
    let err = backup::restore_backup(store.as_ref(), Some(&second.snapshot), fresh_config(&env, "restored-2"))
        .expect_err("refused");
    assert!(matches!(err, Error::IntegrityFailures(_)), "{err:?}");
    assert!(parent.join("restored-2").read_dir().expect("dir").next().is_none(), "the empty directory stays empty");
    std::fs::remove_dir(parent.join("restored-2")).expect("rmdir");
    assert_nothing_restored(parent, "restored-2");
}

/// The staging copy fails part of the way (a disk filling up): the restore fails and leaves
/// nothing behind.
#[test]
fn a_restore_that_fails_writing_leaves_nothing_behind() {
    let env = Env::new();
    let (_, url, store) = target(&env);
    if on_postgres(&env, &url) {
        return;
    }
    let (_, p) = env.tenant("acme", Tier::Basic);
    for i in 0..3 {
        env.core.upload_dataset(&p, &format!("d{i}.jsonl"), &dataset(20, "x")).expect("upload");
    }
    env.core.backup(&url).expect("backup");
    for ok in [0, 1, 2] {
        let mut config = fresh_config(&env, &format!("full-{ok}"));
        let blobs_dir = env.dir.path().join(format!("full-{ok}-blobs"));
        config.blobs = Some(Arc::new(FailingAfter {
            inner: LocalBlobStore::open(&blobs_dir).expect("store"),
            ok: AtomicUsize::new(ok),
        }));
        let err = backup::restore_backup(store.as_ref(), None, config).expect_err("the disk filled up");
        assert!(matches!(err, Error::Io(_)), "{err:?}");
        assert_nothing_restored(env.dir.path(), &format!("full-{ok}"));
    }
}
