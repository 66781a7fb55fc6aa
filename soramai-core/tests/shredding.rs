//! Crypto-shredding and key custody: after tenant deletion the tenant's blobs, copied aside as a
//! backup, cannot be decrypted with anything the system holds; an Enterprise tenant's data cannot be
//! read by the operator without the customer's key; key rotation rewraps and retires old versions.

mod common;

use std::sync::Arc;

use common::*;
use soramai_core::crypto::{envelope, keys::TenantKey};
use soramai_core::{Error, KeyCustody, LocalRootKey, ObjectPath, Principal, SecretName, TenantId, Tier};

fn all_wrapped_keys(env: &Env) -> Vec<(String, u32, Vec<u8>)> {
    env.wrapped_keys()
}

#[test]
fn deleted_tenant_backups_are_undecryptable() {
    let env = Env::new();
    let core = &env.core;
    let (victim, p) = env.tenant("closing", Tier::Pro);
    let (_other, po) = env.tenant("staying", Tier::Pro);
    let data = dataset(50, "victim");
    let ds = core.upload_dataset(&p, "v.jsonl", &data).expect("upload");
    core.put_secret(&p, &SecretName::new("token").expect("n"), b"tok").expect("secret");
    core.rotate_tenant_key(&victim).expect("rotate");
    core.put_object(&victim, &ObjectPath::new("after/rotation").expect("p"), b"v2 data").expect("put");
    core.upload_dataset(&po, "o.jsonl", &dataset(5, "other")).expect("other upload");

    // The "backup": every blob of the victim, and the wrapped keys as they stood.
    let backup: Vec<(std::path::PathBuf, Vec<u8>)> = files_under(&env.data_dir())
        .into_iter()
        .filter(|f| f.to_string_lossy().contains("/t/closing/"))
        .map(|f| {
            let b = std::fs::read(&f).expect("read");
            (f, b)
        })
        .collect();
    assert_eq!(backup.len(), 3);
    let victim_wrapped: Vec<Vec<u8>> =
        all_wrapped_keys(&env).into_iter().filter(|(t, _, _)| t == "closing").map(|(_, _, w)| w).collect();
    assert_eq!(victim_wrapped.len(), 2);

    core.delete_tenant(&victim).expect("delete");

    // Gone from the live system.
    assert!(matches!(core.tenant(&victim), Err(Error::NotFound { .. })));
    assert!(matches!(core.download_dataset(&p, &ds.id), Err(Error::NotFound { .. })));
    assert!(files_under(&env.data_dir()).iter().all(|f| !f.to_string_lossy().contains("/t/closing/")));
    // Restoring the backup blobs does not help: no key the system holds opens them.
    let remaining = all_wrapped_keys(&env);
    assert!(remaining.iter().all(|(t, _, _)| t != "closing"));
    let victim_id = TenantId::new("closing").expect("id");
    for (_, sealed) in &backup {
        assert!(envelope::key_version(sealed).is_ok());
        for (t, v, wrapped) in &remaining {
            let tid = TenantId::new(t.clone()).expect("id");
            let key = TenantKey::unwrap(env.root.as_ref(), &tid, *v, wrapped).expect("unwrap live key");
            // Try the key under its own identity and relabelled as the victim's version.
            for path in ["datasets", "vault/token", "after/rotation"] {
                let p = ObjectPath::new(path).expect("p");
                assert!(envelope::open(&key, &victim_id, &p, sealed).is_err());
            }
        }
    }
    // The wrapped keys themselves are gone from the database files (secure_delete + checkpoint).
    // (PostgreSQL: the database's table files, rewritten by VACUUM FULL.)
    let files = env.metadata_files();
    assert!(!files.is_empty());
    for f in files {
        // A PostgreSQL file can vanish between the listing and the read (a rewritten table).
        let Ok(bytes) = std::fs::read(&f) else { continue };
        for w in &victim_wrapped {
            assert!(!contains(&bytes, w), "{} still holds a wrapped key", f.display());
        }
    }
    // The other tenant is untouched, and the audit trail records the closure.
    assert_eq!(core.list_datasets(&po).expect("list").len(), 1);
    assert!(core.verify_audit(&victim_id).expect("verify").records > 0);
    // A closed tenant's id cannot be reused to reach anything.
    assert!(matches!(core.create_tenant(&victim_id, Tier::Pro), Err(Error::AlreadyExists { .. })));
}

