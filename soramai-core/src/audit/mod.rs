//! The tamper-evident audit log: append-only, one hash chain per tenant.
//!
//! Each record's `hash` is HMAC-SHA-256, under a platform audit key wrapped by the root key, of the
//! previous record's hash and this record's fields. A per-tenant head (last sequence number and hash,
//! itself MACed) is updated in the same transaction, so [`Core::verify_audit`] detects an edited,
//! dropped, reordered or appended record, a truncated tail, and a rewound head. Records hold ids and
//! action names, never customer content.

use crate::store::{OptionalExt as _, Row};

use crate::auth::Principal;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::ids::TenantId;

pub(crate) mod chain;
pub(crate) mod vocabulary;

pub(crate) use chain::GENESIS;

pub use vocabulary::{Action, Actor, AuditRecord, AuditReport, AuditVerification};

/// Reads an `AuditRecord` from columns `seq, at, actor, action, target, detail` (in that order).
fn record_from_row(r: &Row) -> Result<AuditRecord> {
    Ok(AuditRecord {
        seq: r.get(0)?,
        at: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        detail: r.get(5)?,
        verified: true,
    })
}

impl Core {
    /// Appends a record for an action an engine crate performed on the principal's behalf (RAG
    /// ingestion, model access). `detail` must be content-free: ids, counts, states.
    pub fn record_audit(
        &self,
        principal: &Principal,
        action: Action,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<()> {
        self.tenant(principal.tenant())?;
        if target.len() > 200 || target.chars().any(char::is_control) {
            return Err(Error::InvalidArgument("invalid audit target".into()));
        }
        self.audit(principal.tenant(), principal.actor(), action, target, detail)
    }

    /// Appends a record for work the platform did for a tenant without a caller present (a job's
    /// ingestion indexed by a worker). `detail` must be content-free.
    pub fn record_system_audit(
        &self,
        tenant: &TenantId,
        action: Action,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<()> {
        self.tenant(tenant)?;
        if target.len() > 200 || target.chars().any(char::is_control) {
            return Err(Error::InvalidArgument("invalid audit target".into()));
        }
        self.audit(tenant, &Actor::System, action, target, detail)
    }

    /// The tenant's audit records, oldest first (admin scope), each marked verified or not (every
    /// record from the chain's first break on is not). A tier with audit-log access (Org
    /// and Enterprise) reads them all; every other tier reads the records of the operator's access
    /// to it (tenant changes, its first key, break-glass grants and every request under one), so
    /// that access is visible to every tenant. The operator's embedding code reads them all.
    pub fn audit_log(&self, principal: &Principal) -> Result<Vec<AuditRecord>> {
        principal.require(crate::auth::Scope::Admin)?;
        let tenant = principal.tenant();
        let t = self.tenant(tenant)?;
        let mut records = self.audit_records(tenant)?;
        if let Some(bad) = self.walk_audit(tenant)?.first_bad_record {
            // Positions, as the walk counts them (records are in sequence order).
            for r in records.iter_mut().skip(usize::try_from(bad.saturating_sub(1)).unwrap_or(usize::MAX)) {
                r.verified = false;
            }
        }
        if principal.is_operator() || t.tier.policy().audit_log_access {
            return Ok(records);
        }
        Ok(records.into_iter().filter(AuditRecord::is_operator_access).collect())
    }

    fn audit_records(&self, tenant: &TenantId) -> Result<Vec<AuditRecord>> {
        self.read(|c| {
            c.query_map(
                "SELECT seq, at, actor, action, target, detail FROM audit_log WHERE tenant_id = ?1 ORDER BY seq",
                [tenant.as_str()],
                record_from_row,
            )
        })
    }

    /// Verifies the tenant's whole chain and its head. Any edited, dropped, inserted or reordered
    /// record yields [`Error::AuditChainBroken`] naming the first bad position; see
    /// [`Core::check_audit`] for the whole report.
    pub fn verify_audit(&self, tenant: &TenantId) -> Result<AuditReport> {
        let check = self.check_audit(tenant)?;
        match check.first_bad_record {
            None => Ok(AuditReport { records: check.records }),
            Some(seq) => Err(Error::AuditChainBroken { seq }),
        }
    }

    /// Verifies the tenant's chain and reports how far it holds: the first record that does not
    /// verify and why. A broken chain is also reported as an integrity failure: an operator log
    /// line each time, and an audit record (appended after the break, naming the bad record) the
    /// first time that break is found.
    pub fn check_audit(&self, tenant: &TenantId) -> Result<AuditVerification> {
        let check = self.walk_audit(tenant)?;
        if let (Some(seq), Some(reason)) = (check.first_bad_record, check.reason) {
            tracing::error!(
                target: "soramai::integrity",
                error_kind = "integrity_error",
                tenant = %tenant.as_str(),
                record = seq,
                reason = %reason,
                "the audit chain failed its integrity check"
            );
            // Recorded once per break: a chain checked again (a dashboard view, each backup)
            // whose newest record already reports this break gets no second record.
            let detail = serde_json::json!({"first_bad_record": seq, "reason": reason});
            let detail_text = detail.to_string();
            let newest: Option<(String, String, String)> = self.read(|c| {
                c.query_row(
                    "SELECT action, target, detail FROM audit_log WHERE tenant_id = ?1 ORDER BY seq DESC LIMIT 1",
                    [tenant.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
            })?;
            let reported = newest.is_some_and(|(action, target, d)| {
                action == Action::IntegrityFailed.as_str() && target == "audit_log" && d == detail_text
            });
            if !reported {
                self.audit(tenant, &Actor::System, Action::IntegrityFailed, "audit_log", detail)?;
            }
        }
        Ok(check)
    }

    fn walk_audit(&self, tenant: &TenantId) -> Result<AuditVerification> {
        let (rows, head) = self.read(|c| {
            let rows = c.query_map(
                "SELECT seq, at, actor, action, target, detail, prev_hash, hash FROM audit_log
                 WHERE tenant_id = ?1 ORDER BY seq",
                [tenant.as_str()],
                |r| Ok((record_from_row(r)?, r.get::<Vec<u8>>(6)?, r.get::<Vec<u8>>(7)?)),
            )?;
            let head: Option<(u64, Vec<u8>, Vec<u8>)> = c
                .query_row("SELECT seq, hash, tag FROM audit_heads WHERE tenant_id = ?1", [tenant.as_str()], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            Ok((rows, head))
        })?;
        let count = rows.len() as u64;
        let broken = |seq: u64, reason: &'static str| AuditVerification {
            records: count,
            valid: false,
            first_bad_record: Some(seq),
            reason: Some(reason),
        };
        let ct_eq = |a: &[u8], b: &[u8]| bool::from(subtle::ConstantTimeEq::ct_eq(a, b));
        let mut prev = GENESIS.to_vec();
        // Walk in sequence order; a record out of place breaks the expected sequence number.
        let mut sorted = rows;
        sorted.sort_by_key(|(r, _, _)| r.seq);
        for (i, (record, prev_hash, hash)) in sorted.iter().enumerate() {
            let expected_seq = i as u64 + 1;
            if record.seq != expected_seq {
                return Ok(broken(expected_seq, "a record is missing, inserted or out of order here"));
            }
            if !ct_eq(prev_hash, &prev) {
                return Ok(broken(expected_seq, "the record does not link to the record before it"));
            }
            let computed = self.audit_key().record_hash(tenant, record, &prev)?;
            if !ct_eq(&computed, hash) {
                return Ok(broken(expected_seq, "the record was edited after it was written"));
            }
            prev = hash.clone();
        }
        let intact = AuditVerification { records: count, valid: true, first_bad_record: None, reason: None };
        match head {
            None if count == 0 => Ok(intact),
            None => Ok(broken(1, "the chain's head is missing")),
            Some((seq, hash, tag)) => {
                let expected_tag = self.audit_key().head_tag(tenant, seq, &hash)?;
                if seq == count && ct_eq(&hash, &prev) && ct_eq(&tag, &expected_tag) {
                    Ok(intact)
                } else {
                    Ok(broken(count.min(seq) + 1, "records after this point were removed, or the head was rewound"))
                }
            }
        }
    }
}
