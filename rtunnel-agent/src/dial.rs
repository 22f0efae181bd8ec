//! Dialing the server's WebSocket endpoints (`ws://` or `wss://`), directly
//! or through an HTTP proxy, with a timeout, TCP_NODELAY, and the server's
//! error envelope turned into a readable error.

use std::time::Duration;

use rtunnel_core::ws::handshake::{self, ClientRequest, HandshakeError};
use rtunnel_core::ws::{MAX_WS_MESSAGE_BYTES, WsStream};
use tokio::net::TcpStream;

use crate::http_proxy::{Proxy, ProxyError, target_host_port};

mod transport;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub use transport::Transport;

/// How long connecting and the WebSocket upgrade may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The tunnel's WebSocket, as a byte stream (yamux runs on it).
pub type Ws = WsStream<Transport>;

/// A WebSocket of messages (the terminal's).
pub type MessageWs = WebSocketStream<Transport>;

/// Why dialing failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The URL is unusable.
    #[error("bad URL {0}")]
    BadUrl(String),
    /// The server answered the upgrade with an HTTP error.
    #[error("the server refused the connection ({status} {code}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The envelope's code, or `http_error`.
        code: String,
        /// The envelope's message.
        message: String,
        /// `Retry-After` of a 429: wait at least this long.
        retry_after: Option<Duration>,
    },
    /// The connection could not be made.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The proxy would not open a tunnel to the server.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// Connecting took longer than [`DIAL_TIMEOUT`].
    #[error("connecting timed out after {0:?}")]
    Timeout(Duration),
}

/// How to reach the server.
#[derive(Debug, Clone, Default)]
pub struct DialOptions {
    /// Accept any certificate from a `wss://` server.
    pub tls_insecure: bool,
    /// Certificates trusted besides the system's roots (`--ca-file`).
    pub ca_roots: crate::tls::ExtraRoots,
    /// Dial through this HTTP proxy.
    pub proxy: Option<Proxy>,
}

impl DialError {
    /// The server is too busy to take the tunnel now and said when to come
    /// back (503 with `Retry-After`): that wait, which replaces the
    /// backoff (the server spreads its answers; growing the backoff on top
    /// would only make the agents of a restart come back later).
    pub fn busy_wait(&self) -> Option<Duration> {
        match self {
            DialError::Refused {
                status: 503,
                retry_after,
                ..
            } => *retry_after,
            _ => None,
        }
    }

    /// How long the server asked us to wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DialError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// What to check when retrying cannot help without a change of
    /// configuration (credentials refused by the server or the proxy).
    pub fn config_hint(&self) -> Option<&'static str> {
        match self {
            DialError::Refused {
                status: 401 | 403, ..
            } => Some("check the key and secret"),
            DialError::Refused { status: 404, .. } => Some(
                "there is no tunnel endpoint at this URL: --url ends in /api/v1/tunnel \
                 (after the server's path prefix, if it has one)",
            ),
            DialError::Refused {
                status: 400 | 405 | 426,
                ..
            } => Some(
                "this is not rtunnel's tunnel endpoint, or a proxy in between drops WebSocket \
                 upgrades: check --url",
            ),
            // Proxies answer 407, some (tinyproxy) 401.
            DialError::Proxy(ProxyError::Refused {
                status: 401 | 403 | 407,
                ..
            }) => Some("check the proxy's user and password"),
            DialError::Connect(why) if why.contains("invalid peer certificate") => Some(
                "the server's certificate is not trusted here: give its CA with --ca-file \
                 (a PEM file), or accept any certificate with --tls-insecure",
            ),
            DialError::Connect(why) if speaks_no_tls(why) => Some(
                "the server does not speak TLS on this port: use ws:// here, or the port where \
                 TLS is served",
            ),
            DialError::Connect(why) if expects_tls(why) => {
                Some("the server answered in TLS: use wss:// for this port")
            }
            DialError::BadUrl(_) => Some("check --url (ws://HOST:PORT/api/v1/tunnel or wss://...)"),
            _ => None,
        }
    }
}

/// Whether a connect error says the server answered TLS with plain text.
fn speaks_no_tls(why: &str) -> bool {
    let why = why.to_ascii_lowercase();
    why.contains("invalidcontenttype")
        || why.contains("corrupt message")
        || why.contains("received corrupt")
        || why.contains("not a tls")
}

/// Whether a connect error says the server spoke TLS to a plain request.
fn expects_tls(why: &str) -> bool {
    let why = why.to_ascii_lowercase();
    why.contains("invalid http version") || why.contains("httparse")
}

/// The user agent both kinds of WebSocket send.
const USER_AGENT: &str = concat!("rtunnel-agent/", env!("CARGO_PKG_VERSION"));

