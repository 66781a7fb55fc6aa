//! Tenant keys: the in-memory [`Keyring`] of root keys and unwrapped tenant keys, and the key
//! lifecycle over the metadata store (primary version, rotation, rewrap, retirement).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::params;
use crate::store::OptionalExt as _;

use crate::audit::vocabulary::{Action, Actor};
use crate::crypto::keys::{KeyProvider, TenantKey};
use crate::error::{Error, Result};
use crate::ids::{ObjectPath, TenantId};

use super::Core;

/// The keys a core holds in memory: the operator's root, the customer-held roots supplied since
/// start, and unwrapped tenant keys by version. Nothing here is persisted; the wrapped forms live in
/// the metadata store.
pub(super) struct Keyring {
    root: Arc<dyn KeyProvider>,
    customer_roots: RwLock<HashMap<TenantId, Arc<dyn KeyProvider>>>,
    cache: RwLock<HashMap<(TenantId, u32), TenantKey>>,
}

impl Keyring {
    pub(super) fn new(root: Arc<dyn KeyProvider>) -> Self {
        Self { root, customer_roots: RwLock::new(HashMap::new()), cache: RwLock::new(HashMap::new()) }
    }

    /// The operator's root key.
    pub(super) fn root(&self) -> &Arc<dyn KeyProvider> {
        &self.root
    }

    /// A tenant's customer-held root, if it was supplied since start.
    pub(super) fn customer_root(&self, tenant: &TenantId) -> Option<Arc<dyn KeyProvider>> {
        self.customer_roots.read().unwrap_or_else(|e| e.into_inner()).get(tenant).cloned()
    }

    pub(super) fn set_customer_root(&self, tenant: &TenantId, root: Arc<dyn KeyProvider>) {
        self.customer_roots.write().unwrap_or_else(|e| e.into_inner()).insert(tenant.clone(), root);
    }

    pub(super) fn cached(&self, tenant: &TenantId, version: u32) -> Option<TenantKey> {
        self.cache.read().unwrap_or_else(|e| e.into_inner()).get(&(tenant.clone(), version)).cloned()
    }

    pub(super) fn cache(&self, tenant: &TenantId, key: TenantKey) {
        self.cache.write().unwrap_or_else(|e| e.into_inner()).insert((tenant.clone(), key.version()), key);
    }

    /// Drops the given versions of a tenant's key from memory.
    pub(super) fn forget_versions(&self, tenant: &TenantId, versions: &[u32]) {
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        for v in versions {
            cache.remove(&(tenant.clone(), *v));
        }
    }

    /// Drops everything held for a tenant: its unwrapped keys and its customer root.
    pub(super) fn forget_tenant(&self, tenant: &TenantId) {
        self.cache.write().unwrap_or_else(|e| e.into_inner()).retain(|(t, _), _| t != tenant);
        self.customer_roots.write().unwrap_or_else(|e| e.into_inner()).remove(tenant);
    }
}

impl Core {
    pub(super) fn primary_version(&self, tenant: &TenantId) -> Result<u32> {
        self.read(|c| {
            c.query_row(
                "SELECT k.version FROM tenant_keys k JOIN tenants t ON t.id = k.tenant_id
                     WHERE k.tenant_id = ?1 AND k.state = 'primary' AND t.status = 'active'",
                [tenant.as_str()],
                |r| r.get(0),
            )
            .optional()
        })?
        .ok_or(Error::NotFound { kind: "tenant" })
    }

    pub(super) fn wrapped_key(&self, tenant: &TenantId, version: u32) -> Result<Vec<u8>> {
        self.read(|c| {
            c.query_row(
                "SELECT wrapped FROM tenant_keys WHERE tenant_id = ?1 AND version = ?2 AND wrapped IS NOT NULL",
                params![tenant.as_str(), version],
                |r| r.get::<Vec<u8>>(0),
            )
            .optional()
        })?
        // A destroyed (retired or shredded) version: its data can no longer be decrypted.
        .ok_or(Error::Integrity)
    }

    fn root_for(&self, tenant: &TenantId) -> Result<Arc<dyn KeyProvider>> {
        let custody: Option<String> = self.read(|c| {
            c.query_row("SELECT key_custody FROM tenants WHERE id = ?1 AND status = 'active'", [tenant.as_str()], |r| {
                r.get(0)
            })
            .optional()
        })?;
        match custody.as_deref() {
            None => Err(Error::NotFound { kind: "tenant" }),
            Some("customer") => self.keyring.customer_root(tenant).ok_or(Error::TenantLocked),
            Some(_) => Ok(self.keyring.root().clone()),
        }
    }

    /// Version `version` of the tenant's key.
    pub(crate) fn tenant_key(&self, tenant: &TenantId, version: u32) -> Result<TenantKey> {
        if let Some(k) = self.keyring.cached(tenant, version) {
            return Ok(k);
        }
        let root = self.root_for(tenant)?;
        let wrapped = self.wrapped_key(tenant, version)?;
        let key = TenantKey::unwrap(root.as_ref(), tenant, version, &wrapped)?;
        self.keyring.cache(tenant, key.clone());
        Ok(key)
    }

