//! Operator access: a platform admin hands a tenant its first key only; every later look at the
//! tenant's data goes through a break-glass grant (reason, at most an hour, no more than the
//! admin's scopes), active at once on Basic, pending the tenant's approval on Org, impossible
//! where the customer holds the keys, revocable at once by either side, and recorded with its id,
//! reason and operator key in the tenant's own audit log and the operator's.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use soramai_core::{Error, GrantRequest, GrantStatus, KeyOptions, LocalRootKey, Principal, Scope, TenantId, Tier};

const ALL: [Scope; 4] = [Scope::Admin, Scope::Inference, Scope::Train, Scope::Rag];

/// The operator's tenant and an authenticated admin key of it (as `soramai serve` bootstraps).
fn operator(env: &Env, scopes: &[Scope]) -> (TenantId, Principal) {
    let (op, root) = env.tenant("operator", Tier::Org);
    let key = env.core.create_api_key(&root, KeyOptions::new("admin", scopes)).expect("admin key");
    (op, env.core.authenticate(key.secret()).expect("auth"))
}

fn grant(reason: &str, scopes: &[Scope], ttl: Option<u64>) -> GrantRequest {
    GrantRequest { reason: reason.into(), scopes: scopes.to_vec(), ttl: ttl.map(Duration::from_secs) }
}

fn actions(env: &Env, tenant: &TenantId) -> Vec<(String, String, String)> {
    env.core
        .audit_log(&Principal::operator(tenant))
        .expect("audit")
        .into_iter()
        .map(|r| (r.action, r.actor, r.detail))
        .collect()
}

#[test]
fn the_operator_hands_out_the_first_key_only_and_never_more_than_its_own_scopes() {
    let env = Env::new();
    let (op, admin) = operator(&env, &[Scope::Admin, Scope::Inference]);
    let acme = TenantId::new("acme").expect("id");
    env.core.create_tenant(&acme, Tier::Basic).expect("tenant");
    let admin_key = admin.actor().to_string();

    // More scopes than the admin's own key holds: refused (the old escalation).
    let err = env.core.issue_first_key(&admin, &acme, KeyOptions::new("app", &[Scope::Train])).expect_err("escalation");
    assert!(matches!(err, Error::MissingScope(Scope::Train)), "{err:?}");
    let first = env
        .core
        .issue_first_key(&admin, &acme, KeyOptions::new("app", &[Scope::Admin, Scope::Inference]))
        .expect("first key");
    assert_eq!(first.info.tenant, acme);
    // A second operator key while the tenant has a live one: refused, nothing written.
    let before = actions(&env, &acme).len();
    let err =
        env.core.issue_first_key(&admin, &acme, KeyOptions::new("peek", &[Scope::Inference])).expect_err("second");
    assert!(matches!(err, Error::OperatorAccess(_)), "{err:?}");
    assert_eq!(actions(&env, &acme).len(), before);

    // The tenant's log names the admin's key; the operator's log records the handover.
    let log = actions(&env, &acme);
    let created = log.iter().find(|(a, _, _)| a == "api_key.created").expect("key created");
    assert_eq!(created.1, format!("operator:{admin_key}"));
    let op_log = actions(&env, &op);
    assert!(
        op_log
            .iter()
            .any(|(a, actor, d)| a == "admin.access" && d.contains("api_key.first") && actor.contains(&admin_key[4..]))
    );

    // The tenant revokes its only key: it has none live, so the operator may hand it a new one.
    let me = env.core.authenticate(first.secret()).expect("auth");
    env.core.revoke_api_key(&me, &first.info.id).expect("revoke");
    env.core.issue_first_key(&admin, &acme, KeyOptions::new("recovery", &[Scope::Inference])).expect("recovery key");

    // A tenant whose people make its keys (signed up on the web) gets none from the operator,
    // though it has no key at all.
    let umbrella = TenantId::new("umbrella").expect("id");
    env.core.sign_up("olga@umbrella.test", "a long enough passphrase", &umbrella).expect("sign up");
    let before = actions(&env, &umbrella).len();
    let err =
        env.core.issue_first_key(&admin, &umbrella, KeyOptions::new("peek", &[Scope::Inference])).expect_err("people");
    assert!(matches!(err, Error::OperatorAccess(_)), "{err:?}");
    assert_eq!(actions(&env, &umbrella).len(), before);

    // Tenant creation, tier and credits name the admin's key in the tenant's log.
    let globex = TenantId::new("globex").expect("id");
    let actor = admin.as_operator();
    env.core.create_tenant_by(&actor, &globex, Tier::Free).expect("tenant");
    env.core.set_tier_by(&actor, &globex, Tier::Basic).expect("tier");
    env.core.grant_credits_by(&actor, &globex, 10, "trial").expect("credits");
    let log = actions(&env, &globex);
    for action in ["tenant.created", "tenant.tier_changed", "credits.granted"] {
        let r = log.iter().find(|(a, _, _)| a == action).expect(action);
        assert_eq!(r.1, actor.to_string(), "{action}");
    }
    env.core.verify_audit(&acme).expect("chain");
    env.core.verify_audit(&op).expect("chain");
}

