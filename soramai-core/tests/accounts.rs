//! People: sign-up, sign-in with an argon2id password and a TOTP second factor, sessions that
//! expire, lockout after repeated failures (for unknown emails alike), invitations that are
//! single-use and expire, roles that map onto scopes, member management that keeps an owner,
//! password reset that ends every session, isolation between tenants, and no password, TOTP
//! secret or token in any stored file.

mod common;

use std::time::Duration;

use common::*;
use soramai_core::accounts::{MAX_FAILURES, totp_code};
use soramai_core::{Error, KeyOptions, Role, Scope, TenantId, Tier};

const PASSWORD: &str = "correct horse battery staple";

/// The actions in a tenant's audit log, oldest first.
fn actions(env: &Env, tenant: &TenantId) -> Vec<String> {
    env.core
        .audit_log(&soramai_core::Principal::operator(tenant))
        .expect("audit")
        .into_iter()
        .map(|r| r.action)
        .collect()
}

fn now_s(env: &Env) -> u64 {
    (env.core.now() / 1000) as u64
}

#[test]
fn sign_up_sign_in_and_sessions() {
    let env = Env::new();
    let acme = TenantId::new("acme").expect("id");
    let user = env.core.sign_up(" Ada@Example.COM ", PASSWORD, &acme).expect("sign up");
    assert_eq!(user.email, "ada@example.com");
    assert_eq!(env.core.tenant(&acme).expect("tenant").tier, Tier::Free);

    // Bad input changes nothing: a short or trivial password, a malformed email, a taken one.
    for (email, password) in [
        ("bob@example.com", "short"),
        ("bob@example.com", "aaaaaaaaaaaaaaaa"),
        ("bob@example.com", "bob@example.com"),
        ("not an email", PASSWORD),
        ("@example.com", PASSWORD),
        ("bob@localhost", PASSWORD),
    ] {
        let e = env.core.sign_up(email, password, &TenantId::new("bobco").expect("id")).expect_err(email);
        assert!(matches!(e, Error::InvalidArgument(_)), "{email}: {e}");
    }
    let e = env.core.sign_up("ada@example.com", PASSWORD, &TenantId::new("acme2").expect("id")).expect_err("taken");
    assert!(matches!(e, Error::AlreadyExists { .. }), "{e}");
    assert!(env.core.tenant(&TenantId::new("bobco").expect("id")).is_err(), "a refused sign-up creates no tenant");
    assert!(env.core.tenant(&TenantId::new("acme2").expect("id")).is_err());

    // Sign-in: the email in any case; the session gives the owner's scopes in acme only.
    let session = env.core.sign_in("ADA@example.com", PASSWORD, None).expect("sign in");
    let token = session.token.secret().to_owned();
    assert!(token.starts_with("ss-") && token.len() > 60);
    let (u, role, p) = env.core.session_principal(&token, &acme).expect("principal");
    assert_eq!((u.id.clone(), role), (user.id.clone(), Role::Owner));
    assert_eq!(p.scopes(), Scope::ALL);
    assert_eq!(p.actor().to_string(), format!("user:{}", user.id));
    let (other, _) = env.tenant("globex", Tier::Pro);
    assert!(matches!(env.core.session_principal(&token, &other), Err(Error::NotFound { .. })));

    // Wrong password, unknown email, forged token: one answer.
    for (email, pw) in [("ada@example.com", "wrong password!!"), ("nobody@example.com", PASSWORD)] {
        assert!(matches!(env.core.sign_in(email, pw, None), Err(Error::Unauthenticated)));
    }
    assert!(matches!(env.core.session_user("ss-0000"), Err(Error::Unauthenticated)));

    // Sessions end after 12 hours idle, at once on sign-out, and after 7 days however used.
    env.clock.advance(Duration::from_secs(11 * 3600));
    env.core.session_user(&token).expect("used within the idle window");
    env.clock.advance(Duration::from_secs(11 * 3600));
    env.core.session_user(&token).expect("each use extends it");
    env.clock.advance(Duration::from_secs(13 * 3600));
    assert!(matches!(env.core.session_user(&token), Err(Error::Unauthenticated)), "idle too long");
    let s2 = env.core.sign_in("ada@example.com", PASSWORD, None).expect("again");
    env.core.sign_out(s2.token.secret()).expect("sign out");
    assert!(matches!(env.core.session_user(s2.token.secret()), Err(Error::Unauthenticated)));
    let s3 = env.core.sign_in("ada@example.com", PASSWORD, None).expect("again");
    for _ in 0..15 {
        env.clock.advance(Duration::from_secs(11 * 3600));
        env.core.session_user(s3.token.secret()).expect("in use, within 7 days");
    }
    env.clock.advance(Duration::from_secs(4 * 3600));
    assert!(matches!(env.core.session_user(s3.token.secret()), Err(Error::Unauthenticated)), "past 7 days");

    let log = actions(&env, &acme);
    assert!(log.contains(&"member.joined".to_owned()) && log.contains(&"user.signed_in".to_owned()), "{log:?}");
    env.core.verify_audit(&acme).expect("chain");
}

