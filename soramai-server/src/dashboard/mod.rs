//! The dashboard's tenant pages, `/t/{tenant}/…`: datasets (upload, delete), fine-tuning jobs
//! (create, live progress with a loss chart, cancel, events), models (delete), RAG corpora and
//! their documents, API keys (create and rotate, each shown once; revoke), members (invite,
//! shown once; remove), access grants (approve, revoke), usage and credits, and the audit log
//! with its verification.
//!
//! A signed-in person acts through a [`Session`] with their role's scopes in a tenant they belong
//! to (another tenant is a 404); the library refuses what the role may not do (a 403 page), and
//! every form carries the session's CSRF token.

mod forms;
mod pages;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use soramai::{ErrorKind, PlatformError, Session};

pub(crate) use crate::site::{Acting, acting, message, not_found, run, status_of, utc};
use crate::site::{csrf_refusal, page, redirect};
use crate::state::AppState;

/// The tenant pages.
pub fn routes() -> Router<AppState> {
    let list = |name: &'static str| move |s, h, Path(t): Path<String>| show(s, h, View::new(t, name, None));
    let item = |name: &'static str| {
        move |s, h, Path((t, id)): Path<(String, String)>| show(s, h, View::new(t, name, Some(id)))
    };
    Router::new()
        .route("/t/{tenant}/datasets", get(list("datasets")).post(forms::upload_dataset))
        .route("/t/{tenant}/datasets/{id}/delete", post(forms::on_item("datasets", |s, id| s.delete_dataset(id))))
        .route("/t/{tenant}/jobs", get(list("jobs")).post(forms::create_job))
        .route("/t/{tenant}/jobs/{id}", get(item("job")))
        .route("/t/{tenant}/jobs/{id}/progress", get(job_progress))
        .route("/t/{tenant}/jobs/{id}/cancel", post(forms::cancel_job))
        .route("/t/{tenant}/models", get(list("models")))
        .route("/t/{tenant}/models/{id}/delete", post(forms::on_item("models", |s, id| s.delete_model(id))))
        .route("/t/{tenant}/corpora", get(list("corpora")).post(forms::create_corpus))
        .route("/t/{tenant}/corpora/{id}", get(item("corpus")).post(forms::add_document))
        .route("/t/{tenant}/corpora/{id}/delete", post(forms::on_item("corpora", |s, id| s.delete_corpus(id))))
        .route("/t/{tenant}/corpora/{id}/documents/{doc}/delete", post(forms::delete_document))
        .route("/t/{tenant}/keys", get(list("keys")).post(forms::create_key))
        .route("/t/{tenant}/keys/{id}/rotate", post(forms::rotate_key))
        .route("/t/{tenant}/keys/{id}/revoke", post(forms::on_item("keys", |s, id| s.revoke_api_key(id))))
        .route("/t/{tenant}/members", get(list("members")))
        .route("/t/{tenant}/members/invite", post(forms::invite))
        .route("/t/{tenant}/members/{user}/role", post(forms::set_role))
        .route("/t/{tenant}/members/{user}/remove", post(forms::on_item("members", forms::remove_member)))
        .route("/t/{tenant}/grants", get(list("grants")))
        .route(
            "/t/{tenant}/grants/{id}/approve",
            post(forms::on_item("grants", |s, id| s.approve_access_grant(id).map(drop))),
        )
        .route(
            "/t/{tenant}/grants/{id}/revoke",
            post(forms::on_item("grants", |s, id| s.revoke_access_grant(id).map(drop))),
        )
        .route("/t/{tenant}/usage", get(list("usage")))
        .route("/t/{tenant}/sso", get(list("sso")).post(forms::set_sso))
        .route("/t/{tenant}/sso/delete", post(forms::delete_sso))
        .route("/t/{tenant}/audit", get(list("audit")))
}

/// One page of a tenant: a section (`datasets`, `jobs`…) or one item of a section (`job`,
/// `corpus`) with its id.
#[derive(Clone, Debug)]
pub(crate) struct View {
    tenant: String,
    name: &'static str,
    item: Option<String>,
}

impl View {
    fn new(tenant: String, name: &'static str, item: Option<String>) -> Self {
        Self { tenant, name, item }
    }

    /// The page's own address (where a post on it goes back to).
    fn path(&self) -> String {
        let item = self.item.as_deref().unwrap_or_default();
        match self.name {
            "job" => format!("/t/{}/jobs/{item}", self.tenant),
            "corpus" => format!("/t/{}/corpora/{item}", self.tenant),
            name => format!("/t/{}/{name}", self.tenant),
        }
    }

