//! Backups of the embedded default, and deletion that reaches them.
//!
//! A backup target is a blob store (`file:///path` or `s3://bucket`) holding:
//! - `objects/<sha-256>`: every object's ciphertext exactly as stored, content-addressed, so a
//!   backup copies only objects the target does not hold yet (blobs are write-once, so an object
//!   already in the previous snapshot is not even read again);
//! - `snapshots/<id>/meta`: a consistent copy of the metadata (SQLite's `VACUUM INTO`) with every
//!   wrapped key taken out, sealed under the root key;
//! - `snapshots/<id>/manifest`: the snapshot's objects and the metadata's digest, sealed under the
//!   root key (authenticated: a changed or swapped manifest does not open). It is written last, so
//!   a backup killed half-way leaves no snapshot, and every earlier one intact;
//! - `keys/<tenant>`: the tenant's wrapped keys (tenant key versions and key scopes), sealed under
//!   the root key, shared by every snapshot.
//!
//! The keys live apart from the snapshots so that deletion reaches every backup at once: closing
//! a tenant deletes its `keys/<tenant>` on every target it was backed up to, and shredding a key
//! scope (a corpus) rewrites it without that scope. A snapshot restored after that holds the
//! tenant's ciphertext and no key that opens it. A target that cannot be reached at that moment
//! is retried by every retention sweep, which also prunes snapshots older than
//! [`BACKUP_RETENTION`] and the objects no snapshot needs any more.
//!
//! Blobs stay ciphertext: nothing in a backup is plaintext customer data, and nothing in it opens
//! without the root key (which a backup never holds: keep it in the environment or a KMS).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::{Millis, millis};
use crate::core::{BlobLocation, Config, Core};
use crate::crypto::keys::KeyProvider;
use crate::error::{Error, Result};
use crate::ids::{TenantId, random_hex};
use crate::params;
use crate::store::{BlobKey, BlobStore, LocalBlobStore};

/// How long snapshots are kept (seed 000: "deletion is propagated to backups within 30 days").
pub const BACKUP_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

const MANIFEST_AAD: &str = "soramai backup manifest\0";
const META_AAD: &str = "soramai backup metadata\0";
const KEYRING_AAD: &str = "soramai backup keyring\0";
const FORMAT: u32 = 1;

/// What one backup did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupReport {
    /// The new snapshot's id.
    pub snapshot: String,
    /// Objects the snapshot holds.
    pub objects: usize,
    /// Objects copied to the target this time (the others were there already).
    pub copied: usize,
    /// Bytes copied.
    pub bytes_copied: u64,
}

/// A snapshot, as listed or verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// The id (its creation time first, so ids sort by age).
    pub id: String,
    /// When it was taken, Unix ms.
    pub created_at: Millis,
    /// Objects it holds.
    pub objects: usize,
    /// The tenants it holds.
    pub tenants: Vec<String>,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    /// The snapshot restored.
    pub snapshot: String,
    /// Objects written back.
    pub objects: usize,
    /// Tenants restored with their keys.
    pub tenants: usize,
    /// Tenants whose keys were destroyed after the snapshot (closed): restored as closed, with no
    /// data.
    pub shredded_tenants: usize,
    /// Objects left out because their key was shredded after the snapshot.
    pub shredded_objects: usize,
    /// Audit records verified, over every tenant's chain.
    pub audit_records: u64,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    id: String,
    created_at: Millis,
    meta_sha256: String,
    objects: Vec<ManifestObject>,
    tenants: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone)]
