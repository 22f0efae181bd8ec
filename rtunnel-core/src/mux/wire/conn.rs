//! What a connection's driver, its handle and its streams share: the
//! transport (the [`Sink`]) and the streams' state (the [`State`]).
//!
//! Locks: the sink, then the state, never the other way round. Nothing
//! waits while holding either: both guard non-blocking polls only.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::frame::{ACK, FIN, Header, Kind, RST, SYN};
use crate::relay::WriteInPlace;

/// Every stream's receive window to begin with, and the credit a sender
/// starts with: yamux's, so any yamux peer agrees.
pub(super) const INITIAL_WINDOW: u32 = 256 * 1024;

/// The most one stream's receive window grows to.
const MAX_WINDOW: u32 = 16 * 1024 * 1024;

/// Streams this side opened that the peer has not acknowledged yet beyond
/// this many make the next open wait: yamux's own backlog, so a burst of
/// opens waits for the peer's acceptor instead of being reset by it.
pub(super) const MAX_ACK_BACKLOG: usize = 256;

/// Bytes the streams the peer opened may hold before this side's
/// application accepted them, together: past it, the stream whose data
/// would go over is reset and what it held let go. Without it a peer could
/// fill the windows of the 256 streams that may wait to be accepted: 64 MiB
/// per connection. A stream waits for `accept` only briefly (the server's
/// and the agent's acceptors take each at once), so this is room for 32
/// full windows arriving before their acceptor runs.
pub(super) const MAX_UNACCEPTED_BYTES: usize = 8 * 1024 * 1024;

/// Frames queued for the driver beyond this many bytes make writers wait.
pub(super) const QUEUE_HIGH_WATER: usize = 1024 * 1024;

/// Data frames at least this long are flushed by the writer itself: there
/// is nothing to gain by waiting for other streams' frames.
pub(super) const SELF_FLUSH_BYTES: usize = 16 * 1024;

// A WebSocket takes a body in place only from this length on, and may then
// leave the writer's waker at the socket while saying it took everything:
// such a body must be one the writer flushes itself (which wakes the
// driver when the flush waits).
const _: () = assert!(crate::ws::DIRECT_WRITE_MIN_BYTES >= SELF_FLUSH_BYTES);

/// The transport a connection runs over.
pub(super) trait Transport: AsyncRead + WriteInPlace + Send {}

impl<T: AsyncRead + WriteInPlace + Send> Transport for T {}

/// Any transport, taking bytes only as `poll_write` does.
pub(super) struct Plain<T>(pub(super) T);

impl<T: AsyncRead + Unpin> AsyncRead for Plain<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Plain<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<T: AsyncWrite + Unpin> WriteInPlace for Plain<T> {}

/// Bytes for the transport: to be copied, or for it to take in place.
pub(super) enum Out<'a> {
    Copy(&'a [u8]),
    InPlace(&'a mut [u8]),
}

impl Out<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Out::Copy(b) => b,
            Out::InPlace(b) => b,
        }
    }
}

/// The transport, and the bytes of frames it has not taken yet.
pub(super) struct Sink {
    pub(super) io: Pin<Box<dyn Transport>>,
    /// Frames begun but not taken by `io` yet: written before anything else.
    pub(super) pending: BytesMut,
}

impl Sink {
    pub(super) fn new(io: Pin<Box<dyn Transport>>) -> Self {
        Sink {
            io,
            pending: BytesMut::new(),
        }
    }

    /// Whether nothing waits to be written.
    pub(super) fn is_drained(&self) -> bool {
        self.pending.is_empty()
    }

