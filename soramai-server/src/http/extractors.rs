//! Request extractors: the authenticated caller and JSON bodies with OpenAI-shaped errors.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use soramai::{PlatformError, Principal};

use super::*;

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
pub(super) fn optional_body<T: Default + serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    if body.is_empty() { Ok(T::default()) } else { serde_json::from_slice(body).map_err(|e| body_error(&e)) }
}
