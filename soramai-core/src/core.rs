//! [`Core`]: one handle on a data directory — tenants, tenant keys and encrypted objects. The other
//! capabilities (keys, datasets, vault, jobs, audit, metering, retention) extend it in their modules.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::params;
use crate::store::{Db, OptionalExt as _, Row};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::audit::{self, Action, Actor, AuditKey};
use crate::clock::{Clock, Millis, SystemClock};
use crate::crypto::chunked::{RandomAccess, ReadAt};
use crate::crypto::envelope;
use crate::crypto::keys::{KEY_LEN, KeyProvider, LocalRootKey, TenantKey, random_bytes};
use crate::error::{Error, Result};
use crate::ids::{ObjectPath, TenantId, random_hex};
use crate::store::blob::set_private_dir;
use crate::store::routed::RoutedBlobStore;
use crate::store::{BlobKey, BlobStore, DedicatedDirectories, LocalBlobStore, MetaStore, StoreRouter};
use crate::tier::Tier;

/// Size limits applied to customer input.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest dataset upload, in bytes.
    pub max_dataset_bytes: u64,
    /// Longest dataset line, in bytes.
    pub max_dataset_line_bytes: usize,
    /// Largest vault secret, in bytes.
    pub max_secret_bytes: usize,
    /// Largest customer GGUF upload (Pro and up), in bytes.
    pub max_custom_model_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_dataset_bytes: 512 << 20,
            max_dataset_line_bytes: 1 << 20,
            max_secret_bytes: 64 << 10,
            max_custom_model_bytes: 16 << 30,
        }
    }
}

/// Where the metadata (ids, states, counters, hashes, wrapped keys; never content) lives.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Database {
    /// SQLite in `<data_dir>/meta.sqlite3`: the embedded default, for one node.
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by several nodes, by connection string
    /// (`postgres://user:password@host:5432/db`, or `host=… user=… dbname=…`). Needs the
    /// `postgres` feature.
    Postgres(String),
}

impl fmt::Debug for Database {
    // The connection string can hold a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite => f.write_str("Sqlite"),
            Database::Postgres(_) => f.write_str("Postgres(..)"),
        }
    }
}

impl Database {
    /// Parses a database URL: `sqlite` (the embedded default), or a `postgres://` or
    /// `postgresql://` connection string; connects to nothing.
    pub fn from_url(url: &str) -> Result<Self> {
        let url = url.trim();
        if url.is_empty() || url == "sqlite" {
            Ok(Database::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            if !cfg!(feature = "postgres") {
                return Err(Error::InvalidArgument(
                    "this build has no PostgreSQL support (the `postgres` feature of soramai-core)".into(),
                ));
            }
            Ok(Database::Postgres(url.to_owned()))
        } else {
            Err(Error::InvalidArgument(
                "the database URL must be `sqlite` or start with postgres:// or postgresql://".into(),
            ))
        }
    }

    fn open(&self, data_dir: &Path) -> Result<MetaStore> {
        match self {
            Database::Sqlite => {
                let meta_path = data_dir.join("meta.sqlite3");
                let meta = MetaStore::open(&meta_path)?;
                for suffix in ["", "-wal", "-shm"] {
                    let f = PathBuf::from(format!("{}{suffix}", meta_path.display()));
                    if f.exists() {
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))?;
                    }
                }
                Ok(meta)
            }
            #[cfg(feature = "postgres")]
            Database::Postgres(url) => MetaStore::connect_postgres(url),
            #[cfg(not(feature = "postgres"))]
            Database::Postgres(_) => Err(Error::InvalidArgument(
                "this build has no PostgreSQL support (the `postgres` feature of soramai-core)".into(),
            )),
        }
    }
}

