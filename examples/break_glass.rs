//! Operator access, as an embedding program sees it: the platform admin hands a tenant its first
//! key and nothing more; to look at the tenant's data it asks for a break-glass grant (a reason,
//! an hour at most, no more than its own scopes), which the tenant sees in its audit log and ends
//! at once.
//!
//! ```sh
//! cargo run -p soramai-examples --bin break-glass [-- --data-dir DIR]
//! ```

use std::path::PathBuf;

use soramai::{GrantInput, KeyRequest, OpenOptions, Platform, PlatformError, Scope, Tier};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("break-glass: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let scratch = tempfile::tempdir()?;
    let data_dir = args
        .iter()
        .position(|a| a == "--data-dir")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| scratch.path().join("data"), PathBuf::from);
    let platform = Platform::open_with(&data_dir, &OpenOptions::default(), None)?;
    let admin_key = platform.bootstrap_operator()?.ok_or("this data directory was bootstrapped before")?;
    let admin = platform.session(admin_key.secret())?;

    // The tenant and its first key: the only key the operator ever hands out for it.
    admin.create_tenant("acme", Tier::Org)?;
    let first = admin.create_api_key(KeyRequest {
        name: "owner".into(),
        scopes: vec![Scope::Admin, Scope::Train],
        tenant: Some("acme".into()),
        expires_in_seconds: None,
    })?;
    let acme = platform.session(first.secret())?;
    let ds = acme.upload_dataset(
        "notes.jsonl",
        br#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}"#,
    )?;

    // A second operator key for acme is refused: that is what grants are for.
    let second = admin.create_api_key(KeyRequest {
        name: "peek".into(),
        scopes: vec![Scope::Train],
        tenant: Some("acme".into()),
        expires_in_seconds: None,
    });
    match second {
        Err(e @ PlatformError::Core(soramai::Error::OperatorAccess(_))) => {
            println!("second operator key: refused ({e})")
        }
        other => return Err(format!("a second operator key must be refused, got {other:?}").into()),
    }

    // A grant on an Org tenant waits for the tenant's approval; its key reads nothing before.
    let request =
        GrantInput { reason: "INC-42: upload stuck".into(), scopes: vec![Scope::Train], ttl_seconds: Some(600) };
    let grant = admin.request_access_grant("acme", request)?;
    println!("grant {} is {:?}", grant.grant.id, grant.grant.status);
    if platform.session(grant.key.secret()).is_ok() {
        return Err("a pending grant's key must read nothing".into());
    }
    acme.approve_access_grant(grant.grant.id.as_str())?;
    let peek = platform.session(grant.key.secret())?;
    println!("under the grant the operator reads {} bytes of {}", peek.download_dataset(ds.id.as_str())?.len(), ds.id);

    // The tenant sees it all in its own log, and ends the grant at once.
    for r in acme.audit_log()?.iter().filter(|r| r.action.starts_with("access_grant.")) {
        println!("  #{:<3} {:<24} {}", r.seq, r.action, r.actor);
    }
    acme.revoke_access_grant(grant.grant.id.as_str())?;
    if peek.download_dataset(ds.id.as_str()).is_ok() {
        return Err("a revoked grant must read nothing".into());
    }
    println!("revoked: the grant's key reads nothing; audit chain verified ({} records)", acme.verify_audit()?.records);
    Ok(())
}
