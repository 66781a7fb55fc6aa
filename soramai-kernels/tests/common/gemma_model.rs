//! Gemma 3 270M (Q4_K_M) for tests, shared by every crate's tests (the others include this file by
//! path), as `reference_model.rs` is for the reference model.

use std::path::PathBuf;

/// Gemma 3 270M, from `SORAMAI_TEST_GEMMA` or `.cache/models/` (where `scripts/fetch-gemma.sh`
/// puts it). When it is absent the test is skipped, unless `SORAMAI_REQUIRE_GEMMA` is set (as the
/// CI script does), which makes absence a failure.
pub fn gemma_model() -> Option<PathBuf> {
    let p = std::env::var_os("SORAMAI_TEST_GEMMA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/gemma-3-270m-q4_k_m.gguf"));
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var_os("SORAMAI_REQUIRE_GEMMA").is_none(),
        "Gemma 3 270M missing at {} (run scripts/fetch-gemma.sh)",
        p.display()
    );
    eprintln!("skipped: Gemma 3 270M not found at {} (run scripts/fetch-gemma.sh)", p.display());
    None
}
