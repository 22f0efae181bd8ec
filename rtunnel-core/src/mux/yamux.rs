//! The yamux implementation of [`Mux`].
//!
//! yamux only moves bytes while its connection is polled, so [`YamuxMux`]
//! gives the connection to one driver task that polls inbound streams, opens
//! outbound ones on request and closes on command. Handles talk to it over
//! channels; dropping the last handle closes the connection.
//!
//! Bounds, so that neither a burst of opens nor a slow reader can hurt the
//! connection or the process:
//! - a side keeps at most [`MAX_OPEN_STREAMS`] streams of its own open; the
//!   next open waits (yamux itself stalls past 256 unacknowledged opens and
//!   ends the connection when the peer opens past its limit, which is set
//!   far above what a well-behaved peer reaches);
//! - a stream's receive window starts at 256 KiB and grows (yamux's
//!   auto-tuning, for long fat links) only out of a per-connection budget,
//!   [`MuxConfig::window_budget`], so a reader that stops reading holds at
//!   most its window in memory while the sender waits.
//!
//! yamux flushes its connection after every frame it writes. The driver
//! corks the connection while it polls: the frames one poll writes (the
//! data of many streams, their window updates, a new stream's header and
//! first bytes) leave together, in one write, when the poll has nothing
//! left to do. Under load (one of the last 16 writes carried more than one
//! frame) it first yields once, so that the relays of other streams, woken
//! by the same readiness, add their frames to that write; with one busy
//! stream there is nothing to wait for, and it flushes at once.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;

use super::{MAX_OPEN_STREAMS, Mux, MuxConfig, MuxCounters, MuxError, Muxed};

/// Inbound streams waiting for `accept` beyond this many are refused (reset).
pub const MAX_PENDING_INBOUND: usize = 256;

/// yamux's own limit on streams of a connection, both directions together:
/// room for the peer's [`MAX_OPEN_STREAMS`], ours, and streams closed but
/// not yet reaped on either side.
pub const YAMUX_MAX_STREAMS: usize = 4 * MAX_OPEN_STREAMS;

impl MuxConfig {
    fn to_yamux(&self) -> yamux::Config {
        let mut cfg = yamux::Config::default();
        // Each stream is guaranteed its initial window; what is beyond is
        // the budget the streams grow into.
        cfg.set_max_connection_receive_window(Some(
            YAMUX_MAX_STREAMS * yamux::DEFAULT_CREDIT as usize + self.window_budget,
        ));
        cfg.set_max_num_streams(YAMUX_MAX_STREAMS);
        cfg.set_split_send_size(self.split_send_size);
        cfg
    }
}

/// A stream of a [`YamuxMux`], with tokio's IO traits. One opened by this
/// side holds one of the connection's [`MAX_OPEN_STREAMS`] until dropped.
pub type YamuxStream = Muxed<Compat<yamux::Stream>>;

/// What a poll of the driver came to.
enum Step {
    /// The connection ended.
    Ended(Result<(), MuxError>),
    /// Frames wait in the corked connection: yield once, then flush.
    YieldBeforeFlush,
}

enum Command {
    Open(oneshot::Sender<Result<yamux::Stream, MuxError>>),
}

use super::LiveCounters as Counters;

/// The yamux implementation of [`Mux`], driven by its own task.
pub struct YamuxMux {
    commands: mpsc::Sender<Command>,
    open_slots: Arc<Semaphore>,
    inbound: Mutex<mpsc::Receiver<yamux::Stream>>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
    done: CancellationToken,
}

impl std::fmt::Debug for YamuxMux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YamuxMux")
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