/// How to open a [`Core`].
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory (created with mode 0700): the SQLite database and local blobs when
    /// those are the choice, and scratch space for jobs.
    pub data_dir: PathBuf,
    /// The metadata database.
    pub database: Database,
    /// The root key provider.
    pub root: Arc<dyn KeyProvider>,
    /// The shared blob store; `None` uses `<data_dir>/blobs`. When you set it to an object store
    /// for several nodes, set [`Config::dedicated`] too: its default keeps dedicated stores in
    /// local directories under the data directory.
    pub blobs: Option<Arc<dyn BlobStore>>,
    /// Where tenants whose tier calls for a dedicated store (Pro and up) keep their blobs; `None`
    /// keeps every tenant on the shared store.
    pub dedicated: Option<Arc<dyn StoreRouter>>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Input size limits.
    pub limits: Limits,
}

impl Config {
    /// The embedded default: SQLite and local blobs in `data_dir`, and the root key from the
    /// `SORAMAI_ROOT_KEY` environment variable (64 hex digits) when set, else from
    /// `<data_dir>/root.key` (mode 0600, created on first use). Production deployments should keep
    /// the root key off the data disk (environment, KMS or Vault).
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Result<Self> {
        let data_dir = data_dir.into();
        std::fs::create_dir_all(&data_dir)?;
        set_private_dir(&data_dir)?;
        let root: Arc<dyn KeyProvider> = if std::env::var_os("SORAMAI_ROOT_KEY").is_some() {
            Arc::new(LocalRootKey::from_env("SORAMAI_ROOT_KEY")?)
        } else {
            Arc::new(LocalRootKey::open_or_create_file(&data_dir.join("root.key"))?)
        };
        Ok(Self::new(data_dir, root))
    }

    /// A config with the given directory and root: local shared blobs in `<data_dir>/blobs`,
    /// dedicated stores in `<data_dir>/dedicated/<tenant>/`, the system clock, default limits.
    pub fn new(data_dir: impl Into<PathBuf>, root: Arc<dyn KeyProvider>) -> Self {
        let data_dir = data_dir.into();
        let dedicated: Arc<dyn StoreRouter> = Arc::new(DedicatedDirectories::new(data_dir.join("dedicated")));
        Self {
            data_dir,
            database: Database::Sqlite,
            root,
            blobs: None,
            dedicated: Some(dedicated),
            clock: Arc::new(SystemClock),
            limits: Limits::default(),
        }
    }
}

/// Where the blobs of several nodes live, parsed from a URL before anything is opened:
/// - `file:///mnt/shared`: a shared volume, with the shared store in `blobs/` and each
///   dedicated store in `dedicated/<tenant>/` under it;
/// - `s3://bucket` (the `s3` feature): an S3 or S3-compatible bucket, configured from the
///   `AWS_*` environment variables, with each dedicated store under a `dedicated/<tenant>/`
///   prefix of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobLocation {
    /// A shared volume at this absolute path.
    File(PathBuf),
    /// An S3 bucket.
    S3(String),
}

impl BlobLocation {
    /// Parses `file:///absolute/path` or `s3://bucket`; touches nothing.
    pub fn parse(url: &str) -> Result<Self> {
        if let Some(path) = url.strip_prefix("file://") {
            let root = PathBuf::from(path);
            if !root.is_absolute() {
                return Err(Error::InvalidArgument("a file:// blob store needs an absolute path".into()));
            }
            return Ok(BlobLocation::File(root));
        }
        if let Some(bucket) = url.strip_prefix("s3://") {
            let bucket = bucket.trim_end_matches('/');
            if bucket.is_empty() || bucket.contains('/') {
                return Err(Error::InvalidArgument("an s3:// blob store names one bucket: s3://bucket".into()));
            }
            if !cfg!(feature = "s3") {
                return Err(Error::InvalidArgument(
                    "this build has no S3 support (the `s3` feature of soramai-core)".into(),
                ));
            }
            return Ok(BlobLocation::S3(bucket.to_owned()));
        }
        Err(Error::InvalidArgument("the blob store URL must start with file:// or s3://".into()))
    }
}

impl Config {
    /// Puts the blobs in a store that several nodes share, by URL (see [`BlobLocation`]).
    pub fn with_blob_url(self, url: &str) -> Result<Self> {
        self.with_blobs_at(&BlobLocation::parse(url)?)
    }

