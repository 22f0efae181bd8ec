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

use rtunnel_core::ids::SessionId;
use rtunnel_core::proto::{Refusal, RefusalCode, StreamHeader};
use rtunnel_core::store::{SessionStatus, SessionStore};

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
        let started = std::time::Instant::now();
        let (opened, system_id) = match self.cluster.route(session_id).await {
            Some(route) => (
                route
                    .open_stream(&self.cluster, header, self.setup_timeout)
                    .await,
                Some(route.system_id()),
            ),
            None => (Err(self.no_tunnel(session_id).await), None),
        };
        let metrics = crate::metrics::global();
        match &opened {
            Ok(_) => metrics.stream_opened(header.kind.as_str(), started.elapsed()),
            Err(refusal) => metrics.stream_refused(refusal.code.as_str()),
        }
        // The customer's no is the customer's decision about an access:
        // it is audited (each took a question to the customer, so there
        // are only as many as the customer answered).
        if let Err(refusal) = &opened
            && refusal.code == RefusalCode::ConsentDenied
        {
            let mut event =
                rtunnel_core::store::AuditEvent::new(rtunnel_core::store::AuditKind::ConsentDenied);
            event.actor = header.operator.clone();
            event.session_id = Some(session_id);
            event.system_id = system_id;
            event.details = serde_json::json!({
                "service": header.service,
                "kind": header.kind.as_str(),
                "reason": refusal.reason,
            });
            self.audit.best_effort(event).await;
        }
        opened
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
