//! What each tenant page shows, loaded through the signed-in person's [`Session`]: ids, names,
//! states and numbers; never a dataset's, document's or model's content.

use serde_json::{Value, json};
use soramai::{JobEvent, JobSpec};
use soramai::{PlatformError, Session};

use super::{View, utc};

/// Usage is summed over this many days.
const USAGE_DAYS: i64 = 30;

/// The page's data.
pub(super) fn load(view: &View, session: &Session) -> Result<Value, PlatformError> {
    let item = view.item.as_deref().unwrap_or_default();
    Ok(match view.name {
        "datasets" => json!({"datasets": session.datasets()?.iter().map(|d| json!({
            "id": d.id.as_str(), "name": d.name, "examples": d.examples, "bytes": d.bytes})).collect::<Vec<_>>()}),
        "jobs" => jobs(session)?,
        "job" => job(session, item)?,
        "models" => json!({
            "fine_tuned": session.fine_tuned_models()?.iter().map(|m| json!({"id": m.id.as_str(),
                "base": m.base.as_str(), "job": m.job.as_str(), "trained_tokens": m.trained_tokens,
                "created": utc(m.created_at)})).collect::<Vec<_>>(),
            "custom": session.custom_models()?.iter().map(|m| json!({"id": m.id.as_str(), "name": m.name,
                "bytes": m.bytes, "sha256": m.sha256, "architecture": m.architecture,
                "created": utc(m.created_at)})).collect::<Vec<_>>(),
        }),
        "corpora" => json!({"corpora": session.corpora()?}),
        "corpus" => json!({"corpus": item, "documents": session.documents(item)?,
            "ingestions": session.ingestions(item)?.iter().take(20).map(|j| {
                let (documents, chunks) = match &j.spec {
                    JobSpec::Ingest(i) => (i.documents, i.chunks),
                    _ => (0, 0),
                };
                json!({"id": j.id.as_str(), "state": j.state, "documents": documents, "chunks": chunks,
                    "percent": (j.progress * 100.0).round(), "created": utc(j.created_at)})
            }).collect::<Vec<_>>()}),
        "keys" => json!({"keys": session.api_keys()?.iter().filter(|k| k.grant.is_none()).map(|k| json!({
            "id": k.id.as_str(), "name": k.name,
            "scopes": k.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            "expires": k.expires_at.map(utc),
            "state": if k.revoked_at.is_some() { "revoked" } else { "active" }})).collect::<Vec<_>>()}),
        "members" => json!({"members": session.members()?.iter().map(|m| json!({
            "user": m.user.as_str(), "email": m.email, "role": m.role.as_str()})).collect::<Vec<_>>()}),
        "grants" => json!({"grants": session.access_grants()?.iter().map(|g| json!({
            "id": g.id.as_str(), "reason": g.reason, "status": g.status,
            "scopes": g.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            "minutes": g.ttl_seconds / 60, "requested": utc(g.requested_at), "expires": utc(g.expires_at),
            "ended_by": g.ended_by})).collect::<Vec<_>>()}),
        "sso" => json!({"sso": session.sso_config()?, "sso_allowed": session.tenant()?.tier.policy().sso}),
        "usage" => {
            let since = session.now() - USAGE_DAYS * 86_400_000;
            let usage = session.usage(since)?;
            let receipts = session.receipts()?;
            json!({"days": USAGE_DAYS, "usage": usage, "receipts": receipts.iter().rev().take(100).map(|r| json!({
                "receipt": r.receipt, "kind": r.kind, "amount": r.amount, "balance_after": r.balance_after,
                "reference": r.reference, "at": utc(r.at)})).collect::<Vec<_>>()})
        }
        _ => {
            let records = session.audit_log()?;
            let check = session.audit_verification()?;
            let broken = check.first_bad_record.map(|seq| {
                format!(
                    "record {seq}: {}; it and every record after it are marked",
                    check.reason.unwrap_or("it does not verify")
                )
            });
            json!({
                "records": records.iter().map(|r| json!({"seq": r.seq, "at": utc(r.at), "actor": r.actor,
                    "action": r.action, "target": r.target, "verified": r.verified})).collect::<Vec<_>>(),
                "verified": check.valid.then_some(check.records),
                "broken": broken,
            })
        }
    })
}

