//! The node mesh: how an operator's node reaches a tunnel held by another
//! node of the cluster.
//!
//! Each pair of nodes keeps one long-lived connection, dialed when first
//! needed and again after it fails:
//!
//! 1. TLS 1.3, both sides presenting the identity every holder of the
//!    cluster key derives ([`rtunnel_auth::mesh`]): only nodes of the
//!    cluster get in, and nothing an operator sends crosses the node
//!    network in the clear;
//! 2. a hello from the dialing node naming itself and the node it means to
//!    reach, signed with the cluster key ([`rtunnel_auth::node`]: time
//!    window, nonce). The receiver accepts only a hello naming itself, so a
//!    connection cannot be turned to another node, nor replayed;
//! 3. yamux. A stream to a service behind another node's agent is one
//!    stream of that connection: its first frame names the session and
//!    carries the stream header the operator's node built; the holder opens
//!    the stream on the agent's tunnel exactly as for its own operators
//!    (the same checks, the same limits) and answers with the reply, typed,
//!    the agent's refusal unchanged; then rtunnel's relay carries the bytes
//!    and counts them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtunnel_auth::mesh::MeshIdentity;
use rtunnel_auth::node::{NodeKey, NonceCache};
use rtunnel_core::frame::{read_frame, write_frame};
use rtunnel_core::mux::{Mux, MuxConfig, YamuxMux, YamuxStream};
use rtunnel_core::proto::{ProtoError, Refusal, RefusalCode, StreamHeader, StreamReply, Validate};
use rtunnel_core::store::now_millis;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use uuid::Uuid;

use super::RemoteTunnel;
use crate::registry::TunnelStream;
use crate::state::AppState;

/// Longest hello or stream request accepted.
const MAX_FRAME_BYTES: usize = 2 * 1024;

/// How long a dialed node has to complete TLS and the hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first frame on a mesh connection, from the dialing node.
#[derive(Debug, Serialize, Deserialize)]
pub struct MeshHello {
    /// The dialing node.
    pub from: String,
    /// The node it means to reach.
    pub to: String,
    /// [`NodeKey::authorize`] of `from` over [`hello_subject`] of `to`.
    pub authorization: String,
}

impl Validate for MeshHello {
    fn validate(&self) -> Result<(), ProtoError> {
        Ok(())
    }
}

/// What a hello signs besides the node, time and nonce: the node reached.
pub fn hello_subject(to: &str) -> String {
    format!("rtunnel mesh hello to {to}")
}

/// The first frame of a stream on a mesh connection.
#[derive(Debug, Serialize, Deserialize)]
struct NodeStream {
    session_id: Uuid,
    header: StreamHeader,
}

impl Validate for NodeStream {
    fn validate(&self) -> Result<(), ProtoError> {
        self.header.validate()
    }
}

/// This node's end of the mesh: its TLS settings and its connections to
/// the others.
pub(crate) struct Mesh {
    node_id: String,
    key: NodeKey,
    nonces: Mutex<NonceCache>,
    connector: TlsConnector,
    acceptor: TlsAcceptor,
    /// One slot per peer: its connection and the address it was dialed at.
    peers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Peer>>>>>,
}

struct Peer {
    address: String,
    mux: Arc<YamuxMux>,
}

impl Mesh {
    pub(crate) fn new(
        node_id: String,
        key: NodeKey,
        identity: &MeshIdentity,
    ) -> Result<Self, String> {
        Ok(Mesh {
            node_id,
            key,
            nonces: Mutex::new(NonceCache::default()),
            connector: TlsConnector::from(identity.client_config().map_err(|e| e.to_string())?),
            acceptor: TlsAcceptor::from(identity.server_config().map_err(|e| e.to_string())?),
            peers: Mutex::new(HashMap::new()),
        })
    }

