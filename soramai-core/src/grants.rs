//! Break-glass access grants: the only way the operator's staff reach a tenant's data.
//!
//! A platform admin creates a tenant and hands it its first key; from then on the operator holds
//! no key of the tenant's. To read anything (an incident, a support case) an admin asks for a
//! grant with a reason, a lifetime of at most an hour and no more than its own key's scopes. The
//! grant comes with a short-lived key that dies with it:
//! - on Free, Basic and Pro the grant is active at once;
//! - on Org it waits for the tenant's approval (its key reads nothing until then);
//! - where the customer holds the keys (Enterprise) there is no grant at all.
//!
//! The tenant or the operator may revoke a grant at any time, effective for the next request.
//! Every event of a grant (requested, approved, revoked, expired) and every request made under one
//! is appended to the tenant's own audit log, with the grant id, the reason and the operator key
//! id, and to the operator's log.

use std::time::Duration;

use serde::Serialize;

use crate::IssuedKey;
use crate::audit::vocabulary::{Action, Actor};
use crate::auth::{GrantContext, NewKeyRow, Principal, Scope, insert_key};
use crate::clock::{Millis, millis};
use crate::core::{Core, KeyCustody};
use crate::error::{Error, Result};
use crate::ids::{ApiKeyId, GrantId, TenantId};
use crate::params;
use crate::store::{Db, OptionalExt as _, Row};
use crate::tier::OperatorAccess;

/// The longest a grant may last.
pub const MAX_GRANT_TTL: Duration = Duration::from_secs(3600);
/// A grant's lifetime when the request names none.
pub const DEFAULT_GRANT_TTL: Duration = Duration::from_secs(900);
/// How long a grant that needs the tenant's approval waits for it before it lapses.
pub const APPROVAL_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// The longest reason, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// Where a grant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantStatus {
    /// Waiting for the tenant's approval; its key reads nothing.
    Pending,
    /// In force until `expires_at`.
    Active,
    /// Ended by the tenant or the operator.
    Revoked,
    /// Ran out (or lapsed unapproved).
    Expired,
}

impl GrantStatus {
    fn as_str(self) -> &'static str {
        match self {
            GrantStatus::Pending => "pending",
            GrantStatus::Active => "active",
            GrantStatus::Revoked => "revoked",
            GrantStatus::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(GrantStatus::Pending),
            "active" => Ok(GrantStatus::Active),
            "revoked" => Ok(GrantStatus::Revoked),
            "expired" => Ok(GrantStatus::Expired),
            _ => Err(Error::Integrity),
        }
    }
}

/// What a platform admin asks for.
#[derive(Debug, Clone)]
pub struct GrantRequest {
    /// Why (an incident, a ticket): required, at most [`MAX_REASON_CHARS`] printable characters.
    pub reason: String,
    /// The scopes the grant's key gets: at least one, all held by the asking key.
    pub scopes: Vec<Scope>,
    /// How long it lasts once active (default [`DEFAULT_GRANT_TTL`], at most [`MAX_GRANT_TTL`]).
    pub ttl: Option<Duration>,
}

/// A grant as stored and listed (never its key's secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessGrant {
    /// The grant id.
    pub id: GrantId,
    /// The tenant whose data it opens.
    pub tenant: TenantId,
    /// The operator's tenant.
    pub operator_tenant: TenantId,
    /// The platform admin's key that asked.
    pub operator_key: ApiKeyId,
    /// The grant's own short-lived key.
    pub key_id: ApiKeyId,
    /// Why.
    pub reason: String,
    /// The scopes of the grant's key.
    pub scopes: Vec<Scope>,
    /// Its lifetime once active, in seconds.
    pub ttl_seconds: u64,
    /// Where it stands.
    pub status: GrantStatus,
    /// Asked, Unix ms.
    pub requested_at: Millis,
    /// Approved by the tenant (Org), Unix ms.
    pub approved_at: Option<Millis>,
    /// The end of the grant when active; the end of the approval window while pending. Unix ms.
    pub expires_at: Millis,
    /// Revoked or expired, Unix ms.
    pub ended_at: Option<Millis>,
    /// Who approved, revoked or let it expire (`key:<id>`, `operator:key:<id>`, `system`).
    pub ended_by: Option<String>,
}

/// A grant just created, with its key's secret (shown this once).
#[derive(Debug)]
pub struct IssuedGrant {
    /// The grant.
    pub grant: AccessGrant,
    /// The grant's key.
    pub key: IssuedKey,
}

const GRANT_COLUMNS: &str = "id, tenant_id, operator_tenant, operator_key, key_id, reason, scopes, ttl_seconds, status, \
                             requested_at, approved_at, expires_at, ended_at, ended_by";

