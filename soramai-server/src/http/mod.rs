//! `soramai serve`: the OpenAI-compatible HTTP API over the SDK's [`Platform`]. Every behaviour is
//! the SDK's; this module translates requests and responses and maps errors to OpenAI's shape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use soramai::{Needs, PlatformError};

mod admin;
mod errors;
mod extractors;
mod fine_tuning;
mod inference;
mod models;
mod rag;
mod responses;

use admin::*;
use errors::*;
use extractors::*;
use fine_tuning::*;
use inference::*;
use models::*;
use rag::*;
use responses::*;

pub use crate::state::{AppState, MAX_BODY_BYTES};

/// The tenant a request acted for, left on the response for the request log.
#[derive(Clone)]
struct LoggedTenant(String);

/// The OpenAI-compatible API under `/v1` (every route behind API-key authentication) and the
/// health, readiness and metrics endpoints.
pub(crate) fn routes(state: &AppState) -> Router<AppState> {
    let v1 = Router::new()
        .route("/models", get(list_models))
        .route("/models/{id}", get(get_model).delete(delete_model))
        .route("/custom_models", post(upload_custom_model).get(list_custom_models))
        .route("/custom_models/{id}", get(get_custom_model))
        .route("/chat/completions", post(chat_completions))
        .route("/completions", post(completions))
        .route("/embeddings", post(embeddings))
        .route("/responses", post(create_response))
        .route("/responses/{id}", get(get_response).delete(delete_response))
        .route("/responses/{id}/input_items", get(response_input_items))
        .route("/files", post(upload_file).get(list_files))
        .route("/files/{id}", get(get_file).delete(delete_file))
        .route("/files/{id}/content", get(file_content))
        .route("/fine_tuning/jobs", post(create_job).get(list_jobs))
        .route("/fine_tuning/jobs/{id}", get(get_job))
        .route("/fine_tuning/jobs/{id}/cancel", post(cancel_job))
        .route("/fine_tuning/jobs/{id}/events", get(job_events))
        .route("/fine_tuning/jobs/{id}/checkpoints", get(job_checkpoints))
        .route("/tenants", post(create_tenant).get(list_tenants))
        .route("/tenants/{id}/tier", post(set_tier))
        .route("/tenants/{id}/credits", post(grant_credits))
        .route("/tenants/{id}/access_grants", post(request_grant))
        .route("/tenants/{id}/close", post(close_tenant))
        .route("/tenants/{id}/reopen", post(reopen_tenant))
        .route("/access_grants", get(list_grants))
        .route("/access_grants/{id}", get(get_grant))
        .route("/access_grants/{id}/approve", post(approve_grant))
        .route("/access_grants/{id}/revoke", post(revoke_grant))
        .route("/api_keys", post(create_key).get(list_keys))
        .route("/api_keys/{id}", axum::routing::delete(revoke_key))
        .route("/api_keys/{id}/rotate", post(rotate_key))
        .route("/corpora", post(create_corpus).get(list_corpora))
        .route("/corpora/{id}", axum::routing::delete(delete_corpus))
        .route("/corpora/{id}/documents", post(add_documents).get(list_documents))
        .route("/corpora/{id}/documents/{doc}", axum::routing::delete(delete_document))
        .route("/corpora/{id}/ingestions", get(list_ingestions))
        .route("/corpora/{id}/ingestions/{job}", get(get_ingestion))
        .route("/corpora/{id}/ingestions/{job}/cancel", post(cancel_ingestion))
        .route("/corpora/{id}/search", post(search))
        .route("/corpora/{id}/chat", post(grounded_chat))
        .route("/members", get(list_members))
        .route("/members/invitations", post(invite_member))
        .route("/members/{id}/role", post(set_member_role))
        .route("/members/{id}", axum::routing::delete(remove_member))
        .route("/audit", get(audit_log))
        .route("/audit/verify", get(audit_verify))
        .route("/usage", get(usage))
        .layer(axum::middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// What wraps every route, the web pages' included: OpenAI's 404 for an unknown URL, the request
/// log and metrics, the body limit and the request timeout.
pub(crate) fn outer(app: Router<AppState>, state: AppState) -> Router {
    app.fallback(|| async {
        ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "unknown_url", "Unknown request URL.")
    })
    .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
    .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
    // Every request, body read included, ends within the limit (a stream's body after its
    // head is the connection's to bound: see `conn`).
    .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
    .with_state(state)
}

/// How long a request may take to be answered (its head; a stream may run on).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// How long an authenticated request's body may take to arrive (a slow upload holds a
/// connection, never a tenant's concurrency place).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(120);

/// Counts and logs every request: one structured line (`soramai::http`) with its request id,
/// method, route template (never the path's ids or the query), status, latency, the tenant it
/// acted for and its error code; never a header, a body, a name or a key. The request id is the
/// client's `X-Request-Id` when it is a short token, else a new one, and is echoed back.
async fn observe(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map_or_else(new_request_id, str::to_owned);
    let method = req.method().clone();
    let route = req.extensions().get::<axum::extract::MatchedPath>().map(|m| m.as_str().to_owned());
    s.metrics.requests.fetch_add(1, Ordering::Relaxed);
    s.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    let mut res = next.run(req).await;
    s.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    let status = res.status();
    if status.is_client_error() {
        s.metrics.errors_4xx.fetch_add(1, Ordering::Relaxed);
    } else if status.is_server_error() {
        s.metrics.errors_5xx.fetch_add(1, Ordering::Relaxed);
    }
    let code = res.extensions().get::<ErrorCode>().map(|c| c.0.clone());
    if let Some(code) = &code
        && let Ok(mut counts) = s.metrics.errors_by_code.lock()
    {
        *counts.entry(code.clone()).or_default() += 1;
    }
    let tenant = res.extensions().get::<LoggedTenant>().map(|t| t.0.clone());
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    let route = route.as_deref().unwrap_or("unmatched");
    let (tenant, error) = (tenant.as_deref().unwrap_or("-"), code.as_deref().unwrap_or("-"));
    if status.is_server_error() {
        tracing::error!(target: "soramai::http", request_id = %request_id, %method, route = %route, status = status.as_u16(), latency_ms, tenant = %tenant, error = %error, "request");
    } else {
        tracing::info!(target: "soramai::http", request_id = %request_id, %method, route = %route, status = status.as_u16(), latency_ms, tenant = %tenant, error = %error, "request");
    }
    if let Ok(v) = axum::http::HeaderValue::from_str(&request_id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    res
}

/// A request id unique in this process and, with its start-time prefix, across restarts.
fn new_request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        (nanos as u32) ^ std::process::id().rotate_left(16)
    });
    format!("req_{prefix:08x}{:08x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The request id header, read and echoed.
const REQUEST_ID: &str = "x-request-id";

/// Authenticates the bearer key, reads the body (bounded), then applies the tenant's tier limits
/// (requests per minute and concurrent requests), so a slow upload holds no concurrency place;
/// the permit lives as long as the response, streams included. A request made under a
/// break-glass access grant is recorded in the tenant's and the operator's audit logs first.
async fn authenticate(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let principal = match bearer_token(&req) {
        Ok(token) => match principal_of(&s, token).await {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        },
        Err(e) => return e.into_response(),
    };
    let operation = format!(
        "{} {}",
        req.method(),
        req.extensions().get::<axum::extract::MatchedPath>().map_or("/v1/?", |m| m.as_str())
    );
    // Every answer from here on, refusals included, names its tenant in the request log.
    let tenant = LoggedTenant(principal.tenant().as_str().to_owned());
    let tagged = |mut res: Response| {
        res.extensions_mut().insert(tenant.clone());
        res
    };
    // A body refused unread leaves the rest of it on the connection: the answer closes it.
    let closing = |e: ApiError| tagged(([(header::CONNECTION, "close")], e).into_response());
    if let Err(e) = check_scope(&s, &principal, &operation).await {
        return closing(e);
    }
    let mut req = match read_body(&s, req, operation == STREAMED_UPLOAD).await {
        Ok(req) => req,
        Err(e) => return closing(e),
    };
    let platform = s.platform.clone();
    let checked = {
        let p = principal.clone();
        tokio::task::spawn_blocking(move || {
            let permit = platform.admit(&p)?;
            platform.record_request(&p, &operation)?;
            Ok::<_, PlatformError>(permit)
        })
        .await
    };
    match checked {
        Ok(Ok(permit)) => {
            req.extensions_mut().insert(principal);
            let res = tagged(next.run(req).await);
            // The permit lives as long as the response body, so a stream holds its place until it
            // ends or its client goes away (response extensions are dropped once the head is sent).
            res.map(|body| {
                let data = futures_util::StreamExt::map(body.into_data_stream(), move |chunk| {
                    let _held = &permit;
                    chunk
                });
                axum::body::Body::from_stream(data)
            })
        }
        Ok(Err(e)) => tagged(ApiError::from(e).into_response()),
        Err(_) => tagged(server_error().into_response()),
    }
}

/// The request's bearer key; a 401 without one.
fn bearer_token(req: &Request) -> Result<String, ApiError> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    if token.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing_api_key",
            "You didn't provide an API key (Authorization: Bearer sk-…).",
        ));
    }
    Ok(token)
}

