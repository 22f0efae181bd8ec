//! The WebSocket upgrade of the tunnel and forward endpoints.
//!
//! The request is checked here (RFC 6455, section 4.2.1) and answered with
//! 101; the upgraded connection then goes to [`WsStream`], which frames the
//! tunnel's bytes itself rather than through a WebSocket message API (see
//! [`rtunnel_core::ws`]). The browser terminal keeps axum's WebSocket: it
//! speaks in messages.

use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use rtunnel_core::ws::{Role, WsStream, handshake::accept_key};

use crate::error::ApiError;

/// The server's end of a tunnel's or forward's WebSocket.
pub(crate) type TunnelWs = WsStream<TokioIo<hyper::upgrade::Upgraded>>;

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
        let TunnelUpgrade { key, on_upgrade } = self;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => f(WsStream::new(TokioIo::new(upgraded), Role::Server, &[])).await,
                Err(e) => tracing::debug!("WebSocket upgrade failed: {e}"),
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