fn grant_row(r: &Row) -> Result<AccessGrant> {
    let scopes: String = r.get(6)?;
    Ok(AccessGrant {
        id: GrantId::new(r.get::<String>(0)?)?,
        tenant: TenantId::new(r.get::<String>(1)?)?,
        operator_tenant: TenantId::new(r.get::<String>(2)?)?,
        operator_key: ApiKeyId::new(r.get::<String>(3)?)?,
        key_id: ApiKeyId::new(r.get::<String>(4)?)?,
        reason: r.get(5)?,
        scopes: scopes.split(',').filter(|s| !s.is_empty()).map(|s| Ok(s.parse()?)).collect::<Result<_>>()?,
        ttl_seconds: r.get(7)?,
        status: GrantStatus::parse(&r.get::<String>(8)?)?,
        requested_at: r.get(9)?,
        approved_at: r.get(10)?,
        expires_at: r.get(11)?,
        ended_at: r.get(12)?,
        ended_by: r.get(13)?,
    })
}

fn check_reason(reason: &str) -> Result<String> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(Error::InvalidArgument("an access grant needs a reason".into()));
    }
    if reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "a reason is at most {MAX_REASON_CHARS} printable characters on one line"
        )));
    }
    Ok(reason.to_owned())
}

/// The content-free detail every record of a grant carries.
fn grant_detail(g: &AccessGrant) -> serde_json::Value {
    serde_json::json!({
        "grant": g.id.as_str(),
        "reason": g.reason,
        "operator_key": g.operator_key.as_str(),
        "tenant": g.tenant.as_str(),
        "scopes": g.scopes,
        "ttl_seconds": g.ttl_seconds,
        "status": g.status,
    })
}

impl Core {
    /// Appends one record of a grant to the tenant's log and to the operator's.
    fn audit_grant(
        &self,
        tx: &Db<'_>,
        actor: &Actor,
        action: Action,
        g: &AccessGrant,
        extra: Option<&str>,
    ) -> Result<()> {
        let mut detail = grant_detail(g);
        if let Some(op) = extra {
            detail["operation"] = serde_json::Value::String(op.to_owned());
        }
        self.audit_tx(tx, &g.tenant, actor, action, g.id.as_str(), detail.clone())?;
        self.audit_tx(tx, &g.operator_tenant, actor, action, g.id.as_str(), detail)
    }

    fn grant_tx(tx: &Db<'_>, id: &GrantId) -> Result<Option<AccessGrant>> {
        tx.query_row(&format!("SELECT {GRANT_COLUMNS} FROM access_grants WHERE id = ?1"), [id.as_str()], grant_row)
            .optional()
    }

