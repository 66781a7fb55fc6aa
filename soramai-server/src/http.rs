//! `soramai serve`: the OpenAI-compatible HTTP API over the SDK's [`Platform`]. Every behaviour is
//! the SDK's; this module translates requests and responses and maps errors to OpenAI's shape.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Multipart, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use soramai::core::{Job, JobState, Scope};
use soramai::platform::{FinishReason, GenerationStream, TokenLogprob};
use soramai::{
    ChatMessage, FineTuneSpec, GenerationOptions, Hyperparameters, ModelId, Platform, PlatformError, Principal, Prompt,
    Session, StreamEvent, Tier,
};

/// Largest request body (a dataset upload included).
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// Shared state of the routes.
#[derive(Clone)]
pub struct AppState {
    platform: Arc<Platform>,
    metrics: Arc<Metrics>,
    sign_ins: Arc<crate::web::AttemptLimiter>,
    sign_up: bool,
    passkeys: Option<Arc<soramai::core::passkeys::PasskeyConfig>>,
    sso: Option<crate::sso::SsoOptions>,
}

impl AppState {
    /// State over a platform (web sign-up closed).
    pub fn new(platform: Arc<Platform>) -> Self {
        Self {
            platform,
            metrics: Arc::new(Metrics::default()),
            sign_ins: Arc::default(),
            sign_up: false,
            passkeys: None,
            sso: None,
        }
    }

    /// Password attempts one client address gets in a burst, and back per minute.
    pub fn with_password_attempts(mut self, per_minute: u32) -> Self {
        self.sign_ins = Arc::new(crate::web::AttemptLimiter::new(per_minute));
        self
    }

    /// Opens (or closes) `/sign_up`: anyone may then make an account with a Free tenant.
    pub fn with_sign_up(mut self, open: bool) -> Self {
        self.sign_up = open;
        self
    }

    /// Turns passkeys on, for the site at the config's origin.
    pub fn with_passkeys(mut self, config: soramai::core::passkeys::PasskeyConfig) -> Self {
        self.passkeys = Some(Arc::new(config));
        self
    }

    /// The passkeys' relying party, when they are on.
    pub(crate) fn passkeys(&self) -> Option<&Arc<soramai::core::passkeys::PasskeyConfig>> {
        self.passkeys.as_ref()
    }

    /// Turns single sign-on on, with providers sending people back to `options.redirect`.
    pub fn with_sso(mut self, options: crate::sso::SsoOptions) -> Self {
        self.sso = Some(options);
        self
    }

    /// How single sign-on reaches providers, when it is on.
    pub(crate) fn sso(&self) -> Option<&crate::sso::SsoOptions> {
        self.sso.as_ref()
    }

    /// Whether `/sign_up` is open.
    pub(crate) fn sign_up_open(&self) -> bool {
        self.sign_up
    }

    /// The platform the routes serve.
    pub(crate) fn platform(&self) -> &Arc<Platform> {
        &self.platform
    }

    /// Sign-in attempts per client address.
    pub(crate) fn sign_ins(&self) -> &crate::web::AttemptLimiter {
        &self.sign_ins
    }
}

/// Aggregates only: counts and sums, never ids of tenants, never content.
#[derive(Default)]
struct Metrics {
    requests: AtomicU64,
    errors_4xx: AtomicU64,
    errors_5xx: AtomicU64,
    completions: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    in_flight: AtomicU64,
}

// ---------- errors ----------

/// An error in OpenAI's JSON shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<String>,
    message: String,
    param: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &str, message: impl Into<String>) -> Self {
        Self { status, kind, code: Some(code.to_owned()), message: message.into(), param: None }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_request", message)
    }

    fn param(mut self, p: &'static str) -> Self {
        self.param = Some(p);
        self
    }

    fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

impl From<PlatformError> for ApiError {
    fn from(e: PlatformError) -> Self {
        use soramai::ErrorKind as K;
        let (status, kind) = match e.kind() {
            K::Authentication => {
                return Self::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_request_error",
                    "invalid_api_key",
                    "Incorrect API key provided.",
                );
            }
            K::PermissionDenied => (StatusCode::FORBIDDEN, "permission_error"),
            K::NotFound => (StatusCode::NOT_FOUND, "invalid_request_error"),
            K::Conflict => (StatusCode::CONFLICT, "invalid_request_error"),
            K::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            K::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error"),
            K::ContextLength => {
                return Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", &e.code(), e.to_string())
                    .param("messages");
            }
            K::InsufficientCredits => (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota"),
            K::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "requests"),
            _ => return server_error(),
        };
        Self::new(status, kind, &e.code(), e.to_string())
    }
}

fn server_error() -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error", "The server had an error.")
}

type ApiResult<T> = Result<T, ApiError>;

// ---------- extractors ----------

/// The caller, from `Authorization: Bearer sk-…` (set by the auth layer).
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| PlatformError::Core(soramai::Error::Unauthenticated).into())
    }
}

/// A JSON body; malformed, oversized or mistyped input is an OpenAI-shaped 4xx.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::invalid("The request body could not be read.")
            }
        })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| body_error(&e))
    }
}

/// A JSON body that does not parse: its kind and position only. serde's own message can quote
/// the input (an unknown field or variant, a string where a number goes), and the input may be a
/// prompt.
fn body_error(e: &serde_json::Error) -> ApiError {
    if e.is_syntax() || e.is_eof() {
        ApiError::invalid("The body is not valid JSON.")
    } else {
        ApiError::invalid(format!(
            "Invalid body: a field is missing, unknown, or of the wrong type or value (line {}, column {}).",
            e.line(),
            e.column()
        ))
    }
}

/// A JSON body that may be left out (the defaults then).
fn optional_body<T: Default + serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    if body.is_empty() { Ok(T::default()) } else { serde_json::from_slice(body).map_err(|e| body_error(&e)) }
}

// ---------- the router ----------

/// The whole API.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/models", get(list_models))
        .route("/models/{id}", get(get_model).delete(delete_model))
        .route("/custom_models", post(upload_custom_model).get(list_custom_models))
        .route("/custom_models/{id}", get(get_custom_model))
        .route("/chat/completions", post(chat_completions))
        .route("/completions", post(completions))
        .route("/embeddings", post(embeddings))
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
        .merge(crate::web::routes())
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "unknown_url", "Unknown request URL.")
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), count))
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

