//! The task that reads a connection's frames and flushes what its streams
//! wrote.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use super::conn::{Body, Conn, Ended, Received, lock};
use super::frame::{
    ACK, FrameError, GO_AWAY_NORMAL, GO_AWAY_PROTOCOL_ERROR, HEADER_BYTES, Header, Kind, SESSION_ID,
};
use super::stream::WireStream;

/// Answers (pongs, resets of refused streams) the driver queues without
/// the transport taking them, beyond which it stops reading until they
/// are written: a peer that pings or opens streams and never reads its
/// answers cannot grow this side's memory.
const MAX_UNSENT_ANSWERS: usize = 64 * 1024;

/// Data frame bodies at least this long are read into a buffer of their
/// own (straight from the transport, never zeroed) and handed out whole;
/// shorter ones are read with their neighbours and copied into their
/// stream's buffer of short bodies.
const OWN_BUFFER_BYTES: usize = super::conn::TAIL_BYTES;

/// What a read asks for at least: several small frames per system call.
const READ_CHUNK: usize = 16 * 1024;

/// How long a closing connection may take to send its go-away.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many flushes the driver keeps yielding before once one carried more
/// than one frame (streams are busy together).
const YIELDING_FLUSHES: u32 = 16;

/// Why the driver stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum DriverError {
    #[error("transport: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Violation(#[from] super::conn::Violation),
}

/// What one poll of the driver came to.
enum Step {
    /// The connection ended: the peer went away, or it failed.
    Ended(Result<(), DriverError>),
    /// A handle asked to close.
    Close,
    /// Frames wait to be flushed: yield once first.
    YieldBeforeFlush,
}

pub(super) struct Driver {
    pub(super) conn: Arc<Conn>,
    pub(super) inbound: mpsc::Sender<WireStream>,
    pub(super) peer_ids_odd: bool,
    pub(super) max_streams: usize,
    pub(super) rbuf: BytesMut,
    /// A large data frame's header and the part of its body read so far.
    pub(super) large: Option<(Header, BytesMut)>,
    pub(super) yielded: bool,
    pub(super) batching: u32,
    /// Bytes of answers queued since the last complete flush.
    pub(super) answers: usize,
}

