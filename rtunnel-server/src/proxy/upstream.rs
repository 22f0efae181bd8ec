//! Connections to proxied services, through the session's tunnel on this
//! node or, over the node mesh, on the node holding it.
//!
//! A connection to a service is one tunnel stream of kind `http`: the agent
//! dials the service (over TLS for a `:tls` service) and relays bytes, and
//! the server speaks HTTP/1.1 over it with hyper's client. The client pools
//! idle connections per session and service (the pool key is the request
//! URI's authority, `<service>--<session>`), so a page's many requests reuse
//! a few streams the way a browser reuses keep-alive connections.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rtunnel_core::ids::SessionId;
use rtunnel_core::proto::{Refusal, StreamHeader, StreamKind};

use crate::registry::TunnelStream;
use crate::streams::Streams;

/// Largest response head (status line and headers) read from a service.
pub(crate) const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;

/// How long an idle pooled connection to a service is kept.
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(30);

/// Idle connections kept per session and service.
const POOL_MAX_IDLE: usize = 8;

/// The HTTP client of the proxy.
pub(crate) type ProxyClient = Client<TunnelConnector, Body>;

/// A client whose connections are tunnel streams opened by `streams`.
pub(crate) fn client(streams: Streams) -> ProxyClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .http1_max_buf_size(MAX_RESPONSE_HEAD_BYTES)
        .build(TunnelConnector { streams })
}

/// The URI the client is asked for: its authority names the tunnel stream
/// to open and the operator it is for (hex in the user part), and keys the
/// pool, so a connection to a service is never shared between operators;
/// the rest is the request target.
pub(crate) fn upstream_uri(
    service: &str,
    session_id: SessionId,
    operator: &str,
    path_and_query: &str,
) -> Option<Uri> {
    format!(
        "http://{}@{service}--{}{path_and_query}",
        hex::encode(operator),
        session_id.as_uuid().simple()
    )
    .parse()
    .ok()
}

/// The operator of an upstream URI's authority.
fn operator_of(authority: &axum::http::uri::Authority) -> Option<String> {
    let (user, _) = authority.as_str().split_once('@')?;
    String::from_utf8(hex::decode(user).ok()?).ok()
}

/// Why no connection to the service could be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The stream was refused.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Not a URI this connector made.
    #[error("not a proxy upstream URI")]
    BadUri,
}

/// Opens tunnel streams for hyper's client.
#[derive(Clone)]
pub(crate) struct TunnelConnector {
    streams: Streams,
}

impl std::fmt::Debug for TunnelConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelConnector").finish_non_exhaustive()
    }
}

impl tower::Service<Uri> for TunnelConnector {
    type Response = TunnelConnection;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<TunnelConnection, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let streams = self.streams.clone();
        Box::pin(async move {
            let authority = uri.authority().ok_or(ConnectError::BadUri)?;
            let (service, session) = authority
                .host()
                .rsplit_once("--")
                .ok_or(ConnectError::BadUri)?;
            let session: SessionId = session.parse().map_err(|_| ConnectError::BadUri)?;
            let operator = operator_of(authority).ok_or(ConnectError::BadUri)?;
            let header = StreamHeader::new(service, StreamKind::Http).opened_by(operator);
            let stream = streams.open(session, &header).await?;
            Ok(TunnelConnection {
                io: TokioIo::new(stream),
            })
        })
    }
}

/// One connection to a service: a tunnel stream, counted against the
/// tunnel's stream limit while it lives (pooled or not).
#[derive(Debug)]
pub(crate) struct TunnelConnection {
    io: TokioIo<TunnelStream>,
}

impl Connection for TunnelConnection {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for TunnelConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TunnelConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The connector's error behind a client error, if that is what failed.
pub(crate) fn connect_error(e: &hyper_util::client::legacy::Error) -> Option<&ConnectError> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(c) = s.downcast_ref::<ConnectError>() {
            return Some(c);
        }
        source = s.source();
    }
    None
}