/// The principal of a key, or the platform's refusal of it.
async fn principal_of(s: &AppState, token: String) -> Result<soramai::Principal, ApiError> {
    let platform = s.platform.clone();
    match tokio::task::spawn_blocking(move || platform.authenticate(&token)).await {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(e)) => Err(ApiError::from(e)),
        Err(_) => Err(server_error()),
    }
}

/// The route's scope, checked before the body is read: a key without it learns nothing of the
/// body's form. The refusal still counts against the tenant's requests per minute, and under a
/// break-glass grant it is in both audit logs too.
async fn check_scope(s: &AppState, principal: &soramai::Principal, operation: &str) -> Result<(), ApiError> {
    let Some(n) = needs(operation) else {
        tracing::error!(target: "soramai::http", operation = %operation, "a route without a scope requirement");
        return Err(server_error());
    };
    let Err(refused) = n.check(principal) else { return Ok(()) };
    let (platform, p) = (s.platform.clone(), principal.clone());
    match tokio::task::spawn_blocking(move || platform.charge_refused(&p)).await {
        Ok(Ok(())) => {}
        Ok(Err(limited)) => return Err(ApiError::from(limited)),
        Err(_) => return Err(server_error()),
    }
    if principal.grant().is_some() {
        let (platform, p, op) = (s.platform.clone(), principal.clone(), operation.to_owned());
        match tokio::task::spawn_blocking(move || platform.record_request(&p, &op)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ApiError::from(e)),
            Err(_) => return Err(server_error()),
        }
    }
    Err(ApiError::from(refused))
}

