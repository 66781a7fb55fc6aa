//! Backups of a platform's data: the operator's tools, run by whoever holds the root key (a backup
//! never holds it). A snapshot is sealed object by object and verified before anything is restored.
//! Targets are URLs: `file:///path` or, with the `s3` feature, `s3://bucket/prefix`.

use std::path::Path;
use std::sync::Arc;

pub use soramai_core::backup::{BACKUP_RETENTION, BackupReport, RestoreReport, SnapshotInfo};
use soramai_core::{Config, Core, KeyProvider, LocalRootKey};

use crate::PlatformError;

type Result<T> = std::result::Result<T, PlatformError>;

/// Takes a snapshot of the embedded platform in `data_dir` into the target at `to`.
pub fn backup(data_dir: &Path, to: &str) -> Result<BackupReport> {
    Ok(Core::open_embedded(data_dir)?.backup(to)?)
}

/// The snapshots at a target, oldest first.
pub fn list_snapshots(from: &str, root: &LocalRootKey) -> Result<Vec<SnapshotInfo>> {
    let target = soramai_core::backup::open_target(from)?;
    Ok(soramai_core::backup::list_snapshots(target.as_ref(), root)?)
}

/// Reads a snapshot (the newest without `snapshot`) whole and checks every object against its
/// manifest, without restoring anything.
pub fn verify_backup(from: &str, root: LocalRootKey, snapshot: Option<&str>) -> Result<SnapshotInfo> {
    let target = soramai_core::backup::open_target(from)?;
    let root: Arc<dyn KeyProvider> = Arc::new(root);
    Ok(soramai_core::backup::verify_backup(&target, root, snapshot)?)
}

/// Restores a snapshot (the newest without `snapshot`) into the empty `data_dir`, which then
/// opens as an embedded platform under the same root key.
pub fn restore_backup(
    from: &str,
    data_dir: &Path,
    snapshot: Option<&str>,
    root: LocalRootKey,
) -> Result<RestoreReport> {
    let target = soramai_core::backup::open_target(from)?;
    let config = Config::new(data_dir, Arc::new(root));
    let (core, report) = soramai_core::backup::restore_backup(target.as_ref(), snapshot, config)?;
    drop(core);
    Ok(report)
}