async fn count(State(s): State<AppState>, req: Request, next: Next) -> Response {
    s.metrics.requests.fetch_add(1, Ordering::Relaxed);
    s.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    let res = next.run(req).await;
    s.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    if res.status().is_client_error() {
        s.metrics.errors_4xx.fetch_add(1, Ordering::Relaxed);
    } else if res.status().is_server_error() {
        s.metrics.errors_5xx.fetch_add(1, Ordering::Relaxed);
    }
    res
}

/// Authenticates the bearer key, reads the body (bounded), then applies the tenant's tier limits
/// (requests per minute and concurrent requests), so a slow upload holds no concurrency place;
/// the permit lives as long as the response, streams included. A request made under a
/// break-glass access grant is recorded in the tenant's and the operator's audit logs first.
async fn authenticate(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    if token.is_empty() {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing_api_key",
            "You didn't provide an API key (Authorization: Bearer sk-…).",
        )
        .into_response();
    }
    let platform = s.platform.clone();
    let principal = match tokio::task::spawn_blocking(move || platform.authenticate(&token)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return ApiError::from(e).into_response(),
        Err(_) => return server_error().into_response(),
    };
    let operation = format!(
        "{} {}",
        req.method(),
        req.extensions().get::<axum::extract::MatchedPath>().map_or("/v1/?", |m| m.as_str())
    );
    // A body refused unread leaves the rest of it on the connection: the answer closes it.
    let closing = |e: ApiError| ([(header::CONNECTION, "close")], e).into_response();
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // A model upload streams its body to the handler (sealed as it arrives, bounded by the
    // model size limit and a per-piece idle timeout); every other body is read here, bounded.
    let streamed = operation == STREAMED_UPLOAD;
    let limit = if streamed { s.platform.core().limits().max_custom_model_bytes } else { MAX_BODY_BYTES as u64 };
    if declared.is_some_and(|n| n > limit) {
        return closing(too_large());
    }
    let mut req = if streamed {
        req
    } else {
        let (parts, body) = req.into_parts();
        let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => return closing(too_large()),
            Err(_) => return closing(body_timeout()),
        };
        Request::from_parts(parts, axum::body::Body::from(bytes))
    };
    let platform = s.platform.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let permit = platform.admit(&principal)?;
        platform.record_request(&principal, &operation)?;
        Ok::<_, PlatformError>((principal, permit))
    })
    .await;
    match checked {
        Ok(Ok((principal, permit))) => {
            req.extensions_mut().insert(principal);
            let res = next.run(req).await;
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
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(_) => server_error().into_response(),
    }
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
    match tokio::task::spawn_blocking(move || p.core().base_models()).await {
        Ok(Ok(models)) if !models.is_empty() => (StatusCode::OK, "ready").into_response(),
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
         # TYPE soramai_completion_tokens_total counter\nsoramai_completion_tokens_total {}\n",
        g(&m.requests),
        g(&m.errors_4xx),
        g(&m.errors_5xx),
        g(&m.in_flight),
        g(&m.completions),
        g(&m.prompt_tokens),
        g(&m.completion_tokens),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

// ---------- models ----------

fn model_json(m: &soramai::ModelInfo) -> Value {
    json!({"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by})
}

async fn list_models(State(s): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let models = blocking(move || s.platform.list_models(&p)).await?;
    Ok(axum::Json(json!({"object": "list", "data": models.iter().map(model_json).collect::<Vec<_>>()})).into_response())
}

async fn get_model(State(s): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let m = blocking(move || s.platform.model(&p, &id)).await?;
    Ok(axum::Json(model_json(&m)).into_response())
}

async fn delete_model(State(s): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let shown = id.clone();
    blocking(move || s.platform.delete_model(&p, &id)).await?;
    Ok(axum::Json(json!({"id": shown, "object": "model", "deleted": true})).into_response())
}

// ---------- customers' own GGUF models (Pro and up) ----------

fn custom_model_json(m: &soramai::CustomModel) -> Value {
    json!({"id": m.id.as_str(), "object": "model", "created": m.created_at / 1000, "owned_by": m.tenant.as_str(),
           "name": m.name, "bytes": m.bytes, "sha256": m.sha256, "architecture": m.architecture})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    name: String,
}

/// A piece of a streamed body, handed from the connection to the blocking upload.
enum Piece {
    Data(Bytes),
    End,
    Failed,
}

/// The blocking side of a streamed body: reads pieces until the end marker. A body that stops
/// without it (the client went away, a timeout) is an error, never a short file.
struct PieceReader {
    rx: tokio::sync::mpsc::Receiver<Piece>,
    current: Bytes,
}

impl std::io::Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Piece::Data(b)) => self.current = b,
                Some(Piece::End) => return Ok(0),
                Some(Piece::Failed) | None => {
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the upload was cut off"));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// `POST /v1/custom_models?name=…` with the GGUF file as the body: streamed, sealed as it arrives,
/// checked by the engine before it is accepted.
async fn upload_custom_model(
    State(s): State<AppState>,
    Caller(p): Caller,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Body,
) -> Response {
    // Whatever is refused before the body is read closes the connection (the rest of it is there).
    let closing = |e: ApiError| ([(header::CONNECTION, "close")], e).into_response();
    let Ok(Query(q)) = query else {
        return closing(
            ApiError::invalid("The query needs name=<1 to 40 characters of a-z, 0-9, - and _>.").param("name"),
        );
    };
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let platform = s.platform.clone();
    let upload = tokio::task::spawn_blocking(move || {
        platform.upload_model(&p, &q.name, &mut PieceReader { rx, current: Bytes::new() })
    });
    let mut stream = body.into_data_stream();
    let mut timed_out = false;
    let complete = loop {
        let piece = match tokio::time::timeout(UPLOAD_IDLE_TIMEOUT, futures_util::StreamExt::next(&mut stream)).await {
            Ok(Some(Ok(bytes))) => Piece::Data(bytes),
            Ok(None) => Piece::End,
            Ok(Some(Err(_))) => Piece::Failed,
            Err(_) => {
                timed_out = true;
                Piece::Failed
            }
        };
        let (last, end) = (!matches!(piece, Piece::Data(_)), matches!(piece, Piece::End));
        // A closed channel: the upload already ended (refused, or over the limit).
        if tx.send(piece).await.is_err() {
            break false;
        }
        if last {
            break end;
        }
    };
    drop(tx);
    let result = match upload.await {
        Ok(r) => r.map_err(ApiError::from),
        Err(_) => Err(server_error()),
    };
    match result {
        Ok(m) => axum::Json(custom_model_json(&m)).into_response(),
        Err(_) if timed_out => closing(body_timeout()),
        Err(e) if complete => e.into_response(),
        Err(e) => closing(e),
    }
}

async fn list_custom_models(State(s): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let models = blocking(move || s.platform.custom_models(&p)).await?;
    Ok(axum::Json(json!({"object": "list", "data": models.iter().map(custom_model_json).collect::<Vec<_>>()}))
        .into_response())
}

async fn get_custom_model(State(s): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let m = blocking(move || s.platform.custom_model(&p, &id)).await?;
    Ok(axum::Json(custom_model_json(&m)).into_response())
}

// ---------- members (people of a tenant) ----------

fn member_json(m: &soramai::core::Membership) -> Value {
    json!({"object": "member", "user": m.user.as_str(), "email": m.email, "role": m.role.as_str(),
           "created_at": m.created_at / 1000})
}

async fn list_members(State(s): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let members = blocking(move || Ok(s.platform.core().members(&p)?)).await?;
    Ok(axum::Json(json!({"object": "list", "data": members.iter().map(member_json).collect::<Vec<_>>()}))
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteBody {
    email: String,
    role: String,
}

async fn invite_member(
    State(s): State<AppState>,
    Caller(p): Caller,
    JsonBody(b): JsonBody<InviteBody>,
) -> ApiResult<Response> {
    let issued = blocking(move || {
        let role: soramai::core::Role = b.role.parse()?;
        Ok(s.platform.core().invite(&p, &b.email, role)?)
    })
    .await?;
    let i = &issued.invitation;
    let body = json!({"id": i.id.as_str(), "object": "invitation", "email": i.email, "role": i.role.as_str(),
                      "expires_at": i.expires_at / 1000, "token": issued.token.secret(),
                      "accept_url": format!("/invitations/accept?token={}", issued.token.secret())});
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    role: String,
}

fn user_id(id: &str) -> Result<soramai::core::UserId, PlatformError> {
    soramai::core::UserId::new(id).map_err(|_| soramai::Error::NotFound { kind: "member" }.into())
}

async fn set_member_role(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<RoleBody>,
) -> ApiResult<Response> {
    let m = blocking(move || {
        let role: soramai::core::Role = b.role.parse()?;
        Ok(s.platform.core().set_member_role(&p, &user_id(&id)?, role)?)
    })
    .await?;
    Ok(axum::Json(member_json(&m)).into_response())
}

async fn remove_member(State(s): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let shown = id.clone();
    blocking(move || Ok(s.platform.core().remove_member(&p, &user_id(&id)?)?)).await?;
    Ok(axum::Json(json!({"user": shown, "object": "member", "deleted": true})).into_response())
}

// ---------- chat and completions ----------

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The sampling fields chat and completions share.
#[derive(Deserialize)]
struct Sampling {
    model: String,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
}

impl Sampling {
    fn options(&self, logprobs: Option<usize>) -> ApiResult<GenerationOptions> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("Only n = 1 is supported.").param("n"));
        }
        if self.presence_penalty.is_some_and(|v| v != 0.0) || self.frequency_penalty.is_some_and(|v| v != 0.0) {
            return Err(ApiError::invalid("presence_penalty and frequency_penalty are not supported (use 0)."));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        Ok(GenerationOptions {
            max_tokens: self.max_completion_tokens.or(self.max_tokens).map(|t| t as usize),
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop,
            logprobs,
        })
    }
}

#[derive(Deserialize)]
struct ChatBody {
    #[serde(flatten)]
    sampling: Sampling,
    messages: Vec<InMessage>,
    #[serde(default)]
    logprobs: bool,
    #[serde(default)]
    top_logprobs: Option<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PromptIn {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct CompletionBody {
    #[serde(flatten)]
    sampling: Sampling,
    prompt: PromptIn,
    #[serde(default)]
    logprobs: Option<u32>,
    #[serde(default)]
    echo: bool,
}

fn chat_messages(messages: Vec<InMessage>) -> ApiResult<Vec<ChatMessage>> {
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut t = String::new();
                for p in parts {
                    if p.kind != "text" {
                        return Err(ApiError::invalid("Only text content parts are supported.").param("messages"));
                    }
                    t.push_str(p.text.as_deref().unwrap_or_default());
                }
                t
            }
        };
        out.push(ChatMessage { role: m.role, content });
    }
    Ok(out)
}

fn logprob_json(lp: &TokenLogprob) -> Value {
    json!({
        "token": lp.token, "logprob": lp.logprob, "bytes": lp.bytes,
        "top_logprobs": lp.top_logprobs.iter().map(|t| json!({"token": t.token, "logprob": t.logprob, "bytes": t.bytes})).collect::<Vec<_>>(),
    })
}

fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

async fn start(
    s: &AppState,
    p: Principal,
    model: String,
    prompt: Prompt,
    options: GenerationOptions,
) -> ApiResult<GenerationStream> {
    let platform = s.platform.clone();
    blocking(move || platform.generate(&p, &model, &prompt, &options)).await
}

fn note_usage(s: &AppState, u: &soramai::Usage) {
    s.metrics.completions.fetch_add(1, Ordering::Relaxed);
    s.metrics.prompt_tokens.fetch_add(u.prompt_tokens, Ordering::Relaxed);
    s.metrics.completion_tokens.fetch_add(u.completion_tokens, Ordering::Relaxed);
}

async fn chat_completions(
    State(s): State<AppState>,
    Caller(p): Caller,
    JsonBody(body): JsonBody<ChatBody>,
) -> ApiResult<Response> {
    let top = body.top_logprobs.unwrap_or(0) as usize;
    if body.top_logprobs.is_some() && !body.logprobs {
        return Err(ApiError::invalid("top_logprobs needs logprobs: true.").param("top_logprobs"));
    }
    let options = body.sampling.options(body.logprobs.then_some(top))?;
    let messages = chat_messages(body.messages)?;
    let model = body.sampling.model.clone();
    let stream = start(&s, p, model, Prompt::Chat(messages), options).await?;
    let include_usage = body.sampling.stream_options.as_ref().is_some_and(|o| o.include_usage);
    if body.sampling.stream {
        return Ok(sse(s, stream, include_usage, true));
    }
    let state = s.clone();
    let c = blocking(move || stream.collect()).await?;
    note_usage(&state, &c.usage);
    let logprobs = c
        .logprobs
        .as_ref()
        .map(|v| json!({"content": v.iter().map(logprob_json).collect::<Vec<_>>(), "refusal": null}));
    Ok(axum::Json(json!({
        "id": c.id, "object": "chat.completion", "created": c.created, "model": c.model,
        "system_fingerprint": null,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text, "refusal": null},
                     "logprobs": logprobs, "finish_reason": finish_str(c.finish_reason)}],
        "usage": c.usage,
    }))
    .into_response())
}

