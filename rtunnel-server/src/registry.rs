//! The tunnels live on this node, by session and by system.
//!
//! One system holds at most one tunnel: a second agent with the same
//! credentials takes the session over, and the first is told why and closed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rtunnel_core::ids::{SessionId, SystemId};
use rtunnel_core::link::Link;
use rtunnel_core::mux::MuxStream;
use rtunnel_core::proto::{CloseCode, Refusal, RefusalCode, ServiceInfo, StreamHeader, StreamKind};
use rtunnel_core::setup::{self, SetupError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

/// A stream to a service behind an agent: a stream of a tunnel on this
/// node (counted against the tunnel's stream limit while it lives), or a
/// connection over the node mesh to the node holding the tunnel (which
/// counts it there).
#[derive(Debug)]
pub struct TunnelStream {
    io: MuxStream,
    _permit: Option<OwnedSemaphorePermit>,
    _share: Option<UserShare>,
}

/// One stream of an operator's share of a tunnel; given back when dropped.
#[derive(Debug)]
struct UserShare {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    operator: String,
}

impl Drop for UserShare {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.operator) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.operator);
            }
        }
    }
}

impl TunnelStream {
    /// A stream over the node mesh.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn node(io: MuxStream) -> Self {
        TunnelStream {
            io,
            _permit: None,
            _share: None,
        }
    }
}

impl rtunnel_core::relay::ReadChunk for TunnelStream {
    fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Option<Poll<std::io::Result<bytes::Bytes>>> {
        self.io.poll_read_chunk(cx)
    }
}

/// The server writes unmasked frames: nothing to gain in place.
impl rtunnel_core::relay::WriteInPlace for TunnelStream {}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelStream {
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

/// Checks a stream header against a manifest: the service exists, the
/// stream's kind fits the service's, and only a terminal stream carries
/// terminal settings.
pub(crate) fn admit(services: &[ServiceInfo], header: &StreamHeader) -> Result<(), Refusal> {
    let Some(service) = services.iter().find(|s| s.name == header.service) else {
        if header.kind == StreamKind::Terminal {
            return Err(Refusal::new(
                RefusalCode::TerminalUnavailable,
                "the agent of this session offers no terminal (--no-terminal)",
            ));
        }
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        return Err(Refusal::new(
            RefusalCode::UnknownService,
            if names.is_empty() {
                format!(
                    "the session has no service named {:?}; it has no services",
                    header.service
                )
            } else {
                format!(
                    "the session has no service named {:?}; it has {}",
                    header.service,
                    names.join(", ")
                )
            },
        ));
    };
    let kind_fits = header.kind.fits(service.kind)
        && (header.terminal.is_some() == (header.kind == StreamKind::Terminal));
    if !kind_fits {
        return Err(Refusal::new(
            RefusalCode::UnsupportedKind,
            format!(
                "a {} stream cannot go to the {} service {:?}",
                header.kind.as_str(),
                service.kind.as_str(),
                service.name
            ),
        ));
    }
    Ok(())
}

/// One live tunnel.
#[derive(Debug)]
pub struct LiveTunnel {
    /// Its support session.
    pub session_id: SessionId,
    /// Its system.
    pub system_id: SystemId,
    /// The link to the agent.
    pub link: Link,
    /// The agent's manifest (replaced when the agent sends a new one).
    pub services: std::sync::RwLock<Arc<Vec<ServiceInfo>>>,
    /// One permit per stream the tunnel may carry at once.
    pub streams: Arc<tokio::sync::Semaphore>,
    /// How many permits `streams` started with.
    pub max_streams: usize,
    /// Streams held per operator (by name), and how many one may hold.
    pub shares: Arc<Mutex<HashMap<String, usize>>>,
    /// The most streams of this tunnel one operator may hold.
    pub max_streams_per_user: usize,
    /// The connection thread its link runs on, if it runs on one: a
    /// `forward` to its session moves there (`crate::shards`).
    pub(crate) home: Option<crate::shards::Home>,
}

impl LiveTunnel {
    /// The manifest now.
    pub fn services(&self) -> Arc<Vec<ServiceInfo>> {
        self.services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the manifest: streams open from now on see `services`.
    pub fn set_services(&self, services: Vec<ServiceInfo>) {
        *self.services.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(services);
    }

    /// The manifest entry named `name`.
    pub fn service(&self, name: &str) -> Option<ServiceInfo> {
        self.services().iter().find(|s| s.name == name).cloned()
    }

    /// Opens a stream to the agent for `header` and waits (at most
    /// `timeout`) for the agent to accept it.
    ///
    /// The header must name a service of the manifest with a kind that
    /// fits it; anything else is refused before the agent
    /// hears of it.
    pub async fn open_stream(
        &self,
        header: &StreamHeader,
        timeout: Duration,
    ) -> Result<TunnelStream, Refusal> {
        let mut stream = self.open_pipelined(header, timeout).await?;
        let mut reply = setup::ReplyReader::new(timeout);
        match std::future::poll_fn(|cx| reply.poll_final(cx, &mut stream.io)).await {
            Ok(()) => Ok(stream),
            Err(e) => Err(agent_refusal(self.session_id, e)),
        }
    }

    /// Opens a stream to the agent for `header` (checked as for
    /// [`open_stream`](Self::open_stream)) and sends the header, without
    /// waiting for the agent's answer: the payload may follow at once, and
    /// the agent holds it until it has answered. Read the answer with
    /// [`setup::PassReply`] and map it with `agent_refusal`.
    pub async fn open_pipelined(
        &self,
        header: &StreamHeader,
        timeout: Duration,
    ) -> Result<TunnelStream, Refusal> {
        admit(&self.services(), header)?;
        // The limit refuses one stream and leaves the tunnel healthy.
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            Refusal::new(
                RefusalCode::TooManyStreams,
                format!(
                    "this tunnel already carries {} streams (--max-streams-per-tunnel); try again shortly",
                    self.max_streams
                ),
            )
        })?;
        // Then the operator's share: one operator cannot take every stream.
        let share = match &header.operator {
            Some(operator) => Some(self.take_share(operator)?),
            None => None,
        };
        let mut stream = self.link.open().await.map_err(|e| {
            tracing::warn!(session = %self.session_id, error = %e, "cannot open a stream on the tunnel");
            Refusal::new(
                RefusalCode::AgentUnavailable,
                "the tunnel to the agent failed; try again shortly",
            )
        })?;
        setup::send_header(&mut stream, header, timeout)
            .await
            .map_err(|e| agent_refusal(self.session_id, e))?;
        Ok(TunnelStream {
            io: stream,
            _permit: Some(permit),
            _share: share,
        })
    }

