//! API keys: `sk-<key id>-<secret>` with a 256-bit random secret of which only a SHA-256 hash is
//! kept; scoped, optionally expiring, rotated with a grace period, revoked at once.
//!
//! [`Core::authenticate`] looks the key up by its id, compares the hash in constant time, and only
//! then looks at revocation, expiry and the tenant's state; every failure is the same
//! [`Error::Unauthenticated`]. The result is a [`Principal`] bound to the key's own tenant, which the
//! rest of the API takes, so a key can never act for another tenant.

use std::fmt;
use std::time::Duration;

use crate::params;
use crate::store::{Db, OptionalExt as _, Row};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::audit::vocabulary::{Action, Actor};
use crate::clock::{Millis, millis};
use crate::core::Core;
use crate::crypto::keys::random_bytes;
use crate::error::{Error, Result};
use crate::ids::{ApiKeyId, GrantId, PoolId, TenantId};

pub(crate) mod scope;
pub use scope::Scope;

fn scopes_to_text(scopes: &[Scope]) -> String {
    let mut v: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    v.sort_unstable();
    v.dedup();
    v.join(",")
}

fn scopes_from_text(s: &str) -> Result<Vec<Scope>> {
    s.split(',').filter(|x| !x.is_empty()).map(|x| Ok(x.parse()?)).collect()
}

/// Who is acting, for which tenant, with which scopes: the result of authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    tenant: TenantId,
    actor: Actor,
    scopes: Vec<Scope>,
    pool: Option<PoolId>,
    grant: Option<GrantContext>,
}

/// The break-glass grant a principal acts under: what every request it makes is recorded with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantContext {
    /// The grant.
    pub id: GrantId,
    /// The platform admin's key that requested it.
    pub operator_key: ApiKeyId,
    /// The operator's tenant (whose audit log records the grant too).
    pub operator_tenant: TenantId,
    /// Why the operator asked.
    pub reason: String,
}

impl Principal {
    /// The operator acting on a tenant's behalf with every scope (embedding applications, admin
    /// tools). Recorded as `operator` in the audit log.
    pub fn operator(tenant: &TenantId) -> Self {
        Self { tenant: tenant.clone(), actor: Actor::Operator, scopes: Scope::ALL.to_vec(), pool: None, grant: None }
    }

    /// A signed-in person acting in a tenant with their role's scopes, recorded as `user:<id>`.
    pub(crate) fn for_user(tenant: &TenantId, user: &crate::ids::UserId, scopes: &[Scope]) -> Self {
        Self {
            tenant: tenant.clone(),
            actor: Actor::User(user.clone()),
            scopes: scopes.to_vec(),
            pool: None,
            grant: None,
        }
    }

    /// The break-glass grant this principal acts under, if any.
    pub fn grant(&self) -> Option<&GrantContext> {
        self.grant.as_ref()
    }

    /// How a platform admin acting through this principal is named in audit records: its key as
    /// `operator:key:<id>`.
    pub fn as_operator(&self) -> Actor {
        match &self.actor {
            Actor::ApiKey(id) => Actor::OperatorKey(id.clone()),
            other => other.clone(),
        }
    }

    /// The tenant the principal acts for.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The actor recorded in the audit log.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The scopes held.
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// The dedicated pool the key is bound to, if any.
    pub fn pool(&self) -> Option<&PoolId> {
        self.pool.as_ref()
    }

    /// Whether this is the operator rather than a tenant's key.
    pub fn is_operator(&self) -> bool {
        self.actor == Actor::Operator
    }

    /// Fails with [`Error::OperatorAccess`] when the principal acts under a break-glass grant.
    pub fn refuse_under_grant(&self, what: &'static str) -> Result<()> {
        if self.grant.is_some() { Err(Error::OperatorAccess(what)) } else { Ok(()) }
    }

    /// Whether the principal holds `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// Fails with [`Error::MissingScope`] unless the principal holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<()> {
        if self.scopes.contains(&scope) { Ok(()) } else { Err(Error::MissingScope(scope)) }
    }
}

