//! The dashboard's posts. Each checks the person and the form's CSRF token first, acts through
//! the person's [`soramai::Session`], and goes back to its page (post, redirect, get) or shows
//! there what is shown once (a new key, an invitation link). A form that lacks a field or holds a
//! malformed one gets its page again with the reason and changes nothing.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::extract::{Form, Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;
use soramai::{DocumentInput, FineTuneRequest, KeyRequest, PlatformError, Session};
use soramai::{Hyperparameters, Scope};

use super::{View, act, checked, refused, run, shown};
use crate::site::redirect;
use crate::state::AppState;

/// A submitted form's fields in order (a field may repeat: one `scope` per box ticked).
type Fields = Form<Vec<(String, String)>>;

/// The first value of a field; empty when the form lacks it.
fn field(f: &[(String, String)], name: &str) -> String {
    f.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default()
}

fn invalid(what: &str) -> PlatformError {
    PlatformError::InvalidArgument(what.to_owned())
}

/// A whole number from a form field, within `lo..=hi`; `default` when the field is empty.
fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
    f: &[(String, String)],
    name: &str,
    default: T,
    (lo, hi): (T, T),
) -> Result<T, PlatformError> {
    let v = field(f, name);
    if v.trim().is_empty() {
        return Ok(default);
    }
    match v.trim().parse::<T>() {
        Ok(n) if n >= lo && n <= hi => Ok(n),
        _ => Err(invalid(&format!("{name} must be a number from {lo} to {hi}"))),
    }
}

fn view(tenant: String, name: &'static str) -> View {
    View::new(tenant, name, None)
}

/// A handler's answer, boxed.
pub(super) type Answer = Pin<Box<dyn Future<Output = Response> + Send>>;

/// The handler of a post on one item of a page (`/t/{tenant}/<page>/{id}/…`): checks the person
/// and the CSRF token, runs `action` on the id, and goes back to the page.
pub(super) fn on_item(
    page: &'static str,
    action: fn(&Session, &str) -> Result<(), PlatformError>,
) -> impl Fn(State<AppState>, HeaderMap, Path<(String, String)>, Fields) -> Answer + Clone + Send + Sync + 'static {
    move |State(s), headers, Path((tenant, id)), Form(f)| {
        Box::pin(async move {
            act(&s, &headers, view(tenant, page), &field(&f, "csrf"), move |session| action(session, &id)).await
        })
    }
}

/// Removes a member of the tenant.
pub(super) fn remove_member(session: &Session, user: &str) -> Result<(), PlatformError> {
    session.remove_member(user)
}

