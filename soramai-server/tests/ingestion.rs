//! RAG ingestion is bounded, cancellable work, probed from outside as the attack was: a document
//! over the tier's bytes and one that cuts into more chunks than the tier embeds per request are
//! refused at once, before anything is queued; a 5 MB document is accepted at once as a job
//! (202) whose progress shows while the server goes on answering, and which stops when
//! cancelled, committing nothing; a second ingestion while the tenant's one is queued or running
//! gets a 429; SIGTERM during an ingestion stops the server within the stated bound (the job's
//! child is killed within 50 ms and the job queued again), and after the restart the ingestion
//! runs again.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

mod common;
use common::*;

#[path = "../../soramai-kernels/tests/common/reference_model.rs"]
mod reference_model;
use reference_model::reference_model;

fn doc(id: &str, text: String) -> Value {
    json!({"documents": [{"id": id, "title": "t", "text": text}]})
}

fn documents(server: &Server, key: &str, corpus: &str) -> Vec<String> {
    let (s, v) = server.call("GET", &format!("/v1/corpora/{corpus}/documents"), Some(key), None);
    assert_eq!(s, StatusCode::OK, "{v}");
    v["data"].as_array().expect("list").iter().map(|d| d["id"].as_str().expect("id").to_owned()).collect()
}

fn ingestion(server: &Server, key: &str, corpus: &str, id: &str) -> Value {
    let (s, v) = server.call("GET", &format!("/v1/corpora/{corpus}/ingestions/{id}"), Some(key), None);
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

/// Waits until the ingestion has embedded some of its chunks.
fn wait_progress(server: &Server, key: &str, corpus: &str, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let v = ingestion(server, key, corpus, id);
        if v["status"] == "running" && v["progress"].as_f64().is_some_and(|p| p > 0.0) {
            return v;
        }
        assert!(["queued", "running"].contains(&v["status"].as_str().unwrap_or_default()), "{v}");
        assert!(started.elapsed() < Duration::from_secs(120), "no progress: {v}");
        // Slowly enough for the Basic tier's 60 requests a minute.
        std::thread::sleep(Duration::from_millis(1100));
    }
}

#[test]
fn ingestion_is_a_bounded_cancellable_job_that_survives_a_restart() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &model);
    let basic = server.tenant("acme", "basic", 0);
    let org = server.tenant("bigco", "org", 0);
    for key in [&basic, &org] {
        assert_eq!(server.call("POST", "/v1/corpora", Some(key), Some(json!({"id": "kb"}))).0, StatusCode::CREATED);
    }
    let path = "/v1/corpora/kb/documents";

    // Over the Basic tier's 1 MiB per request: refused before any work.
    let started = Instant::now();
    let (s, v) = server.call("POST", path, Some(&basic), Some(doc("big", "word ".repeat(1_000_000))));
    assert_error((s, v), StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    // Under the bytes but over the 1,000 chunks: refused before anything is queued.
    let (s, v) = server.call("POST", path, Some(&basic), Some(doc("many", "zq ".repeat(300_000))));
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("chunks")), "{v}");
    assert_error((s, v), StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    assert!(started.elapsed() < Duration::from_secs(20), "refusals took {:?}", started.elapsed());
    let (_, list) = server.call("GET", "/v1/corpora/kb/ingestions", Some(&basic), None);
    assert_eq!(list["data"], json!([]), "nothing was queued");

    // A 5 MB document on Org (16 MiB, 20,000 chunks): accepted at once as a job.
    let five_mb = "the cat sat on the mat ".repeat(220_000)[..5_000_000].to_owned();
    let started = Instant::now();
    let (s, job) = server.call("POST", path, Some(&org), Some(doc("huge", five_mb)));
    let answered = started.elapsed();
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    assert!(answered < Duration::from_secs(30), "answering took {answered:?}");
    assert!(job["chunks"].as_u64().is_some_and(|n| n > 5_000), "{job}");
    let id = job["id"].as_str().expect("id").to_owned();
    let running = wait_progress(&server, &org, "kb", &id);
    eprintln!("5 MB: 202 in {answered:?}, {} chunks; running at {}", job["chunks"], running["progress"]);
    // The server answers while it runs.
    let asked = Instant::now();
    assert_eq!(server.call("GET", "/v1/models", Some(&org), None).0, StatusCode::OK);
    assert!(asked.elapsed() < Duration::from_secs(5), "a request took {:?} during the ingestion", asked.elapsed());
    // Cancelled: it stops within a heartbeat (10 s) and commits nothing.
    let (s, v) = server.call("POST", &format!("/v1/corpora/kb/ingestions/{id}/cancel"), Some(&org), None);
    assert_eq!(s, StatusCode::OK, "{v}");
    let cancelling = Instant::now();
    let ended = wait_ingestion(&server, &org, "kb", &id);
    assert_eq!(ended["status"], "cancelled", "{ended}");
    assert!(cancelling.elapsed() < Duration::from_secs(15), "cancelling took {:?}", cancelling.elapsed());
    assert!(documents(&server, &org, "kb").is_empty(), "nothing of the cancelled one was committed");

    // Basic runs one ingestion at a time: a second is refused while the first is queued or running.
    let long = doc("long", "the cat sat on the mat ".repeat(16_000));
    let (s, first) = server.call("POST", path, Some(&basic), Some(long.clone()));
    assert_eq!(s, StatusCode::ACCEPTED, "{first}");
    let first = first["id"].as_str().expect("id").to_owned();
    let (s, v) = server.call("POST", path, Some(&basic), Some(doc("small", "a short note".into())));
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("ingestions")), "{v}");
    assert_error((s, v), StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded");
    // Another tenant can neither see nor cancel it.
    let other = format!("/v1/corpora/kb/ingestions/{first}");
    assert_error(server.call("GET", &other, Some(&org), None), StatusCode::NOT_FOUND, "ingestion_not_found");
    let cancel = format!("{other}/cancel");
    assert_error(server.call("POST", &cancel, Some(&org), None), StatusCode::NOT_FOUND, "ingestion_not_found");
    wait_progress(&server, &basic, "kb", &first);

    // SIGTERM in the middle of it: the server stops within the bound, the job goes back to its
    // queue, nothing half-done is committed.
    let stopping = Instant::now();
    server.stop();
    let took = stopping.elapsed();
    eprintln!("SIGTERM to exit during an ingestion: {took:?}");
    assert!(took < Duration::from_secs(15), "the server took {took:?} to stop");

    // After the restart it runs again (not failed, not lost) and can be cancelled.
    let server = Server::start(dir.path(), &model);
    assert!(documents(&server, &basic, "kb").is_empty());
    let v = wait_progress(&server, &basic, "kb", &first);
    assert!(["queued", "running"].contains(&v["status"].as_str().unwrap_or_default()), "{v}");
    let (s, v) = server.call("POST", &format!("/v1/corpora/kb/ingestions/{first}/cancel"), Some(&basic), None);
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(wait_ingestion(&server, &basic, "kb", &first)["status"], "cancelled");
    // The slot is free again: a small ingestion runs to the end and is searchable.
    let done = ingest(&server, &basic, "kb", doc("small", "the quarterly report is due on friday".into()));
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(documents(&server, &basic, "kb"), ["small"]);
    let (s, v) = server.call("POST", "/v1/corpora/kb/search", Some(&basic), Some(json!({"query": "quarterly report"})));
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"][0]["doc_id"], "small", "{v}");
    server.stop();
}
