//! Encrypted objects: the [`Objects`] stores (the shared one, routes to dedicated ones), streaming
//! sealed writes, staged commits in one transaction with their metadata, random-access reads, key
//! scopes (crypto-shredding a prefix), and orphan collection.

use std::fmt;
use std::sync::Arc;

use crate::params;
use crate::store::{Db, OptionalExt as _};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::crypto::chunked::{RandomAccess, ReadAt};
use crate::crypto::envelope;
use crate::crypto::keys::TenantKey;
use crate::error::{Error, Result};
use crate::ids::{ObjectPath, TenantId, random_hex};
use crate::store::routed::RoutedBlobStore;
use crate::store::{BlobKey, BlobStore, StoreRouter};
use crate::tier::Tier;

use super::Core;

/// Where a core's blobs go: one routed store in front of the shared store and each dedicated
/// tenant's own.
pub(super) struct Objects {
    blobs: Arc<dyn BlobStore>,
    routes: Arc<RoutedBlobStore>,
    dedicated: Option<Arc<dyn StoreRouter>>,
}

impl Objects {
    /// Routes every tenant to `shared` except those `dedicated_tenants`, which get their own store
    /// from `dedicated`.
    pub(super) fn open(
        shared: Arc<dyn BlobStore>,
        dedicated: Option<Arc<dyn StoreRouter>>,
        dedicated_tenants: Vec<String>,
    ) -> Result<Self> {
        let routes = Arc::new(RoutedBlobStore::new(shared));
        for t in dedicated_tenants {
            let router = dedicated.as_ref().ok_or_else(|| {
                Error::InvalidArgument(
                    "this data directory has tenants on dedicated stores: configure `Config::dedicated`".into(),
                )
            })?;
            let id = TenantId::new(t)?;
            routes.assign(&id, Some(router.dedicated_store(&id)?));
        }
        Ok(Self { blobs: routes.clone(), routes, dedicated })
    }

    /// The routed store: every blob key reaches its tenant's store.
    pub(super) fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }

    /// The per-tenant routes.
    pub(super) fn routes(&self) -> &RoutedBlobStore {
        &self.routes
    }

    /// The dedicated store a tenant of `tier` gets, or `None` for the shared store.
    pub(super) fn dedicated_store_for(&self, id: &TenantId, tier: Tier) -> Result<Option<Arc<dyn BlobStore>>> {
        match &self.dedicated {
            Some(router) if tier.policy().rag == crate::tier::RagIsolation::DedicatedStore => {
                Ok(Some(router.dedicated_store(id)?))
            }
            _ => Ok(None),
        }
    }
}

/// Metadata of a stored object (never its content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectInfo {
    /// The logical path within the tenant.
    pub path: String,
    /// Plaintext length in bytes.
    pub len: u64,
    /// The tenant key version it is sealed under.
    pub key_version: u32,
}

/// Where a sealed object's bytes live, readable at any offset.
struct BlobSource {
    blobs: Arc<dyn BlobStore>,
    key: BlobKey,
    len: u64,
}

impl ReadAt for BlobSource {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.len)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset.checked_add(buf.len() as u64).ok_or(std::io::ErrorKind::UnexpectedEof)?;
        let bytes = self.blobs.get_range(&self.key, offset..end).map_err(std::io::Error::other)?;
        if bytes.len() != buf.len() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.copy_from_slice(&bytes);
        Ok(())
    }
}

/// Random-access reads of one encrypted object: only the chunks a range touches are fetched and
/// decrypted, after the object's length has been authenticated.
pub struct ObjectReader {
    inner: RandomAccess<BlobSource>,
    /// Where a failed check is reported, and what it names.
    store: Arc<super::store::Store>,
    tenant: TenantId,
    path: ObjectPath,
}

impl fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectReader").field("len", &self.inner.plaintext_len()).finish()
    }
}

impl ObjectReader {
    /// The authenticated plaintext length.
    pub fn len(&self) -> u64 {
        self.inner.plaintext_len()
    }
    /// Whether the object is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads `len` plaintext bytes at `offset`.
    pub fn read_range(&self, offset: u64, len: usize) -> Result<Zeroizing<Vec<u8>>> {
        self.inner.read_range(offset, len).map_err(|e| self.failed(e.into()))
    }
    /// An opaque id of this stored version of the object: a new write of the same path gets a
    /// new one, so it can key caches of decrypted chunks.
    pub fn version_id(&self) -> &str {
        self.inner.source().key.as_str()
    }

