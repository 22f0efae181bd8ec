//! Visits: one user's use of one proxied service, as the access log and
//! the access checks see it.
//!
//! HTTP has no connection that means "the operator is using the service":
//! a browser opens and drops keep-alive connections as it likes. So the
//! proxy keeps a visit per user, login, session and service. It opens with
//! the first request (an access-log entry of kind `http`, stored before the
//! request goes on), counts the body bytes of every request and response
//! and of upgraded connections, and closes after [`VISIT_IDLE`] without a
//! request in flight. While it is open, a watcher cuts everything in flight
//! (responses being streamed, WebSockets) the moment the user loses the
//! right to connect, with the same checks as forwards and terminals.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use rtunnel_core::ids::{SessionId, SystemId};
use rtunnel_core::store::{AccessKind, AccessLog, AuditEvent, AuditKind};
use tokio::sync::Mutex;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use uuid::Uuid;

use crate::error::ApiError;
use crate::revocation::Holder;
use crate::state::AppState;

/// A visit with nothing in flight for this long is over.
pub(crate) const VISIT_IDLE: Duration = Duration::from_secs(60);

/// How often a visit looks at whether it is idle.
const IDLE_TICK: Duration = Duration::from_secs(5);

/// What a visit is of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct VisitKey {
    /// Who, and with which login.
    pub holder: Holder,
    /// The session.
    pub session_id: SessionId,
    /// The service.
    pub service: String,
}

/// One open visit.
#[derive(Debug)]
pub(crate) struct Visit {
    entry_id: Uuid,
    to_service: AtomicU64,
    from_service: AtomicU64,
    in_flight: AtomicUsize,
    last_active: StdMutex<Instant>,
    cut: CancellationToken,
}

impl Visit {
    /// Cancelled when the visit's access is gone.
    pub(crate) fn cut(&self) -> &CancellationToken {
        &self.cut
    }