    /// Hands `bytes` (whole frames, or the rest of one) to the transport as
    /// far as it takes them without waiting, and keeps the rest to write
    /// first next time: once called, the bytes are sent, in order.
    pub(super) fn commit(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> io::Result<()> {
        self.commit_out(cx, Out::Copy(bytes))
    }

    /// [`commit`](Self::commit), of bytes the transport may take in place
    /// ([`WriteInPlace`]): those it took may have changed.
    pub(super) fn commit_out(
        &mut self,
        cx: &mut Context<'_>,
        mut bytes: Out<'_>,
    ) -> io::Result<()> {
        let len = bytes.as_slice().len();
        let mut at = 0;
        if self.pending.is_empty() {
            while at < len {
                let polled = match &mut bytes {
                    Out::Copy(b) => self.io.as_mut().poll_write(cx, &b[at..]),
                    Out::InPlace(b) => self.io.as_mut().poll_write_in_place(cx, &mut b[at..]),
                };
                match polled {
                    Poll::Ready(Ok(n)) if n > 0 => at += n,
                    // Bytes taken in place may have changed: the frame's
                    // rest is kept, and the driver meets the failure when
                    // it writes it (the caller's bytes count as taken).
                    Poll::Ready(_) if at > 0 && matches!(bytes, Out::InPlace(_)) => break,
                    Poll::Ready(Ok(_)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => break,
                }
            }
        }
        self.pending.extend_from_slice(&bytes.as_slice()[at..]);
        if self.pending.is_empty() && self.pending.capacity() > 0 {
            self.pending = BytesMut::new();
        }
        Ok(())
    }

    /// Writes what is pending; ready once the transport took all of it.
    pub(super) fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            match self.io.as_mut().poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.pending.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.pending.capacity() > 0 {
            self.pending = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

pub(super) use crate::mux::LiveCounters as Counters;

/// A data frame's body, as the driver read it.
pub(super) enum Body<'a> {
    /// A short body, still in the driver's read buffer: copied into the
    /// stream's buffer.
    Small(&'a [u8]),
    /// A long body, read into a buffer of its own: kept whole.
    Large(Bytes),
}

impl Body<'_> {
    fn len(&self) -> usize {
        match self {
            Body::Small(b) => b.len(),
            Body::Large(b) => b.len(),
        }
    }
}

/// Short bodies gathered into one buffer up to this many bytes; the next
/// goes into a new one. Bodies this long or longer arrive in buffers of
/// their own.
pub(super) const TAIL_BYTES: usize = 16 * 1024;

/// A stream's received data not read yet, in order: long bodies whole,
/// short ones gathered into buffers of up to [`TAIL_BYTES`]. A peer sending
/// one-byte frames makes the stream hold about one byte per byte of
/// window, not a buffer and a queue entry per frame; whatever the sizes,
/// what waits unread costs at most a quarter more than its bytes, and the
/// buffer being filled at most twice [`TAIL_BYTES`].
#[derive(Default)]
struct Recv {
    /// Long bodies, and gathered short ones, in order: older than `tail`.
    chunks: VecDeque<Bytes>,
    /// The newest short bodies, gathered.
    tail: BytesMut,
    len: usize,
}

impl Recv {
    fn push(&mut self, body: Body<'_>) {
        self.len += body.len();
        match body {
            Body::Small(b) => {
                if self.tail.len() + b.len() > TAIL_BYTES {
                    self.seal_tail();
                }
                self.tail.extend_from_slice(b);
            }
            Body::Large(b) => {
                self.seal_tail();
                self.chunks.push_back(b);
            }
        }
    }

    /// Moves the gathered short bodies to the queue, as one chunk: a
    /// buffer much larger than what it holds (it grows by doubling) is
    /// copied to one of its size first, since the chunk may wait long.
    fn seal_tail(&mut self) {
        if self.tail.is_empty() {
            return;
        }
        let tail = std::mem::take(&mut self.tail);
        let chunk = if tail.capacity() > tail.len() + tail.len() / 4 {
            Bytes::copy_from_slice(&tail)
        } else {
            tail.freeze()
        };
        self.chunks.push_back(chunk);
    }

    /// The oldest chunk whole, or nothing when nothing waits.
    fn next_chunk(&mut self) -> Bytes {
        let chunk = match self.chunks.pop_front() {
            Some(chunk) => chunk,
            // Handed to a reader now, not kept: no copy to a snug buffer.
            None => std::mem::take(&mut self.tail).freeze(),
        };
        self.len -= chunk.len();
        chunk
    }

    /// Copies as much as fits into `buf`; how much.
    fn copy_to(&mut self, buf: &mut tokio::io::ReadBuf<'_>) -> usize {
        let mut n = 0;
        while buf.remaining() > 0 {
            if let Some(chunk) = self.chunks.front_mut() {
                let take = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..take]);
                chunk.advance(take);
                if chunk.is_empty() {
                    self.chunks.pop_front();
                }
                n += take;
            } else if !self.tail.is_empty() {
                let take = self.tail.len().min(buf.remaining());
                buf.put_slice(&self.tail[..take]);
                self.tail.advance(take);
                if self.tail.is_empty() {
                    // A quiet stream keeps no buffer.
                    self.tail = BytesMut::new();
                }
                n += take;
            } else {
                break;
            }
        }
        self.len -= n;
        n
    }
}

/// One stream's state.
pub(super) struct StreamState {
    /// Received data not read yet.
    recv: Recv,
    /// The peer sent FIN: once `recv` is read, end of file.
    recv_fin: bool,
    /// Either side reset the stream.
    reset: bool,
    /// What the peer may still send before more credit.
    recv_credit: u32,
    /// The receive window: what credit is topped up to.
    pub(super) window: u32,
    /// Read since credit was last granted.
    consumed: u32,
    /// The peer used all its credit since the last grant.
    starved: bool,
    /// What this side may still send.
    send_credit: u32,
    /// This side sent FIN.
    send_fin: bool,
    /// The peer acknowledged the stream (always, for the peer's streams).
    acked: bool,
    /// The peer opened it and the application has not accepted it yet:
    /// what it holds counts against [`MAX_UNACCEPTED_BYTES`].
    pub(super) waiting: bool,
    /// SYN (a stream this side opened) or ACK (one it accepted) for the
    /// stream's first frame, as yamux does: the first data leaves with it.
    pub(super) flags: u16,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl StreamState {
    /// Bytes received and not read yet.
    #[cfg(test)]
    pub(super) fn unread(&self) -> usize {
        self.recv.len
    }

    pub(super) fn new(send_credit: u32, acked: bool, flags: u16) -> Self {
        StreamState {
            recv: Recv::default(),
            recv_fin: false,
            reset: false,
            recv_credit: INITIAL_WINDOW,
            window: INITIAL_WINDOW,
            consumed: 0,
            starved: false,
            send_credit,
            send_fin: false,
            acked,
            waiting: false,
            flags,
            reader: None,
            writer: None,
        }
    }

    /// Bytes received and not read yet.
    pub(super) fn recv_len(&self) -> usize {
        self.recv.len
    }

    fn wake(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }
}

/// Why a connection ended, for the streams' errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// This side closed it.
    Closed,
    /// The peer went away, the transport failed or the peer broke the
    /// protocol.
    Lost,
}

/// The streams of a connection and what waits to be written.
pub(super) struct State {
    pub(super) streams: HashMap<u32, StreamState>,
    /// The id of the next stream this side opens.
    pub(super) next_id: u32,
    /// Frames for the driver to write (control frames, and data frames a
    /// stream could not write itself), whole, in order.
    pub(super) queued: BytesMut,
    /// Writers waiting for `queued` to shrink.
    pub(super) write_waiters: Vec<Waker>,
    /// Streams this side opened that the peer has not acknowledged.
    pub(super) unacked: usize,
    /// Opens waiting for `unacked` to fall below [`MAX_ACK_BACKLOG`].
    pub(super) ack_waiters: Vec<Waker>,
    pub(super) ended: Option<Ended>,
    /// Receive window that streams may still grow into, beyond their
    /// initial windows.
    pub(super) budget: usize,
    /// Bytes held by the streams the peer opened that wait to be accepted.
    pub(super) unaccepted: usize,
}

/// A connection's shared half.
pub(super) struct Conn {
    pub(super) sink: Mutex<Sink>,
    pub(super) state: Mutex<State>,
    pub(super) counters: Counters,
    /// Largest data frame body sent.
    pub(super) split: usize,
    /// The driver is woken to flush.
    pub(super) flush_wanted: AtomicBool,
    /// Frames written or queued since the driver's last flush.
    pub(super) frames: AtomicU32,
    pub(super) driver: AtomicWaker,
    /// Set by a handle to close the connection.
    pub(super) shutdown: CancellationToken,
    /// Set once the driver is done.
    pub(super) done: CancellationToken,
}

/// Locks `m`, whether or not a holder panicked: the state stays consistent
/// at every point a panic could leave it.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn aborted(ended: Ended) -> io::Error {
    match ended {
        Ended::Closed => io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the multiplexed connection was closed",
        ),
        Ended::Lost => io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the multiplexed connection ended",
        ),
    }
}

