//! Scopes on every route, table-driven from `openapi.json`: each operation behind the API key
//! states what its key needs (`x-soramai-scopes`), and a key of every single scope, a tenant key
//! with all four and the operator's admin key are sent to every route. A key without what the
//! route needs gets 403 `permission_denied` before its body is read (so an empty body tells it
//! nothing); a key with it gets past the check (a 400 or 404 for the placeholder ids and bodies,
//! never a 401 or 403).

use reqwest::StatusCode;
use serde_json::{Value, json};

mod common;
use common::*;

#[path = "../../soramai-kernels/tests/common/reference_model.rs"]
mod reference_model;
use reference_model::reference_model;

const SCOPES: [&str; 4] = ["inference", "train", "rag", "admin"];

fn document() -> Value {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json"))
        .expect("openapi.json");
    serde_json::from_str(&text).expect("json")
}

/// Whether a tenant key holding `held` satisfies `needs` as documented.
fn satisfies(needs: &str, held: &[&str]) -> bool {
    if needs == "operator" {
        return false;
    }
    if needs.contains('+') {
        return needs.split('+').all(|s| held.contains(&s));
    }
    needs.split('|').any(|s| held.contains(&s))
}

#[test]
fn every_route_refuses_a_key_without_its_documented_scope_and_admits_one_with_it() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &model);
    let owner = server.tenant("acme", "org", 1_000_000);
    let keys: Vec<(Vec<&str>, String)> = SCOPES
        .iter()
        .map(|s| (vec![*s], server.key(&owner, "acme", &[s], None)))
        .chain([(SCOPES.to_vec(), owner.clone())])
        .collect();
    let doc = document();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            if op["security"].as_array().is_some_and(Vec::is_empty) {
                continue;
            }
            let needs = op["x-soramai-scopes"].as_str().unwrap_or_else(|| panic!("{method} {path} states no scopes"));
            // The tenant's own id where a route names a tenant (a tenant's admin closes its own
            // account), with a body that is refused after the scope check (nothing closes).
            let concrete = path
                .replace("/v1/tenants/{id}", "/v1/tenants/acme")
                .replace("{id}", "x0")
                .replace("{doc}", "y0")
                .replace("{job}", "job-0");
            let body = match (method.as_str(), path.as_str()) {
                ("post", "/v1/tenants/{id}/close") => Some(json!({"window_days": 0})),
                ("post", _) => Some(json!({})),
                _ => None,
            };
            let call = |key: &str| server.call(&method.to_uppercase(), &concrete, Some(key), body.clone());
            for (held, key) in &keys {
                let (status, v) = call(key);
                if satisfies(needs, held) {
                    assert!(
                        ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&status)
                            && !status.is_server_error(),
                        "{method} {path} (needs {needs}) refused a key with {held:?}: {status} {v}"
                    );
                } else {
                    assert_error((status, v), StatusCode::FORBIDDEN, "permission_denied");
                }
                checked += 1;
            }
            // The operator's admin key holds every scope and the operator role.
            let (status, v) = call(&server.admin);
            assert!(
                ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&status) && !status.is_server_error(),
                "{method} {path} refused the operator: {status} {v}"
            );
        }
    }
    assert!(checked >= 5 * 50, "{checked} calls");
    // The members list in particular (a probe found it open to every key).
    for scope in ["inference", "train", "rag"] {
        let key = server.key(&owner, "acme", &[scope], None);
        assert_error(server.call("GET", "/v1/members", Some(&key), None), StatusCode::FORBIDDEN, "permission_denied");
    }
    server.stop();
}

#[test]
fn a_refused_call_counts_against_the_rate_limit_and_is_logged_as_json_with_its_tenant() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let args = ["--model".as_ref(), model.as_os_str()];
    let server = Server::launch_env(dir.path(), &args, &[("SORAMAI_LOG_FORMAT", "json")]);
    let owner = server.tenant("acme", "basic", 0);
    let inference = server.key(&owner, "acme", &["inference"], None);
    let res = server
        .http
        .get(format!("{}/v1/members", server.url))
        .bearer_auth(&inference)
        .header("x-request-id", "probe-scope-1")
        .send()
        .expect("send");
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // Basic allows 60 calls a minute, refused ones included: hammering a route the key may not
    // call runs into the limit like any other calls.
    let limited = (0..90).any(|_| {
        let (s, v) = server.call("GET", "/v1/members", Some(&inference), None);
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert_error((s, v), StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded");
            return true;
        }
        assert_error((s, v), StatusCode::FORBIDDEN, "permission_denied");
        false
    });
    assert!(limited, "90 refused calls in a few seconds never met the Basic tier's 60 a minute");
    let admin = server.admin.clone();
    let logs = server.stop();

    // Every log line is one JSON object; the refused call's names its tenant, route, status
    // and error code, and no key appears anywhere.
    let lines: Vec<Value> = logs
        .lines()
        .filter(|l| l.contains("soramai::"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let line = lines.iter().find(|l| l["request_id"] == "probe-scope-1").expect("the refused call's line");
    assert_eq!(line["target"], "soramai::http", "{line}");
    assert_eq!(line["route"], "/v1/members", "{line}");
    assert_eq!(line["status"], 403, "{line}");
    assert_eq!(line["tenant"], "acme", "{line}");
    assert_eq!(line["error"], "permission_denied", "{line}");
    assert!(line["latency_ms"].as_f64().is_some(), "{line}");
    assert!(lines.iter().any(|l| l["status"] == 429 && l["tenant"] == "acme"), "the limited calls are logged");
    for secret in [inference.as_str(), owner.as_str(), admin.as_str()] {
        assert!(!logs.contains(secret), "a key is in the server's log");
    }
}
