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

/// SIGHUP, each time it comes (Unix; never elsewhere). Installing it means
/// the signal no longer ends the process.
#[derive(Debug)]
pub struct Hangups(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

/// Starts listening for SIGHUP.
pub fn hangups() -> Hangups {
    #[cfg(unix)]
    {
        Hangups(tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok())
    }
    #[cfg(not(unix))]
    {
        Hangups()
    }
}

impl Hangups {
    /// The next SIGHUP.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.0 {
            s.recv().await;
            return;
        }
        std::future::pending::<()>().await
    }
}