/// How a key comes to be: for the rest of the audit record.
#[derive(Clone, Copy)]
enum KeyIssue<'a> {
    /// By the tenant's own admin.
    New,
    /// Replacing this key.
    Rotation(&'a ApiKeyId),
    /// A platform admin's first key for a tenant with none.
    First { operator: &'a Principal },
}

/// Options for a new key.
#[derive(Debug, Clone)]
pub struct KeyOptions {
    /// A label for people (not secret, not content). At most 64 characters.
    pub name: String,
    /// The scopes granted; at least one.
    pub scopes: Vec<Scope>,
    /// Lifetime from creation; `None` for no expiry.
    pub expires_in: Option<Duration>,
    /// Bind the key to a dedicated pool (Org and Enterprise).
    pub pool: Option<PoolId>,
}

impl KeyOptions {
    /// A key with the given scopes, no expiry, no pool binding.
    pub fn new(name: impl Into<String>, scopes: &[Scope]) -> Self {
        Self { name: name.into(), scopes: scopes.to_vec(), expires_in: None, pool: None }
    }
}

/// A newly created key. The secret is shown this once and never stored; drop it after handing it
/// over (it is zeroized).
pub struct IssuedKey {
    /// The key's metadata.
    pub info: ApiKeyInfo,
    secret: Zeroizing<String>,
}

impl fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedKey").field("info", &self.info).field("secret", &"<redacted>").finish()
    }
}

impl IssuedKey {
    pub(crate) fn new(info: ApiKeyInfo, secret: Zeroizing<String>) -> Self {
        Self { info, secret }
    }

    /// The full key, `sk-<id>-<secret>`, to give to the user once.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

/// A key as listed: never the secret, nor its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKeyInfo {
    /// The key id (the part after `sk-`).
    pub id: ApiKeyId,
    /// The owning tenant.
    pub tenant: TenantId,
    /// The label.
    pub name: String,
    /// Scopes granted.
    pub scopes: Vec<Scope>,
    /// Pool binding.
    pub pool: Option<PoolId>,
    /// Created, Unix ms.
    pub created_at: Millis,
    /// Expires, Unix ms (also set by rotation to the end of the grace period).
    pub expires_at: Option<Millis>,
    /// Revoked, Unix ms.
    pub revoked_at: Option<Millis>,
    /// The key that replaced this one in a rotation.
    pub replaced_by: Option<ApiKeyId>,
    /// The break-glass access grant this key belongs to (an operator's short-lived key).
    pub grant: Option<GrantId>,
}

fn hash_secret(secret: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"soramai api key v1\0");
    h.update(secret);
    h.finalize().into()
}

/// Splits `sk-<id>-<secret>`; the secret is 64 lowercase hex digits.
fn parse_token(token: &str) -> Option<(ApiKeyId, &str)> {
    let rest = token.strip_prefix("sk-")?;
    let (id, secret) = rest.split_once('-')?;
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((ApiKeyId::new(id).ok()?, secret))
}

type KeyRow = (
    String,
    String,
    String,
    Vec<u8>,
    String,
    Option<String>,
    Millis,
    Option<Millis>,
    Option<Millis>,
    Option<String>,
    Option<String>,
);

const KEY_COLUMNS: &str =
    "id, tenant_id, name, secret_hash, scopes, pool, created_at, expires_at, revoked_at, replaced_by, grant_id";

fn key_row(r: &Row) -> Result<KeyRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ))
}

fn key_info(row: KeyRow) -> Result<(ApiKeyInfo, Vec<u8>)> {
    let (id, tenant, name, hash, scopes, pool, created_at, expires_at, revoked_at, replaced_by, grant) = row;
    Ok((
        ApiKeyInfo {
            id: ApiKeyId::new(id)?,
            tenant: TenantId::new(tenant)?,
            name,
            scopes: scopes_from_text(&scopes)?,
            pool: pool.map(PoolId::new).transpose()?,
            created_at,
            expires_at,
            revoked_at,
            replaced_by: replaced_by.map(ApiKeyId::new).transpose()?,
            grant: grant.map(GrantId::new).transpose()?,
        },
        hash,
    ))
}

/// The longest grace period a rotation may give the old key.
pub const MAX_ROTATION_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);

/// A key's fields as they are inserted.
pub(crate) struct NewKeyRow<'a> {
    pub(crate) tenant: &'a TenantId,
    pub(crate) name: &'a str,
    pub(crate) scopes: &'a [Scope],
    pub(crate) pool: Option<PoolId>,
    pub(crate) expires_at: Option<Millis>,
    pub(crate) grant: Option<&'a GrantId>,
}