#[test]
fn rotation_rewraps_and_retires_old_versions() {
    let env = Env::new();
    let core = &env.core;
    let (t, p) = env.tenant("rotating", Tier::Basic);
    let d1 = core.upload_dataset(&p, "a.jsonl", &dataset(3, "one")).expect("upload");
    assert_eq!(core.rotate_tenant_key(&t).expect("rotate"), 2);
    let d2 = core.upload_dataset(&p, "b.jsonl", &dataset(3, "two")).expect("upload");
    let infos = core.list_objects(&t, "datasets/").expect("list");
    assert_eq!(infos.iter().map(|i| i.key_version).collect::<Vec<_>>().len(), 2);
    assert!(infos.iter().any(|i| i.key_version == 1) && infos.iter().any(|i| i.key_version == 2));
    // Version 1 is still needed, so it is not retired.
    assert!(core.retire_tenant_keys(&t).expect("retire").is_empty());
    assert_eq!(core.rewrap_tenant_objects(&t).expect("rewrap"), 1);
    assert!(core.list_objects(&t, "").expect("list").iter().all(|i| i.key_version == 2));
    assert_eq!(core.retire_tenant_keys(&t).expect("retire"), vec![1]);
    // Everything still reads, also after a restart (no cached keys).
    let fresh = env.reopen();
    assert_eq!(&fresh.download_dataset(&p, &d1.id).expect("d1")[..], &dataset(3, "one")[..]);
    assert_eq!(&fresh.download_dataset(&p, &d2.id).expect("d2")[..], &dataset(3, "two")[..]);
    assert!(fresh.verify_audit(&t).is_ok());
}

#[test]
fn enterprise_data_needs_the_customer_key() {
    let env = Env::new();
    let core = &env.core;
    let ent = TenantId::new("bigcorp").expect("id");
    assert!(matches!(core.create_tenant(&ent, Tier::Enterprise), Err(Error::NotAllowed { .. })));
    let customer_key = Arc::new(LocalRootKey::generate());
    let t = core.create_tenant_with_customer_key(&ent, Tier::Enterprise, customer_key.clone()).expect("create");
    assert_eq!(t.key_custody, KeyCustody::Customer);
    let p = Principal::operator(&ent);
    let ds = core.upload_dataset(&p, "e.jsonl", &dataset(3, "ent")).expect("upload");

    // After a restart the operator holds only the platform root: the data is locked.
    let restarted = env.reopen();
    assert!(matches!(restarted.download_dataset(&p, &ds.id), Err(Error::TenantLocked)));
    // Not even the operator's root unwraps the tenant key.
    assert!(matches!(restarted.unlock_tenant(&ent, env.root.clone()), Err(Error::Unauthenticated)));
    assert!(matches!(restarted.unlock_tenant(&ent, Arc::new(LocalRootKey::generate())), Err(Error::Unauthenticated)));
    restarted.unlock_tenant(&ent, customer_key).expect("unlock");
    assert_eq!(&restarted.download_dataset(&p, &ds.id).expect("read")[..], &dataset(3, "ent")[..]);
    // Operator-held tenants cannot be moved to Enterprise.
    let (pro, _) = env.tenant("smallco", Tier::Pro);
    assert!(matches!(core.set_tier(&pro, Tier::Enterprise), Err(Error::NotAllowed { .. })));
}

