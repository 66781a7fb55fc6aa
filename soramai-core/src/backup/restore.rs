//! Reading a snapshot back: verifying one whole without restoring it, and restoring one into an
//! empty data directory (staged, checked object by object, then moved into place, or nothing).

use super::*;

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
