//! Short customer strings kept in metadata rows, sealed under the tenant's key: file names and
//! API key names (often customer data: "jones-medical-notes.jsonl"), and the access log's query
//! text. Each is the object envelope (the same AEAD as every object) over a fresh path, stored as
//! `<prefix><nonce>:<hex>`, so a shredded tenant leaves no readable name in SQLite, its WAL or
//! PostgreSQL. Names never need equality lookups (rows are found by id), so no keyed hash is
//! stored. Rows written before sealing are sealed when a node starts.

use crate::core::Core;
use crate::crypto::envelope;
use crate::error::{Error, Result};
use crate::ids::{ObjectPath, TenantId, random_hex};
use crate::params;

/// The prefix of a sealed name.
pub(crate) const SEALED_NAME: &str = "sealed:name:v1:";
const NAME_ROOT: &str = "names";

/// What a name shows while its tenant's customer-held key is not loaded.
pub const NAME_LOCKED: &str = "(sealed: the tenant's key is not loaded)";

impl Core {
    /// Seals `text` under the tenant's primary key as `<prefix><nonce>:<hex>`, bound to the path
    /// `<root>/<nonce>`.
    pub(crate) fn seal_text(&self, tenant: &TenantId, prefix: &str, root: &str, text: &str) -> Result<String> {
        let nonce = random_hex(12);
        let path = ObjectPath::new(format!("{root}/{nonce}"))?;
        let key = self.primary_key(tenant)?;
        let sealed = envelope::seal(&key, tenant, &path, text.as_bytes())?;
        Ok(format!("{prefix}{nonce}:{}", hex::encode(sealed)))
    }

    /// Opens what [`Core::seal_text`] stored.
    pub(crate) fn open_text(&self, tenant: &TenantId, prefix: &str, root: &str, stored: &str) -> Result<String> {
        let rest = stored.strip_prefix(prefix).ok_or(Error::Integrity)?;
        let (nonce, body) = rest.split_once(':').ok_or(Error::Integrity)?;
        let path = ObjectPath::new(format!("{root}/{nonce}"))?;
        let sealed = hex::decode(body).map_err(|_| Error::Integrity)?;
        let key = self.tenant_key(tenant, envelope::key_version(&sealed)?)?;
        let plain = envelope::open(&key, tenant, &path, &sealed)?;
        String::from_utf8(plain.to_vec()).map_err(|_| Error::Integrity)
    }

    /// A name as stored in a row.
    pub(crate) fn seal_name(&self, tenant: &TenantId, name: &str) -> Result<String> {
        self.seal_text(tenant, SEALED_NAME, NAME_ROOT, name)
    }

    /// A stored name as shown: sealed ones opened (a placeholder while the tenant's customer-held
    /// key is not loaded), one not sealed yet as it is.
    pub(crate) fn open_name(&self, tenant: &TenantId, stored: &str) -> Result<String> {
        if !stored.starts_with(SEALED_NAME) {
            return Ok(stored.to_owned());
        }
        match self.open_text(tenant, SEALED_NAME, NAME_ROOT, stored) {
            Err(Error::TenantLocked) => Ok(NAME_LOCKED.to_owned()),
            other => other,
        }
    }

    /// Re-seals every sealed string of the tenant (file and key names, access-log details) that
    /// is under an older key version with the primary one, so a rotation can retire the old
    /// version; returns how many.
    pub(crate) fn reseal_texts(&self, tenant: &TenantId) -> Result<usize> {
        let primary = self.primary_key(tenant)?.version();
        let mut resealed = 0;
        for (table, column, prefix, root) in [
            ("datasets", "name", SEALED_NAME, NAME_ROOT),
            ("api_keys", "name", SEALED_NAME, NAME_ROOT),
            ("access_log", "detail", crate::metering::SEALED_DETAIL, "access-log"),
        ] {
            let rows: Vec<(String, String)> = self.read(|c| {
                c.query_map(
                    &format!(
                        "SELECT CAST(id AS TEXT), {column} FROM {table} WHERE tenant_id = ?1 AND {column} IS NOT NULL"
                    ),
                    params![tenant.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })?;
            for (id, stored) in rows {
                let Some(version) = sealed_version(prefix, &stored) else { continue };
                if version == primary {
                    continue;
                }
                let fresh = self.seal_text(tenant, prefix, root, &self.open_text(tenant, prefix, root, &stored)?)?;
                self.write(|tx| {
                    tx.execute(
                        &format!("UPDATE {table} SET {column} = ?2 WHERE CAST(id AS TEXT) = ?1 AND {column} = ?3"),
                        params![id, fresh, stored],
                    )?;
                    Ok(())
                })?;
                resealed += 1;
            }
        }
        Ok(resealed)
    }

    /// Seals the names of rows written before names were sealed (tenants whose customer-held key
    /// is not loaded wait for a later start); returns how many.
    pub(crate) fn seal_legacy_names(&self) -> Result<usize> {
        let mut sealed = 0;
        for table in ["datasets", "api_keys"] {
            let rows: Vec<(String, String, String)> = self.read(|c| {
                c.query_map(
                    &format!(
                        "SELECT x.id, x.tenant_id, x.name FROM {table} x JOIN tenants t ON t.id = x.tenant_id
                         WHERE t.status = 'active' AND substr(x.name, 1, {}) != ?1",
                        SEALED_NAME.len()
                    ),
                    params![SEALED_NAME],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
            })?;
            for (id, tenant, name) in rows {
                let tenant = TenantId::new(tenant)?;
                let stored = match self.seal_name(&tenant, &name) {
                    Ok(s) => s,
                    Err(Error::TenantLocked) => continue,
                    Err(e) => return Err(e),
                };
                self.write(|tx| {
                    tx.execute(
                        &format!("UPDATE {table} SET name = ?2 WHERE id = ?1 AND name = ?3"),
                        params![id, stored, name],
                    )?;
                    Ok(())
                })?;
                sealed += 1;
            }
        }
        if sealed > 0 {
            // The plaintext names leave the database files, not only the live rows.
            self.checkpoint()?;
        }
        Ok(sealed)
    }
}

/// The key version a sealed string is under, if it is one.
fn sealed_version(prefix: &str, stored: &str) -> Option<u32> {
    let (_, body) = stored.strip_prefix(prefix)?.split_once(':')?;
    let head = hex::decode(body.get(..2 * envelope::PREFIX_LEN)?).ok()?;
    envelope::key_version(&head).ok()
}
