//! Usage metrics without content, and the credit ledger.
//!
//! A [`UsageEvent`] has only ids, counts, a latency and a status: there is no field a prompt or a
//! completion could be put in, so inference logs hold metrics only by construction.

use crate::params;
use crate::store::{Db, OptionalExt as _};
use serde::Serialize;

use crate::audit::vocabulary::Action;
use crate::auth::{Principal, Scope};
use crate::clock::Millis;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::ids::{ModelId, TenantId, random_hex};

/// What was metered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageKind {
    /// Chat or completion.
    Inference,
    /// Embedding.
    Embedding,
    /// Fine-tuning (tokens trained).
    Training,
    /// RAG retrieval.
    Retrieval,
}

impl UsageKind {
    fn as_str(self) -> &'static str {
        match self {
            UsageKind::Inference => "inference",
            UsageKind::Embedding => "embedding",
            UsageKind::Training => "training",
            UsageKind::Retrieval => "retrieval",
        }
    }
}

/// How a metered request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageStatus {
    /// Completed.
    Ok,
    /// Failed with an error.
    Error,
    /// Cancelled by the client.
    Cancelled,
}

/// One metered request: ids and numbers only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageEvent {
    /// What kind of work.
    pub kind: UsageKind,
    /// The base model id.
    pub model: ModelId,
    /// The adapter id, if any.
    pub adapter: Option<ModelId>,
    /// Input (prompt) tokens.
    pub input_tokens: u64,
    /// Output (completion or trained) tokens.
    pub output_tokens: u64,
    /// Wall time in milliseconds.
    pub latency_ms: u64,
    /// Outcome.
    pub status: UsageStatus,
}

/// Aggregated usage over a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UsageSummary {
    /// Requests.
    pub requests: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
}

/// One ledger entry; its `receipt` id is what a customer quotes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// `rcpt-<hex>`.
    pub receipt: String,
    /// `grant`, `usage` or `refund`.
    pub kind: String,
    /// Credits added (positive) or used (negative).
    pub amount: i64,
    /// Balance after this entry.
    pub balance_after: i64,
    /// What it was for (a job id, a request id, an invoice number).
    pub reference: String,
    /// When, Unix ms.
    pub at: Millis,
}

fn check_reference(r: &str) -> Result<()> {
    if r.len() > 128 || r.chars().any(char::is_control) {
        return Err(Error::InvalidArgument("a ledger reference is at most 128 printable characters".into()));
    }
    Ok(())
}