async fn completions(
    State(s): State<AppState>,
    Caller(p): Caller,
    JsonBody(body): JsonBody<CompletionBody>,
) -> ApiResult<Response> {
    let text = match body.prompt {
        PromptIn::One(t) => t,
        PromptIn::Many(mut v) if v.len() == 1 => v.remove(0),
        PromptIn::Many(_) => return Err(ApiError::invalid("One prompt per request.").param("prompt")),
    };
    if body.logprobs.is_some_and(|n| n > 5) {
        return Err(ApiError::invalid("logprobs is 0 to 5.").param("logprobs"));
    }
    let options = body.sampling.options(body.logprobs.map(|n| n as usize))?;
    let model = body.sampling.model.clone();
    let echo = body.echo.then(|| text.clone());
    let stream = start(&s, p, model, Prompt::Text(text), options).await?;
    let include_usage = body.sampling.stream_options.as_ref().is_some_and(|o| o.include_usage);
    if body.sampling.stream {
        return Ok(sse(s, stream, include_usage, false));
    }
    let state = s.clone();
    let c = blocking(move || stream.collect()).await?;
    note_usage(&state, &c.usage);
    let logprobs = c.logprobs.as_ref().map(|v| {
        let mut offset = echo.as_ref().map_or(0, String::len);
        let mut offsets = Vec::with_capacity(v.len());
        for lp in v {
            offsets.push(offset);
            offset += lp.token.len();
        }
        json!({
            "tokens": v.iter().map(|l| l.token.clone()).collect::<Vec<_>>(),
            "token_logprobs": v.iter().map(|l| l.logprob).collect::<Vec<_>>(),
            "top_logprobs": v.iter().map(|l| l.top_logprobs.iter().map(|t| (t.token.clone(), json!(t.logprob))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
            "text_offset": offsets,
        })
    });
    let text = match echo {
        Some(e) => e + &c.text,
        None => c.text,
    };
    Ok(axum::Json(json!({
        "id": c.id, "object": "text_completion", "created": c.created, "model": c.model,
        "system_fingerprint": null,
        "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_str(c.finish_reason)}],
        "usage": c.usage,
    }))
    .into_response())
}

/// Server-sent events: one chunk per token, a final chunk with the finish reason, the usage chunk
/// when asked for, then `[DONE]`. A client that goes away cancels the generation.
fn sse(s: AppState, stream: GenerationStream, include_usage: bool, chat: bool) -> Response {
    let (id, model, created) = (stream.id().to_owned(), stream.model().to_owned(), stream.created());
    let object = if chat { "chat.completion.chunk" } else { "text_completion" };
    let chunk = move |choice: Value, usage: Option<Value>| {
        let mut v = json!({"id": id, "object": object, "created": created, "model": model, "system_fingerprint": null,
                           "choices": [choice]});
        if let Some(u) = usage {
            v["choices"] = json!([]);
            v["usage"] = u;
        } else if include_usage {
            v["usage"] = Value::Null;
        }
        Event::default().data(v.to_string())
    };
    enum St {
        Start(GenerationStream),
        Run(GenerationStream),
        Usage(Value),
        Done,
        End,
    }
    let events = futures_util::stream::unfold(St::Start(stream), move |st| {
        let chunk = chunk.clone();
        let s = s.clone();
        async move {
            match st {
                St::Start(g) if chat => {
                    let ev = chunk(
                        json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}),
                        None,
                    );
                    Some((Ok::<_, Infallible>(ev), St::Run(g)))
                }
                St::Start(g) | St::Run(g) => {
                    let mut g = g;
                    match g.next_event().await {
                        Some(Ok(StreamEvent::Delta { text, logprob })) => {
                            let lp = logprob.as_ref().map(|l| json!({"content": [logprob_json(l)], "refusal": null}));
                            let choice = if chat {
                                json!({"index": 0, "delta": {"content": text}, "logprobs": lp, "finish_reason": null})
                            } else {
                                let lp = logprob.as_ref().map(|l| json!({"tokens": [l.token], "token_logprobs": [l.logprob], "top_logprobs": [l.top_logprobs.iter().map(|t| (t.token.clone(), json!(t.logprob))).collect::<serde_json::Map<_, _>>()], "text_offset": [0]}));
                                json!({"index": 0, "text": text, "logprobs": lp, "finish_reason": null})
                            };
                            Some((Ok(chunk(choice, None)), St::Run(g)))
                        }
                        Some(Ok(StreamEvent::Done { finish_reason, usage })) => {
                            note_usage(&s, &usage);
                            let choice = if chat {
                                json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish_str(finish_reason)})
                            } else {
                                json!({"index": 0, "text": "", "logprobs": null, "finish_reason": finish_str(finish_reason)})
                            };
                            let next = if include_usage { St::Usage(json!(usage)) } else { St::Done };
                            Some((Ok(chunk(choice, None)), next))
                        }
                        Some(Err(e)) => {
                            Some((Ok(Event::default().data(ApiError::from(e).body().to_string())), St::Done))
                        }
                        None => Some((Ok(Event::default().data("[DONE]")), St::End)),
                    }
                }
                St::Usage(u) => Some((Ok(chunk(Value::Null, Some(u))), St::Done)),
                St::Done => Some((Ok(Event::default().data("[DONE]")), St::End)),
                St::End => None,
            }
        }
    });
    Sse::new(events).into_response()
}