impl Conn {
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Asks the driver to flush.
    pub(super) fn want_flush(&self) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        if !self.flush_wanted.swap(true, Ordering::AcqRel) {
            self.driver.wake();
        }
    }

    /// Asks the driver to flush and wakes it even if a flush was asked for
    /// already: a stream's poll of the transport may have replaced the
    /// driver's waker there.
    fn wake_driver_to_flush(&self) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.flush_wanted.store(true, Ordering::Release);
        self.driver.wake();
    }

    /// Queues a frame without a body for the driver.
    pub(super) fn queue_control(&self, st: &mut State, header: Header) {
        st.queued.extend_from_slice(&header.encode());
        self.want_flush();
    }

    /// Sends one data frame of a stream: straight to the transport when
    /// nobody else is using it, else queued for the driver (one copy).
    fn send_data(&self, cx: &mut Context<'_>, header: Header, body: Out<'_>) -> io::Result<()> {
        let len = body.as_slice().len();
        if let Ok(mut sink) = self.sink.try_lock()
            && sink.is_drained()
        {
            // What was queued before this frame (the stream's SYN, say)
            // goes first.
            let queued = std::mem::take(&mut self.state().queued);
            let sent = sink
                .commit(cx, &queued)
                .and_then(|()| sink.commit(cx, &header.encode()))
                .and_then(|()| sink.commit_out(cx, body));
            self.counters.bytes_out.fetch_add(
                (queued.len() + super::frame::HEADER_BYTES + len) as u64,
                Ordering::Relaxed,
            );
            if let Err(e) = sent {
                // The driver meets the error too, and ends the connection.
                drop(sink);
                self.want_flush();
                return Err(e);
            }
            if !sink.is_drained() {
                // The transport took this task's waker when it could take
                // no more: the driver must poll it again itself.
                drop(sink);
                self.wake_driver_to_flush();
                return Ok(());
            }
            if len >= SELF_FLUSH_BYTES {
                let flushed = sink.io.as_mut().poll_flush(cx);
                drop(sink);
                match flushed {
                    Poll::Ready(Ok(())) => {}
                    _ => self.wake_driver_to_flush(),
                }
                return Ok(());
            }
            drop(sink);
            self.want_flush();
            return Ok(());
        }
        let mut st = self.state();
        st.queued.extend_from_slice(&header.encode());
        st.queued.extend_from_slice(body.as_slice());
        drop(st);
        self.want_flush();
        Ok(())
    }

    /// A stream's read: what is buffered, end of file after a FIN, or
    /// waiting.
    pub(super) fn poll_read(
        &self,
        id: u32,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_recv(id, cx, |recv| recv.copy_to(buf))
            .map_ok(|_| ())
    }

    /// A stream's read of the next chunk whole: empty at end of file.
    pub(super) fn poll_read_chunk(&self, id: u32, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
        self.poll_recv(id, cx, Recv::next_chunk)
            .map_ok(Option::unwrap_or_default)
    }

    /// A stream's read: `take` takes from what is buffered (some of it),
    /// `None` at end of file, or waiting; credit goes back to the peer as
    /// the reader takes.
    fn poll_recv<R>(
        &self,
        id: u32,
        cx: &mut Context<'_>,
        take: impl FnOnce(&mut Recv) -> R,
    ) -> Poll<io::Result<Option<R>>> {
        let mut st = self.state();
        let State {
            streams,
            queued,
            budget,
            ended,
            ..
        } = &mut *st;
        let Some(s) = streams.get_mut(&id) else {
            return Poll::Ready(Err(aborted(Ended::Lost)));
        };
        if s.recv.len > 0 {
            let before = s.recv.len;
            let taken = take(&mut s.recv);
            s.consumed += (before - s.recv.len) as u32;
            if !s.recv_fin && !s.reset && ended.is_none() && s.consumed >= s.window / 2 {
                let mut grant = s.consumed;
                // The peer ran out of credit while this reader kept up: the
                // window, not the reader, holds the stream back. Double it
                // out of the connection's budget.
                if s.starved && s.recv.len == 0 {
                    let grow = (s.window as usize)
                        .min(*budget)
                        .min((MAX_WINDOW - s.window) as usize)
                        as u32;
                    *budget -= grow as usize;
                    s.window += grow;
                    grant += grow;
                }
                s.starved = false;
                s.consumed = 0;
                s.recv_credit += grant;
                let flags = std::mem::take(&mut s.flags);
                let update = Header::new(Kind::WindowUpdate, flags, id, grant);
                queued.extend_from_slice(&update.encode());
                drop(st);
                self.want_flush();
            }
            return Poll::Ready(Ok(Some(taken)));
        }
        if s.recv_fin {
            return Poll::Ready(Ok(None));
        }
        if s.reset {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the stream was reset",
            )));
        }
        if let Some(ended) = *ended {
            return Poll::Ready(Err(aborted(ended)));
        }
        s.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    /// A stream's write: one data frame of at most what the peer allows.
    pub(super) fn poll_write(
        &self,
        id: u32,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_out(id, cx, Out::Copy(buf))
    }

    /// [`poll_write`](Self::poll_write) of bytes the transport may take in
    /// place ([`WriteInPlace`]).
    pub(super) fn poll_write_in_place(
        &self,
        id: u32,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_out(id, cx, Out::InPlace(buf))
    }

    fn poll_write_out(
        &self,
        id: u32,
        cx: &mut Context<'_>,
        buf: Out<'_>,
    ) -> Poll<io::Result<usize>> {
        let len = buf.as_slice().len();
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        let n = {
            let mut st = self.state();
            if let Some(ended) = st.ended {
                return Poll::Ready(Err(aborted(ended)));
            }
            let over = st.queued.len() >= QUEUE_HIGH_WATER;
            let State {
                streams,
                write_waiters,
                ..
            } = &mut *st;
            let Some(s) = streams.get_mut(&id) else {
                return Poll::Ready(Err(aborted(Ended::Lost)));
            };
            if s.reset {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "the stream was reset",
                )));
            }
            if s.send_fin {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the stream was shut down for writing",
                )));
            }
            if s.send_credit == 0 {
                s.writer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if over {
                if !write_waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    write_waiters.push(cx.waker().clone());
                }
                drop(st);
                self.want_flush();
                return Poll::Pending;
            }
            let n = len.min(s.send_credit as usize).min(self.split);
            s.send_credit -= n as u32;
            (n, std::mem::take(&mut s.flags))
        };
        let (n, flags) = n;
        let header = Header::new(Kind::Data, flags, id, n as u32);
        let body = match buf {
            Out::Copy(b) => Out::Copy(&b[..n]),
            Out::InPlace(b) => Out::InPlace(&mut b[..n]),
        };
        self.send_data(cx, header, body)?;
        Poll::Ready(Ok(n))
    }

    /// A stream's shutdown: FIN, once.
    pub(super) fn shutdown_stream(&self, id: u32) -> io::Result<()> {
        let mut st = self.state();
        if let Some(ended) = st.ended {
            return Err(aborted(ended));
        }
        let Some(s) = st.streams.get_mut(&id) else {
            return Err(aborted(Ended::Lost));
        };
        if s.send_fin || s.reset {
            return Ok(());
        }
        s.send_fin = true;
        let flags = FIN | std::mem::take(&mut s.flags);
        self.queue_control(&mut st, Header::new(Kind::Data, flags, id, 0));
        Ok(())
    }

    /// A stream's handle is gone: the stream is forgotten, and the peer
    /// told unless both sides are done with it.
    pub(super) fn drop_stream(&self, id: u32) {
        let mut st = self.state();
        let Some(s) = st.streams.remove(&id) else {
            return;
        };
        st.budget += (s.window - INITIAL_WINDOW) as usize;
        if s.waiting {
            st.unaccepted -= s.recv.len;
        }
        if !s.acked {
            st.acknowledged();
        }
        if st.ended.is_some() || s.reset || (s.send_fin && s.recv_fin) || s.flags & SYN != 0 {
            // Nothing to tell (or the peer never heard of the stream).
            return;
        }
        // The peer finished and this side never did: finish too. Else the
        // stream is abandoned: reset it, so the peer stops sending.
        let flag = if s.recv_fin { FIN } else { RST };
        self.queue_control(&mut st, Header::new(Kind::Data, flag | s.flags, id, 0));
    }

    /// Ends every stream: reads and writes fail once the data already
    /// received is read.
    pub(super) fn end(&self, why: Ended) {
        let mut st = self.state();
        if st.ended.is_none() {
            st.ended = Some(why);
        }
        for s in st.streams.values_mut() {
            s.wake();
        }
        for w in st.write_waiters.drain(..) {
            w.wake();
        }
        for w in st.ack_waiters.drain(..) {
            w.wake();
        }
    }
}

