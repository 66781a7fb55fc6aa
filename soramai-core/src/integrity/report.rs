//! What an integrity check found, as plain data (the error type carries it, so this module
//! depends on nothing else of the crate).

use std::fmt;

use serde::Serialize;

/// What an integrity check found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IntegrityReport {
    /// Objects whose every chunk was authenticated.
    pub objects_checked: u64,
    /// Objects not checked because their tenant's customer-held key is not loaded.
    pub objects_skipped: u64,
    /// Objects that failed authentication (tampered, truncated, or under the wrong key).
    pub corrupt_objects: Vec<CorruptObject>,
    /// Audit records verified, over every chain.
    pub audit_records: u64,
    /// Audit chains that do not verify.
    pub broken_audit_chains: Vec<BrokenChain>,
}

/// An object that failed authentication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CorruptObject {
    /// Its tenant.
    pub tenant: String,
    /// Its path within the tenant.
    pub object: String,
}

/// A tenant's audit chain that does not verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenChain {
    /// The tenant.
    pub tenant: String,
    /// The first record (1-based) that does not verify.
    pub first_bad_record: u64,
    /// Why.
    pub reason: String,
}

impl IntegrityReport {
    /// Whether nothing failed.
    pub fn is_clean(&self) -> bool {
        self.corrupt_objects.is_empty() && self.broken_audit_chains.is_empty()
    }
}

impl fmt::Display for IntegrityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.corrupt_objects.is_empty() {
            let names: Vec<String> =
                self.corrupt_objects.iter().map(|o| format!("{}/{}", o.tenant, o.object)).collect();
            parts.push(format!("{} corrupt object(s): {}", names.len(), names.join(", ")));
        }
        if !self.broken_audit_chains.is_empty() {
            let chains: Vec<String> = self
                .broken_audit_chains
                .iter()
                .map(|c| format!("tenant {} at record {} ({})", c.tenant, c.first_bad_record, c.reason))
                .collect();
            parts.push(format!("{} broken audit chain(s): {}", chains.len(), chains.join(", ")));
        }
        if parts.is_empty() {
            write!(f, "{} objects and {} audit records verified", self.objects_checked, self.audit_records)
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}