    /// Puts the blobs in a store that several nodes share.
    pub fn with_blobs_at(mut self, location: &BlobLocation) -> Result<Self> {
        match location {
            BlobLocation::File(root) => {
                std::fs::create_dir_all(root)?;
                set_private_dir(root)?;
                self.blobs = Some(Arc::new(LocalBlobStore::open(root.join("blobs"))?));
                self.dedicated = Some(Arc::new(DedicatedDirectories::new(root.join("dedicated"))));
                Ok(self)
            }
            BlobLocation::S3(bucket) => self.with_s3(bucket),
        }
    }

    #[cfg(feature = "s3")]
    fn with_s3(mut self, bucket: &str) -> Result<Self> {
        let (shared, dedicated) = crate::store::blob::s3_stores_from_env(bucket)?;
        self.blobs = Some(shared);
        self.dedicated = Some(dedicated);
        Ok(self)
    }

    #[cfg(not(feature = "s3"))]
    fn with_s3(self, _bucket: &str) -> Result<Self> {
        Err(Error::InvalidArgument("this build has no S3 support (the `s3` feature of soramai-core)".into()))
    }
}

/// A tenant's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    /// In service.
    Active,
    /// Closed: keys destroyed, data purged.
    Deleted,
}

/// Who holds the root key that wraps a tenant's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyCustody {
    /// The platform's root key.
    Operator,
    /// A key only the customer holds (Enterprise); the operator cannot decrypt without it.
    Customer,
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    /// The id.
    pub id: TenantId,
    /// The plan.
    pub tier: Tier,
    /// Active or deleted.
    pub status: TenantStatus,
    /// Who holds the wrapping root key.
    pub key_custody: KeyCustody,
    /// Whether its blobs live on the shared store or a dedicated one.
    pub store: StorePlacement,
    /// Creation time, Unix milliseconds.
    pub created_at: Millis,
}

/// Where a tenant's blobs live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorePlacement {
    /// The store shared by tenants (each tenant's data under its own key).
    Shared,
    /// A store of the tenant's own.
    Dedicated,
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

/// The security core over one data directory. Cheap to share behind an `Arc`; every method is safe
/// to call from many threads.
pub struct Core {
    pub(crate) meta: MetaStore,
    pub(crate) blobs: Arc<dyn BlobStore>,
    routes: Arc<RoutedBlobStore>,
    dedicated: Option<Arc<dyn StoreRouter>>,
    pub(crate) root: Arc<dyn KeyProvider>,
    customer_roots: RwLock<HashMap<TenantId, Arc<dyn KeyProvider>>>,
    key_cache: RwLock<HashMap<(TenantId, u32), TenantKey>>,
    pub(crate) audit_key: AuditKey,
    pub(crate) clock: Arc<dyn Clock>,
    data_dir: PathBuf,
    pub(crate) limits: Limits,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core").field("data_dir", &self.data_dir).field("blobs", &self.blobs).finish_non_exhaustive()
    }
}

const AUDIT_KEY_AAD: &[u8] = b"soramai system key\0audit";

type TenantRow = (String, String, String, String, Millis, String);

fn tenant_from_row(r: &Row) -> Result<TenantRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

