//! `soramai serve` over HTTP: hostile requests (no key, revoked, expired, another tenant's, a key
//! without the scope, oversized and malformed bodies, path tricks in ids, tier limits) each get
//! the right status and an OpenAI-shaped error and change nothing; a canary prompt reaches no log,
//! metric, database row or file; the operator reads no tenant's data without a break-glass grant;
//! slow, idle and surplus connections are cut while normal requests go on.

use std::io::Read;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

mod common;
use common::*;

#[path = "../../soramai-kernels/tests/common/files.rs"]
mod files;
#[path = "../../soramai-kernels/tests/common/reference_model.rs"]
mod reference_model;
use files::files_under;
use reference_model::reference_model;

const CANARY: &str = "zq9-canary-Sora-7713";
const MODEL: &str = "smollm2-135m-instruct";

#[test]
fn openai_parameters_are_honoured_or_refused_by_name() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &model);
    let acme = server.tenant("acme", "pro", 1_000_000);
    let g = soramai::kernels::gguf::Gguf::open(&model).expect("gguf");
    let tk = soramai::kernels::Tokenizer::from_gguf(&g).expect("tokenizer");
    let zebra = tk.encode("zebra", false, false)[0];
    let ask = |extra: Value| {
        let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Name a fruit."}],
            "max_tokens": 1, "temperature": 0});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        server.call("POST", "/v1/chat/completions", Some(&acme), Some(body))
    };

    // A bias of 100 makes a token the greedy choice; -100 keeps the unbiased choice out.
    let (s, plain) = ask(json!({}));
    assert_eq!(s, StatusCode::OK, "{plain}");
    let plain = plain["choices"][0]["message"]["content"].as_str().expect("content").to_owned();
    let (s, v) = ask(json!({"logit_bias": {zebra.to_string(): 100}}));
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], tk.decode(&[zebra], false), "{v}");
    let first = tk.encode(&plain, false, false)[0];
    let (s, v) = ask(json!({"logit_bias": {first.to_string(): -100}}));
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_ne!(v["choices"][0]["message"]["content"], plain.as_str(), "{v}");
    // Penalties and max_completion_tokens are taken (the sampler's own tests check their effect).
    let (s, v) = ask(json!({"presence_penalty": 1.5, "frequency_penalty": -0.5, "max_completion_tokens": 1}));
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 1, "{v}");
    // n choices, each with its own log-probabilities; usage counts the prompt once and every
    // choice's tokens.
    let (s, v) = ask(json!({"n": 3, "max_tokens": 4, "temperature": 1.0, "seed": 9, "logprobs": true}));
    assert_eq!(s, StatusCode::OK, "{v}");
    let choices = v["choices"].as_array().expect("choices");
    assert_eq!(choices.iter().map(|c| c["index"].as_u64()).collect::<Vec<_>>(), [Some(0), Some(1), Some(2)]);
    let tokens: usize = choices.iter().map(|c| c["logprobs"]["content"].as_array().map_or(0, Vec::len)).sum();
    assert_eq!(v["usage"]["completion_tokens"], tokens as u64, "{v}");
    let (_, one) = ask(json!({}));
    assert_eq!(v["usage"]["prompt_tokens"], one["usage"]["prompt_tokens"], "{v}");
    // Structured outputs: the reply is the JSON the schema describes, sampled or not, and a
    // regular expression holds text completions to it.
    let schema = json!({"type": "object", "properties": {"fruit": {"type": "string", "enum": ["apple", "pear"]},
        "count": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["fruit", "count"],
        "additionalProperties": false});
    for temperature in [0.0, 1.0] {
        let (s, v) = ask(json!({"max_tokens": 40, "temperature": temperature, "seed": 5, "n": 2,
            "response_format": {"type": "json_schema", "json_schema": {"name": "pick", "strict": true, "schema": schema}}}));
        assert_eq!(s, StatusCode::OK, "{v}");
        for c in v["choices"].as_array().expect("choices") {
            let text = c["message"]["content"].as_str().expect("content");
            let out: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?} does not parse: {e}"));
            assert!(["apple", "pear"].contains(&out["fruit"].as_str().unwrap_or_default()), "{out}");
            assert!((1..=9).contains(&out["count"].as_i64().unwrap_or_default()), "{out}");
            assert_eq!(out.as_object().map(|o| o.len()), Some(2), "{out}");
            assert_eq!(c["finish_reason"], "stop", "{v}");
        }
    }
    let (s, v) = server.call(
        "POST",
        "/v1/completions",
        Some(&acme),
        Some(json!({"model": MODEL, "prompt": "The year is", "max_tokens": 10, "temperature": 1.0,
            "response_format": {"type": "regex", "pattern": " (19|20)[0-9]{2}"}})),
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    let year = v["choices"][0]["text"].as_str().expect("text");
    assert!(year.len() == 5 && (year.starts_with(" 19") || year.starts_with(" 20")), "{year:?}");
    let (s, v) = server.call(
        "POST",
        "/v1/completions",
        Some(&acme),
        Some(json!({"model": MODEL, "prompt": "The", "max_tokens": 1, "temperature": 0,
            "logit_bias": {zebra.to_string(): 100}})),
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["choices"][0]["text"], tk.decode(&[zebra], false), "{v}");

    // What the server does not implement is refused by name, and nothing is charged.
    let (_, before) = server.call("GET", "/v1/usage", Some(&acme), None);
    for (extra, code, param) in [
        (json!({"tool_choice": "required"}), "invalid_request", Some("tool_choice")),
        (json!({"modalities": ["audio"]}), "unsupported_parameter", Some("modalities")),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": true}}}}),
            "invalid_request",
            Some("response_format"),
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "no spaces", "schema": {}}}}),
            "invalid_request",
            Some("response_format"),
        ),
        (
            json!({"response_format": {"type": "regex", "pattern": "(unclosed"}}),
            "invalid_request",
            Some("response_format"),
        ),
        (json!({"response_format": {"type": "xml"}}), "invalid_request", None),
        (json!({"response_format": {"type": "json_object", "schema": {}}}), "invalid_request", None),
        (json!({"user": "u-1"}), "unsupported_parameter", Some("user")),
        (json!({"bogus_option": 1}), "unknown_parameter", None),
        (json!({"stream": true, "stream_options": {"include_obfuscation": true}}), "invalid_request", None),
        (json!({"presence_penalty": 2.5}), "invalid_request", None),
        (json!({"frequency_penalty": -3}), "invalid_request", None),
        (json!({"logit_bias": {"zebra": 5}}), "invalid_request", Some("logit_bias")),
        (json!({"logit_bias": {"99999999": 5}}), "invalid_request", None),
        (json!({"logit_bias": {"5": 101}}), "invalid_request", None),
        (json!({"max_tokens": 1, "max_completion_tokens": 2}), "invalid_request", Some("max_completion_tokens")),
        (json!({"n": 17}), "invalid_request", Some("n")),
        (
            json!({"messages": [{"role": "assistant", "content": "", "function_call": {"name": "f", "arguments": "{}"}}, {"role": "user", "content": "x"}]}),
            "unsupported_parameter",
            Some("messages"),
        ),
        (
            json!({"messages": [{"role": "user", "content": "x", "name": "bob"}]}),
            "unsupported_parameter",
            Some("messages"),
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}]}),
            "unsupported_parameter",
            Some("messages"),
        ),
    ] {
        let (s, v) = ask(extra.clone());
        assert_eq!(s, StatusCode::BAD_REQUEST, "{extra}: {v}");
        assert_eq!(v["error"]["code"], code, "{extra}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{extra}: {v}");
        if let Some(param) = param {
            assert_eq!(v["error"]["param"], param, "{extra}: {v}");
            if code == "unsupported_parameter" && param != "messages" {
                assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains(param)), "{v}");
            }
            if extra.to_string().contains("uniqueItems") {
                assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("uniqueItems")), "{v}");
            }
        }
    }
    let (s, v) = server.call(
        "POST",
        "/v1/completions",
        Some(&acme),
        Some(json!({"model": MODEL, "prompt": "x", "max_completion_tokens": 1})),
    );
    assert_eq!((s, v["error"]["code"].clone()), (StatusCode::BAD_REQUEST, json!("unknown_parameter")), "{v}");
    let tool = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let (s, v) = server.call(
        "POST",
        "/v1/completions",
        Some(&acme),
        Some(json!({"model": MODEL, "prompt": "x", "tools": tool})),
    );
    assert_eq!((s, v["error"]["param"].clone()), (StatusCode::BAD_REQUEST, json!("tools")), "{v}");
    let described = json!({"type": "json_schema", "json_schema": {"name": "n", "description": "a count",
        "schema": {"type": "integer"}}});
    let (s, v) = server.call(
        "POST",
        "/v1/completions",
        Some(&acme),
        Some(json!({"model": MODEL, "prompt": "x", "response_format": described})),
    );
    assert_eq!((s, v["error"]["param"].clone()), (StatusCode::BAD_REQUEST, json!("response_format")), "{v}");
    let (s, v) =
        server.call("POST", "/v1/embeddings", Some(&acme), Some(json!({"model": MODEL, "input": "x", "user": "u"})));
    assert_eq!((s, v["error"]["param"].clone()), (StatusCode::BAD_REQUEST, json!("user")), "{v}");
    let (_, after) = server.call("GET", "/v1/usage", Some(&acme), None);
    assert_eq!(after["credits"], before["credits"], "a refused request is not charged");
    // A schema's description is shown to the model in the chat's system prompt.
    let shaped = |description: Option<&str>| {
        let mut format = json!({"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "integer"}}});
        if let Some(d) = description {
            format["json_schema"]["description"] = json!(d);
        }
        // A system message of its own in both, so the template's default one is out of play.
        let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count."}]);
        let body = json!({"model": MODEL, "messages": messages, "max_tokens": 2, "response_format": format});
        let (s, v) = server.call("POST", "/v1/chat/completions", Some(&acme), Some(body));
        assert_eq!(s, StatusCode::OK, "{v}");
        v["usage"]["prompt_tokens"].as_u64().expect("prompt tokens")
    };
    assert!(shaped(Some("how many clouds are in the sky")) > shaped(None) + 5);
}

#[test]
fn hostile_requests_get_openai_errors_and_change_nothing() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &model);
    let acme = server.tenant("acme", "basic", 1_000_000);
    let globex = server.tenant("globex", "basic", 1_000_000);
    let (s, file) = upload(&server, &acme, dataset());
    assert_eq!(s, StatusCode::OK, "{file}");
    let file_id = file["id"].as_str().expect("id").to_owned();
    let (s, balance_before) = server.call("GET", "/v1/usage", Some(&acme), None);
    assert_eq!(s, StatusCode::OK);

    // No key, a garbage key, a well-formed but unknown key.
    assert_error(server.call("GET", "/v1/models", None, None), StatusCode::UNAUTHORIZED, "missing_api_key");
    assert_error(server.call("GET", "/v1/models", Some("nonsense"), None), StatusCode::UNAUTHORIZED, "invalid_api_key");
    let forged = format!("sk-{}-{}", "0".repeat(16), "0".repeat(64));
    assert_error(server.call("GET", "/v1/models", Some(&forged), None), StatusCode::UNAUTHORIZED, "invalid_api_key");

    // A revoked key stops at once; an expired one too.
    let revoked = server.key(&acme, "acme", &["inference"], None);
    let id = revoked.split('-').nth(1).expect("id");
    assert_eq!(server.call("GET", "/v1/models", Some(&revoked), None).0, StatusCode::OK);
    assert_eq!(server.call("DELETE", &format!("/v1/api_keys/{id}"), Some(&acme), None).0, StatusCode::OK);
    assert_error(server.call("GET", "/v1/models", Some(&revoked), None), StatusCode::UNAUTHORIZED, "invalid_api_key");
    let expiring = server.key(&acme, "acme", &["inference"], Some(1));
    std::thread::sleep(Duration::from_millis(1100));
    assert_error(server.call("GET", "/v1/models", Some(&expiring), None), StatusCode::UNAUTHORIZED, "invalid_api_key");

    // Another tenant's key sees none of acme's files; a key without the scope is refused.
    assert_error(
        server.call("GET", &format!("/v1/files/{file_id}"), Some(&globex), None),
        StatusCode::NOT_FOUND,
        "dataset_not_found",
    );
    assert_error(
        server.call("DELETE", &format!("/v1/files/{file_id}"), Some(&globex), None),
        StatusCode::NOT_FOUND,
        "dataset_not_found",
    );
    let (_, files) = server.call("GET", "/v1/files", Some(&globex), None);
    assert_eq!(files["data"], json!([]));
    let rag_only = server.key(&acme, "acme", &["rag"], None);
    assert_error(
        server.call("POST", "/v1/chat/completions", Some(&rag_only), Some(chat(MODEL, "hi"))),
        StatusCode::FORBIDDEN,
        "permission_denied",
    );
    // The members list (emails, roles, user ids) needs the admin scope: a key of any other
    // single scope is refused.
    for scope in ["inference", "train", "rag"] {
        let key = server.key(&acme, "acme", &[scope], None);
        assert_error(server.call("GET", "/v1/members", Some(&key), None), StatusCode::FORBIDDEN, "permission_denied");
    }
    let admin_only = server.key(&acme, "acme", &["admin"], None);
    let (s, v) = server.call("GET", "/v1/members", Some(&admin_only), None);
    assert_eq!(s, StatusCode::OK, "{v}");
    // A tenant admin is not a platform admin, and cannot mint keys in another tenant.
    assert_error(
        server.call("POST", "/v1/tenants", Some(&acme), Some(json!({"id": "evil", "tier": "org"}))),
        StatusCode::FORBIDDEN,
        "permission_denied",
    );
    assert_error(
        server.call(
            "POST",
            "/v1/api_keys",
            Some(&acme),
            Some(json!({"name": "x", "scopes": ["admin"], "tenant": "globex"})),
        ),
        StatusCode::FORBIDDEN,
        "permission_denied",
    );
    assert_error(
        server.call("POST", "/v1/tenants/acme/credits", Some(&acme), Some(json!({"amount": 5}))),
        StatusCode::FORBIDDEN,
        "permission_denied",
    );

    // Oversized and malformed bodies, wrong types, unknown fields where they are refused.
    let huge = vec![b'a'; 33 << 20];
    let res = server
        .http
        .post(format!("{}/v1/chat/completions", server.url))
        .bearer_auth(&acme)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .expect("send");
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    for body in ["{", "[]", "{\"model\": 5}", "null", "{\"model\":\"m\",\"messages\":\"x\"}"] {
        let res = server
            .http
            .post(format!("{}/v1/chat/completions", server.url))
            .bearer_auth(&acme)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .expect("send");
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{body}");
        let v: Value = res.json().expect("json");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{body}: {v}");
    }
    for (body, code) in [
        (json!({"model": MODEL, "messages": []}), "invalid_request"),
        (json!({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}), "invalid_request"),
        (json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 9}), "invalid_request"),
        (json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 17}), "invalid_request"),
        (json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 0}), "invalid_request"),
        (json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stop": ["", "a"]}), "invalid_request"),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 50, "logprobs": true}),
            "invalid_request",
        ),
        (
            json!({"model": "ft:smollm2-135m-instruct:globex:x:00", "messages": [{"role": "user", "content": "x"}]}),
            "model_not_found",
        ),
        (json!({"model": "../../etc/passwd", "messages": [{"role": "user", "content": "x"}]}), "model_not_found"),
    ] {
        let got = server.call("POST", "/v1/chat/completions", Some(&acme), Some(body.clone()));
        let status = if code == "model_not_found" { StatusCode::NOT_FOUND } else { StatusCode::BAD_REQUEST };
        assert_error(got, status, code);
    }
    let long = "word ".repeat(9000);
    assert_error(
        server.call("POST", "/v1/chat/completions", Some(&acme), Some(chat(MODEL, &long))),
        StatusCode::BAD_REQUEST,
        "context_length_exceeded",
    );
    // A malformed dataset is refused with its line, and stores nothing.
    let (s, v) = upload(&server, &acme, b"{\"messages\": 3}\nnot json\n".to_vec());
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = server.call(
        "POST",
        "/v1/fine_tuning/jobs",
        Some(&acme),
        Some(json!({"model": MODEL, "training_file": file_id, "hyperparameters": {"n_epochs": 0}})),
    );
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = server.call(
        "POST",
        "/v1/fine_tuning/jobs",
        Some(&acme),
        Some(json!({"model": MODEL, "training_file": file_id, "hyperparameters": {"bogus": 1}})),
    );
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = server.call(
        "POST",
        "/v1/fine_tuning/jobs",
        Some(&acme),
        Some(json!({"model": MODEL, "training_file": file_id, "metadata": {"project": "x"}})),
    );
    assert_eq!((s, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("metadata")), "{v}");

    // Path tricks in ids are unknown ids, never files.
    for path in [
        "/v1/files/..%2F..%2Fdata%2Fmeta.db",
        "/v1/files/%2e%2e/content",
        "/v1/fine_tuning/jobs/..%2Fx",
        "/v1/fine_tuning/jobs/%00/events",
        "/v1/models/..%2F..%2Froot.key",
    ] {
        let (s, v) = server.call("GET", path, Some(&acme), None);
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {v}");
        // (A client may normalise `..` away, leaving an unknown URL: also a 404.)
        let code = v["error"]["code"].as_str().unwrap_or_default();
        assert!(code.ends_with("not_found") || code == "unknown_url", "{path}: {v}");
    }
    assert_error(server.call("GET", "/v1/nothing-here", Some(&acme), None), StatusCode::NOT_FOUND, "unknown_url");

    // Nothing changed: the same files, the same balance (refused requests charge nothing).
    let (_, files) = server.call("GET", "/v1/files", Some(&acme), None);
    assert_eq!(files["data"].as_array().map(Vec::len), Some(1));
    let (_, jobs) = server.call("GET", "/v1/fine_tuning/jobs", Some(&acme), None);
    assert_eq!(jobs["data"], json!([]));
    let (_, balance_after) = server.call("GET", "/v1/usage", Some(&acme), None);
    assert_eq!(balance_after["credits"], balance_before["credits"]);

    // Tier limits: a free tenant gets 20 requests a minute, then 429 rate_limit_exceeded.
    let free = server.tenant("freebie", "free", 0);
    for _ in 0..20 {
        assert_eq!(server.call("GET", "/v1/models", Some(&free), None).0, StatusCode::OK);
    }
    assert_error(
        server.call("GET", "/v1/models", Some(&free), None),
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
    );
    // Concurrency: a basic tenant runs 2 requests at once; open streams hold their places until
    // they end, then the places come back.
    let busy = server.tenant("busy", "basic", 1_000_000);
    let mut long = chat(MODEL, "Tell me a long story about the sea.");
    long["max_tokens"] = json!(400);
    long["stream"] = json!(true);
    let open: Vec<_> = (0..2)
        .map(|_| {
            let res =
                server.http.post(format!("{}/v1/chat/completions", server.url)).bearer_auth(&busy).json(&long).send();
            let mut res = res.expect("send");
            assert_eq!(res.status(), StatusCode::OK);
            let mut first = [0u8; 16];
            res.read_exact(&mut first).expect("the stream started");
            res
        })
        .collect();
    assert_error(
        server.call("GET", "/v1/models", Some(&busy), None),
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
    );
    drop(open);
    let mut freed = false;
    for _ in 0..50 {
        if server.call("GET", "/v1/models", Some(&busy), None).0 == StatusCode::OK {
            freed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(freed, "closed streams give their places back");
    // No credits: refused before anything runs.
    let broke = server.tenant("broke", "basic", 0);
    assert_error(
        server.call("POST", "/v1/chat/completions", Some(&broke), Some(chat(MODEL, "hi"))),
        StatusCode::TOO_MANY_REQUESTS,
        "insufficient_quota",
    );
    server.stop();
}

#[test]
fn a_canary_prompt_reaches_no_log_metric_row_or_file() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &model);
    let key = server.tenant("acme", "basic", 1_000_000);
    let prompt = format!("Repeat after me: {CANARY} {CANARY}");
    let (s, v) = server.call("POST", "/v1/chat/completions", Some(&key), Some(chat(MODEL, &prompt)));
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut streamed = chat(MODEL, &prompt);
    streamed["stream"] = json!(true);
    let res = server.http.post(format!("{}/v1/chat/completions", server.url)).bearer_auth(&key).json(&streamed).send();
    let body = res.expect("send").text().expect("stream");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    let (_, v) = server.call("POST", "/v1/embeddings", Some(&key), Some(json!({"model": MODEL, "input": prompt})));
    assert!(v["data"][0]["embedding"].is_array(), "{v}");
    // A failing request must not echo it either.
    let (_, v) =
        server.call("POST", "/v1/chat/completions", Some(&key), Some(json!({"model": CANARY, "messages": []})));
    assert!(!v.to_string().contains(CANARY), "{v}");

    let (_, metrics) = server.call("GET", "/metrics", None, None);
    let metrics = metrics.as_str().expect("text").to_owned();
    assert!(metrics.contains("soramai_completions_total 2"), "{metrics}");
    let (_, usage) = server.call("GET", "/v1/usage", Some(&key), None);
    assert_eq!(usage["usage"]["requests"], 3, "{usage}");
    // A stored response (and the one that continues it) holds its conversation sealed.
    let body = json!({"model": MODEL, "input": prompt, "instructions": CANARY, "max_output_tokens": 4});
    let (s, first) = server.call("POST", "/v1/responses", Some(&key), Some(body));
    assert_eq!(s, StatusCode::OK, "{first}");
    let body = json!({"model": MODEL, "input": CANARY, "previous_response_id": first["id"], "max_output_tokens": 4});
    assert_eq!(server.call("POST", "/v1/responses", Some(&key), Some(body)).0, StatusCode::OK);
    let (_, stored) =
        server.call("GET", &format!("/v1/responses/{}", first["id"].as_str().expect("id")), Some(&key), None);
    assert_eq!(stored["instructions"], CANARY, "{stored}");
    // Names are customer data too: a file and a key named with the canary are shown to their
    // tenant and sealed everywhere else.
    let form = reqwest::blocking::multipart::Form::new()
        .text("purpose", "fine-tune")
        .part("file", reqwest::blocking::multipart::Part::bytes(dataset()).file_name(format!("{CANARY}.jsonl")));
    let res = server.http.post(format!("{}/v1/files", server.url)).bearer_auth(&key).multipart(form).send();
    assert_eq!(res.expect("upload").status(), StatusCode::OK);
    let (_, files) = server.call("GET", "/v1/files", Some(&key), None);
    assert_eq!(files["data"][0]["filename"], format!("{CANARY}.jsonl").as_str(), "{files}");
    let body = json!({"name": format!("{CANARY} key"), "scopes": ["inference"], "tenant": "acme"});
    assert_eq!(server.call("POST", "/v1/api_keys", Some(&key), Some(body)).0, StatusCode::CREATED);
    let (_, keys) = server.call("GET", "/v1/api_keys", Some(&key), None);
    assert!(keys.to_string().contains(&format!("{CANARY} key")), "{keys}");

    // A document titled and written with the canary goes through an ingestion job (its
    // encrypted input, the child's pipe, the encrypted index) and is found, nowhere else.
    assert_eq!(server.call("POST", "/v1/corpora", Some(&key), Some(json!({"id": "kb"}))).0, StatusCode::CREATED);
    let doc = json!({"documents": [{"id": "d1", "title": CANARY, "text": format!("The note says {CANARY}.")}]});
    assert_eq!(ingest(&server, &key, "kb", doc)["status"], "succeeded");
    let (_, hits) = server.call("POST", "/v1/corpora/kb/search", Some(&key), Some(json!({"query": CANARY})));
    assert_eq!(hits["data"][0]["doc_id"], "d1", "{hits}");

    let (_, audit) = server.call("GET", "/v1/audit", Some(&key), None);
    let logs = server.stop();
    for (what, text) in
        [("metrics", &metrics), ("server output", &logs), ("usage", &usage.to_string()), ("audit", &audit.to_string())]
    {
        assert!(!text.contains(CANARY), "the canary is in the {what}");
    }
    let mut files = vec![dir.path().to_path_buf()];
    let mut scanned = 0;
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).expect("dir").flatten().map(|e| e.path()));
        } else {
            let bytes = std::fs::read(&p).expect("read");
            scanned += 1;
            assert!(!bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()), "the canary is in {}", p.display());
        }
    }
    assert!(scanned >= 3, "the database and its WAL were scanned ({scanned} files)");
}

