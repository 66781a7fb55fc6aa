//! The web pages for people, rendered on the server (minijinja, auto-escaped; no script, no
//! outside asset): `GET/POST /sign_in`, `POST /sign_out`, `GET/POST /invitations/accept`,
//! `GET /dashboard`, `GET /account` with the TOTP set-up, and the tenant pages of
//! [`crate::dashboard`].
//!
//! - The session lives in the `soramai_session` cookie: `HttpOnly; Secure; SameSite=Strict`.
//!   Signing in always makes a new session (a session id planted before sign-in is ended, never
//!   adopted), and signing out ends it on the server.
//! - Every form that changes state carries a CSRF token bound to the session token (before
//!   sign-in, to a random value in the `soramai_csrf` cookie, also HttpOnly): a post without
//!   the matching token is refused with a 403 and changes nothing.
//! - Wrong credentials get one answer; five in a row lock the email (a 429), known or not; one
//!   client address gets [`ATTEMPTS_PER_ADDRESS`] password attempts in a burst (by default).
//! - Pages are sent with `Cache-Control: no-store`, a `Content-Security-Policy` that allows
//!   nothing from elsewhere (and no framing), and `Referrer-Policy: no-referrer`.

use axum::Extension;
use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use soramai::Error;
use soramai::accounts::{csrf_seed, csrf_token, csrf_valid};

use crate::conn::Peer;
use crate::site::*;
use crate::state::AppState;

/// The checks before a post that tries a password (sign-in, invitation acceptance): the
/// pre-session CSRF token (a 403), then the client address's attempts (a 429). Returns the CSRF
/// seed to render the form again with.
fn password_post_checks(
    s: &AppState,
    peer: Option<Extension<Peer>>,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<String, Box<Response>> {
    let Some(seed) = cookie(headers, CSRF_COOKIE).filter(|seed| csrf_valid(seed, csrf)) else {
        return Err(Box::new(forbidden()));
    };
    match attempt_refusal(s, peer) {
        Some(r) => Err(Box::new(r)),
        None => Ok(seed),
    }
}

/// The web routes (outside `/v1` and its API-key authentication).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/sign_in", get(sign_in_page).post(sign_in))
        .route("/sign_out", post(sign_out))
        .route("/dashboard", get(dashboard))
        .route("/invitations/accept", get(accept_page).post(accept))
        .route("/account", get(account))
        .route("/account/totp", post(begin_totp))
        .route("/account/totp/confirm", post(confirm_totp))
        .route("/sign_up", get(sign_up_page).post(sign_up))
        .route("/reset_password", get(reset_page).post(reset_password))
        .route("/assets/dashboard.js", get(script))
}

/// The pre-session CSRF value: the cookie's, or a new one to set.
fn pre_session(headers: &HeaderMap) -> (String, Vec<String>) {
    match cookie(headers, CSRF_COOKIE) {
        Some(v) => (v, Vec::new()),
        None => {
            let v = csrf_seed();
            let set = set_cookie(CSRF_COOKIE, &v, 3600);
            (v, vec![set])
        }
    }
}

async fn sign_in_page(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let (seed, cookies) = pre_session(&headers);
    let ctx = json!({"csrf": csrf_token(&seed), "email": "", "sign_up": s.sign_up_open(), "passkeys": s.passkeys().is_some(),
        "sso": s.sso().is_some()});
    page(StatusCode::OK, "sign_in.html", ctx, &cookies)
}

#[derive(Deserialize)]
struct SignInForm {
    email: String,
    password: String,
    #[serde(default)]
    totp: String,
    csrf: String,
}

