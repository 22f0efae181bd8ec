//! `rtunnel-agent forward`: the operator's side of raw TCP.
//!
//! One WebSocket to the server's forward endpoint carries yamux; every local
//! connection becomes one stream, so a new connection costs no HTTP or
//! WebSocket handshake. If the WebSocket is lost, the next local connection
//! dials a new one.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rtunnel_core::ids::SessionId;
use rtunnel_core::link::{self, Link};
use rtunnel_core::mux::{MuxConfig, MuxStream, WireMux, shared};
use rtunnel_core::proto::{self, Refusal, StreamHeader, StreamKind};
use rtunnel_core::relay::relay_chunks;
use rtunnel_core::setup::{self, EARLY_DATA_BYTES, EarlyData, SetupError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::agent::SOFTWARE;
use crate::dial::{DialError, DialOptions, dial};
use crate::http_proxy::Proxy;

/// How long the server has to answer a new stream.
pub const STREAM_REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// What a forward reaches: one session, or whatever session a system has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardTarget {
    /// This support session.
    Session(SessionId),
    /// The current session of the system with this name or id (`forward
    /// --system`): found by the server at each connection, so the forward
    /// follows the system to a new session.
    System(String),
}

impl From<SessionId> for ForwardTarget {
    fn from(id: SessionId) -> Self {
        ForwardTarget::Session(id)
    }
}

impl std::fmt::Display for ForwardTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardTarget::Session(id) => write!(f, "session {id}"),
            ForwardTarget::System(name) => write!(f, "the current session of {name}"),
        }
    }
}

/// Settings of a forward.
#[derive(Clone)]
pub struct ForwardConfig {
    /// The server's base URL, `http(s)://HOST[:PORT]`.
    pub server: String,
    /// An API token.
    pub token: String,
    /// The support session, or the system whose session it is.
    pub target: ForwardTarget,
    /// The service to reach.
    pub service: String,
    /// Accept any certificate from an `https://` server.
    pub tls_insecure: bool,
    /// Certificates trusted besides the system's roots (`--ca-file`).
    pub ca_roots: crate::tls::ExtraRoots,
    /// Dial the server through this HTTP proxy.
    pub proxy: Option<Proxy>,
}

impl std::fmt::Debug for ForwardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardConfig")
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .field("target", &self.target)
            .field("proxy", &self.proxy)
            .field("service", &self.service)
            .finish()
    }
}

/// Why a forward failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The settings are unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The server could not be reached or refused.
    #[error("{0}")]
    Dial(#[from] DialError),
    /// The protocol handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The server (or the agent behind it) refused the stream, with its
    /// stable code.
    #[error("the server refused the connection ({}): {}", .0.code, .0.reason)]
    Refused(Refusal),
    /// The stream failed before the server answered, or the tunnel to the
    /// server is gone.
    #[error("the stream to the server failed: {0}")]
    Stream(String),
    /// The server did not answer the stream in time.
    #[error("the server did not answer in time")]
    Timeout,
    /// The local listener failed.
    #[error("local listener: {0}")]
    Listen(std::io::Error),
}

/// A forward: one tunnel to the server, many local connections over it.
pub struct Forwarder {
    config: ForwardConfig,
    ws_url: String,
    conn: Mutex<Option<Link>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// `ws(s)://HOST[:PORT][/prefix]` of a server's `http(s)://` base URL.
pub(crate) fn websocket_base(server: &str) -> Result<String, String> {
    let base = server.trim_end_matches('/');
    if let Some(rest) = base.strip_prefix("https://") {
        Ok(format!("wss://{rest}"))
    } else if let Some(rest) = base.strip_prefix("http://") {
        Ok(format!("ws://{rest}"))
    } else {
        Err(format!(
            "--server must start with http:// or https://, got {server:?}"
        ))
    }
}

/// `name` as one path segment (a system's name may hold anything).
pub(crate) fn path_segment(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl Forwarder {
    /// Checks the settings and connects once, so that bad credentials, an
    /// unknown session or service fail now with the server's reason.
    pub async fn connect(config: ForwardConfig) -> Result<Arc<Self>, ForwardError> {
        proto::validate_service_name(&config.service)
            .map_err(|e| ForwardError::Config(e.to_string()))?;
        let ws_base = websocket_base(&config.server).map_err(ForwardError::Config)?;
        let ws_url = match &config.target {
            ForwardTarget::Session(id) => format!(
                "{ws_base}/api/v1/sessions/{id}/forward?service={}",
                config.service
            ),
            ForwardTarget::System(name) => format!(
                "{ws_base}/api/v1/systems/{}/forward?service={}",
                path_segment(name),
                config.service
            ),
        };
        let fwd = Arc::new(Forwarder {
            config,
            ws_url,
            conn: Mutex::new(None),
        });
        fwd.current().await?;
        Ok(fwd)
    }

    /// Accepts local connections on `listener` until `shutdown` resolves.
    pub async fn serve<F: Future<Output = ()>>(
        self: &Arc<Self>,
        listener: TcpListener,
        shutdown: F,
    ) -> Result<(), ForwardError> {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => accepted.map_err(ForwardError::Listen)?,
                _ = &mut shutdown => return Ok(()),
            };
            let fwd = self.clone();
            tokio::spawn(async move { fwd.handle(tcp, peer).await });
        }
    }

