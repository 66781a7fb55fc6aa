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

/// An error answer's code, left on the response for the request log and the metrics.
#[derive(Clone)]
pub(super) struct ErrorCode(pub(super) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(self.body())).into_response();
        let code = self.code.clone().unwrap_or_else(|| self.kind.to_owned());
        res.extensions_mut().insert(ErrorCode(code));
        res
    }
}

impl From<PlatformError> for ApiError {
    fn from(e: PlatformError) -> Self {
        use soramai::ErrorKind as K;
        let kind = e.kind();
        let status = StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let error_type = match kind {
            K::Authentication => {
                return Self::new(status, "invalid_request_error", "invalid_api_key", "Incorrect API key provided.");
            }
            K::ContextLength => {
                return Self::new(status, "invalid_request_error", &e.code(), e.to_string()).param("messages");
            }
            K::Integrity => {
                return Self::new(
                    status,
                    "server_error",
                    "integrity_error",
                    "Stored data failed its integrity check. The failure is logged and recorded in the audit log.",
                );
            }
            K::PermissionDenied => "permission_error",
            K::Unavailable => "server_error",
            K::InsufficientCredits => "insufficient_quota",
            K::RateLimited => "requests",
            K::NotFound | K::Conflict | K::InvalidRequest | K::TooLarge => "invalid_request_error",
            _ => return server_error(),
        };
        let answer = Self::new(status, error_type, &e.code(), e.to_string());
        match e.param() {
            Some(p) => answer.param(p),
            None => answer,
        }
    }
}

pub(super) fn server_error() -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error", "The server had an error.")
}

pub(super) type ApiResult<T> = Result<T, ApiError>;