impl Driver {
    pub(super) async fn run(mut self) {
        let (why, result) = loop {
            match poll_fn(|cx| self.poll_drive(cx)).await {
                Step::Ended(result) => break (Ended::Lost, result),
                Step::Close => break (Ended::Closed, self.close().await),
                Step::YieldBeforeFlush => tokio::task::yield_now().await,
            }
        };
        if let Err(e) = &result {
            tracing::debug!(error = %e, "multiplexed connection ended with an error");
        }
        self.conn.end(why);
        // Let the transport go now, not when the last stream is dropped.
        lock(&self.conn.sink).io = Box::pin(Gone);
        drop(self.inbound);
        self.conn.done.cancel();
    }

    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        self.conn.driver.register(cx.waker());
        if self.conn.shutdown.is_cancelled() {
            return Poll::Ready(Step::Close);
        }
        match self.poll_read_frames(cx) {
            Poll::Ready(Ok(())) => return Poll::Ready(Step::Ended(Ok(()))),
            Poll::Ready(Err(e)) => {
                if matches!(e, DriverError::Frame(_) | DriverError::Violation(_)) {
                    self.go_away(cx, GO_AWAY_PROTOCOL_ERROR);
                }
                return Poll::Ready(Step::Ended(Err(e)));
            }
            Poll::Pending => {}
        }
        if self.conn.flush_wanted.swap(false, Ordering::AcqRel) {
            let frames = self.conn.frames.swap(0, Ordering::Relaxed);
            if self.batching > 0 && !self.yielded {
                // Let the tasks this worker has ready (the relays of other
                // streams, woken by the same readiness) write their frames
                // first: they leave with these, in one write.
                self.yielded = true;
                self.conn.frames.fetch_add(frames, Ordering::Relaxed);
                self.conn.flush_wanted.store(true, Ordering::Release);
                return Poll::Ready(Step::YieldBeforeFlush);
            }
            if frames > 1 {
                self.batching = YIELDING_FLUSHES;
            } else {
                self.batching = self.batching.saturating_sub(1);
            }
            self.yielded = false;
            if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
                return Poll::Ready(Step::Ended(Err(e.into())));
            }
        } else if let Poll::Ready(Err(e)) = self.poll_flush_pending(cx) {
            return Poll::Ready(Step::Ended(Err(e.into())));
        }
        Poll::Pending
    }

    /// Reads and acts on frames until the transport has no more: ready
    /// with `Ok` when the peer went away.
    fn poll_read_frames(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), DriverError>> {
        'frames: loop {
            if let Some((header, body)) = &mut self.large {
                if body.len() < header.body_len() {
                    let read = {
                        let mut sink = lock(&self.conn.sink);
                        tokio_util::io::poll_read_buf(sink.io.as_mut(), cx, body)
                    };
                    match read {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                        Poll::Ready(Ok(0)) => return Poll::Ready(Err(truncated().into())),
                        Poll::Ready(Ok(n)) => {
                            self.conn
                                .counters
                                .bytes_in
                                .fetch_add(n as u64, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                if let Some((header, body)) = self.large.take() {
                    if self.on_frame(header, Body::Large(body.freeze()))? {
                        return Poll::Ready(Ok(()));
                    }
                    // Let the stream's reader (woken by this frame) take it
                    // while its bytes are still in the cache, before the
                    // next frame is read into another buffer.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
            while self.rbuf.len() >= HEADER_BYTES {
                let mut head = [0u8; HEADER_BYTES];
                head.copy_from_slice(&self.rbuf[..HEADER_BYTES]);
                let header = Header::parse(&head)?;
                let len = header.body_len();
                if len >= OWN_BUFFER_BYTES {
                    // Read into a buffer of its own, exactly its size: a
                    // body held unread pins nothing else.
                    self.rbuf.advance(HEADER_BYTES);
                    let have = self.rbuf.len().min(len);
                    let mut body = BytesMut::with_capacity(len);
                    body.extend_from_slice(&self.rbuf[..have]);
                    self.rbuf.advance(have);
                    self.large = Some((header, body));
                    continue 'frames;
                }
                let need = HEADER_BYTES + len;
                if self.rbuf.len() < need {
                    self.rbuf.reserve(need - self.rbuf.len());
                    break;
                }
                // Small bodies are copied out, into their stream's buffer:
                // a slice of the read buffer held unread would pin the
                // whole buffer.
                let rbuf = std::mem::take(&mut self.rbuf);
                let gone = self.on_frame(header, Body::Small(&rbuf[HEADER_BYTES..need]));
                self.rbuf = rbuf;
                self.rbuf.advance(need);
                if gone? {
                    return Poll::Ready(Ok(()));
                }
            }
            if self.answers >= MAX_UNSENT_ANSWERS {
                // Woken again by the flush that writes them.
                return Poll::Pending;
            }
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
                self.rbuf.reserve(READ_CHUNK);
            }
            let read = {
                let mut sink = lock(&self.conn.sink);
                tokio_util::io::poll_read_buf(sink.io.as_mut(), cx, &mut self.rbuf)
            };
            match read {
                Poll::Pending => {
                    if self.rbuf.is_empty() {
                        // A quiet connection holds no read buffer.
                        self.rbuf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Ready(Ok(0)) => {
                    if self.rbuf.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Ready(Err(truncated().into()));
                }
                Poll::Ready(Ok(n)) => {
                    self.conn
                        .counters
                        .bytes_in
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
    }

    /// Acts on one frame; `true` when the peer is going away.
    fn on_frame(&mut self, header: Header, body: Body<'_>) -> Result<bool, DriverError> {
        match header.kind {
            Kind::GoAway => return Ok(true),
            Kind::Ping => {
                if !header.has(ACK) {
                    let mut st = self.conn.state();
                    let pong = Header::new(Kind::Ping, ACK, SESSION_ID, header.length);
                    st.queued.extend_from_slice(&pong.encode());
                    self.answers += HEADER_BYTES;
                    self.conn.flush_wanted.store(true, Ordering::Release);
                }
            }
            Kind::Data | Kind::WindowUpdate => {
                let mut st = self.conn.state();
                let before = st.queued.len();
                let received = st.receive(header, body, self.peer_ids_odd, self.max_streams)?;
                if st.queued.len() != before {
                    self.answers += st.queued.len() - before;
                    self.conn.flush_wanted.store(true, Ordering::Release);
                }
                drop(st);
                if let Received::Opened(id) = received {
                    let stream = WireStream::new(self.conn.clone(), id, None);
                    let counters = &self.conn.counters;
                    match self.inbound.try_send(stream) {
                        Ok(()) => counters.accepted.fetch_add(1, Ordering::Relaxed),
                        // Dropping the stream resets it: the peer sees a
                        // refusal.
                        Err(_) => {
                            self.answers += HEADER_BYTES;
                            counters.refused.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }
        }
        Ok(false)
    }

    /// Writes out what is queued and flushes the transport.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut sink = lock(&self.conn.sink);
        loop {
            if sink.poll_drain(cx)?.is_pending() {
                // Not flushed: try again when the transport has room.
                self.conn.flush_wanted.store(true, Ordering::Release);
                return Poll::Pending;
            }
            let queued = {
                let mut st = self.conn.state();
                // Taken whole: a connection gone quiet keeps no buffer.
                let queued = std::mem::take(&mut st.queued);
                for w in st.write_waiters.drain(..) {
                    w.wake();
                }
                queued
            };
            if queued.is_empty() {
                break;
            }
            self.conn
                .counters
                .bytes_out
                .fetch_add(queued.len() as u64, Ordering::Relaxed);
            sink.commit(cx, &queued)?;
        }
        if sink.io.as_mut().poll_flush(cx)?.is_pending() {
            self.conn.flush_wanted.store(true, Ordering::Release);
            return Poll::Pending;
        }
        if self.answers >= MAX_UNSENT_ANSWERS {
            // Reading stopped for these: go on.
            cx.waker().wake_by_ref();
        }
        self.answers = 0;
        Poll::Ready(Ok(()))
    }

    /// Flushes only when bytes wait in the sink (a stream left them).
    fn poll_flush_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if lock(&self.conn.sink).is_drained() {
            return Poll::Ready(Ok(()));
        }
        self.poll_flush(cx)
    }

    /// Queues a go-away and writes what can go without waiting.
    fn go_away(&mut self, cx: &mut Context<'_>, code: u32) {
        let mut st = self.conn.state();
        let frame = Header::new(Kind::GoAway, 0, SESSION_ID, code);
        st.queued.extend_from_slice(&frame.encode());
        drop(st);
        let _ = self.poll_flush(cx);
    }

    /// Ends the streams, says go-away and closes the transport, within
    /// [`CLOSE_TIMEOUT`].
    async fn close(&mut self) -> Result<(), DriverError> {
        self.conn.end(Ended::Closed);
        {
            let frame = Header::new(Kind::GoAway, 0, SESSION_ID, GO_AWAY_NORMAL);
            self.conn.state().queued.extend_from_slice(&frame.encode());
        }
        let closing = async {
            poll_fn(|cx| self.poll_flush(cx)).await?;
            poll_fn(|cx| lock(&self.conn.sink).io.as_mut().poll_shutdown(cx)).await
        };
        match tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer took no go-away in time",
            )
            .into()),
        }
    }
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the connection ended inside a yamux frame",
    )
}

/// The transport of a connection that ended: nothing to read, no writes.
struct Gone;

impl AsyncRead for Gone {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl crate::relay::WriteInPlace for Gone {}

impl AsyncWrite for Gone {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
