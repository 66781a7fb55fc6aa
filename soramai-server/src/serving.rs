//! `soramai serve`: opens the platform (the bootstrap operator key printed once), then serves the
//! whole router with TLS, connection limits and a graceful shutdown.

use soramai::RunnerCommand;
use soramai_server::sso;

use crate::ServeArgs;

pub(crate) fn serve(a: &ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    std::fs::create_dir_all(&a.data_dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&a.data_dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(soramai_server::tls_config(cert, key)?),
        _ => None,
    };
    let runner = RunnerCommand { args: vec!["job-runner".into()], ..RunnerCommand::new(std::env::current_exe()?) };
    let options = soramai::OpenOptions {
        model: a.model.clone(),
        model_id: Some(a.model_id.clone()),
        workers: Some(a.workers),
        max_batch: Some(a.max_batch),
        database: a.database_url.clone().or_else(|| std::env::var("SORAMAI_DATABASE_URL").ok()),
        blob_store: a.blob_store.clone(),
        max_model_bytes: Some(a.max_model_bytes),
        prefill_chunk: Some(a.prefill_chunk as usize),
        prefix_cache_bytes: Some(a.prefix_cache_mib << 20),
    };
    let platform = soramai::Platform::open_with(&a.data_dir, &options, Some(runner))?;
    let mut out = std::io::stdout();
    if let Some(key) = platform.bootstrap_operator()? {
        writeln!(out, "bootstrap admin key (shown once, store it now): {}", key.secret())?;
    }
    let passkeys = a.public_url.as_deref().map(soramai::accounts::PasskeyConfig::new).transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&a.addr).await?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        writeln!(out, "listening on {scheme}://{}", listener.local_addr()?)?;
        out.flush()?;
        let state = soramai_server::AppState::new(platform.clone())
            .with_sign_up(a.open_sign_up)
            .with_password_attempts(a.password_attempts_per_minute);
        let state = match passkeys {
            Some(config) => state.with_passkeys(config),
            None => state,
        };
        // Single sign-on needs the address providers send people back to.
        let state = match &a.public_url {
            Some(url) => state.with_sso(sso::SsoOptions {
                redirect: format!("{}/sso/callback", url.trim_end_matches('/')),
                allow_http_loopback: a.sso_allow_http_loopback,
            }),
            None => state,
        };
        soramai_server::serve(listener, tls, state, a.limits()).await
    });
    // Blocking work still running (an ingestion stops at its next batch once shutdown began)
    // gets a bounded wait, never an unbounded one.
    rt.shutdown_timeout(SHUTDOWN_TAIL);
    served?;
    platform.shutdown();
    Ok(())
}

/// How long blocking work may run on after the server stopped serving.
const SHUTDOWN_TAIL: std::time::Duration = std::time::Duration::from_secs(10);
