//! Account close: access ends at once, the data goes at the end of a window of at most 30 days
//! (or at once), the close can be taken back within the window, the credit ledger stays, and the
//! audit log records every step.

mod common;

use std::time::Duration;

use common::*;
use soramai_core::closing::CLOSE_WINDOW;
use soramai_core::{Actor, CloseOptions, Error, KeyOptions, Principal, Scope, TenantId, Tier};

fn actions(env: &Env, tenant: &TenantId) -> Vec<String> {
    env.core.audit_log(&Principal::operator(tenant)).expect("audit").into_iter().map(|r| r.action).collect()
}

#[test]
fn a_closed_account_loses_access_at_once_and_its_data_at_the_end_of_the_window() {
    let env = Env::new();
    let (acme, p) = env.tenant("acme", Tier::Basic);
    let key = env.core.create_api_key(&p, KeyOptions::new("app", &[Scope::Train, Scope::Admin])).expect("key");
    let me = env.core.authenticate(key.secret()).expect("auth");
    let ds = env.core.upload_dataset(&me, "a.jsonl", &dataset(4, "closing-canary-K2")).expect("upload");
    env.core.grant_credits(&acme, 500, "purchase").expect("credits");

    let closure = env.core.close_tenant(me.actor(), &acme, CloseOptions::default()).expect("close");
    assert_eq!(closure.purge_at, T0 + CLOSE_WINDOW.as_millis() as i64);
    assert!(matches!(env.core.authenticate(key.secret()), Err(Error::Unauthenticated)), "access ends at once");
    assert!(matches!(
        env.core.close_tenant(me.actor(), &acme, CloseOptions::default()),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(actions(&env, &acme).contains(&"tenant.close_requested".to_owned()));

    // Inside the window nothing is purged; after it, the sweep purges everything but the ledger.
    env.clock.advance(CLOSE_WINDOW - Duration::from_secs(60));
    assert_eq!(env.core.sweep_retention().expect("sweep").tenants_closed, 0);
    assert_eq!(&env.core.download_dataset(&p, &ds.id).expect("still there")[..], &dataset(4, "closing-canary-K2")[..]);
    env.clock.advance(Duration::from_secs(120));
    assert_eq!(env.core.sweep_retention().expect("sweep").tenants_closed, 1);
    assert!(matches!(env.core.tenant(&acme), Err(Error::NotFound { .. })));
    assert!(env.core.closure(&acme).expect("closure").is_none());
    for f in env.stored_files() {
        let Ok(bytes) = std::fs::read(&f) else { continue };
        assert!(!contains(&bytes, b"closing-canary-K2"), "{}", f.display());
    }
    let receipts = env.core.receipts(&acme).expect("the ledger stays");
    assert_eq!(receipts.len(), 1);
    assert!(env.core.verify_audit(&acme).expect("the chain stays").records > 0);
}

#[test]
fn a_close_can_be_taken_back_within_its_window_or_made_at_once() {
    let env = Env::new();
    let (acme, p) = env.tenant("acme", Tier::Basic);
    env.core.upload_dataset(&p, "a.jsonl", &dataset(2, "x")).expect("upload");
    let operator = Actor::Operator;
    for bad in [Duration::ZERO, CLOSE_WINDOW + Duration::from_secs(1)] {
        let err = env
            .core
            .close_tenant(&operator, &acme, CloseOptions { window: bad, immediate: false })
            .expect_err("window");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    }
    env.core
        .close_tenant(&operator, &acme, CloseOptions { window: Duration::from_secs(3600), immediate: false })
        .expect("close");
    // While it closes, not even the operator's first key gets in; after reopening it does.
    let (_, op_root) = env.tenant("operator", Tier::Org);
    let op_key =
        env.core.create_api_key(&op_root, KeyOptions::new("admin", &[Scope::Admin, Scope::Train])).expect("key");
    let admin = env.core.authenticate(op_key.secret()).expect("auth");
    let first = env.core.issue_first_key(&admin, &acme, KeyOptions::new("k", &[Scope::Train]));
    assert!(matches!(first, Err(Error::InvalidArgument(_))), "{first:?}");
    env.core.reopen_tenant(&operator, &acme).expect("reopen");
    let first = env.core.issue_first_key(&admin, &acme, KeyOptions::new("k", &[Scope::Train])).expect("first key");
    assert!(env.core.authenticate(first.secret()).is_ok());
    assert!(matches!(env.core.reopen_tenant(&operator, &acme), Err(Error::NotFound { .. })));
    env.clock.advance(Duration::from_secs(7200));
    assert_eq!(env.core.sweep_retention().expect("sweep").tenants_closed, 0);
    assert_eq!(env.core.list_datasets(&p).expect("kept").len(), 1);
    let log = actions(&env, &acme);
    assert!(log.contains(&"tenant.close_requested".to_owned()) && log.contains(&"tenant.reopened".to_owned()));

    let closure = env
        .core
        .close_tenant(&operator, &acme, CloseOptions { immediate: true, ..CloseOptions::default() })
        .expect("now");
    assert!(closure.purged);
    assert!(matches!(env.core.tenant(&acme), Err(Error::NotFound { .. })));
}
