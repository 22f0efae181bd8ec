//! The WebSocket upgrade of the tunnel and forward endpoints.
//!
//! The request is checked here (RFC 6455, section 4.2.1) and answered with
//! 101; the upgraded connection then goes to [`WsStream`], which frames the
//! tunnel's bytes itself rather than through a WebSocket message API (see
//! [`rtunnel_core::ws`]). The browser terminal keeps axum's WebSocket: it
//! speaks in messages.
//!
//! A plain (not TLS) connection is taken back from hyper as its TCP socket,
//! so it can move: a `forward` goes on to the connection thread of its
//! session's tunnel ([`TunnelUpgrade::on_upgrade_at`], `crate::shards`).

use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rtunnel_core::ws::{Role, WsStream, handshake::accept_key};
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::accept::HeldConnection;
use crate::error::ApiError;
use crate::shards::Home;

/// The server's end of a tunnel's or forward's WebSocket.
pub(crate) type TunnelWs = WsStream<ServerIo>;

/// The connection under a tunnel's or forward's WebSocket.
pub(crate) enum ServerIo {
    /// A plain connection, taken back from hyper.
    Tcp(TcpStream),
    /// Anything else (TLS), as hyper hands it over.
    Upgraded(TokioIo<Upgraded>),
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerIo::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            ServerIo::Upgraded(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            ServerIo::Upgraded(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Tcp(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            ServerIo::Upgraded(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Tcp(io) => io.is_write_vectored(),
            ServerIo::Upgraded(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerIo::Tcp(io) => Pin::new(io).poll_flush(cx),
            ServerIo::Upgraded(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerIo::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            ServerIo::Upgraded(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// A valid upgrade request, to be answered with [`TunnelUpgrade::on_upgrade`].
pub(crate) struct TunnelUpgrade {
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

/// The request is not a WebSocket upgrade this endpoint takes.
#[derive(Debug)]
pub(crate) enum NotAnUpgrade {
    /// Not an upgrade at all: 400 `websocket_required`.
    Missing,
    /// An upgrade of another WebSocket version: 426
    /// `websocket_version_unsupported`, naming version 13.
    Version,
}

impl NotAnUpgrade {
    pub(crate) fn into_api_error(self) -> ApiError {
        match self {
            NotAnUpgrade::Missing => ApiError::bad_request(
                "websocket_required",
                "this endpoint only accepts WebSocket upgrades",
            ),
            NotAnUpgrade::Version => ApiError::websocket_version_unsupported(),
        }
    }
}

impl IntoResponse for NotAnUpgrade {
    fn into_response(self) -> Response {
        self.into_api_error().into_response()
    }
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

impl<S: Send + Sync> FromRequestParts<S> for TunnelUpgrade {
    type Rejection = NotAnUpgrade;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, NotAnUpgrade> {
        let headers = &parts.headers;
        let upgrade = parts.method == Method::GET
            && has_token(headers, header::CONNECTION, "upgrade")
            && has_token(headers, header::UPGRADE, "websocket");
        let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
        let (true, Some(key)) = (upgrade, key) else {
            return Err(NotAnUpgrade::Missing);
        };
        let version = headers.get(header::SEC_WEBSOCKET_VERSION);
        if version.is_none_or(|v| v.as_bytes() != b"13") {
            return Err(NotAnUpgrade::Version);
        }
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(NotAnUpgrade::Missing)?;
        Ok(TunnelUpgrade { key, on_upgrade })
    }
}

impl TunnelUpgrade {
    /// Answers 101 and runs `f` on the connection once upgraded.
    pub(crate) fn on_upgrade<F, Fut>(self, f: F) -> Response
    where
        F: FnOnce(TunnelWs) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_upgrade_at(None, f)
    }

    /// Answers 101 and runs `f` on the connection once upgraded, on the
    /// connection thread `home` when given one: a plain connection is
    /// registered there again (and counted there through `held`), so its
    /// reads wake the thread that serves it. A TLS connection cannot be
    /// taken apart and stays where it is; so does any connection when
    /// `home` holds more than [`FOLLOW_SLACK`] connections over the
    /// least-loaded thread.
    ///
    /// [`FOLLOW_SLACK`]: crate::shards::FOLLOW_SLACK
    pub(crate) fn on_upgrade_at<F, Fut>(
        self,
        home: Option<(Home, Option<HeldConnection>)>,
        f: F,
    ) -> Response
    where
        F: FnOnce(TunnelWs) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let TunnelUpgrade { key, on_upgrade } = self;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    tracing::debug!("WebSocket upgrade failed: {e}");
                    return;
                }
            };
            // What hyper read past the request head is the WebSocket's.
            let (tcp, leftover) = match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => (parts.io.into_inner(), parts.read_buf),
                Err(upgraded) => {
                    let io = ServerIo::Upgraded(TokioIo::new(upgraded));
                    return f(WsStream::new(io, Role::Server, &[])).await;
                }
            };
            // It stays where it is if it is there already, or if the thread
            // holds too many more than the least-loaded one.
            let moving = home.filter(|(home, _)| !home.is_here() && home.takes_followers());
            let Some((home, held)) = moving else {
                return f(WsStream::new(ServerIo::Tcp(tcp), Role::Server, &leftover)).await;
            };
            let serve = move |tcp| f(WsStream::new(ServerIo::Tcp(tcp), Role::Server, &leftover));
            match home.take(tcp, serve) {
                Ok(_) => {
                    if let Some(held) = held {
                        held.moved_to(&home);
                    }
                }
                Err(e) => tracing::debug!("could not hand the connection to its thread: {e}"),
            }
        });
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept_key(key.as_bytes())) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Upgrades one connection served on a connection thread, with a
    /// WebSocket frame sent right behind the request head, and asks the
    /// upgraded connection to go on to `to` (a thread index). The frame's
    /// payload as read there, and the thread that read it.
    async fn upgrade_moving_to(shards: &crate::shards::Shards, to: usize) -> (String, String) {
        let home = shards.homes()[to].clone();
        let router = Router::new().route(
            "/",
            axum::routing::get(move |ws: TunnelUpgrade| async move {
                ws.on_upgrade_at(Some((home, None)), |mut ws| async move {
                    let mut said = [0u8; 5];
                    ws.read_exact(&mut said).await.unwrap();
                    let thread = std::thread::current().name().unwrap_or("").to_owned();
                    let answer = format!("{}|{thread}", String::from_utf8_lossy(&said));
                    ws.write_all(answer.as_bytes()).await.unwrap();
                    ws.shutdown().await.unwrap();
                })
            }),
        );
        let asking = |addr| async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            // The head and a masked binary frame ("hello", mask 0) in one
            // write: hyper reads the frame with the head.
            let mut bytes = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
                Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                .to_vec();
            bytes.extend_from_slice(&[0x82, 0x85, 0, 0, 0, 0]);
            bytes.extend_from_slice(b"hello");
            tcp.write_all(&bytes).await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(tcp.read_u8().await.unwrap());
            }
            assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
            let mut ws = WsStream::new(tcp, Role::Client, &[]);
            let mut answer = String::new();
            ws.read_to_string(&mut answer).await.unwrap();
            answer
        };
        let serving = crate::accept::serve_for(router, Some(shards), asking);
        let answer = tokio::time::timeout(std::time::Duration::from_secs(30), serving)
            .await
            .expect("the upgraded connection answered");
        let (said, thread) = answer.split_once('|').unwrap();
        (said.to_owned(), thread.to_owned())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upgraded_connection_goes_on_to_the_thread_it_is_sent_to() {
        let shards = crate::shards::Shards::start(2).unwrap();
        // The connection is accepted on thread 0 (both hold none) and
        // goes on to 1, with the bytes hyper read past the head.
        assert_eq!(
            upgrade_moving_to(&shards, 1).await,
            ("hello".to_owned(), "rtunnel-conn-1".to_owned())
        );
        // Sent to the thread it is on, it stays.
        assert_eq!(
            upgrade_moving_to(&shards, 0).await,
            ("hello".to_owned(), "rtunnel-conn-0".to_owned())
        );
        // Sent to a thread holding too many more than the others, it stays.
        let crowd: Vec<_> = (0..=crate::shards::FOLLOW_SLACK)
            .map(|_| shards.homes()[1].enter())
            .collect();
        assert_eq!(
            upgrade_moving_to(&shards, 1).await,
            ("hello".to_owned(), "rtunnel-conn-0".to_owned())
        );
        drop(crowd);
    }
}