#[test]
fn repeated_failures_lock_an_email_known_or_not_and_a_reset_lifts_it() {
    let env = Env::new();
    let acme = TenantId::new("acme").expect("id");
    env.core.sign_up("ada@example.com", PASSWORD, &acme).expect("sign up");
    for email in ["ada@example.com", "ghost@example.com"] {
        for i in 1..MAX_FAILURES {
            assert!(matches!(env.core.sign_in(email, "wrong password!!", None), Err(Error::Unauthenticated)), "{i}");
        }
        assert!(matches!(env.core.sign_in(email, "wrong password!!", None), Err(Error::Locked { .. })));
        // Locked: even the right password is refused, and an unknown email is answered alike.
        assert!(matches!(env.core.sign_in(email, PASSWORD, None), Err(Error::Locked { .. })), "{email}");
    }
    env.clock.advance(Duration::from_secs(16 * 60));
    env.core.sign_in("ada@example.com", PASSWORD, None).expect("the lock lifts after 15 minutes");

    // Lock again, then reset: the reset token is good once and ends every session.
    let live = env.core.sign_in("ada@example.com", PASSWORD, None).expect("session");
    for _ in 0..MAX_FAILURES {
        let _ = env.core.sign_in("ada@example.com", "wrong password!!", None);
    }
    assert!(env.core.request_password_reset("nobody@example.com").expect("unknown").is_none());
    let reset = env.core.request_password_reset("ADA@example.com").expect("reset").expect("token");
    assert!(matches!(env.core.reset_password(reset.secret(), "short"), Err(Error::InvalidArgument(_))));
    env.core.reset_password(reset.secret(), "a brand new passphrase").expect("reset");
    assert!(matches!(env.core.reset_password(reset.secret(), "another new passphrase"), Err(Error::Unauthenticated)));
    assert!(matches!(env.core.session_user(live.token.secret()), Err(Error::Unauthenticated)), "sessions end");
    assert!(matches!(env.core.sign_in("ada@example.com", PASSWORD, None), Err(Error::Unauthenticated)));
    env.core.sign_in("ada@example.com", "a brand new passphrase", None).expect("new password, lock lifted");
    // An expired reset token is refused.
    let late = env.core.request_password_reset("ada@example.com").expect("reset").expect("token");
    env.clock.advance(Duration::from_secs(3601));
    assert!(matches!(env.core.reset_password(late.secret(), "yet another passphrase"), Err(Error::Unauthenticated)));
    // A password change needs the current one and ends the other sessions.
    let s = env.core.sign_in("ada@example.com", "a brand new passphrase", None).expect("session");
    let other = env.core.sign_in("ada@example.com", "a brand new passphrase", None).expect("session");
    assert!(matches!(
        env.core.change_password(s.token.secret(), "wrong", "x passphrase x"),
        Err(Error::Unauthenticated)
    ));
    env.core.change_password(s.token.secret(), "a brand new passphrase", "the changed passphrase").expect("change");
    assert!(env.core.session_user(other.token.secret()).is_err());
}

