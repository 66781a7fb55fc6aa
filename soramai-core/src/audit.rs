//! The tamper-evident audit log: append-only, one hash chain per tenant.
//!
//! Each record's `hash` is HMAC-SHA-256, under a platform audit key wrapped by the root key, of the
//! previous record's hash and this record's fields. A per-tenant head (last sequence number and hash,
//! itself MACed) is updated in the same transaction, so [`Core::verify_audit`] detects an edited,
//! dropped, reordered or appended record, a truncated tail, and a rewound head. Records hold ids and
//! action names, never customer content.

use std::fmt;

use crate::params;
use crate::store::{Db, OptionalExt as _, Row};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::auth::Principal;
use crate::clock::Millis;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::ids::{ApiKeyId, GrantId, TenantId};

/// Who did something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum Actor {
    /// The platform itself (sweeps, workers).
    System,
    /// The operator, through the embedding application or an admin tool (code that holds the
    /// root key in its own process).
    Operator,
    /// A platform admin, by the id of the operator's API key it used.
    OperatorKey(ApiKeyId),
    /// A request authenticated with this API key.
    ApiKey(ApiKeyId),
    /// A person, signed in (a web session).
    User(crate::ids::UserId),
    /// A request under a break-glass access grant: the grant, and the operator key that asked
    /// for it.
    Grant {
        /// The grant.
        grant: GrantId,
        /// The platform admin's key that requested it.
        operator_key: ApiKeyId,
    },
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::System => f.write_str("system"),
            Actor::Operator => f.write_str("operator"),
            Actor::OperatorKey(id) => write!(f, "operator:key:{id}"),
            Actor::ApiKey(id) => write!(f, "key:{id}"),
            Actor::User(id) => write!(f, "user:{id}"),
            Actor::Grant { grant, operator_key } => write!(f, "operator:key:{operator_key}:{grant}"),
        }
    }
}

impl From<Actor> for String {
    fn from(a: Actor) -> String {
        a.to_string()
    }
}

/// A security-relevant action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "&'static str")]
#[allow(missing_docs)]
pub enum Action {
    TenantCreated,
    TierChanged,
    TenantUnlocked,
    TenantDeleted,
    TenantKeyRotated,
    TenantKeysRewrapped,
    TenantKeysRetired,
    ApiKeyCreated,
    ApiKeyRotated,
    ApiKeyRevoked,
    DatasetUploaded,
    DatasetDownloaded,
    DatasetDeleted,
    SecretWritten,
    SecretRead,
    SecretDeleted,
    JobSubmitted,
    JobStarted,
    JobFinished,
    JobCancelled,
    CreditsGranted,
    SettingsChanged,
    CorpusCreated,
    CorpusDeleted,
    DocumentsIndexed,
    DocumentsDeleted,
    ModelAccessed,
    ModelCreated,
    ModelDeleted,
    AdminAccess,
    AccessGrantRequested,
    AccessGrantApproved,
    AccessGrantRevoked,
    AccessGrantExpired,
    AccessGrantUsed,
    TenantCloseRequested,
    TenantReopened,
    MemberInvited,
    MemberJoined,
    MemberRoleChanged,
    MemberRemoved,
    UserSignedIn,
    UserLocked,
    UserPasswordChanged,
    UserTotpEnabled,
    UserTotpDisabled,
    UserPasskeyAdded,
    UserPasskeyRemoved,
    SsoConfigured,
    SsoRemoved,
}

