//! RAG ingestion is bounded and cancellable, probed from outside as the attack was: a document
//! over the tier's bytes and one that cuts into more chunks than the tier embeds per request are
//! refused at once, before anything is embedded; a second ingestion while the tenant's one runs
//! gets a 429; an ingestion whose client goes away stops and commits nothing, and the server goes
//! on answering; SIGTERM during an ingestion stops the server within the stated bound (the
//! ingestion at its next embedding forward pass; the server after at most the 30 s request grace
//! and 10 s for blocking work).

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

fn documents(server: &Server, key: &str) -> Vec<String> {
    let (s, v) = server.call("GET", "/v1/corpora/kb/documents", Some(key), None);
    assert_eq!(s, StatusCode::OK, "{v}");
    v["data"].as_array().expect("list").iter().map(|d| d["id"].as_str().expect("id").to_owned()).collect()
}

#[test]
fn ingestion_is_bounded_refused_when_busy_cancelled_when_abandoned_and_stopped_at_shutdown() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &model);
    let key = server.tenant("acme", "basic", 0);
    assert_eq!(server.call("POST", "/v1/corpora", Some(&key), Some(json!({"id": "kb"}))).0, StatusCode::CREATED);
    let path = "/v1/corpora/kb/documents";

    // Over the Basic tier's 1 MiB per request: refused before any work.
    let started = Instant::now();
    let (s, v) = server.call("POST", path, Some(&key), Some(doc("big", "word ".repeat(1_000_000))));
    assert_error((s, v), StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    // Under the bytes but over the 1,000 chunks: refused before anything is embedded.
    let (s, v) = server.call("POST", path, Some(&key), Some(doc("many", "zq ".repeat(300_000))));
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("chunks")), "{v}");
    assert_error((s, v), StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    assert!(started.elapsed() < Duration::from_secs(20), "refusals took {:?}", started.elapsed());
    assert!(documents(&server, &key).is_empty());

    // A long ingestion (about 750 chunks of 160 tokens) whose client gives up after a few seconds.
    let long = doc("long", "the cat sat on the mat ".repeat(16_000));
    let abandoned = {
        let (url, key, body) = (server.url.clone(), key.clone(), long.clone());
        std::thread::spawn(move || {
            let client = client_builder().timeout(Duration::from_secs(4)).build().expect("client");
            client.post(format!("{url}/v1/corpora/kb/documents")).bearer_auth(key).json(&body).send().is_err()
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    // While it runs, the tenant's second ingestion is refused: Basic runs one at a time.
    assert_error(
        server.call("POST", path, Some(&key), Some(doc("small", "a short note".into()))),
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
    );
    assert!(abandoned.join().expect("thread"), "the client gave up");
    // The abandoned ingestion stops at its next batch: the slot comes back, the server answers.
    let freed = Instant::now();
    loop {
        let (s, v) = server.call("POST", path, Some(&key), Some(doc("small", "a short note".into())));
        if s == StatusCode::OK {
            break;
        }
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("ingestion")), "{v}");
        assert!(freed.elapsed() < Duration::from_secs(30), "the abandoned ingestion did not stop");
        // Slowly: Basic allows 60 requests a minute.
        std::thread::sleep(Duration::from_secs(2));
    }
    eprintln!("the abandoned ingestion stopped within {:?} of its client's timeout", freed.elapsed());
    assert_eq!(server.call("GET", "/v1/models", Some(&key), None).0, StatusCode::OK);
    assert_eq!(documents(&server, &key), ["small"], "nothing of the abandoned one was committed");

    // SIGTERM in the middle of another long ingestion: the server stops within the bound.
    let running = {
        let (url, key, body) = (server.url.clone(), key.clone(), long);
        std::thread::spawn(move || {
            let client = client_builder().timeout(Duration::from_secs(120)).build().expect("client");
            client
                .post(format!("{url}/v1/corpora/kb/documents"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .map(|r| r.status())
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let stopping = Instant::now();
    server.stop();
    let took = stopping.elapsed();
    eprintln!("SIGTERM to exit during an ingestion: {took:?}");
    // The stated bound: the ingestion stops at its next forward pass, requests get the 30 s
    // grace, blocking work 10 s more (an ingestion left whole would take minutes).
    assert!(took < Duration::from_secs(40), "the server took {took:?} to stop");
    let answer = running.join().expect("thread");
    assert!(answer.as_ref().map_or(true, |s| *s == StatusCode::SERVICE_UNAVAILABLE), "{answer:?}");

    // After a restart, only what was committed is there.
    let server = Server::start(dir.path(), &model);
    assert_eq!(documents(&server, &key), ["small"]);
    server.stop();
}