#[test]
fn a_repeated_system_prompt_is_reused_by_its_own_tenant_only() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &model);
    let keys: Vec<String> = ["acme", "globex"].iter().map(|t| server.tenant(t, "basic", 1_000_000)).collect();
    let system = "You are the help desk of the Cloud Council. Answer in one short sentence, politely, \
                  and never mention the weather, the sea or the mountains unless you are asked.";
    let ask = |key: &str, question: &str, stream: bool| {
        let mut body = json!({"model": MODEL, "max_tokens": 6, "temperature": 0, "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": question}]});
        if !stream {
            let (s, v) = server.call("POST", "/v1/chat/completions", Some(key), Some(body));
            assert_eq!(s, StatusCode::OK, "{v}");
            return (v["usage"].clone(), v["choices"][0]["message"]["content"].as_str().unwrap_or("").to_owned());
        }
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let res = server.http.post(format!("{}/v1/chat/completions", server.url)).bearer_auth(key).json(&body).send();
        let text = res.expect("send").text().expect("stream");
        let mut usage = Value::Null;
        let mut content = String::new();
        for data in text.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|d| *d != "[DONE]") {
            let chunk: Value = serde_json::from_str(data).expect("chunk");
            if !chunk["usage"].is_null() {
                usage = chunk["usage"].clone();
            }
            content.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        }
        (usage, content)
    };
    let cached = |u: &Value| u["prompt_tokens_details"]["cached_tokens"].as_u64().expect("cached_tokens");
    let (first, _) = ask(&keys[0], "Where does the council meet?", false);
    assert_eq!(cached(&first), 0, "{first}");
    // The tenant's next request with the same system prompt skips its prefill, in both shapes.
    let (second, answer) = ask(&keys[0], "Who may attend?", false);
    assert!(cached(&second) >= 30, "the system prompt was not reused: {second}");
    assert!(cached(&second) < second["prompt_tokens"].as_u64().expect("prompt_tokens"));
    let (streamed, streamed_answer) = ask(&keys[0], "Who may attend?", true);
    assert!(cached(&streamed) > cached(&second), "{streamed}");
    assert_eq!(streamed_answer, answer);
    // Another tenant sending the very same messages starts cold: nothing of acme's is reused,
    // and the answer is what a full prefill gives.
    let (other, other_answer) = ask(&keys[1], "Who may attend?", false);
    assert_eq!(cached(&other), 0, "globex reused acme's prompt: {other}");
    assert_eq!(other_answer, answer);
    assert!(cached(&ask(&keys[1], "Who may attend?", false).0) > 0, "globex reuses its own");
    server.stop();
}

