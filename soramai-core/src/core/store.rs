//! The metadata store as the core uses it: transactions, the clock, and the audit chain, appended
//! in the same transaction as the change it records.

use std::sync::Arc;

use crate::params;
use crate::store::{Db, OptionalExt as _};
use zeroize::Zeroizing;

use crate::audit::chain::{self, Entry};
use crate::audit::vocabulary::{Action, Actor, AuditKey};
use crate::clock::{Clock, Millis};
use crate::crypto::keys::{KEY_LEN, KeyProvider, random_bytes};
use crate::error::{Error, Result};
use crate::ids::TenantId;
use crate::store::MetaStore;

const AUDIT_KEY_AAD: &[u8] = b"soramai system key\0audit";

/// The metadata store, the clock, and the key of the audit chain.
pub(super) struct Store {
    meta: MetaStore,
    audit_key: AuditKey,
    clock: Arc<dyn Clock>,
}

impl Store {
    /// Wraps `meta`, unwrapping (creating on first use) the audit key under `root`.
    pub(super) fn open(meta: MetaStore, root: &dyn KeyProvider, clock: Arc<dyn Clock>) -> Result<Self> {
        let audit_key = system_key(&meta, root)?;
        Ok(Self { meta, audit_key, clock })
    }

    pub(super) fn meta(&self) -> &MetaStore {
        &self.meta
    }

    pub(super) fn now(&self) -> Millis {
        self.clock.now()
    }

    pub(super) fn audit_key(&self) -> &AuditKey {
        &self.audit_key
    }

    /// Reports stored data that failed its integrity check: an operator log line (ids only: the
    /// tenant and the blob, never a name) and a record in the tenant's audit log naming the
    /// object. Reporting is best effort: a failure to record is itself logged, and the caller's
    /// integrity error stands either way.
    pub(super) fn report_integrity(&self, tenant: &TenantId, object: &str, blob: &str) {
        tracing::error!(
            target: "soramai::integrity",
            error_kind = "integrity_error",
            tenant = %tenant.as_str(),
            blob = %blob,
            "stored data failed its integrity check"
        );
        let recorded = self.meta.write(|tx| {
            let entry = Entry {
                actor: &Actor::System,
                action: Action::IntegrityFailed,
                target: object,
                detail: serde_json::json!({"blob": blob}),
            };
            self.append_audit(tx, tenant, entry)
        });
        if let Err(e) = recorded {
            tracing::error!(target: "soramai::integrity", tenant = %tenant.as_str(), error = %e, "the integrity failure could not be audited");
        }
    }

    /// Appends one audit record inside `tx`.
    pub(super) fn append_audit(&self, tx: &Db<'_>, tenant: &TenantId, entry: Entry<'_>) -> Result<()> {
        chain::append(tx, &self.audit_key, tenant, self.now(), entry)
    }
}

/// The audit chain's key, wrapped by the root in the metadata store.
fn system_key(meta: &MetaStore, root: &dyn KeyProvider) -> Result<AuditKey> {
    let stored = |meta: &MetaStore| -> Result<Option<Vec<u8>>> {
        meta.read(|c| c.query_row("SELECT wrapped FROM system_keys WHERE name = 'audit'", (), |r| r.get(0)).optional())
    };
    let wrapped = match stored(meta)? {
        Some(wrapped) => wrapped,
        None => {
            let mut key = Zeroizing::new(vec![0u8; KEY_LEN]);
            random_bytes(&mut key);
            let wrapped = root.wrap(AUDIT_KEY_AAD, &key)?;
            // Nodes starting together on one shared database: the first insert wins, and
            // every node then uses the stored key.
            meta.write(|tx| {
                tx.execute(
                    "INSERT INTO system_keys (name, wrapped, root_fingerprint) VALUES ('audit', ?1, ?2)
                     ON CONFLICT (name) DO NOTHING",
                    params![wrapped, root.fingerprint()],
                )?;
                Ok(())
            })?;
            stored(meta)?.ok_or(Error::NotFound { kind: "system key" })?
        }
    };
    root.unwrap(AUDIT_KEY_AAD, &wrapped)
        .map(AuditKey)
        .map_err(|_| Error::KeyProvider("the root key does not match this data directory".into()))
}
