//! Blob storage. Blobs only ever hold ciphertext (the envelope of `crypto::envelope`).
//!
//! [`LocalBlobStore`] (the embedded default) writes each blob to a temporary file, fsyncs it, renames
//! it into place and fsyncs the directory, so a crash leaves either the old blob or the new one,
//! never a half-written one. [`ObjectBlobStore`] (feature `object-store`) stores blobs in any
//! `object_store` backend, S3-compatible storage included, for several nodes.

use std::fmt;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A blob's key: `/`-separated segments of `A-Za-z0-9._-`, none empty, `.` or `..`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobKey(String);

impl BlobKey {
    /// Validates a key.
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        // The same rules as an object path, which guarantees the key stays inside the store.
        crate::ids::ObjectPath::new(s.clone())?;
        if s.ends_with(".tmp") {
            return Err(Error::InvalidArgument("blob keys may not end in .tmp".into()));
        }
        Ok(Self(s))
    }
    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobKey({:?})", self.0)
    }
}

/// A blob being written: bytes go in through `Write`, and nothing is visible under the key until
/// [`BlobWrite::commit`]. Dropping it uncommitted discards what was written.
pub trait BlobWrite: Write + Send + Sync {
    /// Makes the blob durable and visible, atomically, in `store` (the store that started it).
    fn commit(self: Box<Self>, store: &dyn BlobStore) -> Result<()>;
}

/// A streaming write that buffers in memory and stores the blob with one `put` at commit: the
/// default for stores whose single writes are atomic (object stores).
struct BufferedBlobWrite {
    key: BlobKey,
    buffer: Vec<u8>,
}

impl Write for BufferedBlobWrite {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl BlobWrite for BufferedBlobWrite {
    fn commit(self: Box<Self>, store: &dyn BlobStore) -> Result<()> {
        store.put(&self.key, &self.buffer)
    }
}

/// Where encrypted blobs live.
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Stores `data` under `key` atomically, replacing any previous blob.
    fn put(&self, key: &BlobKey, data: &[u8]) -> Result<()>;
    /// Starts a streaming write of `key` (see [`BlobWrite`]).
    fn put_stream(&self, key: &BlobKey) -> Result<Box<dyn BlobWrite>> {
        Ok(Box::new(BufferedBlobWrite { key: key.clone(), buffer: Vec::new() }))
    }
    /// Reads a whole blob.
    fn get(&self, key: &BlobKey) -> Result<Vec<u8>>;
    /// Reads a byte range of a blob; a range past the end is an error.
    fn get_range(&self, key: &BlobKey, range: Range<u64>) -> Result<Vec<u8>>;
    /// The blob's length.
    fn size(&self, key: &BlobKey) -> Result<u64>;
    /// Deletes a blob; deleting a missing blob succeeds.
    fn delete(&self, key: &BlobKey) -> Result<()>;
    /// Lists the keys under `prefix` (a key prefix ending at a segment boundary, or empty).
    fn list(&self, prefix: &str) -> Result<Vec<BlobKey>>;
    /// How long ago the blob was last written, when the store knows.
    fn age(&self, key: &BlobKey) -> Result<Option<std::time::Duration>>;
    /// Removes leftovers of interrupted writes older than `min_age` (temporary files, abandoned
    /// uploads); returns how many. Stores whose writes are atomic have none.
    fn sweep_incomplete(&self, min_age: std::time::Duration) -> Result<usize> {
        let _ = min_age;
        Ok(0)
    }
}

fn age_of(modified: std::time::SystemTime) -> std::time::Duration {
    std::time::SystemTime::now().duration_since(modified).unwrap_or_default()
}

fn not_found(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound { Error::NotFound { kind: "object" } } else { Error::Io(e) }
}

/// Blobs as files under one directory.
#[derive(Debug)]
pub struct LocalBlobStore {
    root: PathBuf,
}

impl LocalBlobStore {
    /// Opens (creating if needed, mode 0700) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        set_private_dir(&root)?;
        Ok(Self { root })
    }

    fn path(&self, key: &BlobKey) -> PathBuf {
        self.root.join(key.as_str())
    }
}

pub(crate) fn set_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// fsyncs a directory so a rename or unlink in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// A local streaming write: a temporary file in the blob's directory, fsync'd and renamed into
/// place at commit; removed if dropped uncommitted.
struct LocalBlobWrite {
    file: Option<std::io::BufWriter<fs::File>>,
    tmp: PathBuf,
    path: PathBuf,
}

impl Write for LocalBlobWrite {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.file.as_mut().ok_or_else(|| std::io::Error::other("blob already committed"))?.write(data)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().map_or(Ok(()), |f| f.flush())
    }
}