/// Generates a key and inserts it in the caller's transaction; returns its metadata and the
/// secret, `sk-<id>-<secret>` (only the hash is stored).
pub(crate) fn insert_key(tx: &Db<'_>, now: Millis, row: NewKeyRow<'_>) -> Result<(ApiKeyInfo, Zeroizing<String>)> {
    let id = ApiKeyId::generate();
    let mut raw = Zeroizing::new([0u8; 32]);
    random_bytes(&mut raw[..]);
    let secret_hex = Zeroizing::new(hex::encode(&raw[..]));
    let hash = hash_secret(secret_hex.as_bytes());
    let scopes = scopes_from_text(&scopes_to_text(row.scopes))?;
    tx.execute(
        &format!("INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, NULL, ?9)"),
        params![
            id.as_str(),
            row.tenant.as_str(),
            row.name,
            &hash[..],
            scopes_to_text(&scopes),
            row.pool.as_ref().map(|p| p.as_str()),
            now,
            row.expires_at,
            row.grant.map(|g| g.as_str())
        ],
    )?;
    let secret = Zeroizing::new(format!("sk-{}-{}", id.as_str(), secret_hex.as_str()));
    let info = ApiKeyInfo {
        id,
        tenant: row.tenant.clone(),
        name: row.name.to_owned(),
        scopes,
        pool: row.pool,
        created_at: now,
        expires_at: row.expires_at,
        revoked_at: None,
        replaced_by: None,
        grant: row.grant.cloned(),
    };
    Ok((info, secret))
}

/// Whether the tenant holds a key that works now (grant keys aside).
fn has_live_key(tx: &Db<'_>, tenant: &TenantId, now: Millis) -> Result<bool> {
    Ok(tx
        .query_row(
            "SELECT 1 FROM api_keys WHERE tenant_id = ?1 AND revoked_at IS NULL AND grant_id IS NULL
             AND (expires_at IS NULL OR expires_at > ?2) LIMIT 1",
            params![tenant.as_str(), now],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false))
}

/// Whether a tenant has people (members): then they, not the operator, make its keys.
fn has_members(tx: &Db<'_>, tenant: &TenantId) -> Result<bool> {
    Ok(tx
        .query_row("SELECT 1 FROM members WHERE tenant_id = ?1 LIMIT 1", params![tenant.as_str()], |_| Ok(true))
        .optional()?
        .unwrap_or(false))
}

impl Core {
    /// Creates a key for the principal's tenant (admin scope). The secret is in the returned value
    /// only.
    pub fn create_api_key(&self, principal: &Principal, options: KeyOptions) -> Result<IssuedKey> {
        principal.require(Scope::Admin)?;
        self.issue_key(principal, options, KeyIssue::New)
    }

    /// Issues a tenant's first key as a platform admin: only while the tenant has no live key and
    /// no people (a later one, or one for a tenant whose members make its keys, needs the
    /// tenant's own admin or a break-glass access grant), with no more
    /// than the admin's own scopes, recorded in the tenant's audit log with the admin's key id
    /// and in the admin's own log.
    pub fn issue_first_key(&self, operator: &Principal, tenant: &TenantId, options: KeyOptions) -> Result<IssuedKey> {
        operator.require(Scope::Admin)?;
        operator.refuse_under_grant("a break-glass grant's key never mints keys")?;
        if operator.tenant() == tenant {
            return self.create_api_key(operator, options);
        }
        let target = self.tenant(tenant)?;
        if self.is_closing(tenant)? {
            return Err(Error::InvalidArgument("the account is closing: reopen it first".into()));
        }
        if target.key_custody == crate::core::KeyCustody::Customer {
            return Err(Error::OperatorAccess("the tenant holds its own keys: the operator has no access"));
        }
        let acting = Principal {
            tenant: tenant.clone(),
            actor: operator.as_operator(),
            scopes: operator.scopes.clone(),
            pool: None,
            grant: None,
        };
        self.issue_key(&acting, options, KeyIssue::First { operator })
    }

