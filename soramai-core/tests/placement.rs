//! Blob placement by tier (seed 003 §4): Free and Basic share a store (each tenant under its own
//! key), Pro and up get a store of their own; a tier change moves the tenant's ciphertext.

mod common;

use common::*;
use soramai_core::{ObjectPath, StorePlacement, Tier};

fn tenant_files(env: &Env, sub: &str, tenant: &str) -> usize {
    files_under(&env.data_dir().join(sub))
        .iter()
        .filter(|f| f.to_string_lossy().contains(&format!("/t/{tenant}/o/")))
        .count()
}

#[test]
fn tiers_place_blobs_on_shared_or_dedicated_stores() {
    let env = Env::new();
    let (basic, pb) = env.tenant("basic-co", Tier::Basic);
    let (pro, pp) = env.tenant("pro-co", Tier::Pro);
    assert_eq!(env.core.tenant(&basic).expect("t").store, StorePlacement::Shared);
    assert_eq!(env.core.tenant(&pro).expect("t").store, StorePlacement::Dedicated);
    env.core.upload_dataset(&pb, "b.jsonl", &dataset(3, "b")).expect("upload");
    env.core.upload_dataset(&pp, "p.jsonl", &dataset(3, "p")).expect("upload");
    assert_eq!(tenant_files(&env, "blobs", "basic-co"), 1);
    assert_eq!(tenant_files(&env, "dedicated", "basic-co"), 0);
    assert_eq!(tenant_files(&env, "blobs", "pro-co"), 0, "nothing of a Pro tenant on the shared store");
    assert_eq!(tenant_files(&env, "dedicated/pro-co", "pro-co"), 1);
}

#[test]
fn tier_changes_move_the_ciphertext_and_survive_a_restart() {
    let env = Env::new();
    let (t, p) = env.tenant("growing", Tier::Basic);
    let ds = env.core.upload_dataset(&p, "d.jsonl", &dataset(5, "g")).expect("upload");
    let path = ObjectPath::new("artifacts/model").expect("path");
    env.core.put_object(&t, &path, &vec![3u8; 50_000]).expect("put");
    assert_eq!(tenant_files(&env, "blobs", "growing"), 2);

    let up = env.core.set_tier(&t, Tier::Pro).expect("upgrade");
    assert_eq!(up.store, StorePlacement::Dedicated);
    assert_eq!(tenant_files(&env, "blobs", "growing"), 0, "moved off the shared store");
    assert_eq!(tenant_files(&env, "dedicated/growing", "growing"), 2);
    assert_eq!(&env.core.download_dataset(&p, &ds.id).expect("read")[..], &dataset(5, "g")[..]);
    let fresh = env.reopen();
    assert_eq!(fresh.tenant(&t).expect("t").store, StorePlacement::Dedicated);
    assert_eq!(&fresh.get_object(&t, &path).expect("read")[..], &vec![3u8; 50_000][..]);
    drop(fresh);

    // New writes go to the dedicated store; a downgrade brings everything back.
    env.core.put_object(&t, &ObjectPath::new("after/upgrade").expect("p"), b"new").expect("put");
    let down = env.core.set_tier(&t, Tier::Basic).expect("downgrade");
    assert_eq!(down.store, StorePlacement::Shared);
    assert_eq!(tenant_files(&env, "dedicated", "growing"), 0);
    assert_eq!(tenant_files(&env, "blobs", "growing"), 3);
    assert_eq!(&env.core.download_dataset(&p, &ds.id).expect("read")[..], &dataset(5, "g")[..]);
    assert!(env.core.verify_audit(&t).is_ok());
    // Closing a dedicated tenant purges its store.
    env.core.set_tier(&t, Tier::Org).expect("upgrade again");
    env.core.delete_tenant(&t).expect("delete");
    assert_eq!(tenant_files(&env, "", "growing"), 0);
}
