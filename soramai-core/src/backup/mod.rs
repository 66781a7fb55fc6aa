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

mod restore;

pub use restore::{restore_backup, verify_backup};

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
