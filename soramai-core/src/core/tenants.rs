//! Tenants: creation under an operator- or customer-held root, tiers and their store placement,
//! unlocking, and closure (crypto-shredding every key version).

use std::sync::Arc;

use crate::params;
use crate::store::{OptionalExt as _, Row};
use serde::Serialize;

use crate::audit::vocabulary::{Action, Actor};
use crate::clock::Millis;
use crate::crypto::keys::{KeyProvider, TenantKey};
use crate::error::{Error, Result};
use crate::ids::TenantId;
use crate::store::BlobKey;
use crate::tier::Tier;

use super::Core;

/// A tenant's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    /// In service.
    Active,
    /// Closed: keys destroyed, data purged.
    Deleted,
}

/// Who holds the root key that wraps a tenant's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyCustody {
    /// The platform's root key.
    Operator,
    /// A key only the customer holds (Enterprise); the operator cannot decrypt without it.
    Customer,
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    /// The id.
    pub id: TenantId,
    /// The plan.
    pub tier: Tier,
    /// Active or deleted.
    pub status: TenantStatus,
    /// Who holds the wrapping root key.
    pub key_custody: KeyCustody,
    /// Whether its blobs live on the shared store or a dedicated one.
    pub store: StorePlacement,
    /// Creation time, Unix milliseconds.
    pub created_at: Millis,
}

/// Where a tenant's blobs live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorePlacement {
    /// The store shared by tenants (each tenant's data under its own key).
    Shared,
    /// A store of the tenant's own.
    Dedicated,
}

type TenantRow = (String, String, String, String, Millis, String);

fn tenant_from_row(r: &Row) -> Result<TenantRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

fn parse_tenant(row: TenantRow) -> Result<Tenant> {
    let (id, tier, status, custody, created_at, store) = row;
    Ok(Tenant {
        id: TenantId::new(id)?,
        tier: tier.parse()?,
        status: if status == "active" { TenantStatus::Active } else { TenantStatus::Deleted },
        key_custody: if custody == "customer" { KeyCustody::Customer } else { KeyCustody::Operator },
        store: if store == "dedicated" { StorePlacement::Dedicated } else { StorePlacement::Shared },
        created_at,
    })
}

impl Core {
    /// Creates a tenant whose keys the operator's root wraps. Enterprise tenants need a
    /// customer-held key: use [`Core::create_tenant_with_customer_key`].
    pub fn create_tenant(&self, id: &TenantId, tier: Tier) -> Result<Tenant> {
        self.create_tenant_by(&Actor::Operator, id, tier)
    }

    /// [`Core::create_tenant`], recorded in the tenant's audit log as done by `actor` (a
    /// platform admin's key, [`Principal::as_operator`](crate::Principal::as_operator)).
    pub fn create_tenant_by(&self, actor: &Actor, id: &TenantId, tier: Tier) -> Result<Tenant> {
        if tier.policy().customer_held_root_key {
            return Err(Error::NotAllowed { tier, what: "creating the tenant without a customer-held root key" });
        }
        self.insert_tenant(actor, id, tier, KeyCustody::Operator, self.keyring.root().clone())
    }

    /// Creates a tenant whose keys are wrapped by a key the customer holds. The operator stores only
    /// the wrapped keys; after a restart the tenant's data stays unreadable until
    /// [`Core::unlock_tenant`] is given the customer's key again.
    pub fn create_tenant_with_customer_key(
        &self,
        id: &TenantId,
        tier: Tier,
        customer_root: Arc<dyn KeyProvider>,
    ) -> Result<Tenant> {
        let t = self.insert_tenant(&Actor::Operator, id, tier, KeyCustody::Customer, customer_root.clone())?;
        self.keyring.set_customer_root(id, customer_root);
        Ok(t)
    }

