//! The audit log's vocabulary: who ([`Actor`]), what ([`Action`]), the stored record, and the key
//! that chains the records. A leaf: it knows ids, times and errors, nothing of the core.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::clock::Millis;
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
    /// Stored data failed its integrity check (an object's authentication tag, the audit chain).
    IntegrityFailed,
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
            Action::IntegrityFailed => "integrity.failed",
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
    /// Whether the chain verifies up to and including this record: `false` for every record from
    /// the first break on (an edited, dropped, inserted or reordered record).
    pub verified: bool,
}

impl AuditRecord {
    /// Whether the record is of the operator's access to the tenant: an operator actor, or a
    /// break-glass grant's event.
    pub fn is_operator_access(&self) -> bool {
        self.actor == "operator" || self.actor.starts_with("operator:") || self.action.starts_with("access_grant.")
    }
}

/// A verification of a tenant's audit chain: how much of it holds, and where and why it breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditVerification {
    /// Records in the chain.
    pub records: u64,
    /// Whether every record and the chain's head verify.
    pub valid: bool,
    /// The first record (1-based position) that does not verify; every later one is unverified too.
    pub first_bad_record: Option<u64>,
    /// Why that record fails.
    pub reason: Option<&'static str>,
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
    pub(super) fn mac(&self) -> Result<HmacSha256> {
        <HmacSha256 as KeyInit>::new_from_slice(&self.0).map_err(|_| Error::Integrity)
    }

    pub(super) fn record_hash(&self, tenant: &TenantId, r: &AuditRecord, prev: &[u8]) -> Result<Vec<u8>> {
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

    pub(super) fn head_tag(&self, tenant: &TenantId, seq: u64, hash: &[u8]) -> Result<Vec<u8>> {
        let mut mac = self.mac()?;
        mac.update(b"soramai audit head v1");
        mac.update(&(tenant.as_str().len() as u64).to_be_bytes());
        mac.update(tenant.as_str().as_bytes());
        mac.update(&seq.to_be_bytes());
        mac.update(hash);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}
