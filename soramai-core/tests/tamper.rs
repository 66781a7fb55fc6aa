//! Tampering is detected: any flipped byte, truncation, or swapped, duplicated or dropped chunk of
//! an encrypted object; any edited, deleted, inserted or reordered audit record.

mod common;

use common::*;
use soramai_core::crypto::{chunked, envelope};
use soramai_core::{Error, ObjectPath, Tier};

fn sealed_fixture(
    len: usize,
) -> (soramai_core::crypto::keys::TenantKey, soramai_core::TenantId, ObjectPath, Vec<u8>, Vec<u8>) {
    let key = soramai_core::crypto::keys::TenantKey::generate(3);
    let t = soramai_core::TenantId::new("t").expect("id");
    let p = ObjectPath::new("x/y").expect("path");
    let pt: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
    let sealed = envelope::seal(&key, &t, &p, &pt).expect("seal");
    (key, t, p, pt, sealed)
}

#[test]
fn every_single_byte_flip_is_detected() {
    let (key, t, p, pt, sealed) = sealed_fixture(chunked::CHUNK_SIZE + 100);
    assert_eq!(&envelope::open(&key, &t, &p, &sealed).expect("open")[..], &pt[..]);
    for i in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[i] ^= 0x01 << (i % 8);
        assert!(envelope::open(&key, &t, &p, &bad).is_err(), "flip at byte {i} went unnoticed");
    }
}

#[test]
fn every_truncation_and_extension_is_detected() {
    let (key, t, p, _, sealed) = sealed_fixture(2 * chunked::CHUNK_SIZE);
    // Every cut in the prefix and header and within 40 bytes of each chunk boundary, and every
    // 61st byte elsewhere.
    let head = envelope::PREFIX_LEN + chunked::HEADER_SIZE;
    let near_boundary =
        |cut: usize| cut < head + 40 || (0..4).any(|k| cut.abs_diff(head + k * chunked::SEALED_CHUNK_SIZE) <= 40);
    for cut in (0..sealed.len()).filter(|&c| near_boundary(c) || c % 61 == 0) {
        assert!(envelope::open(&key, &t, &p, &sealed[..cut]).is_err(), "truncation to {cut}");
        assert!(envelope::open_random_access(&key, &t, &p, sealed[..cut].to_vec()).is_err(), "random access at {cut}");
    }
    for extra in [&[0u8][..], &[0u8; 16][..], &sealed[9 + 56..9 + 56 + 40]] {
        let mut longer = sealed.clone();
        longer.extend_from_slice(extra);
        assert!(envelope::open(&key, &t, &p, &longer).is_err());
    }
}

#[test]
fn swapped_duplicated_and_dropped_chunks_are_detected() {
    let (key, t, p, _, sealed) = sealed_fixture(3 * chunked::CHUNK_SIZE + 10);
    let head = envelope::PREFIX_LEN + chunked::HEADER_SIZE;
    let c = chunked::SEALED_CHUNK_SIZE;
    let chunk = |i: usize| sealed[head + i * c..head + (i + 1) * c].to_vec();
    let tail = sealed[head + 3 * c..].to_vec();
    let build = |order: &[usize]| -> Vec<u8> {
        let mut v = sealed[..head].to_vec();
        for &i in order {
            v.extend_from_slice(&chunk(i));
        }
        v.extend_from_slice(&tail);
        v
    };
    assert!(envelope::open(&key, &t, &p, &build(&[0, 1, 2])).is_ok());
    for order in [&[1, 0, 2][..], &[0, 2, 1], &[2, 1, 0], &[0, 0, 2], &[0, 2], &[0, 1], &[0, 1, 2, 2]] {
        let bad = build(order);
        assert!(envelope::open(&key, &t, &p, &bad).is_err(), "order {order:?}");
        let ra = envelope::open_random_access(&key, &t, &p, bad);
        let whole = ra.and_then(|r| r.read_range(0, r.plaintext_len() as usize));
        assert!(whole.is_err(), "random access, order {order:?}");
    }
}

