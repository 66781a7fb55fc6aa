//! The reference model (SmolLM2-135M-Instruct Q4_1) for tests, shared by every crate's tests
//! (the others include this file by path).

use std::path::PathBuf;

/// The reference model, from `SORAMAI_TEST_MODEL` or `.cache/models/` (where
/// `scripts/fetch-model.sh` puts it), as an absolute path. When it is absent the test is skipped,
/// unless `SORAMAI_REQUIRE_MODEL` is set (as the CI script does), which makes absence a failure.
pub fn reference_model() -> Option<PathBuf> {
    let p = std::env::var_os("SORAMAI_TEST_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    if p.is_file() {
        return Some(std::fs::canonicalize(&p).unwrap_or(p));
    }
    assert!(
        std::env::var_os("SORAMAI_REQUIRE_MODEL").is_none(),
        "reference model missing at {} (run scripts/fetch-model.sh)",
        p.display()
    );
    eprintln!("skipped: reference model not found at {} (run scripts/fetch-model.sh)", p.display());
    None
}