    /// The number of chunks (16 KiB of plaintext each, the final one shorter).
    pub fn chunk_count(&self) -> u64 {
        self.inner.chunk_count()
    }

    /// Decrypts chunk `index` of the object (16 KiB plaintext chunks).
    pub fn chunk(&self, index: u64) -> Result<Zeroizing<Vec<u8>>> {
        self.inner.chunk(index).map_err(|e| self.failed(e.into()))
    }

    /// Reports an integrity failure of this object (a log line and an audit record) and passes
    /// the error on.
    fn failed(&self, e: Error) -> Error {
        if matches!(e, Error::Integrity) {
            self.store.report_integrity(&self.tenant, self.path.as_str(), self.inner.source().key.as_str());
        }
        e
    }
}

/// A streaming write of one object: sealed chunk by chunk straight into a new blob as it is
/// written (memory stays at one chunk), invisible until [`Core::finish_object`] commits it.
/// Dropping it uncommitted discards it.
pub struct ObjectWriter {
    tenant: TenantId,
    path: ObjectPath,
    scope: String,
    blob: BlobKey,
    key_version: u32,
    len: u64,
    sealer: crate::crypto::chunked::Encryptor<Box<dyn crate::store::BlobWrite>>,
}

impl fmt::Debug for ObjectWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectWriter").field("path", &self.path).field("len", &self.len).finish_non_exhaustive()
    }
}

impl ObjectWriter {
    /// The tenant whose key seals it.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }
}

impl std::io::Write for ObjectWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.sealer.write(data)?;
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An object sealed and written to the blob store but not yet committed to the metadata.
pub(crate) struct StagedObject {
    scope: String,
    blob: BlobKey,
    key_version: u32,
    len: u64,
}

impl Core {
    /// Seals `data` under the tenant's primary key and writes it to a fresh blob. Nothing is visible
    /// until [`Core::commit_object`] records it.
    pub(crate) fn stage_object(&self, tenant: &TenantId, path: &ObjectPath, data: &[u8]) -> Result<StagedObject> {
        let mut w = self.object_writer(tenant, path)?;
        std::io::Write::write_all(&mut w, data)?;
        self.seal_writer(w)
    }

    /// Seals a writer's final chunk and makes its blob durable; nothing is visible yet.
    pub(crate) fn seal_writer(&self, writer: ObjectWriter) -> Result<StagedObject> {
        let ObjectWriter { scope, blob, key_version, len, sealer, .. } = writer;
        sealer.finish()?.commit(self.objects.blobs().as_ref())?;
        Ok(StagedObject { scope, blob, key_version, len })
    }