#[test]
fn tampered_blob_on_disk_fails_reads_through_the_core() {
    let env = Env::new();
    let (t, _) = env.tenant("acme", Tier::Basic);
    let path = ObjectPath::new("docs/big").expect("path");
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    env.core.put_object(&t, &path, &data).expect("put");
    let blob = files_under(&env.data_dir().join("blobs")).pop().expect("blob");
    let good = std::fs::read(&blob).expect("read");
    // Flip a byte in chunk 1: whole reads fail, and so does any range touching chunk 1, while
    // ranges elsewhere still verify (only the touched chunks are decrypted).
    let mut bad = good.clone();
    let at = envelope::PREFIX_LEN + chunked::HEADER_SIZE + chunked::SEALED_CHUNK_SIZE + 5;
    bad[at] ^= 0x80;
    std::fs::write(&blob, &bad).expect("write");
    assert!(matches!(env.core.get_object(&t, &path), Err(Error::Integrity)));
    let reader = env.core.open_object(&t, &path).expect("length still authenticates");
    assert_eq!(&reader.read_range(10, 100).expect("chunk 0")[..], &data[10..110]);
    assert!(matches!(reader.read_range(16_000, 1_000), Err(Error::Integrity)));
    // Truncation on disk.
    std::fs::write(&blob, &good[..good.len() - 1]).expect("write");
    assert!(matches!(env.core.get_object(&t, &path), Err(Error::Integrity)));
    assert!(matches!(env.core.open_object(&t, &path), Err(Error::Integrity)));
    // The prefix's key version is bound by the context: relabelling it fails.
    let mut relabel = good.clone();
    relabel[8] ^= 1;
    std::fs::write(&blob, &relabel).expect("write");
    assert!(env.core.get_object(&t, &path).is_err());
    std::fs::write(&blob, &good).expect("restore");
    assert_eq!(&env.core.get_object(&t, &path).expect("intact")[..], &data[..]);
}

fn fixture_with_audit() -> (Env, soramai_core::TenantId) {
    let env = Env::new();
    let (t, p) = env.tenant("audited", Tier::Org);
    for i in 0..4 {
        env.core.upload_dataset(&p, &format!("d{i}.jsonl"), &dataset(2, "x")).expect("upload");
    }
    assert_eq!(env.core.verify_audit(&t).expect("verify").records, 5);
    (env, t)
}

#[test]
fn audit_edit_is_detected() {
    let (env, t) = fixture_with_audit();
    env.raw_sql("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 3");
    assert!(matches!(env.core.verify_audit(&t), Err(Error::AuditChainBroken { seq: 3 })));
}

#[test]
fn audit_field_edits_are_each_detected() {
    for col in ["at = at + 1", "action = 'dataset.deleted'", "target = 'file-x'", "detail = '{}'"] {
        let (env, t) = fixture_with_audit();
        env.raw_sql(&format!("UPDATE audit_log SET {col} WHERE seq = 2"));
        assert!(matches!(env.core.verify_audit(&t), Err(Error::AuditChainBroken { .. })), "{col}");
    }
}

#[test]
fn audit_deletion_is_detected() {
    let (env, t) = fixture_with_audit();
    env.raw_sql("DELETE FROM audit_log WHERE seq = 2");
    assert!(matches!(env.core.verify_audit(&t), Err(Error::AuditChainBroken { seq: 2 })));
    // Dropping the tail is caught by the MACed head, and so is rewinding the head with it.
    let (env, t) = fixture_with_audit();
    env.raw_sql("DELETE FROM audit_log WHERE seq = 5");
    assert!(env.core.verify_audit(&t).is_err());
    env.raw_sql("UPDATE audit_heads SET seq = 4, hash = (SELECT hash FROM audit_log WHERE seq = 4)");
    assert!(env.core.verify_audit(&t).is_err());
}

#[test]
fn audit_reordering_is_detected() {
    let (env, t) = fixture_with_audit();
    env.raw_sql(
        "UPDATE audit_log SET seq = -1 WHERE seq = 2; UPDATE audit_log SET seq = 2 WHERE seq = 3; UPDATE audit_log SET seq = 3 WHERE seq = -1;",
    );
    assert!(matches!(env.core.verify_audit(&t), Err(Error::AuditChainBroken { seq: 2 })));
}

