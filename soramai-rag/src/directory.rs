//! [`EncryptedDirectory`]: a tantivy `Directory` whose every file is an encrypted object of
//! `soramai-core` (Cobblestone-256 under the tenant's key, bound to the tenant and the file's path).
//!
//! - Reads go through [`ChunkCache`], a bounded cache of decrypted 16 KiB chunks keyed by the
//!   object's version id and chunk index: encryption bypasses the OS page cache, so without it every
//!   posting-list read would decrypt again. A range read decrypts only the chunks it touches, after
//!   the file's length was authenticated on open.
//! - Writes are write-once: `open_write` refuses an existing file; the data is sealed chunk by
//!   chunk into a fresh blob as tantivy writes it and committed atomically at `terminate`, so a
//!   crash before it leaves no file at all.
//! - `atomic_write` replaces a file in one metadata transaction (readers see the old or the new
//!   `meta.json`, never a mix) and wakes the `watch` callbacks.
//! - Locks are `flock`s on files under `<data dir>/locks/`: one writer per index across processes
//!   on one machine, released by the kernel if the holder dies.
//!
//! Integrity failures surface as I/O errors of kind `InvalidData`, which the layer above turns into
//! [`crate::Error::Integrity`]; they never yield wrong bytes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use soramai_core::{Core, Error as CoreError, ObjectPath, ObjectReader, ObjectWriter, TenantId};
use tantivy::HasLen;
use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    AntiCallToken, Directory, DirectoryLock, FileHandle, Lock, OwnedBytes, TerminatingWrite, WatchCallback,
    WatchCallbackList, WatchHandle, WritePtr,
};
use zeroize::Zeroizing;

/// Plaintext bytes per encrypted chunk (the C2SP chunk size).
const CHUNK: usize = soramai_core::crypto::chunked::CHUNK_SIZE;

/// A bounded cache of decrypted chunks, shared by every file of every directory that holds it.
pub struct ChunkCache {
    capacity_bytes: usize,
    state: Mutex<CacheState>,
}

/// (object version id, chunk index).
type ChunkKey = (Arc<str>, u64);
/// A decrypted chunk, wiped when the last reader lets go of it.
type PlainChunk = Arc<Zeroizing<Vec<u8>>>;

#[derive(Default)]
struct CacheState {
    map: HashMap<ChunkKey, PlainChunk>,
    order: VecDeque<ChunkKey>,
    bytes: usize,
    hits: u64,
    misses: u64,
}

impl fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("ChunkCache")
            .field("capacity_bytes", &self.capacity_bytes)
            .field("bytes", &s.bytes)
            .field("hits", &s.hits)
            .field("misses", &s.misses)
            .finish()
    }
}

impl ChunkCache {
    /// A cache holding at most `capacity_bytes` of plaintext.
    pub fn new(capacity_bytes: usize) -> Self {
        Self { capacity_bytes, state: Mutex::new(CacheState::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (hits, misses) so far.
    pub fn stats(&self) -> (u64, u64) {
        let s = self.lock();
        (s.hits, s.misses)
    }

    fn get_or_load(
        &self,
        file: &Arc<str>,
        index: u64,
        load: impl FnOnce() -> Result<Zeroizing<Vec<u8>>, CoreError>,
    ) -> Result<PlainChunk, CoreError> {
        let key = (file.clone(), index);
        {
            let mut s = self.lock();
            if let Some(chunk) = s.map.get(&key).cloned() {
                s.hits += 1;
                return Ok(chunk);
            }
            s.misses += 1;
        }
        // Decrypt outside the lock so readers of other chunks proceed in parallel.
        let chunk = Arc::new(load()?);
        let mut s = self.lock();
        if !s.map.contains_key(&key) {
            s.bytes += chunk.len();
            s.map.insert(key.clone(), chunk.clone());
            s.order.push_back(key);
            while s.bytes > self.capacity_bytes {
                let Some(old) = s.order.pop_front() else {
                    break;
                };
                if let Some(evicted) = s.map.remove(&old) {
                    s.bytes -= evicted.len();
                }
            }
        }
        Ok(chunk)
    }
}

fn integrity_io(e: CoreError) -> io::Error {
    match e {
        CoreError::Integrity => io::Error::new(io::ErrorKind::InvalidData, "integrity check failed"),
        CoreError::Io(io) => io,
        other => io::Error::other(other),
    }
}

/// One open encrypted file.
struct EncryptedFile {
    reader: ObjectReader,
    id: Arc<str>,
    cache: Arc<ChunkCache>,
    len: usize,
}

impl fmt::Debug for EncryptedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedFile").field("len", &self.len).finish()
    }
}

impl HasLen for EncryptedFile {
    fn len(&self) -> usize {
        self.len
    }
}

impl EncryptedFile {
    fn chunk(&self, index: u64) -> io::Result<PlainChunk> {
        self.cache.get_or_load(&self.id, index, || self.reader.chunk(index)).map_err(integrity_io)
    }
}

impl FileHandle for EncryptedFile {
    fn read_bytes(&self, range: Range<usize>) -> io::Result<OwnedBytes> {
        if range.start > range.end || range.end > self.len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the file"));
        }
        if range.is_empty() {
            return Ok(OwnedBytes::empty());
        }
        let first = range.start / CHUNK;
        let last = (range.end - 1) / CHUNK;
        let mut out = Vec::with_capacity(range.len());
        for index in first..=last {
            let chunk = self.chunk(index as u64)?;
            let base = index * CHUNK;
            let from = range.start.saturating_sub(base);
            let to = (range.end - base).min(chunk.len());
            out.extend_from_slice(chunk.get(from..to).ok_or(io::ErrorKind::InvalidData)?);
        }
        Ok(OwnedBytes::new(out))
    }
}

