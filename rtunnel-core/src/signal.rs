//! Waiting for the process to be asked to stop.

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM.
pub async fn terminated() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("interrupted (SIGINT): stopping"),
        _ = term => tracing::info!("asked to stop (SIGTERM): stopping"),
    }
}
