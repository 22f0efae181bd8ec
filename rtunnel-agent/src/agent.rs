//! The agent: dial out, say hello, send the manifest, serve streams, and
//! come back after every failure with exponential backoff and jitter.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rtunnel_core::control::HandshakeError;
use rtunnel_core::frame::write_frame;
use rtunnel_core::ids::SessionId;
use rtunnel_core::link::{self, LinkEnd};
use rtunnel_core::mux::{MuxConfig, MuxStream, WireMux, shared};
use rtunnel_core::proto::{
    CloseCode, Control, RefusalCode, Resume, ServiceInfo, StreamHeader, StreamKind, StreamReply,
    TerminalOpen,
};
use rtunnel_core::relay::{Unchunked, relay_chunks};
use rtunnel_core::setup::{accept_header, refuse};
use rtunnel_core::ws::CLOSE_SESSION_CLOSED;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::dial::{DialError, DialOptions, dial};
use crate::handler::{HandlerService, ServiceStream, StreamHandler};
use crate::http_proxy::Proxy;
use crate::services::ServiceSpec;
use crate::terminal::{TERMINAL_SERVICE, TerminalConfig};

/// How long the server has to name a stream's service, and a target to
/// accept a connection.
pub const STREAM_SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a shared terminal waits, detached, by default.
pub const DEFAULT_TERMINAL_DETACH_TIMEOUT: Duration = Duration::from_secs(300);

/// The software string sent in the hello.
pub const SOFTWARE: &str = concat!("rtunnel-agent/", env!("CARGO_PKG_VERSION"));

/// One server an agent may dial.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `ws(s)://HOST[:PORT]/api/v1/tunnel`.
    pub url: String,
    /// Dial it through this HTTP proxy.
    pub proxy: Option<Proxy>,
}

/// Settings of an agent.
#[derive(Clone)]
pub struct AgentConfig {
    /// The servers to dial, in order: the agent stays with one while it
    /// works and moves to the next when it fails (nodes of one cluster).
    pub endpoints: Vec<Endpoint>,
    /// System key.
    pub key: String,
    /// System secret.
    pub secret: String,
    /// What the agent offers.
    pub services: Vec<ServiceSpec>,
    /// First reconnect delay; doubles up to `max_reconnect_delay`.
    pub reconnect_delay: Duration,
    /// Longest reconnect delay.
    pub max_reconnect_delay: Duration,
    /// Accept any certificate from a `wss://` server.
    pub tls_insecure: bool,
    /// Certificates trusted besides the system's roots, for the server
    /// and for `:tls` services (`--ca-file`).
    pub ca_roots: crate::tls::ExtraRoots,
    /// The built-in terminal, if offered.
    pub terminal: Option<TerminalConfig>,
    /// Services served in this process ([`AgentBuilder::handler`]).
    handlers: Vec<HandlerService>,
    /// Where the session is kept across restarts (`--state-dir`).
    pub state: Option<crate::state::StateFile>,
    /// Whether and how the customer is asked (`--consent`).
    pub consent: crate::consent::ConsentConfig,
    /// The agent's own access log (`--access-log`).
    pub access_log: Option<crate::access_log::AccessLogFile>,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("endpoints", &self.endpoints)
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("services", &self.services)
            .field("reconnect_delay", &self.reconnect_delay)
            .field("max_reconnect_delay", &self.max_reconnect_delay)
            .field("tls_insecure", &self.tls_insecure)
            .field("ca_roots", &(!self.ca_roots.is_empty()))
            .field("terminal", &self.terminal)
            .field("handlers", &self.handlers)
            .field("state", &self.state)
            .field("consent", &self.consent)
            .field("access_log", &self.access_log)
            .finish()
    }
}

/// Why an agent stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// Another agent with the same credentials took over the session.
    #[error("replaced: {0} (one agent per system holds its tunnel; this one stops)")]
    Replaced(String),
    /// An administrator replaced the system's secret.
    #[error("the server revoked this system's credentials ({0}); configure the new secret")]
    CredentialsRevoked(String),
}

/// How an agent's run ended without error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentExit {
    /// An operator closed the session; the agent must not reconnect.
    SessionClosed(String),
    /// The shutdown future resolved.
    Shutdown,
}

/// Builds an [`Agent`].
#[derive(Debug, Default)]
pub struct AgentBuilder {
    urls: Vec<String>,
    endpoints: Vec<Endpoint>,
    key: Option<String>,
    secret: Option<String>,
    services: Vec<ServiceSpec>,
    reconnect_delay: Option<Duration>,
    max_reconnect_delay: Option<Duration>,
    tls_insecure: bool,
    proxy: Option<Proxy>,
    terminal: Option<TerminalConfig>,
    handlers: Vec<HandlerService>,
    state_dir: Option<std::path::PathBuf>,
    ca_file: Option<std::path::PathBuf>,
    consent: crate::consent::ConsentConfig,
    access_log: Option<std::path::PathBuf>,
    terminal_detach_timeout: Option<Duration>,
}

