//! Second chances and second factors: password resets and changes, TOTP, and the CSRF tokens a
//! web front end binds its forms with.

use super::*;

impl Core {
    /// Starts a password reset for an email: a token valid [`RESET_MS`] and good once, for the
    /// operator's mailer to send, or `None` for an email with no account (answer the person the
    /// same either way).
    pub fn request_password_reset(&self, email: &str) -> Result<Option<Token>> {
        let Ok(email) = normalize_email(email) else { return Ok(None) };
        let Some(row) = self.user_row("email", &email)? else { return Ok(None) };
        let token = Token::new("pr-");
        let now = self.now();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO password_resets (token_hash, user_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![token_hash(token.secret()), row.user.id.as_str(), now, now + RESET_MS],
            )?;
            Ok(())
        })?;
        Ok(Some(token))
    }

    /// Sets a new password with a reset token: every session of the person ends, their lockout
    /// lifts, and every reset token of theirs is spent.
    pub fn reset_password(&self, token: &str, new_password: &str) -> Result<()> {
        let hash = token_hash(token);
        let now = self.now();
        let user: Option<String> = self.read(|c| {
            c.query_row(
                "SELECT user_id FROM password_resets WHERE token_hash = ?1 AND expires_at > ?2",
                params![hash, now],
                |r| r.get(0),
            )
            .optional()
        })?;
        let user = self.user(&UserId::new(user.ok_or(Error::Unauthenticated)?)?)?;
        self.set_password(&user, new_password, Some(&hash))
    }

    /// Changes a signed-in person's password, given the current one; their other sessions end.
    pub fn change_password(&self, session: &str, current: &str, new_password: &str) -> Result<()> {
        let user = self.session_user(session)?;
        let row = self.user_row("id", user.id.as_str())?.ok_or(Error::Unauthenticated)?;
        if !verify_password(current, &row.password_hash) {
            return Err(Error::Unauthenticated);
        }
        self.set_password(&user, new_password, None)?;
        Ok(())
    }

    fn set_password(&self, user: &User, new_password: &str, reset: Option<&[u8]>) -> Result<()> {
        check_password(new_password, &user.email)?;
        let phc = hash_password(new_password)?;
        self.write(|tx| {
            if let Some(hash) = reset {
                // The token is spent here, in the same transaction as the change: good once.
                if tx.execute("DELETE FROM password_resets WHERE token_hash = ?1", params![hash])? == 0 {
                    return Err(Error::Unauthenticated);
                }
            }
            tx.execute("UPDATE users SET password_hash = ?2 WHERE id = ?1", params![user.id.as_str(), phc])?;
            tx.execute("DELETE FROM web_sessions WHERE user_id = ?1", [user.id.as_str()])?;
            tx.execute("DELETE FROM password_resets WHERE user_id = ?1", [user.id.as_str()])?;
            tx.execute("DELETE FROM sign_in_failures WHERE email_hash = ?1", params![email_hash(&user.email)])?;
            self.audit_user(tx, &user.id, Action::UserPasswordChanged, serde_json::json!({"by_reset": reset.is_some()}))
        })
    }

    /// Starts a TOTP second factor for a signed-in person: a fresh secret (wrapped by the root
    /// key when stored) that [`Core::confirm_totp`] turns on once a code from it checks.
    pub fn begin_totp(&self, session: &str) -> Result<TotpSetup> {
        let user = self.session_user(session)?;
        if user.totp_enabled {
            return Err(Error::InvalidArgument("a TOTP second factor is on already".into()));
        }
        let mut secret = Zeroizing::new(vec![0u8; 20]);
        random_bytes(&mut secret);
        let t = totp(&secret, &user.email)?;
        let wrapped = self.root_key().wrap(&totp_aad(&user.id), &secret)?;
        self.write(|tx| {
            tx.execute(
                "UPDATE users SET totp_wrapped = ?2 WHERE id = ?1 AND totp_enabled = 0",
                params![user.id.as_str(), wrapped],
            )?;
            Ok(())
        })?;
        let url = t.to_url().map_err(|_| Error::InvalidArgument("the email cannot name a TOTP account".into()))?;
        Ok(TotpSetup { secret_base32: Zeroizing::new(t.secret().to_base32()), otpauth_url: Zeroizing::new(url) })
    }

    /// Turns the second factor on with a code from the authenticator.
    pub fn confirm_totp(&self, session: &str, code: &str) -> Result<()> {
        let user = self.session_user(session)?;
        let row = self.user_row("id", user.id.as_str())?.ok_or(Error::Unauthenticated)?;
        if row.user.totp_enabled || row.totp_wrapped.is_none() {
            return Err(Error::InvalidArgument("no TOTP setup is waiting".into()));
        }
        if !self.check_totp(&row, code)? {
            return Err(Error::Unauthenticated);
        }
        self.write(|tx| {
            tx.execute("UPDATE users SET totp_enabled = 1 WHERE id = ?1", [user.id.as_str()])?;
            self.audit_user(tx, &user.id, Action::UserTotpEnabled, serde_json::json!({}))
        })
    }

    /// Turns the second factor off, given a current code.
    pub fn disable_totp(&self, session: &str, code: &str) -> Result<()> {
        let user = self.session_user(session)?;
        let row = self.user_row("id", user.id.as_str())?.ok_or(Error::Unauthenticated)?;
        if !row.user.totp_enabled || !self.check_totp(&row, code)? {
            return Err(Error::Unauthenticated);
        }
        self.write(|tx| {
            tx.execute("UPDATE users SET totp_enabled = 0, totp_wrapped = NULL WHERE id = ?1", [user.id.as_str()])?;
            self.audit_user(tx, &user.id, Action::UserTotpDisabled, serde_json::json!({}))
        })
    }

    /// Checks a TOTP code (one step of clock skew either way), each step accepted once.
    pub(super) fn check_totp(&self, row: &UserRow, code: &str) -> Result<bool> {
        let Some(wrapped) = &row.totp_wrapped else { return Ok(false) };
        let secret = self.root_key().unwrap(&totp_aad(&row.user.id), wrapped)?;
        let t = totp(&secret, &row.user.email)?;
        let now = u64::try_from(self.now() / 1000).unwrap_or(0);
        let Some(step) = t.check(code.trim(), now) else { return Ok(false) };
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        // Replay: a step at or before the last one accepted is refused.
        let fresh = self.write(|tx| {
            Ok(tx.execute(
                "UPDATE users SET totp_last_step = ?2 WHERE id = ?1 AND totp_last_step < ?2",
                params![row.user.id.as_str(), step],
            )? == 1)
        })?;
        Ok(fresh)
    }
}