// ---------- embeddings ----------

#[derive(Deserialize)]
struct EmbeddingBody {
    model: String,
    input: PromptIn,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u32>,
}

async fn embeddings(
    State(s): State<AppState>,
    Caller(p): Caller,
    JsonBody(body): JsonBody<EmbeddingBody>,
) -> ApiResult<Response> {
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => return Err(ApiError::invalid("encoding_format is float or base64.").param("encoding_format")),
    };
    if body.dimensions.is_some() {
        return Err(ApiError::invalid("dimensions is not supported.").param("dimensions"));
    }
    let inputs = match body.input {
        PromptIn::One(t) => vec![t],
        PromptIn::Many(v) => v,
    };
    let model = body.model.clone();
    let e = blocking(move || s.platform.embed(&p, &model, &inputs)).await?;
    let data: Vec<Value> = e
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data, "model": body.model,
                         "usage": {"prompt_tokens": e.prompt_tokens, "total_tokens": e.prompt_tokens}}))
    .into_response())
}

// ---------- files (fine-tuning datasets) ----------

fn file_json(d: &soramai::DatasetInfo) -> Value {
    json!({"id": d.id.as_str(), "object": "file", "bytes": d.bytes, "created_at": d.created_at / 1000,
           "filename": d.name, "purpose": "fine-tune", "status": "processed", "status_details": null, "expires_at": null})
}