    fn issue_key(&self, principal: &Principal, options: KeyOptions, how: KeyIssue<'_>) -> Result<IssuedKey> {
        let tenant = self.tenant(principal.tenant())?;
        principal.refuse_under_grant("a break-glass grant's key never mints keys")?;
        if options.scopes.is_empty() {
            return Err(Error::InvalidArgument("a key needs at least one scope".into()));
        }
        if options.name.chars().count() > 64 || options.name.chars().any(char::is_control) {
            return Err(Error::InvalidArgument("a key name is at most 64 printable characters".into()));
        }
        // A key never holds more than its creator.
        if let Some(s) = options.scopes.iter().find(|s| !principal.scopes().contains(s)) {
            return Err(Error::MissingScope(*s));
        }
        if let Some(pool) = &options.pool {
            if !tenant.tier.policy().keys_bindable_to_pool {
                return Err(Error::NotAllowed { tier: tenant.tier, what: "binding keys to a dedicated pool" });
            }
            if pool.is_shared() {
                return Err(Error::InvalidArgument("a key can only be bound to a dedicated pool".into()));
            }
        }
        let now = self.now();
        let expires_at = options.expires_in.map(|d| now.saturating_add(millis(d)));
        let sealed_name = self.seal_name(&tenant.id, &options.name)?;
        let (mut info, secret) = self.write(|tx| {
            if let KeyIssue::First { .. } = how {
                if has_live_key(tx, &tenant.id, now)? {
                    return Err(Error::OperatorAccess(
                        "the tenant already has a live key: a later operator key needs an access grant",
                    ));
                }
                if has_members(tx, &tenant.id)? {
                    return Err(Error::OperatorAccess(
                        "the tenant's people make its keys: operator access needs an access grant",
                    ));
                }
            }
            let row = NewKeyRow {
                tenant: &tenant.id,
                name: &sealed_name,
                scopes: &options.scopes,
                pool: options.pool.clone(),
                expires_at,
                grant: None,
            };
            let (info, secret) = insert_key(tx, now, row)?;
            let (action, detail) = match how {
                KeyIssue::Rotation(old) => {
                    (Action::ApiKeyRotated, serde_json::json!({"replaces": old.as_str(), "scopes": info.scopes}))
                }
                KeyIssue::New | KeyIssue::First { .. } => {
                    (Action::ApiKeyCreated, serde_json::json!({"scopes": info.scopes}))
                }
            };
            self.audit_tx(tx, &tenant.id, principal.actor(), action, info.id.as_str(), detail)?;
            if let KeyIssue::First { operator } = how {
                let detail = serde_json::json!({"op": "api_key.first", "key": info.id.as_str(), "scopes": info.scopes});
                self.audit_tx(
                    tx,
                    operator.tenant(),
                    principal.actor(),
                    Action::AdminAccess,
                    tenant.id.as_str(),
                    detail,
                )?;
            }
            Ok((info, secret))
        })?;
        info.name = options.name;
        Ok(IssuedKey { info, secret })
    }

    /// Authenticates a bearer token. Malformed, unknown, wrong, revoked and expired keys, and keys
    /// of closed tenants, all fail with the same [`Error::Unauthenticated`].
    pub fn authenticate(&self, token: &str) -> Result<Principal> {
        let (id, secret) = parse_token(token).ok_or(Error::Unauthenticated)?;
        let row = self.read(|c| {
            c.query_row(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys k WHERE id = ?1 AND EXISTS (SELECT 1 FROM tenants t WHERE t.id = k.tenant_id AND t.status = 'active')"),
                [id.as_str()],
                key_row,
            )
            .optional()
        })?;
        let presented = hash_secret(secret.as_bytes());
        let Some(row) = row else {
            // Spend the same comparison on unknown ids as on known ones.
            let _ = presented.ct_eq(&[0u8; 32]);
            return Err(Error::Unauthenticated);
        };
        let (info, stored) = key_info(row)?;
        if !bool::from(presented.ct_eq(&stored[..])) {
            return Err(Error::Unauthenticated);
        }
        let now = self.now();
        if self.is_closing(&info.tenant)? {
            return Err(Error::Unauthenticated);
        }
        if info.revoked_at.is_some() || info.expires_at.is_some_and(|e| now >= e) {
            if info.grant.is_some() {
                // A grant's key lapses with its grant: record the expiry now if no sweep has.
                self.expire_access_grants()?;
            }
            return Err(Error::Unauthenticated);
        }
        let (actor, grant) = match &info.grant {
            None => (Actor::ApiKey(info.id.clone()), None),
            Some(id) => {
                let g = self.live_grant(id)?;
                (Actor::Grant { grant: g.id.clone(), operator_key: g.operator_key.clone() }, Some(g))
            }
        };
        self.write(|tx| {
            tx.execute("UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1", params![info.id.as_str(), now])?;
            Ok(())
        })?;
        Ok(Principal { tenant: info.tenant, actor, scopes: info.scopes, pool: info.pool, grant })
    }

    /// Authenticates and checks a scope in one step.
    pub fn authorize(&self, token: &str, scope: Scope) -> Result<Principal> {
        let p = self.authenticate(token)?;
        p.require(scope)?;
        Ok(p)
    }

