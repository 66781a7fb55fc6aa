//! The `object_store` blob backend (S3-compatible storage for several nodes), run against the
//! in-memory store and a local-filesystem store, through the whole core.
#![cfg(feature = "object-store")]

use std::sync::Arc;

use soramai_core::store::{BlobKey, BlobStore, ObjectBlobStore};
use soramai_core::{Config, Core, Error, LocalRootKey, ObjectPath, Principal, TenantId, Tier};

fn contract(store: &dyn BlobStore) {
    let k = BlobKey::new("t/acme/o/one").expect("key");
    assert!(matches!(store.get(&k), Err(Error::NotFound { .. })));
    store.put(&k, b"0123456789").expect("put");
    assert_eq!(store.get(&k).expect("get"), b"0123456789");
    assert_eq!(store.get_range(&k, 2..5).expect("range"), b"234");
    assert_eq!(store.size(&k).expect("size"), 10);
    assert!(store.age(&k).expect("age").is_some_and(|a| a < std::time::Duration::from_secs(60)));
    assert!(store.get_range(&k, 5..50).is_err());
    store.put(&k, b"replaced").expect("replace");
    assert_eq!(store.get(&k).expect("get"), b"replaced");
    store.put(&BlobKey::new("t/other/o/two").expect("key"), b"x").expect("put");
    assert_eq!(store.list("t/acme/").expect("list"), vec![k.clone()]);
    let streamed = BlobKey::new("t/acme/o/streamed").expect("key");
    let mut w = store.put_stream(&streamed).expect("stream");
    std::io::Write::write_all(&mut w, b"part one, ").expect("write");
    std::io::Write::write_all(&mut w, b"part two").expect("write");
    assert!(store.get(&streamed).is_err(), "invisible until committed");
    w.commit(store).expect("commit");
    assert_eq!(store.get(&streamed).expect("get"), b"part one, part two");
    store.delete(&streamed).expect("delete");
    store.delete(&k).expect("delete");
    store.delete(&k).expect("idempotent");
    assert!(store.list("t/acme/").expect("list").is_empty());
}

#[test]
fn object_blob_store_passes_the_blob_contract() {
    contract(&ObjectBlobStore::new(Arc::new(object_store::memory::InMemory::new())).expect("store"));
    let dir = tempfile::tempdir().expect("tempdir");
    contract(&soramai_core::store::LocalBlobStore::open(dir.path()).expect("local"));
}

#[test]
fn core_runs_on_an_object_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = Arc::new(object_store::memory::InMemory::new());
    let mut config = Config::new(dir.path().join("meta"), Arc::new(LocalRootKey::generate()));
    config.blobs = Some(Arc::new(ObjectBlobStore::new(memory).expect("store")));
    let core = Core::open(config).expect("open");
    let t = TenantId::new("acme").expect("id");
    core.create_tenant(&t, Tier::Basic).expect("tenant");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    let path = ObjectPath::new("docs/a").expect("path");
    core.put_object(&t, &path, &data).expect("put");
    assert_eq!(&core.get_object(&t, &path).expect("get")[..], &data[..]);
    let r = core.open_object(&t, &path).expect("open");
    assert_eq!(&r.read_range(40_000, 3_000).expect("range")[..], &data[40_000..43_000]);
    let p = Principal::operator(&t);
    let line = r#"{"messages":[{"role":"user","content":"u"},{"role":"assistant","content":"a"}]}"#;
    let ds = core.upload_dataset(&p, "d.jsonl", line.as_bytes()).expect("upload");
    assert_eq!(&core.download_dataset(&p, &ds.id).expect("download")[..], line.as_bytes());
    core.delete_tenant(&t).expect("delete");
    assert!(core.get_object(&t, &path).is_err());
}

#[test]
fn large_streams_go_up_in_parts_and_abandoned_uploads_leave_nothing() {
    let memory = Arc::new(object_store::memory::InMemory::new());
    let store = ObjectBlobStore::new(memory).expect("store");
    let key = BlobKey::new("t/acme/o/large").expect("key");
    let data: Vec<u8> = (0..(soramai_core::store::blob::MULTIPART_PART * 2 + 12345)).map(|i| (i % 251) as u8).collect();
    let mut w = store.put_stream(&key).expect("stream");
    for part in data.chunks(1 << 20) {
        std::io::Write::write_all(&mut w, part).expect("write");
    }
    w.commit(&store).expect("commit");
    assert_eq!(store.size(&key).expect("size"), data.len() as u64);
    assert_eq!(store.get_range(&key, 8_000_000..8_400_000).expect("range"), &data[8_000_000..8_400_000]);
    let other = BlobKey::new("t/acme/o/abandoned").expect("key");
    {
        let mut w = store.put_stream(&other).expect("stream");
        std::io::Write::write_all(&mut w, &data).expect("write");
    }
    assert!(matches!(store.get(&other), Err(Error::NotFound { .. })));
    assert_eq!(store.list("t/acme/").expect("list"), vec![key]);
}