#[test]
fn grant_requests_are_checked_before_anything_is_written() {
    let env = Env::new();
    let (op, admin) = operator(&env, &[Scope::Admin, Scope::Train]);
    let (acme, _) = env.tenant("acme", Tier::Basic);
    let before = (actions(&env, &acme).len(), actions(&env, &op).len());
    for (request, what) in [
        (grant("", &[Scope::Train], None), "no reason"),
        (grant("   ", &[Scope::Train], None), "blank reason"),
        (grant("line\nbreak", &[Scope::Train], None), "control characters"),
        (grant(&"x".repeat(501), &[Scope::Train], None), "long reason"),
        (grant("INC-1", &[Scope::Train], Some(3601)), "over an hour"),
        (grant("INC-1", &[Scope::Train], Some(0)), "no time"),
        (grant("INC-1", &[], None), "no scope"),
    ] {
        let err = env.core.request_access_grant(&admin, &acme, request).expect_err(what);
        assert!(matches!(err, Error::InvalidArgument(_)), "{what}: {err:?}");
    }
    let err =
        env.core.request_access_grant(&admin, &acme, grant("INC-1", &[Scope::Inference], None)).expect_err("scope");
    assert!(matches!(err, Error::MissingScope(Scope::Inference)), "{err:?}");
    let err = env.core.request_access_grant(&admin, &op, grant("INC-1", &[Scope::Train], None)).expect_err("own");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let nobody = TenantId::new("nobody").expect("id");
    let err = env.core.request_access_grant(&admin, &nobody, grant("INC-1", &[Scope::Train], None)).expect_err("none");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    // The embedding application's principal is not a platform admin's key.
    let err = env
        .core
        .request_access_grant(&Principal::operator(&op), &acme, grant("INC-1", &[Scope::Train], None))
        .expect_err("no key");
    assert!(matches!(err, Error::OperatorAccess(_)), "{err:?}");
    assert_eq!((actions(&env, &acme).len(), actions(&env, &op).len()), before);
    assert!(env.core.list_access_grants(&admin).expect("list").is_empty());
}