impl Core {
    /// Records one metered request for a tenant.
    pub fn record_usage(&self, tenant: &TenantId, event: &UsageEvent) -> Result<()> {
        self.tenant(tenant)?;
        let now = self.now();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO usage_events (tenant_id, at, kind, model, adapter, input_tokens, output_tokens, latency_ms, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    tenant.as_str(),
                    now,
                    event.kind.as_str(),
                    event.model.as_str(),
                    event.adapter.as_ref().map(|a| a.as_str()),
                    event.input_tokens,
                    event.output_tokens,
                    event.latency_ms,
                    serde_json::to_value(event.status)?.as_str().unwrap_or("ok"),
                ],
            )?;
            Ok(())
        })
    }

    /// Usage of the principal's tenant since `since` (admin scope).
    pub fn usage_summary(&self, principal: &Principal, since: Millis) -> Result<UsageSummary> {
        principal.require(Scope::Admin)?;
        self.tenant(principal.tenant())?;
        self.read(|c| {
            c.query_row(
                "SELECT COUNT(*), CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) FROM usage_events WHERE tenant_id = ?1 AND at >= ?2",
                params![principal.tenant().as_str(), since],
                |r| Ok(UsageSummary { requests: r.get(0)?, input_tokens: r.get(1)?, output_tokens: r.get(2)? }),
            )
        })
    }

    /// The tenant's credit balance.
    pub fn balance(&self, tenant: &TenantId) -> Result<i64> {
        self.tenant(tenant)?;
        self.read(|c| Self::balance_in(c, tenant))
    }

    fn balance_in(c: &Db<'_>, tenant: &TenantId) -> Result<i64> {
        Ok(c.query_row(
            "SELECT balance_after FROM ledger WHERE tenant_id = ?1 ORDER BY id DESC LIMIT 1",
            [tenant.as_str()],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
    }

    fn ledger_entry(&self, tenant: &TenantId, kind: &str, amount: i64, reference: &str) -> Result<Receipt> {
        self.ledger_entry_by(&crate::audit::Actor::Operator, tenant, kind, amount, reference)
    }

    fn ledger_entry_by(
        &self,
        actor: &crate::audit::Actor,
        tenant: &TenantId,
        kind: &str,
        amount: i64,
        reference: &str,
    ) -> Result<Receipt> {
        self.tenant(tenant)?;
        self.write(|tx| {
            let receipt = self.ledger_entry_tx(tx, tenant, kind, amount, reference)?;
            if kind == "grant" {
                self.audit_tx(
                    tx,
                    tenant,
                    actor,
                    Action::CreditsGranted,
                    &receipt.receipt,
                    serde_json::json!({"amount": amount}),
                )?;
            }
            Ok(receipt)
        })
    }

    /// A ledger entry inside the caller's transaction (so a charge commits with what it pays for).
    pub(crate) fn ledger_entry_tx(
        &self,
        tx: &Db<'_>,
        tenant: &TenantId,
        kind: &str,
        amount: i64,
        reference: &str,
    ) -> Result<Receipt> {
        if amount <= 0 {
            return Err(Error::InvalidArgument(format!("a {kind} amount must be positive")));
        }
        let amount = if kind == "usage" { -amount } else { amount };
        check_reference(reference)?;
        let now = self.now();
        let balance = Self::balance_in(tx, tenant)?;
        let after =
            balance.checked_add(amount).ok_or_else(|| Error::InvalidArgument("credit amount overflows".into()))?;
        if after < 0 {
            return Err(Error::InsufficientCredits { balance, needed: -amount });
        }
        let receipt = format!("rcpt-{}", random_hex(10));
        tx.execute(
            "INSERT INTO ledger (receipt, tenant_id, at, kind, amount, balance_after, reference) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![receipt, tenant.as_str(), now, kind, amount, after, reference],
        )?;
        Ok(Receipt {
            receipt,
            kind: kind.to_string(),
            amount,
            balance_after: after,
            reference: reference.to_string(),
            at: now,
        })
    }

    /// Adds credits (a purchase, a promotion).
    pub fn grant_credits(&self, tenant: &TenantId, amount: i64, reference: &str) -> Result<Receipt> {
        self.ledger_entry(tenant, "grant", amount, reference)
    }

    /// [`Core::grant_credits`], recorded in the tenant's audit log as done by `actor`.
    pub fn grant_credits_by(
        &self,
        actor: &crate::audit::Actor,
        tenant: &TenantId,
        amount: i64,
        reference: &str,
    ) -> Result<Receipt> {
        self.ledger_entry_by(actor, tenant, "grant", amount, reference)
    }

    /// Charges credits for usage; refuses with [`Error::InsufficientCredits`] (charging nothing)
    /// when the balance cannot cover it.
    pub fn charge_credits(&self, tenant: &TenantId, amount: i64, reference: &str) -> Result<Receipt> {
        self.ledger_entry(tenant, "usage", amount, reference)
    }

    /// Returns credits (a failed job).
    pub fn refund_credits(&self, tenant: &TenantId, amount: i64, reference: &str) -> Result<Receipt> {
        self.ledger_entry(tenant, "refund", amount, reference)
    }

    /// The tenant's ledger, oldest first (the billing records).
    pub fn receipts(&self, tenant: &TenantId) -> Result<Vec<Receipt>> {
        self.read(|c| {
            let rows = c.query_map("SELECT receipt, kind, amount, balance_after, reference, at FROM ledger WHERE tenant_id = ?1 ORDER BY id", [tenant.as_str()], |r| {
                    Ok(Receipt { receipt: r.get(0)?, kind: r.get(1)?, amount: r.get(2)?, balance_after: r.get(3)?, reference: r.get(4)?, at: r.get(5)? })
                })?;
            Ok(rows)
        })
    }
}

/// One access-log entry: who read which resource, when. `detail` holds query text only when the
/// tenant opted in to storing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessRecord {
    /// When, Unix ms.
    pub at: Millis,
    /// `operator` or `key:<id>`.
    pub actor: String,
    /// What was accessed (`rag:<corpus>`).
    pub resource: String,
    /// What was done (`search`, `ingest`, `delete`).
    pub action: String,
    /// Opt-in detail.
    pub detail: Option<String>,
}