impl AgentBuilder {
    /// Keeps the session and its reconnect token in `dir` (`--state-dir`),
    /// so an agent restarted within the grace period resumes its session.
    pub fn state_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.state_dir = dir;
        self
    }

    /// Offers a service served in this process: every stream an operator
    /// opens to `name` (a forward, the subdomain proxy) goes to `handler`.
    pub fn handler(mut self, name: impl Into<String>, handler: impl StreamHandler) -> Self {
        self.handlers.push(HandlerService {
            name: name.into(),
            handler: Arc::new(handler),
        });
        self
    }

    /// Offers the built-in `terminal` service (a shell on a PTY); off
    /// unless set (the `rtunnel-agent` binary turns it on unless
    /// `--no-terminal`).
    pub fn terminal(mut self, terminal: Option<TerminalConfig>) -> Self {
        self.terminal = terminal;
        self
    }

    /// A server's tunnel URL, `ws(s)://HOST[:PORT]/api/v1/tunnel`, dialed
    /// through [`AgentBuilder::proxy`] if set. Call it once per node of a
    /// cluster: the agent fails over between them in order.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.urls.push(url.into());
        self
    }

    /// A server to dial with its own proxy setting (see [`Proxy::resolve`]:
    /// `NO_PROXY` may exempt one server and not another).
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// The system's key and secret.
    pub fn credentials(mut self, key: impl Into<String>, secret: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self.secret = Some(secret.into());
        self
    }

    /// Asks the customer before operators come in (`--consent`).
    pub fn consent(mut self, consent: crate::consent::ConsentConfig) -> Self {
        self.consent = consent;
        self
    }

    /// How long a shared terminal waits, detached, for someone to attach
    /// before its shell is ended (`--terminal-detach-timeout`, default 5m).
    pub fn terminal_detach_timeout(mut self, timeout: Duration) -> Self {
        self.terminal_detach_timeout = Some(timeout);
        self
    }

    /// Appends a JSON line per stream to this file (`--access-log`).
    pub fn access_log(mut self, path: Option<std::path::PathBuf>) -> Self {
        self.access_log = path;
        self
    }

    /// Trusts the CA certificates of this PEM file besides the system's
    /// roots, for the server (`wss://`) and for `:tls` services.
    pub fn ca_file(mut self, path: Option<std::path::PathBuf>) -> Self {
        self.ca_file = path;
        self
    }

    /// Adds services to the manifest.
    pub fn services(mut self, services: impl IntoIterator<Item = ServiceSpec>) -> Self {
        self.services.extend(services);
        self
    }

    /// First reconnect delay (default 5 s).
    pub fn reconnect_delay(mut self, d: Duration) -> Self {
        self.reconnect_delay = Some(d);
        self
    }

    /// Longest reconnect delay (default 5 min).
    pub fn max_reconnect_delay(mut self, d: Duration) -> Self {
        self.max_reconnect_delay = Some(d);
        self
    }

    /// Accept any certificate from a `wss://` server.
    pub fn tls_insecure(mut self, yes: bool) -> Self {
        self.tls_insecure = yes;
        self
    }

    /// Dial the servers given with [`AgentBuilder::url`] through an HTTP
    /// proxy with `CONNECT` (see [`Proxy::resolve`] for the usual
    /// environment variables).
    pub fn proxy(mut self, proxy: Option<Proxy>) -> Self {
        self.proxy = proxy;
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<Agent, AgentError> {
        let mut endpoints = self.endpoints;
        endpoints.extend(self.urls.into_iter().map(|url| Endpoint {
            url,
            proxy: self.proxy.clone(),
        }));
        if endpoints.is_empty() {
            return Err(AgentError::Config("--url is required".into()));
        }
        if let Some(bad) = endpoints
            .iter()
            .find(|e| !(e.url.starts_with("ws://") || e.url.starts_with("wss://")))
        {
            return Err(AgentError::Config(format!(
                "--url must start with ws:// or wss://, got {:?}",
                bad.url
            )));
        }
        let key = self
            .key
            .filter(|k| !k.is_empty())
            .ok_or_else(|| AgentError::Config("--key is required".into()))?;
        let secret = self.secret.filter(|s| !s.is_empty()).ok_or_else(|| {
            AgentError::Config("a secret is required (--secret-file or RTUNNEL_SECRET)".into())
        })?;
        if key.contains(':') {
            return Err(AgentError::Config("the key cannot contain ':'".into()));
        }
        check_names(&self.services, &self.handlers)?;
        let state =
            match &self.state_dir {
                None => None,
                Some(dir) => Some(crate::state::StateFile::in_dir(dir).map_err(|e| {
                    AgentError::Config(format!("--state-dir {}: {e}", dir.display()))
                })?),
            };
        let ca_roots = match &self.ca_file {
            Some(path) => crate::tls::ExtraRoots::load(path).map_err(AgentError::Config)?,
            None => crate::tls::ExtraRoots::default(),
        };
        self.consent.check().map_err(AgentError::Config)?;
        let access_log = match &self.access_log {
            Some(path) => Some(crate::access_log::AccessLogFile::open(path).map_err(|e| {
                AgentError::Config(format!("--access-log {}: {e}", path.display()))
            })?),
            None => None,
        };
        let reconnect_delay = self.reconnect_delay.unwrap_or(Duration::from_secs(5));
        let max_reconnect_delay = self.max_reconnect_delay.unwrap_or(Duration::from_secs(300));
        if reconnect_delay < Duration::from_millis(10) {
            return Err(AgentError::Config(
                "--reconnect-delay must be at least 10ms".into(),
            ));
        }
        let offered = Arc::new(watch::channel(Arc::new(self.services.clone())).0);
        Ok(Agent {
            offered,
            consent: Arc::new(crate::consent::Consent::new(self.consent.clone())),
            hub: Arc::new(crate::terminal::hub::Hub::new(
                self.terminal_detach_timeout
                    .unwrap_or(DEFAULT_TERMINAL_DETACH_TIMEOUT),
            )),
            config: Arc::new(AgentConfig {
                endpoints,
                key,
                secret,
                services: self.services,
                reconnect_delay,
                max_reconnect_delay,
                tls_insecure: self.tls_insecure,
                ca_roots,
                terminal: self.terminal,
                handlers: self.handlers,
                state,
                consent: self.consent,
                access_log,
            }),
            status: Arc::new(watch::channel(AgentStatus::Connecting).0),
            had_session: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }
}

/// Checks the names of what an agent offers: valid, not `terminal`, and
/// each once.
fn check_names(services: &[ServiceSpec], handlers: &[HandlerService]) -> Result<(), AgentError> {
    let names: Vec<&str> = services
        .iter()
        .map(|s| s.name.as_str())
        .chain(handlers.iter().map(|h| h.name.as_str()))
        .collect();
    if names.contains(&TERMINAL_SERVICE) {
        return Err(AgentError::Config(format!(
            "the service name {TERMINAL_SERVICE:?} is reserved for the built-in terminal"
        )));
    }
    for (i, name) in names.iter().enumerate() {
        rtunnel_core::proto::validate_service_name(name)
            .map_err(|e| AgentError::Config(e.to_string()))?;
        if names[..i].contains(name) {
            return Err(AgentError::Config(format!(
                "the service name {name:?} is offered twice"
            )));
        }
    }
    if names.len() + 1 > rtunnel_core::proto::MAX_MANIFEST_SERVICES {
        return Err(AgentError::Config(format!(
            "{} services offered, at most {} allowed",
            names.len(),
            rtunnel_core::proto::MAX_MANIFEST_SERVICES - 1
        )));
    }
    Ok(())
}

/// A configured agent; [`Agent::run`] keeps it connected.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use rtunnel_agent::{Agent, parse_services};
///
/// let agent = Agent::builder()
///     .url("wss://support.example.com/api/v1/tunnel")
///     .credentials("sys_0123456789abcdef01234567", std::env::var("RTUNNEL_SECRET")?)
///     .services(parse_services("ssh=127.0.0.1:22,web=127.0.0.1:443:tls")?)
///     .build()?;
/// agent.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Agent {
    config: Arc<AgentConfig>,
    status: Arc<watch::Sender<AgentStatus>>,
    /// Whether a tunnel of this agent was ever active (a session exists).
    had_session: Arc<std::sync::atomic::AtomicBool>,
    /// The services offered now (`config.services` at first).
    offered: Arc<watch::Sender<Arc<Vec<ServiceSpec>>>>,
    /// The customer's answers, kept across reconnects.
    consent: Arc<crate::consent::Consent>,
    /// Live shared terminals, kept across reconnects.
    hub: Arc<crate::terminal::hub::Hub>,
}

/// Where an agent is ([`Agent::status`], [`AgentHandle::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AgentStatus {
    /// Dialing a server.
    Connecting,
    /// Connected, serving its session.
    Active {
        /// The support session.
        session_id: SessionId,
    },
    /// The tunnel failed or was lost: dialing again after `retry_in`.
    Reconnecting {
        /// How long until the next attempt.
        retry_in: Duration,
        /// What went wrong.
        reason: String,
    },
    /// Stopped for good: the session was closed, the credentials were
    /// replaced or revoked, or the agent was shut down.
    Closed {
        /// Why.
        reason: String,
    },
}

