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

/// A JSON object body whose fields are checked by name before it is parsed: a parameter this
/// server does not implement is refused naming it (OpenAI's `tools` or `tool_choice`, say),
/// never parsed and ignored.
pub struct Checked<T>(pub T);

/// The fields a [`Checked`] body may have.
pub(super) trait Fields {
    /// Every field the body's type reads (besides [`Fields::SHARED`]).
    const KNOWN: &'static [&'static str];
    /// Fields of a part the body shares with others (a flattened struct).
    const SHARED: &'static [&'static str] = &[];
}

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Fields> FromRequest<S> for Checked<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let JsonBody(v) = JsonBody::<serde_json::Value>::from_request(req, state).await?;
        if let serde_json::Value::Object(fields) = &v
            && let Some(unknown) =
                fields.keys().find(|k| !T::KNOWN.contains(&k.as_str()) && !T::SHARED.contains(&k.as_str()))
        {
            return Err(unsupported(unknown));
        }
        serde_json::from_value(v).map(Checked).map_err(|e| body_error(&e))
    }
}

/// OpenAI's request parameters that this server does not implement, refused by name.
const NOT_IMPLEMENTED: &[&str] = &[
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "user",
    "store",
    "metadata",
    "service_tier",
    "reasoning_effort",
    "modalities",
    "audio",
    "prediction",
    "web_search_options",
    "best_of",
    "suffix",
    "top_k",
    "min_p",
    "repetition_penalty",
];

/// Whether a field's name may be quoted back: a short identifier, as OpenAI names fields
/// (anything else could be content).
fn is_name(field: &str) -> bool {
    !field.is_empty() && field.len() <= 64 && field.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A field's name to quote back in a message, or `a field` when it is not a name.
pub(super) fn shown_name(field: &str) -> &str {
    if is_name(field) { field } else { "field" }
}

/// The refusal of a field the body's type does not read.
fn unsupported(field: &str) -> ApiError {
    match NOT_IMPLEMENTED.iter().find(|n| **n == field) {
        Some(&name) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "unsupported_parameter",
            format!("{name} is not supported by this server."),
        )
        .param(name),
        None if is_name(field) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "unknown_parameter",
            format!("Unrecognized request argument supplied: {field}"),
        ),
        None => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "unknown_parameter",
            "The body has an unrecognized argument.",
        ),
    }
}

/// A JSON body that does not parse: its kind and position only. serde's own message can quote
/// the input (an unknown field or variant, a string where a number goes), and the input may be a
/// prompt.
pub(super) fn body_error(e: &serde_json::Error) -> ApiError {
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
