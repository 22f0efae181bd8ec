//! Terminal recordings (asciicast v2, up to `MAX_RECORDING_BYTES`): one
//! [`Recorder`] per terminal. A shared terminal (several participants, see
//! the agent's hub) is recorded once per node: the participants' bridges
//! on this node share one [`Shared`] recorder, fed by one of them at a
//! time, with who joined and left marked in it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use rtunnel_core::recording::{Cast, MAX_RECORDING_BYTES, RecordingSink};
use rtunnel_core::store::now_millis;
use tokio::sync::Mutex;
use uuid::Uuid;

/// Writes the terminal's asciicast recording, up to its size limit.
pub(crate) struct Recorder {
    sink: Option<Box<dyn RecordingSink>>,
    cast: Cast,
    started: Instant,
    bytes: u64,
    truncated: bool,
}

impl Recorder {
    pub(crate) async fn start(
        sink: Option<Box<dyn RecordingSink>>,
        cols: u16,
        rows: u16,
        title: &str,
    ) -> Self {
        let mut r = Recorder {
            sink,
            cast: Cast::new(cols, rows),
            started: Instant::now(),
            bytes: 0,
            truncated: false,
        };
        let header = r.cast.header(now_millis() / 1000, title);
        r.write(header).await;
        r
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub(crate) async fn output(&mut self, bytes: &[u8]) {
        let t = self.now();
        if let Some(line) = self.cast.output(t, bytes) {
            self.write(line).await;
        }
    }

    pub(crate) async fn resize(&mut self, cols: u16, rows: u16) {
        let t = self.now();
        let line = self.cast.resize(t, cols, rows);
        self.write(line).await;
    }

    async fn write(&mut self, line: String) {
        let Some(sink) = self.sink.as_mut() else {
            return;
        };
        if self.bytes + line.len() as u64 + 1 > MAX_RECORDING_BYTES {
            self.truncated = true;
            self.finish().await;
            return;
        }
        self.bytes += line.len() as u64 + 1;
        if let Err(e) = sink.line(&line).await {
            tracing::error!(error = %e, "terminal recording stopped");
            self.sink = None;
        }
    }

    pub(crate) async fn finish(&mut self) {
        if let Some(sink) = self.sink.take()
            && let Err(e) = sink.finish(now_millis(), self.truncated).await
        {
            tracing::error!(error = %e, "cannot complete the terminal recording");
        }
    }
}

impl Recorder {
    /// A marker (`[t, "m", label]`): who joined or left.
    pub(crate) async fn marker(&mut self, label: &str) {
        let t = self.now();
        let line = self.cast.marker(t, label);
        self.write(line).await;
    }
}

/// The recording of one shared terminal on this node.
pub(crate) struct Shared {
    /// The recording's id.
    pub id: Uuid,
    recorder: Mutex<Recorder>,
    /// The bridge writing to it now (0: none).
    feeder: AtomicU64,
    bridges: AtomicUsize,
}

/// A terminal, as the agent of `session` names it (an agent cannot reach
/// another session's recording by naming its terminal).
type TerminalKey = (rtunnel_core::ids::SessionId, Uuid);

/// Shared recordings by session and terminal, on this node. The counts of
/// bridges change under the map's lock, so a bridge never joins a
/// recording that is being finished.
#[derive(Default)]
pub(crate) struct SharedRecordings {
    by_terminal: std::sync::Mutex<HashMap<TerminalKey, Arc<Shared>>>,
    next: AtomicU64,
}

impl std::fmt::Debug for SharedRecordings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRecordings").finish_non_exhaustive()
    }
}

/// One bridge's place in a shared recording.
pub(crate) struct Seat {
    pub shared: Arc<Shared>,
    key: u64,
}

impl SharedRecordings {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<TerminalKey, Arc<Shared>>> {
        self.by_terminal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The recording of `terminal`, started with `start` if this node has
    /// none yet.
    pub(crate) async fn join<F, Fut>(&self, terminal: TerminalKey, start: F) -> Seat
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = (Uuid, Recorder)>,
    {
        let key = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let map = self.map();
            if let Some(shared) = map.get(&terminal).cloned() {
                shared.bridges.fetch_add(1, Ordering::SeqCst);
                return Seat { shared, key };
            }
        }
        let (id, recorder) = start().await;
        let fresh = Arc::new(Shared {
            id,
            recorder: Mutex::new(recorder),
            feeder: AtomicU64::new(0),
            bridges: AtomicUsize::new(1),
        });
        let (shared, extra) = {
            let mut map = self.map();
            match map.get(&terminal).cloned() {
                // Another bridge started one meanwhile: join it, end ours.
                Some(existing) => {
                    existing.bridges.fetch_add(1, Ordering::SeqCst);
                    (existing, Some(fresh))
                }
                None => {
                    map.insert(terminal, fresh.clone());
                    (fresh, None)
                }
            }
        };
        if let Some(extra) = extra {
            extra.recorder.lock().await.finish().await;
        }
        Seat { shared, key }
    }

    /// A bridge left; the last one ends the recording.
    pub(crate) async fn leave(&self, terminal: TerminalKey, seat: Seat) {
        let _ =
            seat.shared
                .feeder
                .compare_exchange(seat.key, 0, Ordering::SeqCst, Ordering::SeqCst);
        let last = {
            let mut map = self.map();
            let last = seat.shared.bridges.fetch_sub(1, Ordering::SeqCst) == 1;
            if last
                && map
                    .get(&terminal)
                    .is_some_and(|s| Arc::ptr_eq(s, &seat.shared))
            {
                map.remove(&terminal);
            }
            last
        };
        if last {
            seat.shared.recorder.lock().await.finish().await;
        }
    }
}

impl Seat {
    /// Whether this bridge writes the recording now (it takes it over when
    /// nobody does).
    fn feeds(&self) -> bool {
        let feeder = &self.shared.feeder;
        match feeder.compare_exchange(0, self.key, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => true,
            Err(current) => current == self.key,
        }
    }

    /// This bridge writes no more: another takes the recording over at
    /// once (before this one's slower goodbyes).
    pub(crate) fn release(&self) {
        let _ =
            self.shared
                .feeder
                .compare_exchange(self.key, 0, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Records output, if this bridge feeds the recording.
    pub(crate) async fn output(&self, bytes: &[u8]) {
        if self.feeds() {
            self.shared.recorder.lock().await.output(bytes).await;
        }
    }

    /// Records a resize, if this bridge feeds the recording.
    pub(crate) async fn resize(&self, cols: u16, rows: u16) {
        if self.feeds() {
            self.shared.recorder.lock().await.resize(cols, rows).await;
        }
    }

    /// Marks who joined or left, if this bridge feeds the recording.
    pub(crate) async fn marker(&self, label: &str) {
        if self.feeds() {
            self.shared.recorder.lock().await.marker(label).await;
        }
    }
}
