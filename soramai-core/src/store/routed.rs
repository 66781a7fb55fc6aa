//! Placement of each tenant's blobs: the shared store, or a store of the tenant's own (seed 003:
//! Pro and up get a dedicated volume). `RoutedBlobStore` sends every key under `t/<tenant>/` to
//! the tenant's dedicated store when it has one, and everything else to the shared store, so the
//! rest of the core stays unaware of placement.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use super::blob::{BlobKey, BlobStore, BlobWrite, LocalBlobStore};
use crate::error::Result;
use crate::ids::TenantId;

/// Gives a tenant its dedicated blob store (a volume, a bucket, a prefix of its own).
pub trait StoreRouter: Send + Sync + fmt::Debug {
    /// The dedicated store of `tenant`, created if needed.
    fn dedicated_store(&self, tenant: &TenantId) -> Result<Arc<dyn BlobStore>>;
}

/// Dedicated stores as directories `<root>/<tenant>/` (mode 0700), one per tenant: on the
/// embedded default these can be separate volumes mounted there.
#[derive(Debug, Clone)]
pub struct DedicatedDirectories {
    root: PathBuf,
}

impl DedicatedDirectories {
    /// Dedicated stores under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

impl StoreRouter for DedicatedDirectories {
    fn dedicated_store(&self, tenant: &TenantId) -> Result<Arc<dyn BlobStore>> {
        std::fs::create_dir_all(&self.root)?;
        super::blob::set_private_dir(&self.root)?;
        Ok(Arc::new(LocalBlobStore::open(self.root.join(tenant.as_str()))?))
    }
}

/// The shared store plus the dedicated stores of the tenants that have one.
pub(crate) struct RoutedBlobStore {
    shared: Arc<dyn BlobStore>,
    dedicated: RwLock<HashMap<String, Arc<dyn BlobStore>>>,
}

impl fmt::Debug for RoutedBlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.dedicated.read().map(|d| d.len()).unwrap_or(0);
        f.debug_struct("RoutedBlobStore").field("shared", &self.shared).field("dedicated_tenants", &n).finish()
    }
}

/// The tenant a key belongs to (`t/<tenant>/...`).
fn tenant_of(key: &str) -> Option<&str> {
    key.strip_prefix("t/")?.split('/').next()
}

impl RoutedBlobStore {
    pub(crate) fn new(shared: Arc<dyn BlobStore>) -> Self {
        Self { shared, dedicated: RwLock::new(HashMap::new()) }
    }

    /// Places `tenant` on `store` (dedicated) or, with `None`, on the shared store.
    pub(crate) fn assign(&self, tenant: &TenantId, store: Option<Arc<dyn BlobStore>>) {
        let mut d = self.dedicated.write().unwrap_or_else(|e| e.into_inner());
        match store {
            Some(s) => d.insert(tenant.as_str().to_string(), s),
            None => d.remove(tenant.as_str()),
        };
    }

    /// The store holding `tenant`'s blobs now.
    pub(crate) fn store_for(&self, tenant: &TenantId) -> Arc<dyn BlobStore> {
        self.route(&format!("t/{}/", tenant.as_str()))
    }

    /// The shared store.
    pub(crate) fn shared(&self) -> Arc<dyn BlobStore> {
        self.shared.clone()
    }

    fn route(&self, key: &str) -> Arc<dyn BlobStore> {
        tenant_of(key)
            .and_then(|t| self.dedicated.read().unwrap_or_else(|e| e.into_inner()).get(t).cloned())
            .unwrap_or_else(|| self.shared.clone())
    }

    fn all(&self) -> Vec<Arc<dyn BlobStore>> {
        let mut v = vec![self.shared.clone()];
        v.extend(self.dedicated.read().unwrap_or_else(|e| e.into_inner()).values().cloned());
        v
    }
}

impl BlobStore for RoutedBlobStore {
    fn put(&self, key: &BlobKey, data: &[u8]) -> Result<()> {
        self.route(key.as_str()).put(key, data)
    }
    fn put_stream(&self, key: &BlobKey) -> Result<Box<dyn BlobWrite>> {
        self.route(key.as_str()).put_stream(key)
    }
    fn get(&self, key: &BlobKey) -> Result<Vec<u8>> {
        self.route(key.as_str()).get(key)
    }
    fn get_range(&self, key: &BlobKey, range: Range<u64>) -> Result<Vec<u8>> {
        self.route(key.as_str()).get_range(key, range)
    }
    fn size(&self, key: &BlobKey) -> Result<u64> {
        self.route(key.as_str()).size(key)
    }
    fn delete(&self, key: &BlobKey) -> Result<()> {
        self.route(key.as_str()).delete(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<BlobKey>> {
        if tenant_of(prefix).is_some_and(|t| prefix.len() > 2 + t.len()) {
            return self.route(prefix).list(prefix);
        }
        let mut out = Vec::new();
        for s in self.all() {
            out.extend(s.list(prefix)?);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
    fn age(&self, key: &BlobKey) -> Result<Option<std::time::Duration>> {
        self.route(key.as_str()).age(key)
    }
    fn sweep_incomplete(&self, min_age: std::time::Duration) -> Result<usize> {
        let mut n = 0;
        for s in self.all() {
            n += s.sweep_incomplete(min_age)?;
        }
        Ok(n)
    }
}
