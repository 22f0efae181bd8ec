//! One way to a service behind an agent.
//!
//! Every stream an operator gets (a forwarded connection, a proxied
//! request, a terminal) is opened by [`Streams::open`]: it finds the
//! session's tunnel on this node or on the node holding it, checks the
//! header against the agent's manifest, takes the stream limits, and hands
//! back the agent's answer as it is. A refusal is a typed [`Refusal`],
//! whoever made it (the agent, this node, the node holding the tunnel);
//! it becomes a stream reply (`From<Refusal> for StreamReply`, in
//! `rtunnel-core`) or an API error (`From<Refusal> for ApiError`) in one
//! place each.

use std::sync::Arc;
use std::time::Duration;

use rtunnel_core::frame::read_frame;
use rtunnel_core::ids::{SessionId, SystemId};
use rtunnel_core::proto::{
    MAX_STREAM_HEADER_BYTES, Refusal, RefusalCode, StreamHeader, StreamReply,
};
use rtunnel_core::setup::PassReply;
use rtunnel_core::setup::pipeline::OnReply;
use rtunnel_core::store::{AuditEvent, AuditKind, SessionStatus, SessionStore};

use crate::cluster::Cluster;
use crate::registry::TunnelStream;

/// How long a client is told to wait for an agent on its way back.
pub(crate) const RECONNECT_RETRY: Duration = Duration::from_secs(5);

/// Opens streams to agents, wherever their tunnels are.
#[derive(Clone)]
pub(crate) struct Streams {
    cluster: Arc<Cluster>,
    sessions: Arc<dyn SessionStore>,
    audit: crate::state::Audit,
    setup_timeout: Duration,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("setup_timeout", &self.setup_timeout)
            .finish_non_exhaustive()
    }
}

impl Streams {
    /// Streams through `cluster`'s tunnels; `sessions` says why a session
    /// has none; an agent gets `setup_timeout` to answer each stream.
    pub(crate) fn new(
        cluster: Arc<Cluster>,
        sessions: Arc<dyn SessionStore>,
        audit: crate::state::Audit,
        setup_timeout: Duration,
    ) -> Self {
        Streams {
            cluster,
            sessions,
            audit,
            setup_timeout,
        }
    }

    /// Opens a stream for `header` on the tunnel of `session_id`, here or
    /// through the node holding it, and waits for the agent to accept it.
    ///
    /// The header is the server's own (the caller built it, naming the
    /// operator it authenticated); it must name a service of the agent's
    /// manifest with a kind that fits, or it is refused before the agent
    /// hears of it.
    pub(crate) async fn open(
        &self,
        session_id: SessionId,
        header: &StreamHeader,
    ) -> Result<TunnelStream, Refusal> {
        let mut stream = self.open_pipelined(session_id, header).await?;
        // The answer, as the operator would get it: `pending` ones first
        // (the stream's own deadline moves with them).
        loop {
            let answer = read_frame::<StreamReply, _>(&mut stream, MAX_STREAM_HEADER_BYTES).await;
            match (answer, stream.outcome()) {
                (Ok(StreamReply::Pending { .. }), _) => continue,
                (_, Some(Ok(()))) => return Ok(stream.into_inner()),
                (_, Some(Err(refusal))) => return Err(refusal.clone()),
                // A stream reply cannot fail to read before the outcome.
                (_, None) => {
                    return Err(Refusal::new(
                        RefusalCode::AgentUnavailable,
                        "the stream to the agent failed; try again shortly",
                    ));
                }
            }
        }
    }

    /// Opens a stream for `header` as [`open`](Self::open) does, but
    /// does not wait for the agent: the header is on its way, and the
    /// payload may follow at once (the agent holds it until it has
    /// answered). The stream's first bytes are the answer, as a stream
    /// reply to pass on to the operator (see [`PassReply`]).
    pub(crate) async fn open_pipelined(
        &self,
        session_id: SessionId,
        header: &StreamHeader,
    ) -> Result<PassReply<TunnelStream>, Refusal> {
        let started = std::time::Instant::now();
        let (opened, system_id) = match self.cluster.route(session_id).await {
            Some(route) => (
                route
                    .open_pipelined(&self.cluster, header, self.setup_timeout)
                    .await,
                Some(route.system_id()),
            ),
            None => (Err(self.no_tunnel(session_id).await), None),
        };
        match opened {
            Ok(opening) => {
                let streams = self.clone();
                let header = header.clone();
                let on_reply: OnReply = Box::new(move |result| {
                    let event = streams.answered(session_id, system_id, &header, started, result);
                    if let Some(event) = event {
                        tokio::spawn(async move { streams.audit.best_effort(event).await });
                    }
                });
                Ok(opening.pass_reply().on_reply(on_reply))
            }
            Err(refusal) => {
                let result = Err(refusal.clone());
                if let Some(event) = self.answered(session_id, system_id, header, started, &result)
                {
                    self.audit.best_effort(event).await;
                }
                Err(refusal)
            }
        }
    }

    /// Counts a stream's answer, and returns the audit event it needs:
    /// the customer's no is the customer's decision about an access, and
    /// is audited (each took a question to the customer, so there are only
    /// as many as the customer answered).
    fn answered(
        &self,
        session_id: SessionId,
        system_id: Option<SystemId>,
        header: &StreamHeader,
        started: std::time::Instant,
        result: &Result<(), Refusal>,
    ) -> Option<AuditEvent> {
        let metrics = crate::metrics::global();
        let refusal = match result {
            Ok(()) => {
                metrics.stream_opened(header.kind.as_str(), started.elapsed());
                return None;
            }
            Err(refusal) => refusal,
        };
        metrics.stream_refused(refusal.code.as_str());
        if refusal.code != RefusalCode::ConsentDenied {
            return None;
        }
        let mut event = AuditEvent::new(AuditKind::ConsentDenied);
        event.actor = header.operator.clone();
        event.session_id = Some(session_id);
        event.system_id = system_id;
        event.details = serde_json::json!({
            "service": header.service,
            "kind": header.kind.as_str(),
            "reason": refusal.reason,
        });
        Some(event)
    }

    /// Why a session has no live tunnel.
    async fn no_tunnel(&self, session_id: SessionId) -> Refusal {
        match self.sessions.session(session_id).await {
            Ok(Some(s)) if s.status.is_final() => Refusal::new(
                RefusalCode::SessionEnded,
                format!("the session is {}", s.status.as_str()),
            ),
            // Active without a tunnel: the agent just left, or its node's
            // route is not known here yet.
            Ok(Some(s))
                if matches!(s.status, SessionStatus::GracePeriod | SessionStatus::Active) =>
            {
                Refusal::new(
                    RefusalCode::AgentReconnecting,
                    "the agent is reconnecting; try again in a moment",
                )
            }
            _ => Refusal::new(
                RefusalCode::AgentUnavailable,
                "the agent of this session is not connected",
            ),
        }
    }
}
