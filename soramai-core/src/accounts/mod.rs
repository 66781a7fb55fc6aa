//! People: accounts (an email and an argon2id password, an optional TOTP second factor), their
//! memberships in tenants with a role, invitations, web sessions, lockout and password reset.
//!
//! What is stored: the email (the account's name), the password as an argon2id PHC string
//! (OWASP's parameters: 19 MiB, 2 passes, 1 lane, a 16-byte random salt), the TOTP secret wrapped
//! by the root key (bound to the user's id), and every token (session, invitation, reset) as its
//! SHA-256 only: a copy of the database signs nobody in. A member acts in a tenant with the scopes
//! of its role ([`Role::scopes`]), recorded in the audit log as `user:<id>`.
//!
//! Sign-in failures are counted per email (as a hash, known account or not, so the answer never
//! tells whether an account exists): [`MAX_FAILURES`] in a row lock the email for
//! [`LOCKOUT_MS`]. An unknown email costs the same argon2 work as a wrong password.

use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::audit::vocabulary::{Action, Actor};
use crate::auth::{Principal, Scope};
use crate::clock::Millis;
use crate::core::Core;
use crate::crypto::random_bytes;
use crate::error::{Error, Result};
use crate::ids::{InvitationId, TenantId, UserId, random_hex};
use crate::params;
use crate::store::{Db, OptionalExt as _};
use crate::tier::Tier;

mod members;
mod second_factor;

pub use second_factor::{csrf_seed, csrf_token, csrf_valid, totp_code};
/// Consecutive failed sign-ins of one email that lock it.
pub const MAX_FAILURES: i64 = 5;
/// How long a locked email stays locked.
pub const LOCKOUT_MS: Millis = 15 * 60 * 1000;
/// A session ends after this long without use.
pub const SESSION_IDLE_MS: Millis = 12 * 3600 * 1000;
/// A session ends this long after sign-in, however used.
pub const SESSION_MAX_MS: Millis = 7 * 24 * 3600 * 1000;
/// An invitation is valid this long.
pub const INVITATION_MS: Millis = 7 * 24 * 3600 * 1000;
/// A password reset token is valid this long.
pub const RESET_MS: Millis = 3600 * 1000;
/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted (argon2 takes any length; this bounds the work per attempt).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A member's role in a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: chat and the model list (inference scope).
    Viewer,
    /// Works with the tenant's data: datasets, fine-tuning, chat, RAG.
    Member,
    /// Also manages keys, members (below owner), grants and settings.
    Admin,
    /// Also manages owners and closes the account.
    Owner,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Member, Role::Admin, Role::Owner];

    /// The scopes a member of this role acts with.
    pub fn scopes(self) -> &'static [Scope] {
        match self {
            Role::Viewer => &[Scope::Inference],
            Role::Member => &[Scope::Inference, Scope::Train, Scope::Rag],
            Role::Admin | Role::Owner => &Scope::ALL,
        }
    }

    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| Error::InvalidArgument("a role is owner, admin, member or viewer".into()))
    }
}

/// A person's account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// `user-<hex>`.
    pub id: UserId,
    /// The sign-in email, lowercased.
    pub email: String,
    /// Whether sign-in asks for a TOTP code.
    pub totp_enabled: bool,
    /// Created, Unix ms.
    pub created_at: Millis,
}

/// A person's place in a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Membership {
    /// The tenant.
    pub tenant: TenantId,
    /// The person.
    pub user: UserId,
    /// Their email.
    pub email: String,
    /// Their role.
    pub role: Role,
    /// Joined, Unix ms.
    pub created_at: Millis,
}

/// An invitation to join a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invitation {
    /// `inv-<hex>`.
    pub id: InvitationId,
    /// The tenant to join.
    pub tenant: TenantId,
    /// Who may accept it.
    pub email: String,
    /// The role it gives.
    pub role: Role,
    /// Who sent it (an audit actor).
    pub invited_by: String,
    /// Valid until, Unix ms.
    pub expires_at: Millis,
    /// Accepted, Unix ms.
    pub accepted_at: Option<Millis>,
}

/// A one-time secret handed out once (a session, an invitation, a reset): shown to its holder,
/// stored as a hash only, zeroed when dropped.
#[derive(Clone)]
pub struct Token(Zeroizing<String>);

