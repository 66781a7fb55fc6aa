//! The door for people (as opposed to API keys): sign-up and sign-in, web sessions, invitations,
//! password resets, second factors, passkeys and single sign-on. Every rule (lockouts, session
//! confinement, who may accept what) is the security core's; this type is the one way in for a web
//! front end such as the reference server's pages.
//!
//! An [`Accounts`] is cheap to clone and owns what it needs, so it moves into a blocking task.

use std::sync::Arc;

use soramai_core::{Core, Principal, TenantId};
use zeroize::Zeroizing;

pub use soramai_core::accounts::{
    Invitation, IssuedInvitation, IssuedSession, Membership, Role, Token, TotpSetup, User, csrf_seed, csrf_token,
    csrf_valid, totp_code,
};
pub use soramai_core::ids::UserId;
pub use soramai_core::passkeys::{
    CreationChallengeResponse, PasskeyConfig, PasskeyInfo, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestChallengeResponse,
};
pub use soramai_core::sso::{SsoConfig, SsoLogin};

use crate::Platform;

/// The accounts' errors are the security core's own ([`crate::Error`]): a web front end answers
/// each (a second factor wanted, a locked account) in its own words.
type Result<T> = soramai_core::Result<T>;

/// People's accounts and web sessions on one platform.
#[derive(Clone)]
pub struct Accounts {
    core: Arc<Core>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Accounts")
    }
}

impl Platform {
    /// The door for people: sign-in, sessions, second factors, passkeys, single sign-on.
    pub fn accounts(&self) -> Accounts {
        Accounts { core: self.core.clone() }
    }
}

impl Accounts {
    /// The platform's clock, in Unix milliseconds (session expiries are on it).
    pub fn now(&self) -> i64 {
        self.core.now()
    }

    /// Makes an account with a new tenant it administers (open sign-up: a Free tenant).
    pub fn sign_up(&self, email: &str, password: &str, tenant: &TenantId) -> Result<User> {
        self.core.sign_up(email, password, tenant)
    }

    /// Signs in with a password (and the TOTP code once one is set up); the session's token is in
    /// the result this once.
    pub fn sign_in(&self, email: &str, password: &str, totp_code: Option<&str>) -> Result<IssuedSession> {
        self.core.sign_in(email, password, totp_code)
    }

    /// Ends a session.
    pub fn sign_out(&self, token: &str) -> Result<()> {
        self.core.sign_out(token)
    }

    /// A live session's person and, for one a tenant's single sign-on opened, that tenant.
    pub fn session(&self, token: &str) -> Result<(User, Option<TenantId>)> {
        self.core.session(token)
    }

    /// A live session's person, for the account's own settings (refused to a single sign-on
    /// session: those need the account's own sign-in).
    pub fn session_user(&self, token: &str) -> Result<User> {
        self.core.session_user(token)
    }

    /// The session's person acting on one of their tenants: their role there and the principal
    /// the role gives.
    pub fn session_principal(&self, token: &str, tenant: &TenantId) -> Result<(User, Role, Principal)> {
        self.core.session_principal(token, tenant)
    }

    /// The tenants a person belongs to.
    pub fn memberships(&self, user: &UserId) -> Result<Vec<Membership>> {
        self.core.memberships(user)
    }

    /// Accepts an invitation (its link's token), setting the password of a new account.
    pub fn accept_invitation(&self, token: &str, password: &str) -> Result<Membership> {
        self.core.accept_invitation(token, password)
    }

    /// Starts a password reset: the token for the operator's mailer, or `None` for an unknown
    /// address (the caller answers the same either way).
    pub fn request_password_reset(&self, email: &str) -> Result<Option<Token>> {
        self.core.request_password_reset(email)
    }

    /// Sets a new password with a reset link's token (good once, within its hour).
    pub fn reset_password(&self, token: &str, new_password: &str) -> Result<()> {
        self.core.reset_password(token, new_password)
    }

    /// Starts setting up a TOTP second factor: the secret, shown once.
    pub fn begin_totp(&self, session: &str) -> Result<TotpSetup> {
        self.core.begin_totp(session)
    }

    /// Turns the TOTP second factor on with a first code from the authenticator.
    pub fn confirm_totp(&self, session: &str, code: &str) -> Result<()> {
        self.core.confirm_totp(session, code)
    }

    /// The session's person's passkeys.
    pub fn passkeys(&self, session_token: &str) -> Result<Vec<PasskeyInfo>> {
        self.core.passkeys(session_token)
    }

    /// Starts registering a passkey: the browser's challenge.
    pub fn begin_passkey_registration(
        &self,
        config: &PasskeyConfig,
        session_token: &str,
    ) -> Result<CreationChallengeResponse> {
        self.core.begin_passkey_registration(config, session_token)
    }

    /// Finishes registering a passkey with the browser's answer.
    pub fn finish_passkey_registration(
        &self,
        config: &PasskeyConfig,
        session_token: &str,
        name: &str,
        answer: &RegisterPublicKeyCredential,
    ) -> Result<PasskeyInfo> {
        self.core.finish_passkey_registration(config, session_token, name, answer)
    }

    /// Removes one of the session's person's passkeys.
    pub fn delete_passkey(&self, session_token: &str, id: &str) -> Result<()> {
        self.core.delete_passkey(session_token, id)
    }

    /// Starts a passkey sign-in: the ceremony's token and the browser's challenge.
    pub fn begin_passkey_sign_in(
        &self,
        config: &PasskeyConfig,
        email: &str,
    ) -> Result<(Token, RequestChallengeResponse)> {
        self.core.begin_passkey_sign_in(config, email)
    }

    /// Finishes a passkey sign-in: a new session.
    pub fn finish_passkey_sign_in(
        &self,
        config: &PasskeyConfig,
        ceremony: &str,
        answer: &PublicKeyCredential,
    ) -> Result<IssuedSession> {
        self.core.finish_passkey_sign_in(config, ceremony, answer)
    }

    /// A tenant's single sign-on provider and its client secret.
    pub fn sso_client(&self, tenant: &TenantId) -> Result<(SsoConfig, Zeroizing<String>)> {
        self.core.sso_client(tenant)
    }

    /// Remembers a single sign-on login under way (its state, nonce and PKCE verifier).
    pub fn begin_sso(&self, tenant: &TenantId, state: &str, nonce: &str, pkce_verifier: &str) -> Result<()> {
        self.core.begin_sso(tenant, state, nonce, pkce_verifier)
    }

    /// Takes back a login under way by its state (once).
    pub fn take_sso(&self, state: &str) -> Result<SsoLogin> {
        self.core.take_sso(state)
    }

    /// Signs in the person the tenant's provider vouched for: a session confined to the tenant.
    pub fn sso_sign_in(
        &self,
        tenant: &TenantId,
        issuer: &str,
        subject: &str,
        verified_email: Option<&str>,
    ) -> Result<IssuedSession> {
        self.core.sso_sign_in(tenant, issuer, subject, verified_email)
    }
}
