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