    /// The tenant's keys (admin scope). Never includes secrets or hashes.
    pub fn list_api_keys(&self, principal: &Principal) -> Result<Vec<ApiKeyInfo>> {
        principal.require(Scope::Admin)?;
        self.tenant(principal.tenant())?;
        let rows = self.read(|c| {
            let rows = c.query_map(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = ?1 ORDER BY created_at, id"),
                [principal.tenant().as_str()],
                key_row,
            )?;
            Ok(rows)
        })?;
        rows.into_iter().map(|r| self.key_info_opened(r)).collect()
    }

    fn own_key(&self, principal: &Principal, id: &ApiKeyId) -> Result<ApiKeyInfo> {
        let row = self.read(|c| {
            c.query_row(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1 AND tenant_id = ?2"),
                params![id.as_str(), principal.tenant().as_str()],
                key_row,
            )
            .optional()
        })?;
        self.key_info_opened(row.ok_or(Error::NotFound { kind: "api key" })?)
    }

    /// A key's metadata with its name opened.
    fn key_info_opened(&self, row: KeyRow) -> Result<ApiKeyInfo> {
        let (mut info, _) = key_info(row)?;
        info.name = self.open_name(&info.tenant, &info.name)?;
        Ok(info)
    }

    /// Revokes a key of the principal's tenant; effective for the very next request.
    pub fn revoke_api_key(&self, principal: &Principal, id: &ApiKeyId) -> Result<()> {
        principal.require(Scope::Admin)?;
        // A grant that could revoke the tenant's keys could leave it with none, and then take
        // the "first key" a platform admin may hand out: a way to stay after the grant ends.
        principal.refuse_under_grant("a break-glass grant's key never revokes keys")?;
        let key = self.own_key(principal, id)?;
        if key.revoked_at.is_some() {
            return Ok(());
        }
        let now = self.now();
        self.write(|tx| {
            tx.execute("UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1", params![id.as_str(), now])?;
            self.audit_tx(
                tx,
                principal.tenant(),
                principal.actor(),
                Action::ApiKeyRevoked,
                id.as_str(),
                serde_json::json!({}),
            )
        })
    }

    /// Rotates a key: issues a new one with the same name, scopes, pool and lifetime, and lets the old
    /// one work for `grace` more (never past its own expiry). Returns the new key, shown once.
    pub fn rotate_api_key(&self, principal: &Principal, id: &ApiKeyId, grace: Duration) -> Result<IssuedKey> {
        principal.require(Scope::Admin)?;
        if grace > MAX_ROTATION_GRACE {
            return Err(Error::InvalidArgument("the grace period is at most 30 days".into()));
        }
        let old = self.own_key(principal, id)?;
        let now = self.now();
        if old.revoked_at.is_some() || old.expires_at.is_some_and(|e| now >= e) {
            return Err(Error::InvalidArgument("a revoked or expired key cannot be rotated".into()));
        }
        let lifetime = old.expires_at.map(|e| Duration::from_millis(u64::try_from(e - old.created_at).unwrap_or(0)));
        let options = KeyOptions {
            name: old.name.clone(),
            scopes: old.scopes.clone(),
            expires_in: lifetime,
            pool: old.pool.clone(),
        };
        if old.grant.is_some() {
            return Err(Error::OperatorAccess("a break-glass grant's key cannot be rotated"));
        }
        let new = self.issue_key(principal, options, KeyIssue::Rotation(id))?;
        let grace_end = now.saturating_add(millis(grace));
        let expires = old.expires_at.map_or(grace_end, |e| e.min(grace_end));
        self.write(|tx| {
            tx.execute(
                "UPDATE api_keys SET expires_at = ?2, replaced_by = ?3 WHERE id = ?1",
                params![id.as_str(), expires, new.info.id.as_str()],
            )?;
            Ok(())
        })?;
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_strictly() {
        let secret = "a".repeat(64);
        assert!(parse_token(&format!("sk-0123abcd-{secret}")).is_some());
        for bad in [
            "",
            "sk-",
            "sk--",
            "pk-0123-aa",
            &format!("sk-0123-{}", "a".repeat(63)),
            &format!("sk-01/3-{secret}"),
            &format!("sk-0123-{}g", "a".repeat(63)),
        ] {
            assert!(parse_token(bad).is_none(), "{bad:?}");
        }
    }
}