#[test]
fn audit_records_of_another_tenant_do_not_verify_here() {
    let (env, t) = fixture_with_audit();
    let (u, _) = env.tenant("other", Tier::Org);
    // Graft t's chain onto u: the tenant id is inside every MAC.
    env.raw_sql("DELETE FROM audit_log WHERE tenant_id = 'other'");
    env.raw_sql(
        "INSERT INTO audit_log SELECT 'other', seq, at, actor, action, target, detail, prev_hash, hash FROM audit_log WHERE tenant_id = 'audited'");
    assert!(env.core.verify_audit(&u).is_err());
    assert!(env.core.verify_audit(&t).is_ok());
}

#[test]
fn a_tampered_object_is_reported_by_name_in_the_audit_log_and_the_integrity_check() {
    let env = Env::new();
    let (t, _) = env.tenant("acme", Tier::Basic);
    let path = ObjectPath::new("docs/notes").expect("path");
    env.core.put_object(&t, &path, &[7u8; 40_000]).expect("put");
    assert!(env.core.check_integrity().expect("check").is_clean());
    let blob = files_under(&env.data_dir().join("blobs")).pop().expect("blob");
    let mut bytes = std::fs::read(&blob).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&blob, &bytes).expect("write");

    assert!(matches!(env.core.get_object(&t, &path), Err(Error::Integrity)));
    let report = env.core.check_integrity().expect("check");
    assert_eq!(report.corrupt_objects.len(), 1, "{report:?}");
    assert_eq!(
        (report.corrupt_objects[0].tenant.as_str(), report.corrupt_objects[0].object.as_str()),
        ("acme", "docs/notes")
    );
    assert!(matches!(report.clone().into_result(), Err(Error::IntegrityFailures(_))));
    // Each detection (the read and the check) is in the tenant's audit log, naming the object,
    // and the chain itself still verifies.
    let log = env.core.audit_log(&soramai_core::Principal::operator(&t)).expect("log");
    let failures: Vec<_> = log.iter().filter(|r| r.action == "integrity.failed").collect();
    assert_eq!(failures.len(), 2, "{log:?}");
    assert!(failures.iter().all(|r| r.target == "docs/notes" && r.actor == "system" && r.verified), "{failures:?}");
    assert!(env.core.verify_audit(&t).is_ok());
}

#[test]
fn a_broken_audit_chain_is_reported_with_its_first_bad_record_and_marked_in_the_log() {
    let (env, t) = fixture_with_audit();
    env.raw_sql("UPDATE audit_log SET target = 'forged' WHERE seq = 3");
    let check = env.core.check_audit(&t).expect("a report, not an error");
    assert!(!check.valid);
    assert_eq!(check.first_bad_record, Some(3));
    assert_eq!(check.reason, Some("the record was edited after it was written"));
    assert_eq!(check.records, 5);
    // The detection is appended (after the break) and logged; the log marks every record from
    // the break on, the detection included.
    let log = env.core.audit_log(&soramai_core::Principal::operator(&t)).expect("log");
    assert_eq!(log.len(), 6);
    let marks: Vec<(u64, bool)> = log.iter().map(|r| (r.seq, r.verified)).collect();
    assert_eq!(marks, [(1, true), (2, true), (3, false), (4, false), (5, false), (6, false)]);
    assert_eq!(log[5].action, "integrity.failed");
    assert_eq!(log[5].target, "audit_log");
    assert!(log[5].detail.contains("\"first_bad_record\":3"), "{}", log[5].detail);
    let report = env.core.check_integrity().expect("check");
    assert_eq!(report.broken_audit_chains.len(), 1, "{report:?}");
    assert_eq!(report.broken_audit_chains[0].first_bad_record, 3);
    // Checked again, the same break gets no second record.
    env.core.check_audit(&t).expect("again");
    assert_eq!(env.core.audit_log(&soramai_core::Principal::operator(&t)).expect("log").len(), 6);

    // Each way of breaking it has its reason.
    for (sql, first, reason) in [
        ("DELETE FROM audit_log WHERE seq = 2", 2, "a record is missing, inserted or out of order here"),
        ("DELETE FROM audit_log WHERE seq = 5", 5, "records after this point were removed, or the head was rewound"),
    ] {
        let (env, t) = fixture_with_audit();
        env.raw_sql(sql);
        let check = env.core.check_audit(&t).expect("report");
        assert_eq!((check.first_bad_record, check.reason), (Some(first), Some(reason)), "{sql}");
    }
}