async fn sign_in(
    State(s): State<AppState>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Form(f): Form<SignInForm>,
) -> Response {
    let seed = match password_post_checks(&s, peer, &headers, &f.csrf) {
        Ok(seed) => seed,
        Err(r) => return *r,
    };
    let core = s.platform().accounts();
    // Whatever session the browser brought is ended: sign-in always starts a new one.
    if let Some(old) = cookie(&headers, SESSION_COOKIE) {
        let core = core.clone();
        let _ = blocking(move || core.sign_out(&old)).await;
    }
    let email = f.email.clone();
    let totp = Some(f.totp.trim().to_owned()).filter(|t| !t.is_empty());
    let signed = blocking(move || core.sign_in(&f.email, &f.password, totp.as_deref())).await;
    let retry = |status, error: &str| {
        page(status, "sign_in.html", json!({"error": error, "csrf": csrf_token(&seed), "email": email}), &[])
    };
    match signed {
        Ok(session) => {
            let max_age = (session.expires_at - s.platform().accounts().now()) / 1000;
            let cookies = [set_cookie(SESSION_COOKIE, session.token.secret(), max_age), clear_cookie(CSRF_COOKIE)];
            redirect("/dashboard", &cookies)
        }
        Err(Error::SecondFactorRequired) => {
            retry(StatusCode::UNAUTHORIZED, "Enter the 6-digit code from your authenticator app.")
        }
        Err(Error::Locked { .. }) => retry(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed attempts. This account is locked for 15 minutes; you can reset your password.",
        ),
        Err(Error::Unauthenticated | Error::InvalidArgument(_)) => {
            retry(StatusCode::UNAUTHORIZED, "Wrong email, password or code.")
        }
        Err(_) => retry(StatusCode::INTERNAL_SERVER_ERROR, "Signing in failed. Please try again."),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

/// The dashboard's one script (a running job's live progress), served by the binary.
async fn script() -> Response {
    let mut res = ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("../assets/dashboard.js"))
        .into_response();
    res.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

async fn sign_up_page(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if !s.sign_up_open() {
        return crate::site::not_found();
    }
    let (seed, cookies) = pre_session(&headers);
    page(StatusCode::OK, "sign_up.html", json!({"csrf": csrf_token(&seed), "email": "", "team": ""}), &cookies)
}

#[derive(Deserialize)]
struct SignUpForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    team: String,
    #[serde(default)]
    csrf: String,
}

/// Makes an account and a Free tenant it owns, then signs it in (a new session).
async fn sign_up(
    State(s): State<AppState>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Form(f): Form<SignUpForm>,
) -> Response {
    if !s.sign_up_open() {
        return crate::site::not_found();
    }
    let seed = match password_post_checks(&s, peer, &headers, &f.csrf) {
        Ok(seed) => seed,
        Err(r) => return *r,
    };
    let core = s.platform().accounts();
    let (email, team) = (f.email.clone(), f.team.clone());
    let made = blocking(move || {
        let tenant = soramai::TenantId::new(f.team.trim())?;
        core.sign_up(&f.email, &f.password, &tenant)?;
        let session = core.sign_in(&f.email, &f.password, None)?;
        Ok((tenant, session))
    })
    .await;
    match made {
        Ok((tenant, session)) => {
            let max_age = (session.expires_at - s.platform().accounts().now()) / 1000;
            let cookies = [set_cookie(SESSION_COOKIE, session.token.secret(), max_age), clear_cookie(CSRF_COOKIE)];
            redirect(&format!("/t/{}/datasets", tenant.as_str()), &cookies)
        }
        Err(e) => {
            let (status, error) = match e {
                Error::InvalidArgument(m) => (StatusCode::BAD_REQUEST, m),
                Error::AlreadyExists { .. } => {
                    (StatusCode::CONFLICT, "That email already has an account, or that team name is taken.".into())
                }
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "Signing up failed. Please try again.".into()),
            };
            let ctx = json!({"error": error, "csrf": csrf_token(&seed), "email": email, "team": team});
            page(status, "sign_up.html", ctx, &[])
        }
    }
}

async fn sign_out(State(s): State<AppState>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let Some(token) = cookie(&headers, SESSION_COOKIE) else { return redirect("/sign_in", &[]) };
    if let Some(r) = csrf_refusal(&token, &f.csrf) {
        return r;
    }
    let core = s.platform().accounts();
    let _ = blocking(move || core.sign_out(&token)).await;
    redirect("/sign_in", &[clear_cookie(SESSION_COOKIE)])
}

async fn dashboard(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let Some(token) = cookie(&headers, SESSION_COOKIE) else { return redirect("/sign_in", &[]) };
    let core = s.platform().accounts();
    let t = token.clone();
    let found = blocking(move || {
        let (user, confined) = core.session(&t)?;
        // A session a tenant's single sign-on opened shows that tenant only.
        let memberships: Vec<_> = core
            .memberships(&user.id)?
            .into_iter()
            .filter(|m| confined.as_ref().is_none_or(|t| &m.tenant == t))
            .collect();
        Ok((user, memberships))
    })
    .await;
    let Ok((user, memberships)) = found else { return redirect("/sign_in", &[clear_cookie(SESSION_COOKIE)]) };
    let rows: Vec<_> = memberships
        .iter()
        .map(|m| json!({"tenant": m.tenant.as_str(), "role": m.role.as_str(), "since": m.created_at / 1000}))
        .collect();
    page(
        StatusCode::OK,
        "dashboard.html",
        json!({"email": user.email, "totp": user.totp_enabled, "memberships": rows, "csrf": csrf_token(&token),
            "operator": memberships.iter().any(|m| m.tenant.as_str() == soramai::OPERATOR_TENANT
                && m.role >= soramai::accounts::Role::Admin)}),
        &[],
    )
}

#[derive(Deserialize)]
struct TokenQuery {
    token: String,
}

async fn accept_page(headers: HeaderMap, Query(q): Query<TokenQuery>) -> Response {
    token_page(&headers, q, "accept.html")
}