    /// Opens a stream on a tunnel held by another node, within `timeout`
    /// (plus the time to reach the node).
    pub(crate) async fn open(
        &self,
        remote: &RemoteTunnel,
        header: &StreamHeader,
        timeout: Duration,
    ) -> Result<TunnelStream, Refusal> {
        let holder = remote.node_id();
        let unavailable = |what: String| {
            Refusal::new(
                RefusalCode::AgentUnavailable,
                format!("node {holder}: {what}"),
            )
        };
        let request = NodeStream {
            session_id: remote.route.session_id,
            header: header.clone(),
        };
        // A connection that died since its last use is dialed again, once.
        for attempt in 0..2 {
            let mux = self
                .connection(holder, &remote.address)
                .await
                .map_err(unavailable)?;
            let mut stream = match mux.open().await {
                Ok(s) => s,
                Err(e) if attempt == 0 => {
                    tracing::debug!(node = holder, error = %e, "mesh connection gone; dialing again");
                    self.forget(holder, &mux);
                    continue;
                }
                Err(e) => return Err(unavailable(e.to_string())),
            };
            let exchange = async {
                write_frame(&mut stream, &request).await?;
                read_frame::<StreamReply, _>(&mut stream, MAX_FRAME_BYTES).await
            };
            return match tokio::time::timeout(timeout + Duration::from_secs(1), exchange).await {
                Ok(Ok(StreamReply::Ok)) => Ok(TunnelStream::node(stream)),
                // The stream's own refusal, unchanged.
                Ok(Ok(StreamReply::Refused(refusal))) => Err(refusal),
                Ok(Err(e)) => Err(unavailable(e.to_string())),
                Err(_) => Err(Refusal::new(
                    RefusalCode::AgentTimeout,
                    format!("node {holder} did not answer in time"),
                )),
            };
        }
        Err(unavailable("cannot reach it".into()))
    }

    /// The live connection to `node`, dialed at `address` if there is none.
    async fn connection(&self, node: &str, address: &str) -> Result<Arc<YamuxMux>, String> {
        let slot = {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            peers.entry(node.to_owned()).or_default().clone()
        };
        let mut peer = slot.lock().await;
        if let Some(p) = peer.as_ref()
            && p.address == address
            && !p.mux.is_closed()
        {
            return Ok(p.mux.clone());
        }
        let mux = Arc::new(
            tokio::time::timeout(HANDSHAKE_TIMEOUT, self.dial(node, address))
                .await
                .map_err(|_| format!("no answer from {address} within {HANDSHAKE_TIMEOUT:?}"))??,
        );
        tracing::info!(node, %address, "mesh connection up");
        *peer = Some(Peer {
            address: address.to_owned(),
            mux: mux.clone(),
        });
        Ok(mux)
    }

    async fn dial(&self, node: &str, address: &str) -> Result<YamuxMux, String> {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(rtunnel_auth::mesh::SERVER_NAME)
            .map_err(|e| e.to_string())?;
        let mut tls =
            self.connector.connect(name, tcp).await.map_err(|e| {
                format!("TLS with {address} failed (not a node of this cluster?): {e}")
            })?;
        let hello = MeshHello {
            from: self.node_id.clone(),
            to: node.to_owned(),
            authorization: self
                .key
                .authorize(&self.node_id, &hello_subject(node), now_millis()),
        };
        write_frame(&mut tls, &hello)
            .await
            .map_err(|e| e.to_string())?;
        match read_frame::<StreamReply, _>(&mut tls, MAX_FRAME_BYTES).await {
            Ok(StreamReply::Ok) => Ok(YamuxMux::client(tls, &MuxConfig::default())),
            Ok(StreamReply::Refused(r)) => Err(format!("refused the mesh connection: {r}")),
            Err(e) => Err(format!("mesh hello failed: {e}")),
        }
    }

    fn forget(&self, node: &str, mux: &Arc<YamuxMux>) {
        let slot = {
            let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            peers.get(node).cloned()
        };
        if let Some(slot) = slot
            && let Ok(mut peer) = slot.try_lock()
            && peer.as_ref().is_some_and(|p| Arc::ptr_eq(&p.mux, mux))
        {
            *peer = None;
        }
    }