impl Action {
    /// The stored name, `noun.verb`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::TenantCreated => "tenant.created",
            Action::TierChanged => "tenant.tier_changed",
            Action::TenantUnlocked => "tenant.unlocked",
            Action::TenantDeleted => "tenant.deleted",
            Action::TenantKeyRotated => "tenant_key.rotated",
            Action::TenantKeysRewrapped => "tenant_key.rewrapped",
            Action::TenantKeysRetired => "tenant_key.retired",
            Action::ApiKeyCreated => "api_key.created",
            Action::ApiKeyRotated => "api_key.rotated",
            Action::ApiKeyRevoked => "api_key.revoked",
            Action::DatasetUploaded => "dataset.uploaded",
            Action::DatasetDownloaded => "dataset.downloaded",
            Action::DatasetDeleted => "dataset.deleted",
            Action::SecretWritten => "secret.written",
            Action::SecretRead => "secret.read",
            Action::SecretDeleted => "secret.deleted",
            Action::JobSubmitted => "job.submitted",
            Action::JobStarted => "job.started",
            Action::JobFinished => "job.finished",
            Action::JobCancelled => "job.cancelled",
            Action::CreditsGranted => "credits.granted",
            Action::SettingsChanged => "tenant.settings_changed",
            Action::CorpusCreated => "corpus.created",
            Action::CorpusDeleted => "corpus.deleted",
            Action::DocumentsIndexed => "documents.indexed",
            Action::DocumentsDeleted => "documents.deleted",
            Action::ModelAccessed => "model.accessed",
            Action::ModelCreated => "model.created",
            Action::ModelDeleted => "model.deleted",
            Action::AdminAccess => "admin.access",
            Action::AccessGrantRequested => "access_grant.requested",
            Action::AccessGrantApproved => "access_grant.approved",
            Action::AccessGrantRevoked => "access_grant.revoked",
            Action::AccessGrantExpired => "access_grant.expired",
            Action::AccessGrantUsed => "access_grant.request",
            Action::TenantCloseRequested => "tenant.close_requested",
            Action::TenantReopened => "tenant.reopened",
            Action::MemberInvited => "member.invited",
            Action::MemberJoined => "member.joined",
            Action::MemberRoleChanged => "member.role_changed",
            Action::MemberRemoved => "member.removed",
            Action::UserSignedIn => "user.signed_in",
            Action::UserLocked => "user.locked",
            Action::UserPasswordChanged => "user.password_changed",
            Action::UserTotpEnabled => "user.totp_enabled",
            Action::UserTotpDisabled => "user.totp_disabled",
            Action::UserPasskeyAdded => "user.passkey_added",
            Action::UserPasskeyRemoved => "user.passkey_removed",
            Action::SsoConfigured => "sso.configured",
            Action::SsoRemoved => "sso.removed",
        }
    }
}

impl From<Action> for &'static str {
    fn from(a: Action) -> &'static str {
        a.as_str()
    }
}

/// One stored audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Position in the tenant's chain, from 1.
    pub seq: u64,
    /// When, in Unix milliseconds.
    pub at: Millis,
    /// Who (`system`, `operator`, `operator:key:<id>`, `key:<id>`,
    /// `operator:key:<id>:grant-<id>`).
    pub actor: String,
    /// What (`dataset.uploaded`, ...).
    pub action: String,
    /// The id acted on.
    pub target: String,
    /// Extra, content-free detail as JSON (ids, counts, states).
    pub detail: String,
}

impl AuditRecord {
    /// Whether the record is of the operator's access to the tenant: an operator actor, or a
    /// break-glass grant's event.
    pub fn is_operator_access(&self) -> bool {
        self.actor == "operator" || self.actor.starts_with("operator:") || self.action.starts_with("access_grant.")
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// Records verified.
    pub records: u64,
}

type HmacSha256 = Hmac<Sha256>;

/// The key the chain is MACed with.
pub(crate) struct AuditKey(pub(crate) Zeroizing<Vec<u8>>);

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

impl AuditKey {
    fn mac(&self) -> Result<HmacSha256> {
        <HmacSha256 as KeyInit>::new_from_slice(&self.0).map_err(|_| Error::Integrity)
    }