#[test]
fn dedicated_stores_are_prefixes_of_the_bucket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = Arc::new(object_store::memory::InMemory::new());
    let mut config = Config::new(dir.path().join("meta"), Arc::new(LocalRootKey::generate()));
    config.blobs = Some(Arc::new(ObjectBlobStore::new(memory.clone()).expect("store")));
    config.dedicated = Some(Arc::new(soramai_core::store::DedicatedPrefixes::new(memory.clone())));
    let core = Core::open(config).expect("open");
    let (basic, pro) = (TenantId::new("small").expect("id"), TenantId::new("big").expect("id"));
    core.create_tenant(&basic, Tier::Basic).expect("basic");
    core.create_tenant(&pro, Tier::Pro).expect("pro");
    let path = ObjectPath::new("docs/a").expect("path");
    core.put_object(&basic, &path, b"shared store").expect("put basic");
    core.put_object(&pro, &path, b"dedicated store").expect("put pro");
    let listed = ObjectBlobStore::new(memory).expect("store").list("").expect("list");
    let names: Vec<&str> = listed.iter().map(BlobKey::as_str).collect();
    assert!(names.iter().any(|k| k.starts_with("t/small/")), "{names:?}");
    assert!(names.iter().any(|k| k.starts_with("dedicated/big/t/big/")), "{names:?}");
    assert!(!names.iter().any(|k| k.starts_with("t/big/")), "{names:?}");
    assert_eq!(&core.get_object(&pro, &path).expect("get")[..], b"dedicated store");
}

/// The `s3` feature against a real S3 protocol endpoint (moto's server on loopback, from
/// `scripts/s3-mock.sh`; `AWS_ENDPOINT` and the other `AWS_*` variables set by `scripts/test.sh`).
#[cfg(feature = "s3")]
#[test]
fn core_runs_on_an_s3_endpoint() {
    let Ok(bucket) = std::env::var("SORAMAI_TEST_S3_BUCKET") else {
        assert!(std::env::var_os("SORAMAI_REQUIRE_S3").is_none(), "SORAMAI_TEST_S3_BUCKET is not set");
        eprintln!("skipped: no S3 endpoint (SORAMAI_TEST_S3_BUCKET, AWS_ENDPOINT)");
        return;
    };
    const CANARY: &[u8] = b"zq7-canary-s3-Sora-5521";
    // Tenants of this run alone: the bucket outlives one test.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let (basic, pro) =
        (TenantId::new(format!("s3b{nanos}")).expect("id"), TenantId::new(format!("s3p{nanos}")).expect("id"));

    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::new(dir.path().join("meta"), Arc::new(LocalRootKey::generate()))
        .with_blob_url(&format!("s3://{bucket}"))
        .expect("s3 config");
    let core = Core::open(config).expect("open");
    core.create_tenant(&basic, Tier::Basic).expect("basic");
    core.create_tenant(&pro, Tier::Pro).expect("pro");
    let mut data = vec![7u8; 300_000];
    data[150_000..150_000 + CANARY.len()].copy_from_slice(CANARY);
    let path = ObjectPath::new("docs/a").expect("path");
    core.put_object(&basic, &path, &data).expect("put basic");
    core.put_object(&pro, &path, &data).expect("put pro");
    assert_eq!(&core.get_object(&basic, &path).expect("get basic")[..], &data[..]);
    let r = core.open_object(&pro, &path).expect("open pro");
    assert_eq!(&r.read_range(149_990, 40).expect("range")[..], &data[149_990..150_030]);

    // What the bucket holds, read with a client of its own: ciphertext only, the Pro tenant
    // under its dedicated prefix.
    let raw = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(&bucket).build().expect("client");
    let raw = ObjectBlobStore::new(Arc::new(raw)).expect("raw store");
    let keys = raw.list("").expect("list");
    let mine: Vec<&str> =
        keys.iter().map(BlobKey::as_str).filter(|k| k.contains(basic.as_str()) || k.contains(pro.as_str())).collect();
    assert!(mine.iter().any(|k| k.starts_with(&format!("t/{}/", basic.as_str()))), "{mine:?}");
    assert!(mine.iter().any(|k| k.starts_with(&format!("dedicated/{0}/t/{0}/", pro.as_str()))), "{mine:?}");
    for k in &mine {
        let bytes = raw.get(&BlobKey::new(*k).expect("key")).expect("get raw");
        assert!(!bytes.windows(CANARY.len()).any(|w| w == CANARY), "{k} holds the canary");
    }

    // A closed tenant's objects leave the bucket.
    core.delete_tenant(&pro).expect("delete");
    let left = raw.list("").expect("list");
    assert!(!left.iter().any(|k| k.as_str().contains(pro.as_str())), "{left:?}");
}