impl BlobWrite for LocalBlobWrite {
    fn commit(mut self: Box<Self>, _store: &dyn BlobStore) -> Result<()> {
        let file = self.file.take().ok_or_else(|| Error::Io(std::io::Error::other("blob already committed")))?;
        let file = file.into_inner().map_err(|e| Error::Io(e.into_error()))?;
        file.sync_all()?;
        fs::rename(&self.tmp, &self.path)?;
        sync_dir(self.path.parent().unwrap_or(Path::new(".")))
    }
}

impl Drop for LocalBlobWrite {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl LocalBlobStore {
    /// Creates the blob's directory (durably) and a fresh temporary file beside the blob.
    fn create_tmp(&self, key: &BlobKey) -> Result<(fs::File, PathBuf, PathBuf)> {
        let path = self.path(key);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        if !dir.exists() {
            fs::create_dir_all(&dir)?;
            let mut d = dir.as_path();
            while let Some(parent) = d.parent() {
                sync_dir(parent)?;
                if parent == self.root {
                    break;
                }
                d = parent;
            }
        }
        let mut suffix = [0u8; 8];
        crate::crypto::keys::random_bytes(&mut suffix);
        let tmp = path.with_file_name(format!(
            "{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("blob"),
            hex::encode(suffix)
        ));
        let file = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        Ok((file, tmp, path))
    }
}

impl BlobStore for LocalBlobStore {
    fn put_stream(&self, key: &BlobKey) -> Result<Box<dyn BlobWrite>> {
        let (file, tmp, path) = self.create_tmp(key)?;
        Ok(Box::new(LocalBlobWrite { file: Some(std::io::BufWriter::with_capacity(256 << 10, file)), tmp, path }))
    }

    fn put(&self, key: &BlobKey, data: &[u8]) -> Result<()> {
        let mut w = self.put_stream(key)?;
        w.write_all(data)?;
        w.commit(self)
    }

    fn get(&self, key: &BlobKey) -> Result<Vec<u8>> {
        fs::read(self.path(key)).map_err(not_found)
    }

