//! Account close (seed 000: "when you close an account we delete datasets, models, and logs
//! within 30 days; billing records are retained for the period required by tax law").
//!
//! [`Core::close_tenant`] ends access at once (every API key and break-glass grant revoked, queued
//! jobs cancelled, running ones asked to stop) and schedules the purge at the end of a window of
//! at most 30 days (30 by default), within which [`Core::reopen_tenant`] can take it back. The
//! retention sweep then closes the tenant for good as [`Core::delete_tenant`] does: every key
//! version destroyed (crypto-shredding every copy, backups included), datasets, models, corpora,
//! secrets, jobs and usage logs deleted. The credit ledger stays for its 7 years; the audit log
//! records the request, any reopening and the closure. `immediate` does all of it at once.

use std::time::Duration;

use serde::Serialize;

use crate::audit::vocabulary::{Action, Actor};
use crate::clock::{Millis, millis};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::ids::TenantId;
use crate::params;
use crate::store::OptionalExt as _;

/// The longest (and default) time between closing an account and purging its data.
pub const CLOSE_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// How to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseOptions {
    /// Time until the purge: 1 s to [`CLOSE_WINDOW`].
    pub window: Duration,
    /// Crypto-shred and purge now; no reopening.
    pub immediate: bool,
}

impl Default for CloseOptions {
    fn default() -> Self {
        Self { window: CLOSE_WINDOW, immediate: false }
    }
}

/// A closure as it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Closure {
    /// The tenant.
    pub tenant: TenantId,
    /// When the close was asked for, Unix ms.
    pub requested_at: Millis,
    /// When the data is (or was) purged, Unix ms.
    pub purge_at: Millis,
    /// Whether the purge has happened.
    pub purged: bool,
}

impl Core {
    /// Closes a tenant's account (see the module): access ends now, the data goes at the end of
    /// the window, or now with `immediate`. `actor` is who asked (the tenant's admin key, or a
    /// platform admin's).
    pub fn close_tenant(&self, actor: &Actor, id: &TenantId, options: CloseOptions) -> Result<Closure> {
        self.tenant(id)?;
        let now = self.now();
        if options.immediate {
            self.audit(id, actor, Action::TenantCloseRequested, id.as_str(), serde_json::json!({"immediate": true}))?;
            self.delete_tenant(id)?;
            return Ok(Closure { tenant: id.clone(), requested_at: now, purge_at: now, purged: true });
        }
        if options.window.is_zero() || options.window > CLOSE_WINDOW {
            return Err(Error::InvalidArgument("the close window is 1 second to 30 days".into()));
        }
        let purge_at = now.saturating_add(millis(options.window));
        self.write(|tx| {
            let inserted = tx.execute(
                "INSERT INTO tenant_closures (tenant_id, requested_at, purge_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant_id) DO NOTHING",
                params![id.as_str(), now, purge_at],
            )?;
            if inserted == 0 {
                return Err(Error::AlreadyExists { kind: "account closure" });
            }
            let keys = tx.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE tenant_id = ?1 AND revoked_at IS NULL",
                params![id.as_str(), now],
            )?;
            tx.execute(
                "UPDATE access_grants SET status = 'revoked', ended_at = ?2, ended_by = 'system'
                 WHERE tenant_id = ?1 AND status IN ('pending', 'active')",
                params![id.as_str(), now],
            )?;
            let cancelled = tx.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?2 WHERE tenant_id = ?1 AND state = 'queued'",
                params![id.as_str(), now],
            )?;
            tx.execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE tenant_id = ?1 AND state = 'running'",
                [id.as_str()],
            )?;
            let detail = serde_json::json!({"purge_at": purge_at, "keys_revoked": keys, "jobs_cancelled": cancelled});
            self.audit_tx(tx, id, actor, Action::TenantCloseRequested, id.as_str(), detail)
        })?;
        Ok(Closure { tenant: id.clone(), requested_at: now, purge_at, purged: false })
    }

    /// Takes back a close within its window. The keys stay revoked: the tenant's new first key
    /// comes from a platform admin ([`Core::issue_first_key`]) as for a new tenant.
    pub fn reopen_tenant(&self, actor: &Actor, id: &TenantId) -> Result<()> {
        self.tenant(id)?;
        self.write(|tx| {
            let removed = tx.execute("DELETE FROM tenant_closures WHERE tenant_id = ?1", [id.as_str()])?;
            if removed == 0 {
                return Err(Error::NotFound { kind: "account closure" });
            }
            self.audit_tx(tx, id, actor, Action::TenantReopened, id.as_str(), serde_json::json!({}))
        })
    }

    /// The pending closure of a tenant, if any.
    pub fn closure(&self, id: &TenantId) -> Result<Option<Closure>> {
        let row: Option<(Millis, Millis)> = self.read(|c| {
            c.query_row("SELECT requested_at, purge_at FROM tenant_closures WHERE tenant_id = ?1", [id.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })?;
        Ok(row.map(|(requested_at, purge_at)| Closure { tenant: id.clone(), requested_at, purge_at, purged: false }))
    }

    /// Whether a tenant is closing (its keys do not authenticate, even new ones).
    pub(crate) fn is_closing(&self, id: &TenantId) -> Result<bool> {
        Ok(self.closure(id)?.is_some())
    }

    /// Purges every tenant whose close window has ended (the retention sweep runs it). Returns how
    /// many were purged.
    pub fn purge_closed_tenants(&self) -> Result<usize> {
        let now = self.now();
        let due: Vec<String> = self
            .read(|c| c.query_map("SELECT tenant_id FROM tenant_closures WHERE purge_at <= ?1", [now], |r| r.get(0)))?;
        let mut purged = 0;
        for t in due {
            let id = TenantId::new(t)?;
            match self.delete_tenant(&id) {
                Ok(()) => purged += 1,
                // Gone already (another node's sweep): its closure row went with it.
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(purged)
    }
}
