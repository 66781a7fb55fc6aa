//! Tenant A can never read, list or delete B's data, keys, jobs or objects, and a key of A never
//! authorizes anything of B.

mod common;

use std::time::Duration;

use common::*;
use soramai_core::{Error, JobSpec, KeyOptions, ObjectPath, Scope, SecretName, Tier};

#[test]
fn every_path_of_a_given_b_ids_fails_with_a_typed_error() {
    let env = Env::new();
    let core = &env.core;
    let (a, pa) = env.tenant("tenant-a", Tier::Basic);
    let (b, pb) = env.tenant("tenant-b", Tier::Basic);

    let ds_b = core.upload_dataset(&pb, "b.jsonl", &dataset(3, "bee")).expect("upload b");
    let secret = SecretName::new("hf-token").expect("name");
    core.put_secret(&pb, &secret, b"b-secret-value").expect("secret b");
    let key_b = core.create_api_key(&pb, KeyOptions::new("b", &Scope::ALL)).expect("key b");
    let job_b = core.submit_job(&pb, JobSpec::Checksum { dataset: ds_b.id.clone(), pace_ms: 0 }).expect("job b");
    let path = ObjectPath::new("models/adapter.bin").expect("path");
    core.put_object(&b, &path, b"b-object").expect("object b");

    // A's principal (operator or key) given B's ids.
    let key_a = core.create_api_key(&pa, KeyOptions::new("a", &Scope::ALL)).expect("key a");
    let pa_key = core.authenticate(key_a.secret()).expect("auth a");
    assert_eq!(pa_key.tenant(), &a);
    for p in [&pa, &pa_key] {
        assert!(matches!(core.dataset(p, &ds_b.id), Err(Error::NotFound { .. })));
        assert!(matches!(core.download_dataset(p, &ds_b.id), Err(Error::NotFound { .. })));
        assert!(matches!(core.delete_dataset(p, &ds_b.id), Err(Error::NotFound { .. })));
        assert!(core.list_datasets(p).expect("list").is_empty());
        assert!(matches!(core.get_secret(p, &secret), Err(Error::NotFound { .. })));
        assert!(matches!(core.delete_secret(p, &secret), Err(Error::NotFound { .. })));
        assert!(core.list_secrets(p).expect("list").is_empty());
        assert!(matches!(core.job(p, &job_b.id), Err(Error::NotFound { .. })));
        assert!(matches!(core.job_events(p, &job_b.id), Err(Error::NotFound { .. })));
        assert!(matches!(core.cancel_job(p, &job_b.id), Err(Error::NotFound { .. })));
        assert!(core.list_jobs(p).expect("list").is_empty());
        assert!(matches!(core.revoke_api_key(p, &key_b.info.id), Err(Error::NotFound { .. })));
        assert!(matches!(core.rotate_api_key(p, &key_b.info.id, Duration::from_secs(60)), Err(Error::NotFound { .. })));
        assert!(core.list_api_keys(p).expect("list").iter().all(|k| k.tenant == a));
        // A job over B's dataset cannot even be submitted.
        assert!(matches!(
            core.submit_job(p, JobSpec::Checksum { dataset: ds_b.id.clone(), pace_ms: 0 }),
            Err(Error::NotFound { .. })
        ));
    }
    assert!(matches!(core.get_object(&a, &path), Err(Error::NotFound { .. })));
    assert!(matches!(core.open_object(&a, &path), Err(Error::NotFound { .. })));
    assert!(matches!(core.delete_object(&a, &path), Err(Error::NotFound { .. })));
    assert!(core.list_objects(&a, "").expect("list").is_empty());

    // B's things are all still there.
    assert_eq!(&core.download_dataset(&pb, &ds_b.id).expect("b reads")[..], &dataset(3, "bee")[..]);
    assert_eq!(&core.get_secret(&pb, &secret).expect("b secret")[..], b"b-secret-value");
    assert!(core.authenticate(key_b.secret()).is_ok());
    assert_eq!(core.job(&pb, &job_b.id).expect("job").tenant, b);
}

#[test]
fn a_key_of_a_never_authorizes_b() {
    let env = Env::new();
    let core = &env.core;
    let (_a, pa) = env.tenant("tenant-a", Tier::Pro);
    let (b, pb) = env.tenant("tenant-b", Tier::Pro);
    let ka = core.create_api_key(&pa, KeyOptions::new("a", &Scope::ALL)).expect("key a");
    let kb = core.create_api_key(&pb, KeyOptions::new("b", &Scope::ALL)).expect("key b");
    // A's secret presented under B's key id, and B's id with A's secret: both refused.
    let secret_a = ka.secret().rsplit('-').next().expect("secret");
    let secret_b = kb.secret().rsplit('-').next().expect("secret");
    assert!(matches!(core.authenticate(&format!("sk-{}-{secret_a}", kb.info.id)), Err(Error::Unauthenticated)));
    assert!(matches!(core.authenticate(&format!("sk-{}-{secret_b}", ka.info.id)), Err(Error::Unauthenticated)));
    // The principal of A's key is A's, whatever is asked of it.
    let p = core.authenticate(ka.secret()).expect("auth");
    assert_ne!(p.tenant(), &b);
    assert!(core.list_datasets(&p).expect("list").is_empty());
}

#[test]
fn b_blob_copied_over_a_blob_does_not_decrypt() {
    let env = Env::new();
    let core = &env.core;
    let (a, _) = env.tenant("tenant-a", Tier::Basic);
    let (b, _) = env.tenant("tenant-b", Tier::Basic);
    let path = ObjectPath::new("docs/one").expect("path");
    core.put_object(&a, &path, b"alpha alpha").expect("a");
    core.put_object(&b, &path, b"bravo bravo").expect("b");
    let blobs = files_under(&env.data_dir().join("blobs"));
    let blob_a = blobs.iter().find(|p| p.to_string_lossy().contains("/t/tenant-a/")).expect("a blob");
    let blob_b = blobs.iter().find(|p| p.to_string_lossy().contains("/t/tenant-b/")).expect("b blob");
    std::fs::copy(blob_b, blob_a).expect("copy");
    assert!(matches!(core.get_object(&a, &path), Err(Error::Integrity)));
    assert!(matches!(core.open_object(&a, &path), Err(Error::Integrity)));
    // Moving an object to another path of the same tenant fails too.
    let other = ObjectPath::new("docs/two").expect("path");
    core.put_object(&b, &other, b"charlie").expect("b2");
    let blobs: Vec<_> = files_under(&env.data_dir().join("blobs"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/t/tenant-b/"))
        .collect();
    assert_eq!(blobs.len(), 2);
    let tmp = std::fs::read(&blobs[0]).expect("read");
    std::fs::copy(&blobs[1], &blobs[0]).expect("copy");
    std::fs::write(&blobs[1], tmp).expect("write");
    assert!(matches!(core.get_object(&b, &path), Err(Error::Integrity)));
    assert!(matches!(core.get_object(&b, &other), Err(Error::Integrity)));
}