#[derive(Deserialize)]
struct AcceptForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

async fn accept(
    State(s): State<AppState>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Form(f): Form<AcceptForm>,
) -> Response {
    let refused = "This invitation is not valid (used, expired, or the password does not match the account).";
    token_password_post(&s, peer, &headers, f, "accept.html", refused, |core, token, password| {
        core.accept_invitation(token, password).map(drop)
    })
    .await
}

/// The page a password-reset link opens (`/reset_password?token=pr-…`: the token
/// [`soramai::Accounts::request_password_reset`] gave the operator's mailer).
async fn reset_page(headers: HeaderMap, Query(q): Query<TokenQuery>) -> Response {
    token_page(&headers, q, "reset.html")
}

/// Sets the new password (the token good once, within its hour); then to sign-in.
async fn reset_password(
    State(s): State<AppState>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Form(f): Form<AcceptForm>,
) -> Response {
    let refused = "This link is not valid (used, or older than an hour).";
    token_password_post(&s, peer, &headers, f, "reset.html", refused, |core, token, password| {
        core.reset_password(token, password)
    })
    .await
}

/// A page whose form carries a one-time token from a link (an invitation, a password reset).
fn token_page(headers: &HeaderMap, q: TokenQuery, template: &str) -> Response {
    let (seed, cookies) = pre_session(headers);
    page(StatusCode::OK, template, json!({"csrf": csrf_token(&seed), "token": q.token}), &cookies)
}

/// The post of a token-and-password form: the password form's checks (CSRF, attempts per
/// address), then `act`; on success to sign-in, else the form again with the reason (the
/// input's own fault, or `refused`).
async fn token_password_post(
    s: &AppState,
    peer: Option<Extension<Peer>>,
    headers: &HeaderMap,
    f: AcceptForm,
    template: &str,
    refused: &str,
    act: impl FnOnce(&soramai::Accounts, &str, &str) -> Result<(), Error> + Send + 'static,
) -> Response {
    let seed = match password_post_checks(s, peer, headers, &f.csrf) {
        Ok(seed) => seed,
        Err(r) => return *r,
    };
    let core = s.platform().accounts();
    let token = f.token.clone();
    match blocking(move || act(&core, &f.token, &f.password)).await {
        Ok(()) => redirect("/sign_in", &[]),
        Err(e) => {
            let (status, error) = match e {
                Error::InvalidArgument(m) => (StatusCode::BAD_REQUEST, m),
                _ => (StatusCode::UNAUTHORIZED, refused.to_owned()),
            };
            page(status, template, json!({"error": error, "csrf": csrf_token(&seed), "token": token}), &[])
        }
    }
}

/// The signed-in person's session token and account; a redirect to sign-in without one.
async fn signed_in(s: &AppState, headers: &HeaderMap) -> Result<(String, soramai::accounts::User), Box<Response>> {
    let Some(token) = cookie(headers, SESSION_COOKIE) else { return Err(Box::new(redirect("/sign_in", &[]))) };
    let core = s.platform().accounts();
    let t = token.clone();
    match blocking(move || core.session_user(&t)).await {
        Ok(user) => Ok((token, user)),
        Err(Error::NotAllowedForSession) => Err(Box::new(crate::site::message(
            StatusCode::FORBIDDEN,
            "You signed in through your organization's provider: your account's own settings need a sign-in with your password or a passkey.",
        ))),
        Err(_) => Err(Box::new(redirect("/sign_in", &[clear_cookie(SESSION_COOKIE)]))),
    }
}

async fn account_page(
    s: &AppState,
    status: StatusCode,
    token: &str,
    user: &soramai::accounts::User,
    setup: serde_json::Value,
    error: Option<String>,
) -> Response {
    let (core, t) = (s.platform().accounts(), token.to_owned());
    let passkeys = blocking(move || core.passkeys(&t)).await.unwrap_or_default();
    let passkeys: Vec<_> = passkeys
        .iter()
        .map(|p| {
            json!({"id": p.id, "name": p.name, "created": crate::site::utc(p.created_at),
            "used": p.last_used_at.map(crate::site::utc)})
        })
        .collect();
    let ctx = json!({"email": user.email, "totp": user.totp_enabled, "setup": setup, "error": error,
        "csrf": csrf_token(token), "passkeys_on": s.passkeys().is_some(), "passkeys": passkeys});
    page(status, "account.html", ctx, &[])
}

async fn account(State(s): State<AppState>, headers: HeaderMap) -> Response {
    match signed_in(&s, &headers).await {
        Ok((token, user)) => account_page(&s, StatusCode::OK, &token, &user, serde_json::Value::Null, None).await,
        Err(r) => *r,
    }
}