/// Opens the tunnel's WebSocket to `url` (the tunnel or a forward
/// endpoint) with the given `Authorization` header: a byte stream for
/// yamux, framed by rtunnel itself ([`rtunnel_core::ws`]).
pub async fn dial(url: &str, authorization: &str, options: &DialOptions) -> Result<Ws, DialError> {
    let request = ClientRequest::from_url(url)
        .and_then(|r| r.header("authorization", authorization))
        .and_then(|r| r.header("user-agent", USER_AGENT))
        .map_err(|e| match e {
            HandshakeError::BadHeader(_) => {
                DialError::BadUrl("credentials contain invalid characters".into())
            }
            e => DialError::BadUrl(e.to_string()),
        })?;
    let fut = async {
        let transport = connect(url, options).await?;
        handshake::client(transport, &request)
            .await
            .map_err(|e| match e {
                HandshakeError::Refused(refusal) => refused(
                    refusal.status,
                    &refusal.reason,
                    refusal.header("retry-after"),
                    &refusal.body,
                ),
                e => DialError::Connect(e.to_string()),
            })
    };
    match tokio::time::timeout(DIAL_TIMEOUT, fut).await {
        Ok(result) => result,
        Err(_) => Err(DialError::Timeout(DIAL_TIMEOUT)),
    }
}

/// Opens a WebSocket of messages to `url` (the terminal endpoint), as
/// [`dial`] does.
pub async fn dial_messages(
    url: &str,
    authorization: &str,
    options: &DialOptions,
) -> Result<MessageWs, DialError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| DialError::BadUrl(format!("{url}: {e}")))?;
    let auth = HeaderValue::from_str(authorization)
        .map_err(|_| DialError::BadUrl("credentials contain invalid characters".into()))?;
    request.headers_mut().insert("authorization", auth);
    request
        .headers_mut()
        .insert("user-agent", HeaderValue::from_static(USER_AGENT));
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_WS_MESSAGE_BYTES));
    let fut = async {
        let transport = connect(url, options).await?;
        let result =
            tokio_tungstenite::client_async_with_config(request, transport, Some(config)).await;
        match result {
            Ok((ws, _response)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(refused(
                resp.status().as_u16(),
                resp.status().canonical_reason().unwrap_or_default(),
                resp.headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()),
                resp.body().as_deref().unwrap_or_default(),
            )),
            Err(e) => Err(DialError::Connect(e.to_string())),
        }
    };
    match tokio::time::timeout(DIAL_TIMEOUT, fut).await {
        Ok(result) => result,
        Err(_) => Err(DialError::Timeout(DIAL_TIMEOUT)),
    }
}

/// The connection to the server that `url` names: TCP (directly or
/// through the proxy), then TLS for `wss://`.
async fn connect(url: &str, options: &DialOptions) -> Result<Transport, DialError> {
    let (host, port) =
        target_host_port(url).ok_or_else(|| DialError::BadUrl(format!("{url}: no host")))?;
    let tcp = match &options.proxy {
        Some(proxy) => proxy.connect(&host, port).await?,
        None => {
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| DialError::Connect(format!("{host}:{port}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            tcp
        }
    };
    if !url.starts_with("wss://") {
        return Ok(Transport::Plain(tcp));
    }
    let name = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let name = rustls::pki_types::ServerName::try_from(name)
        .map_err(|e| DialError::BadUrl(format!("{url}: {e}")))?;
    let config = crate::tls::client_config(options.tls_insecure, &options.ca_roots);
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| DialError::Connect(format!("{host}:{port}: TLS: {e}")))?;
    Ok(Transport::Tls(Box::new(tls)))
}

/// A refusal of the upgrade, from the server's error envelope.
fn refused(status: u16, reason: &str, retry_after: Option<&str>, body: &[u8]) -> DialError {
    let envelope: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |k: &str| envelope.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let retry_after = retry_after
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs.min(3600)));
    DialError::Refused {
        status,
        retry_after,
        code: text("code").unwrap_or_else(|| "http_error".into()),
        message: text("error").unwrap_or_else(|| {
            if reason.is_empty() {
                "unexpected answer".to_owned()
            } else {
                reason.to_owned()
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_carries_the_envelope_and_retry_after() {
        let body = br#"{"success":false,"error":"too many failed attempts","code":"rate_limited","trace_id":"x"}"#;
        let err = refused(429, "Too Many Requests", Some("42"), body);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(42)));
        match err {
            DialError::Refused { status, code, .. } => {
                assert_eq!(status, 429);
                assert_eq!(code, "rate_limited");
            }
            other => panic!("{other:?}"),
        }
        let err = refused(401, "Unauthorized", None, b"");
        assert_eq!(err.retry_after(), None);
        assert_eq!(err.config_hint(), Some("check the key and secret"));
        match err {
            DialError::Refused { message, code, .. } => {
                assert_eq!(
                    (message.as_str(), code.as_str()),
                    ("Unauthorized", "http_error")
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