pub(super) async fn upload_dataset(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    mut form: Multipart,
) -> Response {
    let view = view(tenant, "datasets");
    // The CSRF token is the form's first field: nothing of the file is read before it is checked.
    let csrf = match form.next_field().await {
        Ok(Some(f)) if f.name() == Some("csrf") => f.text().await.unwrap_or_default(),
        _ => String::new(),
    };
    let a = match checked(&s, &headers, &view, &csrf).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let mut file = None;
    loop {
        match form.next_field().await {
            Ok(Some(f)) if f.name() == Some("file") => {
                let name = f.file_name().unwrap_or("upload.jsonl").to_owned();
                match f.bytes().await {
                    Ok(b) => file = Some((name, b)),
                    Err(_) => {
                        let e =
                            soramai::Error::TooLarge { what: "dataset", limit: crate::state::MAX_BODY_BYTES as u64 };
                        return refused(&s, &a, &view, e.into()).await;
                    }
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => return refused(&s, &a, &view, invalid("the upload was cut off or malformed")).await,
        }
    }
    let Some((name, bytes)) = file else { return refused(&s, &a, &view, invalid("choose a file to upload")).await };
    let uploaded = run(&s, &a, move |session| {
        let d = session.upload_dataset(&name, &bytes)?;
        // Stored, so valid: the same check again gives the report's figures.
        let stats = soramai::finetune::dataset_stats(&bytes)?;
        Ok((d, stats))
    })
    .await;
    match uploaded {
        Ok((d, stats)) => {
            let uploaded = json!({"uploaded": {"name": d.name, "examples": d.examples, "messages": stats.messages,
                "trained_turns": stats.trained_turns, "bytes": d.bytes}});
            super::section(&s, &a, &view, uploaded, None, StatusCode::OK).await
        }
        Err(e) => refused(&s, &a, &view, e).await,
    }
}

/// Starts a fine-tuning job and goes to its page.
pub(super) async fn create_job(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Form(f): Fields,
) -> Response {
    let view = view(tenant, "jobs");
    let a = match checked(&s, &headers, &view, &field(&f, "csrf")).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let request = (|| {
        if field(&f, "dataset").is_empty() || field(&f, "model").is_empty() {
            return Err(invalid("choose the training data and a base model"));
        }
        let d = Hyperparameters::default();
        let suffix = Some(field(&f, "suffix")).filter(|s| !s.trim().is_empty());
        let hyperparameters = Hyperparameters {
            n_epochs: number(&f, "n_epochs", d.n_epochs, (1, 50))?,
            batch_size: number(&f, "batch_size", d.batch_size, (1, 256))?,
            learning_rate_multiplier: number(
                &f,
                "learning_rate_multiplier",
                d.learning_rate_multiplier,
                (0.001, 10.0),
            )?,
            rank: number(&f, "rank", d.rank, (1, 128))?,
            max_seq: number(&f, "max_seq", d.max_seq, (16, 8192))?,
            ..d
        };
        Ok::<_, PlatformError>(FineTuneRequest {
            training_file: field(&f, "dataset"),
            model: field(&f, "model"),
            suffix,
            hyperparameters: hyperparameters.into(),
        })
    })();
    let created = match request {
        Ok(r) => run(&s, &a, move |session| session.create_fine_tuning_job(r)).await,
        Err(e) => Err(e),
    };
    match created {
        Ok(job) => redirect(&View::new(view.tenant.clone(), "job", Some(job.id.as_str().to_owned())).path(), &[]),
        Err(e) => refused(&s, &a, &view, e).await,
    }
}

pub(super) async fn cancel_job(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((tenant, id)): Path<(String, String)>,
    Form(f): Fields,
) -> Response {
    let v = View::new(tenant, "job", Some(id.clone()));
    act(&s, &headers, v, &field(&f, "csrf"), move |session| session.cancel_fine_tuning_job(&id).map(drop)).await
}

pub(super) async fn create_corpus(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Form(f): Fields,
) -> Response {
    let id = field(&f, "id");
    act(&s, &headers, view(tenant, "corpora"), &field(&f, "csrf"), move |session| session.create_corpus(&id)).await
}

/// Adds (or replaces, by id) one document typed or pasted into the form.
pub(super) async fn add_document(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((tenant, corpus)): Path<(String, String)>,
    Form(f): Fields,
) -> Response {
    let v = View::new(tenant, "corpus", Some(corpus.clone()));
    let doc = serde_json::from_value::<DocumentInput>(json!({
        "id": field(&f, "id"), "title": field(&f, "title"), "text": field(&f, "text"),
        "format": Some(field(&f, "format")).filter(|s| !s.is_empty()),
    }));
    act(&s, &headers, v, &field(&f, "csrf"), move |session| {
        let doc = doc.map_err(|_| invalid("format is text, markdown or html"))?;
        session.start_ingestion(&corpus, vec![doc]).map(drop)
    })
    .await
}

pub(super) async fn delete_document(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((tenant, corpus, doc)): Path<(String, String, String)>,
    Form(f): Fields,
) -> Response {
    let v = View::new(tenant, "corpus", Some(corpus.clone()));
    act(&s, &headers, v, &field(&f, "csrf"), move |session| session.delete_document(&corpus, &doc)).await
}

pub(super) async fn create_key(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Form(f): Fields,
) -> Response {
    let scopes: Result<Vec<Scope>, _> = f.iter().filter(|(n, _)| n == "scope").map(|(_, v)| v.parse()).collect();
    let name = field(&f, "name");
    shown(&s, &headers, view(tenant, "keys"), &field(&f, "csrf"), move |session| {
        let request = KeyRequest { name, scopes: scopes?, tenant: None, expires_in_seconds: None };
        let k = session.create_api_key(request)?;
        Ok(json!({"issued": {"name": k.info.name, "secret": k.secret()}}))
    })
    .await
}

/// Replaces a key; the old one works on for the grace the form chose (none, an hour, a day).
pub(super) async fn rotate_key(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((tenant, id)): Path<(String, String)>,
    Form(f): Fields,
) -> Response {
    let grace = number(&f, "grace_seconds", 0u64, (0, 86_400));
    shown(&s, &headers, view(tenant, "keys"), &field(&f, "csrf"), move |session| {
        let k = session.rotate_api_key(&id, Duration::from_secs(grace?))?;
        Ok(json!({"issued": {"name": k.info.name, "secret": k.secret()}}))
    })
    .await
}

pub(super) async fn invite(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Form(f): Fields,
) -> Response {
    let (email, role) = (field(&f, "email"), field(&f, "role"));
    shown(&s, &headers, view(tenant, "members"), &field(&f, "csrf"), move |session| {
        let i = session.invite(&email, &role)?;
        let link = format!("/invitations/accept?token={}", i.token.secret());
        Ok(json!({"invited": {"email": i.invitation.email, "role": i.invitation.role.as_str(), "link": link}}))
    })
    .await
}

/// Names the tenant's OpenID Connect provider (the secret is sealed under the tenant's key).
pub(super) async fn set_sso(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Form(f): Fields,
) -> Response {
    let role = field(&f, "default_role");
    let config = soramai::accounts::SsoConfig {
        issuer: field(&f, "issuer").trim().to_owned(),
        client_id: field(&f, "client_id").trim().to_owned(),
        default_role: None,
    };
    let secret = field(&f, "client_secret");
    act(&s, &headers, view(tenant, "sso"), &field(&f, "csrf"), move |session| {
        let default_role = if role.is_empty() { None } else { Some(role.parse::<soramai::accounts::Role>()?) };
        let config = soramai::accounts::SsoConfig { default_role, ..config };
        session.set_sso(&config, &secret)
    })
    .await
}

pub(super) async fn delete_sso(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Form(f): Fields,
) -> Response {
    act(&s, &headers, view(tenant, "sso"), &field(&f, "csrf"), move |session| session.delete_sso()).await
}

/// Gives a member another role (never above the changer's own; a tenant keeps an owner).
pub(super) async fn set_role(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
    Form(f): Fields,
) -> Response {
    let role = field(&f, "role");
    act(&s, &headers, view(tenant, "members"), &field(&f, "csrf"), move |session| {
        session.set_member_role(&user, &role).map(drop)
    })
    .await
}