/// The request with its body read (bounded by [`MAX_BODY_BYTES`] and [`BODY_TIMEOUT`]), or as it
/// is for a model upload, which streams its body to the handler (sealed as it arrives, bounded by
/// the model size limit and a per-piece idle timeout). A declared length over the limit is
/// refused before anything is read.
async fn read_body(s: &AppState, req: Request, streamed: bool) -> Result<Request, ApiError> {
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let limit = if streamed { s.platform.max_model_upload_bytes() } else { MAX_BODY_BYTES as u64 };
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    if streamed {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => Ok(Request::from_parts(parts, axum::body::Body::from(bytes))),
        Ok(Err(_)) => Err(too_large()),
        Err(_) => Err(body_timeout()),
    }
}

/// What each operation needs of the key (`x-soramai-scopes` in `openapi.json`), checked before
/// the body is read. An operation missing here is refused (closed by default); the scopes test
/// calls every documented route with a key of each single scope.
fn needs(operation: &str) -> Option<Needs> {
    use soramai::Scope::{Admin, Inference, Rag, Train};
    const INFERENCE: Needs = Needs::scope(&Inference);
    const TRAIN: Needs = Needs::scope(&Train);
    const RAG: Needs = Needs::scope(&Rag);
    const ADMIN: Needs = Needs::scope(&Admin);
    const MODELS: Needs = Needs::AnyOf(&[Inference, Train]);
    const GROUNDED: Needs = Needs::AllOf(&[Inference, Rag]);
    Some(match operation {
        "GET /v1/models" | "GET /v1/models/{id}" | "GET /v1/custom_models" | "GET /v1/custom_models/{id}" => MODELS,
        "DELETE /v1/models/{id}" | "POST /v1/custom_models" => TRAIN,
        "POST /v1/chat/completions"
        | "POST /v1/completions"
        | "POST /v1/embeddings"
        | "POST /v1/responses"
        | "GET /v1/responses/{id}"
        | "DELETE /v1/responses/{id}"
        | "GET /v1/responses/{id}/input_items" => INFERENCE,
        "POST /v1/files"
        | "GET /v1/files"
        | "GET /v1/files/{id}"
        | "DELETE /v1/files/{id}"
        | "GET /v1/files/{id}/content"
        | "POST /v1/fine_tuning/jobs"
        | "GET /v1/fine_tuning/jobs"
        | "GET /v1/fine_tuning/jobs/{id}"
        | "POST /v1/fine_tuning/jobs/{id}/cancel"
        | "GET /v1/fine_tuning/jobs/{id}/events"
        | "GET /v1/fine_tuning/jobs/{id}/checkpoints" => TRAIN,
        "POST /v1/tenants"
        | "GET /v1/tenants"
        | "POST /v1/tenants/{id}/tier"
        | "POST /v1/tenants/{id}/credits"
        | "POST /v1/tenants/{id}/access_grants"
        | "POST /v1/tenants/{id}/reopen" => Needs::PlatformAdmin,
        // A tenant's admin closes its own account; the platform admin any.
        "POST /v1/tenants/{id}/close" => ADMIN,
        "GET /v1/access_grants"
        | "GET /v1/access_grants/{id}"
        | "POST /v1/access_grants/{id}/approve"
        | "POST /v1/access_grants/{id}/revoke"
        | "POST /v1/api_keys"
        | "GET /v1/api_keys"
        | "DELETE /v1/api_keys/{id}"
        | "POST /v1/api_keys/{id}/rotate"
        | "GET /v1/members"
        | "POST /v1/members/invitations"
        | "POST /v1/members/{id}/role"
        | "DELETE /v1/members/{id}"
        | "GET /v1/audit"
        | "GET /v1/audit/verify"
        | "GET /v1/usage" => ADMIN,
        "POST /v1/corpora"
        | "GET /v1/corpora"
        | "DELETE /v1/corpora/{id}"
        | "POST /v1/corpora/{id}/documents"
        | "GET /v1/corpora/{id}/documents"
        | "DELETE /v1/corpora/{id}/documents/{doc}"
        | "GET /v1/corpora/{id}/ingestions"
        | "GET /v1/corpora/{id}/ingestions/{job}"
        | "POST /v1/corpora/{id}/ingestions/{job}/cancel"
        | "POST /v1/corpora/{id}/search" => RAG,
        "POST /v1/corpora/{id}/chat" => GROUNDED,
        _ => return None,
    })
}

