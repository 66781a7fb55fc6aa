//! The retention sweep: inference (usage) logs and job events live 90 days; billing records 7
//! years; a closed tenant's audit trail 90 days after closure; orphaned blobs of interrupted writes
//! are collected. Datasets and artifacts live until deleted (deletion and closure act at once).

use std::time::Duration;

use crate::params;
use serde::Serialize;

use crate::clock::millis;
use crate::core::Core;
use crate::error::Result;
use crate::tier::Tier;

/// What one sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Usage (inference log) rows deleted.
    pub usage_events: usize,
    /// Job events deleted.
    pub job_events: usize,
    /// Access-log entries deleted (90 days).
    pub access_log: usize,
    /// Ledger rows past billing retention deleted.
    pub ledger_entries: usize,
    /// Audit records of closed tenants deleted.
    pub audit_records: usize,
    /// Orphaned blobs deleted.
    pub orphan_blobs: usize,
    /// Break-glass access grants that ran out (recorded in both audit logs).
    pub access_grants_expired: usize,
    /// Backup snapshots older than 30 days deleted from the registered targets.
    pub backups_pruned: usize,
    /// Closed accounts whose window ended, purged.
    pub tenants_closed: usize,
}

impl Core {
    /// Applies the retention rules as of now.
    pub fn sweep_retention(&self) -> Result<SweepReport> {
        let now = self.now();
        // These retentions are the same on every tier (seed 000: logs 90 days, billing 7 years).
        let policy = Tier::Free.policy();
        let log_cutoff = now - millis(policy.log_retention);
        let billing_cutoff = now - millis(policy.billing_retention);
        let mut report = self.write(|tx| {
            let usage_events = tx.execute("DELETE FROM usage_events WHERE at < ?1", [log_cutoff])?;
            let job_events = tx.execute("DELETE FROM job_events WHERE at < ?1", [log_cutoff])?;
            let access_cutoff = now - millis(policy.access_log_retention);
            let access_log = tx.execute("DELETE FROM access_log WHERE at < ?1", [access_cutoff])?;
            let ledger_entries = tx.execute("DELETE FROM ledger WHERE at < ?1", [billing_cutoff])?;
            let audit_records = tx.execute(
                "DELETE FROM audit_log WHERE tenant_id IN (SELECT id FROM tenants WHERE status = 'deleted' AND deleted_at < ?1)",
                params![log_cutoff],
            )?;
            tx.execute(
                "DELETE FROM audit_heads WHERE tenant_id IN (SELECT id FROM tenants WHERE status = 'deleted' AND deleted_at < ?1)",
                params![log_cutoff],
            )?;
            Ok(SweepReport { usage_events, job_events, access_log, ledger_entries, audit_records, ..SweepReport::default() })
        })?;
        report.orphan_blobs = self.collect_orphan_blobs(Duration::from_secs(3600))?;
        report.access_grants_expired = self.expire_access_grants()?;
        report.tenants_closed = self.purge_closed_tenants()?;
        report.backups_pruned = self.sweep_backups()?;
        Ok(report)
    }
}
