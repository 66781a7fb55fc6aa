//! OpenAI's Responses API (`/v1/responses`): create (streamed as typed server-sent events),
//! retrieve and delete. Every behaviour is the SDK's (`soramai::responses`).

use std::convert::Infallible;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use soramai::responses::ResponseUsage;
use soramai::{ResponseEvent, ResponseRequest, ResponseStream};

use super::*;

/// A create body: the SDK's request, and whether to stream it.
#[derive(Deserialize)]
pub(super) struct ResponsesBody {
    #[serde(default)]
    stream: bool,
    #[serde(flatten)]
    request: Map<String, Value>,
}

impl Fields for ResponsesBody {
    const KNOWN: &'static [&'static str] = &[
        "stream",
        "model",
        "input",
        "instructions",
        "previous_response_id",
        "store",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "max_output_tokens",
        "temperature",
        "top_p",
        "metadata",
        "truncation",
    ];
}

fn note(s: &AppState, u: Option<&ResponseUsage>) {
    let (prompt, completion) = u.map_or((0, 0), |u| (u.input_tokens, u.output_tokens));
    note_tokens(s, prompt, completion);
}

pub(super) async fn create_response(
    State(s): State<AppState>,
    Caller(p): Caller,
    Checked(body): Checked<ResponsesBody>,
) -> ApiResult<Response> {
    let request: ResponseRequest = serde_json::from_value(Value::Object(body.request)).map_err(|e| body_error(&e))?;
    let platform = s.platform.clone();
    let stream = blocking(move || platform.create_response(&p, &request)).await?;
    if body.stream {
        return Ok(sse(s, stream));
    }
    let state = s.clone();
    let r = blocking(move || stream.collect()).await?;
    note(&state, r.usage.as_ref());
    Ok(axum::Json(r).into_response())
}

pub(super) async fn get_response(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let r = blocking(move || s.platform.response(&p, &id)).await?;
    Ok(axum::Json(r).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ItemsQuery {
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    order: Option<String>,
}

/// A stored response's input items: OpenAI's list (newest first unless `order=asc`), `limit`
/// 1..=100 (20), `after` an item id.
pub(super) async fn response_input_items(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    Query(q): Query<ItemsQuery>,
) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit is 1 to 100.").param("limit"));
    }
    let asc = match q.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(_) => return Err(ApiError::invalid("order is asc or desc.").param("order")),
    };
    let mut items = blocking(move || s.platform.response_input_items(&p, &id)).await?;
    if !asc {
        items.reverse();
    }
    let start = match &q.after {
        Some(a) => items.iter().position(|i| i["id"].as_str() == Some(a)).map_or(items.len(), |k| k + 1),
        None => 0,
    };
    let rest: Vec<Value> = items.into_iter().skip(start).collect();
    let has_more = rest.len() > limit;
    let data: Vec<Value> = rest.into_iter().take(limit).collect();
    let (first, last) = (data.first().map(|i| i["id"].clone()), data.last().map(|i| i["id"].clone()));
    Ok(axum::Json(json!({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": has_more}))
        .into_response())
}

pub(super) async fn delete_response(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let shown = id.clone();
    blocking(move || s.platform.delete_response(&p, &id)).await?;
    Ok(axum::Json(json!({"id": shown, "object": "response", "deleted": true})).into_response())
}

/// A response streamed as server-sent events, each named by its type; an error mid-stream is one
/// `error` event, and the stream ends after the last event (no `[DONE]`, as OpenAI's). A client
/// that goes away cancels the generation, and nothing is stored.
fn sse(s: AppState, stream: ResponseStream) -> Response {
    let state = Events { stream: Some(stream), app: s, seq: 0 };
    let events =
        futures_util::stream::unfold(state, |mut st| async { st.next().await.map(|ev| (Ok::<_, Infallible>(ev), st)) });
    Sse::new(events).into_response()
}

struct Events {
    stream: Option<ResponseStream>,
    app: AppState,
    /// The next event's sequence number (for an error event).
    seq: u64,
}

impl Events {
    fn event(&mut self, ev: &ResponseEvent) -> Event {
        self.seq = ev.sequence_number + 1;
        let data = serde_json::to_string(ev).unwrap_or_else(|_| "{}".into());
        Event::default().event(ev.name()).data(data)
    }

    async fn next(&mut self) -> Option<Event> {
        let stream = self.stream.as_mut()?;
        match stream.next_event().await {
            Some(Ok(ev)) => {
                if let soramai::responses::ResponseEventKind::Completed { response }
                | soramai::responses::ResponseEventKind::Incomplete { response } = &ev.kind
                {
                    note(&self.app, response.usage.as_ref());
                }
                Some(self.event(&ev))
            }
            Some(Err(e)) => {
                self.stream = None;
                let body = ApiError::from(e).body();
                let err = &body["error"];
                let data = json!({"type": "error", "code": err["code"], "message": err["message"],
                                  "param": err["param"], "sequence_number": self.seq});
                Some(Event::default().event("error").data(data.to_string()))
            }
            None => {
                self.stream = None;
                None
            }
        }
    }
}