    fn insert_tenant(
        &self,
        actor: &Actor,
        id: &TenantId,
        tier: Tier,
        custody: KeyCustody,
        root: Arc<dyn KeyProvider>,
    ) -> Result<Tenant> {
        let now = self.now();
        let key = TenantKey::generate(1);
        let wrapped = key.wrap(root.as_ref(), id)?;
        let dedicated = self.objects.dedicated_store_for(id, tier)?;
        let placement = if dedicated.is_some() { "dedicated" } else { "shared" };
        self.write(|tx| {
            let exists: bool = tx
                .query_row("SELECT 1 FROM tenants WHERE id = ?1", [id.as_str()], |_| Ok(true))
                .optional()?
                .unwrap_or(false);
            if exists {
                return Err(Error::AlreadyExists { kind: "tenant" });
            }
            let custody_s = if custody == KeyCustody::Customer { "customer" } else { "operator" };
            tx.execute(
                "INSERT INTO tenants (id, tier, status, key_custody, created_at, store) VALUES (?1, ?2, 'active', ?3, ?4, ?5)",
                params![id.as_str(), tier.as_str(), custody_s, now, placement],
            )?;
            tx.execute(
                "INSERT INTO tenant_keys (tenant_id, version, state, wrapped, root_fingerprint, created_at)
                 VALUES (?1, 1, 'primary', ?2, ?3, ?4)",
                params![id.as_str(), wrapped, root.fingerprint(), now],
            )?;
            self.audit_tx(
                tx,
                id,
                actor,
                Action::TenantCreated,
                id.as_str(),
                serde_json::json!({"tier": tier.as_str(), "key_custody": custody_s, "store": placement}),
            )
        })?;
        self.keyring.cache(id, key);
        let store = if dedicated.is_some() { StorePlacement::Dedicated } else { StorePlacement::Shared };
        self.objects.routes().assign(id, dedicated);
        Ok(Tenant { id: id.clone(), tier, status: TenantStatus::Active, key_custody: custody, store, created_at: now })
    }

    /// Supplies the customer-held root key of an Enterprise tenant (checked against the stored
    /// wrapped keys) so its data can be read and written until the process exits.
    pub fn unlock_tenant(&self, id: &TenantId, customer_root: Arc<dyn KeyProvider>) -> Result<()> {
        let t = self.tenant(id)?;
        if t.key_custody != KeyCustody::Customer {
            return Err(Error::InvalidArgument("the tenant's keys are not customer-held".into()));
        }
        let version = self.primary_version(id)?;
        let wrapped = self.wrapped_key(id, version)?;
        let key =
            TenantKey::unwrap(customer_root.as_ref(), id, version, &wrapped).map_err(|_| Error::Unauthenticated)?;
        self.keyring.cache(id, key);
        self.keyring.set_customer_root(id, customer_root);
        self.audit(id, &Actor::Operator, Action::TenantUnlocked, id.as_str(), serde_json::json!({}))
    }

    /// An active tenant. A deleted or unknown tenant is [`Error::NotFound`].
    pub fn tenant(&self, id: &TenantId) -> Result<Tenant> {
        let row = self.read(|c| {
            c.query_row(
                "SELECT id, tier, status, key_custody, created_at, store FROM tenants WHERE id = ?1 AND status = 'active'",
                [id.as_str()],
                tenant_from_row,
            )
            .optional()
        })?;
        parse_tenant(row.ok_or(Error::NotFound { kind: "tenant" })?)
    }

    /// All active tenants.
    pub fn tenants(&self) -> Result<Vec<Tenant>> {
        let rows = self.read(|c| {
            let rows = c.query_map("SELECT id, tier, status, key_custody, created_at, store FROM tenants WHERE status = 'active' ORDER BY id", (), tenant_from_row)?;
            Ok(rows)
        })?;
        rows.into_iter().map(parse_tenant).collect()
    }

    /// Changes a tenant's tier (audited). Moving to Enterprise needs customer-held keys.
    pub fn set_tier(&self, id: &TenantId, tier: Tier) -> Result<Tenant> {
        self.set_tier_by(&Actor::Operator, id, tier)
    }

