//! Models: the catalogue, deletion, and customers' own GGUF uploads (Pro and up).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::*;

fn model_json(m: &soramai::ModelInfo) -> Value {
    json!({"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by})
}

pub(super) async fn list_models(State(s): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let models = blocking(move || s.platform.list_models(&p)).await?;
    Ok(axum::Json(json!({"object": "list", "data": models.iter().map(model_json).collect::<Vec<_>>()})).into_response())
}

pub(super) async fn get_model(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let m = blocking(move || s.platform.model(&p, &id)).await?;
    Ok(axum::Json(model_json(&m)).into_response())
}

pub(super) async fn delete_model(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let shown = id.clone();
    blocking(move || s.platform.delete_model(&p, &id)).await?;
    Ok(axum::Json(json!({"id": shown, "object": "model", "deleted": true})).into_response())
}

fn custom_model_json(m: &soramai::CustomModel) -> Value {
    json!({"id": m.id.as_str(), "object": "model", "created": m.created_at / 1000, "owned_by": m.tenant.as_str(),
           "name": m.name, "bytes": m.bytes, "sha256": m.sha256, "architecture": m.architecture})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UploadQuery {
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
pub(super) async fn upload_custom_model(
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

pub(super) async fn list_custom_models(State(s): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let models = blocking(move || s.platform.custom_models(&p)).await?;
    Ok(axum::Json(json!({"object": "list", "data": models.iter().map(custom_model_json).collect::<Vec<_>>()}))
        .into_response())
}

pub(super) async fn get_custom_model(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let m = blocking(move || s.platform.custom_model(&p, &id)).await?;
    Ok(axum::Json(custom_model_json(&m)).into_response())
}
