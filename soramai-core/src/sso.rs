//! Single sign-on: an Org or Enterprise tenant names its OpenID Connect provider (Google
//! Workspace, Entra ID, Okta, Keycloak…), and its people sign in there. This module keeps the
//! configuration and decides who a verified identity is; the protocol (discovery, the
//! authorization code flow with PKCE, the ID token's signature, issuer, audience, nonce and
//! expiry) is the server's, through the `openidconnect` crate.
//!
//! - The client secret is an object sealed under the tenant's key, never a column.
//! - A sign-in under way is a row keyed by the hash of its `state`, holding the nonce and PKCE
//!   verifier for [`SSO_LOGIN_MS`]; it is taken once.
//! - A verified identity signs in the person linked to `(issuer, subject)`; the first time, the
//!   member of the tenant with that (provider-verified) email, who is then linked. With a
//!   default role set, a verified email that is no member yet joins with that role. Anyone else
//!   is refused. The session it opens is confined to this tenant ([`Core::session`]): a
//!   tenant's provider vouches for nothing in another tenant, nor for the account itself
//!   (passkeys, second factor, password).

use serde::Serialize;
use zeroize::Zeroizing;

use crate::accounts::{Role, normalize_email, token_hash};
use crate::audit::vocabulary::{Action, Actor};
use crate::auth::{Principal, Scope};
use crate::clock::Millis;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::ids::{ObjectPath, TenantId, UserId};
use crate::params;
use crate::store::OptionalExt as _;
use crate::{IssuedSession, User};

/// How long a sign-in at the provider may take.
pub const SSO_LOGIN_MS: Millis = 10 * 60 * 1000;

/// A tenant's provider, as its admins see it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SsoConfig {
    /// The provider's issuer URL (discovery is at `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    /// This platform's client id at the provider.
    pub client_id: String,
    /// The role a verified email that is no member yet joins with; none: members only.
    pub default_role: Option<Role>,
}

/// A sign-in under way, as the callback finds it.
#[derive(Debug)]
pub struct SsoLogin {
    /// The tenant whose provider it went to.
    pub tenant: TenantId,
    /// The nonce the ID token must carry.
    pub nonce: String,
    /// The PKCE verifier for the code exchange.
    pub pkce_verifier: Zeroizing<String>,
}

fn secret_path() -> Result<ObjectPath> {
    ObjectPath::new("sso/client-secret")
}

fn check_issuer(issuer: &str) -> Result<()> {
    let ok = (issuer.starts_with("https://") || issuer.starts_with("http://"))
        && issuer.len() <= 512
        && !issuer.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument("the issuer is an http(s) URL of at most 512 characters".into()))
    }
}

impl Core {
    /// Sets (or replaces) the tenant's provider (admin; Org and Enterprise).
    pub fn set_sso(&self, principal: &Principal, config: &SsoConfig, client_secret: &str) -> Result<()> {
        principal.require(Scope::Admin)?;
        principal.refuse_under_grant("single sign-on is the tenant's own to set")?;
        let tenant = self.tenant(principal.tenant())?;
        if !tenant.tier.policy().sso {
            return Err(Error::NotAllowed { tier: tenant.tier, what: "single sign-on" });
        }
        check_issuer(&config.issuer)?;
        if config.client_id.is_empty() || config.client_id.len() > 256 || config.client_id.chars().any(char::is_control)
        {
            return Err(Error::InvalidArgument("the client id is 1 to 256 printable characters".into()));
        }
        if client_secret.is_empty() || client_secret.len() > 1024 {
            return Err(Error::InvalidArgument("the client secret is 1 to 1024 bytes".into()));
        }
        if config.default_role == Some(Role::Owner) {
            return Err(Error::InvalidArgument("no one joins as an owner by signing in".into()));
        }
        let now = self.now();
        let issuer = config.issuer.trim_end_matches('/').to_owned();
        self.put_object_with(&tenant.id, &secret_path()?, client_secret.as_bytes(), |tx| {
            tx.execute(
                "INSERT INTO sso_configs (tenant_id, issuer, client_id, default_role, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant_id) DO UPDATE SET issuer = excluded.issuer, client_id = excluded.client_id,
                 default_role = excluded.default_role, updated_at = excluded.updated_at",
                params![tenant.id.as_str(), issuer, config.client_id, config.default_role.map(Role::as_str), now],
            )?;
            let detail = serde_json::json!({"issuer": issuer, "default_role": config.default_role.map(Role::as_str)});
            self.audit_tx(tx, &tenant.id, principal.actor(), Action::SsoConfigured, tenant.id.as_str(), detail)
        })
    }

    /// The tenant's provider, if it has one (admin).
    pub fn sso_config(&self, principal: &Principal) -> Result<Option<SsoConfig>> {
        principal.require(Scope::Admin)?;
        self.sso_row(principal.tenant())
    }

    /// Removes the tenant's provider (admin); people keep their accounts and passwords.
    pub fn delete_sso(&self, principal: &Principal) -> Result<()> {
        principal.require(Scope::Admin)?;
        principal.refuse_under_grant("single sign-on is the tenant's own to set")?;
        let tenant = principal.tenant().clone();
        self.sso_row(&tenant)?.ok_or(Error::NotFound { kind: "sso configuration" })?;
        self.delete_object_with(&tenant, &secret_path()?, |tx| {
            tx.execute("DELETE FROM sso_configs WHERE tenant_id = ?1", [tenant.as_str()])?;
            self.audit_tx(tx, &tenant, principal.actor(), Action::SsoRemoved, tenant.as_str(), serde_json::json!({}))
        })
    }