/// Starts the TOTP set-up: the secret is shown on this page once (stored wrapped).
async fn begin_totp(State(s): State<AppState>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let (token, user) = match signed_in(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if let Some(r) = csrf_refusal(&token, &f.csrf) {
        return r;
    }
    let (core, t) = (s.platform().accounts(), token.clone());
    match blocking(move || core.begin_totp(&t)).await {
        Ok(setup) => {
            let shown = json!({"secret": setup.secret_base32.as_str(), "url": setup.otpauth_url.as_str()});
            account_page(&s, StatusCode::OK, &token, &user, shown, None).await
        }
        Err(e) => {
            account_page(&s, StatusCode::BAD_REQUEST, &token, &user, serde_json::Value::Null, Some(e.to_string())).await
        }
    }
}

#[derive(Deserialize)]
struct CodeForm {
    code: String,
    csrf: String,
}

async fn confirm_totp(State(s): State<AppState>, headers: HeaderMap, Form(f): Form<CodeForm>) -> Response {
    let (token, user) = match signed_in(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if let Some(r) = csrf_refusal(&token, &f.csrf) {
        return r;
    }
    let (core, t) = (s.platform().accounts(), token.clone());
    match blocking(move || core.confirm_totp(&t, &f.code)).await {
        Ok(()) => redirect("/account", &[]),
        Err(_) => {
            account_page(
                &s,
                StatusCode::BAD_REQUEST,
                &token,
                &user,
                serde_json::Value::Null,
                Some("That code did not match: set up again and enter the current code.".into()),
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    /// Every template parses and renders with the data its handler gives it.
    #[test]
    fn every_page_renders() {
        let base = json!({"tenant": "acme", "email": "a@b.c", "role": "admin", "tier": "basic", "balance": 5,
            "csrf": "t", "section": "jobs", "here": "/t/acme/jobs"});
        let job = json!({"id": "job-1", "state": "running", "percent": 50.0, "done": false, "model": "m",
            "dataset": "file-1", "suffix": "", "created": "2026-01-01 00:00:00", "finished": null, "error": null,
            "fine_tuned_model": null, "total_steps": 4});
        let chart = json!({"steps": 2, "points": "0,0 600,200", "first": "2.0", "last": "1.0", "min": "1.0",
            "max": "2.0", "table": [{"step": 1, "loss": "2.0"}, {"step": 2, "loss": "1.0"}]});
        let pages = [
            (
                "job.html",
                json!({"job": job, "chart": chart, "events": [{"seq": 1, "at": "x", "kind": "progress", "text": "t"}]}),
            ),
            ("job.html", json!({"job": job, "chart": {"steps": 0}, "events": []})),
            (
                "jobs.html",
                json!({"jobs": [{"id": "job-1", "state": "queued", "percent": 0.0, "model": "m", "dataset": "d",
                "created": "x", "fine_tuned_model": null}], "datasets": [{"id": "file-1", "name": "n"}], "bases": ["m"]}),
            ),
            (
                "models.html",
                json!({"fine_tuned": [{"id": "ft:m:acme:x:1", "base": "m", "job": "job-1", "trained_tokens": 1,
                "created": "x"}], "custom": [{"id": "gguf:acme:x:1", "name": "x", "bytes": 1, "sha256": "ab".repeat(32),
                "architecture": "llama", "created": "x"}]}),
            ),
            ("corpora.html", json!({"corpora": ["kb"]})),
            ("corpus.html", json!({"corpus": "kb", "documents": ["a/b"]})),
            (
                "grants.html",
                json!({"grants": [{"id": "grant-1", "reason": "r", "status": "pending", "scopes": "train",
                "minutes": 10, "requested": "x", "expires": "y", "ended_by": null}]}),
            ),
            (
                "usage.html",
                json!({"days": 30, "usage": {"requests": 1, "input_tokens": 2, "output_tokens": 3, "balance": 5},
                "receipts": [{"receipt": "rcpt-1", "kind": "grant", "amount": 5, "balance_after": 5, "reference": "r", "at": "x"}]}),
            ),
            (
                "keys.html",
                json!({"keys": [{"id": "k1", "name": "n", "scopes": "inference", "expires": null, "state": "active"}]}),
            ),
            (
                "operator.html",
                json!({"tenants": [{"id": "acme", "tier": "basic", "status": "active", "store": "shared",
                "custody": "operator", "balance": 5, "created": "x"}], "tiers": ["free", "basic"]}),
            ),
            ("sign_up.html", json!({"team": ""})),
        ];
        for (name, data) in pages {
            let mut ctx = base.clone();
            for (k, v) in data.as_object().into_iter().flatten() {
                ctx[k] = v.clone();
            }
            let res = super::page(axum::http::StatusCode::OK, name, ctx, &[]);
            assert_eq!(res.status(), axum::http::StatusCode::OK, "{name}");
        }
    }
}
