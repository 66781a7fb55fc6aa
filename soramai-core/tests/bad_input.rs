//! Bad input gets a clear, typed error and changes nothing.

mod common;

use common::*;
use soramai_core::{Config, Core, Error, Limits, ObjectPath, SecretName, TenantId, Tier};

fn state_snapshot(env: &Env, t: &TenantId) -> (usize, usize, u64) {
    let p = soramai_core::Principal::operator(t);
    (
        env.core.list_datasets(&p).expect("list").len(),
        files_under(&env.data_dir().join("blobs")).len(),
        env.core.verify_audit(t).expect("verify").records,
    )
}

#[test]
fn malformed_jsonl_names_the_line_and_stores_nothing() {
    let env = Env::new();
    let (t, p) = env.tenant("acme", Tier::Basic);
    let before = state_snapshot(&env, &t);
    let good = chat_line("q", "a");
    let cases: Vec<(Vec<u8>, usize)> = vec![
        ([good.as_bytes(), b"\n", good.as_bytes(), b"\n{\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\x28\"}]}"].concat(), 3),
        (format!("{good}\n{{\"messages\":[{{\"role\":\"admin\",\"content\":\"x\"}},{{\"role\":\"assistant\",\"content\":\"y\"}}]}}").into_bytes(), 2),
        (format!("{{\"messages\":[{{\"role\":\"user\",\"content\":\"only a question\"}}]}}\n{good}").into_bytes(), 1),
        (format!("{good}\n{good}\n{good}\n{{\"messages\": \"nope\"}}").into_bytes(), 4),
        (format!("{good}\n{{\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}},{{\"role\":\"assistant\",\"content\":\"a\"}}]}}", "x".repeat(2 << 20)).into_bytes(), 2),
        (b"\x00\x01\x02".to_vec(), 1),
        (format!("{good}\n{{\"messages\":[{{\"role\":\"user\",\"content\":\"x\"}},{{\"role\":\"assistant\",\"content\":\"a\",\"weight\":-1}}]}}").into_bytes(), 2),
        (format!("{good}\n{{").into_bytes(), 2),
    ];
    for (data, line) in cases {
        match env.core.upload_dataset(&p, "bad.jsonl", &data) {
            Err(Error::InvalidDataset { line: l, reason }) => {
                assert_eq!(l, line, "{reason}");
                assert!(!reason.contains("only a question"), "errors must not echo content: {reason}");
            }
            other => panic!("expected a line-{line} error, got {other:?}"),
        }
        assert_eq!(state_snapshot(&env, &t), before, "a refused upload changed something");
    }
}

#[test]
fn size_limits_and_hostile_names_are_refused() {
    let env = Env::new();
    let mut config = Config::new(env.dir.path().join("small"), env.root.clone());
    config.limits =
        Limits { max_dataset_bytes: 1000, max_dataset_line_bytes: 500, max_secret_bytes: 10, ..Limits::default() };
    let core = Core::open(config).expect("open");
    let t = TenantId::new("acme").expect("id");
    core.create_tenant(&t, Tier::Basic).expect("create");
    let p = soramai_core::Principal::operator(&t);
    assert!(matches!(
        core.upload_dataset(&p, "big.jsonl", &dataset(100, "x")),
        Err(Error::TooLarge { what: "dataset", .. })
    ));
    assert!(matches!(core.put_secret(&p, &SecretName::new("s").expect("n"), &[0u8; 11]), Err(Error::TooLarge { .. })));
    for name in ["", "a/b", "..\\x", "nul\0byte", &"n".repeat(300)] {
        assert!(matches!(core.upload_dataset(&p, name, &dataset(1, "x")), Err(Error::InvalidArgument(_))), "{name:?}");
    }
    for id in ["../etc", "A", "x/y", "", "tenant id"] {
        assert!(TenantId::new(id).is_err());
        assert!(SecretName::new(id).is_err() || id == "A");
        assert!(soramai_core::DatasetId::new(id).is_err());
    }
    assert!(ObjectPath::new("../../escape").is_err());
    assert!(core.list_datasets(&p).expect("list").is_empty());
}

#[test]
fn operations_on_unknown_or_wrong_state_things_fail_cleanly() {
    let env = Env::new();
    let (t, p) = env.tenant("acme", Tier::Basic);
    let ghost = TenantId::new("ghost").expect("id");
    assert!(matches!(env.core.tenant(&ghost), Err(Error::NotFound { .. })));
    assert!(matches!(env.core.delete_tenant(&ghost), Err(Error::NotFound { .. })));
    assert!(matches!(env.core.create_tenant(&t, Tier::Pro), Err(Error::AlreadyExists { .. })));
    let missing = soramai_core::DatasetId::new("file-000000000000000000000000").expect("id");
    assert!(matches!(env.core.download_dataset(&p, &missing), Err(Error::NotFound { .. })));
    assert!(matches!(
        env.core.get_secret(&p, &SecretName::new("nope").expect("n")),
        Err(Error::NotFound { kind: "secret" })
    ));
    assert!(matches!(env.core.grant_credits(&t, 0, "x"), Err(Error::InvalidArgument(_))));
    assert!(matches!(env.core.grant_credits(&t, 1, "bad\nref"), Err(Error::InvalidArgument(_))));
    assert!("platinum".parse::<Tier>().is_err());
}