#[test]
fn a_totp_second_factor_is_asked_for_checked_and_never_replayed() {
    let env = Env::new();
    let acme = TenantId::new("acme").expect("id");
    env.core.sign_up("ada@example.com", PASSWORD, &acme).expect("sign up");
    let s = env.core.sign_in("ada@example.com", PASSWORD, None).expect("session");
    let setup = env.core.begin_totp(s.token.secret()).expect("begin");
    let url = &*setup.otpauth_url;
    assert!(url.starts_with("otpauth://totp/") && url.contains("secret=") && url.contains("issuer=Soramai"), "{url}");
    let code = |at: u64| totp_code(&setup.secret_base32, "ada@example.com", at).expect("code");
    assert!(matches!(env.core.confirm_totp(s.token.secret(), "12345"), Err(Error::Unauthenticated)));
    env.core.confirm_totp(s.token.secret(), &code(now_s(&env))).expect("confirm");

    env.clock.advance(Duration::from_secs(60));
    assert!(matches!(env.core.sign_in("ada@example.com", PASSWORD, None), Err(Error::SecondFactorRequired)));
    let now = code(now_s(&env));
    env.core.sign_in("ada@example.com", PASSWORD, Some(&now)).expect("with the code");
    assert!(
        env.core.sign_in("ada@example.com", PASSWORD, Some(&now)).is_err(),
        "a code is accepted once (RFC 6238 5.2)"
    );
    env.clock.advance(Duration::from_secs(30));
    let stale = code(now_s(&env) - 300);
    assert!(env.core.sign_in("ada@example.com", PASSWORD, Some(&stale)).is_err(), "five minutes old");
    assert!(env.core.sign_in("ada@example.com", "wrong password!!", Some(&code(now_s(&env)))).is_err());
    env.clock.advance(Duration::from_secs(30));
    env.core.sign_in("ada@example.com", PASSWORD, Some(&code(now_s(&env)))).expect("a fresh code");
}

#[test]
fn invitations_roles_and_members_stay_inside_their_tenant() {
    let env = Env::new();
    let acme = TenantId::new("acme").expect("id");
    env.core.sign_up("owner@acme.com", PASSWORD, &acme).expect("sign up");
    let owner = env.core.sign_in("owner@acme.com", PASSWORD, None).expect("session");
    let (_, _, op) = env.core.session_principal(owner.token.secret(), &acme).expect("principal");

    // An invitation for a new person: accepted once, with the role's scopes.
    let inv = env.core.invite(&op, "Bob@Acme.com", Role::Member).expect("invite");
    assert!(env.core.invitations(&op).expect("pending").iter().any(|i| i.id == inv.invitation.id));
    assert!(matches!(env.core.accept_invitation(inv.token.secret(), "short"), Err(Error::InvalidArgument(_))));
    let m = env.core.accept_invitation(inv.token.secret(), PASSWORD).expect("accept");
    assert_eq!((m.email.as_str(), m.role), ("bob@acme.com", Role::Member));
    assert!(matches!(env.core.accept_invitation(inv.token.secret(), PASSWORD), Err(Error::Unauthenticated)), "once");
    let bob = env.core.sign_in("bob@acme.com", PASSWORD, None).expect("bob");
    let (_, _, bp) = env.core.session_principal(bob.token.secret(), &acme).expect("bob in acme");
    assert_eq!(bp.scopes(), [Scope::Inference, Scope::Train, Scope::Rag]);
    // A member manages nobody.
    assert!(matches!(env.core.invite(&bp, "eve@acme.com", Role::Viewer), Err(Error::MissingScope(Scope::Admin))));

    // An existing account accepts with its own password; an expired invitation is refused.
    let globex = TenantId::new("globex").expect("id");
    env.core.sign_up("owner@globex.com", PASSWORD, &globex).expect("globex");
    let g = env.core.sign_in("owner@globex.com", PASSWORD, None).expect("session");
    let (_, _, gp) = env.core.session_principal(g.token.secret(), &globex).expect("principal");
    let to_bob = env.core.invite(&gp, "bob@acme.com", Role::Viewer).expect("invite bob");
    assert!(matches!(
        env.core.accept_invitation(to_bob.token.secret(), "not bobs password"),
        Err(Error::Unauthenticated)
    ));
    env.core.accept_invitation(to_bob.token.secret(), PASSWORD).expect("bob joins globex too");
    let (_, role, vp) = env.core.session_principal(bob.token.secret(), &globex).expect("bob in globex");
    assert_eq!((role, vp.scopes()), (Role::Viewer, &[Scope::Inference][..]));
    let late = env.core.invite(&gp, "carol@globex.com", Role::Member).expect("invite");
    env.clock.advance(Duration::from_secs(8 * 24 * 3600));
    assert!(matches!(env.core.accept_invitation(late.token.secret(), PASSWORD), Err(Error::Unauthenticated)));

    // Isolation: globex's owner sees and manages nothing of acme.
    let owner = env.core.sign_in("owner@acme.com", PASSWORD, None).expect("session");
    let (_, _, op) = env.core.session_principal(owner.token.secret(), &acme).expect("principal");
    let g = env.core.sign_in("owner@globex.com", PASSWORD, None).expect("session");
    assert!(env.core.session_principal(g.token.secret(), &acme).is_err());
    let acme_members = env.core.members(&op).expect("members");
    assert_eq!(acme_members.len(), 2);
    let (_, _, gp) = env.core.session_principal(g.token.secret(), &globex).expect("principal");
    assert!(env.core.members(&gp).expect("members").iter().all(|m| m.tenant == globex));
    let ada_id = acme_members.iter().find(|m| m.email == "owner@acme.com").expect("owner").user.clone();
    assert!(matches!(env.core.remove_member(&gp, &ada_id), Err(Error::NotFound { .. })));

    // Roles: an admin manages members but not owners; the last owner stays.
    let bob_id = m.user.clone();
    env.core.set_member_role(&op, &bob_id, Role::Admin).expect("promote");
    let bob = env.core.sign_in("bob@acme.com", PASSWORD, None).expect("bob");
    let (_, _, bp) = env.core.session_principal(bob.token.secret(), &acme).expect("bob admin");
    assert!(matches!(env.core.remove_member(&bp, &ada_id), Err(Error::InvalidArgument(_))));
    assert!(matches!(env.core.invite(&bp, "x@acme.com", Role::Owner), Err(Error::InvalidArgument(_))));
    assert!(
        matches!(env.core.set_member_role(&op, &ada_id, Role::Member), Err(Error::InvalidArgument(_))),
        "last owner"
    );
    assert!(matches!(env.core.remove_member(&op, &ada_id), Err(Error::InvalidArgument(_))), "last owner");
    env.core.set_member_role(&op, &bob_id, Role::Owner).expect("a second owner");
    env.core.set_member_role(&op, &ada_id, Role::Member).expect("now ada may step down");
    env.core.remove_member(&bp, &ada_id).expect("bob removes ada");
    assert!(env.core.session_principal(owner.token.secret(), &acme).is_err(), "removed: acme is out of reach");

    // An admin API key manages members too; a key of another tenant does not.
    let key = env.core.create_api_key(&bp, KeyOptions::new("ops", &[Scope::Admin])).expect("key");
    let kp = env.core.authenticate(key.secret()).expect("auth");
    env.core.invite(&kp, "dave@acme.com", Role::Viewer).expect("a key invites");
    let log = actions(&env, &acme);
    for action in ["member.invited", "member.joined", "member.role_changed", "member.removed"] {
        assert!(log.contains(&action.to_owned()), "{action} in {log:?}");
    }
    env.core.verify_audit(&acme).expect("chain");
}

