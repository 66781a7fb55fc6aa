//! The dashboard's tenant pages, `/t/{tenant}/…`: datasets (upload, delete), API keys (create,
//! shown once; revoke), members (invite, shown once; remove) and the audit log with its
//! verification. A signed-in person acts with their role's scopes in a tenant they belong to
//! (another tenant is a 404); the library refuses what the role may not do (a 403 page), and
//! every form carries the session's CSRF token.

use axum::Router;
use axum::extract::{Form, Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use soramai::core::{Principal, Role, User};
use soramai::{ApiKeyId, DatasetId, Error, KeyOptions, Scope, TenantId};

use crate::http::AppState;
use crate::web::{SESSION_COOKIE, blocking, cookie, csrf_refusal, page, redirect};

/// The tenant pages.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/t/{tenant}/datasets", get(|s, h, t| show(s, h, t, "datasets")).post(upload_dataset))
        .route("/t/{tenant}/datasets/{id}/delete", post(delete_dataset))
        .route("/t/{tenant}/keys", get(|s, h, t| show(s, h, t, "keys")).post(create_key))
        .route("/t/{tenant}/keys/{id}/revoke", post(revoke_key))
        .route("/t/{tenant}/members", get(|s, h, t| show(s, h, t, "members")))
        .route("/t/{tenant}/members/invite", post(invite))
        .route("/t/{tenant}/members/{user}/remove", post(remove_member))
        .route("/t/{tenant}/audit", get(|s, h, t| show(s, h, t, "audit")))
}

/// A signed-in person acting in one of their tenants.
struct Acting {
    token: String,
    user: User,
    role: Role,
    principal: Principal,
}

/// The person behind the session cookie in `tenant`: a redirect to sign-in without a live
/// session, a 404 page for a tenant they do not belong to.
async fn acting(s: &AppState, headers: &HeaderMap, tenant: &str) -> Result<Acting, Response> {
    let Some(token) = cookie(headers, SESSION_COOKIE) else { return Err(redirect("/sign_in", &[])) };
    let core = s.platform().core().clone();
    let (t, tenant) = (token.clone(), tenant.to_owned());
    let found = blocking(move || core.session_principal(&t, &TenantId::new(tenant)?)).await;
    match found {
        Ok((user, role, principal)) => Ok(Acting { token, user, role, principal }),
        Err(Error::Unauthenticated) => Err(redirect("/sign_in", &[])),
        Err(_) => Err(not_found()),
    }
}

fn not_found() -> Response {
    page(StatusCode::NOT_FOUND, "sign_in.html", json!({"error": "No such page.", "csrf": "", "email": ""}), &[])
}

/// Renders a tenant page: the section's data, with what a post produced (`extra`), an error,
/// and the status to answer with.
async fn section(
    s: &AppState,
    a: &Acting,
    name: &'static str,
    extra: Value,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let core = s.platform().core().clone();
    let p = a.principal.clone();
    let loaded = blocking(move || {
        let tenant = core.tenant(p.tenant())?;
        let balance = core.balance(p.tenant())?;
        let data = match name {
            "datasets" => json!({"datasets": core.list_datasets(&p)?.iter().map(|d| json!({
                "id": d.id.as_str(), "name": d.name, "examples": d.examples, "bytes": d.bytes})).collect::<Vec<_>>()}),
            "keys" => json!({"keys": core.list_api_keys(&p)?.iter().map(|k| json!({
                "id": k.id.as_str(), "name": k.name,
                "scopes": k.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                "state": if k.revoked_at.is_some() { "revoked" } else { "active" }})).collect::<Vec<_>>()}),
            "members" => json!({"members": core.members(&p)?.iter().map(|m| json!({
                "user": m.user.as_str(), "email": m.email, "role": m.role.as_str()})).collect::<Vec<_>>()}),
            _ => {
                let records = core.audit_log(&p)?;
                let verified = core.verify_audit(p.tenant());
                json!({
                    "records": records.iter().map(|r| json!({"seq": r.seq, "at": utc(r.at), "actor": r.actor,
                        "action": r.action, "target": r.target})).collect::<Vec<_>>(),
                    "verified": verified.as_ref().ok().map(|v| v.records),
                    "broken": verified.err().map(|e| e.to_string()),
                })
            }
        };
        Ok((tenant.tier.as_str(), balance, data))
    })
    .await;
    let (tier, balance, data) = match loaded {
        Ok(x) => x,
        Err(e @ (Error::MissingScope(_) | Error::NotAllowed { .. })) => {
            return page(
                StatusCode::FORBIDDEN,
                "sign_in.html",
                json!({"error": format!("Your role cannot open this page: {e}."), "csrf": "", "email": ""}),
                &[],
            );
        }
        Err(_) => return not_found(),
    };
    let mut ctx = json!({
        "tenant": a.principal.tenant().as_str(), "email": a.user.email, "role": a.role.as_str(), "tier": tier,
        "balance": balance, "section": name, "csrf": soramai::core::accounts::csrf_token(&a.token), "error": error,
    });
    for (k, v) in data.as_object().into_iter().flatten().chain(extra.as_object().into_iter().flatten()) {
        ctx[k] = v.clone();
    }
    page(status, &format!("{name}.html"), ctx, &[])
}

