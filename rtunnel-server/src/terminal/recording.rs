//! Terminal recordings (asciicast v2, up to `MAX_RECORDING_BYTES`): one
//! [`Recorder`] per terminal. A shared terminal (several participants, see
//! the agent's hub) is recorded once per node: the participants' bridges
//! on this node share one [`Shared`] recorder, with who joined and left
//! marked in it. Every bridge feeds it the output its stream brings, by
//! position in the shell's output ([`Recorder::output_at`]), so each byte
//! is recorded once and a bridge that fell behind leaves no gap; with an
//! agent that sends no positions, one bridge at a time feeds it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use rtunnel_core::recording::{Cast, MAX_RECORDING_BYTES, RecordingSink};
use rtunnel_core::store::now_millis;
use tokio::sync::Mutex;
use uuid::Uuid;

/// Most output a recording holds past a gap, waiting for a slower
/// participant's stream to bring what lies before it: about what the agent
/// lets one participant fall behind (256 messages of up to 16 KiB) before
/// that participant skips ahead.
const MAX_AHEAD_BYTES: usize = 4 * 1024 * 1024;

/// Output that comes with positions, from the streams of several
/// participants, each behind or ahead of the others.
#[derive(Default)]
struct Positions {
    /// The next position to record (`None`: nothing recorded yet).
    next: Option<u64>,
    /// Output past `next`, held until a stream brings what lies before it
    /// or none can any more.
    ahead: BTreeMap<u64, Vec<u8>>,
    ahead_bytes: usize,
    /// How far each stream (by feeder key) has brought the output.
    feeders: HashMap<u64, u64>,
}

/// Writes the terminal's asciicast recording, up to its size limit.
pub(crate) struct Recorder {
    sink: Option<Box<dyn RecordingSink>>,
    cast: Cast,
    started: Instant,
    bytes: u64,
    truncated: bool,
    positions: Positions,
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
            positions: Positions::default(),
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

    /// Output from position `at`, brought by the stream `feeder`: what the
    /// recording does not hold yet is written, or held while a slower
    /// stream may still bring what lies before it. Output that no stream
    /// brought is marked as not recorded.
    pub(crate) async fn output_at(&mut self, feeder: u64, at: u64, bytes: &[u8]) {
        // (A position is the agent's word: one past the end of the
        // counter is ignored, not wrapped.)
        let Some(end) = at.checked_add(bytes.len() as u64) else {
            return;
        };
        let p = &mut self.positions;
        let upto = p.feeders.entry(feeder).or_insert(end);
        *upto = (*upto).max(end);
        let next = *p.next.get_or_insert(at);
        if at > next {
            if !bytes.is_empty() {
                let held = p.ahead.entry(at).or_default();
                if held.len() < bytes.len() {
                    p.ahead_bytes += bytes.len() - held.len();
                    *held = bytes.to_vec();
                }
            }
        } else if end > next {
            p.next = Some(end);
            self.output(&bytes[(next - at) as usize..]).await;
        }
        self.catch_up(false).await;
    }

    /// A stream brings no more output: what only it could have brought is
    /// lost.
    pub(crate) async fn feeder_left(&mut self, feeder: u64) {
        self.positions.feeders.remove(&feeder);
        self.catch_up(false).await;
    }

    /// Writes the held output that can go: what follows on from the
    /// recording, and past a gap once no stream may still fill it (they
    /// are all past it, or too much is held), or `all` of it.
    async fn catch_up(&mut self, all: bool) {
        loop {
            let p = &mut self.positions;
            let (Some(next), Some((&at, _))) = (p.next, p.ahead.first_key_value()) else {
                return;
            };
            if at > next {
                let may_come = p.feeders.values().any(|&upto| upto <= next);
                if may_come && !all && p.ahead_bytes <= MAX_AHEAD_BYTES {
                    return;
                }
                p.next = Some(at);
                let t = self.now();
                if let Some(line) = self.cast.flush_partial(t) {
                    self.write(line).await;
                }
                let label = format!("{} bytes of output not recorded", at - next);
                self.marker(&label).await;
                continue;
            }
            let Some((at, bytes)) = p.ahead.pop_first() else {
                return;
            };
            p.ahead_bytes -= bytes.len();
            let end = at + bytes.len() as u64;
            if end > next {
                p.next = Some(end);
                self.output(&bytes[(next - at) as usize..]).await;
            }
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
            self.close().await;
            return;
        }
        self.bytes += line.len() as u64 + 1;
        if let Err(e) = sink.line(&line).await {
            tracing::error!(error = %e, "terminal recording stopped");
            self.sink = None;
        }
    }

    /// Writes what is held, then completes the recording.
    pub(crate) async fn finish(&mut self) {
        self.catch_up(true).await;
        self.close().await;
    }

