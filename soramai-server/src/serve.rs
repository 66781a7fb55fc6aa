//! Serving: the listener loop with TLS and graceful shutdown.

use std::sync::Arc;

use crate::state::AppState;

/// Serves until ctrl-c or SIGTERM, then lets running requests finish. With a TLS configuration
/// every connection is TLS (1.2 or 1.3, rustls); handshakes run concurrently, each with a time
/// limit, so a slow client never holds up the others. `limits` caps open connections and closes
/// slow and idle ones (see [`crate::conn`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: AppState,
    limits: crate::conn::ServeLimits,
) -> std::io::Result<()> {
    let platform = state.platform.clone();
    let signal = async move {
        shutdown_signal().await;
        // Long work in progress (an ingestion) stops at once and commits nothing; requests
        // finish within the grace.
        platform.begin_shutdown();
    };
    crate::conn::serve(listener, tls, crate::app::router(state), limits, signal).await
}

/// Loads a PEM certificate chain and private key into a rustls server configuration.
pub fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
