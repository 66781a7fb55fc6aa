//! The official OpenAI clients (Python with strict response validation, and npm) drive
//! `soramai serve` through the whole flow: models, chat (plain and streaming), files, a
//! fine-tuning job followed to success, chat with the `ft:` model. The scripts live in
//! `tests/clients`; `scripts/openai-clients.sh` installs the clients (the test script runs it and
//! sets `SORAMAI_REQUIRE_CLIENTS`, so in CI a missing client fails instead of skipping).

use std::path::PathBuf;
use std::process::Command;

#[path = "../../soramai-kernels/tests/common/reference_model.rs"]
mod reference_model;
use reference_model::reference_model;

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
    let (Some(model), Some(python)) = (reference_model(), client("openai-venv/bin/python")) else { return };
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
    let (Some(model), Some(dir)) = (reference_model(), client("openai-node")) else { return };
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