impl YamuxMux {
    /// Runs yamux as the dialing side (the side that opens the control stream).
    pub fn client<T>(io: T, config: &MuxConfig) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::spawn(io, config, yamux::Mode::Client)
    }

    /// Runs yamux as the accepting side.
    pub fn server<T>(io: T, config: &MuxConfig) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::spawn(io, config, yamux::Mode::Server)
    }

    fn spawn<T>(io: T, config: &MuxConfig, mode: yamux::Mode) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let counters = Arc::new(Counters::default());
        let cork = Arc::new(Cork::default());
        let io = Counted {
            inner: io,
            counters: counters.clone(),
            cork: cork.clone(),
        };
        let conn = yamux::Connection::new(io.compat(), config.to_yamux(), mode);
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (in_tx, in_rx) = mpsc::channel(MAX_PENDING_INBOUND);
        let shutdown = CancellationToken::new();
        let done = CancellationToken::new();
        let driver = Driver {
            conn,
            commands: cmd_rx,
            inbound: in_tx,
            pending_opens: std::collections::VecDeque::new(),
            counters: counters.clone(),
            cork,
            yielded: false,
            batching: 0,
            shutdown: shutdown.clone(),
            closing: false,
        };
        let done_signal = done.clone();
        tokio::spawn(async move {
            if let Err(e) = driver.run().await {
                tracing::debug!(error = %e, "multiplexed connection ended with an error");
            }
            done_signal.cancel();
        });
        YamuxMux {
            commands: cmd_tx,
            open_slots: Arc::new(Semaphore::new(MAX_OPEN_STREAMS)),
            inbound: Mutex::new(in_rx),
            counters,
            shutdown,
            done,
        }
    }
}

#[async_trait]
impl Mux for YamuxMux {
    type Stream = YamuxStream;

    async fn open(&self) -> Result<YamuxStream, MuxError> {
        let slot = tokio::select! {
            slot = self.open_slots.clone().acquire_owned() => slot.map_err(|_| MuxError::Closed)?,
            _ = self.done.cancelled() => return Err(MuxError::Closed),
        };
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Open(tx))
            .await
            .map_err(|_| MuxError::Closed)?;
        let stream = rx.await.map_err(|_| MuxError::Closed)??;
        Ok(Muxed::new(stream.compat(), Some(slot), &self.done))
    }

    async fn accept(&self) -> Option<YamuxStream> {
        let stream = self.inbound.lock().await.recv().await?;
        Some(Muxed::new(stream.compat(), None, &self.done))
    }

    fn close(&self) {
        self.shutdown.cancel();
    }

    fn is_closed(&self) -> bool {
        self.done.is_cancelled() || self.shutdown.is_cancelled()
    }

    async fn closed(&self) {
        self.done.cancelled().await;
    }

    fn counters(&self) -> MuxCounters {
        self.counters.snapshot()
    }
}

impl Drop for YamuxMux {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

struct Driver<T> {
    conn: yamux::Connection<Compat<Counted<T>>>,
    commands: mpsc::Receiver<Command>,
    inbound: mpsc::Sender<yamux::Stream>,
    pending_opens: std::collections::VecDeque<oneshot::Sender<Result<yamux::Stream, MuxError>>>,
    counters: Arc<Counters>,
    cork: Arc<Cork>,
    /// The driver yielded before its last flush.
    yielded: bool,
    /// Flushes left to yield before: a flush that carries more than one
    /// frame sets it to [`YIELDING_FLUSHES`], each other one takes one off.
    batching: u32,
    shutdown: CancellationToken,
    closing: bool,
}

/// How many flushes the driver keeps yielding before once one carried more
/// than one frame (streams are busy together).
const YIELDING_FLUSHES: u32 = 16;

/// Holds back the flushes yamux asks for after each frame while the driver
/// polls, so that what one poll writes leaves in one write.
///
/// Shared by the driver and the connection's [`Counted`] IO, both polled by
/// the driver's task only (the atomics are for `Send`, not for contention).
#[derive(Default)]
struct Cork {
    /// Flushes are held back.
    corked: AtomicBool,
    /// Writes since the last flush that went through (yamux writes a
    /// frame's header and its body separately): bytes are owed while above 0.
    written: AtomicU64,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Driver<T> {
    async fn run(mut self) -> Result<(), MuxError> {
        let shutdown = self.shutdown.clone();
        let mut shutdown_requested = std::pin::pin!(shutdown.cancelled_owned());
        let result = loop {
            let step = poll_fn(|cx| {
                if !self.closing && shutdown_requested.as_mut().poll(cx).is_ready() {
                    self.closing = true;
                }
                self.poll_drive(cx)
            })
            .await;
            match step {
                Step::Ended(result) => break result,
                // Let the tasks this worker has ready (the relays of other
                // streams, woken by the same readiness) write their frames
                // first: they leave with these, in one write.
                Step::YieldBeforeFlush => {
                    let mut woken = false;
                    poll_fn(|cx| {
                        if woken {
                            return Poll::Ready(());
                        }
                        woken = true;
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    })
                    .await
                }
            }
        };
        for waiter in self.pending_opens.drain(..) {
            let _ = waiter.send(Err(MuxError::Closed));
        }
        result
    }

    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        if self.closing {
            return self.conn.poll_close(cx).map_err(yamux_err).map(Step::Ended);
        }
        if self.cork.written.load(Ordering::Relaxed) > 0 && !self.yielded {
            // The last poll's flush did not finish (the socket was full, or
            // the task's I/O budget ran out while it read): flush first,
            // before a corked pass can spend this poll's budget on reading.
            return self.poll_pass(cx).map(Step::Ended);
        }
        self.cork.corked.store(true, Ordering::Relaxed);
        let corked = self.poll_pass(cx);
        self.cork.corked.store(false, Ordering::Relaxed);
        if corked.is_ready() {
            return corked.map(Step::Ended);
        }
        let written = self.cork.written.load(Ordering::Relaxed);
        if written > 0 {
            if self.batching > 0 && !self.yielded {
                self.yielded = true;
                return Poll::Ready(Step::YieldBeforeFlush);
            }
            // More than one frame's header and body.
            if written > 2 {
                self.batching = YIELDING_FLUSHES;
            } else {
                self.batching = self.batching.saturating_sub(1);
            }
        }
        self.yielded = false;
        // What the passes wrote leaves now, in one write (yamux flushes
        // first thing in its loop), and so do bytes the IO queued of its own
        // accord (a WebSocket pong) behind the flushes the cork held back;
        // whatever arrived meanwhile is handled uncorked.
        self.poll_pass(cx).map(Step::Ended)
    }

