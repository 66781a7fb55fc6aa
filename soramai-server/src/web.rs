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
//!   client address gets [`ATTEMPTS_PER_ADDRESS`] password attempts in a burst.
//! - Pages are sent with `Cache-Control: no-store`, a `Content-Security-Policy` that allows
//!   nothing from elsewhere (and no framing), and `Referrer-Policy: no-referrer`.

use axum::Extension;
use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use soramai::Error;
use soramai::core::accounts::{csrf_seed, csrf_token, csrf_valid};

use crate::conn::Peer;
use crate::http::AppState;

pub(crate) const SESSION_COOKIE: &str = "soramai_session";
const CSRF_COOKIE: &str = "soramai_csrf";

/// Password attempts (sign-in, invitation acceptance) one client address may make in a burst.
pub const ATTEMPTS_PER_ADDRESS: f64 = 10.0;
/// How many of them come back each minute.
pub const ATTEMPTS_REFILL_PER_MINUTE: f64 = 10.0;

/// Password attempts per client address, a token bucket each: guessing many accounts' passwords
/// from one address is slowed however the per-email lockout counts.
#[derive(Debug, Default)]
pub struct AttemptLimiter {
    buckets: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (f64, std::time::Instant)>>,
}

impl AttemptLimiter {
    /// Takes one attempt for `addr`; `false` when its bucket is empty.
    pub fn take(&self, addr: std::net::IpAddr) -> bool {
        let now = std::time::Instant::now();
        let refilled = |tokens: f64, at: std::time::Instant| {
            (tokens + now.duration_since(at).as_secs_f64() * ATTEMPTS_REFILL_PER_MINUTE / 60.0)
                .min(ATTEMPTS_PER_ADDRESS)
        };
        let Ok(mut buckets) = self.buckets.lock() else { return false };
        if buckets.len() > 100_000 {
            // Full buckets hold nothing worth keeping.
            buckets.retain(|_, (tokens, at)| refilled(*tokens, *at) < ATTEMPTS_PER_ADDRESS);
        }
        let (tokens, at) = buckets.entry(addr).or_insert((ATTEMPTS_PER_ADDRESS, now));
        *tokens = refilled(*tokens, *at);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }
}

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

/// The 429 page for an address out of attempts; `None` while it has some. A request that came
/// through no connection of ours (a test calling the router) has no address and is not limited.
fn attempt_refusal(s: &AppState, peer: Option<Extension<Peer>>) -> Option<Response> {
    let Extension(Peer(addr)) = peer?;
    (!s.sign_ins().take(addr)).then(|| {
        page(
            StatusCode::TOO_MANY_REQUESTS,
            "sign_in.html",
            json!({"error": "Too many attempts from your address. Wait a minute and try again.", "csrf": "", "email": ""}),
            &[],
        )
    })
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
        .merge(crate::dashboard::routes())
}

fn templates() -> &'static minijinja::Environment<'static> {
    static ENV: std::sync::OnceLock<minijinja::Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        for (name, text) in [
            ("base.html", include_str!("../templates/base.html")),
            ("sign_out.html", include_str!("../templates/sign_out.html")),
            ("sign_in.html", include_str!("../templates/sign_in.html")),
            ("accept.html", include_str!("../templates/accept.html")),
            ("dashboard.html", include_str!("../templates/dashboard.html")),
            ("account.html", include_str!("../templates/account.html")),
            ("tenant_base.html", include_str!("../templates/tenant_base.html")),
            ("datasets.html", include_str!("../templates/datasets.html")),
            ("keys.html", include_str!("../templates/keys.html")),
            ("members.html", include_str!("../templates/members.html")),
            ("audit.html", include_str!("../templates/audit.html")),
        ] {
            // The templates are the binary's own: a broken one fails every test that renders it.
            if env.add_template(name, text).is_err() {
                eprintln!("template {name} does not parse");
            }
        }
        env
    })
}

/// A page with the security headers every page gets, and any cookies to set.
pub(crate) fn page(status: StatusCode, name: &str, ctx: serde_json::Value, cookies: &[String]) -> Response {
    let body = templates().get_template(name).and_then(|t| t.render(ctx));
    let Ok(body) = body else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "The page could not be rendered.").into_response();
    };
    let mut res = (status, Html(body)).into_response();
    secure(res.headers_mut(), cookies);
    res
}

fn secure(h: &mut HeaderMap, cookies: &[String]) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
}

pub(crate) fn redirect(to: &str, cookies: &[String]) -> Response {
    let mut res = Redirect::to(to).into_response();
    secure(res.headers_mut(), cookies);
    res
}

fn set_cookie(name: &str, value: &str, max_age: i64) -> String {
    format!("{name}={value}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={max_age}")
}

fn clear_cookie(name: &str) -> String {
    set_cookie(name, "", 0)
}

/// The value of the first cookie of that name in the request (empty or overlong values are none).
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty() && v.len() <= 128)
        .map(|(_, v)| v.to_owned())
}

/// The 403 page for a post whose CSRF token is not the one bound to `session`; `None` when it is.
pub(crate) fn csrf_refusal(session: &str, presented: &str) -> Option<Response> {
    (!csrf_valid(session, presented)).then(forbidden)
}

