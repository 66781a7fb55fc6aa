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
        for (table, column, prefix, root) in SEALED_COLUMNS {
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
                if sealed_version(prefix, &stored).is_none_or(|v| v == primary) {
                    continue;
                }
                let fresh = self.seal_text(tenant, prefix, root, &self.open_text(tenant, prefix, root, &stored)?)?;
                self.swap_text(table, column, &id, &stored, &fresh)?;
                resealed += 1;
            }
        }
        Ok(resealed)
    }

    /// Seals the names of rows written before names were sealed (tenants whose customer-held key
    /// is not loaded wait for a later start); returns how many.
    pub(crate) fn seal_legacy_names(&self) -> Result<usize> {
        let mut sealed = 0;
        for (table, column, _, _) in SEALED_COLUMNS.into_iter().filter(|c| c.2 == SEALED_NAME) {
            let rows: Vec<(String, String, String)> = self.read(|c| {
                c.query_map(
                    &format!(
                        "SELECT CAST(x.id AS TEXT), x.tenant_id, x.{column} FROM {table} x JOIN tenants t ON t.id = x.tenant_id
                         WHERE t.status = 'active' AND substr(x.{column}, 1, {}) != ?1",
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
                self.swap_text(table, column, &id, &name, &stored)?;
                sealed += 1;
            }
        }
        if sealed > 0 {
            // The plaintext names leave the database files, not only the live rows.
            self.checkpoint()?;
        }
        Ok(sealed)
    }

    /// Replaces one row's stored string, only while it still holds `old` (a concurrent change
    /// wins).
    fn swap_text(&self, table: &str, column: &str, id: &str, old: &str, new: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                &format!("UPDATE {table} SET {column} = ?2 WHERE CAST(id AS TEXT) = ?1 AND {column} = ?3"),
                params![id, new, old],
            )?;
            Ok(())
        })
    }
}

/// Every column that holds sealed strings: table, column, prefix, path root.
const SEALED_COLUMNS: [(&str, &str, &str, &str); 3] = [
    ("datasets", "name", SEALED_NAME, NAME_ROOT),
    ("api_keys", "name", SEALED_NAME, NAME_ROOT),
    ("access_log", "detail", crate::metering::SEALED_DETAIL, "access-log"),
];

/// The key version a sealed string is under, if it is one.
fn sealed_version(prefix: &str, stored: &str) -> Option<u32> {
    let (_, body) = stored.strip_prefix(prefix)?.split_once(':')?;
    let head = hex::decode(body.get(..2 * envelope::PREFIX_LEN)?).ok()?;
    envelope::key_version(&head).ok()
}