struct Shared {
    core: Arc<Core>,
    tenant: TenantId,
    prefix: String,
    cache: Arc<ChunkCache>,
    pending: Mutex<HashSet<PathBuf>>,
    watchers: WatchCallbackList,
}

/// A tantivy directory stored as encrypted objects under `prefix` in one tenant's space.
#[derive(Clone)]
pub struct EncryptedDirectory {
    shared: Arc<Shared>,
}

impl fmt::Debug for EncryptedDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedDirectory")
            .field("tenant", &self.shared.tenant)
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

/// A held lock: an exclusive `flock` on a file under `<data dir>/locks/`, released when dropped or
/// when the process dies (so a crash never leaves a stale lock). The lock file holds nothing.
struct LockGuard(#[allow(dead_code)] std::fs::File);

/// A file being written: sealed chunk by chunk into a new blob as tantivy writes (memory stays
/// at one chunk), committed at `terminate`; dropped unterminated, it leaves nothing.
struct EncryptedWriter {
    dir: EncryptedDirectory,
    path: PathBuf,
    object: Option<ObjectWriter>,
}

impl Write for EncryptedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.object.as_mut().ok_or_else(|| io::Error::other("write after terminate"))?.write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TerminatingWrite for EncryptedWriter {
    fn terminate_ref(&mut self, _: AntiCallToken) -> io::Result<()> {
        let Some(object) = self.object.take() else {
            return Ok(());
        };
        let result = self.dir.shared.core.finish_object(object).map(|_| ()).map_err(integrity_io);
        self.dir.pending().remove(&self.path);
        result
    }
}

impl Drop for EncryptedWriter {
    fn drop(&mut self) {
        if self.object.take().is_some() {
            self.dir.pending().remove(&self.path);
        }
    }
}

impl EncryptedDirectory {
    /// A directory over `tenant`'s objects under `prefix` (a valid object path), reading through
    /// `cache`.
    pub fn new(core: Arc<Core>, tenant: TenantId, prefix: &str, cache: Arc<ChunkCache>) -> Result<Self, CoreError> {
        ObjectPath::new(prefix)?;
        Ok(Self {
            shared: Arc::new(Shared {
                core,
                tenant,
                prefix: prefix.to_string(),
                cache,
                pending: Mutex::new(HashSet::new()),
                watchers: WatchCallbackList::default(),
            }),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashSet<PathBuf>> {
        self.shared.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The object path of a tantivy file name (a single path segment).
    fn object(&self, path: &Path) -> io::Result<ObjectPath> {
        let name = path
            .to_str()
            .filter(|n| !n.contains('/'))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "unsupported file name"))?;
        ObjectPath::new(format!("{}/{name}", self.shared.prefix))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "unsupported file name"))
    }

    fn read_error(path: &Path, e: CoreError) -> OpenReadError {
        match e {
            CoreError::NotFound { .. } => OpenReadError::FileDoesNotExist(path.to_path_buf()),
            other => OpenReadError::wrap_io_error(integrity_io(other), path.to_path_buf()),
        }
    }
}

impl Directory for EncryptedDirectory {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        let object = self.object(path).map_err(|e| OpenReadError::wrap_io_error(e, path.to_path_buf()))?;
        let s = &self.shared;
        let reader = s.core.open_object(&s.tenant, &object).map_err(|e| Self::read_error(path, e))?;
        let len = usize::try_from(reader.len())
            .map_err(|_| OpenReadError::wrap_io_error(io::ErrorKind::InvalidData.into(), path.to_path_buf()))?;
        let id: Arc<str> = Arc::from(reader.version_id());
        Ok(Arc::new(EncryptedFile { reader, id, cache: s.cache.clone(), len }))
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        let object = self
            .object(path)
            .map_err(|e| DeleteError::IoError { io_error: Arc::new(e), filepath: path.to_path_buf() })?;
        let s = &self.shared;
        s.core.delete_object(&s.tenant, &object).map_err(|e| match e {
            CoreError::NotFound { .. } => DeleteError::FileDoesNotExist(path.to_path_buf()),
            other => DeleteError::IoError { io_error: Arc::new(integrity_io(other)), filepath: path.to_path_buf() },
        })
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        if self.pending().contains(path) {
            return Ok(true);
        }
        let object = self.object(path).map_err(|e| OpenReadError::wrap_io_error(e, path.to_path_buf()))?;
        let s = &self.shared;
        match s.core.object_info(&s.tenant, &object) {
            Ok(_) => Ok(true),
            Err(CoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(Self::read_error(path, e)),
        }
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        let io_err = |e: io::Error| OpenWriteError::IoError { io_error: Arc::new(e), filepath: path.to_path_buf() };
        let object = self.object(path).map_err(io_err)?;
        if self.exists(path).map_err(|e| io_err(io::Error::other(e)))? {
            return Err(OpenWriteError::FileAlreadyExists(path.to_path_buf()));
        }
        if !self.pending().insert(path.to_path_buf()) {
            return Err(OpenWriteError::FileAlreadyExists(path.to_path_buf()));
        }
        let s = &self.shared;
        let object = match s.core.object_writer(&s.tenant, &object) {
            Ok(w) => w,
            Err(e) => {
                self.pending().remove(path);
                return Err(io_err(integrity_io(e)));
            }
        };
        let writer = EncryptedWriter { dir: self.clone(), path: path.to_path_buf(), object: Some(object) };
        Ok(io::BufWriter::with_capacity(64 << 10, Box::new(writer)))
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        let object = self.object(path).map_err(|e| OpenReadError::wrap_io_error(e, path.to_path_buf()))?;
        let s = &self.shared;
        let data = s.core.get_object(&s.tenant, &object).map_err(|e| Self::read_error(path, e))?;
        Ok(data.to_vec())
    }

    fn atomic_write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let object = self.object(path)?;
        let s = &self.shared;
        s.core.put_object(&s.tenant, &object, data).map_err(integrity_io)?;
        if path == Path::new("meta.json") {
            // Reloading readers is best effort: the commit itself is already durable.
            drop(s.watchers.broadcast());
        }
        Ok(())
    }

    fn sync_directory(&self) -> io::Result<()> {
        // Every terminated file and atomic write is already durable (fsync'd blob, committed
        // metadata), so there is nothing left to flush.
        Ok(())
    }

    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        let s = &self.shared;
        let name = lock.filepath.to_str().filter(|n| !n.contains('/')).ok_or(LockError::LockBusy)?;
        let dir = s.core.data_dir().join("locks").join(s.tenant.as_str()).join(s.prefix.replace('/', "_"));
        let io = |e: io::Error| LockError::IoError(Arc::new(e));
        std::fs::create_dir_all(&dir).map_err(io)?;
        let file =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(name)).map_err(io)?;
        let attempts = if lock.is_blocking { 100 } else { 1 };
        for attempt in 0..attempts {
            match file.try_lock() {
                Ok(()) => return Ok(DirectoryLock::from(Box::new(LockGuard(file)))),
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
            }
            if attempt + 1 < attempts {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        Err(LockError::LockBusy)
    }

    fn watch(&self, watch_callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        Ok(self.shared.watchers.subscribe(watch_callback))
    }
}
