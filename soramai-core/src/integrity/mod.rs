//! Whole-store integrity checks: every object's authentication tags and every tenant's audit
//! chain, as a report that names what failed. Backups authenticate what they copy with the same
//! checks, and a restore runs them on its staging directory before anything takes its place.

use crate::core::Core;
use crate::error::{Error, Result};
use crate::ids::{ObjectPath, TenantId};

pub(crate) mod report;

pub use report::{BrokenChain, CorruptObject, IntegrityReport};

impl IntegrityReport {
    /// `Ok` when clean, else the typed error carrying this report.
    pub fn into_result(self) -> Result<Self> {
        if self.is_clean() { Ok(self) } else { Err(Error::IntegrityFailures(Box::new(self))) }
    }

    /// Checks one tenant's audit chain into the report (a broken one is logged and audited).
    pub(crate) fn add_chain(&mut self, core: &Core, tenant: &TenantId) -> Result<()> {
        let check = core.check_audit(tenant)?;
        self.audit_records += check.records;
        if let Some(first_bad_record) = check.first_bad_record {
            self.broken_audit_chains.push(BrokenChain {
                tenant: tenant.as_str().to_owned(),
                first_bad_record,
                reason: check.reason.unwrap_or_default().to_owned(),
            });
        }
        Ok(())
    }
}

impl Core {
    /// Authenticates every object of every active tenant, chunk by chunk (memory stays at one
    /// chunk), and verifies every tenant's audit chain. Each failure is logged and recorded in its
    /// tenant's audit log as it is found; the report names them all.
    pub fn check_integrity(&self) -> Result<IntegrityReport> {
        let mut report = IntegrityReport::default();
        for tenant in self.tenants()? {
            report.add_chain(self, &tenant.id)?;
            for info in self.list_objects(&tenant.id, "")? {
                let path = ObjectPath::new(info.path.clone())?;
                match self.authenticate_object(&tenant.id, &path) {
                    Ok(()) => report.objects_checked += 1,
                    Err(Error::Integrity) => report
                        .corrupt_objects
                        .push(CorruptObject { tenant: tenant.id.as_str().to_owned(), object: info.path }),
                    Err(Error::TenantLocked) => report.objects_skipped += 1,
                    // Deleted while the check ran.
                    Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(report)
    }

    /// Reads and authenticates every chunk of one object.
    fn authenticate_object(&self, tenant: &TenantId, path: &ObjectPath) -> Result<()> {
        let reader = self.open_object(tenant, path)?;
        for i in 0..reader.chunk_count() {
            reader.chunk(i)?;
        }
        Ok(())
    }
}