impl Token {
    pub(crate) fn new(prefix: &str) -> Self {
        Token(Zeroizing::new(format!("{prefix}{}", random_hex(32))))
    }
    /// The secret (send it once; it is not kept).
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// A signed-in session: its token goes into the browser's cookie.
#[derive(Debug, Clone)]
pub struct IssuedSession {
    /// The person.
    pub user: User,
    /// The session's token.
    pub token: Token,
    /// When it ends at the latest, Unix ms.
    pub expires_at: Millis,
}

/// An invitation with its token (sent once, to the invitee).
#[derive(Debug, Clone)]
pub struct IssuedInvitation {
    /// The invitation.
    pub invitation: Invitation,
    /// The token that accepts it.
    pub token: Token,
}

/// A TOTP second factor being set up: the secret to put in an authenticator app.
#[derive(Clone)]
pub struct TotpSetup {
    /// The secret in base32.
    pub secret_base32: Zeroizing<String>,
    /// `otpauth://totp/…` for a QR code.
    pub otpauth_url: Zeroizing<String>,
}

impl std::fmt::Debug for TotpSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSetup(..)")
    }
}

pub(crate) fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

pub(crate) fn email_hash(email: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"soramai sign-in email\0");
    h.update(email.as_bytes());
    h.finalize().to_vec()
}

/// Normalizes and checks an email: trimmed, lowercased, one `@` with text on both sides, at most
/// 254 characters, no spaces or control characters.
pub fn normalize_email(email: &str) -> Result<String> {
    let e = email.trim().to_lowercase();
    let ok = e.len() <= 254
        && e.split('@').count() == 2
        && e.split('@').all(|p| !p.is_empty())
        && e.rsplit('@').next().is_some_and(|d| d.contains('.') && !d.starts_with('.') && !d.ends_with('.'))
        && !e.chars().any(|c| c.is_whitespace() || c.is_control() || "<>\"'(),;:\\[]".contains(c));
    if ok { Ok(e) } else { Err(Error::InvalidArgument("not a valid email address".into())) }
}

fn check_password(password: &str, email: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::InvalidArgument(format!(
            "a password is {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_BYTES} characters long"
        )));
    }
    if password.to_lowercase() == email || password.chars().all(|c| password.starts_with(c)) {
        return Err(Error::InvalidArgument("the password is too easy to guess".into()));
    }
    Ok(())
}

fn argon2() -> argon2::Argon2<'static> {
    // argon2id v19 with OWASP's parameters (19 MiB, t=2, p=1): the crate's defaults.
    argon2::Argon2::default()
}

fn hash_password(password: &str) -> Result<String> {
    use argon2::password_hash::PasswordHasher as _;
    let mut salt = [0u8; 16];
    random_bytes(&mut salt);
    argon2()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| Error::InvalidArgument("the password cannot be hashed".into()))
}

fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::PasswordVerifier as _;
    argon2().verify_password(password.as_bytes(), phc).is_ok()
}

/// Work equal to a real check, for an email with no account.
fn verify_dummy(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let phc = DUMMY.get_or_init(|| hash_password("soramai dummy password").unwrap_or_default());
    let _ = verify_password(password, phc);
}

fn totp_aad(user: &UserId) -> Vec<u8> {
    format!("soramai totp\0{}", user.as_str()).into_bytes()
}

fn totp(secret: &[u8], email: &str) -> Result<totp_rs::Totp> {
    totp_rs::Builder::new()
        .with_secret(secret.to_vec())
        .with_account_name(email)
        .with_issuer(Some("Soramai"))
        .build()
        .map_err(|_| Error::InvalidArgument("the email cannot name a TOTP account".into()))
}

pub(crate) struct UserRow {
    pub(crate) user: User,
    password_hash: String,
    totp_wrapped: Option<Vec<u8>>,
}

impl Core {
    pub(crate) fn user_row(&self, where_sql: &str, key: &str) -> Result<Option<UserRow>> {
        self.read(|c| {
            c.query_row(
                &format!(
                    "SELECT id, email, password_hash, totp_wrapped, totp_enabled, created_at FROM users WHERE {where_sql} = ?1"
                ),
                [key],
                |r| {
                    Ok(UserRow {
                        user: User {
                            id: UserId::new(r.get::<String>(0)?)?,
                            email: r.get(1)?,
                            totp_enabled: r.get::<i64>(4)? != 0,
                            created_at: r.get(5)?,
                        },
                        password_hash: r.get(2)?,
                        totp_wrapped: r.get(3)?,
                    })
                },
            )
            .optional()
        })
    }

    /// A user by id.
    pub fn user(&self, id: &UserId) -> Result<User> {
        Ok(self.user_row("id", id.as_str())?.ok_or(Error::NotFound { kind: "user" })?.user)
    }

    /// Writes one audit record into the log of every tenant the user belongs to.
    pub(crate) fn audit_user(
        &self,
        tx: &Db<'_>,
        user: &UserId,
        action: Action,
        detail: serde_json::Value,
    ) -> Result<()> {
        let tenants: Vec<String> =
            tx.query_map("SELECT tenant_id FROM members WHERE user_id = ?1", [user.as_str()], |r| r.get(0))?;
        for t in tenants {
            let t = TenantId::new(t)?;
            self.audit_tx(tx, &t, &Actor::User(user.clone()), action, user.as_str(), detail.clone())?;
        }
        Ok(())
    }