/// An agent running in the background ([`Agent::spawn`]). Dropping it
/// stops the agent.
#[derive(Debug)]
pub struct AgentHandle {
    status: watch::Receiver<AgentStatus>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<AgentExit, AgentError>>>,
}

impl AgentHandle {
    /// Its status, as it changes.
    pub fn status(&self) -> watch::Receiver<AgentStatus> {
        self.status.clone()
    }

    /// Stops the agent (closing its tunnel) and returns how its run ended.
    pub async fn shutdown(mut self) -> Result<AgentExit, AgentError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.wait().await
    }

    /// Waits for the agent to stop: on its own (a closed session, revoked
    /// credentials) or after [`AgentHandle::shutdown`]. Cancel-safe: the
    /// agent keeps running if this future is dropped.
    pub async fn wait(&mut self) -> Result<AgentExit, AgentError> {
        let Some(task) = self.task.as_mut() else {
            return Ok(AgentExit::Shutdown);
        };
        let ended = task.await;
        self.task = None;
        ended.unwrap_or_else(|e| Err(AgentError::Config(format!("the agent task failed: {e}"))))
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

enum Outcome {
    /// An operator closed the session.
    Closed(String),
    /// The server is restarting: come back at once.
    Restarting,
    /// Another agent took over.
    Replaced(String),
    /// The system's secret was replaced.
    Revoked(String),
    /// The tunnel was up and then was lost.
    Lost(String),
    /// The tunnel never came up.
    Failed(String, Option<&'static str>, Option<Duration>),
    /// The server is busy and said when to come back.
    Busy(String, Duration),
}

impl Agent {
    /// Starts building an agent.
    pub fn builder() -> AgentBuilder {
        AgentBuilder::default()
    }

    /// Its settings.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Its status, as it changes.
    pub fn status(&self) -> watch::Receiver<AgentStatus> {
        self.status.subscribe()
    }

    /// The services offered now (besides in-process handlers and the
    /// terminal).
    pub fn services(&self) -> Arc<Vec<ServiceSpec>> {
        self.offered.borrow().clone()
    }

    /// Offers `services` instead of the current ones, without
    /// reconnecting: a connected agent sends the server its new manifest
    /// (a server applies at most one change a second). Streams already
    /// open stay open; new ones see the new list. Returns whether anything
    /// changed; the same checks as [`AgentBuilder::build`] apply.
    pub fn set_services(&self, services: Vec<ServiceSpec>) -> Result<bool, AgentError> {
        check_names(&services, &self.config.handlers)?;
        Ok(self.offered.send_if_modified(|now| {
            if **now == services {
                return false;
            }
            *now = Arc::new(services);
            true
        }))
    }

    /// Runs the agent in the background (see [`Agent::run`]).
    pub fn spawn(self) -> AgentHandle {
        let status = self.status();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            self.run(async move {
                let _ = stopped.await;
            })
            .await
        });
        AgentHandle {
            status,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn set_status(&self, status: AgentStatus) {
        if matches!(status, AgentStatus::Active { .. }) {
            self.had_session
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.status.send_replace(status);
    }

    /// Whether the server ever gave this agent a session (its tunnel was
    /// active at least once), since it was built.
    pub fn had_session(&self) -> bool {
        self.had_session.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Connects and serves until the session is closed by an operator or
    /// `shutdown` resolves, reconnecting after every failure.
    pub async fn run<F: Future<Output = ()>>(&self, shutdown: F) -> Result<AgentExit, AgentError> {
        let ended = self.run_until(shutdown).await;
        let reason = match &ended {
            Ok(AgentExit::SessionClosed(reason)) => format!("session closed: {reason}"),
            Ok(AgentExit::Shutdown) => "shut down".to_owned(),
            Err(e) => e.to_string(),
        };
        self.set_status(AgentStatus::Closed { reason });
        ended
    }

    async fn run_until<F: Future<Output = ()>>(
        &self,
        shutdown: F,
    ) -> Result<AgentExit, AgentError> {
        let cfg = &self.config;
        for endpoint in &cfg.endpoints {
            if plain_beyond_loopback(&endpoint.url) {
                tracing::warn!(
                    "{} is not encrypted and not on this machine: the system's secret and \
                     everything the operators do cross the network in the clear; use wss://",
                    endpoint.url
                );
            }
        }
        let mut backoff = Backoff::new(cfg.reconnect_delay, cfg.max_reconnect_delay);
        let mut shutdown = std::pin::pin!(shutdown);
        // The session and reconnect token of the last welcome, presented at
        // the next connection to get the same session back.
        // Kept across restarts with `--state-dir`.
        let mut resume: Option<Resume> = cfg.state.as_ref().and_then(|s| s.load());
        if let (Some(r), Some(state)) = (&resume, &cfg.state) {
            tracing::info!(session = %r.session_id, path = %state.path().display(), "resuming the session kept in the state file");
        }
        // The endpoint dialed next: kept while it works, the next one after
        // a failure, a lost tunnel or a restarting server.
        let mut at = 0;
        loop {
            let endpoint = &cfg.endpoints[at % cfg.endpoints.len()];
            self.set_status(AgentStatus::Connecting);
            let outcome = tokio::select! {
                o = self.connect_and_serve(endpoint, &mut resume) => o,
                _ = &mut shutdown => return Ok(AgentExit::Shutdown),
            };
            if matches!(
                outcome,
                Outcome::Restarting | Outcome::Lost(_) | Outcome::Failed(..) | Outcome::Busy(..)
            ) && cfg.endpoints.len() > 1
            {
                at = (at + 1) % cfg.endpoints.len();
                let next = &cfg.endpoints[at].url;
                tracing::info!("next attempt goes to {next}");
            }
            if matches!(
                outcome,
                Outcome::Closed(_) | Outcome::Replaced(_) | Outcome::Revoked(_)
            ) && let Some(state) = &cfg.state
            {
                // Over for good: a restart starts afresh.
                state.clear();
            }
            let (delay, reason) = match outcome {
                Outcome::Closed(reason) => {
                    tracing::info!("session over: {reason}; not reconnecting");
                    return Ok(AgentExit::SessionClosed(reason));
                }
                Outcome::Replaced(reason) => return Err(AgentError::Replaced(reason)),
                Outcome::Revoked(reason) => return Err(AgentError::CredentialsRevoked(reason)),
                Outcome::Restarting => {
                    backoff.reset();
                    // Spread the herd of agents coming back to one server.
                    let d = cfg
                        .reconnect_delay
                        .min(Duration::from_secs(1))
                        .mul_f64(rand::random::<f64>());
                    tracing::info!("server is restarting; reconnecting in {}", rounded(d));
                    (d, "the server is restarting".to_owned())
                }
                Outcome::Lost(reason) => {
                    backoff.reset();
                    let d = backoff.next_delay();
                    tracing::warn!("tunnel lost: {reason}; reconnecting in {}", rounded(d));
                    (d, reason)
                }
                Outcome::Busy(reason, wait) => {
                    // The wait the server asked for, as it is: the backoff
                    // neither grows nor adds to it.
                    tracing::info!(
                        "{reason}; coming back in {} as the server asked",
                        rounded(wait)
                    );
                    (wait, reason)
                }
                Outcome::Failed(reason, hint, at_least) => {
                    crate::metrics::global().connect_failed();
                    let d = match hint {
                        // Waiting does not heal a wrong setting: no quick
                        // retries, straight to the longest delay.
                        Some(hint) => {
                            let d = backoff.max_delay();
                            tracing::error!(
                                "{reason}; {hint}; trying again in {} (this will not heal by itself)",
                                rounded(d)
                            );
                            d
                        }
                        None => {
                            let d = backoff.next_delay().max(at_least.unwrap_or_default());
                            tracing::warn!("{reason}; retrying in {}", rounded(d));
                            d
                        }
                    };
                    (d, reason)
                }
            };
            self.set_status(AgentStatus::Reconnecting {
                retry_in: delay,
                reason,
            });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = &mut shutdown => return Ok(AgentExit::Shutdown),
            }
        }
    }

    async fn connect_and_serve(&self, endpoint: &Endpoint, resume: &mut Option<Resume>) -> Outcome {
        let started = std::time::Instant::now();
        let cfg = &self.config;
        let url = &endpoint.url;
        let auth = format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", cfg.key, cfg.secret))
        );
        let options = DialOptions {
            tls_insecure: cfg.tls_insecure,
            ca_roots: cfg.ca_roots.clone(),
            proxy: endpoint.proxy.clone(),
        };
        let ws = match dial(url, &auth, &options).await {
            Ok(ws) => ws,
            Err(e) => {
                if let Some(wait) = e.busy_wait() {
                    return Outcome::Busy(describe_dial(url, &e), wait);
                }
                return Outcome::Failed(describe_dial(url, &e), e.config_hint(), e.retry_after());
            }
        };
        let ws_close = ws.close_handle();
        let mux = shared(WireMux::client_in_place(ws, &MuxConfig::default()));
        let previous = resume.as_ref().map(|r| r.session_id);
        let dialed = match link::dial(mux, SOFTWARE, resume.clone()).await {
            Ok(ok) => ok,
            Err(HandshakeError::Refused {
                code: CloseCode::SessionClosed,
                reason,
            }) => {
                return Outcome::Closed(reason);
            }
            Err(e @ HandshakeError::VersionMismatch { .. }) => {
                return Outcome::Failed(
                    format!("handshake with {url} failed: {e}"),
                    Some("install the rtunnel-agent that goes with this server's version"),
                    None,
                );
            }
            Err(e) => {
                return Outcome::Failed(format!("handshake with {url} failed: {e}"), None, None);
            }
        };
        let (link, mut driver) = (dialed.link, dialed.driver);
        let session_id = link.session_id();
        *resume = dialed
            .reconnect_token
            .map(|token| Resume { session_id, token });
        if let Some(state) = &cfg.state {
            match resume.as_ref() {
                Some(r) => state.save(r),
                None => state.clear(),
            }
        }
        match previous {
            Some(old) if old == session_id => {
                tracing::info!(session = %session_id, "resumed the session")
            }
            Some(old) => {
                tracing::info!(old = %old, new = %session_id, "the previous session could not be resumed; a new one started")
            }
            None => {}
        }
        let mut offered = self.offered.subscribe();
        let current = offered.borrow_and_update().clone();
        if let Err(e) = write_frame(driver.control_mut(), &self.manifest(&current)).await {
            return Outcome::Failed(format!("sending the manifest failed: {e}"), None, None);
        }
        tracing::info!(
            session = %session_id,
            services = current.len() + cfg.handlers.len(),
            "connected to {url}"
        );
        crate::metrics::global().connected(started.elapsed());
        self.set_status(AgentStatus::Active { session_id });
        let offer = Arc::new(Offer {
            session_id,
            hub: self.hub.clone(),
            consent: self.consent.clone(),
            access_log: cfg.access_log.clone(),
            services: offered.clone(),
            handlers: cfg.handlers.clone(),
            terminal: cfg.terminal.clone(),
            tls: ServiceTls::new(&cfg.ca_roots),
        });
        // A new service list goes to the server as a new manifest.
        let updates = async {
            while offered.changed().await.is_ok() {
                let now = offered.borrow_and_update().clone();
                let names: Vec<&str> = now.iter().map(|s| s.name.as_str()).collect();
                tracing::info!(session = %session_id, services = %names.join(","), "offering a new list of services");
                if !link.send(self.manifest(&now)).await {
                    break;
                }
            }
            std::future::pending::<()>().await;
        };
        let end = tokio::select! {
            end = driver.run(move |stream| {
                tokio::spawn(serve_stream(offer.clone(), stream));
            }) => end,
            _ = updates => unreachable!("pending"),
        };
        crate::metrics::global().disconnected();
        link.shutdown();
        if ws_close.received() == Some(CLOSE_SESSION_CLOSED) {
            return Outcome::Closed("the server closed the connection with code 4000".into());
        }
        match end {
            LinkEnd::PeerClosed {
                code: CloseCode::SessionClosed,
                reason,
            } => Outcome::Closed(reason),
            LinkEnd::PeerClosed {
                code: CloseCode::ServerRestarting,
                ..
            } => Outcome::Restarting,
            LinkEnd::PeerClosed {
                code: CloseCode::Replaced,
                reason,
            } => Outcome::Replaced(reason),
            LinkEnd::PeerClosed {
                code: CloseCode::CredentialsRevoked,
                reason,
            } => Outcome::Revoked(reason),
            LinkEnd::PeerClosed { code, reason } => Outcome::Lost(if reason.is_empty() {
                format!("the server closed the tunnel: {code}")
            } else {
                format!("the server closed the tunnel: {code} ({reason})")
            }),
            LinkEnd::HeartbeatTimeout(d) => {
                Outcome::Lost(format!("no heartbeat from the server for {}", rounded(d)))
            }
            LinkEnd::LocalClose(code) => Outcome::Lost(format!("closed here: {code}")),
            LinkEnd::Lost(why) => Outcome::Lost(why),
        }
    }
}

impl Agent {
    /// The manifest for `services`, the handlers and the terminal.
    fn manifest(&self, services: &[ServiceSpec]) -> Control {
        let cfg = &self.config;
        let mut list: Vec<_> = services.iter().map(ServiceSpec::info).collect();
        list.extend(cfg.handlers.iter().map(|h| ServiceInfo {
            name: h.name.clone(),
            kind: StreamKind::Tcp,
            target: None,
            tls: false,
            host_header: Default::default(),
            consent: Default::default(),
            shared: false,
        }));
        if cfg.terminal.is_some() {
            list.push(ServiceInfo {
                name: TERMINAL_SERVICE.into(),
                kind: StreamKind::Terminal,
                target: None,
                tls: false,
                host_header: Default::default(),
                consent: Default::default(),
                // Detached, attached again, watched and joined.
                shared: true,
            });
        }
        // Operators learn that the customer will be asked.
        for service in &mut list {
            service.consent = cfg.consent.mode;
        }
        Control::Manifest { services: list }
    }
}

/// Whether `url` is a `ws://` URL to a host other than this machine.
pub(crate) fn plain_beyond_loopback(url: &str) -> bool {
    if !url.starts_with("ws://") {
        return false;
    }
    let Some((host, _)) = crate::http_proxy::target_host_port(url) else {
        return false;
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !loopback
}

/// A delay as people read it: whole seconds (`4s`, `2m 30s`), or
/// milliseconds under a second.
pub(crate) fn rounded(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    humantime::format_duration(Duration::from_secs(d.as_secs_f64().round() as u64)).to_string()
}

fn describe_dial(url: &str, e: &DialError) -> String {
    format!("cannot connect to {url}: {e}")
}

/// What an agent serves on its tunnel.
struct Offer {
    session_id: SessionId,
    hub: Arc<crate::terminal::hub::Hub>,
    consent: Arc<crate::consent::Consent>,
    access_log: Option<crate::access_log::AccessLogFile>,
    services: watch::Receiver<Arc<Vec<ServiceSpec>>>,
    handlers: Vec<HandlerService>,
    terminal: Option<TerminalConfig>,
    tls: ServiceTls,
}

/// The TLS settings for `:tls` services: checked against the system's
/// roots and `--ca-file`, or, for a service marked `insecure`, not at all.
#[derive(Clone)]
pub(crate) struct ServiceTls {
    verified: Arc<rustls::ClientConfig>,
    insecure: Arc<rustls::ClientConfig>,
}

impl ServiceTls {
    /// Reads the system's roots once.
    pub(crate) fn new(extra: &crate::tls::ExtraRoots) -> Self {
        ServiceTls {
            verified: crate::tls::client_config(false, extra),
            insecure: crate::tls::client_config(true, extra),
        }
    }
}

/// Serves one stream opened by the server: dial the named service and relay.
async fn serve_stream(offer: Arc<Offer>, mut stream: MuxStream) {
    let Some(header) = accept_header(&mut stream, STREAM_SETUP_TIMEOUT).await else {
        return;
    };
    let at = std::time::SystemTime::now();
    let started = std::time::Instant::now();
    let served = serve_header(&offer, stream, &header).await;
    // Listing the live terminals opens nothing: not an access.
    let listing = header.terminal.as_ref().is_some_and(|t| t.list);
    if let Some(log) = offer.access_log.as_ref().filter(|_| !listing) {
        log.write(crate::access_log::Entry {
            at,
            session: offer.session_id.to_string(),
            operator: header.operator.clone().unwrap_or_default(),
            service: header.service.clone(),
            kind: header.kind.as_str(),
            duration: started.elapsed(),
            bytes_to_service: served.to_service,
            bytes_from_service: served.from_service,
            exit_code: served.exit_code,
            outcome: served.outcome,
        })
        .await;
    }
}

/// What became of one stream.
struct Served {
    to_service: u64,
    from_service: u64,
    exit_code: Option<i32>,
    outcome: crate::access_log::Outcome,
}

impl Served {
    fn refused(reply: &StreamReply) -> Self {
        let outcome = match reply {
            StreamReply::Refused(r) => crate::access_log::Outcome::Refused {
                code: r.code.as_str().to_owned(),
                reason: r.reason.clone(),
            },
            _ => crate::access_log::Outcome::Failed("refused".into()),
        };
        Served {
            to_service: 0,
            from_service: 0,
            exit_code: None,
            outcome,
        }
    }

    fn gone() -> Self {
        Served {
            to_service: 0,
            from_service: 0,
            exit_code: None,
            outcome: crate::access_log::Outcome::Failed(
                "the stream ended before it was answered".into(),
            ),
        }
    }
}

/// Refuses with `reply`, and says so.
async fn refuse_with(stream: &mut MuxStream, reply: StreamReply) -> Served {
    let served = Served::refused(&reply);
    refused(stream, reply).await;
    served
}

/// Serves the stream `header` asks for: checks it, asks the customer when
/// `--consent` says so, then dials and relays (or runs the terminal).
async fn serve_header(offer: &Offer, mut stream: MuxStream, header: &StreamHeader) -> Served {
    let is_terminal = header.kind == StreamKind::Terminal || header.service == TERMINAL_SERVICE;
    // What is asked for must exist before the customer is asked about it.
    let terminal = if is_terminal {
        match terminal_request(offer, header) {
            Ok(ok) => Some(ok),
            Err(reply) => return refuse_with(&mut stream, reply).await,
        }
    } else {
        None
    };
    let handler = offer.handlers.iter().find(|h| h.name == header.service);
    if let Some(h) = handler
        && header.kind != StreamKind::Tcp
        && header.kind != StreamKind::Http
    {
        let reply = StreamReply::refused(
            RefusalCode::UnsupportedKind,
            format!("{:?} carries tcp and http streams only", h.name),
        );
        return refuse_with(&mut stream, reply).await;
    }
    // Only what the manifest lists is ever dialed.
    let services = offer.services.borrow().clone();
    let spec = services.iter().find(|s| s.name == header.service);
    if terminal.is_none() && handler.is_none() && spec.is_none() {
        tracing::warn!(service = %header.service, "refused a stream for an unknown service");
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        let reply = StreamReply::refused(
            RefusalCode::UnknownService,
            format!(
                "this agent has no service named {:?}; it has {}",
                header.service,
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ),
        );
        return refuse_with(&mut stream, reply).await;
    }
    if let Some((config, open)) = &terminal {
        // Listing the live terminals opens none and needs no consent.
        if open.list {
            if write_frame(&mut stream, &StreamReply::Ok).await.is_err() {
                return Served::gone();
            }
            offer.hub.serve(config, stream, open.clone()).await;
            return Served {
                to_service: 0,
                from_service: 0,
                exit_code: None,
                outcome: crate::access_log::Outcome::Ok,
            };
        }
        // Watching is of a terminal someone else started: a watcher starts
        // no shell.
        if open.mode == Some(rtunnel_core::proto::TerminalMode::Watch) && open.attach.is_none() {
            let reply = StreamReply::refused(
                RefusalCode::BadStreamHeader,
                "watching needs the terminal to watch (attach)",
            );
            return refuse_with(&mut stream, reply).await;
        }
        if let Some(id) = open.attach
            && (open.mode.is_none() || !offer.hub.contains(id))
        {
            let reply = StreamReply::refused(
                RefusalCode::TerminalNotFound,
                format!(
                    "no live terminal {id} here: its shell ended, or it waited detached longer than this agent keeps it"
                ),
            );
            return refuse_with(&mut stream, reply).await;
        }
    }
    // The customer, when asked to be.
    let operator = header.operator.as_deref().unwrap_or("an unnamed operator");
    if offer.consent.must_wait(offer.session_id, operator) {
        let pending = StreamReply::Pending {
            reason: "waiting for the customer's approval".into(),
            wait_ms: offer.consent.timeout().as_millis() as u64,
        };
        if write_frame(&mut stream, &pending).await.is_err() {
            return Served::gone();
        }
    }
    if let Err(refusal) = offer
        .consent
        .decide(offer.session_id, operator, &header.service)
        .await
    {
        return refuse_with(&mut stream, StreamReply::Refused(refusal)).await;
    }
    if let Some((config, open)) = terminal {
        if write_frame(&mut stream, &StreamReply::Ok).await.is_err() {
            return Served::gone();
        }
        crate::metrics::global().stream_opened(TERMINAL_SERVICE, None);
        let ended = if open.mode.is_some() {
            offer.hub.serve(config, stream, open).await
        } else {
            crate::terminal::serve(config, stream, open).await
        };
        return Served {
            to_service: ended.to_shell,
            from_service: ended.from_shell,
            exit_code: ended.code,
            outcome: crate::access_log::Outcome::Ok,
        };
    }
    if let Some(h) = handler {
        if write_frame(&mut stream, &StreamReply::Ok).await.is_err() {
            return Served::gone();
        }
        crate::metrics::global().stream_opened(&h.name, None);
        let stream = ServiceStream::new(stream, header.operator.clone(), h.name.clone());
        h.handler.serve(stream).await;
        return Served {
            to_service: 0,
            from_service: 0,
            exit_code: None,
            outcome: crate::access_log::Outcome::Ok,
        };
    }
    let Some(spec) = spec else {
        return Served::gone();
    };
    let dialing = std::time::Instant::now();
    let relayed = match dial_service(spec, &offer.tls).await {
        Ok(ServiceConn::Plain(tcp)) => bridge(stream, tcp, &spec.name, dialing).await,
        Ok(ServiceConn::Tls(tls)) => bridge(stream, tls, &spec.name, dialing).await,
        Err(why) => {
            let reply = refuse_dial(&mut stream, &spec.name, &spec.target(), &why).await;
            return Served::refused(&reply);
        }
    };
    match relayed {
        Some((to_service, from_service)) => Served {
            to_service,
            from_service,
            exit_code: None,
            outcome: crate::access_log::Outcome::Ok,
        },
        None => Served::gone(),
    }
}

/// A connection to a service.
pub(crate) enum ServiceConn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (`:tls`).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Dials a service (and does its TLS handshake), each step within
/// [`STREAM_SETUP_TIMEOUT`]; the error says which step failed and why.
pub(crate) async fn dial_service(
    spec: &ServiceSpec,
    tls: &ServiceTls,
) -> Result<ServiceConn, String> {
    let tcp = match tokio::time::timeout(
        STREAM_SETUP_TIMEOUT,
        TcpStream::connect((spec.host.as_str(), spec.port)),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(connect_error(&e)),
        Err(_) => {
            return Err(
                "timed out: the host is down, a firewall drops the connection, or its \
                 name does not resolve in time"
                    .into(),
            );
        }
    };
    let _ = tcp.set_nodelay(true);
    if !spec.tls {
        return Ok(ServiceConn::Plain(tcp));
    }
    let name = rustls::pki_types::ServerName::try_from(spec.tls_server_name().to_owned())
        .map_err(|e| e.to_string())?;
    let config = if spec.insecure {
        tls.insecure.clone()
    } else {
        tls.verified.clone()
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    match tokio::time::timeout(STREAM_SETUP_TIMEOUT, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => Ok(ServiceConn::Tls(Box::new(stream))),
        Ok(Err(e)) => {
            let e = crate::tls::describe_handshake_error(&e);
            Err(
                match crate::tls::certificate_hint(
                    &e,
                    "insecure (:tls:insecure, or insecure = true in the config file)",
                ) {
                    Some(hint) => format!("TLS: {e}; {hint}"),
                    None => format!("TLS: {e}"),
                },
            )
        }
        Err(_) => Err("TLS handshake timed out".into()),
    }
}

/// A service's failed dial, with what to look at (read by the operator
/// the stream is refused to, and by `check`).
fn connect_error(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => format!(
            "{e}: nothing listens at that address (or a firewall rejects it); start the \
             service, or correct its address in the agent's services"
        ),
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
            format!("{e}: check the address and the agent's network")
        }
        _ => e.to_string(),
    }
}

/// What a stream for the terminal asks for, if it may have it. A PTY opens
/// only for a terminal stream to the terminal service, and the terminal
/// service only ever carries terminal streams: a header that mixes them is
/// refused, whoever built it.
fn terminal_request<'a>(
    offer: &'a Offer,
    header: &StreamHeader,
) -> Result<(&'a TerminalConfig, TerminalOpen), StreamReply> {
    let Some(config) = &offer.terminal else {
        return Err(StreamReply::refused(
            RefusalCode::TerminalUnavailable,
            "this agent offers no terminal",
        ));
    };
    if header.kind != StreamKind::Terminal || header.service != TERMINAL_SERVICE {
        tracing::warn!(service = %header.service, kind = header.kind.as_str(), "refused a stream mixing the terminal with another kind");
        return Err(StreamReply::refused(
            RefusalCode::UnsupportedKind,
            format!(
                "a {} stream cannot go to {:?}",
                header.kind.as_str(),
                header.service
            ),
        ));
    }
    let open = header.terminal.clone().ok_or_else(|| {
        StreamReply::refused(RefusalCode::BadStreamHeader, "a terminal needs its size")
    })?;
    Ok((config, open))
}

/// Relays between the stream and the service; the bytes each way, or
/// `None` when the stream was gone before its `ok`.
async fn bridge<T: AsyncRead + AsyncWrite + Unpin>(
    mut stream: MuxStream,
    mut target: T,
    name: &str,
    dialing: std::time::Instant,
) -> Option<(u64, u64)> {
    let metrics = crate::metrics::global();
    metrics.stream_opened(name, Some(dialing.elapsed()));
    if write_frame(&mut stream, &StreamReply::Ok).await.is_err() {
        return None;
    }
    let outcome = relay_chunks(&mut stream, &mut Unchunked(&mut target)).await;
    metrics.relayed(outcome.a_to_b, outcome.b_to_a);
    tracing::debug!(
        service = name,
        to_service = outcome.a_to_b,
        from_service = outcome.b_to_a,
        "stream closed"
    );
    Some((outcome.a_to_b, outcome.b_to_a))
}

/// Refuses a stream, counted by its code.
async fn refused(stream: &mut MuxStream, reply: StreamReply) {
    if let StreamReply::Refused(r) = &reply {
        crate::metrics::global().stream_refused(r.code.as_str());
    }
    refuse(stream, reply).await;
}

async fn refuse_dial(stream: &mut MuxStream, name: &str, target: &str, why: &str) -> StreamReply {
    tracing::warn!(service = name, %target, "cannot reach the service: {why}");
    let reply = StreamReply::refused(
        RefusalCode::ServiceUnreachable,
        format!("cannot reach {name} at {target}: {why}"),
    );
    refused(stream, reply.clone()).await;
    reply
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn plain_urls_off_this_machine_are_flagged() {
        for url in [
            "ws://support.example.com/api/v1/tunnel",
            "ws://10.0.0.5:8080/api/v1/tunnel",
        ] {
            assert!(plain_beyond_loopback(url), "{url}");
        }
        for url in [
            "wss://support.example.com/api/v1/tunnel",
            "ws://127.0.0.1:8080/api/v1/tunnel",
            "ws://localhost:8080/api/v1/tunnel",
            "ws://[::1]:8080/api/v1/tunnel",
        ] {
            assert!(!plain_beyond_loopback(url), "{url}");
        }
    }

    fn builder() -> AgentBuilder {
        Agent::builder()
            .url("ws://127.0.0.1:1/api/v1/tunnel")
            .credentials("sys_key", "secret")
    }

    async fn nothing(_: ServiceStream) {}

    #[test]
    fn in_process_services_share_the_manifest_rules() {
        let ssh = crate::parse_services("ssh=127.0.0.1:22").unwrap();
        assert!(
            builder()
                .services(ssh.clone())
                .handler("echo", nothing)
                .build()
                .is_ok()
        );
        for (agent, why) in [
            (
                builder().services(ssh).handler("ssh", nothing),
                "offered twice",
            ),
            (builder().handler("terminal", nothing), "reserved"),
            (
                builder().handler("Not A Name", nothing),
                "invalid service name",
            ),
        ] {
            let e = agent.build().unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }

    #[tokio::test]
    async fn a_spawned_agent_reports_its_status_until_shut_down() {
        let agent = builder()
            .reconnect_delay(Duration::from_millis(10))
            .build()
            .unwrap();
        let handle = agent.spawn();
        let mut status = handle.status();
        // Nothing listens on port 1: the agent keeps reconnecting.
        let reconnecting = status
            .wait_for(|s| matches!(s, AgentStatus::Reconnecting { .. }))
            .await
            .unwrap()
            .clone();
        let AgentStatus::Reconnecting { reason, .. } = reconnecting else {
            unreachable!()
        };
        assert!(reason.contains("127.0.0.1:1"), "{reason}");
        assert_eq!(handle.shutdown().await.unwrap(), AgentExit::Shutdown);
        assert_eq!(
            *status.borrow(),
            AgentStatus::Closed {
                reason: "shut down".into()
            }
        );
    }
}
