//! Memberships: who belongs to which tenant with which role, invitations, and the rules of
//! managing them (never above the manager's own role; a tenant keeps an owner).

use super::*;

impl Core {
    /// The tenants a person belongs to, with their role in each.
    pub fn memberships(&self, user: &UserId) -> Result<Vec<Membership>> {
        self.membership_rows("m.user_id = ?1", user.as_str())
    }

    fn membership_rows(&self, where_sql: &str, key: &str) -> Result<Vec<Membership>> {
        self.read(|c| {
            c.query_map(
                &format!(
                    "SELECT m.tenant_id, m.user_id, u.email, m.role, m.created_at FROM members m
                     JOIN users u ON u.id = m.user_id JOIN tenants t ON t.id = m.tenant_id
                     WHERE {where_sql} AND t.status = 'active' ORDER BY m.tenant_id, u.email"
                ),
                [key],
                |r| {
                    Ok(Membership {
                        tenant: TenantId::new(r.get::<String>(0)?)?,
                        user: UserId::new(r.get::<String>(1)?)?,
                        email: r.get(2)?,
                        role: r.get::<String>(3)?.parse()?,
                        created_at: r.get(4)?,
                    })
                },
            )
        })
    }

    fn role_of(&self, tenant: &TenantId, user: &UserId) -> Result<Role> {
        let role: Option<String> = self.read(|c| {
            c.query_row(
                "SELECT m.role FROM members m JOIN tenants t ON t.id = m.tenant_id
                 WHERE m.tenant_id = ?1 AND m.user_id = ?2 AND t.status = 'active'",
                params![tenant.as_str(), user.as_str()],
                |r| r.get(0),
            )
            .optional()
        })?;
        role.ok_or(Error::NotFound { kind: "tenant" })?.parse()
    }

    /// A signed-in person acting in one of their tenants: a principal with their role's scopes,
    /// recorded as `user:<id>`. A tenant they do not belong to is not found.
    pub fn session_principal(&self, token: &str, tenant: &TenantId) -> Result<(User, Role, Principal)> {
        let (user, confined) = self.session(token)?;
        if confined.is_some_and(|t| &t != tenant) {
            return Err(Error::NotFound { kind: "member" });
        }
        let role = self.role_of(tenant, &user.id)?;
        let principal = Principal::for_user(tenant, &user.id, role.scopes());
        Ok((user, role, principal))
    }

    /// The caller's role where it manages members: a person's own role, or `Admin` for an admin
    /// API key (never under a break-glass grant).
    fn managing_role(&self, principal: &Principal) -> Result<Role> {
        principal.require(Scope::Admin)?;
        principal.refuse_under_grant("managing a tenant's members")?;
        match principal.actor() {
            Actor::User(u) => self.role_of(principal.tenant(), u),
            _ => Ok(Role::Admin),
        }
    }

    /// The members of the caller's tenant: their emails, roles and user ids. A person signed in
    /// to the tenant sees their team whatever their role; an API key (or a break-glass grant)
    /// needs the admin scope — an inference-, train- or rag-only key is refused.
    pub fn members(&self, principal: &Principal) -> Result<Vec<Membership>> {
        if !matches!(principal.actor(), Actor::User(_)) {
            principal.require(Scope::Admin)?;
        }
        self.tenant(principal.tenant())?;
        self.membership_rows("m.tenant_id = ?1", principal.tenant().as_str())
    }