#[test]
fn rag_over_http_grounds_answers_in_the_tenants_own_documents_only() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &model);
    let acme = server.tenant("acme", "basic", 1_000_000);
    let globex = server.tenant("globex", "basic", 1_000_000);
    let free = server.tenant("freebie", "free", 1_000_000);

    let (s, v) = server.call("POST", "/v1/corpora", Some(&acme), Some(json!({"id": "handbook"})));
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_error(
        server.call("POST", "/v1/corpora", Some(&acme), Some(json!({"id": "handbook"}))),
        StatusCode::CONFLICT,
        "already_exists",
    );
    let docs = json!({"documents": [
        {"id": "travel", "title": "Travel policy", "text": "Employees book trains for trips under 600 km. The travel desk is on floor 7.", "metadata": {"team": "ops"}},
        {"id": "leave", "title": "Leave", "format": "markdown", "text": "# Leave\n\nEveryone gets 30 days of paid leave a year."},
    ]});
    let v = ingest(&server, &acme, "handbook", docs);
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["documents"], 2);
    assert_eq!(v["embedded"], true, "{v}");
    let (s, list) = server.call("GET", "/v1/corpora/handbook/ingestions", Some(&acme), None);
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list["data"][0]["id"], v["id"]);
    // Another tenant, or another corpus of the same tenant, does not see the ingestion.
    let one = format!("/v1/corpora/handbook/ingestions/{}", v["id"].as_str().expect("id"));
    assert_error(server.call("GET", &one, Some(&globex), None), StatusCode::NOT_FOUND, "ingestion_not_found");
    let other = one.replace("handbook", "other");
    assert_error(server.call("GET", &other, Some(&acme), None), StatusCode::NOT_FOUND, "ingestion_not_found");
    assert_error(
        server.call("POST", &format!("{one}/cancel"), Some(&acme), None),
        StatusCode::CONFLICT,
        "invalid_state",
    );
    let (s, v) =
        server.call("POST", "/v1/corpora/handbook/search", Some(&acme), Some(json!({"query": "travel desk floor"})));
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"][0]["doc_id"], "travel", "{v}");
    let (s, v) = server.call(
        "POST",
        "/v1/corpora/handbook/chat",
        Some(&acme),
        Some(json!({"model": MODEL, "question": "Which floor is the travel desk on?", "max_tokens": 24, "temperature": 0})),
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["sources"].as_array().is_some_and(|a| a.iter().any(|s| s["doc_id"] == "travel")), "{v}");
    assert!(v["usage"]["prompt_tokens"].as_u64() > Some(20), "{v}");
    // Held to citing, the answer begins with markers that name its sources, sampled or not.
    for temperature in [0.0, 1.0] {
        let (s, v) = server.call(
            "POST",
            "/v1/corpora/handbook/chat",
            Some(&acme),
            Some(json!({"model": MODEL, "question": "Which floor is the travel desk on?", "max_tokens": 24,
                "temperature": temperature, "seed": 4, "require_citations": true})),
        );
        assert_eq!(s, StatusCode::OK, "{v}");
        assert!(v["answer"].as_str().is_some_and(|a| a.starts_with('[')), "{v}");
        assert!(v["citations"].as_array().is_some_and(|c| !c.is_empty()), "{v}");
    }

    // Another tenant cannot reach acme's corpus; a free tenant has no RAG; bad input is refused.
    for (method, path, body) in [
        ("POST", "/v1/corpora/handbook/search", json!({"query": "travel"})),
        ("POST", "/v1/corpora/handbook/chat", json!({"model": MODEL, "question": "floor?"})),
        ("POST", "/v1/corpora/handbook/documents", json!({"documents": []})),
    ] {
        assert_error(server.call(method, path, Some(&globex), Some(body)), StatusCode::NOT_FOUND, "corpus_not_found");
    }
    let (_, v) = server.call("GET", "/v1/corpora", Some(&globex), None);
    assert_eq!(v["data"], json!([]));
    assert_error(
        server.call("POST", "/v1/corpora", Some(&free), Some(json!({"id": "mine"}))),
        StatusCode::FORBIDDEN,
        "permission_denied",
    );
    for body in [
        json!({"documents": [{"id": "x", "text": "y", "format": "pdf"}]}),
        json!({"documents": [{"id": "x"}]}),
        json!({"docs": []}),
    ] {
        let (s, v) = server.call("POST", "/v1/corpora/handbook/documents", Some(&acme), Some(body));
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    }
    assert_error(
        server.call("POST", "/v1/corpora", Some(&acme), Some(json!({"id": "../x"}))),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    let (_, v) = server.call("GET", "/v1/corpora/handbook/documents", Some(&acme), None);
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2), "refused requests changed nothing");
    assert_eq!(server.call("DELETE", "/v1/corpora/handbook", Some(&acme), None).0, StatusCode::OK);
    assert_error(
        server.call("POST", "/v1/corpora/handbook/search", Some(&acme), Some(json!({"query": "travel"}))),
        StatusCode::NOT_FOUND,
        "corpus_not_found",
    );
    server.stop();
}

#[test]
fn tls_serves_https_1_2_and_up_only() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("cert");
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).expect("write");
    std::fs::write(&key_pem, cert.signing_key.serialize_pem()).expect("write");

    // A key file that is not a key is refused at start with a clear error.
    let bad = Command::new(env!("CARGO_BIN_EXE_soramai"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("bad"))
        .arg("--tls-cert")
        .arg(&cert_pem)
        .arg("--tls-key")
        .arg(&cert_pem)
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cert.pem"), "{}", String::from_utf8_lossy(&bad.stderr));

    let tls_flag = PathBuf::from("--tls-cert");
    let key_flag = PathBuf::from("--tls-key");
    let server = Server::start_with(dir.path(), &model, &[&tls_flag, &cert_pem, &key_flag, &key_pem]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let curl = |args: &[&str]| {
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&cert_pem)
            .args(args)
            .output()
            .expect("curl")
    };
    let ok = curl(&[&format!("{}/healthz", server.url)]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "ok");
    let tls12 = curl(&["--tlsv1.2", "--tls-max", "1.2", &format!("{}/healthz", server.url)]);
    assert!(tls12.status.success(), "TLS 1.2 is served: {}", String::from_utf8_lossy(&tls12.stderr));
    let old = curl(&["--tlsv1.0", "--tls-max", "1.1", &format!("{}/healthz", server.url)]);
    assert!(!old.status.success(), "TLS 1.1 must be refused");
    let plain = curl(&[&format!("{}/healthz", server.url.replace("https://", "http://"))]);
    assert!(!plain.status.success() || String::from_utf8_lossy(&plain.stdout) != "ok", "plain HTTP must not be served");
    // The server still answers after the refused handshakes, API keys included.
    let with_key = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&cert_pem)
        .args(["-H", &format!("Authorization: Bearer {}", server.admin), &format!("{}/v1/models", server.url)])
        .output()
        .expect("curl");
    assert!(String::from_utf8_lossy(&with_key.stdout).contains(MODEL), "{}", String::from_utf8_lossy(&with_key.stdout));
    server.stop();
}

fn grant_body(reason: &str, scopes: &[&str], ttl: Option<u64>) -> Value {
    json!({"reason": reason, "scopes": scopes, "ttl_seconds": ttl})
}

