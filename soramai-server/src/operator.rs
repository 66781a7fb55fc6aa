//! The operator's console, `/operator`: the same sign-in, for people who are admins or owners of
//! the operator tenant (platform admins). It lists every tenant with its tier, state, storage,
//! key custody and credit balance, and creates tenants, changes tiers and grants credits, each
//! audited in both logs. It shows no tenant content: no dataset, model, document or key of a
//! tenant's, only the figures above. Reading a tenant's data takes a break-glass grant.

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::json;
use soramai::{OPERATOR_TENANT, Platform, PlatformError, Session, Tier};

use crate::site::{Acting, acting, csrf_refusal, message, page, redirect, run, status_of};
use crate::state::AppState;

/// The console's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/operator", get(console))
        .route("/operator/tenants", post(create_tenant))
        .route("/operator/tenants/{id}/tier", post(set_tier))
        .route("/operator/tenants/{id}/credits", post(grant_credits))
}

type Fields = Form<Vec<(String, String)>>;

fn field(f: &[(String, String)], name: &str) -> String {
    f.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim().to_owned()).unwrap_or_default()
}

fn tier(f: &[(String, String)]) -> Result<Tier, PlatformError> {
    Ok(field(f, "tier").parse::<Tier>()?)
}

/// A platform admin signed in; anyone else gets the 404 of a page that is not there.
async fn admin(s: &AppState, headers: &HeaderMap) -> Result<Acting, Response> {
    let a = acting(s, headers, OPERATOR_TENANT).await?;
    if Platform::is_platform_admin(a.principal()) { Ok(a) } else { Err(crate::site::not_found()) }
}

/// Renders the console, with an error and a status.
async fn render(s: &AppState, a: &Acting, error: Option<String>, status: StatusCode) -> Response {
    let listed = run(s, a, move |session| {
        let tenants = session.tenants()?;
        let mut rows = Vec::with_capacity(tenants.len());
        for t in tenants {
            let balance = session.balance_of(t.id.as_str()).unwrap_or(0);
            rows.push(json!({"id": t.id.as_str(), "tier": t.tier.as_str(), "status": t.status,
                "store": t.store, "custody": t.key_custody, "balance": balance,
                "created": crate::site::utc(t.created_at)}));
        }
        Ok(rows)
    })
    .await;
    match listed {
        Ok(tenants) => {
            let ctx = json!({"tenants": tenants, "tiers": Tier::ALL.map(Tier::as_str), "email": a.email(),
                "csrf": soramai::accounts::csrf_token(a.token()), "error": error});
            page(status, "operator.html", ctx, &[])
        }
        Err(e) => message(status_of(&e), &e.to_string()),
    }
}

async fn console(State(s): State<AppState>, headers: HeaderMap) -> Response {
    match admin(&s, &headers).await {
        Ok(a) => render(&s, &a, None, StatusCode::OK).await,
        Err(r) => r,
    }
}

/// Checks the admin and the form's CSRF token, acts, and goes back to the console (or shows it
/// with the reason).
async fn act(
    s: &AppState,
    headers: &HeaderMap,
    csrf: &str,
    action: impl FnOnce(&Session) -> Result<(), PlatformError> + Send + 'static,
) -> Response {
    let a = match admin(s, headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Some(r) = csrf_refusal(a.token(), csrf) {
        return r;
    }
    match run(s, &a, action).await {
        Ok(()) => redirect("/operator", &[]),
        Err(e) => render(s, &a, Some(e.to_string()), status_of(&e)).await,
    }
}

async fn create_tenant(State(s): State<AppState>, headers: HeaderMap, Form(f): Fields) -> Response {
    let (id, t) = (field(&f, "id"), tier(&f));
    act(&s, &headers, &field(&f, "csrf"), move |session| session.create_tenant(&id, t?).map(drop)).await
}

async fn set_tier(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>, Form(f): Fields) -> Response {
    let t = tier(&f);
    act(&s, &headers, &field(&f, "csrf"), move |session| session.set_tier(&id, t?).map(drop)).await
}

async fn grant_credits(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Fields,
) -> Response {
    let amount = field(&f, "amount").parse::<i64>().ok().filter(|n| (1..=1_000_000_000_000).contains(n));
    let reference = field(&f, "reference");
    act(&s, &headers, &field(&f, "csrf"), move |session| {
        let amount = amount.ok_or_else(|| PlatformError::InvalidArgument("amount is a whole number from 1".into()))?;
        session.grant_credits(&id, amount, &reference).map(drop)
    })
    .await
}
