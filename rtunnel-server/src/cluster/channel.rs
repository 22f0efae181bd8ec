//! The node channel: how an operator's node reaches a tunnel held by
//! another node of the cluster.
//!
//! Each node serves it on its own internal listener (`--node-listen`),
//! apart from the public one. To open a stream to a service behind an agent
//! connected elsewhere, a node sends `POST /v1/sessions/{id}/streams` to the
//! holder, with the stream header (JSON) in `X-Rtunnel-Stream`, an
//! `Authorization` signed with the cluster key over both
//! ([`rtunnel_auth::node`]: constant-time check, clock window, no replays),
//! and `Upgrade: rtunnel-stream`. The holder opens the stream on the tunnel
//! (counted against the tunnel's limit like any other) and answers
//! `101 Switching Protocols`; from then on the connection carries the
//! stream's bytes both ways, one TCP connection per stream. A refusal is an
//! HTTP status with `{"code", "message"}`; when the stream itself was
//! refused (by the agent, or the holder's limits) it carries that
//! [`Refusal`] too, which the operator's node passes on unchanged, as if the
//! tunnel were its own.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::TokioIo;
use rtunnel_core::proto::{Refusal, RefusalCode, StreamHeader};
use rtunnel_core::store::now_millis;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Live, RemoteTunnel};
use crate::registry::TunnelStream;
use crate::state::AppState;

/// The protocol named in `Upgrade`.
pub const UPGRADE_PROTOCOL: &str = "rtunnel-stream";

/// The header carrying the stream header.
pub const STREAM_HEADER: &str = "x-rtunnel-stream";

/// Longest stream header accepted.
const MAX_STREAM_HEADER_BYTES: usize = 8 * 1024;

/// Longest refusal body read.
const MAX_REFUSAL_BYTES: usize = 4 * 1024;

/// What an opening request signs, besides the node, time and nonce.
fn subject(session_id: Uuid, stream: &str) -> String {
    format!("POST /v1/sessions/{session_id}/streams\n{stream}")
}

/// A refusal on the node channel: the holder's own (`node_auth_failed`,
/// `tunnel_not_here`, ...), or `stream_refused` with the stream's
/// [`Refusal`], for the opener to pass on as it is.
#[derive(Debug, Serialize, Deserialize)]
struct NodeRefusal {
    code: String,
    message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refusal: Option<Refusal>,
}

fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = NodeRefusal {
        code: code.to_owned(),
        message: message.into(),
        refusal: None,
    };
    (status, axum::Json(body)).into_response()
}

/// The stream was refused: its refusal, under the status an API caller
/// would get for it.
fn stream_refused(refusal: Refusal) -> Response {
    let status = crate::error::refusal_status(refusal.code);
    let body = NodeRefusal {
        code: "stream_refused".to_owned(),
        message: refusal.reason.clone(),
        refusal: Some(refusal),
    };
    (status, axum::Json(body)).into_response()
}