/// The answer to a refused post: the page again with the reason.
async fn refused(s: &AppState, a: &Acting, name: &'static str, e: Error) -> Response {
    let status = match e {
        Error::MissingScope(_) | Error::NotAllowed { .. } | Error::OperatorAccess(_) => StatusCode::FORBIDDEN,
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    section(s, a, name, json!({}), Some(e.to_string()), status).await
}

/// A tenant page, as its section shows it.
async fn show(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    name: &'static str,
) -> Response {
    match acting(&s, &headers, &tenant).await {
        Ok(a) => section(&s, &a, name, json!({}), None, StatusCode::OK).await,
        Err(r) => r,
    }
}

/// A post that acts, then goes back to its section (post, redirect, get); a refusal shows the
/// section again with the reason. Checks the person and the CSRF token first.
async fn act(
    s: &AppState,
    headers: &HeaderMap,
    tenant: &str,
    csrf: &str,
    name: &'static str,
    action: impl FnOnce(&soramai::Core, &Principal) -> soramai::Result<()> + Send + 'static,
) -> Response {
    let a = match acting(s, headers, tenant).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Some(r) = csrf_refusal(&a.token, csrf) {
        return r;
    }
    let (core, p) = (s.platform().core().clone(), a.principal.clone());
    match blocking(move || action(&core, &p)).await {
        Ok(()) => redirect(&format!("/t/{tenant}/{name}"), &[]),
        Err(e) => refused(s, &a, name, e).await,
    }
}

async fn upload_dataset(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    mut form: Multipart,
) -> Response {
    let a = match acting(&s, &headers, &tenant).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let (mut csrf, mut file) = (String::new(), None);
    while let Ok(Some(field)) = form.next_field().await {
        match field.name() {
            Some("csrf") => csrf = field.text().await.unwrap_or_default(),
            Some("file") => {
                let name = field.file_name().unwrap_or("upload.jsonl").to_owned();
                match field.bytes().await {
                    Ok(b) => file = Some((name, b)),
                    Err(_) => {
                        return refused(
                            &s,
                            &a,
                            "datasets",
                            Error::TooLarge { what: "dataset", limit: crate::http::MAX_BODY_BYTES as u64 },
                        )
                        .await;
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(r) = csrf_refusal(&a.token, &csrf) {
        return r;
    }
    let Some((name, bytes)) = file else {
        return refused(&s, &a, "datasets", Error::InvalidArgument("choose a file to upload".into())).await;
    };
    let (core, p) = (s.platform().core().clone(), a.principal.clone());
    match blocking(move || core.upload_dataset(&p, &name, &bytes)).await {
        Ok(d) => {
            let uploaded = json!({"uploaded": {"name": d.name, "examples": d.examples}});
            section(&s, &a, "datasets", uploaded, None, StatusCode::OK).await
        }
        Err(e) => refused(&s, &a, "datasets", e).await,
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn delete_dataset(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((tenant, id)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    act(&s, &headers, &tenant, &f.csrf, "datasets", move |core, p| {
        core.delete_dataset(p, &DatasetId::new(id).map_err(|_| Error::NotFound { kind: "dataset" })?)
    })
    .await
}

async fn create_key(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let a = match acting(&s, &headers, &tenant).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    // The form repeats `scope` once per box ticked.
    let field = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
    if let Some(r) = csrf_refusal(&a.token, &field("csrf")) {
        return r;
    }
    let scopes: Result<Vec<Scope>, Error> =
        pairs.iter().filter(|(n, _)| n == "scope").map(|(_, v)| v.parse()).collect();
    let (core, p, name) = (s.platform().core().clone(), a.principal.clone(), field("name"));
    let issued = blocking(move || core.create_api_key(&p, KeyOptions::new(name, &scopes?))).await;
    match issued {
        Ok(k) => {
            let shown = json!({"issued": {"name": k.info.name, "secret": k.secret()}});
            section(&s, &a, "keys", shown, None, StatusCode::OK).await
        }
        Err(e) => refused(&s, &a, "keys", e).await,
    }
}

async fn revoke_key(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((tenant, id)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    act(&s, &headers, &tenant, &f.csrf, "keys", move |core, p| {
        core.revoke_api_key(p, &ApiKeyId::new(id).map_err(|_| Error::NotFound { kind: "api key" })?)
    })
    .await
}

#[derive(Deserialize)]
struct InviteForm {
    email: String,
    role: String,
    csrf: String,
}

async fn invite(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Form(f): Form<InviteForm>,
) -> Response {
    let a = match acting(&s, &headers, &tenant).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Some(r) = csrf_refusal(&a.token, &f.csrf) {
        return r;
    }
    let (core, p) = (s.platform().core().clone(), a.principal.clone());
    let issued = blocking(move || core.invite(&p, &f.email, f.role.parse()?)).await;
    match issued {
        Ok(i) => {
            let link = format!("/invitations/accept?token={}", i.token.secret());
            let shown =
                json!({"invited": {"email": i.invitation.email, "role": i.invitation.role.as_str(), "link": link}});
            section(&s, &a, "members", shown, None, StatusCode::OK).await
        }
        Err(e) => refused(&s, &a, "members", e).await,
    }
}

async fn remove_member(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    act(&s, &headers, &tenant, &f.csrf, "members", move |core, p| {
        core.remove_member(p, &soramai::core::UserId::new(user).map_err(|_| Error::NotFound { kind: "member" })?)
    })
    .await
}

/// A Unix time in milliseconds as `YYYY-MM-DD HH:MM:SS` UTC (the proleptic Gregorian calendar,
/// by Howard Hinnant's days-to-civil algorithm).
fn utc(ms: i64) -> String {
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

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_796_407_200_123), "2026-12-04 18:00:00");
        assert_eq!(super::utc(-1000), "1969-12-31 23:59:59");
    }
}