/// The one route whose body the handler streams.
const STREAMED_UPLOAD: &str = "POST /v1/custom_models";

/// How long a streamed upload may wait for its next piece.
pub const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

fn body_timeout() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "invalid_request_error",
        "timeout",
        "The request body did not arrive in time.",
    )
}

fn too_large() -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", "too_large", "The request body is too large.")
}

/// Runs blocking SDK work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, PlatformError> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|_| server_error())?.map_err(ApiError::from)
}

async fn readyz(State(s): State<AppState>) -> Response {
    let p = s.platform.clone();
    match tokio::task::spawn_blocking(move || p.ready()).await {
        Ok(Ok(true)) => (StatusCode::OK, "ready").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response(),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    let m = &s.metrics;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let body = format!(
        "# TYPE soramai_http_requests_total counter\nsoramai_http_requests_total {}\n\
         # TYPE soramai_http_client_errors_total counter\nsoramai_http_client_errors_total {}\n\
         # TYPE soramai_http_server_errors_total counter\nsoramai_http_server_errors_total {}\n\
         # TYPE soramai_http_in_flight gauge\nsoramai_http_in_flight {}\n\
         # TYPE soramai_completions_total counter\nsoramai_completions_total {}\n\
         # TYPE soramai_prompt_tokens_total counter\nsoramai_prompt_tokens_total {}\n\
         # TYPE soramai_completion_tokens_total counter\nsoramai_completion_tokens_total {}\n\
         # TYPE soramai_http_errors_total counter\n",
        g(&m.requests),
        g(&m.errors_4xx),
        g(&m.errors_5xx),
        g(&m.in_flight),
        g(&m.completions),
        g(&m.prompt_tokens),
        g(&m.completion_tokens),
    );
    let mut body = body;
    if let Ok(counts) = m.errors_by_code.lock() {
        for (code, n) in counts.iter() {
            body.push_str(&format!("soramai_http_errors_total{{code=\"{code}\"}} {n}\n"));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