    fn take_share(&self, operator: &str) -> Result<UserShare, Refusal> {
        let mut shares = self.shares.lock().unwrap_or_else(|p| p.into_inner());
        let held = shares.entry(operator.to_owned()).or_insert(0);
        if *held >= self.max_streams_per_user {
            return Err(Refusal::new(
                RefusalCode::UserStreamLimit,
                format!(
                    "you hold {held} of this tunnel's streams, as many as one operator may (--max-streams-per-user); close some"
                ),
            ));
        }
        *held += 1;
        Ok(UserShare {
            counts: self.shares.clone(),
            operator: operator.to_owned(),
        })
    }

    /// Tells the agent why, then closes the tunnel (a closed session also
    /// ends the WebSocket with close code 4000, see the tunnel endpoint).
    pub async fn close(&self, code: CloseCode, reason: &str) {
        // The driver sends the close and ends; the tunnel task then lets
        // it reach the agent and closes the connection. If the driver is
        // gone, the tunnel is already ending that way: closing the
        // connection here could drop a close message still on its way (a
        // system deleted sends `credentials_revoked`, then its session's
        // close lands here).
        self.link.close(code, reason).await;
    }
}

/// What the operator is told when the agent of `session_id` did not
/// accept a stream. The agent's own refusal goes on as it is, but an agent
/// cannot speak for the server: a code about access, limits or sessions
/// from it becomes `other`.
pub(crate) fn agent_refusal(session_id: SessionId, failed: SetupError) -> Refusal {
    match failed {
        SetupError::Refused(refusal) if Refusal::is_agent_code(refusal.code) => refusal,
        SetupError::Refused(refusal) => {
            tracing::warn!(session = %session_id, code = %refusal.code, "the agent refused a stream with a server's code");
            Refusal::new(RefusalCode::Other, refusal.reason)
        }
        SetupError::Failed(e) => {
            tracing::warn!(session = %session_id, error = %e, "a stream to the agent failed during setup");
            Refusal::new(
                RefusalCode::AgentUnavailable,
                "the tunnel to the agent failed; try again shortly",
            )
        }
        SetupError::Timeout(_) => Refusal::new(
            RefusalCode::AgentTimeout,
            "the agent did not answer in time",
        ),
    }
}

/// Live tunnels of this node.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Maps>,
}

#[derive(Debug, Default)]
struct Maps {
    by_session: HashMap<SessionId, Arc<LiveTunnel>>,
    by_system: HashMap<SystemId, SessionId>,
}

impl Registry {
    /// Adds a tunnel; returns the tunnels it replaces: the one that carried
    /// the same session (a takeover) and any other of the same system.
    pub fn insert(&self, tunnel: Arc<LiveTunnel>) -> Vec<Arc<LiveTunnel>> {
        let mut maps = self.lock();
        let mut replaced = Vec::new();
        if let Some(other) = maps
            .by_system
            .insert(tunnel.system_id, tunnel.session_id)
            .filter(|old| *old != tunnel.session_id)
            .and_then(|old| maps.by_session.remove(&old))
        {
            replaced.push(other);
        }
        if let Some(same) = maps.by_session.insert(tunnel.session_id, tunnel) {
            replaced.push(same);
        }
        replaced
    }

