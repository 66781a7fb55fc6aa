//! Passkeys on the web (WebAuthn through [`soramai::accounts`]), on when the server knows
//! its public origin (`--public-url`): a signed-in person adds passkeys on `/account` and removes
//! them there; anyone signs in with one from `/sign_in` after typing their email. The browser's
//! side is the dashboard's script; these routes speak JSON to it.
//!
//! - `POST /account/passkeys/options`, then `POST /account/passkeys` with `{name, credential}`:
//!   both need the session and its CSRF token (header `x-csrf-token`).
//! - `POST /sign_in/passkey/options` with `{email}` (the pre-session CSRF token; counted against
//!   the address's password attempts): the ceremony id goes into an HttpOnly cookie. Then
//!   `POST /sign_in/passkey` with the credential: a new session, as a password sign-in makes.

use axum::extract::{Json, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Form, Router};
use serde::Deserialize;
use serde_json::json;
use soramai::Error;
use soramai::accounts::csrf_valid;
use soramai::accounts::{PasskeyConfig, PublicKeyCredential, RegisterPublicKeyCredential};

use crate::conn::Peer;
use crate::site::{CSRF_COOKIE, SESSION_COOKIE, blocking, clear_cookie, cookie, csrf_refusal, redirect, set_cookie};
use crate::state::AppState;

const CEREMONY_COOKIE: &str = "soramai_passkey";

/// The routes (each answers 404 while passkeys are off).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/account/passkeys/options", post(register_options))
        .route("/account/passkeys", post(register))
        .route("/account/passkeys/{id}/delete", post(delete))
        .route("/sign_in/passkey/options", post(sign_in_options))
        .route("/sign_in/passkey", post(sign_in))
}

fn answer(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({"error": error}))).into_response()
}

/// The relying party, or the 404 of passkeys being off.
fn config(s: &AppState) -> Result<std::sync::Arc<PasskeyConfig>, Box<Response>> {
    s.passkeys()
        .cloned()
        .ok_or_else(|| Box::new(answer(StatusCode::NOT_FOUND, "passkeys are not set up on this server")))
}

/// The session and config for a signed-in person's passkey call, with its CSRF header checked.
fn signed_in(s: &AppState, headers: &HeaderMap) -> Result<(std::sync::Arc<PasskeyConfig>, String), Box<Response>> {
    let config = config(s)?;
    let token =
        cookie(headers, SESSION_COOKIE).ok_or_else(|| Box::new(answer(StatusCode::UNAUTHORIZED, "sign in first")))?;
    let presented = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !csrf_valid(&token, presented) {
        return Err(Box::new(answer(StatusCode::FORBIDDEN, "the request did not come from this site")));
    }
    Ok((config, token))
}

fn refusal(e: &Error) -> Response {
    match e {
        Error::Unauthenticated => answer(StatusCode::UNAUTHORIZED, "sign in first"),
        Error::InvalidArgument(m) => answer(StatusCode::BAD_REQUEST, m),
        Error::AlreadyExists { .. } => answer(StatusCode::CONFLICT, "that passkey is registered already"),
        Error::NotFound { .. } => answer(StatusCode::NOT_FOUND, "no such passkey"),
        _ => answer(StatusCode::INTERNAL_SERVER_ERROR, "the passkey could not be handled; try again"),
    }
}

async fn register_options(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let (config, token) = match signed_in(&s, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let core = s.platform().accounts();
    match blocking(move || core.begin_passkey_registration(&config, &token)).await {
        Ok(options) => Json(options).into_response(),
        Err(e) => refusal(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    name: String,
    credential: RegisterPublicKeyCredential,
}

async fn register(State(s): State<AppState>, headers: HeaderMap, body: Json<serde_json::Value>) -> Response {
    let (config, token) = match signed_in(&s, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let Ok(r) = serde_json::from_value::<Registration>(body.0) else {
        return answer(StatusCode::BAD_REQUEST, "expected {name, credential} from navigator.credentials.create");
    };
    let core = s.platform().accounts();
    match blocking(move || core.finish_passkey_registration(&config, &token, &r.name, &r.credential)).await {
        Ok(info) => (StatusCode::CREATED, Json(json!({"passkey": info}))).into_response(),
        Err(e) => refusal(&e),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn delete(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let Some(token) = cookie(&headers, SESSION_COOKIE) else { return redirect("/sign_in", &[]) };
    if let Some(r) = csrf_refusal(&token, &f.csrf) {
        return r;
    }
    let core = s.platform().accounts();
    match blocking(move || core.delete_passkey(&token, &id)).await {
        Ok(()) | Err(Error::NotFound { .. }) => redirect("/account", &[]),
        Err(_) => redirect("/sign_in", &[]),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Email {
    email: String,
}

async fn sign_in_options(
    State(s): State<AppState>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Json<serde_json::Value>,
) -> Response {
    let config = match config(&s) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let presented = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !cookie(&headers, CSRF_COOKIE).is_some_and(|seed| csrf_valid(&seed, presented)) {
        return answer(StatusCode::FORBIDDEN, "the request did not come from this site");
    }
    if crate::site::attempt_refusal(&s, peer).is_some() {
        return answer(StatusCode::TOO_MANY_REQUESTS, "too many attempts from your address; wait a minute");
    }
    let Ok(Email { email }) = serde_json::from_value::<Email>(body.0) else {
        return answer(StatusCode::BAD_REQUEST, "expected {email}");
    };
    let core = s.platform().accounts();
    match blocking(move || core.begin_passkey_sign_in(&config, &email)).await {
        Ok((ceremony, options)) => {
            let mut res = Json(options).into_response();
            crate::site::secure(res.headers_mut(), &[set_cookie(CEREMONY_COOKIE, ceremony.secret(), 300)]);
            res
        }
        Err(Error::Locked { .. }) => answer(StatusCode::TOO_MANY_REQUESTS, "this account is locked for 15 minutes"),
        Err(_) => answer(StatusCode::UNAUTHORIZED, "no passkey for that email; sign in with your password"),
    }
}

async fn sign_in(State(s): State<AppState>, headers: HeaderMap, body: Json<serde_json::Value>) -> Response {
    let config = match config(&s) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let Some(ceremony) = cookie(&headers, CEREMONY_COOKIE) else {
        return answer(StatusCode::UNAUTHORIZED, "start again: the passkey sign-in ran out");
    };
    let Ok(credential) = serde_json::from_value::<PublicKeyCredential>(body.0) else {
        return answer(StatusCode::BAD_REQUEST, "expected the answer of navigator.credentials.get");
    };
    let core = s.platform().accounts();
    // Whatever session the browser brought is ended: sign-in always starts a new one.
    if let Some(old) = cookie(&headers, SESSION_COOKIE) {
        let core = core.clone();
        let _ = blocking(move || core.sign_out(&old)).await;
    }
    match blocking(move || core.finish_passkey_sign_in(&config, &ceremony, &credential)).await {
        Ok(session) => {
            let max_age = (session.expires_at - s.platform().accounts().now()) / 1000;
            let mut res = Json(json!({"redirect": "/dashboard"})).into_response();
            let cookies = [
                set_cookie(SESSION_COOKIE, session.token.secret(), max_age),
                clear_cookie(CSRF_COOKIE),
                clear_cookie(CEREMONY_COOKIE),
            ];
            crate::site::secure(res.headers_mut(), &cookies);
            res
        }
        Err(Error::Locked { .. }) => answer(StatusCode::TOO_MANY_REQUESTS, "this account is locked for 15 minutes"),
        Err(_) => answer(StatusCode::UNAUTHORIZED, "that passkey did not sign you in"),
    }
}
