//! Live changes: what `GET /api/v1/events` streams to consoles.
//!
//! Every change to a session (created, active, in grace, extended, ended)
//! or to a system (created, its secret replaced, deleted) is announced once,
//! by the node that made it, through [`Cluster::announce`]: subscribers on
//! this node hear it at once, the other nodes through the cluster's command
//! channel. A change says *what* changed, not how it looks now: a console
//! reloads the session or system through the API, which decides access again.
//!
//! The stream sends each subscriber only changes of systems it may read (an
//! admin everything, others what they hold a grant on; decisions cached
//! until access changes, a yes for 30 s at most since a grant may end by
//! itself), ends when its credential does (logout, revoked or expired
//! token, disabled user; checked when access changes and every minute),
//! answers a subscriber too slow to keep up with one `resync` event (reload
//! everything) instead of holding changes for it, and sends a comment
//! every 15 s so proxies keep it open. One user holds at most
//! [`MAX_STREAMS_PER_USER`] streams per node.
//!
//! [`Cluster::announce`]: crate::Cluster::announce

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use rtunnel_auth::access::Action;
use rtunnel_core::ids::{SessionId, SystemId, UserId};
use rtunnel_core::store::{Role, SessionStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::api::auth::{Authenticated, authorize, reauthenticate};
use crate::error::ApiError;
use crate::revocation::Access;

/// Changes held for subscribers that have not read them yet; one that
/// falls further behind is told to resync.
const BACKLOG: usize = 1024;

/// How long a subscriber's "may not see this system" is kept.
const NO_KEPT_FOR: Duration = Duration::from_secs(10);

/// How long a "may see" is kept: a grant that ends by itself moves no
/// access epoch, so a yes is asked again after this long.
const YES_KEPT_FOR: Duration = Duration::from_secs(30);

/// How often an open stream checks its credential even when nothing moved
/// (a login or token that expires by itself moves no epoch either).
const RECHECK: Duration = Duration::from_secs(60);

/// Event streams one user may hold open at once (on one node).
pub(crate) const MAX_STREAMS_PER_USER: usize = 8;

/// How often an idle stream sends a comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[derive(utoipa::ToSchema)]
#[non_exhaustive]
pub enum Change {
    /// A session was created or changed (status, deadlines, services).
    Session {
        /// The session.
        id: SessionId,
        /// Its system.
        system_id: SystemId,
        /// Its status now.
        status: SessionStatus,
    },
    /// A system was created, changed or deleted.
    System {
        /// The system.
        id: SystemId,
        /// How.
        change: SystemChange,
    },
}

impl Change {
    /// The system the change concerns: who may read that system may hear it.
    pub fn system_id(&self) -> SystemId {
        match self {
            Change::Session { system_id, .. } => *system_id,
            Change::System { id, .. } => *id,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Change::Session { .. } => "session",
            Change::System { .. } => "system",
        }
    }
}

/// How a system changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(utoipa::ToSchema)]
pub enum SystemChange {
    /// Enrolled.
    Created,
    /// Its name or secret changed.
    Updated,
    /// Deleted.
    Deleted,
}

/// This node's subscribers. Clones share them.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Change>,
    /// Open streams per user.
    open: Arc<Mutex<HashMap<UserId, usize>>>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(BACKLOG).0,
            open: Default::default(),
        }
    }
}

/// One user's open stream, counted until dropped.
struct Slot {
    user: UserId,
    open: Arc<Mutex<HashMap<UserId, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

impl Events {
    /// Hears every change announced from now on (on any node, in a
    /// cluster).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }

    /// Tells this node's subscribers (no one listening is fine).
    pub(crate) fn local(&self, change: Change) {
        let _ = self.tx.send(change);
    }

    /// A stream for `user`, or 429 `too_many_event_streams`.
    fn slot(&self, user: UserId) -> Result<Slot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(user).or_default();
        if *n >= MAX_STREAMS_PER_USER {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too_many_event_streams",
                format!(
                    "at most {MAX_STREAMS_PER_USER} event streams per user; close a console tab"
                ),
            ));
        }
        *n += 1;
        Ok(Slot {
            user,
            open: self.open.clone(),
        })
    }
}

/// `GET /api/v1/events`: the changes the caller may see, as server-sent
/// events (`event: session` / `system`, `data:` the change as JSON;
/// `event: resync` when the caller fell behind).
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    responses((status = 200, description = "Server-sent events: `session` and `system` with the change as JSON, `resync`", content_type = "text/event-stream", body = Change), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(crate) async fn stream(
    State(access): State<Access>,
    State(events): State<Events>,
    caller: Authenticated,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let slot = events.slot(caller.user.id)?;
    let changes = events.subscribe();
    let watch = access.watch().subscribe();
    tracing::debug!(user = %caller.user.name, "event stream opened");
    let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let viewer = Viewer {
        _slot: slot,
        recheck,
        access,
        caller,
        visible: HashMap::new(),
        watch,
        changes,
    };
    let stream = futures::stream::unfold(viewer, |mut v| async move {
        let event = v.next().await?;
        Some((Ok(event), v))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// One subscriber: who it is, and what it may see.
struct Viewer {
    _slot: Slot,
    /// When to check the credential again unasked.
    recheck: tokio::time::Interval,
    access: Access,
    /// Checked again whenever access changes.
    caller: Authenticated,
    /// Decisions per system, and when each was taken: a yes kept for
    /// [`YES_KEPT_FOR`] or until access changes, a no for [`NO_KEPT_FOR`]
    /// (a grant given moves no access epoch).
    visible: HashMap<SystemId, (bool, Instant)>,
    watch: tokio::sync::watch::Receiver<u64>,
    changes: broadcast::Receiver<Change>,
}

impl Viewer {
    /// The next event to send; `None` ends the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            tokio::select! {
                changed = self.watch.changed() => {
                    changed.ok()?;
                    self.visible.clear();
                    if !self.still_valid().await {
                        return None;
                    }
                }
                _ = self.recheck.tick() => {
                    if !self.still_valid().await {
                        return None;
                    }
                }

                change = self.changes.recv() => match change {
                    Ok(change) => {
                        if self.may_see(change.system_id()).await {
                            return Event::default().event(change.name()).json_data(&change).ok();
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Some(Event::default().event("resync").data("{}"));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }

    /// Whether the stream's credential still holds (logged out, token
    /// revoked or expired, user disabled: no); a new role is taken on.
    async fn still_valid(&mut self) -> bool {
        match reauthenticate(&self.access, &self.caller).await {
            Ok(Some(user)) => {
                self.caller.user = user;
                true
            }
            Ok(None) => {
                tracing::debug!(user = %self.caller.user.name, "event stream ended: its credential ended");
                false
            }
            // A store that cannot answer ends nothing.
            Err(_) => true,
        }
    }

    async fn may_see(&mut self, system_id: SystemId) -> bool {
        if self.caller.user.role == Role::Admin {
            return true;
        }
        match self.visible.get(&system_id) {
            Some((true, at)) if at.elapsed() < YES_KEPT_FOR => return true,
            Some((false, at)) if at.elapsed() < NO_KEPT_FOR => return false,
            _ => {}
        }
        // A store that cannot answer hides the change (it is not kept: the
        // next one asks again).
        match authorize(&self.access, &self.caller.user, Action::Read, system_id).await {
            Ok(()) => {
                self.visible.insert(system_id, (true, Instant::now()));
                true
            }
            Err(e) if e.status == axum::http::StatusCode::FORBIDDEN => {
                self.visible.insert(system_id, (false, Instant::now()));
                false
            }
            Err(_) => false,
        }
    }
}
