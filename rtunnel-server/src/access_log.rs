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

/// The first wait before a batch of closes that failed is written again;
/// it doubles up to [`MAX_RETRY_DELAY`], and the closes are kept until
/// they are written (a database away for a while loses none).
const RETRY_DELAY: Duration = Duration::from_millis(200);
/// The longest wait between attempts at writing closes.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// Closes kept while the database is away; past it the oldest are given up
/// (logged), so an outage cannot grow the queue without bound.
const MAX_QUEUED_CLOSES: usize = 100_000;
/// Why a connection's entry is closed by the writer itself.
const CLIENT_LEFT: &str = "the client left before the access opened";

/// Writes the access log: opens in groups, closes in batches. Cheap to
/// clone.
#[derive(Clone)]
pub struct AccessLogWriter {
    inner: Arc<Inner>,
}

struct Inner {
    sessions: Arc<dyn SessionStore>,
    opens: Mutex<Opens>,
    closes: Mutex<Closes>,
    /// How many closes have been written (or given up) since the start, in
    /// the order they were queued: a flush waits for its number.
    written: watch::Sender<u64>,
}

type Opened = oneshot::Sender<Result<(), StoreError>>;

#[derive(Default)]
struct Opens {
    queue: Vec<(AccessLog, Opened)>,
    /// A writer of opens is running (it takes whatever is queued).
    writing: bool,
}

#[derive(Default)]
struct Closes {
    queue: Vec<AccessClose>,
    /// How many closes have been queued since the start.
    queued: u64,
    /// A writer of closes is running.
    writing: bool,
}

impl std::fmt::Debug for AccessLogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogWriter")
            .field("written", &*self.inner.written.borrow())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Clears a writer's flag if its task panics (it clears it itself when it
/// ends normally), so the next entry starts a new writer instead of
/// waiting for one that is gone.
struct Writing<'a, T> {
    state: &'a Mutex<T>,
    flag: fn(&mut T) -> &mut bool,
}

impl<T> Drop for Writing<'_, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            *(self.flag)(&mut lock(self.state)) = false;
        }
    }
}

/// An open waiting for its batch: if the caller goes away after the batch
/// was written but before it saw the answer, the entry is closed here.
struct Waiting {
    answer: Option<oneshot::Receiver<Result<(), StoreError>>>,
    id: Uuid,
    writer: AccessLogWriter,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(mut answer) = self.answer.take()
            && let Ok(Ok(())) = answer.try_recv()
        {
            self.writer.close(self.id, 0, 0, Some(CLIENT_LEFT.into()));
        }
    }
}

impl AccessLogWriter {
    /// A writer on `sessions`.
    pub fn new(sessions: Arc<dyn SessionStore>) -> Self {
        AccessLogWriter {
            inner: Arc::new(Inner {
                sessions,
                opens: Mutex::new(Opens::default()),
                closes: Mutex::new(Closes::default()),
                written: watch::Sender::new(0),
            }),
        }
    }

