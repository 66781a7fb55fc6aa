//! The dashboard in a real browser: `tests/browser/dashboard.test.mjs` drives Debian's headless
//! Chromium with playwright-core through sign-up, the operator's console, an invitation, a
//! dataset, a fine-tune whose loss chart updates live, keys, a model deleted, an access grant
//! approved and revoked, TOTP and sign-out. `scripts/browser.sh` installs both (the test script
//! runs it and sets `SORAMAI_REQUIRE_BROWSER`, so in CI a missing browser fails instead of
//! skipping).

use std::path::PathBuf;
use std::process::Command;

#[path = "../../soramai-kernels/tests/common/reference_model.rs"]
mod reference_model;
use reference_model::reference_model;

/// Chromium and the playwright-core package, or the reason they are not here.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let node_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/browser");
    if !node_dir.join("node_modules/playwright-core").is_dir() {
        return Err(format!("{} has no playwright-core (run scripts/browser.sh)", node_dir.display()));
    }
    let chromium = std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if !chromium.exists() {
        return Err(format!("no Chromium at {} (run scripts/browser.sh)", chromium.display()));
    }
    Ok((chromium, node_dir))
}

#[test]
fn people_run_the_platform_from_the_dashboard_in_a_real_browser() {
    let Some(model) = reference_model() else { return };
    let (chromium, node_dir) = match browser() {
        Ok(found) => found,
        Err(why) => {
            assert!(std::env::var_os("SORAMAI_REQUIRE_BROWSER").is_none(), "{why}");
            eprintln!("skipped: {why}");
            return;
        }
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.test.mjs");
    let status = Command::new("node")
        .arg("--test")
        .arg(script)
        .env("SORAMAI_BIN", env!("CARGO_BIN_EXE_soramai"))
        .env("SORAMAI_TEST_MODEL", model)
        .env("BROWSER_NODE_DIR", node_dir)
        .env("CHROMIUM", chromium)
        .status()
        .expect("node");
    assert!(status.success(), "the browser flow failed");
}