/// No password, TOTP secret, session, invitation or reset token in any stored file.
#[test]
fn no_password_secret_or_token_is_stored_in_the_clear() {
    let env = Env::new();
    let acme = TenantId::new("acme").expect("id");
    let password = "zq5-canary-password-Hoshi";
    env.core.sign_up("ada@example.com", password, &acme).expect("sign up");
    let s = env.core.sign_in("ada@example.com", password, None).expect("session");
    let setup = env.core.begin_totp(s.token.secret()).expect("totp");
    env.core
        .confirm_totp(s.token.secret(), &totp_code(&setup.secret_base32, "ada@example.com", now_s(&env)).expect("code"))
        .expect("confirm");
    let (_, _, p) = env.core.session_principal(s.token.secret(), &acme).expect("principal");
    let inv = env.core.invite(&p, "bob@example.com", Role::Member).expect("invite");
    let reset = env.core.request_password_reset("ada@example.com").expect("reset").expect("token");
    let secret = totp_rs::Secret::try_from_base32(&*setup.secret_base32).expect("base32");
    let probes: Vec<Vec<u8>> = vec![
        password.as_bytes().to_vec(),
        s.token.secret().as_bytes().to_vec(),
        inv.token.secret().as_bytes().to_vec(),
        reset.secret().as_bytes().to_vec(),
        setup.secret_base32.as_bytes().to_vec(),
        secret.as_ref().to_vec(),
    ];
    for f in env.stored_files() {
        let bytes = std::fs::read(&f).unwrap_or_default();
        for p in &probes {
            assert!(!bytes.windows(p.len()).any(|w| w == &p[..]), "a secret in the clear in {}", f.display());
        }
    }
}