/// Marks a detail stored sealed: `sealed:v1:<nonce hex>:<envelope hex>`.
/// Credits a fine-tuning job costs per trained token (a token that carries loss, counted once per
/// epoch). Charged at each checkpoint and at the end, never twice for a token across a resume.
pub const CREDITS_PER_TRAINED_TOKEN: i64 = 1;

pub(crate) const SEALED_DETAIL: &str = "sealed:v1:";

impl Core {
    /// Opts the principal's tenant in or out of keeping query text in its access log (admin
    /// scope, audited). Kept text is sealed under the tenant key like any other customer data.
    pub fn set_query_text_logging(&self, principal: &Principal, enabled: bool) -> Result<()> {
        principal.require(Scope::Admin)?;
        principal.refuse_under_grant("a break-glass grant's key never changes what is logged")?;
        let t = self.tenant(principal.tenant())?;
        self.write(|tx| {
            tx.execute("UPDATE tenants SET log_query_text = ?2 WHERE id = ?1", params![t.id.as_str(), enabled])?;
            self.audit_tx(
                tx,
                &t.id,
                principal.actor(),
                crate::audit::Action::SettingsChanged,
                t.id.as_str(),
                serde_json::json!({"log_query_text": enabled}),
            )
        })
    }

    fn logs_query_text(&self, tenant: &crate::ids::TenantId) -> Result<bool> {
        self.read(|c| c.query_row("SELECT log_query_text FROM tenants WHERE id = ?1", [tenant.as_str()], |r| r.get(0)))
    }

    fn seal_detail(&self, tenant: &crate::ids::TenantId, detail: &str) -> Result<String> {
        self.seal_text(tenant, SEALED_DETAIL, "access-log", detail)
    }

    fn open_detail(&self, tenant: &crate::ids::TenantId, stored: &str) -> Result<String> {
        self.open_text(tenant, SEALED_DETAIL, "access-log", stored)
    }

    /// Records an access when the tenant's tier keeps an access log (Org, Enterprise); a no-op
    /// otherwise. Returns whether a record was written.
    pub fn record_access(
        &self,
        principal: &Principal,
        resource: &str,
        action: &str,
        detail: Option<&str>,
    ) -> Result<bool> {
        let t = self.tenant(principal.tenant())?;
        if !t.tier.policy().access_log {
            return Ok(false);
        }
        for (what, v) in [("resource", resource), ("action", action)] {
            if v.is_empty() || v.len() > 200 || v.chars().any(char::is_control) {
                return Err(Error::InvalidArgument(format!("invalid access-log {what}")));
            }
        }
        // Query text is kept only on opt-in, and then sealed under the tenant key.
        let detail = match detail {
            Some(d) if self.logs_query_text(&t.id)? => Some(self.seal_detail(&t.id, d)?),
            _ => None,
        };
        let now = self.now();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO access_log (tenant_id, at, actor, resource, action, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![t.id.as_str(), now, principal.actor().to_string(), resource, action, detail],
            )?;
            Ok(true)
        })
    }

    /// The tenant's access log, oldest first (admin scope; tiers with an access log).
    pub fn access_log(&self, principal: &Principal) -> Result<Vec<AccessRecord>> {
        principal.require(Scope::Admin)?;
        let t = self.tenant(principal.tenant())?;
        if !t.tier.policy().access_log {
            return Err(Error::NotAllowed { tier: t.tier, what: "the access log" });
        }
        self.read(|c| {
            let rows = c.query_map(
                "SELECT at, actor, resource, action, detail FROM access_log WHERE tenant_id = ?1 ORDER BY id",
                [t.id.as_str()],
                |r| {
                    Ok(AccessRecord {
                        at: r.get(0)?,
                        actor: r.get(1)?,
                        resource: r.get(2)?,
                        action: r.get(3)?,
                        detail: r.get(4)?,
                    })
                },
            )?;
            Ok(rows)
        })?
        .into_iter()
        .map(|mut r: AccessRecord| {
            r.detail = r.detail.map(|d| self.open_detail(&t.id, &d)).transpose()?;
            Ok(r)
        })
        .collect()
    }
}