fn forbidden() -> Response {
    page(
        StatusCode::FORBIDDEN,
        "sign_in.html",
        json!({"error": "The form expired or did not come from this site. Please try again.", "csrf": "", "email": ""}),
        &[],
    )
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> soramai::Result<T> + Send + 'static,
) -> soramai::Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|_| Err(Error::Runner("a worker thread failed".into())))
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

async fn sign_in_page(headers: HeaderMap) -> Response {
    let (seed, cookies) = pre_session(&headers);
    page(StatusCode::OK, "sign_in.html", json!({"csrf": csrf_token(&seed), "email": ""}), &cookies)
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
    let core = s.platform().core().clone();
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
            let max_age = (session.expires_at - s.platform().core().now()) / 1000;
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

async fn sign_out(State(s): State<AppState>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let Some(token) = cookie(&headers, SESSION_COOKIE) else { return redirect("/sign_in", &[]) };
    if let Some(r) = csrf_refusal(&token, &f.csrf) {
        return r;
    }
    let core = s.platform().core().clone();
    let _ = blocking(move || core.sign_out(&token)).await;
    redirect("/sign_in", &[clear_cookie(SESSION_COOKIE)])
}

async fn dashboard(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let Some(token) = cookie(&headers, SESSION_COOKIE) else { return redirect("/sign_in", &[]) };
    let core = s.platform().core().clone();
    let t = token.clone();
    let found = blocking(move || {
        let user = core.session_user(&t)?;
        let memberships = core.memberships(&user.id)?;
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
        json!({"email": user.email, "totp": user.totp_enabled, "memberships": rows, "csrf": csrf_token(&token)}),
        &[],
    )
}

#[derive(Deserialize)]
struct TokenQuery {
    token: String,
}

async fn accept_page(headers: HeaderMap, Query(q): Query<TokenQuery>) -> Response {
    let (seed, cookies) = pre_session(&headers);
    page(StatusCode::OK, "accept.html", json!({"csrf": csrf_token(&seed), "token": q.token}), &cookies)
}

#[derive(Deserialize)]
struct AcceptForm {
    token: String,
    password: String,
    csrf: String,
}

async fn accept(
    State(s): State<AppState>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Form(f): Form<AcceptForm>,
) -> Response {
    let seed = match password_post_checks(&s, peer, &headers, &f.csrf) {
        Ok(seed) => seed,
        Err(r) => return *r,
    };
    let core = s.platform().core().clone();
    let token = f.token.clone();
    let accepted = blocking(move || core.accept_invitation(&f.token, &f.password)).await;
    match accepted {
        Ok(_) => redirect("/sign_in", &[]),
        Err(e) => {
            let (status, error) = match e {
                Error::InvalidArgument(m) => (StatusCode::BAD_REQUEST, m),
                _ => (
                    StatusCode::UNAUTHORIZED,
                    "This invitation is not valid (used, expired, or the password does not match the account).".into(),
                ),
            };
            page(status, "accept.html", json!({"error": error, "csrf": csrf_token(&seed), "token": token}), &[])
        }
    }
}

/// The signed-in person's session token and account; a redirect to sign-in without one.
async fn signed_in(s: &AppState, headers: &HeaderMap) -> Result<(String, soramai::core::User), Box<Response>> {
    let Some(token) = cookie(headers, SESSION_COOKIE) else { return Err(Box::new(redirect("/sign_in", &[]))) };
    let core = s.platform().core().clone();
    let t = token.clone();
    match blocking(move || core.session_user(&t)).await {
        Ok(user) => Ok((token, user)),
        Err(_) => Err(Box::new(redirect("/sign_in", &[clear_cookie(SESSION_COOKIE)]))),
    }
}

fn account_page(
    status: StatusCode,
    token: &str,
    user: &soramai::core::User,
    setup: serde_json::Value,
    error: Option<String>,
) -> Response {
    let ctx = json!({"email": user.email, "totp": user.totp_enabled, "setup": setup, "error": error, "csrf": csrf_token(token)});
    page(status, "account.html", ctx, &[])
}

async fn account(State(s): State<AppState>, headers: HeaderMap) -> Response {
    match signed_in(&s, &headers).await {
        Ok((token, user)) => account_page(StatusCode::OK, &token, &user, serde_json::Value::Null, None),
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
    let (core, t) = (s.platform().core().clone(), token.clone());
    match blocking(move || core.begin_totp(&t)).await {
        Ok(setup) => {
            let shown = json!({"secret": setup.secret_base32.as_str(), "url": setup.otpauth_url.as_str()});
            account_page(StatusCode::OK, &token, &user, shown, None)
        }
        Err(e) => account_page(StatusCode::BAD_REQUEST, &token, &user, serde_json::Value::Null, Some(e.to_string())),
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
    let (core, t) = (s.platform().core().clone(), token.clone());
    match blocking(move || core.confirm_totp(&t, &f.code)).await {
        Ok(()) => redirect("/account", &[]),
        Err(_) => account_page(
            StatusCode::BAD_REQUEST,
            &token,
            &user,
            serde_json::Value::Null,
            Some("That code did not match: set up again and enter the current code.".into()),
        ),
    }
}