/// The node channel's routes (served on the node listener).
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/sessions/{id}/streams", post(open_endpoint))
        .fallback(|| async { refuse(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(state)
}

async fn open_endpoint(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    mut req: Request,
) -> Response {
    let Some(live) = &state.cluster.live else {
        return refuse(
            StatusCode::NOT_FOUND,
            "not_in_cluster",
            "this node is alone",
        );
    };
    let Ok(session_id) = Uuid::try_parse(&id) else {
        return refuse(StatusCode::BAD_REQUEST, "bad_request", "bad session id");
    };
    // (A `Request` is not `Sync`: nothing borrowing it may live across an
    // await.)
    let (authorization, stream, upgrade) = {
        let text = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        (
            text(header::AUTHORIZATION.as_str()),
            text(STREAM_HEADER),
            text(header::UPGRADE.as_str()),
        )
    };
    if stream.len() > MAX_STREAM_HEADER_BYTES {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "stream header too long",
        );
    }
    let verified = {
        let mut nonces = live.nonces.lock().unwrap_or_else(|p| p.into_inner());
        live.key.verify(
            &authorization,
            &subject(session_id, &stream),
            now_millis(),
            &mut nonces,
        )
    };
    let from = match verified {
        Ok(node) => node,
        Err(e) => {
            tracing::warn!(error = %e, "node channel: refused a request");
            return refuse(StatusCode::UNAUTHORIZED, "node_auth_failed", e.to_string());
        }
    };
    let stream_header: StreamHeader = match serde_json::from_str(&stream) {
        Ok(h) => h,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("stream header: {e}"),
            );
        }
    };
    if !upgrade.eq_ignore_ascii_case(UPGRADE_PROTOCOL) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "upgrade_required",
            "Upgrade: rtunnel-stream required",
        );
    }
    let Some(tunnel) = state.registry.by_session(session_id) else {
        return refuse(
            StatusCode::NOT_FOUND,
            "tunnel_not_here",
            "this node holds no tunnel of that session",
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let timeout = state.config.handshake_timeout;
    let upstream = match tunnel.open_stream(&stream_header, timeout).await {
        Ok(s) => s,
        Err(refusal) => return stream_refused(refusal),
    };
    tracing::debug!(%session_id, service = %stream_header.service, node = %from, "node channel: stream opened for another node");
    tokio::spawn(async move {
        let mut upstream = upstream;
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut io = TokioIo::new(upgraded);
                let _ = tokio::io::copy_bidirectional(&mut io, &mut upstream).await;
            }
            Err(e) => tracing::debug!(error = %e, "node channel: upgrade failed"),
        }
    });
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    res.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
    res
}

/// Opens a stream on a tunnel held by another node.
pub(super) async fn open(
    live: &Live,
    node_id: &str,
    remote: &RemoteTunnel,
    header: &StreamHeader,
    timeout: Duration,
) -> Result<TunnelStream, Refusal> {
    // The holder spends up to `timeout` on the agent; this side adds the
    // connection to the holder.
    tokio::time::timeout(
        timeout + Duration::from_secs(1),
        open_once(live, node_id, remote, header),
    )
    .await
    .map_err(|_| {
        Refusal::new(
            RefusalCode::AgentTimeout,
            format!("node {} did not answer in time", remote.node_id()),
        )
    })?
}

async fn open_once(
    live: &Live,
    node_id: &str,
    remote: &RemoteTunnel,
    header: &StreamHeader,
) -> Result<TunnelStream, Refusal> {
    let holder = remote.node_id();
    let unavailable = |what: String| {
        Refusal::new(
            RefusalCode::AgentUnavailable,
            format!("node {holder}: {what}"),
        )
    };
    let session_id = remote.route.session_id;
    let stream = serde_json::to_string(header).map_err(|e| unavailable(e.to_string()))?;
    let authorization = live
        .key
        .authorize(node_id, &subject(session_id, &stream), now_millis());
    let tcp = tokio::net::TcpStream::connect(&remote.address)
        .await
        .map_err(|e| unavailable(format!("cannot connect to {}: {e}", remote.address)))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "node channel connection ended");
        }
    });
    let request = axum::http::Request::post(format!("/v1/sessions/{session_id}/streams"))
        .header(header::HOST, &remote.address)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, UPGRADE_PROTOCOL)
        .header(header::AUTHORIZATION, authorization)
        .header(STREAM_HEADER, stream)
        .body(Body::empty())
        .map_err(|e| unavailable(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        return Ok(TunnelStream::node(TokioIo::new(upgraded)));
    }
    let status = response.status();
    let body = axum::body::to_bytes(Body::new(response.into_body()), MAX_REFUSAL_BYTES)
        .await
        .unwrap_or_default();
    match serde_json::from_slice::<NodeRefusal>(&body) {
        // The stream's own refusal, unchanged.
        Ok(NodeRefusal {
            refusal: Some(refusal),
            ..
        }) => Err(refusal),
        Ok(node) => Err(unavailable(format!("{}: {}", node.code, node.message))),
        Err(_) => Err(unavailable(format!("answered {status}"))),
    }
}
