//! Driving support sessions through the state machine of
//! [`rtunnel_core::session`]: applying events, performing the actions, and
//! the sweeper that delivers deadlines (grace periods running out,
//! lifetimes ending), which survive restarts because they live in the store.

use std::sync::Arc;
use std::time::Duration;

use rtunnel_core::ids::{SessionId, SystemId};
use rtunnel_core::proto::CloseCode;
use rtunnel_core::session::{Action, Event, Transition, TransitionError};
use rtunnel_core::store::{AuditEvent, AuditKind, SessionRecord, SessionStore, now_millis};
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::events::Change;
use crate::state::{Audit, log_store_error};

/// How often the sweeper looks for sessions whose deadline has passed.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Sessions handled per sweep at most; the rest wait for the next one.
pub(crate) const SWEEP_BATCH: u32 = 500;

/// How many times an event is stepped again after losing a compare-and-set.
const CONFLICT_RETRIES: u32 = 3;

/// Why applying an event did not change the session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// No such session.
    #[error("no such session")]
    NotFound,
    /// The state machine refused the event.
    #[error(transparent)]
    Refused(#[from] TransitionError),
    /// The session changed between reading and writing; try again.
    #[error("the session changed meanwhile")]
    Conflict,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] rtunnel_core::store::StoreError),
}

/// Support sessions as they move through their lifecycle: applies events
/// (compare and set in the store, retried on conflict), performs the
/// transitions' actions on the live tunnel wherever it is, audits the
/// endings the server decides, and runs the sweeper that delivers
/// deadlines. Clones share everything.
///
/// ```no_run
/// # async fn run(server: rtunnel_server::Server, id: rtunnel_core::ids::SessionId) {
/// use rtunnel_core::session::Event;
///
/// // End a session from your own code (audit it first, as the API does).
/// let lifecycle = server.state().lifecycle.clone();
/// match lifecycle.try_apply(id, Event::OperatorClosed).await {
///     Ok(t) => println!("now {:?}", t.next.status),
///     Err(e) => eprintln!("not closed: {e}"),
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct Lifecycle {
    sessions: Arc<dyn SessionStore>,
    audit: Audit,
    cluster: Arc<Cluster>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle").finish_non_exhaustive()
    }
}

impl Lifecycle {
    /// Sessions in `sessions`, endings audited to `audit`, tunnels closed
    /// through `cluster`.
    pub fn new(sessions: Arc<dyn SessionStore>, audit: Audit, cluster: Arc<Cluster>) -> Self {
        Lifecycle {
            sessions,
            audit,
            cluster,
        }
    }

    /// Applies `event` to a session now: loads, steps, stores (compare and
    /// set), performs the actions and audits the end of a session. Logs
    /// why nothing changed.
    pub async fn apply(&self, id: SessionId, event: Event) -> Option<Transition> {
        match self.try_apply(id, event).await {
            Ok(t) => Some(t),
            Err(ApplyError::Store(e)) => {
                log_store_error("updating a session", &e);
                None
            }
            Err(e) => {
                tracing::debug!(session = %id, ?event, "session not changed: {e}");
                None
            }
        }
    }

    /// [`Lifecycle::apply`], returning why nothing changed.
    pub async fn try_apply(&self, id: SessionId, event: Event) -> Result<Transition, ApplyError> {
        let mut retries = 0;
        loop {
            let session = self
                .sessions
                .session(id)
                .await?
                .ok_or(ApplyError::NotFound)?;
            match self.step_and_store(&session, event).await {
                // Another writer got there first (the tunnel's node put the
                // session in grace while an operator on another node closed
                // it, say): the event is stepped again from what it wrote.
                Err(ApplyError::Conflict) if retries < CONFLICT_RETRIES => retries += 1,
                done => return done,
            }
        }
    }

    async fn step_and_store(
        &self,
        session: &SessionRecord,
        event: Event,
    ) -> Result<Transition, ApplyError> {
        let now = now_millis();
        let t = session.lifecycle().step(event, now)?;
        if t.next == session.lifecycle() && t.actions.is_empty() {
            return Ok(t);
        }
        // Losing a tunnel only ends the session's time on this node if this
        // node still holds it: an agent that moved to another node meanwhile
        // keeps its session active there.
        let held_by = matches!(event, Event::TunnelLost { .. }).then(|| self.cluster.node_id());
        let stored = self
            .sessions
            .apply_lifecycle(
                session.id,
                session.status,
                held_by,
                &t.next,
                t.end_reason,
                now,
            )
            .await?;
        if !stored {
            return Err(ApplyError::Conflict);
        }
        self.cluster
            .announce(Change::Session {
                id: session.id,
                system_id: session.system_id,
                status: t.next.status,
            })
            .await;
        if t.next.status != session.status {
            match t.end_reason {
                Some(reason) => tracing::info!(
                    session = %session.id,
                    from = %session.status,
                    to = %t.next.status,
                    reason,
                    "session state changed"
                ),
                None => tracing::info!(
                    session = %session.id,
                    from = %session.status,
                    to = %t.next.status,
                    "session state changed"
                ),
            }
        }
        // An operator's close is audited by the API, with the operator's
        // name, before it happens; endings the server decides are audited
        // here.
        if t.next.status.is_final() && event != Event::OperatorClosed {
            let kind = match t.next.status {
                rtunnel_core::store::SessionStatus::Expired => AuditKind::SessionExpired,
                _ => AuditKind::SessionClosed,
            };
            let mut ev = AuditEvent::new(kind);
            ev.actor = Some("system".into());
            ev.system_id = Some(session.system_id);
            ev.session_id = Some(session.id);
            ev.details = serde_json::json!({"reason": t.end_reason});
            self.audit.best_effort(ev).await;
        }
        self.perform(session.id, &t.actions).await;
        Ok(t)
    }

    /// Performs a transition's actions on the live tunnel, on whichever
    /// node holds it.
    pub(crate) async fn perform(&self, id: SessionId, actions: &[Action]) {
        for action in actions {
            match action {
                Action::CloseTunnel { code, reason } => {
                    self.cluster.close_tunnel(id, *code, reason).await;
                }
                // The tunnel endpoint issues the new token in its welcome.
                Action::RotateReconnectToken => {}
            }
        }
    }

    /// Closes a live tunnel of `system_id`, on whichever node holds it,
    /// telling the agent its credentials are gone (`credentials_revoked`,
    /// `why`), and ends its session.
    pub async fn cut_system(&self, system_id: SystemId, why: &str) {
        let Some(tunnel) = self.cluster.route_of_system(system_id).await else {
            return;
        };
        let session_id = tunnel.session_id();
        tracing::info!(system = %system_id, session = %session_id, "{why}: closing the tunnel");
        self.cluster
            .close_tunnel(session_id, CloseCode::CredentialsRevoked, why)
            .await;
        self.apply(session_id, Event::OperatorClosed).await;
    }

    /// Delivers [`Event::Tick`] to every session whose deadline has passed,
    /// every [`SWEEP_INTERVAL`], until `shutdown`.
    pub(crate) async fn sweep(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let due = match self.sessions.due_sessions(now_millis(), SWEEP_BATCH).await {
                Ok(due) => due,
                Err(e) => {
                    log_store_error("looking for due sessions", &e);
                    continue;
                }
            };
            for session in due {
                if let Err(e) = self.step_and_store(&session, Event::Tick).await {
                    tracing::debug!(session = %session.id, "sweep skipped a session: {e}");
                }
            }
        }
    }
}