#[test]
fn opening_with_the_wrong_root_key_is_refused() {
    let env = Env::new();
    env.tenant("x", Tier::Free);
    let mut config = env.config_with_root(Arc::new(LocalRootKey::generate()));
    config.clock = env.clock.clone();
    assert!(matches!(soramai_core::Core::open(config), Err(Error::KeyProvider(_))));
}

#[test]
fn key_scopes_shred_exactly_their_objects() {
    let env = Env::new();
    let core = &env.core;
    let (t, _) = env.tenant("scoped", Tier::Pro);
    let (other, _) = env.tenant("neighbour", Tier::Pro);
    let scope = ObjectPath::new("rag/kb").expect("scope");
    core.create_key_scope(&t, &scope).expect("scope");
    assert!(matches!(core.create_key_scope(&t, &scope), Err(Error::AlreadyExists { .. })));
    let inside = ObjectPath::new("rag/kb/seg.idx").expect("p");
    let sibling = ObjectPath::new("rag/kbx/seg.idx").expect("p");
    let outside = ObjectPath::new("datasets/keep").expect("p");
    core.put_object(&t, &inside, b"inside the scope").expect("put");
    core.put_object(&t, &sibling, b"a sibling prefix is not inside").expect("put");
    core.put_object(&t, &outside, b"outside the scope").expect("put");
    core.put_object(&other, &inside, b"the neighbour's own").expect("put");
    // Objects under the scope carry the scope-key marker version 0; others the tenant key.
    assert_eq!(core.object_info(&t, &inside).expect("info").key_version, 0);
    assert_eq!(core.object_info(&t, &sibling).expect("info").key_version, 1);
    assert_eq!(core.object_info(&other, &inside).expect("info").key_version, 1);
    // A scope cannot be laid over existing objects.
    assert!(core.create_key_scope(&t, &ObjectPath::new("datasets").expect("p")).is_err());

    // Tenant-key rotation rewraps the scope key; the old version can then retire.
    core.rotate_tenant_key(&t).expect("rotate");
    core.rewrap_tenant_objects(&t).expect("rewrap");
    assert_eq!(core.retire_tenant_keys(&t).expect("retire"), vec![1]);
    let fresh = env.reopen();
    assert_eq!(&fresh.get_object(&t, &inside).expect("still readable")[..], b"inside the scope");

    let blob_of = |tenant: &str| -> Vec<(std::path::PathBuf, Vec<u8>)> {
        files_under(&env.data_dir())
            .into_iter()
            .filter(|f| f.to_string_lossy().contains(&format!("/t/{tenant}/")))
            .map(|f| {
                let b = std::fs::read(&f).expect("read");
                (f, b)
            })
            .collect()
    };
    let before = blob_of("scoped");
    assert_eq!(core.shred_key_scope(&t, &scope).expect("shred"), 1);
    assert!(matches!(core.get_object(&t, &inside), Err(Error::NotFound { .. })));
    assert_eq!(&core.get_object(&t, &sibling).expect("sibling")[..], b"a sibling prefix is not inside");
    assert_eq!(&core.get_object(&t, &outside).expect("outside")[..], b"outside the scope");
    assert_eq!(&core.get_object(&other, &inside).expect("neighbour")[..], b"the neighbour's own");
    // The shredded blob, copied aside before, opens under no key the system still holds.
    let gone: Vec<_> = before.iter().filter(|(f, _)| !f.exists()).collect();
    assert_eq!(gone.len(), 1);
    let sealed = &gone[0].1;
    for (tenant, version, wrapped) in all_wrapped_keys(&env) {
        let tid = TenantId::new(tenant).expect("id");
        let key = TenantKey::unwrap(env.root.as_ref(), &tid, version, &wrapped).expect("unwrap");
        assert!(envelope::open(&key, &t, &inside, sealed).is_err());
    }
    assert!(matches!(core.shred_key_scope(&t, &scope), Err(Error::NotFound { .. })));
}
