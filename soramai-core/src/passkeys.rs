//! Passkeys (WebAuthn, through `webauthn-rs`): a person signs in with a key their device holds,
//! checked by its public key, instead of a password and a code.
//!
//! - A signed-in person registers a passkey ([`Core::begin_passkey_registration`], then
//!   [`Core::finish_passkey_registration`] with the browser's answer); they list and remove them.
//! - Signing in starts from the email ([`Core::begin_passkey_sign_in`]): the challenge names the
//!   person's passkeys only, and is good for [`CEREMONY_MS`], once. The answer
//!   ([`Core::finish_passkey_sign_in`]) must be signed by one of them with user verification; its
//!   signature counter must move forward. A passkey stands for both factors, so no TOTP code is
//!   asked for. A failed answer counts towards the email's lockout, as a wrong password does.
//! - What is stored is public: credential ids, public keys, counters. A ceremony's state is kept
//!   under the hash of its id and removed when it is answered or runs out.

use serde::Serialize;
use sha2::{Digest, Sha256};
/// The browser-facing shapes of the ceremonies (JSON with base64url fields).
pub use webauthn_rs::prelude::{
    CreationChallengeResponse, PublicKeyCredential, RegisterPublicKeyCredential, RequestChallengeResponse,
};
use webauthn_rs::prelude::{Passkey, PasskeyAuthentication, PasskeyRegistration, Url, Uuid, Webauthn, WebauthnBuilder};

use crate::accounts::{Token, email_hash, normalize_email, token_hash};
use crate::audit::vocabulary::Action;
use crate::clock::Millis;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::ids::{UserId, random_hex};
use crate::params;
use crate::store::OptionalExt as _;
use crate::{IssuedSession, User};

/// How long a registration or sign-in ceremony may take.
pub const CEREMONY_MS: Millis = 5 * 60 * 1000;
/// Most passkeys one person may hold.
pub const MAX_PASSKEYS: usize = 20;

/// The relying party: the site's origin (what the browser shows) and, from it, the id passkeys
/// are bound to.
#[derive(Debug)]
pub struct PasskeyConfig {
    webauthn: Webauthn,
    origin: Url,
}

impl PasskeyConfig {
    /// For a site at `origin` (`https://soramai.example`, or `http://localhost:8080` while
    /// developing: browsers allow passkeys on https and on localhost only).
    pub fn new(origin: &str) -> Result<Self> {
        let bad = || Error::InvalidArgument(format!("{origin:?} is no origin passkeys can be bound to"));
        let url = Url::parse(origin).map_err(|_| bad())?;
        let host = url.domain().ok_or_else(bad)?.to_owned();
        if url.scheme() != "https" && host != "localhost" {
            return Err(bad());
        }
        let webauthn =
            WebauthnBuilder::new(&host, &url).and_then(|b| b.rp_name("Soramai").build()).map_err(|_| bad())?;
        Ok(Self { webauthn, origin: url })
    }

    /// The origin.
    pub fn origin(&self) -> &Url {
        &self.origin
    }
}

/// A passkey as listed (never its key material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PasskeyInfo {
    /// `pk-<hex>`.
    pub id: String,
    /// The name its owner gave it.
    pub name: String,
    /// Registered, Unix ms.
    pub created_at: Millis,
    /// Last used to sign in, Unix ms.
    pub last_used_at: Option<Millis>,
}