    async fn close(&mut self) {
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
        let mut recorder = seat.shared.recorder.lock().await;
        recorder.feeder_left(seat.key).await;
        if last {
            recorder.finish().await;
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

    /// Records positioned output, whichever bridge brings it first.
    pub(crate) async fn output_at(&self, at: u64, bytes: &[u8]) {
        let mut recorder = self.shared.recorder.lock().await;
        recorder.output_at(self.key, at, bytes).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use rtunnel_core::store::StoreError;

    /// Keeps the lines in memory.
    struct Lines(Arc<std::sync::Mutex<Vec<String>>>);

    #[async_trait::async_trait]
    impl RecordingSink for Lines {
        async fn line(&mut self, line: &str) -> Result<(), StoreError> {
            self.0.lock().unwrap().push(line.to_owned());
            Ok(())
        }
        async fn finish(
            self: Box<Self>,
            _: rtunnel_core::store::Millis,
            _: bool,
        ) -> Result<(), StoreError> {
            Ok(())
        }
    }

    /// The recording's output and markers, in order.
    fn events(lines: &[String]) -> (String, Vec<String>) {
        let (mut output, mut markers) = (String::new(), Vec::new());
        for line in &lines[1..] {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            match v[1].as_str().unwrap() {
                "o" => output.push_str(v[2].as_str().unwrap()),
                "m" => markers.push(v[2].as_str().unwrap().to_owned()),
                _ => {}
            }
        }
        (output, markers)
    }

    /// A recording of one shared terminal, and its lines.
    type LinesOf = Arc<std::sync::Mutex<Vec<String>>>;

    async fn shared_seats(n: usize) -> (SharedRecordings, TerminalKey, Vec<Seat>, LinesOf) {
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recordings = SharedRecordings::default();
        let key = (rtunnel_core::ids::SessionId::new(), Uuid::new_v4());
        let mut seats = Vec::new();
        for _ in 0..n {
            let start = || async {
                let sink: Box<dyn RecordingSink> = Box::new(Lines(lines.clone()));
                (
                    Uuid::new_v4(),
                    Recorder::start(Some(sink), 80, 24, "t").await,
                )
            };
            seats.push(recordings.join(key, start).await);
        }
        (recordings, key, seats, lines)
    }

    #[tokio::test]
    async fn positioned_output_is_recorded_once_whichever_bridge_brings_it() {
        let (recordings, key, mut seats, lines) = shared_seats(2).await;
        let (ahead, behind) = (seats.remove(0), seats.remove(0));
        // The first to speak would be the only feeder of plain output;
        // with positions, the one behind adds only what is new.
        behind.output_at(0, b"hello ").await;
        ahead.output_at(0, b"hello ").await;
        ahead.output_at(6, b"wor").await;
        behind.output_at(6, b"wor").await;
        behind.output_at(3, b"lo world").await;
        ahead.output_at(9, b"ld").await;
        // The view that went on fell behind (skipped 4 bytes), the other
        // left: what went by is marked, not lost silently.
        recordings.leave(key, behind).await;
        ahead.output_at(15, b"!\xe2\x9c").await;
        ahead.output_at(18, b"\x93").await;
        ahead.output_at(19, b"").await;
        ahead.output_at(u64::MAX, b"xy").await;
        recordings.leave(key, ahead).await;
        let (output, markers) = events(&lines.lock().unwrap());
        assert_eq!(output, "hello world!\u{2713}");
        assert_eq!(markers, ["4 bytes of output not recorded"]);
    }

    #[tokio::test]
    async fn output_past_a_gap_waits_for_the_stream_that_is_behind() {
        let (recordings, key, mut seats, lines) = shared_seats(2).await;
        let (first, joiner) = (seats.remove(0), seats.remove(0));
        first.output_at(0, b"aaaa").await;
        // Someone joins: their scrollback (from 8) reaches the server
        // before the first participant's backlog (4 to 8) does.
        joiner.output_at(8, b"cccc").await;
        joiner.output_at(12, b"dd").await;
        first.output_at(4, b"bbbb").await;
        first.output_at(8, b"cccc").await;
        recordings.leave(key, first).await;
        recordings.leave(key, joiner).await;
        let (output, markers) = events(&lines.lock().unwrap());
        assert_eq!(output, "aaaabbbbccccdd");
        assert!(markers.is_empty(), "{markers:?}");
    }

    #[tokio::test]
    async fn a_gap_nobody_fills_is_marked_when_they_are_all_past_it_or_too_much_waits() {
        // The stream behind skips past the gap: nobody can fill it. (A
        // character begun before it is not glued to what follows.)
        let (recordings, key, mut seats, lines) = shared_seats(2).await;
        let (a, b) = (seats.remove(0), seats.remove(0));
        a.output_at(0, b"x\xe2\x9c").await;
        b.output_at(0, b"x\xe2\x9c").await;
        b.output_at(10, b"after").await;
        a.output_at(12, b"ter").await;
        recordings.leave(key, a).await;
        recordings.leave(key, b).await;
        let (output, markers) = events(&lines.lock().unwrap());
        assert_eq!(output, "x\u{fffd}after");
        assert_eq!(markers, ["7 bytes of output not recorded"]);

        // The stream behind brings nothing more: the rest waits, up to its
        // bound, then is written after the mark.
        let (recordings, key, mut seats, lines) = shared_seats(2).await;
        let (stuck, b) = (seats.remove(0), seats.remove(0));
        stuck.output_at(0, b"s").await;
        let chunk = vec![b'z'; 16 * 1024];
        let mut at = 100;
        while at < 100 + MAX_AHEAD_BYTES as u64 {
            b.output_at(at, &chunk).await;
            at += chunk.len() as u64;
        }
        let (output, markers) = events(&lines.lock().unwrap());
        assert_eq!(
            (output.as_str(), markers.len()),
            ("s", 0),
            "held, not written"
        );
        b.output_at(at, &chunk).await;
        let (output, markers) = events(&lines.lock().unwrap());
        assert_eq!(markers, ["99 bytes of output not recorded"]);
        assert_eq!(output.len(), 1 + MAX_AHEAD_BYTES + chunk.len());
        recordings.leave(key, stuck).await;
        recordings.leave(key, b).await;

        // What is held when the last one leaves is written, not dropped.
        let (recordings, key, mut seats, lines) = shared_seats(2).await;
        let (stuck, b) = (seats.remove(0), seats.remove(0));
        stuck.output_at(0, b"s").await;
        b.output_at(5, b"end").await;
        recordings.leave(key, b).await;
        recordings.leave(key, stuck).await;
        let (output, markers) = events(&lines.lock().unwrap());
        assert_eq!(output, "send");
        assert_eq!(markers, ["4 bytes of output not recorded"]);
    }
}
