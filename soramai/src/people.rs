//! A tenant's people and standing through a [`Session`]: members, invitations and roles, single
//! sign-on, credits and receipts, fine-tuned models. Roles arrive as their names and users as
//! their ids, parsed here, so every front end (the server's API and pages, the bindings) refuses
//! the same input with the same error.

use soramai_core::{FineTunedModel, Receipt, Tenant, TenantId};

use crate::accounts::{IssuedInvitation, Membership, Role, SsoConfig, UserId};
use crate::{Platform, PlatformError, Session};

type Result<T> = std::result::Result<T, PlatformError>;

fn user_id(id: &str) -> Result<UserId> {
    UserId::new(id).map_err(|_| soramai_core::Error::NotFound { kind: "member" }.into())
}

impl Session {
    /// The tenant's members (admin scope).
    pub fn members(&self) -> Result<Vec<Membership>> {
        self.acting("members")?;
        Ok(self.platform().core.members(self.principal())?)
    }

    /// Invites someone by email with a role (`owner`, `admin`, `member`, `viewer`; never above
    /// the inviter's own); the invitation's token is in the result this once.
    pub fn invite(&self, email: &str, role: &str) -> Result<IssuedInvitation> {
        self.acting("invite")?;
        let role: Role = role.parse()?;
        Ok(self.platform().core.invite(self.principal(), email, role)?)
    }

    /// Gives a member another role (never above the changer's own; a tenant keeps an owner).
    pub fn set_member_role(&self, user: &str, role: &str) -> Result<Membership> {
        self.acting("set_member_role")?;
        let role: Role = role.parse()?;
        Ok(self.platform().core.set_member_role(self.principal(), &user_id(user)?, role)?)
    }

    /// Removes a member from the tenant.
    pub fn remove_member(&self, user: &str) -> Result<()> {
        self.acting("remove_member")?;
        Ok(self.platform().core.remove_member(self.principal(), &user_id(user)?)?)
    }

    /// The tenant's single sign-on provider, if it named one (admin scope; never the secret).
    pub fn sso_config(&self) -> Result<Option<SsoConfig>> {
        self.acting("sso_config")?;
        Ok(self.platform().core.sso_config(self.principal())?)
    }

    /// Names the tenant's OpenID Connect provider (tiers with single sign-on); the client secret
    /// is sealed under the tenant's key.
    pub fn set_sso(&self, config: &SsoConfig, client_secret: &str) -> Result<()> {
        self.acting("set_sso")?;
        Ok(self.platform().core.set_sso(self.principal(), config, client_secret)?)
    }

    /// Forgets the tenant's provider.
    pub fn delete_sso(&self) -> Result<()> {
        self.acting("delete_sso")?;
        Ok(self.platform().core.delete_sso(self.principal())?)
    }

    /// The session's tenant: its tier, status and storage.
    pub fn tenant(&self) -> Result<Tenant> {
        self.acting("tenant")?;
        Ok(self.platform().core.tenant(self.principal().tenant())?)
    }

    /// The tenant's credits left.
    pub fn balance(&self) -> Result<i64> {
        self.acting("balance")?;
        Ok(self.platform().core.balance(self.principal().tenant())?)
    }

    /// Another tenant's credits left (platform admin).
    pub fn balance_of(&self, tenant: &str) -> Result<i64> {
        self.acting("balance_of")?;
        Platform::require_platform_admin(self.principal())?;
        let id = TenantId::new(tenant).map_err(|_| soramai_core::Error::NotFound { kind: "tenant" })?;
        Ok(self.platform().core.balance(&id)?)
    }

    /// The tenant's credit receipts, oldest first (admin scope).
    pub fn receipts(&self) -> Result<Vec<Receipt>> {
        self.acting("receipts")?;
        self.principal().require(soramai_core::Scope::Admin)?;
        Ok(self.platform().core.receipts(self.principal().tenant())?)
    }

    /// The tenant's fine-tuned models.
    pub fn fine_tuned_models(&self) -> Result<Vec<FineTunedModel>> {
        self.acting("fine_tuned_models")?;
        Ok(self.platform().core.list_fine_tuned_models(self.principal())?)
    }

    /// The platform's clock, in Unix milliseconds.
    pub fn now(&self) -> i64 {
        self.platform().core.now()
    }
}