    pub(crate) fn primary_key(&self, tenant: &TenantId) -> Result<TenantKey> {
        let v = self.primary_version(tenant)?;
        self.tenant_key(tenant, v)
    }

    /// Makes a new key version primary for new writes (Vault-style rotation). Existing objects stay
    /// readable under their version until [`Core::rewrap_tenant_objects`] rewrites them.
    pub fn rotate_tenant_key(&self, tenant: &TenantId) -> Result<u32> {
        let root = self.root_for(tenant)?;
        let now = self.now();
        // Scope keys are rewrapped under the new version (small keys, not data).
        let scopes: Vec<(String, Vec<u8>, u32)> = self.read(|c| {
            let rows = c.query_map(
                "SELECT scope, wrapped, tenant_key_version FROM scope_keys WHERE tenant_id = ?1",
                [tenant.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            Ok(rows)
        })?;
        let mut scope_keys = Vec::with_capacity(scopes.len());
        for (scope, wrapped, version) in scopes {
            let old = self.tenant_key(tenant, version)?;
            scope_keys.push((scope.clone(), old.unwrap_scope_key(tenant, &scope, &wrapped)?));
        }
        let version = self.write(|tx| {
            let max: u32 =
                tx.query_row("SELECT MAX(version) FROM tenant_keys WHERE tenant_id = ?1", [tenant.as_str()], |r| {
                    r.get(0)
                })?;
            let key = TenantKey::generate(max + 1);
            let wrapped = key.wrap(root.as_ref(), tenant)?;
            tx.execute(
                "UPDATE tenant_keys SET state = 'active' WHERE tenant_id = ?1 AND state = 'primary'",
                [tenant.as_str()],
            )?;
            tx.execute(
                "INSERT INTO tenant_keys (tenant_id, version, state, wrapped, root_fingerprint, created_at)
                 VALUES (?1, ?2, 'primary', ?3, ?4, ?5)",
                params![tenant.as_str(), key.version(), wrapped, root.fingerprint(), now],
            )?;
            for (scope, scope_key) in &scope_keys {
                tx.execute(
                    "UPDATE scope_keys SET wrapped = ?3, tenant_key_version = ?4 WHERE tenant_id = ?1 AND scope = ?2",
                    params![tenant.as_str(), scope, key.wrap_scope_key(scope_key, tenant, scope)?, key.version()],
                )?;
            }
            self.audit_tx(
                tx,
                tenant,
                &Actor::Operator,
                Action::TenantKeyRotated,
                tenant.as_str(),
                serde_json::json!({"version": key.version(), "scopes_rewrapped": scope_keys.len()}),
            )?;
            self.keyring.cache(tenant, key.clone());
            Ok(key.version())
        })?;
        Ok(version)
    }

    /// Rewrites every object sealed under an older key version with the primary one (the rewrap
    /// job of a rotation). Returns how many objects were rewritten.
    pub fn rewrap_tenant_objects(&self, tenant: &TenantId) -> Result<usize> {
        let primary = self.primary_version(tenant)?;
        let stale: Vec<String> = self.read(|c| {
            let rows = c.query_map(
                "SELECT path FROM objects WHERE tenant_id = ?1 AND key_version != ?2 AND scope = ''",
                params![tenant.as_str(), primary],
                |r| r.get(0),
            )?;
            Ok(rows)
        })?;
        for path in &stale {
            let path = ObjectPath::new(path.clone())?;
            let data = self.get_object(tenant, &path)?;
            self.put_object_with(tenant, &path, &data, |_| Ok(()))?;
        }
        let texts = self.reseal_texts(tenant)?;
        self.audit(
            tenant,
            &Actor::System,
            Action::TenantKeysRewrapped,
            tenant.as_str(),
            serde_json::json!({"objects": stale.len(), "sealed_texts": texts, "version": primary}),
        )?;
        Ok(stale.len())
    }

    /// Destroys every non-primary key version no object uses any more. Returns the versions retired.
    pub fn retire_tenant_keys(&self, tenant: &TenantId) -> Result<Vec<u32>> {
        // Names and access-log details sealed under an old version move to the primary first.
        self.reseal_texts(tenant)?;
        let retired = self.write(|tx| {
            let versions: Vec<u32> = {
                tx.query_map("SELECT version FROM tenant_keys k WHERE tenant_id = ?1 AND state = 'active'
                     AND NOT EXISTS (SELECT 1 FROM objects o WHERE o.tenant_id = k.tenant_id AND o.key_version = k.version)
                     AND NOT EXISTS (SELECT 1 FROM scope_keys s WHERE s.tenant_id = k.tenant_id AND s.tenant_key_version = k.version)", [tenant.as_str()], |r| r.get(0))?
            };
            for v in &versions {
                tx.execute(
                    "UPDATE tenant_keys SET state = 'retired', wrapped = NULL WHERE tenant_id = ?1 AND version = ?2",
                    params![tenant.as_str(), v],
                )?;
            }
            if !versions.is_empty() {
                self.audit_tx(tx, tenant, &Actor::System, Action::TenantKeysRetired, tenant.as_str(), serde_json::json!({"versions": versions}))?;
            }
            Ok(versions)
        })?;
        self.keyring.forget_versions(tenant, &retired);
        self.checkpoint()?;
        Ok(retired)
    }
}
