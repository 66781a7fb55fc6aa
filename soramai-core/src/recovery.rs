//! Startup recovery: what a crash leaves behind is removed when a node starts. A blob write killed
//! half-way leaves a `.tmp` file, a crash between a blob's write and its commit leaves a blob no
//! row references, and a job whose worker died leaves its scratch directory (a backup its metadata
//! copy). Only what no live writer can still own is touched: a `.tmp` file or an unreferenced
//! blob untouched for [`STALE_AFTER`] (the server cuts an upload idle for a minute), and a job's
//! scratch directory unless its job is running under an unexpired lease. Names written before
//! names were sealed are sealed too.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::core::Core;
use crate::error::Result;
use crate::params;

/// How long a blob or a scratch file must have gone untouched before startup recovery removes
/// it: longer than any live writer pauses (an embedding application must not hold an
/// [`ObjectWriter`](crate::ObjectWriter) idle longer).
pub const STALE_AFTER: Duration = Duration::from_secs(15 * 60);

/// What startup recovery removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    /// Half-written blobs and blobs no metadata references.
    pub blobs: usize,
    /// Scratch directories of jobs that no longer run, and leftover scratch files.
    pub scratch_entries: usize,
    /// File and key names written before names were sealed, sealed now.
    pub names_sealed: usize,
}

impl Core {
    /// Removes what a crash left behind (see the module's doc); call it when a node starts.
    pub fn recover_after_restart(&self) -> Result<RecoveryReport> {
        let blobs = self.collect_orphan_blobs(STALE_AFTER)?;
        let scratch_entries = self.sweep_scratch(&self.scratch_root(), STALE_AFTER)?;
        let names_sealed = self.seal_legacy_names()?;
        let report = RecoveryReport { blobs, scratch_entries, names_sealed };
        tracing::info!(
            target: "soramai::recovery",
            blobs = report.blobs,
            scratch_entries = report.scratch_entries,
            names_sealed = report.names_sealed,
            "startup recovery removed what a crash left behind"
        );
        Ok(report)
    }

    /// Removes the scratch entries under `root` that no live job owns.
    fn sweep_scratch(&self, root: &Path, stale_after: Duration) -> Result<usize> {
        let now = self.now();
        let live: Vec<(String, u64)> = self.read(|c| {
            c.query_map(
                "SELECT id, attempts FROM jobs WHERE state = 'running' AND lease_expires_at >= ?1",
                params![now],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })?;
        let live: std::collections::HashSet<String> =
            live.into_iter().map(|(id, attempts)| format!("{id}-{attempts}")).collect();
        let mut removed = 0;
        let entries = match std::fs::read_dir(root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            let is_job_dir = meta.is_dir() && name.starts_with("job-");
            let stale = meta
                .modified()
                .ok()
                .and_then(|m| std::time::SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age >= stale_after);
            // A job's directory goes as soon as its job is not running under a live lease; anything
            // else once it is stale.
            if (is_job_dir && !live.contains(&name)) || (!is_job_dir && stale) {
                if meta.is_dir() {
                    std::fs::remove_dir_all(entry.path())?;
                } else {
                    std::fs::remove_file(entry.path())?;
                }
                removed += 1;
            }
        }
        Ok(removed)
    }
}
