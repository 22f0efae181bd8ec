//! What every handler shares.

use std::sync::Arc;

use axum::extract::FromRef;
use rtunnel_core::mux::MuxConfig;
use rtunnel_core::ratelimit::{MemoryRateLimiter, RateLimiter};
use rtunnel_core::store::{
    AuditEvent, AuditReader, AuditSink, IdentityStore, LoginStore, ResourceStore, SessionStore,
    StoreError,
};
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::error::ApiError;

/// The stores a server runs on.
#[derive(Clone)]
pub struct Stores {
    /// Users, tokens, systems, grants.
    pub identity: Arc<dyn IdentityStore>,
    /// Support sessions.
    pub sessions: Arc<dyn SessionStore>,
    /// The audit log.
    pub audit: Arc<dyn AuditSink>,
    /// Reading the audit log back.
    pub audit_reader: Arc<dyn AuditReader>,
    /// Single-use tickets (live state: in process on one node).
    pub tickets: Arc<dyn rtunnel_core::ticket::TicketStore>,
    /// Launcher resources and their grants.
    pub resources: Arc<dyn ResourceStore>,
    /// Logins (refresh token families).
    pub logins: Arc<dyn LoginStore>,
    /// Failure budgets of logins and tunnel authentications (live state).
    pub limiter: Arc<dyn RateLimiter>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

impl Stores {
    /// Every store on one SQLite database.
    pub fn sqlite(store: rtunnel_core::store::sql::SqlStore) -> Self {
        let store = Arc::new(store);
        Stores {
            identity: store.clone(),
            sessions: store.clone(),
            resources: store.clone(),
            logins: store.clone(),
            audit_reader: store.clone(),
            audit: store,
            tickets: Arc::new(rtunnel_core::ticket::MemoryTicketStore::new()),
            limiter: Arc::new(MemoryRateLimiter::new()),
        }
    }
}

/// Shared state of a running server.
pub struct AppState {
    /// Configuration.
    pub config: ServerConfig,
    /// Durable state.
    pub stores: Stores,
    /// The audit log as the server writes it.
    pub audit: Audit,
    /// Tunnels here and routes to the other nodes'.
    pub tunnels: crate::routing::Tunnels,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Signs and verifies the server's tokens.
    pub signer: Arc<dyn rtunnel_core::token::TokenSigner>,
    /// Signs the session launcher's tokens.
    pub(crate) launch_signer: rtunnel_auth::launch_token::LaunchSigner,
    /// Tells open connections to check their access again.
    pub access: crate::revocation::Access,
    /// Terminal recordings.
    pub recordings: Arc<dyn rtunnel_core::recording::RecordingStore>,
    /// The recordings of shared terminals open on this node.
    pub(crate) terminal_recordings: crate::terminal::recording::SharedRecordings,
    /// The subdomain proxy's client and visits.
    pub(crate) proxy: crate::proxy::Proxy,
    /// Refusals counted rather than audited one by one.
    pub(crate) refusals: crate::refusals::Refusals,
    /// Password checks that may run at once (argon2 on blocking threads).
    pub(crate) password_checks: Arc<tokio::sync::Semaphore>,
    /// Support sessions through their lifecycle, and the sweeper.
    pub lifecycle: crate::lifecycle::Lifecycle,
    /// Single-use tickets.
    pub tickets: crate::tickets::Tickets,
    /// The access log: entries written before bytes flow, closes batched.
    pub access_log: crate::access_log::AccessLogWriter,
    /// The console's cookies and the requests that may use them.
    pub(crate) browser: crate::api::browser::BrowserPolicy,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .field("tunnels", &self.tunnels)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// yamux settings for tunnels and forwards.
    pub fn mux_config(&self) -> MuxConfig {
        MuxConfig::default()
    }
}

/// The audit log as the server writes it. Clones share the sink.
#[derive(Clone)]
pub struct Audit {
    sink: Arc<dyn AuditSink>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

impl Audit {
    /// Writes to `sink`.
    pub fn new(sink: Arc<dyn AuditSink>) -> Self {
        Audit { sink }
    }

    /// Stores an event before what it records happens: access must not
    /// open if this fails (503 `audit_unavailable`).
    pub async fn record(&self, event: AuditEvent) -> Result<(), ApiError> {
        self.sink
            .record(&event)
            .await
            .map_err(|e| ApiError::unavailable("audit_unavailable", e))
    }

    /// Stores an event where nothing waits on it (it records something
    /// that already happened); a failure is logged.
    pub async fn best_effort(&self, event: AuditEvent) {
        if let Err(e) = self.sink.record(&event).await {
            log_store_error("audit", &e);
        }
    }
}

impl FromRef<Arc<AppState>> for Audit {
    fn from_ref(state: &Arc<AppState>) -> Self {
        state.audit.clone()
    }
}

impl FromRef<Arc<AppState>> for crate::revocation::AccessWatch {
    fn from_ref(state: &Arc<AppState>) -> Self {
        state.access.watch().clone()
    }
}

impl FromRef<Arc<AppState>> for crate::revocation::Access {
    fn from_ref(state: &Arc<AppState>) -> Self {
        state.access.clone()
    }
}

impl FromRef<Arc<AppState>> for crate::lifecycle::Lifecycle {
    fn from_ref(state: &Arc<AppState>) -> Self {
        state.lifecycle.clone()
    }
}

impl FromRef<Arc<AppState>> for crate::tickets::Tickets {
    fn from_ref(state: &Arc<AppState>) -> Self {
        state.tickets.clone()
    }
}

impl FromRef<Arc<AppState>> for crate::routing::Tunnels {
    fn from_ref(state: &Arc<AppState>) -> Self {
        state.tunnels.clone()
    }
}

impl FromRef<Arc<AppState>> for crate::events::Events {
    fn from_ref(state: &Arc<AppState>) -> Self {
        state.tunnels.cluster.events().clone()
    }
}

impl FromRef<Arc<AppState>> for crate::api::browser::BrowserPolicy {
    fn from_ref(state: &Arc<AppState>) -> Self {
        state.browser.clone()
    }
}

impl FromRef<Arc<AppState>> for Stores {
    fn from_ref(state: &Arc<AppState>) -> Self {
        state.stores.clone()
    }
}

/// Logs a store failure that has no caller to answer.
pub(crate) fn log_store_error(what: &str, e: &StoreError) {
    crate::metrics::global().store_error();
    tracing::error!(error = %e, "{what} failed");
}
