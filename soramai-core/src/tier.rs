//! Tiers and the policy each one maps to (seed 003, section 4).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::names::UnknownName;

/// A tenant's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Shared pool, no RAG.
    Free,
    /// Shared pool, prompt-isolated; RAG on a shared store with a per-tenant key.
    Basic,
    /// A dedicated node, no co-tenancy; a dedicated RAG store; custom GGUF upload.
    Pro,
    /// Pro plus keys bound to a dedicated pool, an audit log and a 90-day access log.
    Org,
    /// The customer's own hardware and a customer-held root key: the operator cannot decrypt.
    Enterprise,
}

impl Tier {
    /// Every tier, cheapest first.
    pub const ALL: [Tier; 5] = [Tier::Free, Tier::Basic, Tier::Pro, Tier::Org, Tier::Enterprise];

    /// The tier's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Basic => "basic",
            Tier::Pro => "pro",
            Tier::Org => "org",
            Tier::Enterprise => "enterprise",
        }
    }

    /// The policy this tier maps to.
    pub fn policy(self) -> Policy {
        let day = 24 * 3600;
        let (compute, rag, custom_gguf, audit, access, rpm, conc) = match self {
            Tier::Free => (ComputePool::Shared, RagIsolation::None, false, false, false, 20, 1),
            Tier::Basic => (ComputePool::Shared, RagIsolation::SharedStoreTenantKey, false, false, false, 60, 2),
            Tier::Pro => (ComputePool::Dedicated, RagIsolation::DedicatedStore, true, false, false, 600, 8),
            Tier::Org => (ComputePool::Dedicated, RagIsolation::DedicatedStore, true, true, true, 3000, 32),
            Tier::Enterprise => (ComputePool::Dedicated, RagIsolation::DedicatedStore, true, true, true, 10_000, 128),
        };
        Policy {
            tier: self,
            compute,
            rag,
            custom_gguf_upload: custom_gguf,
            audit_log_access: audit,
            access_log: access,
            access_log_retention: Duration::from_secs(90 * day),
            log_retention: Duration::from_secs(90 * day),
            billing_retention: Duration::from_secs(7 * 365 * day + 2 * day),
            requests_per_minute: rpm,
            max_concurrent_requests: conc,
            ingest: match self {
                Tier::Free => IngestLimits { max_bytes: 0, max_chunks: 0, max_concurrent: 0 },
                Tier::Basic => IngestLimits { max_bytes: 1 << 20, max_chunks: 1_000, max_concurrent: 1 },
                Tier::Pro => IngestLimits { max_bytes: 8 << 20, max_chunks: 8_000, max_concurrent: 2 },
                Tier::Org => IngestLimits { max_bytes: 16 << 20, max_chunks: 20_000, max_concurrent: 4 },
                Tier::Enterprise => IngestLimits { max_bytes: 32 << 20, max_chunks: 40_000, max_concurrent: 8 },
            },
            keys_bindable_to_pool: matches!(self, Tier::Org | Tier::Enterprise),
            sso: matches!(self, Tier::Org | Tier::Enterprise),
            customer_held_root_key: self == Tier::Enterprise,
            operator_access: match self {
                Tier::Free | Tier::Basic | Tier::Pro => OperatorAccess::OnGrant,
                Tier::Org => OperatorAccess::TenantApproval,
                Tier::Enterprise => OperatorAccess::None,
            },
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Tier {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        Tier::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| UnknownName::new("tier", s))
    }
}

/// Where a tenant's jobs and requests run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputePool {
    /// The federated pool shared with other tenants of the same tiers.
    Shared,
    /// A pool that serves this tenant alone.
    Dedicated,
}

/// How a tenant's RAG index is isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RagIsolation {
    /// No RAG on this tier.
    None,
    /// A shared store, every file encrypted under the tenant's own key.
    SharedStoreTenantKey,
    /// A store of the tenant's own, also encrypted under the tenant's key.
    DedicatedStore,
}

/// How the operator's staff may reach a tenant's data (seed 000: "staff cannot read customer
/// datasets or artifacts during normal operation; production access is gated by short-lived
/// credentials, logged, and limited to incident response").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorAccess {
    /// A break-glass grant (reason, at most an hour, recorded in the tenant's audit log) is
    /// active at once.
    OnGrant,
    /// A grant waits for the tenant's approval before its key reads anything.
    TenantApproval,
    /// No grant is possible: the customer holds the keys ("we have no access").
    None,
}

/// Everything a tier allows, as one value. Checked by the library, never only by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// The tier this policy belongs to.
    pub tier: Tier,
    /// Shared or dedicated compute.
    pub compute: ComputePool,
    /// RAG isolation, or none.
    pub rag: RagIsolation,
    /// May upload its own GGUF base models.
    pub custom_gguf_upload: bool,
    /// May read and export its audit log (every tier's actions are recorded regardless).
    pub audit_log_access: bool,
    /// RAG access log (who searched which corpus when).
    pub access_log: bool,
    /// How long access-log entries live.
    pub access_log_retention: Duration,
    /// How long inference and job logs live.
    pub log_retention: Duration,
    /// How long billing records live.
    pub billing_retention: Duration,
    /// Request rate limit.
    pub requests_per_minute: u32,
    /// Concurrent request limit.
    pub max_concurrent_requests: u32,
    /// What one request may ask RAG ingestion to do.
    pub ingest: IngestLimits,
    /// API keys may be bound to a dedicated pool.
    pub keys_bindable_to_pool: bool,
    /// Members may sign in through the tenant's own OpenID Connect provider.
    pub sso: bool,
    /// The tenant's keys are wrapped by a customer-held root key the operator never stores.
    pub customer_held_root_key: bool,
    /// How the operator may reach the tenant's data.
    pub operator_access: OperatorAccess,
}

/// Bounds on RAG ingestion (embedding costs CPU per chunk): document bytes and chunks per
/// request, and ingestions running at once per tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IngestLimits {
    /// Document bytes (bodies and titles) in one request.
    pub max_bytes: usize,
    /// Chunks one request may produce.
    pub max_chunks: usize,
    /// Ingestions of one tenant running at once.
    pub max_concurrent: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_table_matches_the_trust_page() {
        assert_eq!(Tier::Free.policy().rag, RagIsolation::None);
        assert_eq!(Tier::Basic.policy().rag, RagIsolation::SharedStoreTenantKey);
        assert_eq!(Tier::Basic.policy().compute, ComputePool::Shared);
        assert_eq!(Tier::Pro.policy().compute, ComputePool::Dedicated);
        assert_eq!(Tier::Pro.policy().rag, RagIsolation::DedicatedStore);
        assert!(Tier::Pro.policy().custom_gguf_upload && !Tier::Basic.policy().custom_gguf_upload);
        assert!(Tier::Org.policy().audit_log_access && Tier::Org.policy().access_log);
        assert!(Tier::Org.policy().keys_bindable_to_pool && !Tier::Pro.policy().keys_bindable_to_pool);
        assert!(Tier::Org.policy().sso && !Tier::Pro.policy().sso);
        assert!(Tier::Enterprise.policy().customer_held_root_key);
        assert_eq!(Tier::Basic.policy().operator_access, OperatorAccess::OnGrant);
        assert_eq!(Tier::Org.policy().operator_access, OperatorAccess::TenantApproval);
        assert_eq!(Tier::Enterprise.policy().operator_access, OperatorAccess::None);
        assert_eq!(Tier::Org.policy().access_log_retention, Duration::from_secs(90 * 86400));
        for t in Tier::ALL {
            assert_eq!(t.as_str().parse::<Tier>().expect("parse"), t);
        }
    }
}