    fn get_range(&self, key: &BlobKey, range: Range<u64>) -> Result<Vec<u8>> {
        let len = usize::try_from(
            range.end.checked_sub(range.start).ok_or_else(|| Error::InvalidArgument("reversed range".into()))?,
        )
        .map_err(|_| Error::InvalidArgument("range too large".into()))?;
        let mut f = fs::File::open(self.path(key)).map_err(not_found)?;
        f.seek(SeekFrom::Start(range.start))?;
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn size(&self, key: &BlobKey) -> Result<u64> {
        Ok(fs::metadata(self.path(key)).map_err(not_found)?.len())
    }

    fn delete(&self, key: &BlobKey) -> Result<()> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().unwrap_or(&self.root)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn age(&self, key: &BlobKey) -> Result<Option<std::time::Duration>> {
        let meta = fs::metadata(self.path(key)).map_err(not_found)?;
        Ok(meta.modified().ok().map(age_of))
    }

    fn sweep_incomplete(&self, min_age: std::time::Duration) -> Result<usize> {
        let mut removed = 0;
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let path = entry.path();
                let ty = entry.file_type()?;
                if ty.is_dir() {
                    stack.push(path);
                } else if ty.is_file()
                    && path.extension().is_some_and(|e| e == "tmp")
                    && entry.metadata()?.modified().map(age_of).unwrap_or_default() >= min_age
                {
                    fs::remove_file(&path)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    fn list(&self, prefix: &str) -> Result<Vec<BlobKey>> {
        let mut out = Vec::new();
        let start = if prefix.is_empty() { self.root.clone() } else { self.root.join(prefix.trim_end_matches('/')) };
        if prefix.split('/').any(|s| s == "..") {
            return Err(Error::InvalidArgument("invalid prefix".into()));
        }
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            for entry in entries {
                let entry = entry?;
                let ty = entry.file_type()?;
                if ty.is_dir() {
                    stack.push(entry.path());
                } else if ty.is_file() {
                    let rel = entry.path();
                    let Ok(rel) = rel.strip_prefix(&self.root) else {
                        continue;
                    };
                    if let Some(k) = rel.to_str().and_then(|s| BlobKey::new(s).ok()) {
                        out.push(k);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Blobs in any `object_store` backend (S3-compatible storage, GCS, Azure, a local directory or
/// memory), for deployments of several nodes.
///
/// Calls block on a private current-thread runtime: call them from blocking threads (as the server
/// does through `spawn_blocking`), not from inside another async runtime.
#[cfg(feature = "object-store")]
pub struct ObjectBlobStore {
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    runtime: std::sync::Arc<tokio::runtime::Runtime>,
}

/// A streaming write to an object store: a multipart upload in parts of [`MULTIPART_PART`] bytes,
/// completed at commit and aborted if dropped uncommitted.
#[cfg(feature = "object-store")]
struct ObjectBlobWrite {
    runtime: std::sync::Arc<tokio::runtime::Runtime>,
    upload: Option<std::sync::Mutex<Box<dyn object_store::MultipartUpload>>>,
    buffer: Vec<u8>,
}

/// Part size of multipart uploads (S3 needs at least 5 MiB for every part but the last).
#[cfg(feature = "object-store")]
pub const MULTIPART_PART: usize = 8 << 20;

#[cfg(feature = "object-store")]
impl ObjectBlobWrite {
    fn send_part(&mut self, part: Vec<u8>) -> std::io::Result<()> {
        let upload = self.upload.as_mut().ok_or_else(|| std::io::Error::other("blob already committed"))?;
        let fut = upload.get_mut().unwrap_or_else(|e| e.into_inner()).put_part(object_store::PutPayload::from(part));
        self.runtime.block_on(fut).map_err(std::io::Error::other)
    }
}

#[cfg(feature = "object-store")]
impl Write for ObjectBlobWrite {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        while self.buffer.len() >= MULTIPART_PART {
            let rest = self.buffer.split_off(MULTIPART_PART);
            let part = std::mem::replace(&mut self.buffer, rest);
            self.send_part(part)?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(feature = "object-store")]
impl BlobWrite for ObjectBlobWrite {
    fn commit(mut self: Box<Self>, _store: &dyn BlobStore) -> Result<()> {
        let last = std::mem::take(&mut self.buffer);
        self.send_part(last)?;
        let upload = self.upload.take().ok_or_else(|| Error::Io(std::io::Error::other("blob already committed")))?;
        let mut upload = upload.into_inner().unwrap_or_else(|e| e.into_inner());
        self.runtime.block_on(upload.complete()).map_err(os_err)?;
        Ok(())
    }
}

#[cfg(feature = "object-store")]
impl Drop for ObjectBlobWrite {
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            let mut upload = upload.into_inner().unwrap_or_else(|e| e.into_inner());
            let _ = self.runtime.block_on(upload.abort());
        }
    }
}

#[cfg(feature = "object-store")]
impl fmt::Debug for ObjectBlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectBlobStore").field("store", &self.store.to_string()).finish()
    }
}

#[cfg(feature = "object-store")]
impl ObjectBlobStore {
    /// Wraps an object store (for S3: `object_store::aws::AmazonS3Builder`, enabled through
    /// `object_store`'s `aws` feature in the embedding application).
    pub fn new(store: std::sync::Arc<dyn object_store::ObjectStore>) -> Result<Self> {
        // Timers and sockets: a network store (S3's client) needs both.
        let runtime = std::sync::Arc::new(tokio::runtime::Builder::new_current_thread().enable_all().build()?);
        Ok(Self { store, runtime })
    }

    /// An S3 (or S3-compatible) bucket configured from the standard `AWS_*` environment variables
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT` for MinIO or R2).
    #[cfg(feature = "s3")]
    pub fn s3_from_env(bucket: &str) -> Result<Self> {
        let s3 = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| Error::InvalidArgument(format!("S3 configuration: {e}")))?;
        Self::new(std::sync::Arc::new(s3))
    }

    fn path(key: &BlobKey) -> object_store::path::Path {
        object_store::path::Path::from(key.as_str())
    }
}

/// The shared store and the dedicated-store router for an S3 bucket configured from `AWS_*`.
#[cfg(feature = "s3")]
pub(crate) fn s3_stores_from_env(
    bucket: &str,
) -> Result<(std::sync::Arc<dyn BlobStore>, std::sync::Arc<dyn super::StoreRouter>)> {
    let s3: std::sync::Arc<dyn object_store::ObjectStore> = std::sync::Arc::new(
        object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| Error::InvalidArgument(format!("S3 configuration: {e}")))?,
    );
    Ok((std::sync::Arc::new(ObjectBlobStore::new(s3.clone())?), std::sync::Arc::new(DedicatedPrefixes { store: s3 })))
}

/// Dedicated stores as prefixes `dedicated/<tenant>/` of one object store.
#[cfg(feature = "object-store")]
#[derive(Debug)]
pub struct DedicatedPrefixes {
    store: std::sync::Arc<dyn object_store::ObjectStore>,
}

#[cfg(feature = "object-store")]
impl DedicatedPrefixes {
    /// Dedicated stores under prefixes of `store`.
    pub fn new(store: std::sync::Arc<dyn object_store::ObjectStore>) -> Self {
        Self { store }
    }
}

#[cfg(feature = "object-store")]
impl super::StoreRouter for DedicatedPrefixes {
    fn dedicated_store(&self, tenant: &crate::ids::TenantId) -> Result<std::sync::Arc<dyn BlobStore>> {
        let prefixed =
            object_store::prefix::PrefixStore::new(self.store.clone(), format!("dedicated/{}", tenant.as_str()));
        Ok(std::sync::Arc::new(ObjectBlobStore::new(std::sync::Arc::new(prefixed))?))
    }
}

#[cfg(feature = "object-store")]
use object_store::ObjectStoreExt as _;

#[cfg(feature = "object-store")]
fn os_err(e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::NotFound { kind: "object" },
        other => Error::Io(std::io::Error::other(other)),
    }
}

#[cfg(feature = "object-store")]
impl BlobStore for ObjectBlobStore {
    fn put_stream(&self, key: &BlobKey) -> Result<Box<dyn BlobWrite>> {
        let upload = self.runtime.block_on(self.store.put_multipart(&Self::path(key))).map_err(os_err)?;
        Ok(Box::new(ObjectBlobWrite {
            runtime: self.runtime.clone(),
            upload: Some(std::sync::Mutex::new(upload)),
            buffer: Vec::new(),
        }))
    }

    fn put(&self, key: &BlobKey, data: &[u8]) -> Result<()> {
        // A single PUT is atomic in object stores: readers see the old object or the new one.
        let payload = object_store::PutPayload::from(data.to_vec());
        self.runtime.block_on(self.store.put(&Self::path(key), payload)).map_err(os_err)?;
        Ok(())
    }

    fn get(&self, key: &BlobKey) -> Result<Vec<u8>> {
        self.runtime.block_on(async {
            let r = self.store.get(&Self::path(key)).await.map_err(os_err)?;
            Ok(r.bytes().await.map_err(os_err)?.to_vec())
        })
    }

    fn get_range(&self, key: &BlobKey, range: Range<u64>) -> Result<Vec<u8>> {
        if range.start > range.end {
            return Err(Error::InvalidArgument("reversed range".into()));
        }
        if range.start == range.end {
            return Ok(Vec::new());
        }
        let want = range.end - range.start;
        let bytes = self.runtime.block_on(self.store.get_range(&Self::path(key), range)).map_err(os_err)?;
        if bytes.len() as u64 != want {
            return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(bytes.to_vec())
    }

    fn size(&self, key: &BlobKey) -> Result<u64> {
        Ok(self.runtime.block_on(self.store.head(&Self::path(key))).map_err(os_err)?.size)
    }

    fn delete(&self, key: &BlobKey) -> Result<()> {
        match self.runtime.block_on(self.store.delete(&Self::path(key))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(os_err(e)),
        }
    }

    fn age(&self, key: &BlobKey) -> Result<Option<std::time::Duration>> {
        let meta = self.runtime.block_on(self.store.head(&Self::path(key))).map_err(os_err)?;
        let millis = u64::try_from(meta.last_modified.timestamp_millis()).unwrap_or(0);
        Ok(Some(age_of(std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis))))
    }

    fn list(&self, prefix: &str) -> Result<Vec<BlobKey>> {
        use futures_util::TryStreamExt;
        let p = (!prefix.is_empty()).then(|| object_store::path::Path::from(prefix.trim_end_matches('/')));
        let metas: Vec<object_store::ObjectMeta> =
            self.runtime.block_on(self.store.list(p.as_ref()).try_collect()).map_err(os_err)?;
        let mut keys: Vec<BlobKey> =
            metas.into_iter().filter_map(|m| BlobKey::new(m.location.to_string()).ok()).collect();
        keys.sort();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_store_contract_and_leftover_sweep() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalBlobStore::open(dir.path()).expect("open");
        let k = BlobKey::new("t/a/o/1").expect("key");
        store.put(&k, b"abc").expect("put");
        assert!(store.age(&k).expect("age").is_some());
        assert!(matches!(store.age(&BlobKey::new("t/a/o/2").expect("key")), Err(Error::NotFound { .. })));
        // A writer killed between create and rename leaves a .tmp file: invisible, then swept.
        std::fs::write(dir.path().join("t/a/o/1.deadbeef.tmp"), b"partial").expect("write");
        assert_eq!(store.list("").expect("list"), vec![k.clone()]);
        assert_eq!(store.sweep_incomplete(std::time::Duration::from_secs(3600)).expect("sweep"), 0);
        assert_eq!(store.sweep_incomplete(std::time::Duration::ZERO).expect("sweep"), 1);
        assert_eq!(store.get(&k).expect("get"), b"abc");
        assert!(BlobKey::new("x.tmp").is_err() && BlobKey::new("../x").is_err() && store.list("../").is_err());
    }
}
