//! API key lifecycle: shown once, hash only at rest, scopes, expiry, rotation grace, immediate
//! revocation, pool binding by tier.

mod common;

use std::time::Duration;

use common::*;
use soramai_core::{Error, KeyOptions, PoolId, Scope, Tier};

#[test]
fn secret_is_shown_once_and_never_stored() {
    let env = Env::new();
    let (_, p) = env.tenant("acme", Tier::Pro);
    let issued = env.core.create_api_key(&p, KeyOptions::new("ci", &[Scope::Inference])).expect("create");
    let secret = issued.secret().to_string();
    assert!(secret.starts_with(&format!("sk-{}-", issued.info.id)));
    assert_eq!(secret.len(), 3 + issued.info.id.as_str().len() + 1 + 64);
    assert!(!format!("{issued:?}").contains(&secret[20..]), "Debug must not print the secret");
    let listed = env.core.list_api_keys(&p).expect("list");
    assert_eq!(listed.len(), 1);
    assert!(!serde_json::to_string(&listed).expect("json").contains(&secret[20..]));
    for f in env.stored_files() {
        let Ok(bytes) = std::fs::read(&f) else { continue };
        assert!(!contains(&bytes, &secret.as_bytes()[20..]), "{}", f.display());
    }
    let principal = env.core.authenticate(&secret).expect("auth");
    assert_eq!(principal.scopes(), &[Scope::Inference]);
}

#[test]
fn scopes_are_enforced() {
    let env = Env::new();
    let (_, p) = env.tenant("acme", Tier::Pro);
    let k = env.core.create_api_key(&p, KeyOptions::new("infer", &[Scope::Inference])).expect("create");
    let infer = env.core.authenticate(k.secret()).expect("auth");
    assert!(matches!(
        env.core.upload_dataset(&infer, "d.jsonl", &dataset(1, "x")),
        Err(Error::MissingScope(Scope::Train))
    ));
    assert!(matches!(env.core.list_api_keys(&infer), Err(Error::MissingScope(Scope::Admin))));
    assert!(matches!(env.core.authorize(k.secret(), Scope::Rag), Err(Error::MissingScope(Scope::Rag))));
    assert!(env.core.authorize(k.secret(), Scope::Inference).is_ok());
    // A key cannot mint a key with more power than it has.
    let admin_only = env.core.create_api_key(&p, KeyOptions::new("adm", &[Scope::Admin])).expect("create");
    let adm = env.core.authenticate(admin_only.secret()).expect("auth");
    assert!(matches!(
        env.core.create_api_key(&adm, KeyOptions::new("x", &[Scope::Train])),
        Err(Error::MissingScope(Scope::Train))
    ));
    assert!(env.core.create_api_key(&adm, KeyOptions::new("x", &[Scope::Admin])).is_ok());
    assert!(matches!(env.core.create_api_key(&p, KeyOptions::new("none", &[])), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        env.core.create_api_key(&p, KeyOptions::new("bad\nname", &[Scope::Admin])),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn expiry_rotation_grace_and_revocation() {
    let env = Env::new();
    let (_, p) = env.tenant("acme", Tier::Pro);
    let core = &env.core;
    let mut opts = KeyOptions::new("temp", &Scope::ALL);
    opts.expires_in = Some(Duration::from_secs(3600));
    let k = core.create_api_key(&p, opts).expect("create");
    assert!(core.authenticate(k.secret()).is_ok());
    env.clock.advance(Duration::from_secs(3599));
    assert!(core.authenticate(k.secret()).is_ok());
    env.clock.advance(Duration::from_secs(1));
    assert!(matches!(core.authenticate(k.secret()), Err(Error::Unauthenticated)), "expired at the hour");

    // Rotation: the old key keeps working through the grace period only.
    let old = core.create_api_key(&p, KeyOptions::new("svc", &[Scope::Inference, Scope::Admin])).expect("create");
    let new = core.rotate_api_key(&p, &old.info.id, Duration::from_secs(600)).expect("rotate");
    assert_ne!(new.secret(), old.secret());
    assert_eq!(new.info.scopes, old.info.scopes);
    assert!(core.authenticate(old.secret()).is_ok() && core.authenticate(new.secret()).is_ok());
    let listed = core.list_api_keys(&p).expect("list");
    let old_listed = listed.iter().find(|i| i.id == old.info.id).expect("old listed");
    assert_eq!(old_listed.replaced_by.as_ref(), Some(&new.info.id));
    env.clock.advance(Duration::from_secs(601));
    assert!(matches!(core.authenticate(old.secret()), Err(Error::Unauthenticated)));
    assert!(core.authenticate(new.secret()).is_ok());

    // Revocation is immediate, also for a key mid-grace.
    let a = core.create_api_key(&p, KeyOptions::new("a", &Scope::ALL)).expect("create");
    let b = core.rotate_api_key(&p, &a.info.id, Duration::from_secs(3600)).expect("rotate");
    core.revoke_api_key(&p, &a.info.id).expect("revoke");
    assert!(matches!(core.authenticate(a.secret()), Err(Error::Unauthenticated)));
    core.revoke_api_key(&p, &b.info.id).expect("revoke");
    assert!(matches!(core.authenticate(b.secret()), Err(Error::Unauthenticated)));
    assert!(core.rotate_api_key(&p, &b.info.id, Duration::from_secs(1)).is_err());
    let actions: Vec<String> = core.audit_log(&p).expect("audit").into_iter().map(|r| r.action).collect();
    for a in ["api_key.created", "api_key.rotated", "api_key.revoked"] {
        assert!(actions.iter().any(|x| x == a), "{a} missing from {actions:?}");
    }
}

#[test]
fn malformed_tokens_are_refused_alike() {
    let env = Env::new();
    let (_, p) = env.tenant("acme", Tier::Pro);
    let k = env.core.create_api_key(&p, KeyOptions::new("k", &Scope::ALL)).expect("create");
    let s = k.secret();
    let mut flipped = s.to_string().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).expect("utf8");
    for bad in [
        "",
        "sk-",
        "Bearer x",
        &s[..s.len() - 1],
        &format!("{s}0"),
        &flipped,
        &s.to_uppercase(),
        "sk-../../etc-0000",
        &"sk-".repeat(10_000),
    ] {
        assert!(matches!(env.core.authenticate(bad), Err(Error::Unauthenticated)), "{:?}", &bad[..bad.len().min(40)]);
    }
    // A deleted tenant's keys stop working.
    env.core.delete_tenant(p.tenant()).expect("delete");
    assert!(matches!(env.core.authenticate(s), Err(Error::Unauthenticated)));
}

#[test]
fn pool_binding_follows_the_tier() {
    let env = Env::new();
    let (org, po) = env.tenant("orgco", Tier::Org);
    let (_, pp) = env.tenant("proco", Tier::Pro);
    let mut opts = KeyOptions::new("pool", &[Scope::Train]);
    opts.pool = Some(PoolId::new("dedicated:orgco-gpu").expect("pool"));
    assert!(matches!(env.core.create_api_key(&pp, opts.clone()), Err(Error::NotAllowed { tier: Tier::Pro, .. })));
    let k = env.core.create_api_key(&po, opts).expect("org may bind");
    let principal = env.core.authenticate(k.secret()).expect("auth");
    assert_eq!(principal.pool().map(|p| p.as_str()), Some("dedicated:orgco-gpu"));
    let mut shared = KeyOptions::new("shared", &[Scope::Train]);
    shared.pool = Some(PoolId::shared());
    assert!(env.core.create_api_key(&po, shared).is_err());
    let _ = org;
}
