//! The official OpenAI clients (Python with strict response validation, and npm) drive
//! `soramai serve` through the whole flow: models, chat (plain and streaming), files, a
//! fine-tuning job followed to success, chat with the `ft:` model. The scripts live in
//! `tests/clients`; `scripts/openai-clients.sh` installs the clients (the test script runs it and
//! sets `SORAMAI_REQUIRE_CLIENTS`, so in CI a missing client fails instead of skipping).

use std::path::PathBuf;
use std::process::Command;

fn model() -> Option<PathBuf> {
    let p = std::env::var_os("SORAMAI_TEST_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    if p.is_file() {
        return Some(std::fs::canonicalize(&p).expect("canonical path"));
    }
    assert!(std::env::var_os("SORAMAI_REQUIRE_MODEL").is_none(), "reference model missing at {}", p.display());
    eprintln!("skipped: no reference model (run scripts/fetch-model.sh)");
    None
}

/// The installed client under `.cache`, or a skip (a failure when clients are required).
fn client(path: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache").join(path);
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var_os("SORAMAI_REQUIRE_CLIENTS").is_none(),
        "{} missing: run scripts/openai-clients.sh",
        p.display()
    );
    eprintln!("skipped: {} missing (run scripts/openai-clients.sh)", p.display());
    None
}

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

#[test]
fn the_openai_python_client_runs_the_whole_flow() {
    let (Some(model), Some(python)) = (model(), client("openai-venv/bin/python")) else { return };
    let status = Command::new(python)
        .arg(scripts().join("openai_flow.py"))
        .arg(env!("CARGO_BIN_EXE_soramai"))
        .arg(model)
        .status()
        .expect("python");
    assert!(status.success(), "the openai Python client flow failed");
}

#[test]
fn the_openai_npm_client_runs_the_whole_flow() {
    let (Some(model), Some(dir)) = (model(), client("openai-node")) else { return };
    let status = Command::new("node")
        .arg("--test")
        .arg(scripts().join("openai_flow.test.mjs"))
        .env("SORAMAI_BIN", env!("CARGO_BIN_EXE_soramai"))
        .env("SORAMAI_TEST_MODEL", model)
        .env("OPENAI_NODE_DIR", dir)
        .status()
        .expect("node");
    assert!(status.success(), "the openai npm client flow failed");
}