async fn upload_file(State(s): State<AppState>, Caller(p): Caller, mut form: Multipart) -> ApiResult<Response> {
    let mut purpose = None;
    let mut file: Option<(String, Bytes)> = None;
    loop {
        let field = form.next_field().await.map_err(|_| ApiError::invalid("The multipart body is malformed."))?;
        let Some(field) = field else { break };
        match field.name() {
            Some("purpose") => {
                purpose = Some(field.text().await.map_err(|_| ApiError::invalid("purpose is not text."))?)
            }
            Some("file") => {
                let name = field.file_name().unwrap_or("upload.jsonl").to_owned();
                let bytes = field.bytes().await.map_err(|_| {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "invalid_request_error",
                        "too_large",
                        "The file could not be read (too large?).",
                    )
                })?;
                file = Some((name, bytes));
            }
            _ => {}
        }
    }
    if purpose.as_deref() != Some("fine-tune") {
        return Err(ApiError::invalid("purpose must be fine-tune.").param("purpose"));
    }
    let (name, bytes) = file.ok_or_else(|| ApiError::invalid("No file field.").param("file"))?;
    let info = blocking(move || Ok(s.platform.core().upload_dataset(&p, &name, &bytes)?)).await?;
    Ok(axum::Json(file_json(&info)).into_response())
}

async fn list_files(State(s): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let files = blocking(move || Ok(s.platform.core().list_datasets(&p)?)).await?;
    Ok(axum::Json(
        json!({"object": "list", "data": files.iter().map(file_json).collect::<Vec<_>>(), "has_more": false}),
    )
    .into_response())
}

async fn get_file(State(s): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let info = blocking(move || Ok(s.platform.core().dataset(&p, &Platform::dataset_id(&id)?)?)).await?;
    Ok(axum::Json(file_json(&info)).into_response())
}

async fn delete_file(State(s): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let ds = Platform::dataset_id(&id)?;
    let shown = ds.as_str().to_owned();
    blocking(move || Ok(s.platform.core().delete_dataset(&p, &ds)?)).await?;
    Ok(axum::Json(json!({"id": shown, "object": "file", "deleted": true})).into_response())
}

async fn file_content(State(s): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let bytes = blocking(move || Ok(s.platform.core().download_dataset(&p, &Platform::dataset_id(&id)?)?)).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes.to_vec()).into_response())
}

// ---------- fine-tuning jobs ----------

#[derive(Deserialize)]
#[serde(untagged)]
enum Auto<T> {
    Value(T),
    Word(String),
}