    /// What the sign-in flow needs of a tenant's provider: the config and the client secret.
    /// A tenant without one (or closed, or no longer on a tier with SSO) is `NotFound`.
    pub fn sso_client(&self, tenant: &TenantId) -> Result<(SsoConfig, Zeroizing<String>)> {
        let t = self.tenant(tenant).map_err(|_| Error::NotFound { kind: "sso configuration" })?;
        let config = self.sso_row(tenant)?.filter(|_| t.tier.policy().sso);
        let config = config.ok_or(Error::NotFound { kind: "sso configuration" })?;
        let secret = self.get_object(tenant, &secret_path()?)?;
        let secret = String::from_utf8(secret.to_vec()).map_err(|_| Error::Integrity)?;
        Ok((config, Zeroizing::new(secret)))
    }

    fn sso_row(&self, tenant: &TenantId) -> Result<Option<SsoConfig>> {
        let row: Option<(String, String, Option<String>)> = self.read(|c| {
            c.query_row(
                "SELECT issuer, client_id, default_role FROM sso_configs WHERE tenant_id = ?1",
                [tenant.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
        })?;
        row.map(|(issuer, client_id, role)| {
            Ok(SsoConfig { issuer, client_id, default_role: role.map(|r| r.parse()).transpose()? })
        })
        .transpose()
    }

    /// Records a sign-in sent to the tenant's provider, under its `state`.
    pub fn begin_sso(&self, tenant: &TenantId, state: &str, nonce: &str, pkce_verifier: &str) -> Result<()> {
        let now = self.now();
        self.write(|tx| {
            tx.execute("DELETE FROM sso_logins WHERE expires_at <= ?1", params![now])?;
            tx.execute(
                "INSERT INTO sso_logins (state_hash, tenant_id, nonce, pkce_verifier, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![token_hash(state), tenant.as_str(), nonce, pkce_verifier, now + SSO_LOGIN_MS],
            )?;
            Ok(())
        })
    }

    /// Takes the sign-in a callback's `state` names (once; a spent or stale one is
    /// `Unauthenticated`).
    pub fn take_sso(&self, state: &str) -> Result<SsoLogin> {
        let hash = token_hash(state);
        let now = self.now();
        let row: Option<(String, String, String, Millis)> = self.write(|tx| {
            let row = tx
                .query_row(
                    "SELECT tenant_id, nonce, pkce_verifier, expires_at FROM sso_logins WHERE state_hash = ?1",
                    params![hash],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            tx.execute("DELETE FROM sso_logins WHERE state_hash = ?1", params![hash])?;
            Ok(row)
        })?;
        let (tenant, nonce, verifier, _) = row.filter(|r| r.3 > now).ok_or(Error::Unauthenticated)?;
        Ok(SsoLogin { tenant: TenantId::new(tenant)?, nonce, pkce_verifier: Zeroizing::new(verifier) })
    }

    /// Signs in the person a tenant's provider vouched for (the ID token already verified):
    /// `subject` at `issuer`, with `email` if the provider verified it.
    pub fn sso_sign_in(
        &self,
        tenant: &TenantId,
        issuer: &str,
        subject: &str,
        verified_email: Option<&str>,
    ) -> Result<IssuedSession> {
        let (config, _) = self.sso_client(tenant)?;
        if config.issuer != issuer.trim_end_matches('/') || subject.is_empty() || subject.len() > 255 {
            return Err(Error::Unauthenticated);
        }
        let linked: Option<String> = self.read(|c| {
            c.query_row(
                "SELECT user_id FROM sso_links WHERE issuer = ?1 AND subject = ?2",
                params![config.issuer, subject],
                |r| r.get(0),
            )
            .optional()
        })?;
        let member =
            |user: &UserId| -> Result<bool> { Ok(self.memberships(user)?.iter().any(|m| &m.tenant == tenant)) };
        let user: User = match linked {
            Some(id) => {
                let user = self.user(&UserId::new(id)?)?;
                if !member(&user.id)? {
                    return Err(Error::Unauthenticated);
                }
                user
            }
            None => {
                let email = normalize_email(verified_email.ok_or(Error::Unauthenticated)?)
                    .map_err(|_| Error::Unauthenticated)?;
                let existing = self.user_row("email", &email)?.map(|r| r.user);
                let joining = match &existing {
                    Some(u) if member(&u.id)? => None,
                    _ => Some(config.default_role.ok_or(Error::Unauthenticated)?),
                };
                self.write(|tx| {
                    let user = match &existing {
                        Some(u) => u.clone(),
                        // No password: this person signs in through the provider (or sets one by
                        // a reset).
                        None => self.insert_user(tx, &email, "!sso")?,
                    };
                    if let Some(role) = joining {
                        self.insert_member(tx, tenant, &user.id, role, &Actor::User(user.id.clone()))?;
                    }
                    tx.execute(
                        "INSERT INTO sso_links (issuer, subject, user_id, created_at) VALUES (?1, ?2, ?3, ?4)",
                        params![config.issuer, subject, user.id.as_str(), self.now()],
                    )?;
                    Ok(user)
                })?
            }
        };
        let key = crate::accounts::email_hash(&user.email);
        self.check_not_locked(&key)?;
        // Confined to this tenant: its provider vouches for nothing elsewhere.
        self.start_confined_session(user, &key, "sso", Some(tenant))
    }
}
