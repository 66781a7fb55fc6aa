//! Two cores on one metadata database at once: two nodes of a deployment on one PostgreSQL (with
//! `SORAMAI_TEST_CORE_ON_POSTGRES=1`), or two processes on one SQLite file. Writes from both,
//! from many threads, interleave without losing any: the credit balance is exact, every receipt
//! is there, the audit chain has every record and verifies, and each queued job is claimed once.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use soramai_core::{Config, Core, Database, Error, JobSpec, PoolId, Tier};

#[test]
fn two_cores_writing_at_once_lose_nothing_and_claim_each_job_once() {
    let env = Env::new();
    let (t, p) = env.tenant("shared", Tier::Basic);
    let cores = [env.core.clone(), Arc::new(env.reopen())];
    let ds = env.core.upload_dataset(&p, "d.jsonl", &dataset(2, "x")).expect("upload");

    std::thread::scope(|s| {
        for (i, core) in cores.iter().enumerate() {
            for j in 0..3 {
                let (t, p) = (&t, &p);
                s.spawn(move || {
                    for k in 0..10 {
                        core.grant_credits(t, 1, &format!("node{i}-thread{j}-{k}")).expect("grant");
                        if k % 5 == 0 {
                            core.upload_dataset(p, "u.jsonl", &dataset(1, "y")).expect("upload");
                        }
                    }
                });
            }
        }
    });
    assert_eq!(cores[1].balance(&t).expect("balance"), 60);
    assert_eq!(cores[0].receipts(&t).expect("receipts").len(), 60);
    // tenant + first upload + 60 grants + 12 uploads
    let report = cores[1].verify_audit(&t).expect("verify");
    assert_eq!(report.records, 1 + 1 + 60 + 12, "{report:?}");
    cores[0].verify_audit(&t).expect("verify on the other");

    let jobs: HashSet<String> = (0..8)
        .map(|_| {
            let spec = JobSpec::Checksum { dataset: ds.id.clone(), pace_ms: 0 };
            env.core.submit_job(&p, spec).expect("submit").id.as_str().to_owned()
        })
        .collect();
    let claimed: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = cores
            .iter()
            .enumerate()
            .flat_map(|(i, core)| {
                (0..2).map(move |j| {
                    s.spawn(move || {
                        let mut mine = Vec::new();
                        while let Some(c) = core
                            .claim_job(&format!("w{i}-{j}"), &PoolId::shared(), Duration::from_secs(600))
                            .expect("claim")
                        {
                            mine.push(c.job.id.as_str().to_owned());
                        }
                        mine
                    })
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("thread")).collect()
    });
    assert_eq!(claimed.len(), jobs.len(), "{claimed:?}");
    assert_eq!(claimed.iter().cloned().collect::<HashSet<_>>(), jobs);
}

#[test]
fn a_lost_database_connection_is_reestablished() {
    let env = Env::new();
    let (t, p) = env.tenant("steady", Tier::Basic);
    env.core.grant_credits(&t, 5, "before").expect("grant");
    if !env.drop_database_connections() {
        return; // SQLite: no connection to lose
    }
    // The next transaction finds its session gone, reconnects and runs; nothing is lost.
    assert_eq!(env.core.balance(&t).expect("balance after the loss"), 5);
    env.drop_database_connections();
    env.core.grant_credits(&t, 2, "after").expect("grant after the loss");
    assert_eq!(env.core.list_datasets(&p).expect("list").len(), 0);
    assert_eq!(env.core.balance(&t).expect("balance"), 7);
    env.core.verify_audit(&t).expect("verify");
}

#[test]
fn tls_to_postgres_verifies_the_server() {
    let env = Env::new();
    let Database::Postgres(url) = &env.database else {
        return; // SQLite: no connection to secure
    };
    let cas = std::path::PathBuf::from(std::env::var("SORAMAI_TEST_POSTGRES_CA").expect("SORAMAI_TEST_POSTGRES_CA"));
    let open = |database: String| {
        let mut config = Config::new(env.dir.path().join("tls"), env.root.clone());
        config.database = Database::Postgres(database);
        Core::open(config)
    };
    let with_ca =
        |ca: &str| format!("{url}?sslmode=require&application_name=soramai-tls&sslrootcert={}", cas.join(ca).display());

    // The test CA signed the server's certificate for 127.0.0.1: the session runs over TLS.
    let core = open(with_ca("ca.pem")).expect("open over TLS");
    core.tenant(&env.tenant("over-tls", Tier::Basic).0).expect("read over TLS");
    assert_eq!(env.database_sessions("soramai-tls"), Some((1, 1)), "one session, encrypted");
    drop(core);

    // A CA that signed nothing of the server's: refused, never a plain fallback.
    assert!(matches!(open(with_ca("other-ca.pem")), Err(Error::Database(_))));
    // `require` with no CA to verify against, or a CA file that is not one: refused up front.
    assert!(matches!(open(format!("{url}?sslmode=require")), Err(Error::InvalidArgument(_))));
    let not_a_cert = env.dir.path().join("not-a-cert.pem");
    std::fs::write(&not_a_cert, "hello").expect("write");
    let bad = format!("{url}?sslmode=require&sslrootcert={}", not_a_cert.display());
    assert!(matches!(open(bad), Err(Error::InvalidArgument(_))));
}