    /// Checks a hello: signed with the cluster key, fresh, never seen, and
    /// meant for this node. The dialing node's id when good.
    fn admit(&self, hello: &MeshHello) -> Result<String, String> {
        if hello.to != self.node_id {
            return Err(format!(
                "this is node {}, not {:?}",
                self.node_id,
                hello.to.chars().take(64).collect::<String>()
            ));
        }
        let from = {
            let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
            self.key.verify(
                &hello.authorization,
                &hello_subject(&self.node_id),
                now_millis(),
                &mut nonces,
            )
        }
        .map_err(|e| e.to_string())?;
        if from != hello.from {
            return Err("the hello names another node than it was signed by".into());
        }
        Ok(from)
    }
}

/// Accepts the other nodes' mesh connections on `listener` until the
/// server shuts down.
pub(crate) async fn serve(state: Arc<AppState>, listener: TcpListener) {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(ok) => ok,
                Err(e) => {
                    tracing::warn!(error = %e, "mesh: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = state.shutdown.cancelled() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let stop = state.shutdown.clone();
            tokio::select! {
                _ = connection(state, tcp, peer) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// One node's connection to this one: TLS, the hello, then its streams.
async fn connection(state: Arc<AppState>, tcp: TcpStream, peer: std::net::SocketAddr) {
    let Some(live) = &state.cluster.live else {
        return;
    };
    let mesh = &live.mesh;
    let _ = tcp.set_nodelay(true);
    let handshake = async {
        let mut tls = mesh
            .acceptor
            .accept(tcp)
            .await
            .map_err(|e| format!("TLS failed (not a node of this cluster?): {e}"))?;
        let hello = read_frame::<MeshHello, _>(&mut tls, MAX_FRAME_BYTES)
            .await
            .map_err(|e| format!("no hello: {e}"))?;
        match mesh.admit(&hello) {
            Ok(from) => {
                write_frame(&mut tls, &StreamReply::Ok)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((tls, from))
            }
            Err(why) => {
                let refusal = Refusal::new(RefusalCode::Forbidden, why.clone());
                let _ = write_frame(&mut tls, &StreamReply::Refused(refusal)).await;
                Err(why)
            }
        }
    };
    let (tls, from) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(ok)) => ok,
        Ok(Err(why)) => {
            tracing::warn!(%peer, "mesh: refused a connection: {why}");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "mesh: refused a connection: no hello within {HANDSHAKE_TIMEOUT:?}");
            return;
        }
    };
    tracing::info!(node = %from, %peer, "mesh connection accepted");
    let mux = YamuxMux::server(tls, &MuxConfig::default());
    while let Some(stream) = mux.accept().await {
        tokio::spawn(serve_stream(state.clone(), from.clone(), stream));
    }
    tracing::info!(node = %from, "mesh connection ended");
}

/// One stream another node opened: open it on the agent's tunnel here,
/// answer, relay.
async fn serve_stream(state: Arc<AppState>, from: String, mut stream: YamuxStream) {
    let timeout = state.config.handshake_timeout;
    let request = match tokio::time::timeout(
        timeout,
        read_frame::<NodeStream, _>(&mut stream, MAX_FRAME_BYTES),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let refusal = Refusal::new(RefusalCode::BadStreamHeader, e.to_string());
            let _ = write_frame(&mut stream, &StreamReply::Refused(refusal)).await;
            return;
        }
        Err(_) => return,
    };
    let Some(tunnel) = state.registry.by_session(request.session_id) else {
        let refusal = Refusal::new(
            RefusalCode::AgentUnavailable,
            format!(
                "node {} holds no tunnel of that session",
                state.cluster.node_id()
            ),
        );
        let _ = write_frame(&mut stream, &StreamReply::Refused(refusal)).await;
        return;
    };
    let mut upstream = match tunnel.open_stream(&request.header, timeout).await {
        Ok(s) => s,
        Err(refusal) => {
            let _ = write_frame(&mut stream, &StreamReply::Refused(refusal)).await;
            return;
        }
    };
    if write_frame(&mut stream, &StreamReply::Ok).await.is_err() {
        return;
    }
    let outcome = rtunnel_core::relay::relay(&mut stream, &mut upstream).await;
    tracing::debug!(
        node = %from,
        session = %request.session_id,
        service = %request.header.service,
        to_service = outcome.a_to_b,
        from_service = outcome.b_to_a,
        "mesh stream closed"
    );
}