fn parse_tenant(row: TenantRow) -> Result<Tenant> {
    let (id, tier, status, custody, created_at, store) = row;
    Ok(Tenant {
        id: TenantId::new(id)?,
        tier: tier.parse()?,
        status: if status == "active" { TenantStatus::Active } else { TenantStatus::Deleted },
        key_custody: if custody == "customer" { KeyCustody::Customer } else { KeyCustody::Operator },
        store: if store == "dedicated" { StorePlacement::Dedicated } else { StorePlacement::Shared },
        created_at,
    })
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
        Ok(self.inner.read_range(offset, len)?)
    }
    /// An opaque id of this stored version of the object: a new write of the same path gets a
    /// new one, so it can key caches of decrypted chunks.
    pub fn version_id(&self) -> &str {
        self.inner.source().key.as_str()
    }

    /// Decrypts chunk `index` of the object (16 KiB plaintext chunks).
    pub fn chunk(&self, index: u64) -> Result<Zeroizing<Vec<u8>>> {
        Ok(self.inner.chunk(index)?)
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
    /// Opens (creating if needed) a data directory.
    pub fn open(config: Config) -> Result<Self> {
        std::fs::create_dir_all(&config.data_dir)?;
        set_private_dir(&config.data_dir)?;
        let meta = config.database.open(&config.data_dir)?;
        let shared: Arc<dyn BlobStore> = match config.blobs {
            Some(b) => b,
            None => Arc::new(LocalBlobStore::open(config.data_dir.join("blobs"))?),
        };
        let routes = Arc::new(RoutedBlobStore::new(shared));
        let dedicated_tenants: Vec<String> = meta.read(|c| {
            let rows =
                c.query_map("SELECT id FROM tenants WHERE store = 'dedicated' AND status = 'active'", (), |r| {
                    r.get(0)
                })?;
            Ok(rows)
        })?;
        for t in dedicated_tenants {
            let router = config.dedicated.as_ref().ok_or_else(|| {
                Error::InvalidArgument(
                    "this data directory has tenants on dedicated stores: configure `Config::dedicated`".into(),
                )
            })?;
            let id = TenantId::new(t)?;
            routes.assign(&id, Some(router.dedicated_store(&id)?));
        }
        let audit_key = Self::system_key(&meta, config.root.as_ref())?;
        std::fs::create_dir_all(config.data_dir.join("scratch"))?;
        set_private_dir(&config.data_dir.join("scratch"))?;
        Ok(Self {
            meta,
            blobs: routes.clone(),
            routes,
            dedicated: config.dedicated,
            root: config.root,
            customer_roots: RwLock::new(HashMap::new()),
            key_cache: RwLock::new(HashMap::new()),
            audit_key,
            clock: config.clock,
            data_dir: config.data_dir,
            limits: config.limits,
        })
    }

    /// Opens the embedded default in `data_dir` (see [`Config::embedded`]).
    pub fn open_embedded(data_dir: impl Into<PathBuf>) -> Result<Self> {
        Self::open(Config::embedded(data_dir)?)
    }

    fn system_key(meta: &MetaStore, root: &dyn KeyProvider) -> Result<AuditKey> {
        let stored = |meta: &MetaStore| -> Result<Option<Vec<u8>>> {
            meta.read(|c| {
                c.query_row("SELECT wrapped FROM system_keys WHERE name = 'audit'", (), |r| r.get(0)).optional()
            })
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
        self.clock.now()
    }

    pub(crate) fn scratch_root(&self) -> PathBuf {
        self.data_dir.join("scratch")
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
        let now = self.now();
        self.meta.write(|tx| {
            let entry = audit::Entry { actor, action, target, detail };
            audit::append(tx, &self.audit_key, tenant, now, entry)
        })
    }

    pub(crate) fn audit_tx(
        &self,
        tx: &Db<'_>,
        tenant: &TenantId,
        actor: &Actor,
        action: Action,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<()> {
        let entry = audit::Entry { actor, action, target, detail };
        audit::append(tx, &self.audit_key, tenant, self.now(), entry)
    }

    // ---- tenants ----------------------------------------------------------------------------

    /// Creates a tenant whose keys the operator's root wraps. Enterprise tenants need a
    /// customer-held key: use [`Core::create_tenant_with_customer_key`].
    pub fn create_tenant(&self, id: &TenantId, tier: Tier) -> Result<Tenant> {
        self.create_tenant_by(&Actor::Operator, id, tier)
    }

    /// [`Core::create_tenant`], recorded in the tenant's audit log as done by `actor` (a
    /// platform admin's key, [`Principal::as_operator`](crate::Principal::as_operator)).
    pub fn create_tenant_by(&self, actor: &Actor, id: &TenantId, tier: Tier) -> Result<Tenant> {
        if tier.policy().customer_held_root_key {
            return Err(Error::NotAllowed { tier, what: "creating the tenant without a customer-held root key" });
        }
        self.insert_tenant(actor, id, tier, KeyCustody::Operator, self.root.clone())
    }

    /// Creates a tenant whose keys are wrapped by a key the customer holds. The operator stores only
    /// the wrapped keys; after a restart the tenant's data stays unreadable until
    /// [`Core::unlock_tenant`] is given the customer's key again.
    pub fn create_tenant_with_customer_key(
        &self,
        id: &TenantId,
        tier: Tier,
        customer_root: Arc<dyn KeyProvider>,
    ) -> Result<Tenant> {
        let t = self.insert_tenant(&Actor::Operator, id, tier, KeyCustody::Customer, customer_root.clone())?;
        self.write_lock_roots().insert(id.clone(), customer_root);
        Ok(t)
    }

    fn write_lock_roots(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<TenantId, Arc<dyn KeyProvider>>> {
        self.customer_roots.write().unwrap_or_else(|e| e.into_inner())
    }

    fn insert_tenant(
        &self,
        actor: &Actor,
        id: &TenantId,
        tier: Tier,
        custody: KeyCustody,
        root: Arc<dyn KeyProvider>,
    ) -> Result<Tenant> {
        let now = self.now();
        let key = TenantKey::generate(1);
        let wrapped = key.wrap(root.as_ref(), id)?;
        let dedicated = self.dedicated_store_for(id, tier)?;
        let placement = if dedicated.is_some() { "dedicated" } else { "shared" };
        self.meta.write(|tx| {
            let exists: bool = tx
                .query_row("SELECT 1 FROM tenants WHERE id = ?1", [id.as_str()], |_| Ok(true))
                .optional()?
                .unwrap_or(false);
            if exists {
                return Err(Error::AlreadyExists { kind: "tenant" });
            }
            let custody_s = if custody == KeyCustody::Customer { "customer" } else { "operator" };
            tx.execute(
                "INSERT INTO tenants (id, tier, status, key_custody, created_at, store) VALUES (?1, ?2, 'active', ?3, ?4, ?5)",
                params![id.as_str(), tier.as_str(), custody_s, now, placement],
            )?;
            tx.execute(
                "INSERT INTO tenant_keys (tenant_id, version, state, wrapped, root_fingerprint, created_at)
                 VALUES (?1, 1, 'primary', ?2, ?3, ?4)",
                params![id.as_str(), wrapped, root.fingerprint(), now],
            )?;
            self.audit_tx(
                tx,
                id,
                actor,
                Action::TenantCreated,
                id.as_str(),
                serde_json::json!({"tier": tier.as_str(), "key_custody": custody_s, "store": placement}),
            )
        })?;
        self.cache_key(id, key);
        let store = if dedicated.is_some() { StorePlacement::Dedicated } else { StorePlacement::Shared };
        self.routes.assign(id, dedicated);
        Ok(Tenant { id: id.clone(), tier, status: TenantStatus::Active, key_custody: custody, store, created_at: now })
    }

    /// The dedicated store a tenant of `tier` gets, or `None` for the shared store.
    fn dedicated_store_for(&self, id: &TenantId, tier: Tier) -> Result<Option<Arc<dyn BlobStore>>> {
        match &self.dedicated {
            Some(router) if tier.policy().rag == crate::tier::RagIsolation::DedicatedStore => {
                Ok(Some(router.dedicated_store(id)?))
            }
            _ => Ok(None),
        }
    }

    /// Supplies the customer-held root key of an Enterprise tenant (checked against the stored
    /// wrapped keys) so its data can be read and written until the process exits.
    pub fn unlock_tenant(&self, id: &TenantId, customer_root: Arc<dyn KeyProvider>) -> Result<()> {
        let t = self.tenant(id)?;
        if t.key_custody != KeyCustody::Customer {
            return Err(Error::InvalidArgument("the tenant's keys are not customer-held".into()));
        }
        let version = self.primary_version(id)?;
        let wrapped = self.wrapped_key(id, version)?;
        let key =
            TenantKey::unwrap(customer_root.as_ref(), id, version, &wrapped).map_err(|_| Error::Unauthenticated)?;
        self.cache_key(id, key);
        self.write_lock_roots().insert(id.clone(), customer_root);
        self.audit(id, &Actor::Operator, Action::TenantUnlocked, id.as_str(), serde_json::json!({}))
    }

    /// An active tenant. A deleted or unknown tenant is [`Error::NotFound`].
    pub fn tenant(&self, id: &TenantId) -> Result<Tenant> {
        let row = self.meta.read(|c| {
            c.query_row(
                "SELECT id, tier, status, key_custody, created_at, store FROM tenants WHERE id = ?1 AND status = 'active'",
                [id.as_str()],
                tenant_from_row,
            )
            .optional()
        })?;
        parse_tenant(row.ok_or(Error::NotFound { kind: "tenant" })?)
    }

    /// All active tenants.
    pub fn tenants(&self) -> Result<Vec<Tenant>> {
        let rows = self.meta.read(|c| {
            let rows = c.query_map("SELECT id, tier, status, key_custody, created_at, store FROM tenants WHERE status = 'active' ORDER BY id", (), tenant_from_row)?;
            Ok(rows)
        })?;
        rows.into_iter().map(parse_tenant).collect()
    }

    /// Changes a tenant's tier (audited). Moving to Enterprise needs customer-held keys.
    pub fn set_tier(&self, id: &TenantId, tier: Tier) -> Result<Tenant> {
        self.set_tier_by(&Actor::Operator, id, tier)
    }

    /// [`Core::set_tier`], recorded in the tenant's audit log as done by `actor`.
    pub fn set_tier_by(&self, actor: &Actor, id: &TenantId, tier: Tier) -> Result<Tenant> {
        let t = self.tenant(id)?;
        if tier.policy().customer_held_root_key && t.key_custody != KeyCustody::Customer {
            return Err(Error::NotAllowed { tier, what: "moving a tenant with operator-held keys to Enterprise" });
        }
        // A change of placement moves the tenant's ciphertext to its new store first (copies, no
        // decryption), then switches in one transaction, then removes the old copies.
        let target = self.dedicated_store_for(id, tier)?;
        let new_placement = if target.is_some() { StorePlacement::Dedicated } else { StorePlacement::Shared };
        let from = self.routes.store_for(id);
        let moved = if new_placement != t.store {
            let to = target.clone().unwrap_or_else(|| self.routes.shared());
            let keys = from.list(&format!("t/{}/", id.as_str()))?;
            for k in &keys {
                to.put(k, &from.get(k)?)?;
            }
            Some(keys)
        } else {
            None
        };
        let placement = if new_placement == StorePlacement::Dedicated { "dedicated" } else { "shared" };
        self.meta.write(|tx| {
            tx.execute(
                "UPDATE tenants SET tier = ?2, store = ?3 WHERE id = ?1",
                params![id.as_str(), tier.as_str(), placement],
            )?;
            self.audit_tx(
                tx,
                id,
                actor,
                Action::TierChanged,
                id.as_str(),
                serde_json::json!({"from": t.tier.as_str(), "to": tier.as_str(), "store": placement}),
            )
        })?;
        if let Some(keys) = moved {
            self.routes.assign(id, target);
            for k in &keys {
                from.delete(k)?;
            }
        }
        Ok(Tenant { tier, store: new_placement, ..t })
    }

    /// Closes a tenant: destroys every version of its keys (crypto-shredding all its data wherever
    /// copies of the ciphertext live), revokes its API keys, cancels its jobs, deletes its metadata
    /// and usage logs, and purges its blobs. Billing records stay (7 years); the audit log keeps a
    /// record of the closure. Irreversible.
    pub fn delete_tenant(&self, id: &TenantId) -> Result<()> {
        self.tenant(id)?;
        let now = self.now();
        let blobs: Vec<String> = self.meta.write(|tx| {
            let blobs: Vec<String> =
                { tx.query_map("SELECT blob FROM objects WHERE tenant_id = ?1", [id.as_str()], |r| r.get(0))? };
            tx.execute("DELETE FROM tenant_keys WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM scope_keys WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM objects WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM datasets WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM secrets WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM fine_tuned_models WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM custom_models WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM members WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM invitations WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM sso_configs WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM sso_logins WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM access_grants WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM tenant_closures WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE tenant_id = ?1 AND revoked_at IS NULL",
                params![id.as_str(), now],
            )?;
            tx.execute(
                "DELETE FROM job_events WHERE job_id IN (SELECT id FROM jobs WHERE tenant_id = ?1)",
                [id.as_str()],
            )?;
            tx.execute("DELETE FROM jobs WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM usage_events WHERE tenant_id = ?1", [id.as_str()])?;
            tx.execute(
                "UPDATE tenants SET status = 'deleted', deleted_at = ?2 WHERE id = ?1",
                params![id.as_str(), now],
            )?;
            self.audit_tx(
                tx,
                id,
                &Actor::Operator,
                Action::TenantDeleted,
                id.as_str(),
                serde_json::json!({"objects_purged": blobs.len()}),
            )?;
            Ok(blobs)
        })?;
        {
            let mut cache = self.key_cache.write().unwrap_or_else(|e| e.into_inner());
            cache.retain(|(t, _), _| t != id);
        }
        self.write_lock_roots().remove(id);
        self.meta.checkpoint()?;
        for b in blobs {
            if let Ok(k) = BlobKey::new(b) {
                self.blobs.delete(&k)?;
            }
        }
        // Anything else under the tenant's prefix (orphans of interrupted writes) goes too.
        for k in self.blobs.list(&format!("t/{}/", id.as_str()))? {
            self.blobs.delete(&k)?;
        }
        // And its keys leave every backup target, so no snapshot opens its data again.
        self.propagate_to_backups(id, true)
    }

    // ---- tenant keys ------------------------------------------------------------------------

    fn cache_key(&self, tenant: &TenantId, key: TenantKey) {
        let mut cache = self.key_cache.write().unwrap_or_else(|e| e.into_inner());
        cache.insert((tenant.clone(), key.version()), key);
    }

    fn primary_version(&self, tenant: &TenantId) -> Result<u32> {
        self.meta
            .read(|c| {
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

    fn wrapped_key(&self, tenant: &TenantId, version: u32) -> Result<Vec<u8>> {
        self.meta
            .read(|c| {
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
        let custody: Option<String> = self.meta.read(|c| {
            c.query_row("SELECT key_custody FROM tenants WHERE id = ?1 AND status = 'active'", [tenant.as_str()], |r| {
                r.get(0)
            })
            .optional()
        })?;
        match custody.as_deref() {
            None => Err(Error::NotFound { kind: "tenant" }),
            Some("customer") => self
                .customer_roots
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(tenant)
                .cloned()
                .ok_or(Error::TenantLocked),
            Some(_) => Ok(self.root.clone()),
        }
    }

    /// Version `version` of the tenant's key.
    pub(crate) fn tenant_key(&self, tenant: &TenantId, version: u32) -> Result<TenantKey> {
        if let Some(k) = self.key_cache.read().unwrap_or_else(|e| e.into_inner()).get(&(tenant.clone(), version)) {
            return Ok(k.clone());
        }
        let root = self.root_for(tenant)?;
        let wrapped = self.wrapped_key(tenant, version)?;
        let key = TenantKey::unwrap(root.as_ref(), tenant, version, &wrapped)?;
        self.cache_key(tenant, key.clone());
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
        let scopes: Vec<(String, Vec<u8>, u32)> = self.meta.read(|c| {
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
        let version = self.meta.write(|tx| {
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
            self.cache_key(tenant, key.clone());
            Ok(key.version())
        })?;
        Ok(version)
    }

    /// Rewrites every object sealed under an older key version with the primary one (the rewrap
    /// job of a rotation). Returns how many objects were rewritten.
    pub fn rewrap_tenant_objects(&self, tenant: &TenantId) -> Result<usize> {
        let primary = self.primary_version(tenant)?;
        let stale: Vec<String> = self.meta.read(|c| {
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
        self.audit(
            tenant,
            &Actor::System,
            Action::TenantKeysRewrapped,
            tenant.as_str(),
            serde_json::json!({"objects": stale.len(), "version": primary}),
        )?;
        Ok(stale.len())
    }

    /// Destroys every non-primary key version no object uses any more. Returns the versions retired.
    pub fn retire_tenant_keys(&self, tenant: &TenantId) -> Result<Vec<u32>> {
        let retired = self.meta.write(|tx| {
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
        let mut cache = self.key_cache.write().unwrap_or_else(|e| e.into_inner());
        for v in &retired {
            cache.remove(&(tenant.clone(), *v));
        }
        drop(cache);
        self.meta.checkpoint()?;
        Ok(retired)
    }

    // ---- encrypted objects ------------------------------------------------------------------

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
        sealer.finish()?.commit(self.blobs.as_ref())?;
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
        let committed = self.meta.write(|tx| {
            let old = self.commit_object(tx, tenant, path, staged)?;
            Ok((extra(tx)?, old))
        });
        match committed {
            Ok((out, old)) => {
                if let Some(old) = old {
                    self.blobs.delete(&old)?;
                }
                Ok(out)
            }
            Err(e) => {
                let _ = self.blobs.delete(&staged.blob);
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
        let out = self.blobs.put_stream(&blob)?;
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
        let row: Option<(String, Vec<u8>, u32)> = self.meta.read(|c| {
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
        self.meta.write(|tx| {
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
        let blobs: Vec<String> = self.meta.write(|tx| {
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
        self.meta.checkpoint()?;
        for b in &blobs {
            if let Ok(k) = BlobKey::new(b.clone()) {
                self.blobs.delete(&k)?;
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
        let row: Option<(String, u32, u64, String)> = self.meta.read(|c| {
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
        let sealed = self.blobs.get(&blob)?;
        let key = self.key_for_object(tenant, path, &scope, envelope::key_version(&sealed)?)?;
        Ok(envelope::open_owned(&key, tenant, path, sealed)?)
    }

    /// Opens an object for random-access reads.
    pub fn open_object(&self, tenant: &TenantId, path: &ObjectPath) -> Result<ObjectReader> {
        let (blob, _, scope) = self.object_row_scoped(tenant, path)?;
        let len = self.blobs.size(&blob)?;
        let source = BlobSource { blobs: self.blobs.clone(), key: blob, len };
        let mut prefix = [0u8; envelope::PREFIX_LEN];
        source.read_exact_at(&mut prefix, 0).map_err(|_| Error::Integrity)?;
        let key = self.key_for_object(tenant, path, &scope, envelope::key_version(&prefix)?)?;
        Ok(ObjectReader { inner: envelope::open_random_access(&key, tenant, path, source)? })
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
        self.meta.write(|tx| {
            tx.execute(
                "DELETE FROM objects WHERE tenant_id = ?1 AND path = ?2",
                params![tenant.as_str(), path.as_str()],
            )?;
            extra(tx)
        })?;
        self.blobs.delete(&blob)
    }

    /// Lists the tenant's objects whose path starts with `prefix`.
    pub fn list_objects(&self, tenant: &TenantId, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.tenant(tenant)?;
        self.meta.read(|c| {
            let rows = c.query_map("SELECT path, plaintext_len, key_version FROM objects WHERE tenant_id = ?1 AND substr(path, 1, length(CAST(?2 AS TEXT))) = CAST(?2 AS TEXT) ORDER BY path", params![tenant.as_str(), prefix], |r| Ok(ObjectInfo { path: r.get(0)?, len: r.get(1)?, key_version: r.get(2)? }))?;
            Ok(rows)
        })
    }

    /// Deletes blobs that no metadata row references (left by a crash between a blob write and its
    /// commit) and leftovers of interrupted writes. Only what is older than `min_age` is touched,
    /// and a blob whose age the store cannot tell is kept, so in-flight writes are safe.
    pub fn collect_orphan_blobs(&self, min_age: std::time::Duration) -> Result<usize> {
        let mut removed = self.blobs.sweep_incomplete(min_age)?;
        let listed = self.blobs.list("t/")?;
        let referenced: std::collections::HashSet<String> = self
            .meta
            .read(|c| Ok(c.query_map("SELECT blob FROM objects", (), |r| r.get::<String>(0))?.into_iter().collect()))?;
        for key in listed {
            if referenced.contains(key.as_str()) {
                continue;
            }
            let old_enough = match self.blobs.age(&key) {
                Ok(Some(age)) => age >= min_age,
                Ok(None) => false,
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            if old_enough {
                self.blobs.delete(&key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
