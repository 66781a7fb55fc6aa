//! Errors in OpenAI's JSON shape, and the mapping from the SDK's errors.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use soramai::PlatformError;

/// An error in OpenAI's JSON shape.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) kind: &'static str,
    pub(super) code: Option<String>,
    pub(super) message: String,
    pub(super) param: Option<&'static str>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, kind: &'static str, code: &str, message: impl Into<String>) -> Self {
        Self { status, kind, code: Some(code.to_owned()), message: message.into(), param: None }
    }

    pub(super) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_request", message)
    }

    pub(super) fn param(mut self, p: &'static str) -> Self {
        self.param = Some(p);
        self
    }

    pub(super) fn body(&self) -> Value {
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

pub(super) fn server_error() -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error", "The server had an error.")
}

pub(super) type ApiResult<T> = Result<T, ApiError>;