    /// Counts bytes sent to the service.
    pub(crate) fn sent(&self, n: u64) {
        self.to_service.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts bytes received from the service.
    pub(crate) fn received(&self, n: u64) {
        self.from_service.fetch_add(n, Ordering::Relaxed);
    }
}

/// Keeps a visit open while a request (or an upgraded connection) is in
/// flight.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Visit>);

impl InFlight {
    /// The visit.
    pub(crate) fn visit(&self) -> &Arc<Visit> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last_active.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The open visits of this node.
#[derive(Debug, Default)]
pub(crate) struct Visits {
    open: Mutex<HashMap<VisitKey, Arc<Visit>>>,
}

/// Who is visiting, for the access log and the audit log.
#[derive(Debug, Clone)]
pub(crate) struct Visitor {
    /// The user's name.
    pub name: String,
    /// The system of the session.
    pub system_id: SystemId,
    /// The client's address.
    pub peer: SocketAddr,
}

impl Visits {
    /// Joins the open visit of `key` or opens one (its access-log entry is
    /// stored first: 503 and nothing opens if it cannot be).
    pub(crate) async fn enter(
        state: &Arc<AppState>,
        key: VisitKey,
        visitor: &Visitor,
    ) -> Result<InFlight, ApiError> {
        let visits = &state.proxy.visits;
        // Held across the store write so one visit opens per key; only the
        // first request of a visit waits on it.
        let mut open = visits.open.lock().await;
        if let Some(visit) = open.get(&key).filter(|v| !v.cut.is_cancelled()) {
            visit.in_flight.fetch_add(1, Ordering::AcqRel);
            return Ok(InFlight(visit.clone()));
        }
        let entry = AccessLog::opening(
            key.session_id,
            AccessKind::Http,
            Some(key.service.clone()),
            visitor.name.clone(),
            Some(visitor.peer.ip().to_string()),
        );
        state
            .access_log
            .open(&entry)
            .await
            .map_err(|e| ApiError::unavailable("access_log_unavailable", e))?;
        let visit = Arc::new(Visit {
            entry_id: entry.id,
            to_service: AtomicU64::new(0),
            from_service: AtomicU64::new(0),
            in_flight: AtomicUsize::new(1),
            last_active: StdMutex::new(Instant::now()),
            cut: CancellationToken::new(),
        });
        open.insert(key.clone(), visit.clone());
        drop(open);
        tokio::spawn(watch(state.clone(), key, visitor.clone(), visit.clone()));
        Ok(InFlight(visit))
    }
}

/// Ends the visit when it idles, and cuts it when access goes.
async fn watch(state: Arc<AppState>, key: VisitKey, visitor: Visitor, visit: Arc<Visit>) {
    let lost = state.access.connect_lost(key.holder, visitor.system_id);
    let mut lost = std::pin::pin!(lost);
    let error = loop {
        tokio::select! {
            code = &mut lost => {
                tracing::info!(user = %visitor.name, session = %key.session_id, service = %key.service, "access gone ({code}): cutting the proxy visit");
                visit.cut.cancel();
                let mut event = AuditEvent::new(AuditKind::AccessCut);
                event.actor = Some(visitor.name.clone());
                event.system_id = Some(visitor.system_id);
                event.session_id = Some(key.session_id);
                event.ip_address = Some(visitor.peer.ip().to_string());
                event.details = serde_json::json!({"kind": AccessKind::Http, "service": key.service, "reason": code});
                state.audit.best_effort(event).await;
                break Some("access revoked");
            }
            _ = tokio::time::sleep(IDLE_TICK) => {
                // Decided and taken out under the lock: no request can
                // join an idle visit between the two.
                let mut open = state.proxy.visits.open.lock().await;
                let idle = visit.in_flight.load(Ordering::Acquire) == 0
                    && visit
                        .last_active
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .elapsed()
                        >= VISIT_IDLE;
                if idle {
                    remove(&mut open, &key, &visit);
                    break None;
                }
            }
            _ = state.shutdown.cancelled() => {
                visit.cut.cancel();
                break Some("server shutting down");
            }
        }
    };
    // Cut: requests in flight fail; new ones open a new visit (and are
    // checked again).
    remove(&mut *state.proxy.visits.open.lock().await, &key, &visit);
    let to = visit.to_service.load(Ordering::Relaxed);
    let from = visit.from_service.load(Ordering::Relaxed);
    let why = error.map(str::to_owned);
    state.access_log.close(visit.entry_id, to, from, why);
    tracing::info!(
        user = %visitor.name,
        session = %key.session_id,
        service = %key.service,
        bytes_to_service = to,
        bytes_from_service = from,
        error,
        "proxy visit ended"
    );
}

fn remove(open: &mut HashMap<VisitKey, Arc<Visit>>, key: &VisitKey, visit: &Arc<Visit>) {
    if open.get(key).is_some_and(|v| Arc::ptr_eq(v, visit)) {
        open.remove(key);
    }
}

/// Which way a metered body flows.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Direction {
    /// A request body, to the service.
    ToService,
    /// A response body, from the service.
    FromService,
}

/// A body that counts its bytes into a visit, keeps the visit in flight
/// until it ends, and fails the moment the visit is cut.
pub(crate) struct Metered<B> {
    inner: B,
    direction: Direction,
    in_flight: Option<InFlight>,
    visit: Arc<Visit>,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<B> std::fmt::Debug for Metered<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metered")
            .field("direction", &self.direction)
            .finish_non_exhaustive()
    }
}

impl<B> Metered<B> {
    /// Meters `inner` into `visit`; `in_flight`, if given, is released when
    /// the body ends or is dropped.
    pub(crate) fn new(
        inner: B,
        direction: Direction,
        visit: Arc<Visit>,
        in_flight: Option<InFlight>,
    ) -> Self {
        Metered {
            inner,
            direction,
            in_flight,
            cut: Box::pin(visit.cut.clone().cancelled_owned()),
            visit,
        }
    }
}

/// The error a cut body ends with.
#[derive(Debug, thiserror::Error)]
#[error("access to this service was revoked")]
pub(crate) struct Cut;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.cut.as_mut().poll(cx).is_ready() {
            this.in_flight = None;
            return Poll::Ready(Some(Err(Box::new(Cut))));
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    match this.direction {
                        Direction::ToService => this.visit.sent(n),
                        Direction::FromService => this.visit.received(n),
                    }
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.in_flight = None,
            Poll::Pending => {}
        }
        polled.map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
