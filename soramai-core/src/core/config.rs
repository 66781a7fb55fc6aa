//! How a [`Core`](super::Core) is opened: where its metadata and blobs live, its root key, clock
//! and input limits.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::clock::{Clock, SystemClock};
use crate::crypto::keys::{KeyProvider, LocalRootKey};
use crate::error::{Error, Result};
use crate::store::blob::set_private_dir;
use crate::store::{BlobStore, DedicatedDirectories, LocalBlobStore, MetaStore, StoreRouter};

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

    pub(super) fn open(&self, data_dir: &Path) -> Result<MetaStore> {
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

/// How to open a [`Core`](super::Core).
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
