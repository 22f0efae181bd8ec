//! The WebSocket upgrade (RFC 6455, section 4): the client's side whole,
//! and the accept key a server answers with.
//!
//! The client reads the server's answer only up to the end of its head
//! (at most [`MAX_RESPONSE_HEAD_BYTES`]); whatever the server sent after it
//! is handed to the [`WsStream`] as its first bytes, so nothing the server
//! says right after the upgrade (a close code, say) is lost. A refusal's
//! body is read when it has a `Content-Length` of at most
//! [`MAX_REFUSAL_BODY_BYTES`]. The caller bounds the time it all takes.

use std::io;

use base64::Engine;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Role, WsStream};

/// Longest response head the client reads.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 16 * 1024;

/// Longest refusal body the client reads.
pub const MAX_REFUSAL_BODY_BYTES: usize = 64 * 1024;

const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` answering a `Sec-WebSocket-Key`.
///
/// ```
/// // RFC 6455, section 1.3.
/// assert_eq!(
///     rtunnel_core::ws::handshake::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
///     "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
/// );
/// ```
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Why an upgrade failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The URL is not a `ws://` or `wss://` URL with a host.
    #[error("bad URL {0}")]
    BadUrl(String),
    /// A header value holds a character HTTP does not allow.
    #[error("header {0} holds characters HTTP does not allow")]
    BadHeader(String),
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The answer is not an HTTP response, or not a valid upgrade.
    #[error("invalid HTTP response: {0}")]
    Response(String),
    /// The server answered with an HTTP status other than 101.
    #[error("the server answered {} {}", .0.status, .0.reason)]
    Refused(Box<Refusal>),
}

/// A server's answer other than 101.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// The status line's reason phrase.
    pub reason: String,
    /// The response's headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body, when it had a `Content-Length` within
    /// [`MAX_REFUSAL_BODY_BYTES`].
    pub body: Vec<u8>,
}

impl Refusal {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A client's upgrade request, built from a `ws://` or `wss://` URL.
///
/// ```
/// use rtunnel_core::ws::handshake::ClientRequest;
///
/// let request = ClientRequest::from_url("wss://rtunnel.example.com/api/v1/tunnel?x=1")?
///     .header("authorization", "Bearer abc")?;
/// assert!(request.is_tls());
/// assert_eq!((request.host(), request.port()), ("rtunnel.example.com", 443));
/// # Ok::<(), rtunnel_core::ws::handshake::HandshakeError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientRequest {
    tls: bool,
    host: String,
    port: u16,
    host_header: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl ClientRequest {
    /// The request for `url`.
    pub fn from_url(url: &str) -> Result<Self, HandshakeError> {
        let bad = |why: &str| HandshakeError::BadUrl(format!("{url}: {why}"));
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let tls = match parsed.scheme() {
            "ws" => false,
            "wss" => true,
            _ => return Err(bad("the scheme is not ws or wss")),
        };
        let host = match parsed.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => return Err(bad("no host")),
        };
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| bad("no port"))?;
        let host_header = match (parsed.host_str(), parsed.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => return Err(bad("no host")),
        };
        let mut target = parsed.path().to_owned();
        if let Some(q) = parsed.query() {
            target.push('?');
            target.push_str(q);
        }
        Ok(ClientRequest {
            tls,
            host,
            port,
            host_header,
            target,
            headers: Vec::new(),
        })
    }

    /// Adds a header; names and values with characters HTTP does not
    /// allow are refused.
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, HandshakeError> {
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        let value_ok = value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7F));
        if !name_ok || !value_ok {
            return Err(HandshakeError::BadHeader(name.to_owned()));
        }
        self.headers.push((name.to_owned(), value.to_owned()));
        Ok(self)
    }

    /// Whether the URL asks for TLS (`wss://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The host to connect to (and to name in TLS), IPv6 without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn encode(&self, key: &str) -> Vec<u8> {
        let mut out = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n",
            self.target, self.host_header
        );
        for (name, value) in &self.headers {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// Sends `request` on `io` (connected, TLS done if any) and reads the
/// answer: the stream on a valid 101, [`HandshakeError::Refused`] on
/// another status.
pub async fn client<IO>(mut io: IO, request: &ClientRequest) -> Result<WsStream<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    io.write_all(&request.encode(&key)).await?;
    io.flush().await?;
    let mut buf = Vec::with_capacity(1024);
    let head_len = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() >= MAX_RESPONSE_HEAD_BYTES {
            return Err(HandshakeError::Response(format!(
                "the response head is longer than {MAX_RESPONSE_HEAD_BYTES} bytes"
            )));
        }
        let mut chunk = [0u8; 2048];
        let room = (MAX_RESPONSE_HEAD_BYTES - buf.len()).min(chunk.len());
        let n = io.read(&mut chunk[..room]).await?;
        if n == 0 {
            if buf.is_empty() {
                return Err(HandshakeError::Response(
                    "the server closed the connection without answering".into(),
                ));
            }
            // Parse what came: a TLS answer to a plain request shows here.
            parse_head(&buf)?;
            return Err(HandshakeError::Response(
                "the connection closed inside the response head".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = parse_head(&buf[..head_len])?;
    if head.status != 101 {
        let mut body = buf[head_len..].to_vec();
        let length = head
            .header("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok());
        if let Some(length) = length.filter(|&l| l <= MAX_REFUSAL_BODY_BYTES) {
            if body.len() < length {
                let start = body.len();
                body.resize(length, 0);
                // A body cut short is kept as far as it came.
                let mut got = start;
                while got < length {
                    match io.read(&mut body[got..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                }
                body.truncate(got);
            }
            body.truncate(length);
        }
        return Err(HandshakeError::Refused(Box::new(Refusal { body, ..head })));
    }
    let has_token = |name: &str, token: &str| {
        head.header(name)
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(HandshakeError::Response(
            "101 without Upgrade: websocket and Connection: Upgrade".into(),
        ));
    }
    // Nothing was asked for: an extension (compression) or subprotocol
    // would change what the frames mean.
    for unasked in ["sec-websocket-extensions", "sec-websocket-protocol"] {
        if head.header(unasked).is_some() {
            return Err(HandshakeError::Response(format!(
                "the server chose a {unasked} nobody asked for"
            )));
        }
    }
    if head.header("sec-websocket-accept") != Some(accept_key(key.as_bytes()).as_str()) {
        return Err(HandshakeError::Response(
            "Sec-WebSocket-Accept does not answer the key".into(),
        ));
    }
    Ok(WsStream::new(io, Role::Client, &buf[head_len..]))
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses a response head (complete or not) into a refusal without body.
fn parse_head(buf: &[u8]) -> Result<Refusal, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let status = response
        .parse(buf)
        .map_err(|e| HandshakeError::Response(e.to_string()))?;
    if status.is_partial() {
        return Err(HandshakeError::Response("incomplete response head".into()));
    }
    // A refusal may come from an HTTP/1.0 proxy; an upgrade may not.
    if response.code == Some(101) && response.version != Some(1) {
        return Err(HandshakeError::Response("101 not in HTTP/1.1".into()));
    }
    Ok(Refusal {
        status: response.code.unwrap_or_default(),
        reason: response.reason.unwrap_or_default().to_owned(),
        headers: response
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: Vec::new(),
    })
}