#[test]
fn a_basic_tenants_grant_is_active_at_once_audited_in_both_logs_and_revoked_at_once() {
    let env = Env::new();
    let (op, admin) = operator(&env, &ALL);
    let (acme, root) = env.tenant("acme", Tier::Basic);
    let owner_key = env.core.create_api_key(&root, KeyOptions::new("owner", &ALL)).expect("key");
    let owner = env.core.authenticate(owner_key.secret()).expect("auth");
    let ds = env.core.upload_dataset(&owner, "d.jsonl", &dataset(2, "grant")).expect("upload");

    let issued = env
        .core
        .request_access_grant(&admin, &acme, grant("INC-42 data export bug", &[Scope::Train], Some(600)))
        .expect("grant");
    let g = &issued.grant;
    assert_eq!(g.status, GrantStatus::Active);
    assert_eq!(g.expires_at, T0 + 600_000);
    assert_eq!((g.tenant.clone(), g.operator_tenant.clone()), (acme.clone(), op.clone()));
    let peek = env.core.authenticate(issued.key.secret()).expect("grant key");
    assert_eq!(peek.scopes(), &[Scope::Train]);
    assert_eq!(peek.grant().map(|c| c.id.clone()), Some(g.id.clone()));
    assert!(peek.actor().to_string().ends_with(g.id.as_str()));
    // It reads what its scope opens, each request recorded; it mints nothing.
    env.core.record_grant_request(&peek, "GET /v1/files/{id}/content").expect("recorded");
    assert_eq!(&env.core.download_dataset(&peek, &ds.id).expect("read")[..], &dataset(2, "grant")[..]);
    assert!(matches!(
        env.core.create_api_key(&peek, KeyOptions::new("x", &[Scope::Train])),
        Err(Error::MissingScope(_))
    ));
    let err = env.core.request_access_grant(&peek, &op, grant("chain", &[Scope::Train], None)).expect_err("chain");
    assert!(matches!(err, Error::MissingScope(Scope::Admin) | Error::OperatorAccess(_)), "{err:?}");

    // Even with the admin scope a grant's key mints, revokes and reconfigures nothing: it could
    // otherwise leave the tenant keyless and take the first key the operator may hand out.
    let wide = env.core.request_access_grant(&admin, &acme, grant("INC-43", &[Scope::Admin], None)).expect("grant");
    let wide = env.core.authenticate(wide.key.secret()).expect("grant key");
    for refused in [
        env.core.create_api_key(&wide, KeyOptions::new("stay", &[Scope::Admin])).map(|_| ()),
        env.core.revoke_api_key(&wide, &owner_key.info.id),
        env.core.rotate_api_key(&wide, &owner_key.info.id, Duration::ZERO).map(|_| ()),
        env.core.set_query_text_logging(&wide, true),
        env.core.approve_access_grant(&wide, &g.id).map(|_| ()),
    ] {
        assert!(matches!(refused, Err(Error::OperatorAccess(_))), "{refused:?}");
    }
    assert!(env.core.authenticate(owner_key.secret()).is_ok(), "the tenant's key still works");
    for tenant in [&acme, &op] {
        let log = actions(&env, tenant);
        let requested = log.iter().find(|(a, _, _)| a == "access_grant.requested").expect("requested");
        assert!(requested.2.contains("INC-42 data export bug") && requested.2.contains(g.operator_key.as_str()));
        assert!(requested.2.contains(g.id.as_str()));
        let used = log.iter().find(|(a, _, _)| a == "access_grant.request").expect("request recorded");
        assert!(used.2.contains("GET /v1/files/{id}/content") && used.2.contains("INC-42"));
        env.core.verify_audit(tenant).expect("chain verifies");
    }
    // The tenant sees the grant; another tenant does not, and cannot end it.
    assert_eq!(env.core.list_access_grants(&owner).expect("list").len(), 2);
    let (_, globex) = env.tenant("globex", Tier::Basic);
    assert!(env.core.list_access_grants(&globex).expect("list").is_empty());
    assert!(matches!(env.core.revoke_access_grant(&globex, &g.id), Err(Error::NotFound { .. })));

    // The tenant revokes: the very next use fails, and a session holding the principal stops too.
    let revoked = env.core.revoke_access_grant(&owner, &g.id).expect("revoke");
    assert_eq!(revoked.status, GrantStatus::Revoked);
    assert!(matches!(env.core.authenticate(issued.key.secret()), Err(Error::Unauthenticated)));
    assert!(matches!(env.core.record_grant_request(&peek, "GET /v1/files"), Err(Error::Unauthenticated)));
    assert_eq!(env.core.revoke_access_grant(&owner, &g.id).expect("again").status, GrantStatus::Revoked);
    assert!(actions(&env, &acme).iter().any(|(a, _, _)| a == "access_grant.revoked"));
    env.core.verify_audit(&acme).expect("chain verifies");
}