    /// Writes a new entry; when this returns `Ok` it is durable.
    pub async fn open(&self, entry: &AccessLog) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut opens = lock(&self.inner.opens);
            opens.queue.push((entry.clone(), tx));
            !std::mem::replace(&mut opens.writing, true)
        };
        if start {
            tokio::spawn(self.clone().write_opens());
        }
        let mut waiting = Waiting {
            answer: Some(rx),
            id: entry.id,
            writer: self.clone(),
        };
        let stopped = || StoreError::Backend("the access-log writer stopped".into());
        let result = match waiting.answer.as_mut() {
            Some(answer) => answer.await.unwrap_or_else(|_| Err(stopped())),
            None => Err(stopped()),
        };
        // Answered: nothing left for the guard to do.
        waiting.answer = None;
        result
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
        let start = {
            let mut closes = lock(&self.inner.closes);
            closes.queue.push(close);
            closes.queued += 1;
            !std::mem::replace(&mut closes.writing, true)
        };
        if start {
            tokio::spawn(self.clone().write_closes());
        }
    }

    /// Waits until every close queued before the call is written (or
    /// given up); closes queued meanwhile do not hold it up.
    pub async fn flush(&self) {
        let target = lock(&self.inner.closes).queued;
        let mut written = self.inner.written.subscribe();
        // The sender lives in `self`: waiting cannot fail.
        let _ = written.wait_for(|n| *n >= target).await;
    }

    /// The writer of opens: takes the queue, writes it, answers, until
    /// nothing is left.
    async fn write_opens(self) {
        let _writing = Writing {
            state: &self.inner.opens,
            flag: |o: &mut Opens| &mut o.writing,
        };
        loop {
            let batch = std::mem::take(&mut lock(&self.inner.opens).queue);
            if batch.is_empty() {
                // Checked and cleared under one lock: an entry queued after
                // this finds the flag down and starts a writer.
                let mut opens = lock(&self.inner.opens);
                if opens.queue.is_empty() {
                    opens.writing = false;
                    return;
                }
                continue;
            }
            self.write_batch_of_opens(batch).await;
        }
    }

    async fn write_batch_of_opens(&self, batch: Vec<(AccessLog, Opened)>) {
        let (entries, waiters): (Vec<AccessLog>, Vec<Opened>) = batch.into_iter().unzip();
        let sessions = &self.inner.sessions;
        let results: Vec<Result<(), StoreError>> = match sessions.open_accesses(&entries).await {
            Ok(()) => vec![Ok(()); entries.len()],
            Err(e) if entries.len() == 1 => vec![Err(e)],
            // The database is away: every entry fails alike, at once.
            Err(e) if sessions.ping().await.is_err() => vec![Err(e); entries.len()],
            // One entry may be what failed the batch (its session deleted
            // meanwhile): each on its own. The batch wrote none of them.
            Err(_) => {
                let mut each = Vec::with_capacity(entries.len());
                for entry in &entries {
                    each.push(sessions.open_access(entry).await);
                }
                each
            }
        };
        for ((entry, waiter), result) in entries.iter().zip(waiters).zip(results) {
            let ok = result.is_ok();
            if waiter.send(result).is_err() && ok {
                // Its connection went while it was written: no one will
                // close it, so it is closed here.
                self.close(entry.id, 0, 0, Some(CLIENT_LEFT.into()));
            }
        }
    }

    /// The writer of closes: writes what has queued; a batch that fails is
    /// kept and tried again, with what queued meanwhile, after a growing
    /// wait.
    async fn write_closes(self) {
        let _writing = Writing {
            state: &self.inner.closes,
            flag: |c: &mut Closes| &mut c.writing,
        };
        let mut pending: Vec<AccessClose> = Vec::new();
        let mut delay = RETRY_DELAY;
        loop {
            {
                let mut closes = lock(&self.inner.closes);
                pending.append(&mut closes.queue);
                if pending.is_empty() {
                    closes.writing = false;
                    return;
                }
            }
            match self.inner.sessions.close_accesses(&pending).await {
                Ok(()) => {
                    let n = pending.len() as u64;
                    pending.clear();
                    self.inner.written.send_modify(|w| *w += n);
                    delay = RETRY_DELAY;
                }
                Err(e) => {
                    tracing::warn!(error = %e, closes = pending.len(), "cannot complete access log entries; trying again in {}s", delay.as_secs_f32());
                    if pending.len() > MAX_QUEUED_CLOSES {
                        let excess = pending.len() - MAX_QUEUED_CLOSES;
                        let dropped: Vec<String> =
                            pending.drain(..excess).map(|c| c.id.to_string()).collect();
                        tracing::error!(closes = excess, entries = %dropped.join(","), "too many access log closes waiting for the database; these entries stay open");
                        self.inner.written.send_modify(|w| *w += excess as u64);
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtunnel_core::store::AccessKind;

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
        use rtunnel_core::store::conformance::{pending_session, system};
        let sys = system("box");
        store.create_system(&sys).await.unwrap();
        let now = now_millis();
        let session = pending_session(sys.id);
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
        assert!(!writer.inner.closes.lock().unwrap().writing);
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
    async fn closes_that_fail_are_kept_and_written_when_the_database_is_back() {
        let (dir, store, template) = store().await;
        let writer = AccessLogWriter::new(store.clone());
        writer.open(&template).await.unwrap();
        // A real fault: the table goes away under the writer, then back.
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let side = sqlx::sqlite::SqlitePool::connect(&url).await.unwrap();
        sqlx::query("ALTER TABLE access_logs RENAME TO access_logs_away")
            .execute(&side)
            .await
            .unwrap();
        writer.close(template.id, 5, 6, None);
        // Its first attempts fail (and are logged); it is kept.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(*writer.inner.written.borrow(), 0, "not written yet");
        sqlx::query("ALTER TABLE access_logs_away RENAME TO access_logs")
            .execute(&side)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(20), writer.flush())
            .await
            .expect("written once the table is back");
        let page = rtunnel_core::store::Page {
            page: 1,
            page_size: 10,
        };
        let got = store.list_access(template.session_id, page).await.unwrap();
        assert_eq!(got.items[0].bytes_to_service, 5);
        assert!(got.items[0].closed_at.is_some());
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
