//! Failover: a node on a PostgreSQL primary with a synchronous streaming replica (a multi-host
//! URL with `target_session_attrs=read-write`) keeps serving when the primary is killed and the
//! replica promoted, with nothing committed lost. The pair comes from
//! `scripts/postgres-failover.sh`; the test runs where `SORAMAI_TEST_PG_FAILOVER=1` (the test
//! suite sets it) and says why it skips elsewhere.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use common::*;
use soramai_core::{Config, Core, Database, LocalRootKey, Principal, TenantId, Tier};

fn script(arg: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres-failover.sh");
    let out = Command::new(path).arg(arg).output().expect("run the failover script");
    assert!(out.status.success(), "postgres-failover.sh {arg}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[cfg_attr(not(feature = "postgres"), ignore = "needs the postgres feature")]
#[test]
fn a_node_survives_the_primary_dying_and_loses_nothing_committed() {
    if std::env::var("SORAMAI_TEST_PG_FAILOVER").as_deref() != Ok("1") {
        eprintln!("skipped: SORAMAI_TEST_PG_FAILOVER=1 runs scripts/postgres-failover.sh (a primary and a replica)");
        return;
    }
    let urls = script("up");
    let (primary, replica) = urls.split_once(' ').expect("two URLs");
    // postgres://user:pw@host:p1/db and …@host:p2/db → postgres://user:pw@host:p1,host:p2/db
    let (userinfo, rest) = primary.split_once('@').expect("url");
    let second = replica.split_once('@').expect("url").1.split('/').next().expect("host");
    let (first, db) = rest.split_once('/').expect("url");
    let url = format!("{userinfo}@{first},{second}/{db}?target_session_attrs=read-write");

    let dir = tempfile::tempdir().expect("dir");
    let root = Arc::new(LocalRootKey::generate());
    let mut config = Config::new(dir.path().join("data"), root);
    config.database = Database::Postgres(url);
    let core = Core::open(config).expect("open on the primary");
    let acme = TenantId::new("acme").expect("id");
    core.create_tenant(&acme, Tier::Basic).expect("tenant");
    let p = Principal::operator(&acme);
    let before = core.upload_dataset(&p, "a.jsonl", &dataset(5, "before")).expect("upload");

    // The primary dies mid-service: nothing is writable (the replica is read-only) until the
    // replica, which has every commit, is promoted.
    script("kill-primary");
    let port: u16 = first.rsplit(':').next().expect("port").parse().expect("port");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the primary is gone");
    assert!(core.upload_dataset(&p, "lost.jsonl", &dataset(1, "lost")).is_err(), "no primary, no write");
    script("promote");

    // The node reconnects to the new primary at its next transaction: what was committed is
    // there, and it writes again.
    let mut read = core.download_dataset(&p, &before.id);
    for _ in 0..50 {
        if read.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        read = core.download_dataset(&p, &before.id);
    }
    assert_eq!(&read.expect("read after failover")[..], &dataset(5, "before")[..]);
    let after = core.upload_dataset(&p, "b.jsonl", &dataset(3, "after")).expect("write after failover");
    assert_eq!(core.list_datasets(&p).expect("list").len(), 2);
    assert_eq!(&core.download_dataset(&p, &after.id).expect("read")[..], &dataset(3, "after")[..]);
    assert!(core.verify_audit(&acme).expect("the audit chain verifies").records >= 4);
    drop(core);
    script("stop");
}
