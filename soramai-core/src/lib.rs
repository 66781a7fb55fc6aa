//! # soramai-core
//!
//! The security core of Soramai: tenants and tiers, API keys, envelope encryption, storage, jobs,
//! the audit log, metering and retention. No ML lives here.
//!
//! Every byte of customer data is sealed under its tenant's key in the C2SP chunked-encryption
//! format (Cobblestone-256) before it reaches the blob store; tenant keys are stored only wrapped by
//! a root key; every security-relevant action is appended to a per-tenant hash chain.
//!
//! ```
//! use soramai_core::{Core, Principal, Tier, TenantId};
//!
//! # fn main() -> soramai_core::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let core = Core::open_embedded(dir.path().join("data"))?;
//! let acme = TenantId::new("acme")?;
//! core.create_tenant(&acme, Tier::Pro)?;
//! let admin = Principal::operator(&acme);
//! let data = br#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}"#;
//! let ds = core.upload_dataset(&admin, "greetings.jsonl", data)?;
//! assert_eq!(&core.download_dataset(&admin, &ds.id)?[..], &data[..]);
//! assert_eq!(core.verify_audit(&acme)?.records, 3); // created, uploaded, downloaded
//! # Ok(()) }
//! ```
//!
//! The byte layout of stored objects is in `FORMAT.md` beside this crate.

#![forbid(unsafe_code)]

pub mod accounts;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod clock;
pub mod closing;
mod core;
pub mod crypto;
pub mod datasets;
pub mod error;
pub mod grants;
pub mod ids;
pub mod integrity;
pub mod jobs;
pub mod metering;
pub mod models;
pub mod names;
pub mod passkeys;
mod random;
pub mod recovery;
pub mod retention;
mod sealed;
pub mod sso;
pub mod store;
pub mod tier;
mod vault;

pub use crate::accounts::{Invitation, IssuedInvitation, IssuedSession, Membership, Role, TotpSetup, User};
pub use crate::audit::{Action, Actor, AuditRecord, AuditReport, AuditVerification};
pub use crate::auth::{ApiKeyInfo, GrantContext, IssuedKey, KeyOptions, Principal, Scope};
pub use crate::backup::{BackupReport, RestoreReport, SnapshotInfo};
pub use crate::clock::{Clock, ManualClock, Millis, SystemClock};
pub use crate::closing::{CloseOptions, Closure};
pub use crate::core::{
    BlobLocation, Config, Core, Database, KeyCustody, Limits, ObjectInfo, ObjectReader, ObjectWriter, StorePlacement,
    Tenant, TenantStatus,
};
pub use crate::crypto::keys::{KeyProvider, LocalRootKey};
pub use crate::datasets::{DatasetInfo, DatasetStats};
pub use crate::error::{Error, Result};
pub use crate::grants::{AccessGrant, GrantRequest, GrantStatus, IssuedGrant};
pub use crate::ids::{
    ApiKeyId, DatasetId, GrantId, InvitationId, JobId, ModelId, ObjectPath, PoolId, SecretName, TenantId, UserId,
};
pub use crate::integrity::{BrokenChain, CorruptObject, IntegrityReport};
pub use crate::jobs::{
    Completion, FineTuneSpec, Hyperparameters, IngestSpec, Job, JobEvent, JobSpec, JobState, Outcome, RunnerCommand,
    Worker,
};
pub use crate::metering::{AccessRecord, Receipt, UsageEvent, UsageKind, UsageStatus, UsageSummary};
pub use crate::models::{AdapterFiles, BaseModel, CustomModel, CustomModelUpload, FineTunedModel, is_custom_model};
pub use crate::retention::SweepReport;
pub use crate::sealed::NAME_LOCKED;
pub use crate::tier::{ComputePool, OperatorAccess, Policy, RagIsolation, Tier};
