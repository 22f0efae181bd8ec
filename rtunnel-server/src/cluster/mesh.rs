//! The node mesh: how an operator's node reaches a tunnel held by another
//! node of the cluster.
//!
//! Each pair of nodes keeps one long-lived connection, dialed when first
//! needed and again after it fails (with connection threads, `--threads`,
//! one per thread of the holder: the tunnel's route names the thread
//! serving it, the dialing node asks for that lane in its ClientHello's
//! ALPN, and the holder serves the connection on that thread, so a
//! stream crosses no thread on its way from the mesh to the tunnel; a
//! lane is a placement hint, nothing more):
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
use rtunnel_core::ids::SessionId;
use rtunnel_core::mux::{MuxConfig, MuxError, MuxStream, SharedMux, WireMux, shared};
use rtunnel_core::proto::{ProtoError, Refusal, RefusalCode, StreamHeader, StreamReply, Validate};
use rtunnel_core::setup::{self, SetupError, pipeline::RefusalMap};
use rtunnel_core::store::now_millis;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{LazyConfigAcceptor, StartHandshake, TlsConnector};

use super::{Opening, RemoteTunnel};
use crate::registry::TunnelStream;
use crate::state::AppState;

/// Longest hello or stream request accepted.
const MAX_FRAME_BYTES: usize = 2 * 1024;

/// How long a connection has to complete TLS and the hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// After a failed dial, opens to that node fail at once for this long.
const REDIAL_AFTER: Duration = Duration::from_secs(1);

/// Connections from other nodes in TLS or the hello at once; more wait.
const MAX_HANDSHAKES: usize = 32;

/// A connection silent this long is probed (TCP keepalive), and given up
/// after a few unanswered probes: a peer that vanished is noticed in
/// about half a minute, on both ends.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// The first frame on a mesh connection, from the dialing node.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MeshHello {
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
pub(crate) fn hello_subject(to: &str) -> String {
    format!("rtunnel mesh hello to {to}")
}

/// The first frame of a stream on a mesh connection.
#[derive(Debug, Serialize, Deserialize)]
struct NodeStream {
    session_id: SessionId,
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
    client_config: Arc<rustls::ClientConfig>,
    server_config: Arc<rustls::ServerConfig>,
    /// One slot per peer and lane (the peer's connection thread asked for).
    peers: Mutex<HashMap<PeerLane, Arc<tokio::sync::Mutex<Slot>>>>,
    /// The connection thread each live connection was dialed on (and runs
    /// on), read without waiting on the slot an open may hold.
    homes: Mutex<HashMap<PeerLane, (crate::shards::Home, SharedMux)>>,
    /// Connections from other nodes still in TLS or the hello.
    handshakes: Arc<tokio::sync::Semaphore>,
}

/// A peer node, and the lane (its connection thread) a connection asks
/// for: a node holding tunnels on several threads gets one connection per
/// thread that holds tunnels reached from here.
type PeerLane = (String, Option<u16>);

/// A peer's connection, or why the last dial failed.
#[derive(Default)]
struct Slot {
    peer: Option<Peer>,
    failed: Option<(std::time::Instant, String)>,
}