/// The handle a person's passkeys carry: derived from the user id, so it names no email.
fn user_handle(user: &UserId) -> Uuid {
    let d = Sha256::digest(format!("soramai passkey user\0{}", user.as_str()).as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    Uuid::from_bytes(b)
}

fn unverified() -> Error {
    Error::InvalidArgument("the passkey's answer could not be verified".into())
}

impl Core {
    /// Starts registering a passkey for the signed-in person: the options for the browser's
    /// `navigator.credentials.create`. A ceremony begun earlier and not finished is replaced.
    pub fn begin_passkey_registration(
        &self,
        config: &PasskeyConfig,
        session_token: &str,
    ) -> Result<CreationChallengeResponse> {
        let user = self.session_user(session_token)?;
        let held = self.passkey_rows(&user.id)?;
        if held.len() >= MAX_PASSKEYS {
            return Err(Error::InvalidArgument(format!("a person holds at most {MAX_PASSKEYS} passkeys")));
        }
        let exclude = held.iter().map(|(_, pk)| pk.cred_id().clone()).collect();
        let (options, state) = config
            .webauthn
            .start_passkey_registration(user_handle(&user.id), &user.email, &user.email, Some(exclude))
            .map_err(|e| Error::InvalidArgument(format!("passkey registration could not start: {e}")))?;
        self.save_ceremony(&user.id, "register", &format!("register:{}", user.id.as_str()), &state)?;
        Ok(options)
    }

    /// Finishes registering: checks the browser's answer against the ceremony and stores the
    /// passkey under `name` (1 to 64 printable characters).
    pub fn finish_passkey_registration(
        &self,
        config: &PasskeyConfig,
        session_token: &str,
        name: &str,
        answer: &RegisterPublicKeyCredential,
    ) -> Result<PasskeyInfo> {
        let user = self.session_user(session_token)?;
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(Error::InvalidArgument("a passkey's name is 1 to 64 printable characters".into()));
        }
        let state: PasskeyRegistration = self.take_ceremony(&format!("register:{}", user.id.as_str()), "register")?.1;
        let passkey = config.webauthn.finish_passkey_registration(answer, &state).map_err(|_| unverified())?;
        let credential = serde_json::to_string(passkey.cred_id()).map_err(|_| Error::Integrity)?;
        let stored = serde_json::to_string(&passkey).map_err(|_| Error::Integrity)?;
        let info = PasskeyInfo {
            id: format!("pk-{}", random_hex(12)),
            name: name.to_owned(),
            created_at: self.now(),
            last_used_at: None,
        };
        self.write(|tx| {
            let taken: Option<String> = tx
                .query_row("SELECT id FROM passkeys WHERE credential_id = ?1", [credential.as_str()], |r| r.get(0))
                .optional()?;
            if taken.is_some() {
                return Err(Error::AlreadyExists { kind: "passkey" });
            }
            tx.execute(
                "INSERT INTO passkeys (id, user_id, credential_id, name, passkey, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![info.id, user.id.as_str(), credential, info.name, stored, info.created_at],
            )?;
            self.audit_user(tx, &user.id, Action::UserPasskeyAdded, serde_json::json!({"passkey": info.id}))
        })?;
        Ok(info)
    }

    /// The signed-in person's passkeys.
    pub fn passkeys(&self, session_token: &str) -> Result<Vec<PasskeyInfo>> {
        let user = self.session_user(session_token)?;
        self.read(|c| {
            c.query_map(
                "SELECT id, name, created_at, last_used_at FROM passkeys WHERE user_id = ?1 ORDER BY created_at, id",
                [user.id.as_str()],
                |r| Ok(PasskeyInfo { id: r.get(0)?, name: r.get(1)?, created_at: r.get(2)?, last_used_at: r.get(3)? }),
            )
        })
    }

    /// Removes one of the signed-in person's passkeys (another's is not found).
    pub fn delete_passkey(&self, session_token: &str, id: &str) -> Result<()> {
        let user = self.session_user(session_token)?;
        self.write(|tx| {
            let n = tx.execute("DELETE FROM passkeys WHERE id = ?1 AND user_id = ?2", params![id, user.id.as_str()])?;
            if n == 0 {
                return Err(Error::NotFound { kind: "passkey" });
            }
            self.audit_user(tx, &user.id, Action::UserPasskeyRemoved, serde_json::json!({"passkey": id}))
        })
    }

    /// Starts a passkey sign-in for an email: the ceremony's id (keep it with the browser, e.g.
    /// in a cookie) and the options for `navigator.credentials.get`. An email without passkeys,
    /// known or not, is `Unauthenticated`; a locked one is `Locked`.
    pub fn begin_passkey_sign_in(
        &self,
        config: &PasskeyConfig,
        email: &str,
    ) -> Result<(Token, RequestChallengeResponse)> {
        let email = normalize_email(email).map_err(|_| Error::Unauthenticated)?;
        self.check_not_locked(&email_hash(&email))?;
        let user = self.user_row("email", &email)?.ok_or(Error::Unauthenticated)?.user;
        let keys: Vec<Passkey> = self.passkey_rows(&user.id)?.into_iter().map(|(_, pk)| pk).collect();
        if keys.is_empty() {
            return Err(Error::Unauthenticated);
        }
        let (options, state) =
            config.webauthn.start_passkey_authentication(&keys).map_err(|_| Error::Unauthenticated)?;
        let ceremony = Token::new("wa-");
        self.save_ceremony(&user.id, "sign_in", ceremony.secret(), &state)?;
        Ok((ceremony, options))
    }

    /// Finishes a passkey sign-in: the answer must be signed by one of the person's passkeys for
    /// this ceremony (used once). Returns a new session.
    pub fn finish_passkey_sign_in(
        &self,
        config: &PasskeyConfig,
        ceremony: &str,
        answer: &PublicKeyCredential,
    ) -> Result<IssuedSession> {
        let (user, state): (UserId, PasskeyAuthentication) =
            self.take_ceremony(ceremony, "sign_in").map_err(|_| Error::Unauthenticated)?;
        let user: User = self.user(&user)?;
        let key = email_hash(&user.email);
        self.check_not_locked(&key)?;
        let result = match config.webauthn.finish_passkey_authentication(answer, &state) {
            Ok(r) if r.user_verified() => r,
            _ => return Err(self.sign_in_failed(&key, Some(user.id.clone()))),
        };
        let now = self.now();
        for (id, mut pk) in self.passkey_rows(&user.id)? {
            if pk.update_credential(&result).is_some() {
                let stored = serde_json::to_string(&pk).map_err(|_| Error::Integrity)?;
                self.write(|tx| {
                    tx.execute(
                        "UPDATE passkeys SET passkey = ?2, last_used_at = ?3 WHERE id = ?1",
                        params![id, stored, now],
                    )?;
                    Ok(())
                })?;
            }
        }
        self.start_session(user, &key, "passkey")
    }

    /// A person's passkeys with their row ids.
    fn passkey_rows(&self, user: &UserId) -> Result<Vec<(String, Passkey)>> {
        let rows: Vec<(String, String)> = self.read(|c| {
            c.query_map(
                "SELECT id, passkey FROM passkeys WHERE user_id = ?1 ORDER BY created_at, id",
                [user.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })?;
        rows.into_iter()
            .map(|(id, json)| Ok((id, serde_json::from_str(&json).map_err(|_| Error::Integrity)?)))
            .collect()
    }

    fn save_ceremony(&self, user: &UserId, kind: &str, id: &str, state: &impl Serialize) -> Result<()> {
        let state = serde_json::to_string(state).map_err(|_| Error::Integrity)?;
        let now = self.now();
        self.write(|tx| {
            tx.execute("DELETE FROM webauthn_ceremonies WHERE expires_at <= ?1", params![now])?;
            tx.execute(
                "INSERT INTO webauthn_ceremonies (id_hash, user_id, kind, state, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id_hash) DO UPDATE SET state = excluded.state, expires_at = excluded.expires_at",
                params![token_hash(id), user.as_str(), kind, state, now + CEREMONY_MS],
            )?;
            Ok(())
        })
    }

    /// Takes a ceremony (it is removed whatever the answer): its person and state.
    fn take_ceremony<S: serde::de::DeserializeOwned>(&self, id: &str, kind: &str) -> Result<(UserId, S)> {
        let hash = token_hash(id);
        let now = self.now();
        let row: Option<(String, String, Millis)> = self.write(|tx| {
            let row = tx
                .query_row(
                    "SELECT user_id, state, expires_at FROM webauthn_ceremonies WHERE id_hash = ?1 AND kind = ?2",
                    params![hash, kind],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            tx.execute("DELETE FROM webauthn_ceremonies WHERE id_hash = ?1", params![hash])?;
            Ok(row)
        })?;
        let (user, state, _) = row.filter(|r| r.2 > now).ok_or_else(unverified)?;
        Ok((UserId::new(user)?, serde_json::from_str(&state).map_err(|_| Error::Integrity)?))
    }
}