    /// [`Core::set_tier`], recorded in the tenant's audit log as done by `actor`.
    pub fn set_tier_by(&self, actor: &Actor, id: &TenantId, tier: Tier) -> Result<Tenant> {
        let t = self.tenant(id)?;
        if tier.policy().customer_held_root_key && t.key_custody != KeyCustody::Customer {
            return Err(Error::NotAllowed { tier, what: "moving a tenant with operator-held keys to Enterprise" });
        }
        // A change of placement moves the tenant's ciphertext to its new store first (copies, no
        // decryption), then switches in one transaction, then removes the old copies.
        let target = self.objects.dedicated_store_for(id, tier)?;
        let new_placement = if target.is_some() { StorePlacement::Dedicated } else { StorePlacement::Shared };
        let from = self.objects.routes().store_for(id);
        let moved = if new_placement != t.store {
            let to = target.clone().unwrap_or_else(|| self.objects.routes().shared());
            let keys = from.list(&format!("t/{}/", id.as_str()))?;
            for k in &keys {
                to.put(k, &from.get(k)?)?;
            }
            Some(keys)
        } else {
            None
        };
        let placement = if new_placement == StorePlacement::Dedicated { "dedicated" } else { "shared" };
        self.write(|tx| {
            tx.execute(
                "UPDATE tenants SET tier = ?2, store = ?3 WHERE id = ?1",
                params![id.as_str(), tier.as_str(), placement],
            )?;
            self.audit_tx(
                tx,
                id,
                actor,
                Action::TierChanged,
                id.as_str(),
                serde_json::json!({"from": t.tier.as_str(), "to": tier.as_str(), "store": placement}),
            )
        })?;
        if let Some(keys) = moved {
            self.objects.routes().assign(id, target);
            for k in &keys {
                from.delete(k)?;
            }
        }
        Ok(Tenant { tier, store: new_placement, ..t })
    }

    /// Closes a tenant: destroys every version of its keys (crypto-shredding all its data wherever
    /// copies of the ciphertext live), revokes its API keys, cancels its jobs, deletes its metadata
    /// and usage logs, and purges its blobs. Billing records stay (7 years); the audit log keeps a
    /// record of the closure. Irreversible.
    pub fn delete_tenant(&self, id: &TenantId) -> Result<()> {
        self.tenant(id)?;
        let now = self.now();
        let blobs: Vec<String> = self.write(|tx| {
            let blobs: Vec<String> =
                { tx.query_map("SELECT blob FROM objects WHERE tenant_id = ?1", [id.as_str()], |r| r.get(0))? };
            tx.execute("DELETE FROM tenant_keys WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM scope_keys WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM objects WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM datasets WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM secrets WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM fine_tuned_models WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM custom_models WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM members WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM invitations WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM sso_configs WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM sso_logins WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM access_grants WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM tenant_closures WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE tenant_id = ?1 AND revoked_at IS NULL",
                params![id.as_str(), now],
            )?;
            tx.execute(
                "DELETE FROM job_events WHERE job_id IN (SELECT id FROM jobs WHERE tenant_id = ?1)",
                [id.as_str()],
            )?;
            tx.execute("DELETE FROM jobs WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM usage_events WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute(
                "UPDATE tenants SET status = 'deleted', deleted_at = ?2 WHERE id = ?1",
                params![id.as_str(), now],
            )?;
            self.audit_tx(
                tx,
                id,
                &Actor::Operator,
                Action::TenantDeleted,
                id.as_str(),
                serde_json::json!({"objects_purged": blobs.len()}),
            )?;
            Ok(blobs)
        })?;
        self.keyring.forget_tenant(id);
        self.checkpoint()?;
        for b in blobs {
            if let Ok(k) = BlobKey::new(b) {
                self.objects.blobs().delete(&k)?;
            }
        }
        // Anything else under the tenant's prefix (orphans of interrupted writes) goes too.
        for k in self.objects.blobs().list(&format!("t/{}/", id.as_str()))? {
            self.objects.blobs().delete(&k)?;
        }
        // And its keys leave every backup target, so no snapshot opens its data again.
        self.propagate_to_backups(id, true)
    }
}
