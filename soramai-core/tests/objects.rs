//! The low-level object API engine crates use: streaming writes, atomic replacement, abandoned
//! writes leave nothing.

mod common;

use std::io::Write;

use common::*;
use soramai_core::{Error, ObjectPath, Tier};

#[test]
fn streamed_objects_round_trip_and_replace_atomically() {
    let env = Env::new();
    let (t, _) = env.tenant("acme", Tier::Basic);
    let path = ObjectPath::new("rag/kb/seg.idx").expect("path");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 13 % 256) as u8).collect();
    let mut w = env.core.object_writer(&t, &path).expect("writer");
    for part in data.chunks(7_777) {
        w.write_all(part).expect("write");
    }
    // Not visible before it is finished.
    assert!(matches!(env.core.object_info(&t, &path), Err(Error::NotFound { .. })));
    let info = env.core.finish_object(w).expect("finish");
    assert_eq!(info.len, data.len() as u64);
    assert_eq!(&env.core.get_object(&t, &path).expect("get")[..], &data[..]);
    // Replacing swaps the object in one step and removes the old blob.
    env.core.put_object(&t, &path, b"v2").expect("replace");
    assert_eq!(&env.core.get_object(&t, &path).expect("get")[..], b"v2");
    assert_eq!(files_under(&env.data_dir().join("blobs")).len(), 1);
}

#[test]
fn an_abandoned_writer_leaves_nothing() {
    let env = Env::new();
    let (t, _) = env.tenant("acme", Tier::Basic);
    let path = ObjectPath::new("big/object").expect("path");
    {
        let mut w = env.core.object_writer(&t, &path).expect("writer");
        w.write_all(&vec![7u8; 200_000]).expect("write");
    }
    assert!(matches!(env.core.object_info(&t, &path), Err(Error::NotFound { .. })));
    assert!(files_under(&env.data_dir().join("blobs")).is_empty(), "no blob or temporary file remains");
    // Writers are refused for unknown tenants and bad paths before anything is written.
    assert!(env.core.object_writer(&soramai_core::TenantId::new("ghost").expect("id"), &path).is_err());
    assert!(ObjectPath::new("../x").is_err());
}
