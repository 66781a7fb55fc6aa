//! Appending to a tenant's hash chain inside the caller's transaction: a leaf that the security
//! core writes through, apart from the reading and verifying in [`super`] that depend on it.

use crate::params;
use crate::store::{Db, OptionalExt as _};

use super::vocabulary::{Action, Actor, AuditKey, AuditRecord};
use crate::clock::Millis;
use crate::error::Result;
use crate::ids::TenantId;

/// The previous hash of a chain's first record.
pub(crate) const GENESIS: [u8; 32] = [0u8; 32];

/// One record to append: who did what to which id, with content-free detail.
pub(crate) struct Entry<'a> {
    pub(crate) actor: &'a Actor,
    pub(crate) action: Action,
    pub(crate) target: &'a str,
    pub(crate) detail: serde_json::Value,
}

/// Appends one record inside the caller's transaction.
pub(crate) fn append(tx: &Db<'_>, key: &AuditKey, tenant: &TenantId, at: Millis, entry: Entry<'_>) -> Result<()> {
    let Entry { actor, action, target, detail } = entry;
    let head: Option<(u64, Vec<u8>)> = tx
        .query_row("SELECT seq, hash FROM audit_heads WHERE tenant_id = ?1", [tenant.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let (prev_seq, prev_hash) = head.unwrap_or((0, GENESIS.to_vec()));
    let record = AuditRecord {
        seq: prev_seq + 1,
        at,
        actor: actor.to_string(),
        action: action.as_str().to_string(),
        target: target.to_string(),
        detail: detail.to_string(),
        verified: true,
    };
    let hash = key.record_hash(tenant, &record, &prev_hash)?;
    tx.execute(
        "INSERT INTO audit_log (tenant_id, seq, at, actor, action, target, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            tenant.as_str(),
            record.seq,
            record.at,
            record.actor,
            record.action,
            record.target,
            record.detail,
            prev_hash,
            hash
        ],
    )?;
    let tag = key.head_tag(tenant, record.seq, &hash)?;
    tx.execute(
        "INSERT INTO audit_heads (tenant_id, seq, hash, tag) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(tenant_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, tag = excluded.tag",
        params![tenant.as_str(), record.seq, hash, tag],
    )?;
    Ok(())
}