    pub(crate) fn insert_user(&self, tx: &Db<'_>, email: &str, phc: &str) -> Result<User> {
        let taken: Option<String> =
            tx.query_row("SELECT id FROM users WHERE email = ?1", [email], |r| r.get(0)).optional()?;
        if taken.is_some() {
            return Err(Error::AlreadyExists { kind: "account" });
        }
        let user =
            User { id: UserId::generate(), email: email.to_owned(), totp_enabled: false, created_at: self.now() };
        tx.execute(
            "INSERT INTO users (id, email, password_hash, totp_enabled, totp_last_step, created_at) VALUES (?1, ?2, ?3, 0, 0, ?4)",
            params![user.id.as_str(), email, phc, user.created_at],
        )?;
        Ok(user)
    }

    pub(crate) fn insert_member(
        &self,
        tx: &Db<'_>,
        tenant: &TenantId,
        user: &UserId,
        role: Role,
        actor: &Actor,
    ) -> Result<()> {
        tx.execute(
            "INSERT INTO members (tenant_id, user_id, role, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET role = excluded.role",
            params![tenant.as_str(), user.as_str(), role.as_str(), self.now()],
        )?;
        self.audit_tx(
            tx,
            tenant,
            actor,
            Action::MemberJoined,
            user.as_str(),
            serde_json::json!({"role": role.as_str()}),
        )
    }

    /// Signs a person up: a new tenant (Free tier) with them as its owner. The email must be
    /// new; the password at least [`MIN_PASSWORD_CHARS`] characters.
    pub fn sign_up(&self, email: &str, password: &str, tenant: &TenantId) -> Result<User> {
        let email = normalize_email(email)?;
        check_password(password, &email)?;
        if self.user_row("email", &email)?.is_some() {
            return Err(Error::AlreadyExists { kind: "account" });
        }
        let phc = hash_password(password)?;
        self.create_tenant_by(&Actor::System, tenant, Tier::Free)?;
        let created = self.write(|tx| {
            let user = self.insert_user(tx, &email, &phc)?;
            self.insert_member(tx, tenant, &user.id, Role::Owner, &Actor::User(user.id.clone()))?;
            Ok(user)
        });
        if created.is_err() {
            // The email was taken meanwhile: the empty tenant goes.
            let _ = self.delete_tenant(tenant);
        }
        created
    }