/// A TOTP code for a base32 secret at a time (Unix seconds): what an authenticator app shows.
/// For tests and tools.
pub fn totp_code(secret_base32: &str, email: &str, unix_seconds: u64) -> Result<String> {
    let secret = totp_rs::Secret::try_from_base32(secret_base32)
        .map_err(|_| Error::InvalidArgument("not a base32 TOTP secret".into()))?;
    Ok(totp(secret.as_ref(), email)?.generate(unix_seconds).to_string())
}

/// A CSRF token bound to a secret the browser holds only in an HttpOnly cookie (its session
/// token, or before sign-in a random value from [`csrf_seed`]): a form carries the token, and a
/// post whose token does not match its cookie is refused. Another site can make the browser send
/// the cookie but can neither read it nor compute the token.
pub fn csrf_token(bound_to: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"soramai csrf\0");
    h.update(bound_to.as_bytes());
    hex::encode(h.finalize())
}

/// Whether `presented` is the CSRF token for `bound_to` (compared in constant time).
pub fn csrf_valid(bound_to: &str, presented: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    !bound_to.is_empty() && bool::from(csrf_token(bound_to).as_bytes().ct_eq(presented.as_bytes()))
}

/// A fresh random value for a pre-session CSRF cookie.
pub fn csrf_seed() -> String {
    random_hex(32)
}
