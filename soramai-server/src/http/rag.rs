//! RAG: corpora, documents, search and grounded chat.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use soramai::{GenerationOptions, PlatformError, Session};

use super::*;

fn corpus_id(id: &str) -> ApiResult<soramai::CorpusId> {
    soramai::CorpusId::new(id).map_err(|_| PlatformError::Rag(soramai::RagError::CorpusNotFound).into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CorpusBody {
    id: String,
}

pub(super) async fn create_corpus(
    State(s): State<AppState>,
    Caller(p): Caller,
    JsonBody(b): JsonBody<CorpusBody>,
) -> ApiResult<Response> {
    let id = soramai::CorpusId::new(&b.id).map_err(|e| ApiError::from(PlatformError::Rag(e)).param("id"))?;
    let shown = id.as_str().to_owned();
    blocking(move || Ok(s.platform.rag()?.create_corpus(&p, &id)?)).await?;
    Ok((StatusCode::CREATED, axum::Json(json!({"id": shown, "object": "corpus"}))).into_response())
}

pub(super) async fn list_corpora(State(s): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let ids = blocking(move || Ok(s.platform.rag()?.list_corpora(&p)?)).await?;
    let data: Vec<Value> = ids.iter().map(|c| json!({"id": c.as_str(), "object": "corpus"})).collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

pub(super) async fn delete_corpus(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = corpus_id(&id)?;
    let shown = id.as_str().to_owned();
    blocking(move || Ok(s.platform.rag()?.delete_corpus(&p, &id)?)).await?;
    Ok(axum::Json(json!({"id": shown, "object": "corpus", "deleted": true})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DocsBody {
    documents: Vec<soramai::DocumentInput>,
}

/// An ingestion as the API shows it: counts and states, never content.
fn ingestion_json(j: &soramai::Job) -> Value {
    let soramai::JobSpec::Ingest(spec) = &j.spec else { return json!({}) };
    json!({
        "id": j.id.as_str(), "object": "ingestion", "corpus": spec.corpus, "status": j.state,
        "documents": spec.documents, "chunks": spec.chunks, "progress": j.progress,
        "embedded": spec.embedder.is_some(),
        "created_at": ms_to_s(j.created_at), "finished_at": j.finished_at.map(ms_to_s),
        "error": j.error.as_ref().map(|e| json!({"code": "ingestion_failed", "message": e})),
    })
}

/// Checks and cuts the documents now (the tier's bounds answer at once) and queues their
/// embedding and indexing as a job: 202 with the ingestion to poll.
pub(super) async fn add_documents(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<DocsBody>,
) -> ApiResult<Response> {
    let job = blocking(move || Session::for_request(s.platform, p).start_ingestion(&id, b.documents)).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(ingestion_json(&job))).into_response())
}

pub(super) async fn list_ingestions(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let jobs = blocking(move || Session::for_request(s.platform, p).ingestions(&id)).await?;
    let data: Vec<Value> = jobs.iter().map(ingestion_json).collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

pub(super) async fn get_ingestion(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path((id, job)): Path<(String, String)>,
) -> ApiResult<Response> {
    let j = blocking(move || Session::for_request(s.platform, p).ingestion(&id, &job)).await?;
    Ok(axum::Json(ingestion_json(&j)).into_response())
}

pub(super) async fn cancel_ingestion(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path((id, job)): Path<(String, String)>,
) -> ApiResult<Response> {
    let j = blocking(move || Session::for_request(s.platform, p).cancel_ingestion(&id, &job)).await?;
    Ok(axum::Json(ingestion_json(&j)).into_response())
}

pub(super) async fn list_documents(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = corpus_id(&id)?;
    let docs = blocking(move || Ok(s.platform.rag()?.list_documents(&p, &id)?)).await?;
    let data: Vec<Value> = docs.iter().map(|d| json!({"id": d, "object": "document"})).collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

pub(super) async fn delete_document(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path((id, doc)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = corpus_id(&id)?;
    let shown = doc.clone();
    blocking(move || Ok(s.platform.rag()?.delete_documents(&p, &id, &[doc])?)).await?;
    Ok(axum::Json(json!({"id": shown, "object": "document", "deleted": true})).into_response())
}

pub(super) async fn search(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<soramai::SearchInput>,
) -> ApiResult<Response> {
    let hits = blocking(move || Session::for_request(s.platform, p).search(&id, b)).await?;
    Ok(axum::Json(json!({"object": "list", "data": hits})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroundedBody {
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
    #[serde(default)]
    require_citations: bool,
}

pub(super) async fn grounded_chat(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<GroundedBody>,
) -> ApiResult<Response> {
    let state = s.clone();
    let (c, prompt) = blocking(move || {
        let retrieval = soramai::Retrieval { top_k: b.top_k.unwrap_or(5), hybrid: b.hybrid, cite: b.require_citations };
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
