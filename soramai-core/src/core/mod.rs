//! [`Core`]: one handle on a data directory — tenants, tenant keys and encrypted objects. The other
//! capabilities (keys, datasets, vault, jobs, audit, metering, retention) extend it in their modules
//! through the narrow methods here; the state itself is in three private parts: the metadata
//! [`Store`](store::Store) (with the clock and the audit chain), the [`Keyring`](keyring::Keyring)
//! and the [`Objects`](objects::Objects) stores.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::audit::chain::Entry;
use crate::audit::vocabulary::{Action, Actor, AuditKey};
use crate::clock::Millis;
use crate::crypto::keys::KeyProvider;
use crate::error::Result;
use crate::ids::TenantId;
use crate::store::blob::set_private_dir;
use crate::store::{BlobStore, Db, LocalBlobStore};

mod config;
mod keyring;
mod objects;
mod store;
mod tenants;

pub use config::{BlobLocation, Config, Database, Limits};
pub use objects::{ObjectInfo, ObjectReader, ObjectWriter};
pub use tenants::{KeyCustody, StorePlacement, Tenant, TenantStatus};

use keyring::Keyring;
use objects::Objects;
use store::Store;

/// The security core over one data directory. Cheap to share behind an `Arc`; every method is safe
/// to call from many threads.
pub struct Core {
    store: Arc<Store>,
    keyring: Keyring,
    objects: Objects,
    data_dir: PathBuf,
    limits: Limits,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("data_dir", &self.data_dir)
            .field("blobs", self.objects.blobs())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Opens (creating if needed) a data directory.
    pub fn open(config: Config) -> Result<Self> {
        std::fs::create_dir_all(&config.data_dir)?;
        set_private_dir(&config.data_dir)?;
        let meta = config.database.open(&config.data_dir)?;
        let shared: Arc<dyn BlobStore> = match config.blobs {
            Some(b) => b,
            None => Arc::new(LocalBlobStore::open(config.data_dir.join("blobs"))?),
        };
        let dedicated_tenants: Vec<String> = meta.read(|c| {
            let rows =
                c.query_map("SELECT id FROM tenants WHERE store = 'dedicated' AND status = 'active'", (), |r| {
                    r.get(0)
                })?;
            Ok(rows)
        })?;
        let objects = Objects::open(shared, config.dedicated, dedicated_tenants)?;
        let store = Arc::new(Store::open(meta, config.root.as_ref(), config.clock)?);
        std::fs::create_dir_all(config.data_dir.join("scratch"))?;
        set_private_dir(&config.data_dir.join("scratch"))?;
        Ok(Self {
            store,
            keyring: Keyring::new(config.root),
            objects,
            data_dir: config.data_dir,
            limits: config.limits,
        })
    }

    /// Opens the embedded default in `data_dir` (see [`Config::embedded`]).
    pub fn open_embedded(data_dir: impl Into<PathBuf>) -> Result<Self> {
        Self::open(Config::embedded(data_dir)?)
    }

    /// The size limits applied to customer input.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The clock in use.
    pub fn now(&self) -> Millis {
        self.store.now()
    }

    pub(crate) fn scratch_root(&self) -> PathBuf {
        self.data_dir.join("scratch")
    }

    // ---- the narrow interface the other modules use ----------------------------------------

    /// Runs `f` in a read transaction of the metadata store.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Db<'_>) -> Result<T>) -> Result<T> {
        self.store.meta().read(f)
    }

    /// Runs `f` in one write transaction of the metadata store: a mutation and its audit record
    /// ([`Core::audit_tx`]) commit together or not at all.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&Db<'_>) -> Result<T>) -> Result<T> {
        self.store.meta().write(f)
    }

    /// Makes deleted metadata unrecoverable from the database files (after a shred or purge).
    pub(crate) fn checkpoint(&self) -> Result<()> {
        self.store.meta().checkpoint()
    }

    /// Writes a consistent copy of the metadata database to `path` (for a backup).
    pub(crate) fn snapshot_metadata(&self, path: &Path) -> Result<()> {
        self.store.meta().snapshot_into(path)
    }

    /// The operator's root key (backups are sealed under it; system secrets are wrapped by it).
    pub(crate) fn root_key(&self) -> &dyn KeyProvider {
        self.keyring.root().as_ref()
    }

    /// The routed blob store (ciphertext only).
    pub(crate) fn blobs(&self) -> &dyn BlobStore {
        self.objects.blobs().as_ref()
    }

    /// The audit chain's key, for verifying it.
    pub(crate) fn audit_key(&self) -> &AuditKey {
        self.store.audit_key()
    }

    /// Appends an audit record in its own transaction.
    pub(crate) fn audit(
        &self,
        tenant: &TenantId,
        actor: &Actor,
        action: Action,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<()> {
        self.write(|tx| self.audit_tx(tx, tenant, actor, action, target, detail))
    }

    /// Appends an audit record inside the caller's transaction.
    pub(crate) fn audit_tx(
        &self,
        tx: &Db<'_>,
        tenant: &TenantId,
        actor: &Actor,
        action: Action,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<()> {
        self.store.append_audit(tx, tenant, Entry { actor, action, target, detail })
    }
}