#[test]
fn an_org_grant_waits_for_the_tenant_and_expires_on_time() {
    let env = Env::new();
    let (op, admin) = operator(&env, &ALL);
    let (acme, root) = env.tenant("acme", Tier::Org);
    let owner_key = env.core.create_api_key(&root, KeyOptions::new("owner", &ALL)).expect("key");
    let owner = env.core.authenticate(owner_key.secret()).expect("auth");
    let reader_key = env.core.create_api_key(&owner, KeyOptions::new("reader", &[Scope::Inference])).expect("key");
    let reader = env.core.authenticate(reader_key.secret()).expect("auth");

    let issued =
        env.core.request_access_grant(&admin, &acme, grant("SUP-7", &[Scope::Train], Some(60))).expect("grant");
    assert_eq!(issued.grant.status, GrantStatus::Pending);
    // Pending: the key reads nothing.
    assert!(matches!(env.core.authenticate(issued.key.secret()), Err(Error::OperatorAccess(_))));
    // Only the tenant's own admin approves: not the operator, not a key without admin.
    assert!(matches!(env.core.approve_access_grant(&admin, &issued.grant.id), Err(Error::NotFound { .. })));
    assert!(matches!(env.core.approve_access_grant(&reader, &issued.grant.id), Err(Error::MissingScope(Scope::Admin))));
    assert!(matches!(
        env.core.approve_access_grant(&Principal::operator(&acme), &issued.grant.id),
        Err(Error::OperatorAccess(_))
    ));

    env.clock.advance(Duration::from_secs(30));
    let approved = env.core.approve_access_grant(&owner, &issued.grant.id).expect("approve");
    assert_eq!(approved.status, GrantStatus::Active);
    assert_eq!(approved.expires_at, T0 + 30_000 + 60_000, "the lifetime starts at approval");
    assert!(matches!(env.core.approve_access_grant(&owner, &issued.grant.id), Err(Error::InvalidArgument(_))));
    let peek = env.core.authenticate(issued.key.secret()).expect("approved key");
    env.core.record_grant_request(&peek, "GET /v1/files").expect("recorded");

    // Past its end: refused, and the expiry is recorded in both logs once.
    env.clock.advance(Duration::from_secs(61));
    assert!(matches!(env.core.authenticate(issued.key.secret()), Err(Error::Unauthenticated)));
    assert!(matches!(env.core.record_grant_request(&peek, "GET /v1/files"), Err(Error::Unauthenticated)));
    assert_eq!(env.core.expire_access_grants().expect("sweep"), 0, "already expired");
    let grants = env.core.list_access_grants(&admin).expect("list");
    assert_eq!(grants[0].status, GrantStatus::Expired);
    for tenant in [&acme, &op] {
        let log = actions(&env, tenant);
        let kinds: Vec<&str> =
            log.iter().map(|(a, _, _)| a.as_str()).filter(|a| a.starts_with("access_grant.")).collect();
        assert_eq!(
            kinds,
            ["access_grant.requested", "access_grant.approved", "access_grant.request", "access_grant.expired"],
            "{tenant}"
        );
        env.core.verify_audit(tenant).expect("chain verifies");
    }

    // A pending grant nobody approves lapses after its window, through the retention sweep.
    let lapsing = env.core.request_access_grant(&admin, &acme, grant("SUP-8", &[Scope::Train], None)).expect("grant");
    env.clock.advance(Duration::from_secs(24 * 3600 + 1));
    assert_eq!(env.core.sweep_retention().expect("sweep").access_grants_expired, 1);
    assert!(matches!(env.core.approve_access_grant(&owner, &lapsing.grant.id), Err(Error::InvalidArgument(_))));
}

#[test]
fn no_grant_and_no_key_where_the_customer_holds_the_keys() {
    let env = Env::new();
    let (_, admin) = operator(&env, &ALL);
    let big = TenantId::new("bigco").expect("id");
    env.core
        .create_tenant_with_customer_key(&big, Tier::Enterprise, Arc::new(LocalRootKey::generate()))
        .expect("enterprise");
    let err = env.core.request_access_grant(&admin, &big, grant("INC-9", &[Scope::Train], None)).expect_err("refused");
    assert!(matches!(err, Error::OperatorAccess(_)), "{err:?}");
    let err = env.core.issue_first_key(&admin, &big, KeyOptions::new("k", &[Scope::Train])).expect_err("refused");
    assert!(matches!(err, Error::OperatorAccess(_)), "{err:?}");
}

#[test]
fn rotation_grace_is_bounded() {
    let env = Env::new();
    let (_, p) = env.tenant("acme", Tier::Pro);
    let k = env.core.create_api_key(&p, KeyOptions::new("ci", &[Scope::Inference])).expect("key");
    let err = env.core.rotate_api_key(&p, &k.info.id, Duration::from_secs(31 * 24 * 3600)).expect_err("too long");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert_eq!(env.core.list_api_keys(&p).expect("list").len(), 1, "nothing issued");
    env.core.rotate_api_key(&p, &k.info.id, Duration::from_secs(3600)).expect("rotate");
}
