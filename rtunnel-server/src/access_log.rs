//! The access log as the server writes it.
//!
//! An entry is durable before a byte reaches the service:
//! [`AccessLogWriter::open`] returns once it is written, and the connection
//! is answered only then. How an access ended is not on anyone's path:
//! [`AccessLogWriter::close`] queues it.
//!
//! One writer at a time takes whatever has queued and writes the opens with
//! one statement ([`SessionStore::open_accesses`]), answers their waiters,
//! then the closes with another ([`SessionStore::close_accesses`]). With
//! nothing queued there is no writer and no timer, so a lone connection
//! waits for its own insert only; under load the entries that arrive while
//! a batch is written go together in the next (group commit), and a busy
//! server spends one statement on many connections instead of two each.
//!
//! A batch of opens that fails is written again one by one, so one bad
//! entry (its session deleted meanwhile) refuses only its own connection.
//! A close still queued when the process dies is lost, as it would be had
//! the connection been cut at that moment: its entry stays open, which is
//! what a reader sees of a crash either way. A graceful shutdown writes the
//! queue out ([`AccessLogWriter::flush`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtunnel_core::store::{AccessClose, AccessLog, SessionStore, StoreError, now_millis};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

/// How often a failed batch of closes is tried before its closes are given
/// up (logged as errors).
const CLOSE_ATTEMPTS: u32 = 3;
/// The wait between those attempts.
const RETRY_DELAY: Duration = Duration::from_millis(200);

/// Writes the access log: opens in groups, closes in batches. Cheap to
/// clone.
#[derive(Clone)]
pub struct AccessLogWriter {
    inner: Arc<Inner>,
}

struct Inner {
    sessions: Arc<dyn SessionStore>,
    queue: Mutex<Queue>,
    /// How many closes have been written (or given up) since the start, in
    /// the order they were queued: a flush waits for its number.
    written: watch::Sender<u64>,
}

type Opened = oneshot::Sender<Result<(), StoreError>>;

#[derive(Default)]
struct Queue {
    opens: Vec<(AccessLog, Opened)>,
    closes: Vec<AccessClose>,
    /// How many closes have been queued since the start.
    queued: u64,
    /// A writer task is running (it takes whatever is queued).
    writing: bool,
}

impl std::fmt::Debug for AccessLogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogWriter")
            .field("written", &*self.inner.written.borrow())
            .finish_non_exhaustive()
    }
}

impl AccessLogWriter {
    /// A writer on `sessions`.
    pub fn new(sessions: Arc<dyn SessionStore>) -> Self {
        AccessLogWriter {
            inner: Arc::new(Inner {
                sessions,
                queue: Mutex::new(Queue::default()),
                written: watch::Sender::new(0),
            }),
        }
    }