/// What the driver does with a received frame, to a stream.
pub(super) enum Received {
    /// Handled.
    Done,
    /// The peer opened this stream: accept it, or refuse it.
    Opened(u32),
}

/// Why a received frame ends the connection.
#[derive(Debug, thiserror::Error)]
pub(super) enum Violation {
    #[error("stream {0} sent more than its window")]
    OverWindow(u32),
    #[error("stream {0} opened twice")]
    Reopened(u32),
    #[error("stream {0} has an id of this side's")]
    WrongParity(u32),
    #[error("stream {0} was given credit past 4 GiB")]
    CreditOverflow(u32),
}

impl State {
    /// One of this side's streams no longer waits for its ACK.
    fn acknowledged(&mut self) {
        self.unacked -= 1;
        for w in self.ack_waiters.drain(..) {
            w.wake();
        }
    }

    /// Acts on a data frame or window update from the peer; `opens_odd`
    /// tells which ids the peer opens with.
    pub(super) fn receive(
        &mut self,
        header: Header,
        body: Body<'_>,
        peer_ids_odd: bool,
        max_streams: usize,
    ) -> Result<Received, Violation> {
        let id = header.stream;
        if header.has(super::frame::SYN) {
            if (id % 2 == 1) != peer_ids_odd {
                return Err(Violation::WrongParity(id));
            }
            if self.streams.contains_key(&id) {
                return Err(Violation::Reopened(id));
            }
            if self.streams.len() >= max_streams {
                // Too many streams: this one is refused, the connection
                // carries on (yamux would end it).
                self.queued
                    .extend_from_slice(&Header::new(Kind::WindowUpdate, RST, id, 0).encode());
                return Ok(Received::Done);
            }
            let mut credit = INITIAL_WINDOW;
            if header.kind == Kind::WindowUpdate {
                credit = credit
                    .checked_add(header.length)
                    .ok_or(Violation::CreditOverflow(id))?;
            }
            let mut stream = StreamState::new(credit, true, 0);
            stream.waiting = true;
            self.streams.insert(id, stream);
            self.apply(header, body)?;
            return Ok(Received::Opened(id));
        }
        self.apply(header, body)?;
        Ok(Received::Done)
    }

