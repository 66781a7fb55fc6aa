//! The per-tenant secrets vault (hub tokens, deploy keys): values encrypted under the tenant's key
//! in the same object format as everything else; only names and timestamps are metadata.

use crate::params;
use zeroize::Zeroizing;

use crate::audit::vocabulary::Action;
use crate::auth::{Principal, Scope};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::ids::{ObjectPath, SecretName};

fn secret_path(name: &SecretName) -> Result<ObjectPath> {
    ObjectPath::new(format!("vault/{}", name.as_str()))
}

impl Core {
    /// Stores (or replaces) a secret (admin scope).
    pub fn put_secret(&self, principal: &Principal, name: &SecretName, value: &[u8]) -> Result<()> {
        principal.require(Scope::Admin)?;
        let tenant = principal.tenant();
        self.tenant(tenant)?;
        if value.len() > self.limits().max_secret_bytes {
            return Err(Error::TooLarge { what: "secret", limit: self.limits().max_secret_bytes as u64 });
        }
        let now = self.now();
        self.put_object_with(tenant, &secret_path(name)?, value, |tx| {
            tx.execute(
                "INSERT INTO secrets (tenant_id, name, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(tenant_id, name) DO UPDATE SET updated_at = excluded.updated_at",
                params![tenant.as_str(), name.as_str(), now],
            )?;
            self.audit_tx(tx, tenant, principal.actor(), Action::SecretWritten, name.as_str(), serde_json::json!({}))
        })
    }

    /// Reads a secret (admin scope, audited).
    pub fn get_secret(&self, principal: &Principal, name: &SecretName) -> Result<Zeroizing<Vec<u8>>> {
        principal.require(Scope::Admin)?;
        let tenant = principal.tenant();
        self.tenant(tenant)?;
        let value = self.get_object(tenant, &secret_path(name)?).map_err(|e| match e {
            Error::NotFound { .. } => Error::NotFound { kind: "secret" },
            other => other,
        })?;
        self.audit(tenant, principal.actor(), Action::SecretRead, name.as_str(), serde_json::json!({}))?;
        Ok(value)
    }

    /// Names of the tenant's secrets.
    pub fn list_secrets(&self, principal: &Principal) -> Result<Vec<SecretName>> {
        principal.require(Scope::Admin)?;
        self.tenant(principal.tenant())?;
        let names: Vec<String> = self.read(|c| {
            let rows = c.query_map(
                "SELECT name FROM secrets WHERE tenant_id = ?1 ORDER BY name",
                [principal.tenant().as_str()],
                |r| r.get(0),
            )?;
            Ok(rows)
        })?;
        names.into_iter().map(SecretName::new).collect()
    }

    /// Deletes a secret.
    pub fn delete_secret(&self, principal: &Principal, name: &SecretName) -> Result<()> {
        principal.require(Scope::Admin)?;
        let tenant = principal.tenant();
        self.tenant(tenant)?;
        self.delete_object_with(tenant, &secret_path(name)?, |tx| {
            tx.execute(
                "DELETE FROM secrets WHERE tenant_id = ?1 AND name = ?2",
                params![tenant.as_str(), name.as_str()],
            )?;
            self.audit_tx(tx, tenant, principal.actor(), Action::SecretDeleted, name.as_str(), serde_json::json!({}))
        })
        .map_err(|e| match e {
            Error::NotFound { .. } => Error::NotFound { kind: "secret" },
            other => other,
        })
    }
}