    /// Opens what was asked for and takes inbound streams until yamux has
    /// nothing to do (`Pending`) or the connection ends.
    fn poll_pass(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), MuxError>> {
        loop {
            while let Poll::Ready(cmd) = self.commands.poll_recv(cx) {
                match cmd {
                    Some(Command::Open(tx)) => self.pending_opens.push_back(tx),
                    None => {
                        // Every handle is gone: nobody can use the connection.
                        self.closing = true;
                        return self.conn.poll_close(cx).map_err(yamux_err);
                    }
                }
            }
            while !self.pending_opens.is_empty() {
                match self.conn.poll_new_outbound(cx) {
                    Poll::Ready(Ok(stream)) => {
                        self.counters.opened.fetch_add(1, Ordering::Relaxed);
                        if let Some(tx) = self.pending_opens.pop_front() {
                            // A waiter that gave up drops the stream, which resets it.
                            let _ = tx.send(Ok(stream));
                        }
                    }
                    // The peer holds too many streams: this open fails,
                    // the connection carries on.
                    Poll::Ready(Err(yamux::ConnectionError::TooManyStreams)) => {
                        if let Some(tx) = self.pending_opens.pop_front() {
                            let _ = tx.send(Err(MuxError::TooManyStreams));
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(yamux_err(e))),
                    Poll::Pending => break,
                }
            }
            match self.conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => match self.inbound.try_send(stream) {
                    Ok(()) => {
                        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        // Dropping the stream resets it: the peer sees a refusal.
                        self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(yamux_err(e))),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

fn yamux_err(e: yamux::ConnectionError) -> MuxError {
    match e {
        yamux::ConnectionError::Closed => MuxError::Closed,
        other => MuxError::Yamux(other.to_string()),
    }
}

/// The connection under yamux, counting bytes each way and holding back
/// flushes while [`Cork`]ed.
struct Counted<T> {
    inner: T,
    counters: Arc<Counters>,
    cork: Arc<Cork>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.counters
            .bytes_in
            .fetch_add(n as u64, Ordering::Relaxed);
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            self.counters
                .bytes_out
                .fetch_add(n as u64, Ordering::Relaxed);
            self.cork.written.fetch_add(1, Ordering::Relaxed);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.cork.corked.load(Ordering::Relaxed) {
            // yamux goes on whether or not a flush is done; the driver
            // flushes once its pass is over.
            return Poll::Ready(Ok(()));
        }
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = res {
            self.cork.written.store(0, Ordering::Relaxed);
        }
        res
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    // What every multiplexer must do (`mux::conformance`); the `yamux`
    // crate against `WireMux` is in `mux::wire`'s tests.
    crate::mux_conformance_tests!(crate::mux::conformance::Yamux);
}
