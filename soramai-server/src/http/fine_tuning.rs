//! Files (fine-tuning datasets) and fine-tuning jobs.

use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use soramai::{Job, JobState, ModelId, Platform, Session};

use super::*;

fn file_json(d: &soramai::DatasetInfo) -> Value {
    json!({"id": d.id.as_str(), "object": "file", "bytes": d.bytes, "created_at": d.created_at / 1000,
           "filename": d.name, "purpose": "fine-tune", "status": "processed", "status_details": null, "expires_at": null})
}

pub(super) async fn upload_file(
    State(s): State<AppState>,
    Caller(p): Caller,
    mut form: Multipart,
) -> ApiResult<Response> {
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
    let info = blocking(move || Session::for_request(s.platform, p).upload_dataset(&name, &bytes)).await?;
    Ok(axum::Json(file_json(&info)).into_response())
}

pub(super) async fn list_files(State(s): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let files = blocking(move || Session::for_request(s.platform, p).datasets()).await?;
    Ok(axum::Json(
        json!({"object": "list", "data": files.iter().map(file_json).collect::<Vec<_>>(), "has_more": false}),
    )
    .into_response())
}

pub(super) async fn get_file(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let info = blocking(move || Session::for_request(s.platform, p).dataset(&id)).await?;
    Ok(axum::Json(file_json(&info)).into_response())
}

pub(super) async fn delete_file(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let shown = Platform::dataset_id(&id)?.as_str().to_owned();
    blocking(move || Session::for_request(s.platform, p).delete_dataset(&id)).await?;
    Ok(axum::Json(json!({"id": shown, "object": "file", "deleted": true})).into_response())
}

pub(super) async fn file_content(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let bytes = blocking(move || Session::for_request(s.platform, p).download_dataset(&id)).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes.to_vec()).into_response())
}

#[derive(Deserialize)]
struct Supervised {
    #[serde(default)]
    hyperparameters: Option<Value>,
}

#[derive(Deserialize)]
struct Method {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    supervised: Option<Supervised>,
}

#[derive(Deserialize)]
pub(super) struct JobBody {
    model: String,
    training_file: String,
    #[serde(default)]
    hyperparameters: Option<Value>,
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

pub(super) fn ms_to_s(ms: i64) -> i64 {
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

pub(super) async fn create_job(
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
    // Metadata would be customer text kept beside the job's record in clear: refused, not dropped.
    if body.metadata.as_ref().is_some_and(|v| !v.is_null() && v.as_object().is_none_or(|m| !m.is_empty())) {
        return Err(ApiError::invalid("metadata is not supported on fine-tuning jobs.").param("metadata"));
    }
    let mut hyper = body.hyperparameters;
    if let Some(m) = body.method {
        if m.kind != "supervised" {
            return Err(ApiError::invalid("Only the supervised method is supported.").param("method"));
        }
        if let Some(h) = m.supervised.and_then(|s| s.hyperparameters) {
            hyper = Some(h);
        }
    }
    // OpenAI's three are numbers or "auto" (left out: "auto"), chosen by the SDK from the
    // dataset's size; the job reports what was chosen.
    let mut hyperparameters: soramai::HyperparametersRequest =
        serde_json::from_value(hyper.unwrap_or_else(|| json!({}))).map_err(|e| {
            ApiError::invalid(format!("hyperparameters: {}", soramai::json_error_message(&e))).param("hyperparameters")
        })?;
    if let Some(seed) = body.seed {
        hyperparameters.values.seed = seed;
    }
    Platform::dataset_id(&body.training_file).map_err(|e| ApiError::from(e).param("training_file"))?;
    ModelId::new(&body.model).map_err(|_| ApiError::invalid("Unknown model.").param("model"))?;
    let request = soramai::FineTuneRequest {
        training_file: body.training_file,
        model: body.model,
        suffix: body.suffix,
        hyperparameters,
    };
    let job = blocking(move || Session::for_request(s.platform, p).create_fine_tuning_job(request)).await?;
    Ok(axum::Json(job_json(&job)).into_response())
}

#[derive(Deserialize)]
pub(super) struct Page {
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

pub(super) async fn list_jobs(
    State(s): State<AppState>,
    Caller(p): Caller,
    Query(q): Query<Page>,
) -> ApiResult<Response> {
    let jobs = blocking(move || s.platform.list_fine_tuning_jobs(&p)).await?;
    let items = jobs.iter().map(|j| (j.id.as_str().to_owned(), job_json(j))).collect();
    Ok(axum::Json(page(items, &q)?).into_response())
}

pub(super) async fn get_job(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let job = blocking(move || s.platform.fine_tuning_job(&p, &id)).await?;
    Ok(axum::Json(job_json(&job)).into_response())
}

pub(super) async fn cancel_job(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
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

pub(super) async fn job_events(
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

pub(super) async fn job_checkpoints(
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