#[test]
fn single_sign_on_vouches_for_members_of_its_own_tenant_only() {
    use soramai_core::sso::SsoConfig;
    let env = Env::new();
    let issuer = "https://idp.initech.example";
    let secret = "zq5-canary-sso-secret-Kumo";
    let config = |role| SsoConfig { issuer: issuer.into(), client_id: "soramai".into(), default_role: role };

    // Org and up; admins only; the secret sealed under the tenant key.
    let (pro, pro_admin) = env.tenant("hooli", Tier::Pro);
    let err = env.core.set_sso(&pro_admin, &config(None), secret).expect_err("pro");
    assert!(matches!(err, Error::NotAllowed { .. }), "{err:?}");
    let (initech, admin) = env.tenant("initech", Tier::Org);
    for bad in [
        SsoConfig { issuer: "ftp://idp".into(), ..config(None) },
        SsoConfig { client_id: String::new(), ..config(None) },
        config(Some(Role::Owner)),
    ] {
        assert!(matches!(env.core.set_sso(&admin, &bad, secret), Err(Error::InvalidArgument(_))), "{bad:?}");
    }
    assert!(env.core.sso_config(&admin).expect("read").is_none(), "refused settings stored nothing");
    env.core.set_sso(&admin, &config(None), secret).expect("set");
    assert_eq!(env.core.sso_client(&initech).expect("client").1.as_str(), secret);
    assert!(env.core.sso_client(&pro).is_err());
    for f in env.stored_files() {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "the secret in {}", f.display());
    }

    // Members only: a verified email of a member signs in and is linked; anyone else is refused.
    let (_, _, p) = {
        env.core.sign_up("ivy@initech.example", PASSWORD, &TenantId::new("ivy-own").expect("id")).expect("ivy");
        let inv = env.core.invite(&admin, "ivy@initech.example", Role::Member).expect("invite");
        env.core.accept_invitation(inv.token.secret(), PASSWORD).expect("join");
        let s = env.core.sign_in("ivy@initech.example", PASSWORD, None).expect("password");
        env.core.session_principal(s.token.secret(), &initech).expect("member")
    };
    assert_eq!(p.tenant(), &initech);
    let stranger = env.core.sso_sign_in(&initech, issuer, "sub-stranger", Some("sam@initech.example"));
    assert!(matches!(stranger, Err(Error::Unauthenticated)), "{stranger:?}");
    assert!(env.core.sso_sign_in(&initech, issuer, "sub-ivy", None).is_err(), "no verified email, no link");
    assert!(env.core.sso_sign_in(&initech, "https://other.example", "sub-ivy", Some("ivy@initech.example")).is_err());
    let s = env.core.sso_sign_in(&initech, issuer, "sub-ivy", Some("ivy@initech.example")).expect("member");
    // The session is confined: this tenant only, and not the account's own settings.
    let token = s.token.secret();
    assert!(env.core.session_principal(token, &initech).is_ok());
    let own = TenantId::new("ivy-own").expect("id");
    assert!(env.core.session_principal(token, &own).is_err(), "the provider vouches for nothing elsewhere");
    assert!(matches!(env.core.begin_totp(token), Err(Error::NotAllowedForSession)));
    assert!(matches!(env.core.session_user(token), Err(Error::NotAllowedForSession)));
    // The link is by subject from now on (a changed email at the provider changes nothing).
    env.core.sso_sign_in(&initech, issuer, "sub-ivy", Some("ivy.new@initech.example")).expect("linked");

    // With a default role, a verified email that is no member joins (no password of its own).
    env.core.set_sso(&admin, &config(Some(Role::Viewer)), secret).expect("set");
    let sam = env.core.sso_sign_in(&initech, issuer, "sub-sam", Some("sam@initech.example")).expect("joins");
    let (_, role, _) = env.core.session_principal(sam.token.secret(), &initech).expect("member");
    assert_eq!(role, Role::Viewer);
    assert!(env.core.sign_in("sam@initech.example", "", None).is_err(), "no password to guess");
    let log = actions(&env, &initech);
    assert!(log.iter().any(|a| a == "sso.configured") && log.iter().any(|a| a == "member.joined"), "{log:?}");

    // Removed from the tenant, the link signs no one in; off, nothing signs in.
    let sam_id = sam.user.id.clone();
    env.core.remove_member(&admin, &sam_id).expect("remove");
    assert!(env.core.sso_sign_in(&initech, issuer, "sub-sam", Some("sam@initech.example")).is_err());
    env.core.delete_sso(&admin).expect("off");
    assert!(env.core.sso_sign_in(&initech, issuer, "sub-ivy", Some("ivy@initech.example")).is_err());
    assert!(env.core.sso_client(&initech).is_err());
}