/// The jobs, and what the form to start one offers: the tenant's datasets and base models.
fn jobs(session: &Session) -> Result<Value, PlatformError> {
    let jobs: Vec<Value> = session
        .fine_tuning_jobs()?
        .iter()
        .map(|j| {
            let (model, dataset) = match &j.spec {
                JobSpec::FineTune(f) => (f.base_model.as_str().to_owned(), f.dataset.as_str().to_owned()),
                JobSpec::Checksum { dataset, .. } => (String::new(), dataset.as_str().to_owned()),
                JobSpec::Ingest(_) => (String::new(), String::new()),
            };
            json!({"id": j.id.as_str(), "state": j.state, "percent": (j.progress * 100.0).round(), "model": model,
                "dataset": dataset, "created": utc(j.created_at),
                "fine_tuned_model": j.result.as_ref().and_then(|r| r.get("fine_tuned_model")).cloned()})
        })
        .collect();
    let datasets: Vec<Value> =
        session.datasets()?.iter().map(|d| json!({"id": d.id.as_str(), "name": d.name})).collect();
    let bases: Vec<String> = session.models()?.into_iter().filter(|m| !m.id.starts_with("ft:")).map(|m| m.id).collect();
    Ok(json!({"jobs": jobs, "datasets": datasets, "bases": bases}))
}

/// One job: its state, progress, loss chart and events.
fn job(session: &Session, id: &str) -> Result<Value, PlatformError> {
    let j = session.fine_tuning_job(id)?;
    let events = session.fine_tuning_job_events(id)?;
    let (model, dataset, suffix) = match &j.spec {
        JobSpec::FineTune(f) => {
            (f.base_model.as_str().to_owned(), f.dataset.as_str().to_owned(), f.suffix.clone().unwrap_or_default())
        }
        JobSpec::Checksum { dataset, .. } => (String::new(), dataset.as_str().to_owned(), String::new()),
        JobSpec::Ingest(_) => (String::new(), String::new(), String::new()),
    };
    let losses: Vec<(u64, f64)> = events
        .iter()
        .filter(|e| e.kind == "progress")
        .filter_map(|e| Some((e.data.get("step")?.as_u64()?, e.data.get("loss")?.as_f64()?)))
        .filter(|(_, loss)| loss.is_finite())
        .collect();
    Ok(json!({
        "job": {"id": j.id.as_str(), "state": j.state, "percent": (j.progress * 100.0).round(),
            "done": j.state.is_terminal(), "model": model, "dataset": dataset, "suffix": suffix,
            "created": utc(j.created_at), "finished": j.finished_at.map(utc), "error": j.error,
            "fine_tuned_model": j.result.as_ref().and_then(|r| r.get("fine_tuned_model")).cloned(),
            "total_steps": events.iter().rev().find_map(|e| e.data.get("total_steps")?.as_u64())},
        "chart": chart(&losses),
        "events": events.iter().rev().take(200).map(event_row).collect::<Vec<_>>(),
    }))
}

fn event_row(e: &JobEvent) -> Value {
    let d = &e.data;
    let text = match e.kind.as_str() {
        "progress" => format!(
            "step {} of {}: loss {:.4}, {:.0} tokens/s",
            d["step"],
            d["total_steps"],
            d["loss"].as_f64().unwrap_or(f64::NAN),
            d["tokens_per_second"].as_f64().unwrap_or(0.0)
        ),
        "state" => format!("state: {}", d.get("state").and_then(Value::as_str).unwrap_or("?")),
        "checkpoint" => format!("encrypted checkpoint at step {}", d["step"]),
        _ => d.get("name").and_then(Value::as_str).unwrap_or(&e.kind).to_owned(),
    };
    json!({"seq": e.seq, "at": utc(e.at), "kind": e.kind, "text": text})
}

/// Width and height of the chart's drawing area, in SVG units.
const CHART_W: f64 = 600.0;
const CHART_H: f64 = 200.0;

/// The loss per step as an SVG polyline's points (step on x, loss on y, both scaled to the
/// drawing area), with the figures a reader needs without the picture.
fn chart(losses: &[(u64, f64)]) -> Value {
    let Some(&(_, first)) = losses.first() else { return json!({"steps": 0}) };
    let (lo, hi) = losses.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &(_, l)| (lo.min(l), hi.max(l)));
    let last_step = losses.iter().map(|&(s, _)| s).max().unwrap_or(1).max(2);
    let span = (hi - lo).max(1e-6);
    let points: Vec<String> = losses
        .iter()
        .map(|&(step, loss)| {
            let x = (step.saturating_sub(1)) as f64 / (last_step - 1) as f64 * CHART_W;
            let y = CHART_H - (loss - lo) / span * CHART_H;
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let last = losses.last().map_or(first, |&(_, l)| l);
    json!({"steps": losses.len(), "points": points.join(" "), "first": format!("{first:.4}"),
        "last": format!("{last:.4}"), "min": format!("{lo:.4}"), "max": format!("{hi:.4}"),
        "table": losses.iter().map(|&(s, l)| json!({"step": s, "loss": format!("{l:.4}")})).collect::<Vec<_>>()})
}