struct ManifestObject {
    blob: String,
    sha256: String,
    len: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct Keyring {
    tenant_keys: BTreeMap<u32, TenantKeyRow>,
    scope_keys: Vec<ScopeKeyRow>,
}

#[derive(Serialize, Deserialize, Clone)]
struct TenantKeyRow {
    state: String,
    wrapped: String,
    root_fingerprint: String,
    created_at: Millis,
}

#[derive(Serialize, Deserialize, Clone)]
struct ScopeKeyRow {
    scope: String,
    wrapped: String,
    tenant_key_version: u32,
    created_at: Millis,
}

fn key(s: String) -> Result<BlobKey> {
    BlobKey::new(s)
}

fn manifest_key(id: &str) -> Result<BlobKey> {
    key(format!("snapshots/{id}/manifest"))
}

fn meta_key(id: &str) -> Result<BlobKey> {
    key(format!("snapshots/{id}/meta"))
}

fn object_key(sha: &str) -> Result<BlobKey> {
    key(format!("objects/{sha}"))
}

fn keyring_key(tenant: &str) -> Result<BlobKey> {
    key(format!("keys/{tenant}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn seal(root: &dyn KeyProvider, label: &str, name: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    root.wrap(format!("{label}{name}").as_bytes(), bytes)
}

fn open(root: &dyn KeyProvider, label: &str, name: &str, sealed: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    root.unwrap(format!("{label}{name}").as_bytes(), sealed).map_err(|_| Error::Integrity)
}

/// Opens a backup target by URL: `file:///absolute/path` or `s3://bucket` (the `s3` feature,
/// `AWS_*` variables).
pub fn open_target(url: &str) -> Result<Arc<dyn BlobStore>> {
    match BlobLocation::parse(url)? {
        BlobLocation::File(root) => {
            std::fs::create_dir_all(&root)?;
            crate::store::blob::set_private_dir(&root)?;
            Ok(Arc::new(LocalBlobStore::open(root)?))
        }
        #[cfg(feature = "s3")]
        BlobLocation::S3(bucket) => Ok(crate::store::blob::s3_stores_from_env(&bucket)?.0),
        #[cfg(not(feature = "s3"))]
        BlobLocation::S3(_) => Err(Error::InvalidArgument("this build has no S3 support".into())),
    }
}

fn read_manifest(target: &dyn BlobStore, root: &dyn KeyProvider, id: &str) -> Result<Manifest> {
    let sealed = target.get(&manifest_key(id)?)?;
    let manifest: Manifest = serde_json::from_slice(&open(root, MANIFEST_AAD, id, &sealed)?)?;
    if manifest.format != FORMAT || manifest.id != id {
        return Err(Error::Integrity);
    }
    Ok(manifest)
}

/// The ids of the target's complete snapshots (those with a manifest), oldest first.
fn snapshot_ids(target: &dyn BlobStore) -> Result<Vec<String>> {
    let mut ids: Vec<String> = target
        .list("snapshots/")?
        .into_iter()
        .filter_map(|k| k.as_str().strip_prefix("snapshots/")?.strip_suffix("/manifest").map(str::to_owned))
        .collect();
    ids.sort();
    Ok(ids)
}

fn created_at_of(id: &str) -> Option<Millis> {
    id.split('-').next()?.parse().ok()
}

fn choose(target: &dyn BlobStore, root: &dyn KeyProvider, snapshot: Option<&str>) -> Result<Manifest> {
    let id = match snapshot {
        Some(id) => id.to_owned(),
        None => snapshot_ids(target)?.pop().ok_or(Error::NotFound { kind: "snapshot" })?,
    };
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(Error::NotFound { kind: "snapshot" });
    }
    match read_manifest(target, root, &id) {
        Err(Error::NotFound { .. }) => Err(Error::NotFound { kind: "snapshot" }),
        other => other,
    }
}

fn read_keyring(target: &dyn BlobStore, root: &dyn KeyProvider, tenant: &str) -> Result<Option<Keyring>> {
    match target.get(&keyring_key(tenant)?) {
        Ok(sealed) => Ok(Some(serde_json::from_slice(&open(root, KEYRING_AAD, tenant, &sealed)?)?)),
        Err(Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_keyring(target: &dyn BlobStore, root: &dyn KeyProvider, tenant: &str, ring: &Keyring) -> Result<()> {
    let json = zeroize::Zeroizing::new(serde_json::to_vec(ring)?);
    target.put(&keyring_key(tenant)?, &seal(root, KEYRING_AAD, tenant, &json)?)
}

/// The target's complete snapshots, oldest first.
pub fn list_snapshots(target: &dyn BlobStore, root: &dyn KeyProvider) -> Result<Vec<SnapshotInfo>> {
    snapshot_ids(target)?.into_iter().map(|id| read_manifest(target, root, &id).map(|m| info(&m))).collect()
}

fn info(m: &Manifest) -> SnapshotInfo {
    SnapshotInfo { id: m.id.clone(), created_at: m.created_at, objects: m.objects.len(), tenants: m.tenants.clone() }
}

/// Re-reads a snapshot (the latest when `snapshot` is `None`) and authenticates all of it: the
/// manifest and metadata open under the root key, every object is there with its digest, every
/// object's chunks authenticate under its tenant's restored keys (read straight from the target,
/// nothing copied), and every audit chain in the metadata verifies. A damaged manifest, metadata
/// or keyring is [`Error::Integrity`]; corrupt objects or broken chains are
/// [`Error::IntegrityFailures`] naming them. Only the metadata is staged, in a private scratch
/// directory under the system's temporary directory, removed afterwards.
pub fn verify_backup(
    target: &Arc<dyn BlobStore>,
    root: Arc<dyn KeyProvider>,
    snapshot: Option<&str>,
) -> Result<SnapshotInfo> {
    let m = choose(target.as_ref(), root.as_ref(), snapshot)?;
    let meta = check_snapshot(target.as_ref(), root.as_ref(), &m)?;
    let scratch = Staging::create(&std::env::temp_dir().join(format!("soramai-verify-{}", random_hex(8))))?;
    let view: Arc<SnapshotObjects> = Arc::new(SnapshotObjects {
        target: target.clone(),
        objects: m.objects.iter().map(|o| (o.blob.clone(), o.sha256.clone())).collect(),
    });
    let mut config = Config::new(scratch.path(), root.clone());
    config.blobs = Some(view.clone());
    config.dedicated = Some(view);
    let mut report = RestoreReport::empty(&m.id);
    stage_metadata(
        config.data_dir.as_path(),
        target.as_ref(),
        root.as_ref(),
        &m,
        &meta,
        config.clock.now(),
        &mut report,
    )?;
    let core = Core::open(config)?;
    core.check_integrity()?.into_result()?;
    Ok(info(&m))
}

/// Re-reads everything a snapshot holds; returns its opened metadata copy.
fn check_snapshot(target: &dyn BlobStore, root: &dyn KeyProvider, m: &Manifest) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let meta = open(root, META_AAD, &m.id, &target.get(&meta_key(&m.id)?)?)?;
    if sha256_hex(&meta) != m.meta_sha256 {
        return Err(Error::Integrity);
    }
    for o in &m.objects {
        let bytes = target.get(&object_key(&o.sha256)?).map_err(|_| Error::Integrity)?;
        if bytes.len() as u64 != o.len || sha256_hex(&bytes) != o.sha256 {
            return Err(Error::Integrity);
        }
    }
    for t in &m.tenants {
        read_keyring(target, root, t)?;
    }
    Ok(meta)
}

/// Restores a snapshot (the latest when `snapshot` is `None`) into `config`'s data directory,
/// which must be absent or empty, with `config.root` the root key the backup was taken under.
///
/// The whole snapshot is re-read first; then it is restored into a staging directory beside the
/// data directory, where every object is authenticated and every audit chain verified; only then
/// is the staging directory renamed into place. A restore that fails at any point (a damaged
/// snapshot, a corrupt object, a broken chain, a full disk) removes the staging directory and
/// leaves the data directory as it was. (With an external blob store in `config.blobs`, the
/// objects go straight to it: a failed restore leaves them unreferenced there, for the retention
/// sweep to collect.) A tenant closed after the snapshot comes back closed, with no data; objects
/// under a key scope shredded after it are left out.
pub fn restore_backup(target: &dyn BlobStore, snapshot: Option<&str>, config: Config) -> Result<(Core, RestoreReport)> {
    let root = config.root.clone();
    let m = choose(target, root.as_ref(), snapshot)?;
    let meta = check_snapshot(target, root.as_ref(), &m)?;
    let final_dir = config.data_dir.clone();
    if final_dir.exists() && std::fs::read_dir(&final_dir)?.next().is_some() {
        return Err(Error::AlreadyExists { kind: "data directory (restore into an absent or empty one)" });
    }
    let name = final_dir.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        Error::InvalidArgument("the data directory to restore into needs a final path component".into())
    })?;
    let staging = Staging::create(&final_dir.with_file_name(format!(".{name}.restoring-{}", random_hex(6))))?;
    let staged_config = match &config.blobs {
        // The embedded default: blobs and dedicated stores live in the staging directory too.
        None => Config {
            clock: config.clock.clone(),
            limits: config.limits.clone(),
            ..Config::new(staging.path(), root.clone())
        },
        Some(_) => Config { data_dir: staging.path().to_path_buf(), ..config.clone() },
    };
    let mut report = RestoreReport::empty(&m.id);
    let keep = stage_metadata(staging.path(), target, root.as_ref(), &m, &meta, config.clock.now(), &mut report)?;
    {
        let core = Core::open(staged_config)?;
        for o in m.objects.iter().filter(|o| keep.contains(&o.blob)) {
            let bytes = target.get(&object_key(&o.sha256)?)?;
            if sha256_hex(&bytes) != o.sha256 {
                return Err(Error::Integrity);
            }
            core.blobs().put(&BlobKey::new(o.blob.clone())?, &bytes)?;
            report.objects += 1;
        }
        let integrity = core.check_integrity()?.into_result()?;
        report.audit_records = integrity.audit_records;
    }
    staging.commit(&final_dir)?;
    Ok((Core::open(config)?, report))
}

impl RestoreReport {
    fn empty(snapshot: &str) -> Self {
        RestoreReport {
            snapshot: snapshot.to_owned(),
            objects: 0,
            tenants: 0,
            shredded_tenants: 0,
            shredded_objects: 0,
            audit_records: 0,
        }
    }
}

/// Writes a snapshot's metadata into the fresh directory `dir` and puts its keys back; returns
/// the blobs to restore.
fn stage_metadata(
    dir: &Path,
    target: &dyn BlobStore,
    root: &dyn KeyProvider,
    m: &Manifest,
    meta: &[u8],
    now: Millis,
    report: &mut RestoreReport,
) -> Result<BTreeSet<String>> {
    let db_path = dir.join("meta.sqlite3");
    write_private(&db_path, meta)?;
    restore_keys(&db_path, target, root, m, now, report)
}

/// A private directory that is removed, with everything in it, unless committed.
struct Staging {
    path: Option<PathBuf>,
}

impl Staging {
    fn create(path: &Path) -> Result<Self> {
        std::fs::create_dir(path)?;
        let staging = Staging { path: Some(path.to_path_buf()) };
        crate::store::blob::set_private_dir(path)?;
        Ok(staging)
    }

    fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Renames the staging directory to `to` (absent or an empty directory) and makes the rename
    /// durable.
    fn commit(mut self, to: &Path) -> Result<()> {
        let from = self.path.take().ok_or_else(|| Error::InvalidArgument("staging already committed".into()))?;
        let done = (|| {
            if to.exists() {
                std::fs::remove_dir(to)?;
            }
            std::fs::rename(&from, to)?;
            if let Some(parent) = to.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
            Ok(())
        })();
        if done.is_err() {
            let _ = std::fs::remove_dir_all(&from);
        }
        done
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// A snapshot's objects seen as the blob store they were backed up from (read-only): a blob key
/// reads its content-addressed copy in the target.
#[derive(Debug)]
struct SnapshotObjects {
    target: Arc<dyn BlobStore>,
    objects: HashMap<String, String>,
}

impl SnapshotObjects {
    fn key(&self, key: &BlobKey) -> Result<BlobKey> {
        let sha = self.objects.get(key.as_str()).ok_or(Error::NotFound { kind: "object" })?;
        object_key(sha)
    }
}

fn read_only() -> Error {
    Error::Io(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "a snapshot is read-only"))
}

impl BlobStore for SnapshotObjects {
    fn put(&self, _: &BlobKey, _: &[u8]) -> Result<()> {
        Err(read_only())
    }
    fn get(&self, key: &BlobKey) -> Result<Vec<u8>> {
        self.target.get(&self.key(key)?)
    }
    fn get_range(&self, key: &BlobKey, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        self.target.get_range(&self.key(key)?, range)
    }
    fn size(&self, key: &BlobKey) -> Result<u64> {
        self.target.size(&self.key(key)?)
    }
    fn delete(&self, _: &BlobKey) -> Result<()> {
        Err(read_only())
    }
    fn list(&self, prefix: &str) -> Result<Vec<BlobKey>> {
        self.objects.keys().filter(|k| k.starts_with(prefix)).map(|k| BlobKey::new(k.clone())).collect()
    }
    fn age(&self, _: &BlobKey) -> Result<Option<Duration>> {
        Ok(None)
    }
}

impl crate::store::StoreRouter for SnapshotObjects {
    fn dedicated_store(&self, _: &TenantId) -> Result<Arc<dyn BlobStore>> {
        Ok(Arc::new(SnapshotObjects { target: self.target.clone(), objects: self.objects.clone() }))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Puts each tenant's keys back from its keyring; a tenant without one (closed since) is closed
/// here too, and objects of shredded scopes are dropped. Returns the blobs to restore.
fn restore_keys(
    db_path: &Path,
    target: &dyn BlobStore,
    root: &dyn KeyProvider,
    m: &Manifest,
    now: Millis,
    report: &mut RestoreReport,
) -> Result<BTreeSet<String>> {
    let mut conn = rusqlite::Connection::open(db_path)?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    let tx = conn.transaction()?;
    for tenant in &m.tenants {
        match read_keyring(target, root, tenant)? {
            Some(ring) => {
                for (version, k) in &ring.tenant_keys {
                    let wrapped = hex::decode(&k.wrapped).map_err(|_| Error::Integrity)?;
                    // Only the versions the snapshot knows: a later one would be a second primary.
                    tx.execute(
                        "UPDATE tenant_keys SET wrapped = ?3 WHERE tenant_id = ?1 AND version = ?2",
                        rusqlite::params![tenant, version, wrapped],
                    )?;
                }
                for s in &ring.scope_keys {
                    let wrapped = hex::decode(&s.wrapped).map_err(|_| Error::Integrity)?;
                    tx.execute(
                        "INSERT INTO scope_keys (tenant_id, scope, wrapped, tenant_key_version, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                        rusqlite::params![tenant, s.scope, wrapped, s.tenant_key_version, s.created_at],
                    )?;
                }
                report.shredded_objects += tx.execute(
                    "DELETE FROM objects WHERE tenant_id = ?1 AND scope != ''
                     AND scope NOT IN (SELECT scope FROM scope_keys WHERE tenant_id = ?1)",
                    [tenant],
                )?;
                report.tenants += 1;
            }
            None => {
                // Closed after the snapshot: its keys are gone everywhere, so is its data.
                for table in [
                    "objects",
                    "datasets",
                    "secrets",
                    "fine_tuned_models",
                    "custom_models",
                    "scope_keys",
                    "access_grants",
                    "members",
                    "invitations",
                    "sso_configs",
                    "sso_logins",
                ] {
                    tx.execute(&format!("DELETE FROM {table} WHERE tenant_id = ?1"), [tenant])?;
                }
                tx.execute("DELETE FROM tenant_keys WHERE tenant_id = ?1", [tenant])?;
                tx.execute(
                    "UPDATE api_keys SET revoked_at = ?2 WHERE tenant_id = ?1 AND revoked_at IS NULL",
                    rusqlite::params![tenant, now],
                )?;
                tx.execute(
                    "UPDATE tenants SET status = 'deleted', deleted_at = ?2 WHERE id = ?1",
                    rusqlite::params![tenant, now],
                )?;
                report.shredded_tenants += 1;
            }
        }
    }
    let mut keep = BTreeSet::new();
    {
        let mut st = tx.prepare("SELECT blob FROM objects")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        for b in rows {
            keep.insert(b?);
        }
    }
    tx.commit()?;
    Ok(keep)
}

/// Removes a file when dropped (the metadata copy of a backup under way).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

type KeyRows = HashMap<String, Keyring>;

/// An object as the metadata copy names it: what a backup authenticates before copying it.
struct SnapshotObject {
    blob: String,
    tenant: String,
    path: String,
    scope: String,
}

impl Core {
    /// Takes a snapshot into the target at `url` (`file:///path` or `s3://bucket`) and registers
    /// the target, so that closing a tenant or shredding a key scope reaches it. Incremental:
    /// only objects the target lacks are copied.
    pub fn backup(&self, url: &str) -> Result<BackupReport> {
        let target = open_target(url)?;
        let report = self.backup_into(target.as_ref())?;
        // Registered once a snapshot is there (a closure during this backup was caught by its
        // own check after writing each keyring).
        let now = self.now();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO backup_targets (url, added_at) VALUES (?1, ?2) ON CONFLICT (url) DO NOTHING",
                params![url, now],
            )?;
            Ok(())
        })?;
        Ok(report)
    }

    /// Takes a snapshot into a target store (see [`Core::backup`]; a target given this way is not
    /// registered for deletion to reach).
    pub fn backup_into(&self, target: &dyn BlobStore) -> Result<BackupReport> {
        let now = self.now();
        // Ids sort by age: the time, then the target's count of snapshots (two in one millisecond).
        let id = format!("{now:013}-{:06}-{}", snapshot_ids(target)?.len(), random_hex(4));
        let copy = Scratch(self.scratch_root().join(format!("backup-{id}.sqlite3")));
        self.snapshot_metadata(&copy.0)?;
        let (blobs, tenants, mut rings) = strip_keys(&copy.0)?;
        let meta = zeroize::Zeroizing::new(std::fs::read(&copy.0)?);
        drop(copy);

        // Objects: those of the previous snapshot are known by blob key (blobs are write-once).
        let known: HashMap<String, ManifestObject> = match snapshot_ids(target)?.pop() {
            Some(prev) => read_manifest(target, self.root_key(), &prev)?
                .objects
                .into_iter()
                .map(|o| (o.blob.clone(), o))
                .collect(),
            None => HashMap::new(),
        };
        let mut report = BackupReport { snapshot: id.clone(), objects: blobs.len(), copied: 0, bytes_copied: 0 };
        // Every object copied is authenticated first, and every audit chain verified: a corrupt
        // one is reported (logged, audited, named in the error) and no snapshot is written.
        let mut integrity = crate::integrity::IntegrityReport::default();
        for tenant in &tenants {
            integrity.add_chain(self, &TenantId::new(tenant.clone())?)?;
        }
        let mut objects = Vec::with_capacity(blobs.len());
        for o in blobs {
            if let Some(known) = known.get(&o.blob)
                && target.size(&object_key(&known.sha256)?).is_ok()
            {
                objects.push(known.clone());
                continue;
            }
            let key = BlobKey::new(o.blob.clone())?;
            let (tenant, path) = (TenantId::new(o.tenant.clone())?, crate::ids::ObjectPath::new(o.path.clone())?);
            let bytes = match self.authenticate_sealed(&tenant, &path, &o.scope, &key, self.blobs().get(&key)?) {
                Ok(bytes) => bytes,
                Err(Error::Integrity) => {
                    integrity
                        .corrupt_objects
                        .push(crate::integrity::CorruptObject { tenant: o.tenant, object: o.path });
                    continue;
                }
                // A customer-held key not loaded: copied as stored (its tags were checked when it
                // was written, and are checked again whenever it is read).
                Err(Error::TenantLocked) => self.blobs().get(&key)?,
                Err(e) => return Err(e),
            };
            integrity.objects_checked += 1;
            let sha = sha256_hex(&bytes);
            let at = object_key(&sha)?;
            if target.size(&at).is_err() {
                target.put(&at, &bytes)?;
                report.copied += 1;
                report.bytes_copied += bytes.len() as u64;
            }
            objects.push(ManifestObject { blob: o.blob, sha256: sha, len: bytes.len() as u64 });
        }
        integrity.into_result()?;

        // Keys: each tenant's ring keeps the versions earlier snapshots need, and exactly the live
        // key scopes (a shredded scope is gone from every snapshot).
        for tenant in &tenants {
            let mut ring = read_keyring(target, self.root_key(), tenant)?.unwrap_or_default();
            let live = rings.remove(tenant).unwrap_or_default();
            ring.tenant_keys.extend(live.tenant_keys);
            ring.scope_keys = live.scope_keys;
            write_keyring(target, self.root_key(), tenant, &ring)?;
            // A closure or shred that committed while this backup ran must win: checked after the
            // write, so one that commits later finds the ring written and removes it itself.
            let id = TenantId::new(tenant.clone())?;
            match self.tenant(&id) {
                Err(Error::NotFound { .. }) => target.delete(&keyring_key(tenant)?)?,
                Err(e) => return Err(e),
                Ok(_) => {
                    let live = self.live_scopes(tenant)?;
                    if ring.scope_keys.iter().any(|s| !live.contains(&s.scope)) {
                        ring.scope_keys.retain(|s| live.contains(&s.scope));
                        write_keyring(target, self.root_key(), tenant, &ring)?;
                    }
                }
            }
        }

        let manifest = Manifest {
            format: FORMAT,
            id: id.clone(),
            created_at: now,
            meta_sha256: sha256_hex(&meta),
            objects,
            tenants,
        };
        target.put(&meta_key(&id)?, &seal(self.root_key(), META_AAD, &id, &meta)?)?;
        let json = serde_json::to_vec(&manifest)?;
        // Last: until the manifest is there, the snapshot does not exist.
        target.put(&manifest_key(&id)?, &seal(self.root_key(), MANIFEST_AAD, &id, &json)?)?;
        Ok(report)
    }

    fn live_scopes(&self, tenant: &str) -> Result<BTreeSet<String>> {
        let scopes: Vec<String> =
            self.read(|c| c.query_map("SELECT scope FROM scope_keys WHERE tenant_id = ?1", [tenant], |r| r.get(0)))?;
        Ok(scopes.into_iter().collect())
    }

    /// The registered backup targets.
    pub fn backup_targets(&self) -> Result<Vec<String>> {
        self.read(|c| c.query_map("SELECT url FROM backup_targets ORDER BY url", (), |r| r.get(0)))
    }

    /// Makes a deletion reach every registered target: `tenant` closed (its keyring deleted) or a
    /// key scope of it shredded (its keyring rewritten from the live keys). A target that fails
    /// is remembered and retried by [`Core::sweep_backups`].
    pub(crate) fn propagate_to_backups(&self, tenant: &TenantId, closed: bool) -> Result<()> {
        let kind = if closed { "closed" } else { "scope" };
        let now = self.now();
        self.write(|tx| {
            for url in tx.query_map("SELECT url FROM backup_targets", (), |r| r.get::<String>(0))? {
                tx.execute(
                    "INSERT INTO backup_pending (url, tenant_id, kind, at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (url, tenant_id, kind) DO NOTHING",
                    params![url, tenant.as_str(), kind, now],
                )?;
            }
            Ok(())
        })?;
        self.apply_pending_backup_deletions()?;
        Ok(())
    }

    /// Applies the deletions not yet made on their targets; returns how many were made.
    fn apply_pending_backup_deletions(&self) -> Result<usize> {
        let pending: Vec<(String, String, String)> = self.read(|c| {
            c.query_map("SELECT url, tenant_id, kind FROM backup_pending ORDER BY at", (), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
        })?;
        let mut done = 0;
        for (url, tenant, kind) in pending {
            let applied = open_target(&url).and_then(|target| {
                if kind == "closed" {
                    match target.delete(&keyring_key(&tenant)?) {
                        Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
                        Err(e) => Err(e),
                    }
                } else {
                    let Some(mut ring) = read_keyring(target.as_ref(), self.root_key(), &tenant)? else {
                        return Ok(());
                    };
                    let live = self.live_scopes(&tenant)?;
                    ring.scope_keys.retain(|s| live.contains(&s.scope));
                    write_keyring(target.as_ref(), self.root_key(), &tenant, &ring)
                }
            });
            if applied.is_ok() {
                self.write(|tx| {
                    tx.execute(
                        "DELETE FROM backup_pending WHERE url = ?1 AND tenant_id = ?2 AND kind = ?3",
                        params![url, tenant, kind],
                    )?;
                    Ok(())
                })?;
                done += 1;
            }
        }
        Ok(done)
    }

    /// The backup part of the retention sweep: retries deletions that had not reached a target,
    /// deletes snapshots older than [`BACKUP_RETENTION`] on every registered target and then the
    /// objects no remaining snapshot holds. Returns how many snapshots were pruned.
    pub fn sweep_backups(&self) -> Result<usize> {
        self.apply_pending_backup_deletions()?;
        let cutoff = self.now() - millis(BACKUP_RETENTION);
        let mut pruned = 0;
        for url in self.backup_targets()? {
            let Ok(target) = open_target(&url) else { continue };
            pruned += prune(target.as_ref(), self.root_key(), cutoff)?;
        }
        Ok(pruned)
    }
}

/// Deletes the target's snapshots taken before `cutoff`, then every object no snapshot left
/// holds. Returns how many snapshots went.
pub fn prune(target: &dyn BlobStore, root: &dyn KeyProvider, cutoff: Millis) -> Result<usize> {
    let ids = snapshot_ids(target)?;
    let mut pruned = 0;
    let mut referenced = BTreeSet::new();
    for id in &ids {
        if created_at_of(id).is_some_and(|t| t < cutoff) {
            // The manifest first: from then on the snapshot does not exist.
            target.delete(&manifest_key(id)?)?;
            let _ = target.delete(&meta_key(id)?);
            pruned += 1;
        } else {
            referenced.extend(read_manifest(target, root, id)?.objects.into_iter().map(|o| o.sha256));
        }
    }
    if pruned > 0 {
        for k in target.list("objects/")? {
            let sha = k.as_str().trim_start_matches("objects/");
            // An object younger than an hour may belong to a backup under way.
            let settled = matches!(target.age(&k), Ok(Some(age)) if age >= Duration::from_secs(3600));
            if !referenced.contains(sha) && settled {
                target.delete(&k)?;
            }
        }
        // Metadata copies whose manifest never got written (a backup killed half-way).
        for k in target.list("snapshots/")? {
            if let Some(id) = k.as_str().strip_prefix("snapshots/").and_then(|r| r.strip_suffix("/meta"))
                && !ids.iter().any(|i| i == id)
                && created_at_of(id).is_some_and(|t| t < cutoff)
            {
                target.delete(&k)?;
            }
        }
    }
    Ok(pruned)
}

/// Reads the objects, tenants and key rows of a metadata copy, then takes every wrapped key out
/// of it (and compacts it, so no free page keeps one).
fn strip_keys(path: &Path) -> Result<(Vec<SnapshotObject>, Vec<String>, KeyRows)> {
    let conn = rusqlite::Connection::open(path)?;
    let mut blobs = Vec::new();
    {
        let mut st = conn.prepare("SELECT blob, tenant_id, path, scope FROM objects ORDER BY blob")?;
        let rows = st.query_map([], |r| {
            Ok(SnapshotObject { blob: r.get(0)?, tenant: r.get(1)?, path: r.get(2)?, scope: r.get(3)? })
        })?;
        for o in rows {
            blobs.push(o?);
        }
    }
    let mut tenants = Vec::new();
    {
        let mut st = conn.prepare("SELECT id FROM tenants WHERE status = 'active' ORDER BY id")?;
        for t in st.query_map([], |r| r.get::<_, String>(0))? {
            tenants.push(t?);
        }
    }
    let mut rings: KeyRows = HashMap::new();
    {
        let mut st = conn.prepare(
            "SELECT tenant_id, version, state, wrapped, root_fingerprint, created_at FROM tenant_keys WHERE wrapped IS NOT NULL",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Millis>(5)?,
            ))
        })?;
        for row in rows {
            let (tenant, version, state, wrapped, root_fingerprint, created_at) = row?;
            let k = TenantKeyRow { state, wrapped: hex::encode(wrapped), root_fingerprint, created_at };
            rings.entry(tenant).or_default().tenant_keys.insert(version, k);
        }
        let mut st =
            conn.prepare("SELECT tenant_id, scope, wrapped, tenant_key_version, created_at FROM scope_keys")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, u32>(3)?,
                r.get::<_, Millis>(4)?,
            ))
        })?;
        for row in rows {
            let (tenant, scope, wrapped, tenant_key_version, created_at) = row?;
            let s = ScopeKeyRow { scope, wrapped: hex::encode(wrapped), tenant_key_version, created_at };
            rings.entry(tenant).or_default().scope_keys.push(s);
        }
    }
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.execute_batch("UPDATE tenant_keys SET wrapped = NULL; DELETE FROM scope_keys; VACUUM;")?;
    drop(conn);
    Ok((blobs, tenants, rings))
}