    /// Invites an email to the caller's tenant with a role (admin scope; only an owner invites
    /// an owner). The token, valid [`INVITATION_MS`] and good once, goes to the invitee.
    pub fn invite(&self, principal: &Principal, email: &str, role: Role) -> Result<IssuedInvitation> {
        let mine = self.managing_role(principal)?;
        if role > mine {
            return Err(Error::InvalidArgument(format!("an {} cannot invite an {}", mine.as_str(), role.as_str())));
        }
        let email = normalize_email(email)?;
        let tenant = self.tenant(principal.tenant())?;
        let token = Token::new("inv-");
        let invitation = Invitation {
            id: InvitationId::generate(),
            tenant: tenant.id.clone(),
            email,
            role,
            invited_by: principal.actor().to_string(),
            expires_at: self.now() + INVITATION_MS,
            accepted_at: None,
        };
        self.write(|tx| {
            tx.execute(
                "INSERT INTO invitations (id, tenant_id, email, role, token_hash, invited_by, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    invitation.id.as_str(),
                    tenant.id.as_str(),
                    invitation.email,
                    role.as_str(),
                    token_hash(token.secret()),
                    invitation.invited_by,
                    self.now(),
                    invitation.expires_at
                ],
            )?;
            self.audit_tx(
                tx,
                &tenant.id,
                principal.actor(),
                Action::MemberInvited,
                invitation.id.as_str(),
                serde_json::json!({"role": role.as_str()}),
            )
        })?;
        Ok(IssuedInvitation { invitation, token })
    }

    /// Accepts an invitation: a new account for its email with this password, or, for an email
    /// that has one, that account's password. Good once, until it expires; the invitee becomes a
    /// member with the invitation's role. Any mismatch is `Unauthenticated`.
    pub fn accept_invitation(&self, token: &str, password: &str) -> Result<Membership> {
        let hash = token_hash(token);
        let now = self.now();
        let row: Option<(String, String, String, String, Millis, Option<Millis>)> = self.read(|c| {
            c.query_row(
                "SELECT id, tenant_id, email, role, expires_at, accepted_at FROM invitations WHERE token_hash = ?1",
                params![hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .optional()
        })?;
        let Some((id, tenant, email, role, _, None)) = row.filter(|r| r.4 > now) else {
            return Err(Error::Unauthenticated);
        };
        let (tenant, role): (TenantId, Role) = (TenantId::new(tenant)?, role.parse()?);
        self.tenant(&tenant)?;
        let existing = self.user_row("email", &email)?;
        let phc = match &existing {
            Some(r) if verify_password(password, &r.password_hash) => None,
            Some(_) => return Err(Error::Unauthenticated),
            None => {
                check_password(password, &email)?;
                Some(hash_password(password)?)
            }
        };
        self.write(|tx| {
            // Single use: only the first acceptance updates the row.
            let claimed = tx.execute(
                "UPDATE invitations SET accepted_at = ?2 WHERE id = ?1 AND accepted_at IS NULL",
                params![id, now],
            )?;
            if claimed == 0 {
                return Err(Error::Unauthenticated);
            }
            let user = match (&existing, &phc) {
                (Some(r), _) => r.user.clone(),
                (None, Some(phc)) => self.insert_user(tx, &email, phc)?,
                (None, None) => return Err(Error::Unauthenticated),
            };
            self.insert_member(tx, &tenant, &user.id, role, &Actor::User(user.id.clone()))?;
            Ok(Membership { tenant: tenant.clone(), user: user.id, email: email.clone(), role, created_at: now })
        })
    }

    /// Changes a member's role (admin scope). Admins manage members and admins; only owners
    /// touch owners; the last owner stays an owner.
    pub fn set_member_role(&self, principal: &Principal, user: &UserId, role: Role) -> Result<Membership> {
        let mine = self.managing_role(principal)?;
        let tenant = principal.tenant();
        let theirs = self.role_of(tenant, user).map_err(|_| Error::NotFound { kind: "member" })?;
        if (theirs == Role::Owner || role == Role::Owner) && mine != Role::Owner {
            return Err(Error::InvalidArgument("only an owner changes who is an owner".into()));
        }
        self.write(|tx| {
            self.keep_an_owner(tx, tenant, user, theirs, Some(role))?;
            tx.execute(
                "UPDATE members SET role = ?3 WHERE tenant_id = ?1 AND user_id = ?2",
                params![tenant.as_str(), user.as_str(), role.as_str()],
            )?;
            self.audit_tx(
                tx,
                tenant,
                principal.actor(),
                Action::MemberRoleChanged,
                user.as_str(),
                serde_json::json!({"from": theirs.as_str(), "to": role.as_str()}),
            )
        })?;
        self.members(principal)?.into_iter().find(|m| &m.user == user).ok_or(Error::NotFound { kind: "member" })
    }

    /// Removes a member from the caller's tenant (admin scope; owners only by an owner; never the
    /// last owner). Their sessions stay theirs, but reach this tenant no more.
    pub fn remove_member(&self, principal: &Principal, user: &UserId) -> Result<()> {
        let mine = self.managing_role(principal)?;
        let tenant = principal.tenant();
        let theirs = self.role_of(tenant, user).map_err(|_| Error::NotFound { kind: "member" })?;
        if theirs == Role::Owner && mine != Role::Owner {
            return Err(Error::InvalidArgument("only an owner removes an owner".into()));
        }
        self.write(|tx| {
            self.keep_an_owner(tx, tenant, user, theirs, None)?;
            tx.execute(
                "DELETE FROM members WHERE tenant_id = ?1 AND user_id = ?2",
                params![tenant.as_str(), user.as_str()],
            )?;
            self.audit_tx(
                tx,
                tenant,
                principal.actor(),
                Action::MemberRemoved,
                user.as_str(),
                serde_json::json!({"role": theirs.as_str()}),
            )
        })
    }

    fn keep_an_owner(
        &self,
        tx: &Db<'_>,
        tenant: &TenantId,
        user: &UserId,
        theirs: Role,
        next: Option<Role>,
    ) -> Result<()> {
        if theirs != Role::Owner || next == Some(Role::Owner) {
            return Ok(());
        }
        let others: i64 = tx.query_row(
            "SELECT COUNT(*) FROM members WHERE tenant_id = ?1 AND role = 'owner' AND user_id != ?2",
            params![tenant.as_str(), user.as_str()],
            |r| r.get(0),
        )?;
        if others == 0 {
            return Err(Error::InvalidArgument("a tenant keeps at least one owner".into()));
        }
        Ok(())
    }

    /// The pending invitations of the caller's tenant (admin scope).
    pub fn invitations(&self, principal: &Principal) -> Result<Vec<Invitation>> {
        self.managing_role(principal)?;
        let now = self.now();
        self.read(|c| {
            c.query_map(
                "SELECT id, tenant_id, email, role, invited_by, expires_at, accepted_at FROM invitations
                 WHERE tenant_id = ?1 AND accepted_at IS NULL AND expires_at > ?2 ORDER BY created_at DESC",
                params![principal.tenant().as_str(), now],
                |r| {
                    Ok(Invitation {
                        id: InvitationId::new(r.get::<String>(0)?)?,
                        tenant: TenantId::new(r.get::<String>(1)?)?,
                        email: r.get(2)?,
                        role: r.get::<String>(3)?.parse()?,
                        invited_by: r.get(4)?,
                        expires_at: r.get(5)?,
                        accepted_at: r.get(6)?,
                    })
                },
            )
        })
    }
}