    /// Signs a person in with their email and password, and their TOTP code when they have
    /// one (`Error::SecondFactorRequired` without it). Wrong or unknown credentials are one
    /// `Unauthenticated`; after [`MAX_FAILURES`] the email is locked (`Error::Locked`).
    pub fn sign_in(&self, email: &str, password: &str, totp_code: Option<&str>) -> Result<IssuedSession> {
        let email = normalize_email(email).map_err(|_| Error::Unauthenticated)?;
        let key = email_hash(&email);
        self.check_not_locked(&key)?;
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(Error::Unauthenticated);
        }
        let row = self.user_row("email", &email)?;
        let ok = match &row {
            Some(r) => verify_password(password, &r.password_hash),
            None => {
                verify_dummy(password);
                false
            }
        };
        let known = row.as_ref().map(|r| r.user.id.clone());
        let Some(row) = row.filter(|_| ok) else {
            return Err(self.sign_in_failed(&key, known));
        };
        if row.user.totp_enabled {
            let Some(code) = totp_code else { return Err(Error::SecondFactorRequired) };
            if !self.check_totp(&row, code)? {
                return Err(self.sign_in_failed(&key, Some(row.user.id.clone())));
            }
        }
        self.start_session(row.user, &key, "password")
    }

    /// A new session for a person who proved who they are (by `method`): clears the email's
    /// failed attempts and records the sign-in in each of their tenants' logs.
    pub(crate) fn start_session(&self, user: User, email_key: &[u8], method: &str) -> Result<IssuedSession> {
        self.start_confined_session(user, email_key, method, None)
    }

    /// [`Core::start_session`], confined to one tenant when `tenant` is given.
    pub(crate) fn start_confined_session(
        &self,
        user: User,
        email_key: &[u8],
        method: &str,
        tenant: Option<&TenantId>,
    ) -> Result<IssuedSession> {
        let now = self.now();
        let token = Token::new("ss-");
        let expires_at = now + SESSION_MAX_MS;
        self.write(|tx| {
            tx.execute("DELETE FROM sign_in_failures WHERE email_hash = ?1", params![email_key])?;
            tx.execute(
                "INSERT INTO web_sessions (token_hash, user_id, created_at, last_seen, expires_at, tenant_id) VALUES (?1, ?2, ?3, ?3, ?4, ?5)",
                params![token_hash(token.secret()), user.id.as_str(), now, expires_at, tenant.map(TenantId::as_str)],
            )?;
            self.audit_user(tx, &user.id, Action::UserSignedIn, serde_json::json!({"method": method}))
        })?;
        Ok(IssuedSession { user, token, expires_at })
    }

    /// Refuses a sign-in while the email is locked.
    pub(crate) fn check_not_locked(&self, email_key: &[u8]) -> Result<()> {
        let now = self.now();
        let locked_until: Option<Millis> = self.read(|c| {
            c.query_row("SELECT locked_until FROM sign_in_failures WHERE email_hash = ?1", params![email_key], |r| {
                r.get(0)
            })
            .optional()
        })?;
        match locked_until.filter(|&u| u > now) {
            Some(until) => Err(Error::Locked { retry_after_seconds: ((until - now) / 1000).max(1) as u64 }),
            None => Ok(()),
        }
    }

    /// Counts a failed sign-in of an email; the [`MAX_FAILURES`]th locks it. Returns the error
    /// to answer with.
    pub(crate) fn sign_in_failed(&self, key: &[u8], user: Option<UserId>) -> Error {
        let now = self.now();
        let counted = self.write(|tx| {
            let failures: i64 = tx
                .query_row("SELECT failures FROM sign_in_failures WHERE email_hash = ?1", params![key], |r| r.get(0))
                .optional()?
                .unwrap_or(0)
                + 1;
            let locked_until = if failures >= MAX_FAILURES { now + LOCKOUT_MS } else { 0 };
            tx.execute(
                "INSERT INTO sign_in_failures (email_hash, failures, locked_until, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (email_hash) DO UPDATE SET failures = excluded.failures,
                 locked_until = excluded.locked_until, updated_at = excluded.updated_at",
                params![key, if failures >= MAX_FAILURES { 0 } else { failures }, locked_until, now],
            )?;
            if failures >= MAX_FAILURES
                && let Some(user) = &user
            {
                self.audit_user(tx, user, Action::UserLocked, serde_json::json!({"minutes": LOCKOUT_MS / 60_000}))?;
            }
            Ok(failures >= MAX_FAILURES)
        });
        match counted {
            Ok(true) => Error::Locked { retry_after_seconds: (LOCKOUT_MS / 1000) as u64 },
            Ok(false) => Error::Unauthenticated,
            Err(e) => e,
        }
    }

    /// The person behind a session token, while the session lives (it ends after
    /// [`SESSION_IDLE_MS`] unused or [`SESSION_MAX_MS`] in all); each use extends the idle window.
    /// Only a session the person opened themselves (password, passkey) counts here, for what
    /// reaches the whole account (second factors, passkeys, the password): a session a tenant's
    /// single sign-on opened is confined to that tenant ([`Core::session`]).
    pub fn session_user(&self, token: &str) -> Result<User> {
        match self.session(token)? {
            (user, None) => Ok(user),
            (_, Some(_)) => Err(Error::NotAllowedForSession),
        }
    }

    /// The person behind a session token, and the one tenant the session is confined to when a
    /// tenant's single sign-on opened it.
    pub fn session(&self, token: &str) -> Result<(User, Option<TenantId>)> {
        let hash = token_hash(token);
        let now = self.now();
        let found: Option<(String, Option<String>)> = self.write(|tx| {
            let row: Option<(String, Millis, Millis, Option<String>)> = tx
                .query_row(
                    "SELECT user_id, last_seen, expires_at, tenant_id FROM web_sessions WHERE token_hash = ?1",
                    params![hash],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            match row {
                Some((user, last_seen, expires_at, tenant))
                    if now < expires_at && now - last_seen < SESSION_IDLE_MS =>
                {
                    tx.execute("UPDATE web_sessions SET last_seen = ?2 WHERE token_hash = ?1", params![hash, now])?;
                    Ok(Some((user, tenant)))
                }
                Some(_) => {
                    tx.execute("DELETE FROM web_sessions WHERE token_hash = ?1", params![hash])?;
                    Ok(None)
                }
                None => Ok(None),
            }
        })?;
        let (user, tenant) = found.ok_or(Error::Unauthenticated)?;
        Ok((self.user(&UserId::new(user)?)?, tenant.map(TenantId::new).transpose()?))
    }

    /// Ends a session (signing out). Unknown tokens are ignored.
    pub fn sign_out(&self, token: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute("DELETE FROM web_sessions WHERE token_hash = ?1", params![token_hash(token)])?;
            Ok(())
        })
    }
}