    fn record_hash(&self, tenant: &TenantId, r: &AuditRecord, prev: &[u8]) -> Result<Vec<u8>> {
        let mut mac = self.mac()?;
        mac.update(b"soramai audit record v1");
        for field in [
            tenant.as_str().as_bytes(),
            r.actor.as_bytes(),
            r.action.as_bytes(),
            r.target.as_bytes(),
            r.detail.as_bytes(),
            prev,
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac.update(&r.seq.to_be_bytes());
        mac.update(&r.at.to_be_bytes());
        Ok(mac.finalize().into_bytes().to_vec())
    }

    fn head_tag(&self, tenant: &TenantId, seq: u64, hash: &[u8]) -> Result<Vec<u8>> {
        let mut mac = self.mac()?;
        mac.update(b"soramai audit head v1");
        mac.update(&(tenant.as_str().len() as u64).to_be_bytes());
        mac.update(tenant.as_str().as_bytes());
        mac.update(&seq.to_be_bytes());
        mac.update(hash);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

const GENESIS: [u8; 32] = [0u8; 32];

/// Reads an `AuditRecord` from columns `seq, at, actor, action, target, detail` (in that order).
fn record_from_row(r: &Row) -> Result<AuditRecord> {
    Ok(AuditRecord {
        seq: r.get(0)?,
        at: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        detail: r.get(5)?,
    })
}

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

    /// The tenant's audit records, oldest first (admin scope). A tier with audit-log access (Org
    /// and Enterprise) reads them all; every other tier reads the records of the operator's access
    /// to it (tenant changes, its first key, break-glass grants and every request under one), so
    /// that access is visible to every tenant. The operator's embedding code reads them all.
    pub fn audit_log(&self, principal: &Principal) -> Result<Vec<AuditRecord>> {
        principal.require(crate::auth::Scope::Admin)?;
        let tenant = principal.tenant();
        let t = self.tenant(tenant)?;
        let records = self.audit_records(tenant)?;
        if principal.is_operator() || t.tier.policy().audit_log_access {
            return Ok(records);
        }
        Ok(records.into_iter().filter(AuditRecord::is_operator_access).collect())
    }

    fn audit_records(&self, tenant: &TenantId) -> Result<Vec<AuditRecord>> {
        self.meta.read(|c| {
            c.query_map(
                "SELECT seq, at, actor, action, target, detail FROM audit_log WHERE tenant_id = ?1 ORDER BY seq",
                [tenant.as_str()],
                record_from_row,
            )
        })
    }

    /// Verifies the tenant's whole chain and its head. Any edited, dropped, inserted or reordered
    /// record yields [`Error::AuditChainBroken`] naming the first bad position.
    pub fn verify_audit(&self, tenant: &TenantId) -> Result<AuditReport> {
        let (rows, head) = self.meta.read(|c| {
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
        let mut prev = GENESIS.to_vec();
        // Walk in sequence order; a record out of place breaks the expected sequence number.
        let mut sorted = rows;
        sorted.sort_by_key(|(r, _, _)| r.seq);
        for (i, (record, prev_hash, hash)) in sorted.iter().enumerate() {
            let expected_seq = i as u64 + 1;
            let computed = self.audit_key.record_hash(tenant, record, &prev)?;
            let ok = record.seq == expected_seq
                && subtle::ConstantTimeEq::ct_eq(&prev_hash[..], &prev[..]).into()
                && bool::from(subtle::ConstantTimeEq::ct_eq(&computed[..], &hash[..]));
            if !ok {
                return Err(Error::AuditChainBroken { seq: expected_seq });
            }
            prev = hash.clone();
        }
        let count = sorted.len() as u64;
        match head {
            None if count == 0 => Ok(AuditReport { records: 0 }),
            None => Err(Error::AuditChainBroken { seq: 1 }),
            Some((seq, hash, tag)) => {
                let expected_tag = self.audit_key.head_tag(tenant, seq, &hash)?;
                let ok = seq == count
                    && bool::from(subtle::ConstantTimeEq::ct_eq(&hash[..], &prev[..]))
                    && bool::from(subtle::ConstantTimeEq::ct_eq(&tag[..], &expected_tag[..]));
                if ok {
                    Ok(AuditReport { records: count })
                } else {
                    Err(Error::AuditChainBroken { seq: count.min(seq) + 1 })
                }
            }
        }
    }
}