    /// Writes a new entry; when this returns `Ok` it is durable.
    pub async fn open(&self, entry: &AccessLog) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.push(|queue| queue.opens.push((entry.clone(), tx)));
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Backend("the access-log writer stopped".into())))
    }

    /// Queues how the access `id` ended (now, with these byte counts and
    /// error); it is written shortly, with whatever else has queued. Needs
    /// a tokio runtime (it may start the writer).
    pub fn close(
        &self,
        id: Uuid,
        bytes_to_service: u64,
        bytes_from_service: u64,
        error: Option<String>,
    ) {
        crate::metrics::global().relayed(bytes_to_service, bytes_from_service);
        let close = AccessClose {
            id,
            closed_at: now_millis(),
            bytes_to_service,
            bytes_from_service,
            error,
        };
        self.push(|queue| {
            queue.closes.push(close);
            queue.queued += 1;
        });
    }

    /// Waits until every close queued before the call is written (or
    /// given up); closes queued meanwhile do not hold it up.
    pub async fn flush(&self) {
        let target = self.lock().queued;
        let mut written = self.inner.written.subscribe();
        // The sender lives in `self`: waiting cannot fail.
        let _ = written.wait_for(|n| *n >= target).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.inner.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues, and starts the writer unless it runs.
    fn push(&self, add: impl FnOnce(&mut Queue)) {
        let start = {
            let mut queue = self.lock();
            add(&mut queue);
            !std::mem::replace(&mut queue.writing, true)
        };
        if start {
            tokio::spawn(self.clone().write_queued());
        }
    }

    /// The writer: takes the queue, writes it, until nothing is left.
    async fn write_queued(self) {
        loop {
            let (opens, closes) = {
                let mut queue = self.lock();
                if queue.opens.is_empty() && queue.closes.is_empty() {
                    queue.writing = false;
                    return;
                }
                (
                    std::mem::take(&mut queue.opens),
                    std::mem::take(&mut queue.closes),
                )
            };
            if !opens.is_empty() {
                self.write_opens(opens).await;
            }
            if !closes.is_empty() {
                self.write_closes(&closes).await;
                self.inner
                    .written
                    .send_modify(|n| *n += closes.len() as u64);
            }
        }
    }

    async fn write_opens(&self, opens: Vec<(AccessLog, Opened)>) {
        let (entries, waiters): (Vec<AccessLog>, Vec<Opened>) = opens.into_iter().unzip();
        let sessions = &self.inner.sessions;
        match sessions.open_accesses(&entries).await {
            Ok(()) => {
                for (entry, w) in entries.iter().zip(waiters) {
                    if w.send(Ok(())).is_err() {
                        // Its connection went while it was written: no one
                        // will close it, so it is closed here.
                        let why = "the client left before the access opened";
                        self.close(entry.id, 0, 0, Some(why.into()));
                    }
                }
            }
            Err(e) if entries.len() == 1 => {
                for w in waiters {
                    let _ = w.send(Err(e.clone()));
                }
            }
            // One entry may be what failed the batch: each on its own.
            Err(_) => {
                for (entry, w) in entries.iter().zip(waiters) {
                    let written = sessions.open_access(entry).await;
                    let ok = written.is_ok();
                    if w.send(written).is_err() && ok {
                        let why = "the client left before the access opened";
                        self.close(entry.id, 0, 0, Some(why.into()));
                    }
                }
            }
        }
    }

    async fn write_closes(&self, batch: &[AccessClose]) {
        let mut attempt = 1;
        loop {
            match self.inner.sessions.close_accesses(batch).await {
                Ok(()) => return,
                Err(e) if attempt < CLOSE_ATTEMPTS => {
                    tracing::warn!(error = %e, closes = batch.len(), attempt, "cannot complete access log entries; trying again");
                    attempt += 1;
                    tokio::time::sleep(RETRY_DELAY).await;
                }
                Err(e) => {
                    let ids: Vec<String> = batch.iter().map(|c| c.id.to_string()).collect();
                    tracing::error!(error = %e, closes = batch.len(), entries = %ids.join(","), "cannot complete access log entries; they stay open");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtunnel_core::store::{AccessKind, SessionRecord, SessionStatus, System};

    async fn store() -> (
        tempfile::TempDir,
        Arc<rtunnel_core::store::sql::SqlStore>,
        AccessLog,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = Arc::new(
            rtunnel_core::store::sql::SqlStore::connect(&url)
                .await
                .unwrap(),
        );
        use rtunnel_core::store::IdentityStore;
        let sys = System {
            id: Uuid::new_v4().into(),
            name: "box".into(),
            key: "k".into(),
            secret_hash: "h".into(),
            created_at: now_millis(),
        };
        store.create_system(&sys).await.unwrap();
        let now = now_millis();
        let session = SessionRecord {
            id: Uuid::new_v4().into(),
            system_id: sys.id,
            status: SessionStatus::Pending,
            created_at: now,
            activated_at: None,
            ended_at: None,
            end_reason: None,
            expires_at: now + 60_000,
            grace_until: None,
            reconnect_token_hash: None,
            agent_addr: None,
            agent_software: None,
            services: vec![],
            node_id: None,
        };
        store.create_session(&session).await.unwrap();
        let entry = AccessLog {
            id: Uuid::new_v4(),
            session_id: session.id,
            kind: AccessKind::Forward,
            service: Some("ssh".into()),
            actor: "alice".into(),
            ip_address: None,
            opened_at: now,
            closed_at: None,
            bytes_to_service: 0,
            bytes_from_service: 0,
            error: None,
        };
        (dir, store, entry)
    }

    #[tokio::test]
    async fn queued_closes_are_written_by_the_time_a_flush_returns() {
        let (_dir, store, template) = store().await;
        let writer = AccessLogWriter::new(store.clone());
        let mut ids = Vec::new();
        for i in 0..50 {
            let entry = AccessLog {
                id: Uuid::new_v4(),
                opened_at: template.opened_at + i,
                ..template.clone()
            };
            writer.open(&entry).await.unwrap();
            ids.push(entry.id);
        }
        // Closed from many tasks at once, as connections end.
        let mut tasks = tokio::task::JoinSet::new();
        for (i, id) in ids.iter().copied().enumerate() {
            let writer = writer.clone();
            tasks.spawn(async move {
                writer.close(id, i as u64, 7, None);
            });
        }
        while tasks.join_next().await.is_some() {}
        writer.flush().await;
        let page = rtunnel_core::store::Page {
            page: 1,
            page_size: 100,
        };
        let got = store.list_access(template.session_id, page).await.unwrap();
        assert_eq!(got.items.len(), 50);
        for e in got.items {
            assert!(e.closed_at.is_some(), "{} is still open", e.id);
            assert_eq!(e.bytes_from_service, 7);
        }
        assert_eq!(*writer.inner.written.borrow(), 50);
        assert!(!writer.inner.queue.lock().unwrap().writing);
    }

    #[tokio::test]
    async fn opens_that_arrive_together_are_written_together_and_fail_alone() {
        let (_dir, store, template) = store().await;
        let writer = AccessLogWriter::new(store.clone());
        let good = AccessLog {
            id: Uuid::new_v4(),
            ..template.clone()
        };
        // A session that does not exist: the database refuses this row.
        let bad = AccessLog {
            id: Uuid::new_v4(),
            session_id: Uuid::new_v4().into(),
            ..template.clone()
        };
        let also_good = AccessLog {
            id: Uuid::new_v4(),
            ..template.clone()
        };
        // All three queue before the writer first runs (one batch).
        let (a, b, c) = tokio::join!(
            writer.open(&good),
            writer.open(&bad),
            writer.open(&also_good)
        );
        a.unwrap();
        assert!(b.is_err(), "the bad entry is refused");
        c.unwrap();
        let page = rtunnel_core::store::Page {
            page: 1,
            page_size: 10,
        };
        let got = store.list_access(template.session_id, page).await.unwrap();
        let mut ids: Vec<Uuid> = got.items.iter().map(|e| e.id).collect();
        ids.sort();
        let mut want = vec![good.id, also_good.id];
        want.sort();
        assert_eq!(ids, want);
    }

    #[tokio::test]
    async fn an_open_whose_caller_left_is_closed_by_the_writer() {
        let (_dir, store, template) = store().await;
        let writer = AccessLogWriter::new(store.clone());
        let entry = AccessLog {
            id: Uuid::new_v4(),
            ..template.clone()
        };
        // Polled once (queued, the writer started), then dropped.
        let mut open = Box::pin(writer.open(&entry));
        assert!(futures::poll!(open.as_mut()).is_pending());
        drop(open);
        let page = rtunnel_core::store::Page {
            page: 1,
            page_size: 10,
        };
        // The writer finishes on its own; the flush sees its close.
        for _ in 0..100 {
            writer.flush().await;
            let got = store.list_access(template.session_id, page).await.unwrap();
            if let Some(e) = got.items.first().filter(|e| e.closed_at.is_some()) {
                assert_eq!(e.id, entry.id);
                assert!(e.error.as_deref().unwrap().contains("left"));
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the entry was never closed");
    }

    #[tokio::test]
    async fn a_flush_with_nothing_queued_returns_at_once() {
        let (_dir, store, _) = store().await;
        let writer = AccessLogWriter::new(store);
        tokio::time::timeout(Duration::from_secs(5), writer.flush())
            .await
            .expect("an empty flush returns");
    }
}