#[test]
fn operator_access_needs_a_reasoned_time_boxed_grant_the_tenant_sees() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    // An Enterprise tenant holds its own root key: made through the library before the server
    // starts (there is no HTTP route that takes a customer's key).
    {
        let core = soramai::Core::open_embedded(dir.path().join("data")).expect("core");
        let customer: std::sync::Arc<dyn soramai::KeyProvider> = std::sync::Arc::new(soramai::LocalRootKey::generate());
        let big = soramai::TenantId::new("bigco").expect("id");
        core.create_tenant_with_customer_key(&big, soramai::Tier::Enterprise, customer).expect("enterprise");
    }
    let server = Server::start(dir.path(), &model);
    let admin = server.admin.clone();
    let acme = server.tenant("acme", "basic", 2_000_000);

    // acme's data: a file, a corpus, a fine-tuned model.
    let (s, file) = upload(&server, &acme, dataset());
    assert_eq!(s, StatusCode::OK, "{file}");
    let file_id = file["id"].as_str().expect("id").to_owned();
    let content = format!("/v1/files/{file_id}/content");
    assert_eq!(server.call("POST", "/v1/corpora", Some(&acme), Some(json!({"id": "kb"}))).0, StatusCode::CREATED);
    let docs = json!({"documents": [{"id": "d1", "text": "The cloud council meets in Kumo every spring."}]});
    assert_eq!(ingest(&server, &acme, "kb", docs)["status"], "succeeded");
    let tune = json!({"model": MODEL, "training_file": file_id,
                      "hyperparameters": {"n_epochs": 1, "batch_size": 2, "rank": 2, "max_seq": 64}});
    let (s, job) = server.call("POST", "/v1/fine_tuning/jobs", Some(&acme), Some(tune));
    assert_eq!(s, StatusCode::OK, "{job}");
    let job = wait_job(&server, &acme, job["id"].as_str().expect("id"));
    assert_eq!(job["status"], "succeeded", "{job}");
    let ft = job["fine_tuned_model"].as_str().expect("ft model").to_owned();
    let search = json!({"query": "Where does the council meet?"});

    // Without a grant the operator reads nothing: no second key (the old escalation), no file,
    // no corpus, no fine-tuned model.
    for scopes in [json!(["train"]), json!(["admin"])] {
        assert_error(
            server.call(
                "POST",
                "/v1/api_keys",
                Some(&admin),
                Some(json!({"name": "peek", "scopes": scopes, "tenant": "acme"})),
            ),
            StatusCode::FORBIDDEN,
            "permission_denied",
        );
    }
    assert_error(server.call("GET", &content, Some(&admin), None), StatusCode::NOT_FOUND, "dataset_not_found");
    assert_error(
        server.call("POST", "/v1/corpora/kb/search", Some(&admin), Some(search.clone())),
        StatusCode::NOT_FOUND,
        "corpus_not_found",
    );
    assert_error(
        server.call("POST", "/v1/chat/completions", Some(&admin), Some(chat(&ft, "hi"))),
        StatusCode::NOT_FOUND,
        "model_not_found",
    );
    assert_error(
        server.call("GET", &format!("/v1/models/{ft}"), Some(&admin), None),
        StatusCode::NOT_FOUND,
        "model_not_found",
    );

    // The grant rules; a refused request writes nothing.
    let grants = "/v1/tenants/acme/access_grants";
    for (body, what) in [
        (json!({"scopes": ["train"]}), "no reason"),
        (grant_body("", &["train"], None), "empty reason"),
        (grant_body("INC-1", &["train"], Some(3601)), "over an hour"),
        (grant_body("INC-1", &["bogus"], None), "unknown scope"),
        (json!({"reason": "INC-1", "scopes": ["train"], "zq9-canary-field": 1}), "unknown field"),
    ] {
        let (s, v) = server.call("POST", grants, Some(&admin), Some(body));
        assert_eq!(s, StatusCode::BAD_REQUEST, "{what}: {v}");
        assert!(!v.to_string().contains("zq9"), "the error echoes the input: {v}");
    }
    assert_error(
        server.call("POST", grants, Some(&acme), Some(grant_body("x", &["train"], None))),
        StatusCode::FORBIDDEN,
        "permission_denied",
    );
    assert_error(
        server.call(
            "POST",
            "/v1/tenants/bigco/access_grants",
            Some(&admin),
            Some(grant_body("INC-2", &["train"], None)),
        ),
        StatusCode::FORBIDDEN,
        "permission_denied",
    );
    let (_, listed) = server.call("GET", "/v1/access_grants", Some(&acme), None);
    assert_eq!(listed["data"], json!([]), "refused requests leave no grant");

    // A Basic tenant's grant is active at once, with a key that dies with it.
    let (s, g) = server.call(
        "POST",
        grants,
        Some(&admin),
        Some(grant_body("INC-7 corrupted upload", &["train", "inference", "rag"], Some(600))),
    );
    assert_eq!(s, StatusCode::CREATED, "{g}");
    assert_eq!(g["status"], "active");
    let (grant_id, peek) = (g["id"].as_str().expect("id").to_owned(), g["key"].as_str().expect("key").to_owned());
    let (s, bytes) = server.call("GET", &content, Some(&peek), None);
    assert_eq!(s, StatusCode::OK, "{bytes}");
    assert_eq!(server.call("POST", "/v1/corpora/kb/search", Some(&peek), Some(search.clone())).0, StatusCode::OK);
    assert_eq!(server.call("POST", "/v1/chat/completions", Some(&peek), Some(chat(&ft, "hi"))).0, StatusCode::OK);
    // It mints no key, in acme or anywhere.
    assert_error(
        server.call("POST", "/v1/api_keys", Some(&peek), Some(json!({"name": "stay", "scopes": ["train"]}))),
        StatusCode::FORBIDDEN,
        "permission_denied",
    );
    // The refused call is in the tenant's audit log too, naming the grant and the operation.
    let (_, audit) = server.call("GET", "/v1/audit", Some(&acme), None);
    let refused = audit["data"].as_array().expect("records").iter().any(|r| {
        r["action"] == "access_grant.request"
            && r["target"] == grant_id.as_str()
            && serde_json::from_str::<Value>(r["detail"].as_str().unwrap_or("{}"))
                .is_ok_and(|d| d["operation"] == "POST /v1/api_keys")
    });
    assert!(refused, "the refused call under the grant is not audited: {audit}");
    // The tenant sees the grant, with its reason and the operator's key, and ends it at once.
    let (_, listed) = server.call("GET", "/v1/access_grants", Some(&acme), None);
    assert_eq!(listed["data"][0]["id"], grant_id.as_str());
    assert_eq!(listed["data"][0]["reason"], "INC-7 corrupted upload");
    let admin_key_id = admin.split('-').nth(1).expect("id");
    assert_eq!(listed["data"][0]["operator_key"], admin_key_id);
    let (s, v) = server.call("POST", &format!("/v1/access_grants/{grant_id}/revoke"), Some(&acme), None);
    assert_eq!((s, v["status"].clone()), (StatusCode::OK, json!("revoked")), "{v}");
    assert_error(server.call("GET", &content, Some(&peek), None), StatusCode::UNAUTHORIZED, "invalid_api_key");
    assert_eq!(server.call("GET", "/v1/audit/verify", Some(&acme), None).0, StatusCode::OK);

    // Expiry: a one-second grant stops working by itself and is listed as expired.
    let (_, g) = server.call("POST", grants, Some(&admin), Some(grant_body("INC-8", &["train"], Some(1))));
    let short = g["key"].as_str().expect("key").to_owned();
    assert_eq!(server.call("GET", &content, Some(&short), None).0, StatusCode::OK);
    std::thread::sleep(Duration::from_millis(1200));
    assert_error(server.call("GET", &content, Some(&short), None), StatusCode::UNAUTHORIZED, "invalid_api_key");
    let (_, listed) =
        server.call("GET", &format!("/v1/access_grants/{}", g["id"].as_str().expect("id")), Some(&acme), None);
    assert_eq!(listed["status"], "expired", "{listed}");

    // Org: the grant waits for the tenant's approval, and the tenant's audit log shows it all.
    let org = server.tenant("orgco", "org", 1_000_000);
    let (s, up) = upload(&server, &org, dataset());
    assert_eq!(s, StatusCode::OK);
    let org_content = format!("/v1/files/{}/content", up["id"].as_str().expect("id"));
    let (s, g) = server.call(
        "POST",
        "/v1/tenants/orgco/access_grants",
        Some(&admin),
        Some(grant_body("SUP-3 billing dispute", &["train"], None)),
    );
    assert_eq!((s, g["status"].clone()), (StatusCode::CREATED, json!("pending")), "{g}");
    let (org_grant, org_peek) = (g["id"].as_str().expect("id").to_owned(), g["key"].as_str().expect("key").to_owned());
    assert_error(server.call("GET", &org_content, Some(&org_peek), None), StatusCode::FORBIDDEN, "permission_denied");
    assert_error(
        server.call("POST", &format!("/v1/access_grants/{org_grant}/approve"), Some(&admin), None),
        StatusCode::NOT_FOUND,
        "access_grant_not_found",
    );
    let (s, v) = server.call("POST", &format!("/v1/access_grants/{org_grant}/approve"), Some(&org), None);
    assert_eq!((s, v["status"].clone()), (StatusCode::OK, json!("active")), "{v}");
    assert_eq!(server.call("GET", &org_content, Some(&org_peek), None).0, StatusCode::OK);
    let (s, audit) = server.call("GET", "/v1/audit", Some(&org), None);
    assert_eq!(s, StatusCode::OK, "{audit}");
    let records = audit["data"].as_array().expect("records");
    let find =
        |action: &str| records.iter().find(|r| r["action"] == action).unwrap_or_else(|| panic!("{action}: {audit}"));
    for action in ["access_grant.requested", "access_grant.approved", "access_grant.request"] {
        let detail = find(action)["detail"].as_str().expect("detail").to_owned();
        assert!(
            detail.contains(&org_grant) && detail.contains("SUP-3 billing dispute") && detail.contains(admin_key_id),
            "{action}: {detail}"
        );
    }
    assert!(find("access_grant.request")["detail"].as_str().expect("detail").contains("GET /v1/files/{id}/content"));
    assert!(find("access_grant.request")["actor"].as_str().expect("actor").contains(&org_grant));
    assert_eq!(find("tenant.created")["actor"], format!("operator:key:{admin_key_id}"));
    assert_eq!(find("credits.granted")["actor"], format!("operator:key:{admin_key_id}"));
    let (s, v) = server.call("GET", "/v1/audit/verify", Some(&org), None);
    assert_eq!(s, StatusCode::OK, "the chain verifies: {v}");
    // The operator's own log holds the same grant events and its tenant changes.
    let (_, op_audit) = server.call("GET", "/v1/audit", Some(&admin), None);
    let op_records = op_audit["data"].as_array().expect("records");
    for action in [
        "access_grant.requested",
        "access_grant.approved",
        "access_grant.revoked",
        "access_grant.expired",
        "admin.access",
    ] {
        assert!(op_records.iter().any(|r| r["action"] == action), "{action} in the operator's log");
    }
    assert_eq!(server.call("GET", "/v1/audit/verify", Some(&admin), None).0, StatusCode::OK);
    // The operator ends the Org grant itself.
    let (s, v) = server.call("POST", &format!("/v1/access_grants/{org_grant}/revoke"), Some(&admin), None);
    assert_eq!((s, v["status"].clone()), (StatusCode::OK, json!("revoked")), "{v}");
    assert_error(server.call("GET", &org_content, Some(&org_peek), None), StatusCode::UNAUTHORIZED, "invalid_api_key");
    server.stop();
}