    /// Removes `tunnel` if it is still the one registered for its session.
    /// Returns true when no tunnel is left for that session (so the session
    /// lost its tunnel), false when another tunnel has taken it over.
    pub fn remove(&self, tunnel: &Arc<LiveTunnel>) -> bool {
        let mut maps = self.lock();
        match maps.by_session.get(&tunnel.session_id) {
            Some(current) if Arc::ptr_eq(current, tunnel) => {
                maps.by_session.remove(&tunnel.session_id);
                if maps.by_system.get(&tunnel.system_id) == Some(&tunnel.session_id) {
                    maps.by_system.remove(&tunnel.system_id);
                }
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// The live tunnel of a session.
    pub fn by_session(&self, session_id: SessionId) -> Option<Arc<LiveTunnel>> {
        self.lock().by_session.get(&session_id).cloned()
    }

    /// The live tunnel of a system.
    pub fn by_system(&self, system_id: SystemId) -> Option<Arc<LiveTunnel>> {
        let maps = self.lock();
        let session_id = maps.by_system.get(&system_id)?;
        maps.by_session.get(session_id).cloned()
    }

    /// Every live tunnel.
    pub fn all(&self) -> Vec<Arc<LiveTunnel>> {
        self.lock().by_session.values().cloned().collect()
    }

    /// How many tunnels are live.
    pub fn len(&self) -> usize {
        self.lock().by_session.len()
    }

    /// Whether no tunnel is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        // A panic while holding this lock leaves the maps consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counters of a live tunnel, for logs.
pub(crate) fn describe(t: &LiveTunnel) -> String {
    let c = t.link.counters();
    format!(
        "streams {} opened, bytes {} in / {} out",
        c.streams_opened, c.bytes_in, c.bytes_out
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rtunnel_core::link;
    use rtunnel_core::mux::{memory::MemoryMux, shared};
    use rtunnel_core::proto::StreamReply;

    /// A tunnel over an in-memory link to an "agent" that answers every
    /// stream with `reply`.
    async fn tunnel_to_agent_answering(reply: StreamReply) -> LiveTunnel {
        let (near, far) = MemoryMux::pair();
        tokio::spawn(async move {
            let dialed = link::dial(shared(far), "agent/test", None).await.unwrap();
            let end = dialed
                .driver
                .run(move |mut stream| {
                    let reply = reply.clone();
                    tokio::spawn(async move {
                        let _ = setup::accept_header(&mut stream, Duration::from_secs(5)).await;
                        setup::refuse(&mut stream, reply).await;
                    });
                })
                .await;
            drop((dialed.link, end));
        });
        let incoming = link::accept(shared(near), Duration::from_secs(5))
            .await
            .unwrap();
        let (link, driver) = incoming
            .welcome(SessionId::new(), Duration::from_secs(15), None)
            .await
            .unwrap();
        tokio::spawn(driver.run(drop));
        LiveTunnel {
            session_id: link.session_id(),
            system_id: SystemId::new(),
            link,
            services: std::sync::RwLock::new(Arc::new(vec![ServiceInfo {
                name: "web".into(),
                kind: StreamKind::Tcp,
                target: Some("127.0.0.1:80".into()),
                tls: false,
                host_header: Default::default(),
                consent: Default::default(),
                shared: false,
            }])),
            streams: Arc::new(tokio::sync::Semaphore::new(4)),
            max_streams: 4,
            shares: Default::default(),
            max_streams_per_user: 2,
            home: None,
        }
    }

    #[tokio::test]
    async fn an_agent_cannot_refuse_with_the_servers_codes() {
        let header = StreamHeader::new("web", StreamKind::Http).opened_by("olga");
        // Its own codes pass as they are...
        let tunnel = tunnel_to_agent_answering(StreamReply::refused(
            RefusalCode::ServiceUnreachable,
            "cannot reach web",
        ))
        .await;
        let refusal = tunnel
            .open_stream(&header, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(refusal.code, RefusalCode::ServiceUnreachable);
        // ...a server's code (which would log the operator out, or look
        // like the session ended) does not.
        for forged in [
            RefusalCode::LoginEnded,
            RefusalCode::SessionEnded,
            RefusalCode::NoGrant,
        ] {
            let tunnel = tunnel_to_agent_answering(StreamReply::refused(forged, "trust me")).await;
            let refusal = tunnel
                .open_stream(&header, Duration::from_secs(5))
                .await
                .unwrap_err();
            assert_eq!(refusal.code, RefusalCode::Other, "{forged}");
            assert_eq!(refusal.reason, "trust me");
        }
    }
}