impl<T> Auto<T> {
    fn get(self, field: &'static str) -> ApiResult<Option<T>> {
        match self {
            Auto::Value(v) => Ok(Some(v)),
            Auto::Word(w) if w == "auto" => Ok(None),
            Auto::Word(_) => Err(ApiError::invalid(format!("{field} is a number or \"auto\".")).param(field)),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HyperIn {
    #[serde(default)]
    n_epochs: Option<Auto<u32>>,
    #[serde(default)]
    batch_size: Option<Auto<u32>>,
    #[serde(default)]
    learning_rate_multiplier: Option<Auto<f64>>,
    // Soramai's LoRA settings.
    #[serde(default)]
    rank: Option<u32>,
    #[serde(default)]
    alpha: Option<f64>,
    #[serde(default)]
    target_modules: Option<Vec<String>>,
    #[serde(default)]
    max_seq: Option<u32>,
    #[serde(default)]
    checkpoint_every: Option<u32>,
}

#[derive(Deserialize)]
struct Supervised {
    #[serde(default)]
    hyperparameters: Option<HyperIn>,
}

#[derive(Deserialize)]
struct Method {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    supervised: Option<Supervised>,
}

#[derive(Deserialize)]
struct JobBody {
    model: String,
    training_file: String,
    #[serde(default)]
    hyperparameters: Option<HyperIn>,
    #[serde(default)]
    method: Option<Method>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    validation_file: Option<String>,
    #[serde(default)]
    integrations: Option<Value>,
    #[serde(default)]
    metadata: Option<Value>,
}

fn hyperparameters(h: HyperIn, seed: Option<u64>) -> ApiResult<Hyperparameters> {
    let mut out = Hyperparameters::default();
    if let Some(v) = h.n_epochs.map(|v| v.get("n_epochs")).transpose()?.flatten() {
        out.n_epochs = v;
    }
    if let Some(v) = h.batch_size.map(|v| v.get("batch_size")).transpose()?.flatten() {
        out.batch_size = v;
    }
    if let Some(v) = h.learning_rate_multiplier.map(|v| v.get("learning_rate_multiplier")).transpose()?.flatten() {
        out.learning_rate_multiplier = v;
    }
    out.rank = h.rank.unwrap_or(out.rank);
    out.alpha = h.alpha.unwrap_or(out.alpha);
    out.target_modules = h.target_modules.unwrap_or(out.target_modules);
    out.max_seq = h.max_seq.unwrap_or(out.max_seq);
    out.checkpoint_every = h.checkpoint_every.unwrap_or(out.checkpoint_every);
    out.seed = seed.unwrap_or(out.seed);
    Ok(out)
}

fn ms_to_s(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

fn job_json(j: &Job) -> Value {
    let soramai::JobSpec::FineTune(spec) = &j.spec else { return json!({}) };
    let status = match j.state {
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    };
    let result = j.result.as_ref();
    let h = &spec.hyperparameters;
    let hp = json!({"n_epochs": h.n_epochs, "batch_size": h.batch_size, "learning_rate_multiplier": h.learning_rate_multiplier});
    json!({
        "id": j.id.as_str(), "object": "fine_tuning.job", "created_at": ms_to_s(j.created_at),
        "error": j.error.as_ref().map(|e| json!({"code": "job_failed", "message": e, "param": null})),
        "fine_tuned_model": result.and_then(|r| r.get("fine_tuned_model")).cloned().unwrap_or(Value::Null),
        "finished_at": j.finished_at.map(ms_to_s),
        "hyperparameters": hp,
        "model": spec.base_model.as_str(),
        "organization_id": j.tenant.as_str(),
        "result_files": [],
        "seed": h.seed,
        "status": status,
        "trained_tokens": result.and_then(|r| r.get("trained_tokens")).cloned().unwrap_or(Value::Null),
        "training_file": spec.dataset.as_str(),
        "validation_file": null,
        "estimated_finish": null,
        "integrations": [],
        "metadata": null,
        "user_provided_suffix": spec.suffix,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
    })
}

async fn create_job(
    State(s): State<AppState>,
    Caller(p): Caller,
    JsonBody(body): JsonBody<JobBody>,
) -> ApiResult<Response> {
    if body.validation_file.is_some() {
        return Err(ApiError::invalid("validation_file is not supported.").param("validation_file"));
    }
    if body.integrations.as_ref().is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty())) {
        return Err(ApiError::invalid("integrations are not supported.").param("integrations"));
    }
    let _ = body.metadata;
    let mut hyper = body.hyperparameters;
    if let Some(m) = body.method {
        if m.kind != "supervised" {
            return Err(ApiError::invalid("Only the supervised method is supported.").param("method"));
        }
        if let Some(h) = m.supervised.and_then(|s| s.hyperparameters) {
            hyper = Some(h);
        }
    }
    let spec = FineTuneSpec {
        dataset: Platform::dataset_id(&body.training_file).map_err(|e| ApiError::from(e).param("training_file"))?,
        base_model: ModelId::new(&body.model).map_err(|_| ApiError::invalid("Unknown model.").param("model"))?,
        suffix: body.suffix,
        hyperparameters: hyperparameters(hyper.unwrap_or_default(), body.seed)?,
    };
    let job = blocking(move || s.platform.create_fine_tuning_job(&p, spec)).await?;
    Ok(axum::Json(job_json(&job)).into_response())
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// A page of a newest-first list: items after the one with id `after`, at most `limit` (1..=100).
fn page(items: Vec<(String, Value)>, q: &Page) -> ApiResult<Value> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit is 1 to 100.").param("limit"));
    }
    let start = match &q.after {
        Some(a) => items.iter().position(|(id, _)| id == a).map_or(items.len(), |i| i + 1),
        None => 0,
    };
    let rest: Vec<Value> = items.into_iter().skip(start).map(|(_, v)| v).collect();
    let has_more = rest.len() > limit;
    Ok(json!({"object": "list", "data": rest.into_iter().take(limit).collect::<Vec<_>>(), "has_more": has_more}))
}

async fn list_jobs(State(s): State<AppState>, Caller(p): Caller, Query(q): Query<Page>) -> ApiResult<Response> {
    let jobs = blocking(move || s.platform.list_fine_tuning_jobs(&p)).await?;
    let items = jobs.iter().map(|j| (j.id.as_str().to_owned(), job_json(j))).collect();
    Ok(axum::Json(page(items, &q)?).into_response())
}

async fn get_job(State(s): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let job = blocking(move || s.platform.fine_tuning_job(&p, &id)).await?;
    Ok(axum::Json(job_json(&job)).into_response())
}

async fn cancel_job(State(s): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let job = blocking(move || s.platform.cancel_fine_tuning_job(&p, &id)).await?;
    Ok(axum::Json(job_json(&job)).into_response())
}

fn event_message(kind: &str, data: &Value) -> (String, &'static str, &'static str) {
    let num = |k: &str| data.get(k).cloned().unwrap_or(Value::Null);
    match kind {
        "progress" => {
            (format!("Step {}/{}: training loss={}", num("step"), num("total_steps"), num("loss")), "info", "metrics")
        }
        "checkpoint" => (format!("Checkpoint saved at step {}", num("step")), "info", "message"),
        "state" => {
            (format!("Job {}", data.get("state").and_then(Value::as_str).unwrap_or("changed state")), "info", "message")
        }
        "error" => ("The job failed".to_owned(), "error", "message"),
        _ => (format!("{kind} event"), "info", "message"),
    }
}

async fn job_events(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    Query(q): Query<Page>,
) -> ApiResult<Response> {
    let (job, events) = blocking(move || s.platform.fine_tuning_job_events(&p, &id)).await?;
    let mut items: Vec<(String, Value)> = events
        .iter()
        .map(|e| {
            let id = format!("ftevent-{}-{}", job.id.as_str(), e.seq);
            let (message, level, kind) = event_message(&e.kind, &e.data);
            let v = json!({"id": id, "object": "fine_tuning.job.event", "created_at": ms_to_s(e.at), "level": level,
                           "message": message, "data": e.data, "type": kind});
            (id, v)
        })
        .collect();
    items.reverse();
    Ok(axum::Json(page(items, &q)?).into_response())
}

async fn job_checkpoints(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    Query(q): Query<Page>,
) -> ApiResult<Response> {
    let (job, events) = blocking(move || s.platform.fine_tuning_job_events(&p, &id)).await?;
    let mut items: Vec<(String, Value)> = events
        .iter()
        .filter(|e| e.kind == "checkpoint")
        .map(|e| {
            let step = e.data.get("step").and_then(Value::as_u64).unwrap_or(0);
            let id = format!("ftckpt-{}-{step}", job.id.as_str());
            let v = json!({"id": id, "object": "fine_tuning.job.checkpoint", "created_at": ms_to_s(e.at),
                           "fine_tuned_model_checkpoint": format!("{}:ckpt-step-{step}", job.id.as_str()),
                           "fine_tuning_job_id": job.id.as_str(), "step_number": step,
                           "metrics": {"step": step, "train_loss": e.data.get("loss").cloned().unwrap_or(Value::Null)}});
            (id, v)
        })
        .collect();
    items.reverse();
    Ok(axum::Json(page(items, &q)?).into_response())
}

// ---------- RAG ----------

fn corpus_id(id: &str) -> ApiResult<soramai::rag::CorpusId> {
    soramai::rag::CorpusId::new(id).map_err(|_| PlatformError::Rag(soramai::rag::Error::CorpusNotFound).into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CorpusBody {
    id: String,
}

async fn create_corpus(
    State(s): State<AppState>,
    Caller(p): Caller,
    JsonBody(b): JsonBody<CorpusBody>,
) -> ApiResult<Response> {
    let id = soramai::rag::CorpusId::new(&b.id).map_err(|e| ApiError::from(PlatformError::Rag(e)).param("id"))?;
    let shown = id.as_str().to_owned();
    blocking(move || Ok(s.platform.rag()?.create_corpus(&p, &id)?)).await?;
    Ok((StatusCode::CREATED, axum::Json(json!({"id": shown, "object": "corpus"}))).into_response())
}

async fn list_corpora(State(s): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let ids = blocking(move || Ok(s.platform.rag()?.list_corpora(&p)?)).await?;
    let data: Vec<Value> = ids.iter().map(|c| json!({"id": c.as_str(), "object": "corpus"})).collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

async fn delete_corpus(State(s): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let id = corpus_id(&id)?;
    let shown = id.as_str().to_owned();
    blocking(move || Ok(s.platform.rag()?.delete_corpus(&p, &id)?)).await?;
    Ok(axum::Json(json!({"id": shown, "object": "corpus", "deleted": true})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocsBody {
    documents: Vec<soramai::DocumentInput>,
}

async fn add_documents(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<DocsBody>,
) -> ApiResult<Response> {
    let id = corpus_id(&id)?;
    let docs: Vec<soramai::rag::Document> = b.documents.into_iter().map(Into::into).collect();
    let report = blocking(move || Ok(s.platform.rag()?.add_documents(&p, &id, &docs)?)).await?;
    Ok(axum::Json(json!({"object": "ingestion", "documents": report.documents, "chunks": report.chunks}))
        .into_response())
}

async fn list_documents(State(s): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let id = corpus_id(&id)?;
    let docs = blocking(move || Ok(s.platform.rag()?.list_documents(&p, &id)?)).await?;
    let data: Vec<Value> = docs.iter().map(|d| json!({"id": d, "object": "document"})).collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

async fn delete_document(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path((id, doc)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = corpus_id(&id)?;
    let shown = doc.clone();
    blocking(move || Ok(s.platform.rag()?.delete_documents(&p, &id, &[doc])?)).await?;
    Ok(axum::Json(json!({"id": shown, "object": "document", "deleted": true})).into_response())
}

async fn search(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<soramai::SearchInput>,
) -> ApiResult<Response> {
    let hits = blocking(move || Session::new(s.platform, p).search(&id, b)).await?;
    Ok(axum::Json(json!({"object": "list", "data": hits})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroundedBody {
    model: String,
    question: String,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    top_k: Option<usize>,
    #[serde(default)]
    hybrid: bool,
}

async fn grounded_chat(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<GroundedBody>,
) -> ApiResult<Response> {
    let state = s.clone();
    let (c, prompt) = blocking(move || {
        let retrieval = soramai::Retrieval { top_k: b.top_k.unwrap_or(5), hybrid: b.hybrid };
        let options = GenerationOptions {
            max_tokens: b.max_tokens,
            temperature: b.temperature,
            seed: b.seed,
            ..GenerationOptions::default()
        };
        let (stream, prompt) = s.platform.grounded_chat(&p, &b.model, &id, &b.question, &retrieval, &options)?;
        Ok((stream.collect()?, prompt))
    })
    .await?;
    note_usage(&state, &c.usage);
    Ok(axum::Json(json!({
        "id": c.id, "object": "grounded.answer", "created": c.created, "model": c.model,
        "answer": c.text, "citations": prompt.citations(&c.text), "sources": prompt.sources,
        "finish_reason": finish_str(c.finish_reason), "usage": c.usage,
    }))
    .into_response())
}

// ---------- tenants, keys, audit, usage ----------

fn tier(name: &str) -> ApiResult<Tier> {
    Tier::ALL
        .into_iter()
        .find(|t| t.as_str() == name)
        .ok_or_else(|| ApiError::invalid("tier is free, basic, pro, org or enterprise.").param("tier"))
}

fn tenant_json(t: &soramai::Tenant) -> Value {
    json!({"id": t.id.as_str(), "object": "tenant", "tier": t.tier.as_str()})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantBody {
    id: String,
    tier: String,
}

async fn create_tenant(
    State(s): State<AppState>,
    Caller(p): Caller,
    JsonBody(b): JsonBody<TenantBody>,
) -> ApiResult<Response> {
    let tier = tier(&b.tier)?;
    let t = blocking(move || s.platform.create_tenant(&p, &b.id, tier)).await?;
    Ok((StatusCode::CREATED, axum::Json(tenant_json(&t))).into_response())
}

async fn list_tenants(State(s): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let ts = blocking(move || s.platform.tenants(&p)).await?;
    Ok(axum::Json(json!({"object": "list", "data": ts.iter().map(tenant_json).collect::<Vec<_>>()})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierBody {
    tier: String,
}

async fn set_tier(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<TierBody>,
) -> ApiResult<Response> {
    let tier = tier(&b.tier)?;
    let t = blocking(move || s.platform.set_tier(&p, &id, tier)).await?;
    Ok(axum::Json(tenant_json(&t)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditsBody {
    amount: i64,
    #[serde(default)]
    reference: Option<String>,
}

async fn grant_credits(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<CreditsBody>,
) -> ApiResult<Response> {
    let r = blocking(move || s.platform.grant_credits(&p, &id, b.amount, b.reference.as_deref().unwrap_or("grant")))
        .await?;
    Ok(axum::Json(json!({"object": "receipt", "receipt": r.receipt, "amount": r.amount, "balance": r.balance_after}))
        .into_response())
}

fn key_json(k: &soramai::ApiKeyInfo) -> Value {
    json!({"id": k.id.as_str(), "object": "api_key", "tenant": k.tenant.as_str(), "name": k.name,
           "scopes": k.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
           "created_at": ms_to_s(k.created_at), "expires_at": k.expires_at.map(ms_to_s),
           "revoked_at": k.revoked_at.map(ms_to_s), "replaced_by": k.replaced_by.as_ref().map(|r| r.as_str()),
           "grant": k.grant.as_ref().map(|g| g.as_str())})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    name: String,
    scopes: Vec<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    expires_in_seconds: Option<u64>,
}

fn scope(name: &str) -> ApiResult<Scope> {
    [Scope::Inference, Scope::Train, Scope::Rag, Scope::Admin]
        .into_iter()
        .find(|s| s.as_str() == name)
        .ok_or_else(|| ApiError::invalid("A scope is inference, train, rag or admin.").param("scopes"))
}

async fn create_key(
    State(s): State<AppState>,
    Caller(p): Caller,
    JsonBody(b): JsonBody<KeyBody>,
) -> ApiResult<Response> {
    // Scopes are checked here to answer with `param: scopes`; the SDK does the rest.
    let scopes = b.scopes.iter().map(|n| scope(n)).collect::<ApiResult<Vec<_>>>()?;
    let request =
        soramai::KeyRequest { name: b.name, scopes, tenant: b.tenant, expires_in_seconds: b.expires_in_seconds };
    let key = blocking(move || Session::new(s.platform, p).create_api_key(request)).await?;
    let mut v = key_json(&key.info);
    v["key"] = json!(key.secret());
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

async fn list_keys(State(s): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let keys = blocking(move || Ok(s.platform.core().list_api_keys(&p)?)).await?;
    Ok(axum::Json(json!({"object": "list", "data": keys.iter().map(key_json).collect::<Vec<_>>()})).into_response())
}

fn key_id(id: &str) -> ApiResult<soramai::ApiKeyId> {
    soramai::ApiKeyId::new(id).map_err(|_| PlatformError::Core(soramai::Error::NotFound { kind: "api key" }).into())
}

async fn revoke_key(State(s): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let id = key_id(&id)?;
    let shown = id.as_str().to_owned();
    blocking(move || Ok(s.platform.core().revoke_api_key(&p, &id)?)).await?;
    Ok(axum::Json(json!({"id": shown, "object": "api_key", "revoked": true})).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    grace_seconds: Option<u64>,
}

async fn rotate_key(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let id = key_id(&id)?;
    let b: RotateBody = optional_body(&body)?;
    let grace = Duration::from_secs(b.grace_seconds.unwrap_or(0));
    let key = blocking(move || Ok(s.platform.core().rotate_api_key(&p, &id, grace)?)).await?;
    let mut v = key_json(&key.info);
    v["key"] = json!(key.secret());
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CloseBody {
    #[serde(default)]
    immediate: bool,
    #[serde(default)]
    window_days: Option<u32>,
}

async fn close_tenant(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let b: CloseBody = optional_body(&body)?;
    let c = blocking(move || Session::new(s.platform, p).close_tenant(&id, b.immediate, b.window_days)).await?;
    Ok(axum::Json(
        json!({"object": "tenant.closure", "tenant": c.tenant.as_str(), "requested_at": ms_to_s(c.requested_at),
                         "purge_at": ms_to_s(c.purge_at), "purged": c.purged}),
    )
    .into_response())
}

async fn reopen_tenant(State(s): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let shown = id.clone();
    blocking(move || s.platform.reopen_tenant(&p, &id)).await?;
    Ok(axum::Json(json!({"object": "tenant", "id": shown, "reopened": true})).into_response())
}

fn grant_json(g: &soramai::AccessGrant) -> Value {
    json!({"id": g.id.as_str(), "object": "access_grant", "tenant": g.tenant.as_str(),
           "operator_tenant": g.operator_tenant.as_str(), "operator_key": g.operator_key.as_str(),
           "key_id": g.key_id.as_str(), "reason": g.reason,
           "scopes": g.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(), "ttl_seconds": g.ttl_seconds,
           "status": g.status, "requested_at": ms_to_s(g.requested_at), "approved_at": g.approved_at.map(ms_to_s),
           "expires_at": ms_to_s(g.expires_at), "ended_at": g.ended_at.map(ms_to_s), "ended_by": g.ended_by})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    reason: String,
    scopes: Vec<String>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

async fn request_grant(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(tenant): Path<String>,
    JsonBody(b): JsonBody<GrantBody>,
) -> ApiResult<Response> {
    let scopes = b.scopes.iter().map(|n| scope(n)).collect::<ApiResult<Vec<_>>>()?;
    let input = soramai::GrantInput { reason: b.reason, scopes, ttl_seconds: b.ttl_seconds };
    let issued = blocking(move || Session::new(s.platform, p).request_access_grant(&tenant, input)).await?;
    let mut v = grant_json(&issued.grant);
    v["key"] = json!(issued.key.secret());
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

async fn list_grants(State(s): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let grants = blocking(move || s.platform.access_grants(&p)).await?;
    Ok(axum::Json(json!({"object": "list", "data": grants.iter().map(grant_json).collect::<Vec<_>>()})).into_response())
}

async fn get_grant(State(s): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let g = blocking(move || s.platform.access_grant(&p, &id)).await?;
    Ok(axum::Json(grant_json(&g)).into_response())
}

async fn approve_grant(State(s): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let g = blocking(move || s.platform.approve_access_grant(&p, &id)).await?;
    Ok(axum::Json(grant_json(&g)).into_response())
}

async fn revoke_grant(State(s): State<AppState>, Caller(p): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let g = blocking(move || s.platform.revoke_access_grant(&p, &id)).await?;
    Ok(axum::Json(grant_json(&g)).into_response())
}

async fn audit_log(State(s): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let records = blocking(move || Ok(s.platform.core().audit_log(&p)?)).await?;
    Ok(axum::Json(json!({"object": "list", "data": records})).into_response())
}

async fn audit_verify(State(s): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let report = blocking(move || {
        p.require(Scope::Admin)?;
        Ok(s.platform.core().verify_audit(p.tenant())?)
    })
    .await?;
    Ok(axum::Json(json!({"object": "audit.verification", "report": report})).into_response())
}

#[derive(Deserialize)]
struct UsageQuery {
    #[serde(default)]
    since: Option<i64>,
}

async fn usage(State(s): State<AppState>, Caller(p): Caller, Query(q): Query<UsageQuery>) -> ApiResult<Response> {
    let (summary, balance) = blocking(move || {
        let summary = s.platform.core().usage_summary(&p, q.since.unwrap_or(0).saturating_mul(1000))?;
        let balance = s.platform.core().balance(p.tenant())?;
        Ok((summary, balance))
    })
    .await?;
    Ok(axum::Json(json!({"object": "usage", "usage": summary, "credits": balance})).into_response())
}

/// Serves until ctrl-c or SIGTERM, then lets running requests finish. With a TLS configuration
/// every connection is TLS (1.2 or 1.3, rustls); handshakes run concurrently, each with a time
/// limit, so a slow client never holds up the others. `limits` caps open connections and closes
/// slow and idle ones (see [`crate::conn`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: AppState,
    limits: crate::conn::ServeLimits,
) -> std::io::Result<()> {
    crate::conn::serve(listener, tls, router(state), limits, shutdown_signal()).await
}

/// Loads a PEM certificate chain and private key into a rustls server configuration.
pub fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
