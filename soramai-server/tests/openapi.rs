//! `openapi.json` describes exactly the server's routes: every route in `src/http/mod.rs` is in the
//! document with its methods and nothing else is, and every documented operation answers on a
//! running server (behind the API key where the document says so).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn document() -> Value {
    let text = std::fs::read_to_string(manifest().join("openapi.json")).expect("openapi.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} has no responses");
            assert!(op["summary"].is_string(), "{method} {path} has no summary");
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

/// The routes as the router declares them: `.route("/path", get(..).post(..))` lines, those of the
/// `/v1` router (everything before `.nest("/v1", v1)`) with the prefix.
fn routed() -> BTreeSet<(String, String)> {
    let src = std::fs::read_to_string(manifest().join("src/http/mod.rs")).expect("http/mod.rs");
    let nest = src.find(".nest(\"/v1\", v1)").expect("the /v1 router");
    let mut out = BTreeSet::new();
    let mut at = 0;
    while let Some(i) = src[at..].find(".route(\"") {
        let start = at + i + ".route(\"".len();
        let end = start + src[start..].find('"').expect("path end");
        let line_end = end + src[end..].find('\n').expect("line end");
        let path = &src[start..end];
        let full = if start < nest { format!("/v1{path}") } else { path.to_owned() };
        let handlers = &src[end..line_end];
        for m in ["get", "post", "delete", "put", "patch"] {
            if handlers.contains(&format!("{m}(")) {
                out.insert((m.to_uppercase(), full.clone()));
            }
        }
        at = line_end;
    }
    assert!(out.len() > 30, "the route scan found {} routes", out.len());
    out
}

#[test]
fn the_document_lists_exactly_the_routes() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented = documented(&doc);
    let routed = routed();
    let missing: Vec<_> = routed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(missing.is_empty(), "routes missing from openapi.json: {missing:?}");
    assert!(extra.is_empty(), "documented but not routed: {extra:?}");
    // Every $ref resolves.
    let text = doc.to_string();
    for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &part[..part.find('"').expect("ref end")];
        assert!(doc["components"]["schemas"].get(name).is_some(), "dangling $ref {name}");
    }
}

#[test]
fn every_documented_operation_answers() {
    let dir = tempfile::tempdir().expect("dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_soramai"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut url = String::new();
    let mut line = String::new();
    while url.is_empty() {
        line.clear();
        assert!(out.read_line(&mut line).expect("read") > 0, "the server exited");
        if let Some(u) = line.strip_prefix("listening on ") {
            url = u.trim().to_owned();
        }
    }
    // reqwest is built without a TLS provider of its own.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::blocking::Client::new();
    let doc = document();
    for (method, path) in documented(&doc) {
        let concrete = path.replace("{id}", "x").replace("{doc}", "y");
        let res = http.request(method.parse().expect("method"), format!("{url}{concrete}")).send().expect("send");
        let open = doc["paths"][&path][method.to_lowercase()]["security"].as_array().is_some_and(Vec::is_empty);
        if open {
            // No model is registered here, so /readyz says not ready; the others answer.
            let expected = if path == "/readyz" { 503 } else { 200 };
            assert_eq!(res.status().as_u16(), expected, "{method} {path}");
        } else {
            assert_eq!(res.status().as_u16(), 401, "{method} {path} is not behind the API key");
            let v: Value = res.json().expect("json");
            assert_eq!(v["error"]["code"], "missing_api_key", "{method} {path}");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}