    /// A frame for a known stream; frames for streams already gone are
    /// dropped, as yamux does (they may have crossed the reset).
    fn apply(&mut self, header: Header, body: Body<'_>) -> Result<(), Violation> {
        let id = header.stream;
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if !s.acked && header.has(ACK | RST) {
            s.acked = true;
            self.acknowledged();
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if header.has(RST) {
            s.reset = true;
            s.wake();
            return Ok(());
        }
        let mut wake_reader = header.has(FIN);
        match header.kind {
            Kind::Data => {
                let len = body.len() as u32;
                s.recv_credit = s
                    .recv_credit
                    .checked_sub(len)
                    .ok_or(Violation::OverWindow(id))?;
                if len > 0 && s.recv_credit == 0 {
                    s.starved = true;
                }
                if len > 0 && !s.recv_fin && !s.reset {
                    if s.waiting {
                        if self.unaccepted + body.len() > MAX_UNACCEPTED_BYTES {
                            // Refused: reset, and what it held let go.
                            self.unaccepted -= s.recv.len;
                            s.recv = Recv::default();
                            s.reset = true;
                            s.wake();
                            let reset = Header::new(Kind::WindowUpdate, RST, id, 0);
                            self.queued.extend_from_slice(&reset.encode());
                            return Ok(());
                        }
                        self.unaccepted += body.len();
                    }
                    s.recv.push(body);
                    wake_reader = true;
                }
            }
            Kind::WindowUpdate => {
                s.send_credit = s
                    .send_credit
                    .checked_add(header.length)
                    .ok_or(Violation::CreditOverflow(id))?;
                if header.length > 0
                    && let Some(w) = s.writer.take()
                {
                    w.wake();
                }
            }
            Kind::Ping | Kind::GoAway => {}
        }
        if header.has(FIN) {
            s.recv_fin = true;
        }
        if wake_reader && let Some(w) = s.reader.take() {
            w.wake();
        }
        Ok(())
    }
}