    /// Asks for break-glass access to `tenant` as a platform admin (`operator`: an admin key of
    /// another tenant, the operator's). Refused without a reason, beyond an hour, beyond the
    /// asking key's scopes, from a grant's own key, and on a tenant whose keys the customer holds.
    /// The grant is active at once, or pending the tenant's approval, as its tier says.
    pub fn request_access_grant(
        &self,
        operator: &Principal,
        tenant: &TenantId,
        request: GrantRequest,
    ) -> Result<IssuedGrant> {
        operator.require(Scope::Admin)?;
        let operator_key = match (operator.actor(), operator.grant()) {
            (Actor::ApiKey(id), None) => id.clone(),
            (_, Some(_)) => return Err(Error::OperatorAccess("a break-glass grant's key cannot ask for another")),
            _ => return Err(Error::OperatorAccess("an access grant is asked for with a platform admin's API key")),
        };
        if operator.tenant() == tenant {
            return Err(Error::InvalidArgument("an access grant is for another tenant than the asking key's".into()));
        }
        let reason = check_reason(&request.reason)?;
        let ttl = request.ttl.unwrap_or(DEFAULT_GRANT_TTL);
        if ttl.is_zero() || ttl > MAX_GRANT_TTL {
            return Err(Error::InvalidArgument("an access grant lasts 1 to 3600 seconds".into()));
        }
        let mut scopes = request.scopes;
        scopes.sort_by_key(|s| s.as_str());
        scopes.dedup();
        if scopes.is_empty() {
            return Err(Error::InvalidArgument("an access grant needs at least one scope".into()));
        }
        if let Some(s) = scopes.iter().find(|s| !operator.scopes().contains(s)) {
            return Err(Error::MissingScope(*s));
        }
        let target = self.tenant(tenant)?;
        let access = target.tier.policy().operator_access;
        if access == OperatorAccess::None || target.key_custody == KeyCustody::Customer {
            return Err(Error::OperatorAccess("the tenant holds its own keys: the operator has no access"));
        }
        let now = self.now();
        let (status, expires_at) = match access {
            OperatorAccess::TenantApproval => (GrantStatus::Pending, now.saturating_add(millis(APPROVAL_WINDOW))),
            _ => (GrantStatus::Active, now.saturating_add(millis(ttl))),
        };
        let id = GrantId::generate();
        let name = self.seal_name(tenant, &format!("access grant {}", id.as_str()))?;
        self.write(|tx| {
            let row = NewKeyRow {
                tenant,
                name: &name,
                scopes: &scopes,
                pool: None,
                expires_at: Some(expires_at),
                grant: Some(&id),
            };
            let (info, secret) = insert_key(tx, now, row)?;
            let grant = AccessGrant {
                id: id.clone(),
                tenant: tenant.clone(),
                operator_tenant: operator.tenant().clone(),
                operator_key: operator_key.clone(),
                key_id: info.id.clone(),
                reason: reason.clone(),
                scopes: info.scopes.clone(),
                ttl_seconds: ttl.as_secs(),
                status,
                requested_at: now,
                approved_at: None,
                expires_at,
                ended_at: None,
                ended_by: None,
            };
            tx.execute(
                &format!("INSERT INTO access_grants ({GRANT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL, ?11, NULL, NULL)"),
                params![
                    grant.id.as_str(),
                    grant.tenant.as_str(),
                    grant.operator_tenant.as_str(),
                    grant.operator_key.as_str(),
                    grant.key_id.as_str(),
                    grant.reason,
                    scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","),
                    grant.ttl_seconds,
                    status.as_str(),
                    now,
                    expires_at
                ],
            )?;
            self.audit_grant(tx, &operator.as_operator(), Action::AccessGrantRequested, &grant, None)?;
            Ok(IssuedGrant { grant, key: IssuedKey::new(info, secret) })
        })
    }

    /// Approves a pending grant on the tenant's behalf (the tenant's own admin key or admin
    /// person; never the operator, nor a grant's key). The grant's lifetime starts now.
    pub fn approve_access_grant(&self, principal: &Principal, id: &GrantId) -> Result<AccessGrant> {
        principal.require(Scope::Admin)?;
        let approver = match (principal.actor(), principal.grant()) {
            (a @ (Actor::ApiKey(_) | Actor::User(_)), None) => a.clone(),
            _ => return Err(Error::OperatorAccess("only the tenant's own admin approves an access grant")),
        };
        self.expire_access_grants()?;
        let now = self.now();
        self.write(|tx| {
            let mut g = Self::grant_tx(tx, id)?
                .filter(|g| &g.tenant == principal.tenant())
                .ok_or(Error::NotFound { kind: "access grant" })?;
            if g.status != GrantStatus::Pending {
                return Err(Error::InvalidArgument(format!("the access grant is {}", g.status.as_str())));
            }
            g.status = GrantStatus::Active;
            g.approved_at = Some(now);
            g.expires_at = now.saturating_add(millis(Duration::from_secs(g.ttl_seconds)));
            g.ended_by = None;
            tx.execute(
                "UPDATE access_grants SET status = 'active', approved_at = ?2, expires_at = ?3, ended_by = ?4 WHERE id = ?1 AND status = 'pending'",
                params![g.id.as_str(), now, g.expires_at, approver.to_string()],
            )?;
            tx.execute("UPDATE api_keys SET expires_at = ?2 WHERE id = ?1", params![g.key_id.as_str(), g.expires_at])?;
            self.audit_grant(tx, &approver, Action::AccessGrantApproved, &g, None)?;
            Ok(g)
        })
    }

    /// Ends a grant at once, by the tenant's admin or by the operator's (the grant's own key may
    /// end it too). Ending an ended grant changes nothing.
    pub fn revoke_access_grant(&self, principal: &Principal, id: &GrantId) -> Result<AccessGrant> {
        principal.require(Scope::Admin)?;
        self.expire_access_grants()?;
        let now = self.now();
        let actor = if *principal.tenant() == self.visible_grant(principal, id)?.tenant {
            principal.actor().clone()
        } else {
            principal.as_operator()
        };
        self.write(|tx| {
            let mut g = Self::grant_tx(tx, id)?.ok_or(Error::NotFound { kind: "access grant" })?;
            if !matches!(g.status, GrantStatus::Pending | GrantStatus::Active) {
                return Ok(g);
            }
            g.status = GrantStatus::Revoked;
            g.ended_at = Some(now);
            g.ended_by = Some(actor.to_string());
            tx.execute(
                "UPDATE access_grants SET status = 'revoked', ended_at = ?2, ended_by = ?3 WHERE id = ?1",
                params![g.id.as_str(), now, actor.to_string()],
            )?;
            tx.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![g.key_id.as_str(), now],
            )?;
            self.audit_grant(tx, &actor, Action::AccessGrantRevoked, &g, None)?;
            Ok(g)
        })
    }

    /// The grants a caller may see (admin scope): those on its tenant, and those its tenant (the
    /// operator's) asked for. Newest first.
    pub fn list_access_grants(&self, principal: &Principal) -> Result<Vec<AccessGrant>> {
        principal.require(Scope::Admin)?;
        self.tenant(principal.tenant())?;
        self.expire_access_grants()?;
        self.read(|c| {
            c.query_map(
                &format!(
                    "SELECT {GRANT_COLUMNS} FROM access_grants WHERE tenant_id = ?1 OR operator_tenant = ?1
                     ORDER BY requested_at DESC, id"
                ),
                [principal.tenant().as_str()],
                grant_row,
            )
        })
    }

    /// One grant the caller may see (admin scope).
    pub fn access_grant(&self, principal: &Principal, id: &GrantId) -> Result<AccessGrant> {
        principal.require(Scope::Admin)?;
        self.expire_access_grants()?;
        self.visible_grant(principal, id)
    }

    fn visible_grant(&self, principal: &Principal, id: &GrantId) -> Result<AccessGrant> {
        self.read(|c| Self::grant_tx(c, id))?
            .filter(|g| &g.tenant == principal.tenant() || &g.operator_tenant == principal.tenant())
            .ok_or(Error::NotFound { kind: "access grant" })
    }

    /// Marks every grant past its end (or its approval window) expired, revokes its key and
    /// records the expiry in both logs. Returns how many expired. Runs in the retention sweep,
    /// and before grants are listed, approved or used.
    pub fn expire_access_grants(&self) -> Result<usize> {
        let now = self.now();
        let due: Vec<GrantId> = self.read(|c| {
            c.query_map(
                "SELECT id FROM access_grants WHERE status IN ('pending', 'active') AND expires_at <= ?1",
                [now],
                |r| GrantId::new(r.get::<String>(0)?),
            )
        })?;
        if due.is_empty() {
            return Ok(0);
        }
        self.write(|tx| {
            let mut n = 0;
            for id in &due {
                let changed = tx.execute(
                    "UPDATE access_grants SET status = 'expired', ended_at = ?2, ended_by = 'system'
                     WHERE id = ?1 AND status IN ('pending', 'active') AND expires_at <= ?2",
                    params![id.as_str(), now],
                )?;
                if changed == 0 {
                    continue; // another node got there first
                }
                let Some(g) = Self::grant_tx(tx, id)? else { continue };
                tx.execute(
                    "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                    params![g.key_id.as_str(), now],
                )?;
                self.audit_grant(tx, &Actor::System, Action::AccessGrantExpired, &g, None)?;
                n += 1;
            }
            Ok(n)
        })
    }

    /// The grant a key belongs to, if it is in force now; a pending grant is refused with
    /// [`Error::OperatorAccess`], any other state with [`Error::Unauthenticated`].
    pub(crate) fn live_grant(&self, id: &GrantId) -> Result<GrantContext> {
        let g = self.read(|c| Self::grant_tx(c, id))?.ok_or(Error::Unauthenticated)?;
        match g.status {
            GrantStatus::Active if g.expires_at > self.now() => Ok(GrantContext {
                id: g.id,
                operator_key: g.operator_key,
                operator_tenant: g.operator_tenant,
                reason: g.reason,
            }),
            GrantStatus::Active => {
                self.expire_access_grants()?;
                Err(Error::Unauthenticated)
            }
            GrantStatus::Pending => Err(Error::OperatorAccess("the access grant awaits the tenant's approval")),
            GrantStatus::Revoked | GrantStatus::Expired => Err(Error::Unauthenticated),
        }
    }

    /// Records one request made under a break-glass grant (`operation`: what was asked, as a
    /// route or method name, never content) in the tenant's and the operator's audit logs, after
    /// checking the grant is still in force: a revoked or expired grant fails here, so a session
    /// that outlives its grant stops at its next call. Does nothing for other principals.
    pub fn record_grant_request(&self, principal: &Principal, operation: &str) -> Result<()> {
        let Some(ctx) = principal.grant() else { return Ok(()) };
        if operation.is_empty() || operation.len() > 200 || operation.chars().any(char::is_control) {
            return Err(Error::InvalidArgument("invalid operation name".into()));
        }
        self.live_grant(&ctx.id)?;
        let now = self.now();
        self.write(|tx| {
            let g = Self::grant_tx(tx, &ctx.id)?.ok_or(Error::Unauthenticated)?;
            if g.status != GrantStatus::Active || g.expires_at <= now {
                return Err(Error::Unauthenticated);
            }
            self.audit_grant(tx, principal.actor(), Action::AccessGrantUsed, &g, Some(operation))
        })
    }
}