    /// Commits a staged object together with `extra` in one transaction, then deletes the blob it
    /// replaced; on failure deletes the staged blob instead, so nothing half-done stays visible.
    pub(crate) fn commit_staged<T>(
        &self,
        tenant: &TenantId,
        path: &ObjectPath,
        staged: &StagedObject,
        extra: impl FnOnce(&Db<'_>) -> Result<T>,
    ) -> Result<T> {
        let committed = self.write(|tx| {
            let old = self.commit_object(tx, tenant, path, staged)?;
            Ok((extra(tx)?, old))
        });
        match committed {
            Ok((out, old)) => {
                if let Some(old) = old {
                    self.objects.blobs().delete(&old)?;
                }
                Ok(out)
            }
            Err(e) => {
                let _ = self.objects.blobs().delete(&staged.blob);
                Err(e)
            }
        }
    }

    /// Records a staged object in the caller's transaction; returns the blob it replaces, if any,
    /// to be deleted after the commit.
    pub(crate) fn commit_object(
        &self,
        tx: &Db<'_>,
        tenant: &TenantId,
        path: &ObjectPath,
        staged: &StagedObject,
    ) -> Result<Option<BlobKey>> {
        let old: Option<String> = tx
            .query_row(
                "SELECT blob FROM objects WHERE tenant_id = ?1 AND path = ?2",
                params![tenant.as_str(), path.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        tx.execute(
            "INSERT INTO objects (tenant_id, path, blob, key_version, plaintext_len, created_at, scope) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(tenant_id, path) DO UPDATE SET blob = excluded.blob, key_version = excluded.key_version,
             plaintext_len = excluded.plaintext_len, created_at = excluded.created_at, scope = excluded.scope",
            params![tenant.as_str(), path.as_str(), staged.blob.as_str(), staged.key_version, staged.len, self.now(), staged.scope],
        )?;
        Ok(old.and_then(|b| BlobKey::new(b).ok()))
    }

    /// Stages, then commits together with `extra` in one transaction; cleans up either way.
    pub(crate) fn put_object_with<T>(
        &self,
        tenant: &TenantId,
        path: &ObjectPath,
        data: &[u8],
        extra: impl FnOnce(&Db<'_>) -> Result<T>,
    ) -> Result<T> {
        let staged = self.stage_object(tenant, path, data)?;
        self.commit_staged(tenant, path, &staged, extra)
    }

    /// Stores an object in the tenant's space, encrypted under its primary key, replacing any object
    /// at the same path atomically. Low-level: for engine crates (RAG index files, artifacts).
    pub fn put_object(&self, tenant: &TenantId, path: &ObjectPath, data: &[u8]) -> Result<ObjectInfo> {
        let mut w = self.object_writer(tenant, path)?;
        std::io::Write::write_all(&mut w, data)?;
        self.finish_object(w)
    }

    /// Starts a streaming write of an object (see [`ObjectWriter`]).
    pub fn object_writer(&self, tenant: &TenantId, path: &ObjectPath) -> Result<ObjectWriter> {
        self.tenant(tenant)?;
        let (scope, key) = match self.scope_for_path(tenant, path)? {
            Some((scope, key)) => (scope, key),
            None => (String::new(), self.primary_key(tenant)?),
        };
        let blob = BlobKey::new(format!("t/{}/o/{}", tenant.as_str(), random_hex(16)))?;
        let out = self.objects.blobs().put_stream(&blob)?;
        let sealer = envelope::seal_writer(&key, tenant, path, out)?;
        Ok(ObjectWriter {
            tenant: tenant.clone(),
            path: path.clone(),
            scope,
            blob,
            key_version: key.version(),
            len: 0,
            sealer,
        })
    }

    /// The key scope covering `path`, if any (the longest registered prefix), with its key.
    fn scope_for_path(&self, tenant: &TenantId, path: &ObjectPath) -> Result<Option<(String, TenantKey)>> {
        let row: Option<(String, Vec<u8>, u32)> = self.read(|c| {
            c.query_row(
                "SELECT scope, wrapped, tenant_key_version FROM scope_keys
                 WHERE tenant_id = ?1 AND substr(?2, 1, length(scope) + 1) = scope || '/'
                 ORDER BY length(scope) DESC LIMIT 1",
                params![tenant.as_str(), path.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
        })?;
        match row {
            None => Ok(None),
            Some((scope, wrapped, version)) => {
                let tk = self.tenant_key(tenant, version)?;
                let key = tk.unwrap_scope_key(tenant, &scope, &wrapped)?;
                Ok(Some((scope, key)))
            }
        }
    }

    /// The key that opens an object: its scope's key (prefix version 0) or a tenant key version.
    fn key_for_object(&self, tenant: &TenantId, path: &ObjectPath, scope: &str, version: u32) -> Result<TenantKey> {
        if version != 0 {
            return self.tenant_key(tenant, version);
        }
        match self.scope_for_path(tenant, path)? {
            Some((s, key)) if s == scope => Ok(key),
            // The scope was shredded (or the object relabelled): nothing can open it.
            _ => Err(Error::Integrity),
        }
    }

    /// Gives every object under `scope/` (an object-path prefix, e.g. a RAG corpus) a key of its
    /// own, wrapped by the tenant key, so that [`Core::shred_key_scope`] can destroy exactly those
    /// objects. Must be created before the first object under the prefix is written.
    pub fn create_key_scope(&self, tenant: &TenantId, scope: &ObjectPath) -> Result<()> {
        self.tenant(tenant)?;
        if !self.list_objects(tenant, &format!("{}/", scope.as_str()))?.is_empty() {
            return Err(Error::InvalidArgument("objects already exist under this scope".into()));
        }
        let primary = self.primary_key(tenant)?;
        let key = TenantKey::generate_scoped();
        let wrapped = primary.wrap_scope_key(&key, tenant, scope.as_str())?;
        let now = self.now();
        self.write(|tx| {
            let inserted = tx.execute(
                "INSERT INTO scope_keys (tenant_id, scope, wrapped, tenant_key_version, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant_id, scope) DO NOTHING",
                params![tenant.as_str(), scope.as_str(), wrapped, primary.version(), now],
            )?;
            if inserted == 0 {
                return Err(Error::AlreadyExists { kind: "key scope" });
            }
            Ok(())
        })
    }

    /// Crypto-shreds a key scope: destroys its key and the metadata of every object under it, then
    /// purges their blobs. Copies of those blobs anywhere (backups included) become undecryptable.
    /// Returns how many objects were shredded.
    pub fn shred_key_scope(&self, tenant: &TenantId, scope: &ObjectPath) -> Result<usize> {
        self.tenant(tenant)?;
        let blobs: Vec<String> = self.write(|tx| {
            let deleted = tx.execute(
                "DELETE FROM scope_keys WHERE tenant_id = ?1 AND scope = ?2",
                params![tenant.as_str(), scope.as_str()],
            )?;
            if deleted == 0 {
                return Err(Error::NotFound { kind: "key scope" });
            }
            let blobs: Vec<String> = {
                tx.query_map(
                    "SELECT blob FROM objects WHERE tenant_id = ?1 AND scope = ?2",
                    params![tenant.as_str(), scope.as_str()],
                    |r| r.get(0),
                )?
            };
            tx.execute(
                "DELETE FROM objects WHERE tenant_id = ?1 AND scope = ?2",
                params![tenant.as_str(), scope.as_str()],
            )?;
            Ok(blobs)
        })?;
        self.checkpoint()?;
        for b in &blobs {
            if let Ok(k) = BlobKey::new(b.clone()) {
                self.objects.blobs().delete(&k)?;
            }
        }
        self.propagate_to_backups(tenant, false)?;
        Ok(blobs.len())
    }

    /// Seals the final chunk, makes the blob durable and switches the object to it in one metadata
    /// transaction (replacing any previous version atomically).
    pub fn finish_object(&self, writer: ObjectWriter) -> Result<ObjectInfo> {
        let (tenant, path) = (writer.tenant.clone(), writer.path.clone());
        let staged = self.seal_writer(writer)?;
        self.commit_staged(&tenant, &path, &staged, |_| Ok(()))?;
        Ok(ObjectInfo { path: path.as_str().to_string(), len: staged.len, key_version: staged.key_version })
    }

    fn object_row(&self, tenant: &TenantId, path: &ObjectPath) -> Result<(BlobKey, ObjectInfo)> {
        self.object_row_scoped(tenant, path).map(|(b, i, _)| (b, i))
    }

    /// The object's blob, metadata and key scope ("" for the tenant key).
    fn object_row_scoped(&self, tenant: &TenantId, path: &ObjectPath) -> Result<(BlobKey, ObjectInfo, String)> {
        let row: Option<(String, u32, u64, String)> = self.read(|c| {
            c.query_row(
                "SELECT o.blob, o.key_version, o.plaintext_len, o.scope FROM objects o JOIN tenants t ON t.id = o.tenant_id
                 WHERE o.tenant_id = ?1 AND o.path = ?2 AND t.status = 'active'",
                params![tenant.as_str(), path.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
        })?;
        let (blob, key_version, len, scope) = row.ok_or(Error::NotFound { kind: "object" })?;
        Ok((BlobKey::new(blob)?, ObjectInfo { path: path.as_str().to_string(), len, key_version }, scope))
    }

    /// Metadata of one object.
    pub fn object_info(&self, tenant: &TenantId, path: &ObjectPath) -> Result<ObjectInfo> {
        Ok(self.object_row(tenant, path)?.1)
    }

    /// Reads and decrypts a whole object.
    pub fn get_object(&self, tenant: &TenantId, path: &ObjectPath) -> Result<Zeroizing<Vec<u8>>> {
        let (blob, _, scope) = self.object_row_scoped(tenant, path)?;
        let sealed = self.objects.blobs().get(&blob)?;
        let opened = (|| {
            let key = self.key_for_object(tenant, path, &scope, envelope::key_version(&sealed)?)?;
            Ok(envelope::open_owned(&key, tenant, path, sealed)?)
        })();
        opened.map_err(|e| self.integrity_checked(e, tenant, path, &blob))
    }

    /// Reports an integrity failure of an object (a log line and an audit record naming it) and
    /// passes the error on; any other error passes unreported.
    fn integrity_checked(&self, e: Error, tenant: &TenantId, path: &ObjectPath, blob: &BlobKey) -> Error {
        if matches!(e, Error::Integrity) {
            self.store.report_integrity(tenant, path.as_str(), blob.as_str());
        }
        e
    }

    /// Authenticates a sealed object's bytes (every chunk) as the object at `path` under key
    /// `scope`, and hands them back: a backup copies only what this accepts. A failure is logged
    /// and audited as an integrity failure of that object.
    pub(crate) fn authenticate_sealed(
        &self,
        tenant: &TenantId,
        path: &ObjectPath,
        scope: &str,
        blob: &BlobKey,
        sealed: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let opened = (|| {
            let key = self.key_for_object(tenant, path, scope, envelope::key_version(&sealed)?)?;
            let reader = envelope::open_random_access(&key, tenant, path, sealed)?;
            for i in 0..reader.chunk_count() {
                reader.chunk(i)?;
            }
            Ok(reader.into_inner())
        })();
        opened.map_err(|e| self.integrity_checked(e, tenant, path, blob))
    }

    /// Opens an object for random-access reads.
    pub fn open_object(&self, tenant: &TenantId, path: &ObjectPath) -> Result<ObjectReader> {
        let (blob, _, scope) = self.object_row_scoped(tenant, path)?;
        let len = self.objects.blobs().size(&blob)?;
        let source = BlobSource { blobs: self.objects.blobs().clone(), key: blob.clone(), len };
        let opened = (|| {
            let mut prefix = [0u8; envelope::PREFIX_LEN];
            source.read_exact_at(&mut prefix, 0).map_err(|_| Error::Integrity)?;
            let key = self.key_for_object(tenant, path, &scope, envelope::key_version(&prefix)?)?;
            Ok(envelope::open_random_access(&key, tenant, path, source)?)
        })();
        let inner = opened.map_err(|e| self.integrity_checked(e, tenant, path, &blob))?;
        Ok(ObjectReader { inner, store: self.store.clone(), tenant: tenant.clone(), path: path.clone() })
    }

    /// Deletes an object (metadata first, then its blob).
    pub fn delete_object(&self, tenant: &TenantId, path: &ObjectPath) -> Result<()> {
        self.delete_object_with(tenant, path, |_| Ok(()))
    }

    pub(crate) fn delete_object_with(
        &self,
        tenant: &TenantId,
        path: &ObjectPath,
        extra: impl FnOnce(&Db<'_>) -> Result<()>,
    ) -> Result<()> {
        let (blob, _) = self.object_row(tenant, path)?;
        self.write(|tx| {
            tx.execute(
                "DELETE FROM objects WHERE tenant_id = ?1 AND path = ?2",
                params![tenant.as_str(), path.as_str()],
            )?;
            extra(tx)
        })?;
        self.objects.blobs().delete(&blob)
    }

    /// Lists the tenant's objects whose path starts with `prefix`.
    pub fn list_objects(&self, tenant: &TenantId, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.tenant(tenant)?;
        self.read(|c| {
            let rows = c.query_map("SELECT path, plaintext_len, key_version FROM objects WHERE tenant_id = ?1 AND substr(path, 1, length(CAST(?2 AS TEXT))) = CAST(?2 AS TEXT) ORDER BY path", params![tenant.as_str(), prefix], |r| Ok(ObjectInfo { path: r.get(0)?, len: r.get(1)?, key_version: r.get(2)? }))?;
            Ok(rows)
        })
    }

    /// Deletes blobs that no metadata row references (left by a crash between a blob write and its
    /// commit) and leftovers of interrupted writes. Only what is older than `min_age` is touched,
    /// and a blob whose age the store cannot tell is kept, so in-flight writes are safe.
    pub fn collect_orphan_blobs(&self, min_age: std::time::Duration) -> Result<usize> {
        let mut removed = self.objects.blobs().sweep_incomplete(min_age)?;
        let listed = self.objects.blobs().list("t/")?;
        let referenced: std::collections::HashSet<String> = self
            .read(|c| Ok(c.query_map("SELECT blob FROM objects", (), |r| r.get::<String>(0))?.into_iter().collect()))?;
        for key in listed {
            if referenced.contains(key.as_str()) {
                continue;
            }
            let old_enough = match self.objects.blobs().age(&key) {
                Ok(Some(age)) => age >= min_age,
                Ok(None) => false,
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            if old_enough {
                self.objects.blobs().delete(&key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