struct Peer {
    address: String,
    mux: SharedMux,
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
            client_config: identity.client_config().map_err(|e| e.to_string())?,
            server_config: identity.server_config().map_err(|e| e.to_string())?,
            peers: Mutex::new(HashMap::new()),
            homes: Mutex::new(HashMap::new()),
            handshakes: Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES)),
        })
    }

    /// Opens a stream on a tunnel held by another node and sends it the
    /// request, without waiting for the answer: the payload may follow at
    /// once (the holder keeps it until the agent has answered). The answer
    /// is due within `timeout` and a second.
    pub(crate) async fn open_pipelined(
        &self,
        remote: &RemoteTunnel,
        header: &StreamHeader,
        timeout: Duration,
    ) -> Result<Opening, Refusal> {
        let holder = remote.node_id().to_owned();
        let address = remote.address.clone();
        // Operators see that the holder is away; the log says why.
        let unavailable = move |what: String| {
            tracing::warn!(node = holder, %address, "mesh: {what}");
            Refusal::new(
                RefusalCode::AgentUnavailable,
                "the node holding this session's tunnel cannot be reached; try again shortly",
            )
        };
        let timeout = timeout + Duration::from_secs(1);
        let send = tokio::time::timeout(timeout, self.send_request(remote, header, &unavailable));
        let stream = match send.await {
            Ok(sent) => sent?,
            Err(_) => return Err(no_answer(remote.node_id())),
        };
        let node = remote.node_id().to_owned();
        let map: RefusalMap = Box::new(move |failed| match failed {
            // The stream's own refusal, unchanged (cleaned of what a log
            // or a terminal should not get).
            SetupError::Refused(refusal) => refusal,
            SetupError::Failed(e) => unavailable(e.to_string()),
            SetupError::Timeout(_) => no_answer(&node),
        });
        Ok(Opening {
            stream,
            map,
            timeout,
        })
    }

    async fn send_request(
        &self,
        remote: &RemoteTunnel,
        header: &StreamHeader,
        unavailable: &impl Fn(String) -> Refusal,
    ) -> Result<TunnelStream, Refusal> {
        let holder = remote.node_id();
        let request = NodeStream {
            session_id: remote.route.session_id,
            header: header.clone(),
        };
        let lane = remote.route.thread;
        // A connection that died since its last use is dialed again, once.
        for attempt in 0..2 {
            let mux = self
                .connection(holder, lane, &remote.address)
                .await
                .map_err(unavailable)?;
            let mut stream = match mux.open().await {
                Ok(s) => s,
                Err(MuxError::Closed) if attempt == 0 => {
                    tracing::debug!(node = holder, "mesh connection gone; dialing again");
                    self.forget(holder, lane, &mux);
                    continue;
                }
                Err(e) => return Err(unavailable(e.to_string())),
            };
            return match write_frame(&mut stream, &request).await {
                Ok(()) => Ok(TunnelStream::node(stream)),
                Err(e) => Err(unavailable(e.to_string())),
            };
        }
        Err(unavailable("the connection closed twice".into()))
    }

    /// The live connection to `node` in `lane`, dialed at `address` if
    /// there is none. Opens waiting on one dial share it; a dial that failed
    /// is not tried again for [`REDIAL_AFTER`].
    async fn connection(
        &self,
        node: &str,
        lane: Option<u16>,
        address: &str,
    ) -> Result<SharedMux, String> {
        let slot = {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            peers.entry((node.to_owned(), lane)).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some(p) = slot.peer.as_ref()
            && p.address == address
            && !p.mux.is_closed()
        {
            return Ok(p.mux.clone());
        }
        if let Some((when, why)) = &slot.failed
            && when.elapsed() < REDIAL_AFTER
        {
            return Err(why.clone());
        }
        let dialing = self.dial(node, lane, address);
        let dialed = match tokio::time::timeout(HANDSHAKE_TIMEOUT, dialing).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer from {address} within {HANDSHAKE_TIMEOUT:?}"
            )),
        };
        match dialed {
            Ok(mux) => {
                let mux = shared(mux);
                tracing::info!(node, %address, lane, "mesh connection up");
                slot.peer = Some(Peer {
                    address: address.to_owned(),
                    mux: mux.clone(),
                });
                let mut homes = self.homes.lock().unwrap_or_else(|p| p.into_inner());
                match crate::shards::here() {
                    Some(home) => homes.insert((node.to_owned(), lane), (home, mux.clone())),
                    None => homes.remove(&(node.to_owned(), lane)),
                };
                slot.failed = None;
                Ok(mux)
            }
            Err(why) => {
                slot.failed = Some((std::time::Instant::now(), why.clone()));
                Err(why)
            }
        }
    }

    async fn dial(&self, node: &str, lane: Option<u16>, address: &str) -> Result<WireMux, String> {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        tune(&tcp);
        let name = rustls::pki_types::ServerName::try_from(rtunnel_auth::mesh::SERVER_NAME)
            .map_err(|e| e.to_string())?;
        // The lane rides in the ClientHello (ALPN), read before the
        // handshake, so the peer can serve the connection on that thread.
        let connector = match lane {
            None => TlsConnector::from(self.client_config.clone()),
            Some(lane) => {
                let mut config = (*self.client_config).clone();
                config.alpn_protocols = vec![lane_protocol(lane)];
                TlsConnector::from(Arc::new(config))
            }
        };
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {address} failed (not a node of this cluster?): {e}"))?;
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
            Ok(StreamReply::Ok) => Ok(WireMux::client(gathered(tls), &MuxConfig::default())),
            Ok(StreamReply::Refused(r)) => Err(format!("refused the mesh connection: {r}")),
            Ok(StreamReply::Pending { .. }) => Err("mesh hello answered `pending`".into()),
            Err(e) => Err(format!("mesh hello failed: {e}")),
        }
    }

    /// The connection thread of the live connection to `node` in `lane`,
    /// if there is one on a thread: a `forward` to a tunnel held there
    /// moves to it.
    pub(crate) fn home_of(&self, node: &str, lane: Option<u16>) -> Option<crate::shards::Home> {
        let homes = self.homes.lock().unwrap_or_else(|p| p.into_inner());
        let (home, mux) = homes.get(&(node.to_owned(), lane))?;
        (!mux.is_closed()).then(|| home.clone())
    }

    fn forget(&self, node: &str, lane: Option<u16>, mux: &SharedMux) {
        let slot = {
            let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            peers.get(&(node.to_owned(), lane)).cloned()
        };
        if let Some(slot) = slot
            && let Ok(mut slot) = slot.try_lock()
            && slot.peer.as_ref().is_some_and(|p| Arc::ptr_eq(&p.mux, mux))
        {
            slot.peer = None;
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

/// The ALPN protocol a dialing node offers to ask for the peer's
/// connection thread `lane` (the thread its route named for the tunnel).
fn lane_protocol(lane: u16) -> Vec<u8> {
    format!("{LANE_PROTOCOL_PREFIX}{lane}").into_bytes()
}

const LANE_PROTOCOL_PREFIX: &str = "rtunnel-mesh-lane-";

/// The lane a ClientHello asks for, if it offers one that reads (at most
/// five digits after the prefix; anything else is no lane).
fn lane_asked<'a>(mut protocols: impl Iterator<Item = &'a [u8]>) -> Option<u16> {
    protocols.find_map(|p| {
        let digits = p.strip_prefix(LANE_PROTOCOL_PREFIX.as_bytes())?;
        if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    })
}

/// Accepts the other nodes' mesh connections on `listener` until the
/// server shuts down. On connection threads, each connection is served on
/// the thread its ClientHello asks for (the thread of the tunnels the
/// dialing node reaches through it), or else the one holding fewest.
pub(crate) async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    shards: Option<Arc<crate::shards::Shards>>,
) {
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
        let shards = shards.clone();
        tokio::spawn(async move {
            let stop = state.shutdown.clone();
            tokio::select! {
                _ = accept(state, tcp, peer, shards) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Takes a node's connection up to its ClientHello, then serves it on its
/// thread.
async fn accept(
    state: Arc<AppState>,
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    shards: Option<Arc<crate::shards::Shards>>,
) {
    let Some(live) = &state.tunnels.cluster.live else {
        return;
    };
    let mesh = &live.mesh;
    tune(&tcp);
    // A flood of connections waits here, holding nothing but its socket.
    let Ok(permit) = mesh.handshakes.clone().acquire_owned().await else {
        return;
    };
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let start = match tokio::time::timeout_at(deadline, hello).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            tracing::warn!(%peer, "mesh: refused a connection: TLS failed (not a node of this cluster?): {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "mesh: refused a connection: no hello within {HANDSHAKE_TIMEOUT:?}");
            return;
        }
    };
    let Some(shards) = shards else {
        return connection(state.clone(), start, deadline, permit, peer, None).await;
    };
    let asked = start.client_hello().alpn().and_then(lane_asked);
    let home = match asked.and_then(|lane| shards.homes().get(usize::from(lane))) {
        Some(home) => home.clone(),
        None => shards.least_loaded().clone(),
    };
    drop(shards);
    let StartHandshake { accepted, io, .. } = start;
    let stop = state.shutdown.clone();
    let its_thread = home.clone();
    let serving = home.take(io, move |tcp| async move {
        let start = StartHandshake::from_parts(accepted, tcp);
        tokio::select! {
            _ = connection(state, start, deadline, permit, peer, Some(its_thread)) => {}
            _ = stop.cancelled() => {}
        }
    });
    let serving = match serving {
        Ok(serving) => serving,
        Err(e) => {
            tracing::debug!(%peer, "mesh: could not hand the connection to a thread: {e}");
            return;
        }
    };
    // Ends with it (or when the server shuts down and this is dropped).
    let _ = serving.await;
}

/// One node's connection to this one, from its ClientHello: the rest of
/// TLS, the hello, then its streams (counted on `thread` once admitted).
async fn connection(
    state: Arc<AppState>,
    start: StartHandshake<TcpStream>,
    deadline: tokio::time::Instant,
    permit: tokio::sync::OwnedSemaphorePermit,
    peer: std::net::SocketAddr,
    thread: Option<crate::shards::Home>,
) {
    let Some(live) = &state.tunnels.cluster.live else {
        return;
    };
    let mesh = &live.mesh;
    let handshake = async {
        let mut tls = start
            .into_stream(mesh.server_config.clone())
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
    let handshook = tokio::time::timeout_at(deadline, handshake).await;
    drop(permit);
    let (tls, from) = match handshook {
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
    let _on_thread = thread.as_ref().map(crate::shards::Home::enter);
    let mux = shared(WireMux::server(gathered(tls), &MuxConfig::default()));
    while let Some(stream) = mux.accept().await {
        tokio::spawn(serve_stream(state.clone(), from.clone(), stream));
    }
    tracing::info!(node = %from, "mesh connection ended");
}

/// One stream another node opened: open it on the agent's tunnel here,
/// answer, relay.
async fn serve_stream(state: Arc<AppState>, from: String, mut stream: MuxStream) {
    let timeout = state.config.stream_setup_timeout;
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
    // The operator's node names the operator it authenticated: the
    // operator's share of the tunnel is counted here.
    if request.header.operator.is_none() {
        let refusal = Refusal::new(
            RefusalCode::BadStreamHeader,
            "a stream from another node names its operator",
        );
        let _ = write_frame(&mut stream, &StreamReply::Refused(refusal)).await;
        return;
    }
    let Some(tunnel) = state.tunnels.registry.by_session(request.session_id) else {
        let refusal = Refusal::new(
            RefusalCode::AgentUnavailable,
            "the agent of this session is not connected to the node it was routed to; try again shortly",
        );
        let _ = write_frame(&mut stream, &StreamReply::Refused(refusal)).await;
        return;
    };
    // The request's payload came behind it, held by the operator's node
    // until its access-log entry was written: it goes on to the agent at
    // once, and the agent's answer comes back through the relay.
    let session_id = request.session_id;
    let mut upstream = match tunnel.open_pipelined(&request.header, timeout).await {
        Ok(s) => setup::PassReply::new(
            s,
            timeout,
            Box::new(move |e| crate::registry::agent_refusal(session_id, e)),
        ),
        Err(refusal) => {
            let _ = write_frame(&mut stream, &StreamReply::Refused(refusal)).await;
            return;
        }
    };
    let outcome = rtunnel_core::relay::relay_chunks(&mut stream, &mut upstream).await;
    tracing::debug!(
        node = %from,
        session = %request.session_id,
        service = %request.header.service,
        to_service = outcome.a_to_b,
        from_service = outcome.b_to_a.saturating_sub(upstream.answer_bytes()),
        "mesh stream closed"
    );
}

/// The holder of a tunnel did not answer in time.
fn no_answer(node: &str) -> Refusal {
    tracing::warn!(node, "no answer from the node holding the tunnel in time");
    Refusal::new(
        RefusalCode::AgentTimeout,
        "the node holding this session's tunnel did not answer in time",
    )
}

/// No Nagle delay, and keepalive probes so a peer that vanished (a
/// firewall dropping the connection, a machine gone) is noticed.
fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE)
        .with_interval(KEEPALIVE);
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    let keepalive = keepalive.with_retries(3);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "mesh: cannot set TCP keepalive");
    }
}

/// The writes of the mesh's yamux connection gathered before TLS.
///
/// yamux writes a frame's header and its body separately, and its driver
/// flushes once per poll (`rtunnel_core::mux::yamux`): over TLS each write
/// would be a record and a system call of its own, so the small frames of
/// a poll are gathered here and leave as one record on that flush. Frames of
/// [`MESH_WRITE_GATHER_BYTES`] or more go straight through.
fn gathered<T: tokio::io::AsyncWrite>(tls: T) -> tokio::io::BufWriter<T> {
    tokio::io::BufWriter::with_capacity(MESH_WRITE_GATHER_BYTES, tls)
}

/// The most the mesh gathers before a write (see [`gathered`]).
const MESH_WRITE_GATHER_BYTES: usize = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use rtunnel_core::mux::batching;
    use tokio_rustls::TlsAcceptor;

    #[test]
    fn a_lane_is_asked_for_in_the_protocols_offered_and_nothing_else_reads_as_one() {
        let asked = |protocols: &[&[u8]]| lane_asked(protocols.iter().copied());
        assert_eq!(asked(&[&lane_protocol(0)]), Some(0));
        assert_eq!(asked(&[b"h2", &lane_protocol(1023)]), Some(1023));
        assert_eq!(asked(&[]), None);
        for bad in [
            &b"rtunnel-mesh-lane-"[..],
            b"rtunnel-mesh-lane--1",
            b"rtunnel-mesh-lane-1x",
            b"rtunnel-mesh-lane-123456",
            b"rtunnel-mesh-lane-65536",
            b"rtunnel-mesh-lane-\xff",
            b"lane-1",
        ] {
            assert_eq!(asked(&[bad]), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn small_frames_of_many_streams_cross_the_mesh_in_one_write() {
        let identity = MeshIdentity::from_cluster_key(&[7; 32]).unwrap();
        let connector = TlsConnector::from(identity.client_config().unwrap());
        let acceptor = TlsAcceptor::from(identity.server_config().unwrap());
        let (a, b) = tokio::io::duplex(1 << 20);
        let (socket, writes) = batching::CountedWrites::new(a);
        let name =
            rustls::pki_types::ServerName::try_from(rtunnel_auth::mesh::SERVER_NAME).unwrap();
        let (dialed, accepted) = tokio::join!(connector.connect(name, socket), acceptor.accept(b));
        let dialing = WireMux::client(gathered(dialed.unwrap()), &MuxConfig::default());
        let answering = WireMux::server(gathered(accepted.unwrap()), &MuxConfig::default());
        // One TLS record in one write, not a record per frame header and body.
        let sent = batching::writes_for_ten_streams(&dialing, &answering, &writes).await;
        assert_eq!(sent, 1, "ten frames took {sent} writes");
    }
}