    /// Opens one stream to the service, ready to carry bytes.
    pub async fn open(&self) -> Result<MuxStream, ForwardError> {
        let header = StreamHeader::new(self.config.service.clone(), StreamKind::Tcp);
        self.open_with(&header).await
    }

    /// Opens one stream with `header` as sent. The server takes only the
    /// service name from it and refuses anything but a `tcp` stream to a
    /// `tcp` service; this exists for tools and tests that check so.
    pub async fn open_with(&self, header: &StreamHeader) -> Result<MuxStream, ForwardError> {
        self.open_for(header, None::<(&mut tokio::io::Empty, &mut EarlyData)>)
            .await
    }

    /// Opens a stream for `header`. With a client, what the client sends
    /// goes behind the header at once, without waiting for the reply.
    async fn open_for<C>(
        &self,
        header: &StreamHeader,
        mut client: Option<(&mut C, &mut EarlyData)>,
    ) -> Result<MuxStream, ForwardError>
    where
        C: tokio::io::AsyncRead + Unpin,
    {
        let mut retried = false;
        loop {
            let link = self.current().await?;
            let failed = match link.open().await {
                Ok(mut stream) => {
                    let setup = match client.as_mut() {
                        Some((client, early)) => {
                            setup::request_early(
                                &mut stream,
                                header,
                                STREAM_REPLY_TIMEOUT,
                                &mut **client,
                                early,
                            )
                            .await
                        }
                        None => setup::request(&mut stream, header, STREAM_REPLY_TIMEOUT).await,
                    };
                    match setup {
                        Ok(()) => return Ok(stream),
                        Err(SetupError::Refused(refusal)) => {
                            return Err(ForwardError::Refused(refusal));
                        }
                        Err(SetupError::Timeout(_)) => return Err(ForwardError::Timeout),
                        Err(SetupError::Failed(e)) => e.to_string(),
                    }
                }
                Err(e) => e.to_string(),
            };
            // The connection died under the request: a server that
            // restarted before this side noticed. Once more, on a new
            // connection, but only if none of the client's bytes went out:
            // they may have reached the service already, and sending them
            // again could run a request twice.
            self.drop_conn(&link).await;
            let sent_some = client.as_ref().is_some_and(|(_, early)| early.sent());
            if retried || sent_some {
                return Err(ForwardError::Stream(failed));
            }
            tracing::debug!("the connection to the server failed ({failed}); dialing again");
            retried = true;
        }
    }

    async fn handle(&self, mut tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let header = StreamHeader::new(self.config.service.clone(), StreamKind::Tcp);
        // What the client sends first goes with the header (0-RTT): the
        // server holds it until the connection is allowed and logged.
        let mut early = EarlyData::new(EARLY_DATA_BYTES);
        let opened = self.open_for(&header, Some((&mut tcp, &mut early))).await;
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, "connection not forwarded: {e}");
                return;
            }
        };
        if let Some(e) = early.client_error() {
            // Dropped, not shut down: the far end sees an abort, not a
            // clean end after a cut-off request.
            tracing::debug!(%peer, "the client failed while the stream opened: {e}");
            return;
        }
        let outcome = relay_chunks(&mut tcp, &mut stream).await;
        tracing::debug!(
            %peer,
            sent = early.taken() + outcome.a_to_b,
            received = outcome.b_to_a,
            "connection closed"
        );
    }

    async fn drop_conn(&self, dead: &Link) {
        let mut conn = self.conn.lock().await;
        if conn.as_ref().is_some_and(|c| c.same_connection(dead)) {
            *conn = None;
        }
    }

    async fn current(&self) -> Result<Link, ForwardError> {
        let mut conn = self.conn.lock().await;
        if let Some(link) = conn.as_ref().filter(|l| !l.is_closed()) {
            return Ok(link.clone());
        }
        let auth = format!("Bearer {}", self.config.token);
        let options = DialOptions {
            tls_insecure: self.config.tls_insecure,
            ca_roots: self.config.ca_roots.clone(),
            proxy: self.config.proxy.clone(),
        };
        let ws = dial(&self.ws_url, &auth, &options).await?;
        let mux = shared(WireMux::client_in_place(ws, &MuxConfig::default()));
        let dialed = link::dial(mux, SOFTWARE, None)
            .await
            .map_err(|e| ForwardError::Handshake(e.to_string()))?;
        let link = dialed.link;
        let watched = link.clone();
        tokio::spawn(async move {
            // The server opens no streams to a forward: any it tries are reset.
            let end = dialed.driver.run(drop).await;
            tracing::info!("connection to the server ended: {end}");
            watched.shutdown();
        });
        *conn = Some(link.clone());
        Ok(link)
    }
}