/// A raw connection to the server from `local` (a loopback address of the test's choice).
fn connect_from(url: &str, local: &str) -> std::net::TcpStream {
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().expect("addr");
    let socket = socket2_free_bind(local, addr);
    socket.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    socket
}

/// Binds a client socket to `local` before connecting (std has no bind-then-connect; tokio does).
fn socket2_free_bind(local: &str, to: std::net::SocketAddr) -> std::net::TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(format!("{local}:0").parse().expect("local")).expect("bind");
        socket.connect(to).await.expect("connect").into_std().expect("std")
    });
    stream.set_nonblocking(false).expect("blocking");
    stream
}

/// Reads until the server closes the connection; returns what it sent and when it closed.
fn read_to_close(mut stream: std::net::TcpStream) -> (Vec<u8>, Duration) {
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return (got, started.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn slow_idle_and_surplus_connections_are_cut_while_requests_go_on() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("dir");
    let args: Vec<&std::ffi::OsStr> = ["--header-timeout", "2", "--idle-timeout", "4", "--max-connections-per-ip", "4"]
        .iter()
        .map(|a| a.as_ref())
        .collect();
    let server = Server::launch(dir.path(), &args);

    // Slow-loris: a request head sent one byte a second is cut off at the header timeout, though
    // bytes keep coming.
    let slow = connect_from(&server.url, "127.0.0.1");
    let mut writer = slow.try_clone().expect("clone");
    let trickle = std::thread::spawn(move || {
        let mut sent = 0;
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaa\r\n\r\n" {
            if writer.write_all(&[*b]).is_err() {
                break;
            }
            sent += 1;
            std::thread::sleep(Duration::from_secs(1));
        }
        sent
    });
    let (answer, after) = read_to_close(slow);
    assert!(answer.is_empty(), "a slow head gets no answer: {}", String::from_utf8_lossy(&answer));
    assert!(after >= Duration::from_millis(1500) && after <= Duration::from_millis(3500), "cut after {after:?}");
    let sent = trickle.join().expect("writer");
    assert!(sent < 10, "the writer was stopped after {sent} bytes");

    // An idle connection is closed after the idle timeout.
    let (_, after) = read_to_close(connect_from(&server.url, "127.0.0.1"));
    assert!(after >= Duration::from_millis(3500) && after <= Duration::from_millis(6000), "idle cut after {after:?}");

    // Four idle connections from one address fill its share; more are refused with a 503 at once,
    // while a normal request from another address succeeds.
    let held: Vec<_> = (0..4).map(|_| connect_from(&server.url, "127.0.0.1")).collect();
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        let (answer, after) = read_to_close(connect_from(&server.url, "127.0.0.1"));
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 503") && text.contains("too_many_connections"), "{text}");
        assert!(after < Duration::from_secs(2), "refused at once, not after {after:?}");
    }
    let other = client_builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().expect("ip"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let res = other.get(format!("{}/healthz", server.url)).send().expect("send");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().expect("body"), "ok");
    // A keep-alive client that keeps talking is never cut.
    for _ in 0..3 {
        assert_eq!(other.get(format!("{}/healthz", server.url)).send().expect("send").status(), StatusCode::OK);
        std::thread::sleep(Duration::from_millis(1500));
    }
    // Once the idle connections are gone, the address gets its share back.
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let mut again = connect_from(&server.url, "127.0.0.1");
    again.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("write");
    let (answer, _) = read_to_close(again);
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    // Slow uploads hold their connections, not the tenant's concurrency places (2 on Basic).
    let acme = server.tenant("acme", "basic", 0);
    let uploads: Vec<_> = (0..2)
        .map(|_| {
            let mut up = connect_from(&server.url, "127.0.0.3");
            let head = format!(
                "POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {acme}\r\n\
                 Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"
            );
            up.write_all(head.as_bytes()).expect("write");
            up
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (s, v) = server.call("GET", "/v1/models", Some(&acme), None);
    assert_eq!(s, StatusCode::OK, "a third request is admitted while two bodies trickle: {v}");
    drop(uploads);
    server.stop();
}

#[test]
fn an_account_closes_itself_the_operator_reopens_or_closes_at_once() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::launch(dir.path(), &[]);
    let admin = server.admin.clone();
    let acme = server.tenant("acme", "basic", 100);
    let globex = server.tenant("globex", "basic", 0);
    // Another tenant's key, a bad window, an unknown field: refused, nothing changes.
    assert_error(
        server.call("POST", "/v1/tenants/acme/close", Some(&globex), None),
        StatusCode::FORBIDDEN,
        "permission_denied",
    );
    for body in [json!({"window_days": 0}), json!({"window_days": 31}), json!({"zq9": true})] {
        let (s, v) = server.call("POST", "/v1/tenants/acme/close", Some(&acme), Some(body));
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    }
    assert_error(
        server.call("POST", "/v1/tenants/operator/close", Some(&admin), None),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_eq!(server.call("GET", "/v1/usage", Some(&acme), None).0, StatusCode::OK);

    // The tenant closes its own account: its key stops at once; the purge is 7 days out.
    let (s, c) = server.call("POST", "/v1/tenants/acme/close", Some(&acme), Some(json!({"window_days": 7})));
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(c["purged"], false);
    assert_eq!(c["purge_at"].as_i64().expect("time") - c["requested_at"].as_i64().expect("time"), 7 * 86_400);
    assert_error(server.call("GET", "/v1/usage", Some(&acme), None), StatusCode::UNAUTHORIZED, "invalid_api_key");
    assert_error(
        server.call("POST", "/v1/tenants/acme/close", Some(&admin), None),
        StatusCode::CONFLICT,
        "already_exists",
    );
    // The operator takes it back; the tenant gets a first key again.
    assert_eq!(server.call("POST", "/v1/tenants/acme/reopen", Some(&admin), None).0, StatusCode::OK);
    assert_error(
        server.call("POST", "/v1/tenants/acme/reopen", Some(&globex), None),
        StatusCode::FORBIDDEN,
        "permission_denied",
    );
    let again = server.key(&admin, "acme", &["admin"], None);
    let (_, audit) = server.call("GET", "/v1/audit", Some(&again), None);
    let actions: Vec<&str> =
        audit["data"].as_array().expect("records").iter().filter_map(|r| r["action"].as_str()).collect();
    assert!(actions.contains(&"tenant.reopened"), "{audit}");
    // Or closes it at once: gone from the tenant list, its key with it.
    let (s, c) = server.call("POST", "/v1/tenants/globex/close", Some(&admin), Some(json!({"immediate": true})));
    assert_eq!((s, c["purged"].clone()), (StatusCode::OK, json!(true)), "{c}");
    let (_, tenants) = server.call("GET", "/v1/tenants", Some(&admin), None);
    assert!(!tenants.to_string().contains("globex"), "{tenants}");
    assert_error(server.call("GET", "/v1/usage", Some(&globex), None), StatusCode::UNAUTHORIZED, "invalid_api_key");
    server.stop();
}

/// `POST /v1/custom_models?name=…` with a body.
fn upload_gguf(server: &Server, key: &str, name: &str, body: reqwest::blocking::Body) -> (StatusCode, Value) {
    let res = server
        .http
        .post(format!("{}/v1/custom_models?name={name}", server.url))
        .bearer_auth(key)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .expect("send");
    let status = res.status();
    (status, res.json().unwrap_or(Value::Null))
}

#[test]
fn a_customer_gguf_is_uploaded_served_and_deleted_over_http_for_its_tenant_only() {
    use std::io::Write;
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &model);
    let basic = server.tenant("basic-co", "basic", 100_000);
    let acme = server.tenant("acme", "pro", 100_000);
    let globex = server.tenant("globex", "pro", 100_000);
    let file = || reqwest::blocking::Body::new(std::fs::File::open(&model).expect("model"));
    // A refusal that comes before the body is read closes the connection at once: these bodies
    // are small enough to be sent whole before the answer comes back.
    let small = || reqwest::blocking::Body::from(std::fs::read(&model).expect("bytes")[..4096].to_vec());

    // Refused: below Pro, a bad name, not a GGUF, a truncated one, a declared size over the
    // limit (answered before any body is read). None of it is listed afterwards.
    assert_error(upload_gguf(&server, &basic, "mine", small()), StatusCode::FORBIDDEN, "permission_denied");
    assert_error(upload_gguf(&server, &acme, "Bad Name", small()), StatusCode::BAD_REQUEST, "invalid_request");
    let garbage = reqwest::blocking::Body::from(b"GGUF\x03\0\0\0 and then nonsense".to_vec());
    assert_error(upload_gguf(&server, &acme, "junk", garbage), StatusCode::BAD_REQUEST, "invalid_request");
    let head = std::fs::read(&model).expect("bytes")[..1 << 20].to_vec();
    let cut = reqwest::blocking::Body::from(head);
    assert_error(upload_gguf(&server, &acme, "cut", cut), StatusCode::BAD_REQUEST, "invalid_request");
    let mut raw = connect_from(&server.url, "127.0.0.1");
    write!(
        raw,
        "POST /v1/custom_models?name=huge HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {acme}\r\nContent-Length: 99999999999999\r\n\r\n"
    )
    .expect("write");
    let (answer, _) = read_to_close(raw);
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 413"), "{}", String::from_utf8_lossy(&answer));
    let (s, v) = server.call("GET", "/v1/custom_models", Some(&acme), None);
    assert_eq!((s, v["data"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)), "{v}");

    // Accepted, streamed from the file; served to acme under its id.
    let (s, m) = upload_gguf(&server, &acme, "my-smol", file());
    assert_eq!(s, StatusCode::OK, "{m}");
    let id = m["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("gguf:acme:my-smol:") && m["architecture"] == "llama" && m["owned_by"] == "acme", "{m}");
    let (s, listed) = server.call("GET", "/v1/models", Some(&acme), None);
    assert_eq!(s, StatusCode::OK);
    assert!(listed["data"].as_array().expect("models").iter().any(|x| x["id"] == id.as_str()), "{listed}");
    let (s, answer) = server.call("POST", "/v1/chat/completions", Some(&acme), Some(chat(&id, "Name a color.")));
    assert_eq!(s, StatusCode::OK, "{answer}");
    let (_, base) = server.call("POST", "/v1/chat/completions", Some(&acme), Some(chat(MODEL, "Name a color.")));
    assert_eq!(answer["choices"][0]["message"], base["choices"][0]["message"], "the same file, the same answer");

    // Another tenant: not found wherever it looks, and cannot delete it.
    let (_, listed) = server.call("GET", "/v1/models", Some(&globex), None);
    assert!(!listed["data"].as_array().expect("models").iter().any(|x| x["id"] == id.as_str()), "{listed}");
    for (method, path, body) in [
        ("GET", format!("/v1/custom_models/{id}"), None),
        ("GET", format!("/v1/models/{id}"), None),
        ("DELETE", format!("/v1/models/{id}"), None),
        ("POST", "/v1/chat/completions".to_owned(), Some(chat(&id, "hi"))),
    ] {
        assert_error(server.call(method, &path, Some(&globex), body), StatusCode::NOT_FOUND, "model_not_found");
    }

    // The owner deletes it: gone from the list, no longer served.
    let (s, v) = server.call("DELETE", &format!("/v1/models/{id}"), Some(&acme), None);
    assert_eq!((s, &v["deleted"]), (StatusCode::OK, &json!(true)), "{v}");
    assert_error(
        server.call("POST", "/v1/chat/completions", Some(&acme), Some(chat(&id, "hi"))),
        StatusCode::NOT_FOUND,
        "model_not_found",
    );
    let (s, v) = server.call("GET", &format!("/v1/custom_models/{id}"), Some(&acme), None);
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    server.stop();
}

#[test]
fn people_sign_in_on_the_web_with_a_strict_session_cookie_and_csrf_on_every_form() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::launch(dir.path(), &[]);
    let acme = server.tenant("acme", "basic", 0);
    let globex = server.tenant("globex", "basic", 0);
    let password = "zq3-canary-password-Yuki";
    let web = client_builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let url = |p: &str| format!("{}{p}", server.url);

    // A tenant admin invites a person through the API; the token is shown once.
    let (s, inv) = server.call(
        "POST",
        "/v1/members/invitations",
        Some(&acme),
        Some(json!({"email": "Ada@Acme.com", "role": "admin"})),
    );
    assert_eq!(s, StatusCode::CREATED, "{inv}");
    let token = inv["token"].as_str().expect("token").to_owned();
    assert_error(
        server.call("POST", "/v1/members/invitations", Some(&acme), Some(json!({"email": "x", "role": "admin"}))),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_error(
        server.call(
            "POST",
            "/v1/members/invitations",
            Some(&acme),
            Some(json!({"email": "b@acme.com", "role": "god"})),
        ),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );

    // Accepting it: the form's CSRF token is bound to an HttpOnly pre-session cookie.
    let page = web.get(url(&format!("/invitations/accept?token={token}"))).send().expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    let seed = cookie_value(&page, "soramai_csrf").expect("csrf cookie");
    let csrf = form_csrf(&page.text().expect("html"));
    let accept = |cookie: &str, csrf: &str| {
        web.post(url("/invitations/accept"))
            .header("cookie", cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("token", token.as_str()), ("password", password), ("csrf", csrf)]))
            .send()
            .expect("accept")
    };
    assert_eq!(accept("", &csrf).status(), StatusCode::FORBIDDEN, "no cookie");
    assert_eq!(accept(&format!("soramai_csrf={seed}"), "0000").status(), StatusCode::FORBIDDEN, "wrong token");
    let (s, v) = server.call("GET", "/v1/members", Some(&acme), None);
    assert_eq!((s, v["data"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)), "nothing changed: {v}");
    let ok = accept(&format!("soramai_csrf={seed}"), &csrf);
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    assert_eq!(accept(&format!("soramai_csrf={seed}"), &csrf).status(), StatusCode::UNAUTHORIZED, "single use");

    // Sign-in: CSRF required; a planted session id is never adopted; the new one is strict.
    let page = web.get(url("/sign_in")).send().expect("page");
    let seed = cookie_value(&page, "soramai_csrf").expect("csrf cookie");
    for h in ["content-security-policy", "cache-control", "referrer-policy"] {
        assert!(page.headers().get(h).is_some(), "page without {h}");
    }
    let csrf = form_csrf(&page.text().expect("html"));
    let sign_in = |cookie: &str, csrf: &str, pw: &str| {
        web.post(url("/sign_in"))
            .header("cookie", cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("email", "ada@acme.com"), ("password", pw), ("csrf", csrf)]))
            .send()
            .expect("sign in")
    };
    let no_csrf = sign_in(&format!("soramai_csrf={seed}"), "", password);
    assert_eq!(no_csrf.status(), StatusCode::FORBIDDEN);
    assert!(cookie_value(&no_csrf, "soramai_session").is_none());
    let planted = "ss-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let res = sign_in(&format!("soramai_csrf={seed}; soramai_session={planted}"), &csrf, password);
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers().get("location").and_then(|v| v.to_str().ok()), Some("/dashboard"));
    let session = cookie_value(&res, "soramai_session").expect("session cookie");
    assert_ne!(session, planted, "a new session id at sign-in");
    let dash = |session: &str| {
        web.get(url("/dashboard")).header("cookie", format!("soramai_session={session}")).send().expect("dashboard")
    };
    assert_eq!(dash(planted).status(), StatusCode::SEE_OTHER, "the planted id opens nothing");
    let home = dash(&session);
    assert_eq!(home.status(), StatusCode::OK);
    assert_eq!(home.headers().get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));
    let html = home.text().expect("html");
    assert!(html.contains("acme") && html.contains("admin") && !html.contains("globex"), "{html}");
    let out_csrf = form_csrf(&html);

    // Members over the API: acme sees Ada as an admin; globex sees no one of acme.
    let (_, v) = server.call("GET", "/v1/members", Some(&acme), None);
    assert_eq!(v["data"][0]["email"], "ada@acme.com", "{v}");
    assert_eq!(v["data"][0]["role"], "admin", "{v}");
    let (_, v) = server.call("GET", "/v1/members", Some(&globex), None);
    assert_eq!(v["data"].as_array().map(Vec::len), Some(0), "{v}");
    // Hostile member calls: another tenant's person, a malformed id, an unknown role or field,
    // a member key without the admin scope; each refused, nothing changed.
    let ada_id = {
        let (_, v) = server.call("GET", "/v1/members", Some(&acme), None);
        v["data"][0]["user"].as_str().expect("user id").to_owned()
    };
    let role_path = format!("/v1/members/{ada_id}/role");
    assert_error(
        server.call("POST", &role_path, Some(&globex), Some(json!({"role": "viewer"}))),
        StatusCode::NOT_FOUND,
        "member_not_found",
    );
    assert_error(
        server.call("DELETE", &format!("/v1/members/{ada_id}"), Some(&globex), None),
        StatusCode::NOT_FOUND,
        "member_not_found",
    );
    assert_error(
        server.call("DELETE", "/v1/members/..%2F..%2Fetc", Some(&acme), None),
        StatusCode::NOT_FOUND,
        "member_not_found",
    );
    assert_error(
        server.call("POST", &role_path, Some(&acme), Some(json!({"role": "god"}))),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_error(
        server.call("POST", &role_path, Some(&acme), Some(json!({"role": "viewer", "extra": 1}))),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    let inference_only = server.key(&acme, "acme", &["inference"], None);
    assert_error(
        server.call("POST", &role_path, Some(&inference_only), Some(json!({"role": "viewer"}))),
        StatusCode::FORBIDDEN,
        "permission_denied",
    );
    let (_, v) = server.call("GET", "/v1/members", Some(&acme), None);
    assert_eq!(v["data"][0]["role"], "admin", "nothing changed: {v}");

    // Sign-out: refused without the session's token, then the session ends on the server.
    let out = |csrf: &str| {
        web.post(url("/sign_out"))
            .header("cookie", format!("soramai_session={session}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("csrf", csrf)]))
            .send()
            .expect("sign out")
    };
    assert_eq!(out(&csrf).status(), StatusCode::FORBIDDEN, "a pre-session token is not the session's");
    assert_eq!(dash(&session).status(), StatusCode::OK);
    assert_eq!(out(&out_csrf).status(), StatusCode::SEE_OTHER);
    assert_eq!(dash(&session).status(), StatusCode::SEE_OTHER, "signed out on the server");

    // Wrong passwords: one answer, then the email locks (a 429), the right password included.
    for _ in 0..4 {
        assert_eq!(
            sign_in(&format!("soramai_csrf={seed}"), &csrf, "wrong password!!").status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        sign_in(&format!("soramai_csrf={seed}"), &csrf, "wrong password!!").status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(sign_in(&format!("soramai_csrf={seed}"), &csrf, password).status(), StatusCode::TOO_MANY_REQUESTS);

    // The password never reaches a log, and no file of the data holds it.
    let logs = server.stop();
    assert!(!logs.contains(password), "the password in the server's output");
    for f in files_under(&dir.path().join("data")) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(!bytes.windows(password.len()).any(|w| w == password.as_bytes()), "password in {}", f.display());
    }
}

#[test]
fn the_dashboard_lets_people_work_within_their_role_and_tenant_only() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::launch(dir.path(), &[]);
    let acme = server.tenant("acme", "basic", 0);
    let globex = server.tenant("globex", "basic", 0);
    let pw = "a long enough passphrase";
    let ada = join_and_sign_in(&server, &acme, "ada@acme.com", "admin", pw);
    let bob = join_and_sign_in(&server, &acme, "bob@acme.com", "viewer", pw);
    let gina = join_and_sign_in(&server, &globex, "gina@globex.com", "member", pw);
    let web = client_builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let url = |p: &str| format!("{}{p}", server.url);
    let pages = Web::new(&server);
    let get = |session: &str, path: &str| pages.get(session, path);
    let post = |session: &str, path: &str, fields: &[(&str, &str)]| pages.post(session, path, fields);

    // Datasets: upload (multipart, with the session's CSRF token), listed, deleted.
    let (s, html) = get(&ada, "/t/acme/datasets");
    assert_eq!(s, StatusCode::OK, "{html}");
    assert!(html.contains("No datasets yet."));
    let csrf = form_csrf(&html);
    let upload = |csrf: &str| {
        let form = reqwest::blocking::multipart::Form::new()
            .text("csrf", csrf.to_owned())
            .part("file", reqwest::blocking::multipart::Part::bytes(dataset()).file_name("kumo.jsonl"));
        let res = web
            .post(url("/t/acme/datasets"))
            .header("cookie", format!("soramai_session={ada}"))
            .multipart(form)
            .send()
            .expect("upload");
        (res.status(), res.text().expect("html"))
    };
    assert_eq!(upload("forged").0, StatusCode::FORBIDDEN);
    assert!(get(&ada, "/t/acme/datasets").1.contains("No datasets yet."), "a forged post stores nothing");
    let (s, html) = upload(&csrf);
    assert_eq!(s, StatusCode::OK, "{html}");
    assert!(html.contains("Uploaded kumo.jsonl: 2 examples"), "{html}");
    assert!(html.contains("Validation report") && html.contains("Assistant turns that train</th><td>2<"), "{html}");
    let at = html.find("<code>file-").expect("the dataset's id") + 6;
    let id = html[at..].split('<').next().expect("id").to_owned();
    let (s, _) = post(&ada, &format!("/t/acme/datasets/{id}/delete"), &[("csrf", &csrf)]);
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(!get(&ada, "/t/acme/datasets").1.contains(&id), "deleted");

    // API keys: created and shown once, then listed without the secret; it works until revoked.
    let (s, html) = post(&ada, "/t/acme/keys", &[("csrf", &csrf), ("name", "ci"), ("scope", "inference")]);
    assert_eq!(s, StatusCode::OK, "{html}");
    let at = html.find("value=\"sk-").expect("the new key") + 7;
    let key = html[at..].split('"').next().expect("key").to_owned();
    assert!(!get(&ada, "/t/acme/keys").1.contains(&key), "shown once");
    assert_eq!(server.call("GET", "/v1/models", Some(&key), None).0, StatusCode::OK);
    let key_id = key.split('-').nth(1).expect("key id");
    assert_eq!(post(&ada, &format!("/t/acme/keys/{key_id}/revoke"), &[("csrf", &csrf)]).0, StatusCode::SEE_OTHER);
    assert_eq!(server.call("GET", "/v1/models", Some(&key), None).0, StatusCode::UNAUTHORIZED, "revoked at once");

    // Members: an invitation link shown once; the audit page verifies the chain.
    let (s, html) =
        post(&ada, "/t/acme/members/invite", &[("csrf", &csrf), ("email", "carol@acme.com"), ("role", "member")]);
    assert_eq!(s, StatusCode::OK, "{html}");
    assert!(html.contains("accept?token=inv-") && html.contains("bob@acme.com"), "{html}");
    let (s, html) = get(&ada, "/t/acme/audit");
    assert_eq!(s, StatusCode::OK, "{html}");
    assert!(html.contains("Chain verified"), "{html}");

    // A viewer sees the members but opens neither data, keys nor the audit log, and a post of
    // theirs changes nothing.
    for path in ["/t/acme/datasets", "/t/acme/keys", "/t/acme/audit"] {
        assert_eq!(get(&bob, path).0, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(get(&bob, "/t/acme/members").0, StatusCode::OK);
    let bob_csrf = form_csrf(&get(&bob, "/dashboard").1);
    assert_eq!(
        post(&bob, "/t/acme/keys", &[("csrf", &bob_csrf), ("name", "x"), ("scope", "admin")]).0,
        StatusCode::FORBIDDEN
    );
    let (_, v) = server.call("GET", "/v1/api_keys", Some(&acme), None);
    assert!(!v.to_string().contains("\"name\":\"x\""), "{v}");
    // Another tenant's member finds nothing; no session goes to the sign-in page.
    assert_eq!(get(&gina, "/t/acme/datasets").0, StatusCode::NOT_FOUND);
    assert_eq!(get(&gina, "/t/nonexistent/datasets").0, StatusCode::NOT_FOUND);
    assert_eq!(get("ss-bogus", "/t/acme/datasets").0, StatusCode::SEE_OTHER);
    server.stop();
}

#[test]
fn a_totp_second_factor_is_set_up_on_the_web_and_asked_for_at_sign_in() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::launch(dir.path(), &[]);
    let acme = server.tenant("acme", "basic", 0);
    let (email, pw) = ("ada@acme.com", "a long enough passphrase");
    let session = join_and_sign_in(&server, &acme, email, "member", pw);
    let web = client_builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let url = |p: &str| format!("{}{p}", server.url);
    let with_session =
        |req: reqwest::blocking::RequestBuilder| req.header("cookie", format!("soramai_session={session}"));
    let page = with_session(web.get(url("/account"))).send().expect("account").text().expect("html");
    assert!(page.contains("Off:"), "{page}");
    let csrf = form_csrf(&page);
    let post = |path: &str, fields: &[(&str, &str)]| {
        let res = with_session(web.post(url(path)))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(fields))
            .send()
            .expect("post");
        (res.status(), res.text().expect("html"))
    };
    assert_eq!(post("/account/totp", &[("csrf", "forged")]).0, StatusCode::FORBIDDEN);
    let (s, html) = post("/account/totp", &[("csrf", &csrf)]);
    assert_eq!(s, StatusCode::OK, "{html}");
    let needle = "id=\"secret\" readonly value=\"";
    let at = html.find(needle).expect("the secret") + needle.len();
    let secret = html[at..].split('"').next().expect("secret").to_owned();
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let code = |at: u64| soramai::core::accounts::totp_code(&secret, email, at).expect("code");
    assert_eq!(post("/account/totp/confirm", &[("csrf", &csrf), ("code", "000000")]).0, StatusCode::BAD_REQUEST);
    let (s, _) = post("/account/totp/confirm", &[("csrf", &csrf), ("code", &code(now()))]);
    assert_eq!(s, StatusCode::SEE_OTHER);
    let page = with_session(web.get(url("/account"))).send().expect("account").text().expect("html");
    assert!(page.contains("On:"), "{page}");

    // Signing in now asks for the code, and takes a fresh one (the next step: the current one was
    // just used, and a step is accepted once).
    let page = web.get(url("/sign_in")).send().expect("page");
    let seed = cookie_value(&page, "soramai_csrf").expect("csrf cookie");
    let csrf = form_csrf(&page.text().expect("html"));
    let sign_in = |totp: &str| {
        web.post(url("/sign_in"))
            .header("cookie", format!("soramai_csrf={seed}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("email", email), ("password", pw), ("totp", totp), ("csrf", &csrf)]))
            .send()
            .expect("sign in")
    };
    let res = sign_in("");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.text().expect("html").contains("6-digit code"));
    let res = sign_in(&code(now() + 30));
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(cookie_value(&res, "soramai_session").is_some());
    server.stop();
}

#[test]
fn password_attempts_are_limited_per_client_address() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::launch(dir.path(), &[]);
    let from = |local: &str| {
        client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .local_address(local.parse::<std::net::IpAddr>().expect("address"))
            .build()
            .expect("client")
    };
    let url = |p: &str| format!("{}{p}", server.url);
    let attempt = |web: &Client, i: usize| {
        let page = web.get(url("/sign_in")).send().expect("page");
        let seed = cookie_value(&page, "soramai_csrf").expect("csrf cookie");
        let csrf = form_csrf(&page.text().expect("html"));
        // A new email each time: the per-email lockout never comes into play.
        let email = format!("guess{i}@example.com");
        web.post(url("/sign_in"))
            .header("cookie", format!("soramai_csrf={seed}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("email", &email), ("password", "a guessed password"), ("csrf", &csrf)]))
            .send()
            .expect("sign in")
            .status()
    };
    let one = from("127.0.0.1");
    for i in 0..10 {
        assert_eq!(attempt(&one, i), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    assert_eq!(attempt(&one, 10), StatusCode::TOO_MANY_REQUESTS, "the address is out of attempts");
    assert_eq!(attempt(&from("127.0.0.2"), 11), StatusCode::UNAUTHORIZED, "another address is not");
    server.stop();
}

/// The `data:` payloads of a server-sent event stream, `[DONE]` left out.
fn sse_chunks(body: &Value) -> Vec<Value> {
    body.as_str()
        .expect("an event stream")
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect()
}

#[test]
fn tools_are_called_with_valid_arguments_and_their_results_answered() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &model);
    let acme = server.tenant("acme", "pro", 1_000_000);
    let weather = json!({"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
            "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"], "additionalProperties": false}}});
    let time = json!({"type": "function", "function": {"name": "get_time", "parameters": {"type": "object",
        "properties": {"zone": {"type": "string", "maxLength": 12}}, "required": ["zone"], "additionalProperties": false}}});
    let question = json!([{"role": "user", "content": "What is the weather in Paris?"}]);
    let chat = |extra: Value| {
        let mut body = json!({"model": MODEL, "messages": question, "tools": [weather, time], "max_tokens": 80,
            "temperature": 1.0, "seed": 3});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        server.call("POST", "/v1/chat/completions", Some(&acme), Some(body))
    };
    let check_call = |call: &Value, names: &[&str]| {
        let name = call["function"]["name"].as_str().expect("name");
        assert!(names.contains(&name), "{call}");
        assert_eq!(call["type"], "function");
        assert!(call["id"].as_str().is_some_and(|id| id.starts_with("call_")), "{call}");
        let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().expect("arguments"))
            .unwrap_or_else(|e| panic!("{call}: {e}"));
        if name == "get_weather" {
            assert!(args["city"].as_str().is_some_and(|c| c.chars().count() <= 20), "{args}");
            assert!(["c", "f"].contains(&args["unit"].as_str().unwrap_or_default()), "{args}");
            assert_eq!(args.as_object().map(|o| o.len()), Some(2), "{args}");
        } else {
            assert!(args["zone"].is_string(), "{args}");
        }
        call.clone()
    };

    // Required: every choice is calls, each valid under its function's schema (a small model
    // offered parallel calls may repeat them until max_tokens: the complete ones come, with
    // finish_reason length).
    let (s, v) = chat(json!({"tool_choice": "required", "n": 3}));
    assert_eq!(s, StatusCode::OK, "{v}");
    for c in v["choices"].as_array().expect("choices") {
        assert!(["tool_calls", "length"].contains(&c["finish_reason"].as_str().unwrap_or_default()), "{v}");
        assert!(c["message"]["content"].is_null(), "{v}");
        let calls = c["message"]["tool_calls"].as_array().expect("tool_calls");
        assert!(!calls.is_empty(), "{v}");
        for call in calls {
            check_call(call, &["get_weather", "get_time"]);
        }
    }
    // A named function is the one called, once when parallel calls are off.
    let (s, v) = chat(json!({"tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": false}));
    assert_eq!(s, StatusCode::OK, "{v}");
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().expect("tool_calls").clone();
    assert_eq!(calls.len(), 1, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    let call = check_call(&calls[0], &["get_weather"]);

    // Streamed, the calls come as tool_calls deltas and the finish reason says so.
    let (s, body) = chat(json!({"tool_choice": "required", "stream": true, "parallel_tool_calls": false}));
    assert_eq!(s, StatusCode::OK, "{body}");
    let chunks = sse_chunks(&body);
    let deltas: Vec<&Value> =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array()).flatten().collect();
    assert!(!deltas.is_empty(), "{body}");
    for d in deltas {
        check_call(d, &["get_weather", "get_time"]);
    }
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"), "{body}");
    assert!(
        !chunks.iter().any(|c| c["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty())),
        "{body}"
    );

    // The call and its result go back in the history; the answer is text.
    let history = json!([
        question[0],
        {"role": "assistant", "content": null, "tool_calls": [call], "refusal": null},
        {"role": "tool", "tool_call_id": call["id"], "content": "{\"temperature\": 18, \"sky\": \"clear\"}"},
    ]);
    let (s, v) = server.call(
        "POST",
        "/v1/chat/completions",
        Some(&acme),
        Some(json!({"model": MODEL, "messages": history, "tools": [weather], "tool_choice": "none",
            "max_tokens": 24, "temperature": 0})),
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["choices"][0]["message"]["content"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
    assert!(v["choices"][0]["message"]["tool_calls"].is_null(), "{v}");

    // Malformed tools, choices and histories are 400s naming the parameter; nothing is charged.
    let (_, before) = server.call("GET", "/v1/usage", Some(&acme), None);
    let orphan = json!([question[0], {"role": "tool", "tool_call_id": "call_nope", "content": "x"}]);
    for (extra, param) in [
        (json!({"tool_choice": {"type": "function", "function": {"name": "nope"}}}), "tool_choice"),
        (json!({"tools": [{"type": "function", "function": {"name": "bad name"}}]}), "tools"),
        (json!({"tools": [weather, weather]}), "tools"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array", "uniqueItems": true}}}]}),
            "tools",
        ),
        (json!({"tools": [{"type": "retrieval"}]}), ""),
        (json!({"messages": orphan}), "messages"),
        (json!({"response_format": {"type": "json_object"}}), "response_format"),
        (json!({"tools": [], "tool_choice": "required"}), "tool_choice"),
    ] {
        let (s, v) = chat(extra.clone());
        assert_eq!(s, StatusCode::BAD_REQUEST, "{extra}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{extra}: {v}");
        if !param.is_empty() {
            assert_eq!(v["error"]["param"], param, "{extra}: {v}");
        }
    }
    let (_, after) = server.call("GET", "/v1/usage", Some(&acme), None);
    assert_eq!(after["credits"], before["credits"], "a refused request is not charged");
}

#[test]
fn responses_are_created_streamed_chained_and_kept_per_tenant() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &model);
    let acme = server.tenant("acme", "basic", 1_000_000);
    let globex = server.tenant("globex", "basic", 1_000_000);
    let create = |key: &str, body: Value| server.call("POST", "/v1/responses", Some(key), Some(body));

    let (s, r) =
        create(&acme, json!({"model": MODEL, "input": "Say hello.", "max_output_tokens": 6, "temperature": 0}));
    assert_eq!(s, StatusCode::OK, "{r}");
    let id = r["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("resp_") && r["object"] == "response", "{r}");
    assert_eq!(r["output"][0]["type"], "message", "{r}");
    assert_eq!(r["output"][0]["content"][0]["type"], "output_text", "{r}");
    assert!(["completed", "incomplete"].contains(&r["status"].as_str().unwrap_or_default()), "{r}");
    if r["status"] == "incomplete" {
        assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens", "{r}");
    }
    let text = r["output"][0]["content"][0]["text"].as_str().expect("text").to_owned();

    // Streamed: typed, numbered events whose deltas make the same text.
    let body = json!({"model": MODEL, "input": "Say hello.", "max_output_tokens": 6, "temperature": 0, "stream": true});
    let res = server.http.post(format!("{}/v1/responses", server.url)).bearer_auth(&acme).json(&body).send();
    let stream = res.expect("send").text().expect("stream");
    let names: Vec<&str> = stream.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    let events = sse_chunks(&json!(stream));
    assert_eq!(names.len(), events.len(), "{stream}");
    for (k, (name, ev)) in names.iter().zip(&events).enumerate() {
        assert_eq!(ev["type"], *name, "{ev}");
        assert_eq!(ev["sequence_number"], k, "{ev}");
    }
    assert_eq!(names[..2], ["response.created", "response.in_progress"], "{names:?}");
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().expect("delta"))
        .collect();
    assert_eq!(deltas, text);
    let last = events.last().expect("events");
    assert_eq!(last["response"]["output"][0]["content"][0]["text"], text.as_str(), "{last}");
    assert!(!stream.contains("[DONE]"), "{stream}");

    // Retrieved by its tenant only; continued by its tenant only.
    let (s, got) = server.call("GET", &format!("/v1/responses/{id}"), Some(&acme), None);
    assert_eq!((s, got["id"].as_str()), (StatusCode::OK, Some(id.as_str())), "{got}");
    let (s, v) = server.call("GET", &format!("/v1/responses/{id}"), Some(&globex), None);
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = create(&globex, json!({"model": MODEL, "input": "x", "previous_response_id": id}));
    assert_eq!((s, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("previous_response_id")), "{v}");
    let (s, next) =
        create(&acme, json!({"model": MODEL, "input": "Again.", "previous_response_id": id, "max_output_tokens": 4}));
    assert_eq!(s, StatusCode::OK, "{next}");
    assert!(next["usage"]["input_tokens"].as_u64() > r["usage"]["total_tokens"].as_u64(), "{next} {r}");
    // Its input items, as given, listed newest first by default.
    let body = json!({"model": MODEL, "max_output_tokens": 2, "input": [
        {"role": "user", "content": "One."}, {"role": "assistant", "content": "Two."},
        {"role": "user", "content": [{"type": "input_text", "text": "Three."}]}]});
    let (s, items_resp) = create(&acme, body);
    assert_eq!(s, StatusCode::OK, "{items_resp}");
    let listing = format!("/v1/responses/{}/input_items", items_resp["id"].as_str().expect("id"));
    let (s, list) = server.call("GET", &format!("{listing}?order=asc"), Some(&acme), None);
    assert_eq!(s, StatusCode::OK, "{list}");
    let texts: Vec<&str> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|i| i["content"][0]["text"].as_str().expect("text"))
        .collect();
    assert_eq!(texts, ["One.", "Two.", "Three."], "{list}");
    assert_eq!(list["data"][1]["content"][0]["type"], "output_text", "{list}");
    let (_, newest) = server.call("GET", &format!("{listing}?limit=1"), Some(&acme), None);
    assert_eq!(
        (newest["data"][0]["content"][0]["text"].as_str(), newest["has_more"].as_bool()),
        (Some("Three."), Some(true))
    );
    assert_eq!(server.call("GET", &listing, Some(&globex), None).0, StatusCode::NOT_FOUND);
    for bad in ["order=up", "limit=0", "limit=101", "include=message.output_text.logprobs"] {
        assert_eq!(
            server.call("GET", &format!("{listing}?{bad}"), Some(&acme), None).0,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    let (s, v) = server.call("DELETE", &format!("/v1/responses/{id}"), Some(&globex), None);
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = server.call("DELETE", &format!("/v1/responses/{id}"), Some(&acme), None);
    assert_eq!((s, v["deleted"].as_bool()), (StatusCode::OK, Some(true)), "{v}");
    assert_eq!(server.call("GET", &format!("/v1/responses/{id}"), Some(&acme), None).0, StatusCode::NOT_FOUND);
    // The response that continued it kept its own copy of the conversation.
    let next_id = next["id"].as_str().expect("id");
    let body = json!({"model": MODEL, "input": "More.", "previous_response_id": next_id, "max_output_tokens": 2});
    assert_eq!(create(&acme, body).0, StatusCode::OK);
    let (s, v) = create(&acme, json!({"model": MODEL, "input": "x", "store": false, "max_output_tokens": 2}));
    assert_eq!((s, v["store"].as_bool()), (StatusCode::OK, Some(false)), "{v}");
    let gone = format!("/v1/responses/{}", v["id"].as_str().expect("id"));
    assert_eq!(server.call("GET", &gone, Some(&acme), None).0, StatusCode::NOT_FOUND);

    // Hostile and unsupported input: a 400 naming the parameter, nothing charged or stored.
    let before = server.call("GET", "/v1/usage", Some(&acme), None).1;
    let refused = [
        (json!({"model": MODEL, "input": "x", "reasoning": {"effort": "low"}}), None),
        (json!({"model": MODEL, "input": "x", "background": true}), None),
        (json!({"model": MODEL, "input": "x", "truncation": "auto"}), None),
        (json!({"model": MODEL, "input": []}), Some("input")),
        (
            json!({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
            Some("input"),
        ),
        (
            json!({"model": MODEL, "input": [{"type": "function_call_output", "call_id": "nope", "output": "1"}]}),
            Some("input"),
        ),
        (json!({"model": MODEL, "input": [{"role": "user", "content": "x", "zz_content_zz": 1}]}), Some("input")),
        (json!({"model": MODEL, "input": "x", "tools": [{"type": "function", "name": "bad name!"}]}), Some("tools")),
        (json!({"model": MODEL, "input": "x", "tool_choice": "required"}), Some("tool_choice")),
        (
            json!({"model": MODEL, "input": "x", "text": {"format": {"type": "json_schema", "name": "s",
            "schema": {"type": "array", "uniqueItems": true}}}}),
            Some("text"),
        ),
        (
            json!({"model": MODEL, "input": "x", "previous_response_id": "resp_../../etc/passwd"}),
            Some("previous_response_id"),
        ),
        (json!({"model": MODEL, "input": "x", "metadata": {"k": "v".repeat(600)}}), Some("metadata")),
    ];
    for (body, param) in refused {
        let (s, v) = create(&acme, body.clone());
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"]["param"].as_str(), param, "{body}: {v}");
    }
    for path in
        ["/v1/responses/resp_..%2F..%2Fx", "/v1/responses/chatcmpl-1", "/v1/responses/resp_0123456789abcdef01234567"]
    {
        assert_eq!(server.call("GET", path, Some(&acme), None).0, StatusCode::NOT_FOUND, "{path}");
    }
    let after = server.call("GET", "/v1/usage", Some(&acme), None).1;
    assert!(before["credits"].is_i64(), "{before}");
    assert_eq!(before["credits"], after["credits"], "a refused request was charged");
    server.stop();
}

#[test]
fn a_cancel_is_cancelled_or_refused_with_the_final_state_on_both_sides_of_the_finish() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &model);
    // Pro: the polling below needs more than Basic's 60 requests a minute.
    let acme = server.tenant("acme", "pro", 1_000_000);
    let (s, file) = upload(&server, &acme, dataset());
    assert_eq!(s, StatusCode::OK, "{file}");
    let credits = || server.call("GET", "/v1/usage", Some(&acme), None).1["credits"].as_i64().expect("credits");
    let models = || server.call("GET", "/v1/models", Some(&acme), None).1["data"].as_array().expect("models").len();
    // "auto" (or left out) is chosen from the dataset's size (2 examples) and reported.
    for hyper in [json!({"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}), json!({})] {
        let tune = json!({"model": MODEL, "training_file": file["id"], "hyperparameters": hyper});
        let (s, job) = server.call("POST", "/v1/fine_tuning/jobs", Some(&acme), Some(tune));
        assert_eq!(s, StatusCode::OK, "{job}");
        let h = &job["hyperparameters"];
        assert_eq!((h["n_epochs"].as_u64(), h["batch_size"].as_u64()), (Some(25), Some(1)), "{job}");
        assert_eq!(h["learning_rate_multiplier"].as_f64(), Some(0.5), "{job}");
        let id = job["id"].as_str().expect("id");
        let _ = server.call("POST", &format!("/v1/fine_tuning/jobs/{id}/cancel"), Some(&acme), None);
        wait_job(&server, &acme, id);
    }
    let tune = json!({"model": MODEL, "training_file": file["id"], "hyperparameters": {"n_epochs": "many"}});
    let (s, v) = server.call("POST", "/v1/fine_tuning/jobs", Some(&acme), Some(tune));
    assert_eq!((s, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("hyperparameters")), "{v}");
    let (mut cancelled, mut refused) = (0, 0);
    // A short run (5 steps) cancelled later and later: each cancel is either accepted (the job
    // then ends cancelled, with no model and no charge beyond its checkpoints) or refused with a
    // 409 that names the state the job ended in.
    for delay_ms in [Some(0u64), Some(300), Some(700), Some(1500), Some(3000), None] {
        let tune = json!({"model": MODEL, "training_file": file["id"],
                          "hyperparameters": {"n_epochs": 5, "batch_size": 2, "rank": 2, "max_seq": 64}});
        let (before_credits, before_models) = (credits(), models());
        let (s, job) = server.call("POST", "/v1/fine_tuning/jobs", Some(&acme), Some(tune));
        assert_eq!(s, StatusCode::OK, "{job}");
        let id = job["id"].as_str().expect("id").to_owned();
        match delay_ms {
            Some(ms) => std::thread::sleep(Duration::from_millis(ms)),
            None => assert_eq!(wait_job(&server, &acme, &id)["status"], "succeeded"),
        }
        let (s, answer) = server.call("POST", &format!("/v1/fine_tuning/jobs/{id}/cancel"), Some(&acme), None);
        let job = wait_job(&server, &acme, &id);
        match s {
            StatusCode::OK => {
                cancelled += 1;
                assert_eq!(job["status"], "cancelled", "an accepted cancel ended {job}");
                assert!(job["fine_tuned_model"].is_null(), "{job}");
                assert_eq!(models(), before_models, "a cancelled job made a model");
                let events = format!("/v1/fine_tuning/jobs/{id}/events?limit=100");
                let (_, events) = server.call("GET", &events, Some(&acme), None);
                let checkpointed = events["data"]
                    .as_array()
                    .expect("events")
                    .iter()
                    .filter(|e| e["message"].as_str().is_some_and(|m| m.starts_with("Checkpoint")))
                    .filter_map(|e| e["data"]["trained_tokens"].as_i64())
                    .max()
                    .unwrap_or(0);
                assert!(before_credits - credits() <= checkpointed, "billed beyond the checkpoints: {events}");
            }
            StatusCode::CONFLICT => {
                refused += 1;
                assert_eq!(answer["error"]["code"], "invalid_state", "{answer}");
                let state = job["status"].as_str().expect("state");
                assert_ne!(state, "cancelled", "{job}");
                assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains(state)), "{answer} {job}");
            }
            other => panic!("cancel answered {other}: {answer}"),
        }
    }
    assert!(cancelled > 0 && refused > 0, "both sides of the finish: {cancelled} cancelled, {refused} refused");
    server.stop();
}
