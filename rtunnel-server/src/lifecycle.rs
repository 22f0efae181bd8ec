//! Driving support sessions through the state machine of
//! [`rtunnel_core::session`]: applying events, performing the actions, and
//! the sweeper that delivers deadlines (grace periods running out,
//! lifetimes ending), which survive restarts because they live in the store.

use std::sync::Arc;
use std::time::Duration;

use rtunnel_core::ids::SessionId;
use rtunnel_core::session::{Action, Event, Transition, TransitionError};
use rtunnel_core::store::{AuditEvent, AuditKind, SessionRecord, now_millis};

use crate::state::{AppState, log_store_error};

/// How often the sweeper looks for sessions whose deadline has passed.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Sessions handled per sweep at most; the rest wait for the next one.
pub(crate) const SWEEP_BATCH: u32 = 500;

/// How many times an event is stepped again after losing a compare-and-set.
const CONFLICT_RETRIES: u32 = 3;

/// Why applying an event did not change the session.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
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

/// Applies `event` to a session now: loads, steps, stores (compare and set),
/// performs the actions and audits the end of a session. Logs refusals.
pub(crate) async fn apply(state: &AppState, id: SessionId, event: Event) -> Option<Transition> {
    match try_apply(state, id, event).await {
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

/// [`apply`], returning why nothing changed.
pub(crate) async fn try_apply(
    state: &AppState,
    id: SessionId,
    event: Event,
) -> Result<Transition, ApplyError> {
    let mut retries = 0;
    loop {
        let session = state
            .stores
            .sessions
            .session(id)
            .await?
            .ok_or(ApplyError::NotFound)?;
        match step_and_store(state, &session, event).await {
            // Another writer got there first (the tunnel's node put the
            // session in grace while an operator on another node closed
            // it, say): the event is stepped again from what it wrote.
            Err(ApplyError::Conflict) if retries < CONFLICT_RETRIES => retries += 1,
            done => return done,
        }
    }
}

async fn step_and_store(
    state: &AppState,
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
    let held_by = matches!(event, Event::TunnelLost { .. }).then(|| state.cluster.node_id());
    let stored = state
        .stores
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
    if t.next.status != session.status {
        tracing::info!(
            session = %session.id,
            from = %session.status,
            to = %t.next.status,
            reason = t.end_reason.unwrap_or(""),
            "session state changed"
        );
    }
    // An operator's close is audited by the API, with the operator's name,
    // before it happens; endings the server decides are audited here.
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
        state.audit.best_effort(ev).await;
    }
    perform(state, session.id, &t.actions).await;
    Ok(t)
}

/// Performs a transition's actions on the live tunnel, on whichever node
/// holds it.
pub(crate) async fn perform(state: &AppState, id: SessionId, actions: &[Action]) {
    for action in actions {
        match action {
            Action::CloseTunnel { code, reason } => {
                state.cluster.close_tunnel(id, *code, reason).await;
            }
            // The tunnel endpoint issues the new token in its welcome.
            Action::RotateReconnectToken => {}
        }
    }
}

/// Delivers [`Event::Tick`] to every session whose deadline has passed,
/// every [`SWEEP_INTERVAL`], until the server shuts down.
pub(crate) async fn sweeper(state: Arc<AppState>) {
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = state.shutdown.cancelled() => return,
        }
        let due = match state
            .stores
            .sessions
            .due_sessions(now_millis(), SWEEP_BATCH)
            .await
        {
            Ok(due) => due,
            Err(e) => {
                log_store_error("looking for due sessions", &e);
                continue;
            }
        };
        for session in due {
            if let Err(e) = step_and_store(&state, &session, Event::Tick).await {
                tracing::debug!(session = %session.id, "sweep skipped a session: {e}");
            }
        }
    }
}