    /// The nav entry the page belongs to.
    fn section(&self) -> &'static str {
        match self.name {
            "job" => "jobs",
            "corpus" => "corpora",
            name => name,
        }
    }
}

/// Renders a tenant page: its data, with what a post produced (`extra`), an error, and the status
/// to answer with.
async fn section(
    s: &AppState,
    a: &Acting,
    view: &View,
    extra: Value,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let v = view.clone();
    let loaded = run(s, a, move |session| {
        let tenant = session.tenant()?;
        let balance = session.balance()?;
        let data = pages::load(&v, session)?;
        Ok((tenant.tier.as_str(), balance, data))
    })
    .await;
    let (tier, balance, data) = match loaded {
        Ok(x) => x,
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            return message(StatusCode::FORBIDDEN, &format!("Your role cannot open this page: {e}."));
        }
        Err(e) if matches!(e.kind(), ErrorKind::Internal | ErrorKind::Integrity) => {
            return message(StatusCode::INTERNAL_SERVER_ERROR, "The page could not be loaded. Please try again.");
        }
        Err(_) => return not_found(),
    };
    let mut ctx = json!({
        "tenant": a.principal.tenant().as_str(), "email": a.user.email, "role": a.role.as_str(), "tier": tier,
        "balance": balance, "section": view.section(), "here": view.path(), "error": error,
        "csrf": soramai::accounts::csrf_token(&a.token),
    });
    for (k, v) in data.as_object().into_iter().flatten().chain(extra.as_object().into_iter().flatten()) {
        ctx[k] = v.clone();
    }
    page(status, &format!("{}.html", view.name), ctx, &[])
}

/// The answer to a refused post: the page again with the reason.
pub(crate) async fn refused(s: &AppState, a: &Acting, view: &View, e: PlatformError) -> Response {
    section(s, a, view, json!({}), Some(e.to_string()), status_of(&e)).await
}

/// A page, as its view shows it.
async fn show(State(s): State<AppState>, headers: HeaderMap, view: View) -> Response {
    match acting(&s, &headers, &view.tenant).await {
        Ok(a) => section(&s, &a, &view, json!({}), None, StatusCode::OK).await,
        Err(r) => r,
    }
}

/// The person and their CSRF check before a post: the person, or the answer already due.
pub(crate) async fn checked(s: &AppState, headers: &HeaderMap, view: &View, csrf: &str) -> Result<Acting, Response> {
    let a = acting(s, headers, &view.tenant).await?;
    match csrf_refusal(&a.token, csrf) {
        Some(r) => Err(r),
        None => Ok(a),
    }
}

/// A post that acts, then goes back to its page (post, redirect, get); a refusal shows the page
/// again with the reason.
pub(crate) async fn act(
    s: &AppState,
    headers: &HeaderMap,
    view: View,
    csrf: &str,
    action: impl FnOnce(&Session) -> Result<(), PlatformError> + Send + 'static,
) -> Response {
    shown(s, headers, view, csrf, move |session| action(session).map(|()| Value::Null)).await
}

/// A post whose outcome is shown on its page once (a new key's secret, an invitation link): the
/// page with `extra` from the action; `Value::Null` goes back to the page instead.
pub(crate) async fn shown(
    s: &AppState,
    headers: &HeaderMap,
    view: View,
    csrf: &str,
    action: impl FnOnce(&Session) -> Result<Value, PlatformError> + Send + 'static,
) -> Response {
    let a = match checked(s, headers, &view, csrf).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    match run(s, &a, action).await {
        Ok(Value::Null) => redirect(&view.path(), &[]),
        Ok(extra) => section(s, &a, &view, extra, None, StatusCode::OK).await,
        Err(e) => refused(s, &a, &view, e).await,
    }
}

/// The live part of a job's page (state, progress, loss chart, events) as an HTML fragment, for
/// the page's script to swap in while the job runs.
async fn job_progress(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((tenant, id)): Path<(String, String)>,
) -> Response {
    let a = match acting(&s, &headers, &tenant).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let view = View::new(tenant, "job", Some(id));
    let v = view.clone();
    match run(&s, &a, move |session| pages::load(&v, session)).await {
        Ok(mut ctx) => {
            ctx["tenant"] = json!(view.tenant);
            page(StatusCode::OK, "job_progress.html", ctx, &[])
        }
        Err(e) => (status_of(&e), e.to_string()).into_response(),
    }
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
