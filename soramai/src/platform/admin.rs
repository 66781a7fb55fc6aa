//! The platform's administration: the operator's first key, tenants and tiers, credits, keys
//! for other tenants, closing and reopening accounts, and break-glass access grants. Only a
//! platform admin (an admin key of the operator tenant) may act on another tenant, and every such
//! change lands in the operator's audit log too.

use super::*;

impl Platform {
    /// The operator's own session, for the program that opened the platform with its root key
    /// (an admin tool, the quickstart): a platform admin acting for the operator tenant, recorded
    /// as `operator` in the audit logs. The operator tenant is created when missing (no key is
    /// issued for it). A server never hands this out: its callers come with keys.
    pub fn operator_session(self: &Arc<Self>) -> Result<crate::Session, PlatformError> {
        let op = TenantId::new(OPERATOR_TENANT)?;
        match self.core.tenant(&op) {
            Ok(_) => {}
            Err(soramai_core::Error::NotFound { .. }) => {
                self.core.create_tenant(&op, Tier::Org)?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(crate::Session::new(self.clone(), Principal::operator(&op)))
    }

    /// Creates the operator tenant and its first admin key when the operator has never had a
    /// key: the key is returned this once (print it, never store it). `None` once the operator has
    /// (or had) a key.
    pub fn bootstrap_operator(&self) -> Result<Option<IssuedKey>, PlatformError> {
        let op = TenantId::new(OPERATOR_TENANT)?;
        match self.core.tenant(&op) {
            Ok(_) => {
                if !self.core.list_api_keys(&Principal::operator(&op))?.is_empty() {
                    return Ok(None);
                }
            }
            Err(soramai_core::Error::NotFound { .. }) => {
                self.core.create_tenant(&op, Tier::Org)?;
            }
            Err(e) => return Err(e.into()),
        }
        let scopes = [Scope::Admin, Scope::Inference, Scope::Train, Scope::Rag];
        Ok(Some(self.core.create_api_key(&Principal::operator(&op), KeyOptions::new("bootstrap admin", &scopes))?))
    }

    /// Whether a caller administers the platform (an admin key of the operator tenant).
    pub fn is_platform_admin(principal: &Principal) -> bool {
        principal.tenant().as_str() == OPERATOR_TENANT && principal.require(Scope::Admin).is_ok()
    }

    pub(crate) fn require_platform_admin(principal: &Principal) -> Result<(), PlatformError> {
        if Self::is_platform_admin(principal) {
            Ok(())
        } else {
            Err(PlatformError::Core(soramai_core::Error::MissingScope(Scope::Admin)))
        }
    }

    /// Records a platform admin's change to a tenant in the operator's audit log (the tenant's
    /// own log records it in the same breath, naming the admin's key).
    fn audit_admin(
        &self,
        principal: &Principal,
        tenant: &TenantId,
        detail: serde_json::Value,
    ) -> Result<(), PlatformError> {
        Ok(self.core.record_audit(principal, Action::AdminAccess, tenant.as_str(), detail)?)
    }

    /// Creates a tenant on a tier (platform admin).
    pub fn create_tenant(&self, principal: &Principal, id: &str, tier: Tier) -> Result<Tenant, PlatformError> {
        Self::require_platform_admin(principal)?;
        let t = self.core.create_tenant_by(&principal.as_operator(), &TenantId::new(id)?, tier)?;
        self.audit_admin(principal, &t.id, serde_json::json!({"op": "tenant.create", "tier": t.tier.as_str()}))?;
        Ok(t)
    }

    /// Moves a tenant to another tier (platform admin).
    pub fn set_tier(&self, principal: &Principal, id: &str, tier: Tier) -> Result<Tenant, PlatformError> {
        Self::require_platform_admin(principal)?;
        let t = self.core.set_tier_by(&principal.as_operator(), &TenantId::new(id)?, tier)?;
        self.audit_admin(principal, &t.id, serde_json::json!({"op": "tenant.tier", "tier": t.tier.as_str()}))?;
        Ok(t)
    }

    /// Every tenant (platform admin).
    pub fn tenants(&self, principal: &Principal) -> Result<Vec<Tenant>, PlatformError> {
        Self::require_platform_admin(principal)?;
        Ok(self.core.tenants()?)
    }

    /// Grants credits to a tenant (platform admin).
    pub fn grant_credits(
        &self,
        principal: &Principal,
        tenant: &str,
        amount: i64,
        reference: &str,
    ) -> Result<Receipt, PlatformError> {
        Self::require_platform_admin(principal)?;
        let tenant = TenantId::new(tenant)?;
        let r = self.core.grant_credits_by(&principal.as_operator(), &tenant, amount, reference)?;
        let detail = serde_json::json!({"op": "credits.grant", "amount": r.amount, "receipt": r.receipt});
        self.audit_admin(principal, &tenant, detail)?;
        Ok(r)
    }

    /// Issues an API key in a tenant: a tenant's admin in its own tenant, or the platform admin
    /// a tenant's first key (while it has no live key; any later operator access goes through
    /// [`Platform::request_access_grant`]). A key never holds more than the calling key's scopes.
    /// The secret is shown once.
    pub fn create_api_key(
        &self,
        principal: &Principal,
        tenant: &str,
        options: KeyOptions,
    ) -> Result<IssuedKey, PlatformError> {
        let tenant = TenantId::new(tenant)?;
        if &tenant == principal.tenant() {
            return Ok(self.core.create_api_key(principal, options)?);
        }
        Self::require_platform_admin(principal)?;
        Ok(self.core.issue_first_key(principal, &tenant, options)?)
    }

    /// Closes a tenant's account: its own admin key for its own account, or a platform admin for
    /// any but the operator's. Access ends now; the data goes at the end of `options.window` (at
    /// most 30 days) or now with `options.immediate` (see [`soramai_core::closing`]).
    pub fn close_tenant(
        &self,
        principal: &Principal,
        id: &str,
        options: CloseOptions,
    ) -> Result<Closure, PlatformError> {
        let id = TenantId::new(id)?;
        if id.as_str() == OPERATOR_TENANT {
            return Err(PlatformError::InvalidArgument("the operator's own tenant is not closed this way".into()));
        }
        let actor = if Self::is_platform_admin(principal) {
            principal.as_operator()
        } else if principal.tenant() == &id && principal.grant().is_none() {
            principal.require(Scope::Admin)?;
            principal.actor().clone()
        } else {
            return Err(soramai_core::Error::MissingScope(Scope::Admin).into());
        };
        let closure = self.core.close_tenant(&actor, &id, options)?;
        // Its own models leave memory now: no key of the tenant can reach them any more.
        if let Ok(mut map) = self.engines.serving.lock() {
            let prefix = format!("{}{}:", soramai_core::models::CUSTOM_MODEL_PREFIX, id.as_str());
            map.retain(|model, _| !model.as_str().starts_with(&prefix));
            // So do the states of its recent prompts.
            for serving in map.values() {
                serving.engine.prefix_cache().forget_scope(id.as_str());
            }
        }
        if Self::is_platform_admin(principal) {
            let detail =
                serde_json::json!({"op": "tenant.close", "immediate": options.immediate, "purge_at": closure.purge_at});
            self.audit_admin(principal, &id, detail)?;
        }
        Ok(closure)
    }

    /// Takes back a close within its window (platform admin; the tenant's keys are revoked).
    pub fn reopen_tenant(&self, principal: &Principal, id: &str) -> Result<(), PlatformError> {
        Self::require_platform_admin(principal)?;
        let id = TenantId::new(id)?;
        self.core.reopen_tenant(&principal.as_operator(), &id)?;
        self.audit_admin(principal, &id, serde_json::json!({"op": "tenant.reopen"}))
    }

    /// Asks for break-glass access to a tenant's data (platform admin): a reason, at most an
    /// hour, no more than the calling key's scopes. Active at once with a short-lived key on Free,
    /// Basic and Pro; pending the tenant's approval on Org; refused where the customer holds the
    /// keys. Recorded in the tenant's audit log and the operator's.
    pub fn request_access_grant(
        &self,
        principal: &Principal,
        tenant: &str,
        request: GrantRequest,
    ) -> Result<IssuedGrant, PlatformError> {
        Self::require_platform_admin(principal)?;
        Ok(self.core.request_access_grant(principal, &TenantId::new(tenant)?, request)?)
    }

    /// Approves a pending grant on the caller's tenant (the tenant's own admin key).
    pub fn approve_access_grant(&self, principal: &Principal, id: &str) -> Result<AccessGrant, PlatformError> {
        Ok(self.core.approve_access_grant(principal, &grant_id(id)?)?)
    }

    /// Ends a grant at once (the tenant's admin, or the operator's).
    pub fn revoke_access_grant(&self, principal: &Principal, id: &str) -> Result<AccessGrant, PlatformError> {
        Ok(self.core.revoke_access_grant(principal, &grant_id(id)?)?)
    }

    /// One grant the caller may see (on its tenant, or asked for by it).
    pub fn access_grant(&self, principal: &Principal, id: &str) -> Result<AccessGrant, PlatformError> {
        Ok(self.core.access_grant(principal, &grant_id(id)?)?)
    }

    /// The grants on the caller's tenant, or those its tenant asked for (the operator's).
    pub fn access_grants(&self, principal: &Principal) -> Result<Vec<AccessGrant>, PlatformError> {
        Ok(self.core.list_access_grants(principal)?)
    }

    /// Records one request made under a break-glass grant (`operation`: a route or method name)
    /// in both audit logs, failing once the grant is revoked or expired; nothing for other keys.
    pub fn record_request(&self, principal: &Principal, operation: &str) -> Result<(), PlatformError> {
        Ok(self.core.record_grant_request(principal, operation)?)
    }
}

fn grant_id(id: &str) -> Result<GrantId, PlatformError> {
    GrantId::new(id).map_err(|_| soramai_core::Error::NotFound { kind: "access grant" }.into())
}
