//! What every web page shares: the page templates and their security headers, cookies, CSRF
//! refusals, redirects, the client address's password attempts, and the signed-in person acting in
//! a tenant. The sign-in pages, the dashboard, the operator console, passkeys and single sign-on
//! all build on this module and on none of each other.

use axum::Extension;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde_json::json;
use soramai::accounts::{Role, User, csrf_valid};
use soramai::{Error, Principal};
use soramai::{PlatformError, Session, TenantId};

use crate::conn::Peer;
use crate::state::AppState;

pub(crate) const SESSION_COOKIE: &str = "soramai_session";
pub(crate) const CSRF_COOKIE: &str = "soramai_csrf";

/// The 429 page for an address out of attempts; `None` while it has some. A request that came
/// through no connection of ours (a test calling the router) has no address and is not limited.
pub(crate) fn attempt_refusal(s: &AppState, peer: Option<Extension<Peer>>) -> Option<Response> {
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

fn templates() -> &'static minijinja::Environment<'static> {
    static ENV: std::sync::OnceLock<minijinja::Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        env.add_filter("segment", segment);
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
            ("jobs.html", include_str!("../templates/jobs.html")),
            ("job.html", include_str!("../templates/job.html")),
            ("job_progress.html", include_str!("../templates/job_progress.html")),
            ("models.html", include_str!("../templates/models.html")),
            ("corpora.html", include_str!("../templates/corpora.html")),
            ("corpus.html", include_str!("../templates/corpus.html")),
            ("grants.html", include_str!("../templates/grants.html")),
            ("usage.html", include_str!("../templates/usage.html")),
            ("sign_up.html", include_str!("../templates/sign_up.html")),
            ("operator.html", include_str!("../templates/operator.html")),
            ("sso.html", include_str!("../templates/sso.html")),
            ("redirect.html", include_str!("../templates/redirect.html")),
            ("reset.html", include_str!("../templates/reset.html")),
        ] {
            // The templates are the binary's own: a broken one fails every test that renders it.
            if env.add_template(name, text).is_err() {
                eprintln!("template {name} does not parse");
            }
        }
        env
    })
}

/// A value made one URL path segment: every byte but the unreserved ones percent-encoded (ids
/// hold `:` and `/`).
fn segment(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A page with the security headers every page gets, and any cookies to set.
pub(crate) fn page(status: StatusCode, name: &str, ctx: serde_json::Value, cookies: &[String]) -> Response {
    let body = templates().get_template(name).and_then(|t| t.render(ctx));
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            // The template's own fault (its name and the kind of error; never the page's data).
            eprintln!("page {name} could not be rendered: {:?} at line {:?}", e.kind(), e.line());
            return (StatusCode::INTERNAL_SERVER_ERROR, "The page could not be rendered.").into_response();
        }
    };
    let mut res = (status, Html(body)).into_response();
    secure(res.headers_mut(), cookies);
    res
}

pub(crate) fn secure(h: &mut HeaderMap, cookies: &[String]) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
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

pub(crate) fn set_cookie(name: &str, value: &str, max_age: i64) -> String {
    format!("{name}={value}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={max_age}")
}

/// A cookie sent back on a top-level navigation from another site too (single sign-on's state,
/// which returns from the provider's site); only on `path`.
pub(crate) fn set_lax_cookie(name: &str, value: &str, path: &str, max_age: i64) -> String {
    format!("{name}={value}; HttpOnly; Secure; SameSite=Lax; Path={path}; Max-Age={max_age}")
}

/// A page that moves the browser on to `to` by itself (a meta refresh, with a link), where a
/// redirect would not do: after a form, whose CSP `form-action` keeps redirects on this site, and
/// after a navigation from another site, which brings no SameSite=Strict cookie along the chain.
pub(crate) fn onward(to: &str, text: &str, cookies: &[String]) -> Response {
    page(StatusCode::OK, "redirect.html", json!({"to": to, "text": text, "title": "Continue"}), cookies)
}

pub(crate) fn clear_cookie(name: &str) -> String {
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

pub(crate) fn forbidden() -> Response {
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

/// A signed-in person acting in one of their tenants.
pub(crate) struct Acting {
    pub(crate) token: String,
    pub(crate) user: User,
    pub(crate) role: Role,
    pub(crate) principal: Principal,
}

impl Acting {
    /// The session token (what CSRF tokens are bound to).
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Who acts, with what scopes, in which tenant.
    pub(crate) fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The person's email.
    pub(crate) fn email(&self) -> &str {
        &self.user.email
    }

    /// The person's view of the platform, with their role's scopes.
    pub(crate) fn session(&self, s: &AppState) -> Session {
        Session::new(s.platform().clone(), self.principal.clone())
    }
}

/// The person behind the session cookie in `tenant`: a redirect to sign-in without a live
/// session, a 404 page for a tenant they do not belong to.
pub(crate) async fn acting(s: &AppState, headers: &HeaderMap, tenant: &str) -> Result<Acting, Response> {
    let Some(token) = cookie(headers, SESSION_COOKIE) else { return Err(redirect("/sign_in", &[])) };
    let core = s.platform().accounts();
    let (t, tenant) = (token.clone(), tenant.to_owned());
    let found = blocking(move || core.session_principal(&t, &TenantId::new(tenant)?)).await;
    match found {
        Ok((user, role, principal)) => Ok(Acting { token, user, role, principal }),
        Err(soramai::Error::Unauthenticated) => Err(redirect("/sign_in", &[])),
        Err(_) => Err(not_found()),
    }
}

pub(crate) fn not_found() -> Response {
    message(StatusCode::NOT_FOUND, "No such page.")
}

/// A page that says one thing (an error), with its status.
pub(crate) fn message(status: StatusCode, text: &str) -> Response {
    page(status, "sign_in.html", json!({"error": text, "csrf": "", "email": ""}), &[])
}

/// Runs library calls off the async threads, as the signed-in person.
pub(crate) async fn run<T: Send + 'static>(
    s: &AppState,
    a: &Acting,
    f: impl FnOnce(&Session) -> Result<T, PlatformError> + Send + 'static,
) -> Result<T, PlatformError> {
    let session = a.session(s);
    tokio::task::spawn_blocking(move || f(&session))
        .await
        .unwrap_or_else(|_| Err(PlatformError::InvalidArgument("a worker thread failed".into())))
}

/// The status a refusal is answered with.
pub(crate) fn status_of(e: &PlatformError) -> StatusCode {
    StatusCode::from_u16(e.kind().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A Unix time in milliseconds as `YYYY-MM-DD HH:MM:SS` UTC (the proleptic Gregorian calendar,
/// by Howard Hinnant's days-to-civil algorithm).
pub(crate) fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}
