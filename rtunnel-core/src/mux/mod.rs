//! Stream multiplexing: the [`Mux`] trait, its yamux implementation and an
//! in-memory one.
//!
//! Everything above this module (the [`link`](crate::link), the server's
//! tunnels and node mesh, the agent) works on the trait, through a
//! [`SharedMux`]: [`yamux::YamuxMux`] carries tunnels over WebSockets and
//! TLS, [`memory::MemoryMux`] connects two ends in one process, for tests
//! and for embedders that need no wire at all.
//!
//! ```
//! use rtunnel_core::mux::{Mux, memory::MemoryMux, shared};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (a, b) = MemoryMux::pair();
//! let (a, b) = (shared(a), shared(b));
//! let mut out = a.open().await.unwrap();
//! out.write_all(b"ping").await.unwrap();
//! let mut inbound = b.accept().await.unwrap();
//! let mut buf = [0u8; 4];
//! inbound.read_exact(&mut buf).await.unwrap();
//! assert_eq!(&buf, b"ping");
//! # }
//! ```

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use async_trait::async_trait;

use crate::relay::{ReadChunk, WriteInPlace};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pub mod batching;
pub mod conformance;
pub mod memory;
pub mod wire;
pub mod yamux;

pub use self::wire::{WireMux, WireStream};
pub use self::yamux::{MAX_PENDING_INBOUND, YAMUX_MAX_STREAMS, YamuxMux, YamuxStream};
pub use crate::proto::MAX_OPEN_STREAMS;

/// Errors of a multiplexed connection.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// The connection is closed; no stream can be opened.
    #[error("tunnel connection closed")]
    Closed,
    /// The multiplexer's own stream limit is reached.
    #[error("too many streams on this connection")]
    TooManyStreams,
    /// yamux reported an error.
    #[error("multiplexer error: {0}")]
    Yamux(String),
}

/// Counters of a multiplexed connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MuxCounters {
    /// Streams opened by this side.
    pub streams_opened: u64,
    /// Streams the peer opened and this side accepted.
    pub streams_accepted: u64,
    /// Streams the peer opened that were refused because nobody accepted them.
    pub streams_refused: u64,
    /// Bytes read from the underlying connection.
    pub bytes_in: u64,
    /// Bytes written to the underlying connection.
    pub bytes_out: u64,
}

/// The live counters behind [`MuxCounters`], shared by a connection's
/// handle and its driver.
#[derive(Debug, Default)]
pub(crate) struct LiveCounters {
    pub(crate) opened: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
}

impl LiveCounters {
    /// What they count now.
    pub(crate) fn snapshot(&self) -> MuxCounters {
        MuxCounters {
            streams_opened: self.opened.load(Ordering::Relaxed),
            streams_accepted: self.accepted.load(Ordering::Relaxed),
            streams_refused: self.refused.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}

/// A multiplexed connection: many ordered byte streams over one.
///
/// Dropping the last handle must end the connection, as [`close`](Self::close)
/// does: a [`Link`](crate::link::Link) relies on it on its error paths.
#[async_trait]
pub trait Mux: Send + Sync + 'static {
    /// One stream of the connection.
    type Stream: MuxIo;

    /// Opens a new stream to the peer.
    async fn open(&self) -> Result<Self::Stream, MuxError>;

    /// Waits for the next stream opened by the peer; `None` once closed.
    async fn accept(&self) -> Option<Self::Stream>;

    /// Starts closing the connection; open streams end with an error.
    fn close(&self);

    /// Resolves once the connection has ended, for whatever reason.
    async fn closed(&self);

    /// Whether the connection has ended or is closing.
    fn is_closed(&self) -> bool;

    /// Current counters.
    fn counters(&self) -> MuxCounters;
}

/// Settings of a yamux connection.
#[derive(Debug, Clone)]
pub struct MuxConfig {
    /// Bytes of receive window the connection's streams may grow into,
    /// together, beyond the 256 KiB each one starts with. A fast stream on
    /// a long link needs a window near the link's bandwidth-delay product
    /// to go at full speed; this caps what unread data can hold in memory.
    pub window_budget: usize,
    /// Largest data frame payload; larger writes are split. Over a
    /// [`crate::ws::WsStream`], keep it at most
    /// [`crate::ws::MAX_WRITE_BUFFER_BYTES`] minus the 12-byte header, so a
    /// full frame leaves as one WebSocket message.
    pub split_send_size: usize,
}

/// The default [`MuxConfig::window_budget`]: 4 MiB, so one stream's window
/// can double from 256 KiB past 4 MiB (about 340 Mbit/s at 100 ms), while a
/// stalled reader holds at most that much unread data in memory.
pub const DEFAULT_WINDOW_BUDGET: usize = 4 * 1024 * 1024;

/// The size of a yamux frame header.
pub const YAMUX_HEADER_BYTES: usize = 12;

/// The default [`MuxConfig::split_send_size`]: a stream's whole initial
/// window (256 KiB) in one data frame, which with its header fills one
/// WebSocket message ([`crate::ws::MAX_WRITE_BUFFER_BYTES`]). A size that
/// does not divide the window leaves slivers of credit, each a frame of
/// its own. Four times the 64 KiB frames of before: a bulk transfer makes
/// a quarter of the frames, messages, wake-ups and system calls
/// (docs/PERFORMANCE.md).
pub const DEFAULT_SPLIT_SEND_BYTES: usize = 256 * 1024;

impl Default for MuxConfig {
    fn default() -> Self {
        MuxConfig {
            window_budget: DEFAULT_WINDOW_BUDGET,
            split_send_size: DEFAULT_SPLIT_SEND_BYTES,
        }
    }
}

/// Any byte stream a [`Mux`] may hand out; one that holds what it received
/// in chunks may hand them to a relay whole ([`ReadChunk`]), and one whose
/// connection can take bytes in place may take a relay's that way
/// ([`WriteInPlace`]). Both have defaults: a stream type of an embedder's
/// own needs `impl ReadChunk for T {}` and `impl WriteInPlace for T {}`.
pub trait MuxIo:
    AsyncRead + WriteInPlace + ReadChunk + Send + Unpin + std::fmt::Debug + 'static
{
}

impl<T: AsyncRead + WriteInPlace + ReadChunk + Send + Unpin + std::fmt::Debug + 'static> MuxIo
    for T
{
}

impl<S> ReadChunk for Muxed<S> {}
impl<S: AsyncWrite + Unpin> WriteInPlace for Muxed<S> {}

/// A stream of a [`SharedMux`], whatever carries it.
pub type MuxStream = Box<dyn MuxIo>;

/// Any [`Mux`], behind one type: what links, the server and the agent hold.
pub type SharedMux = Arc<dyn Mux<Stream = MuxStream>>;

/// Shares `mux` as a [`SharedMux`]; its streams are boxed.
pub fn shared<M: Mux>(mux: M) -> SharedMux {
    Arc::new(Boxed(mux))
}

/// A [`Mux`] whose streams are boxed into [`MuxStream`]s.
struct Boxed<M>(M);

#[async_trait]
impl<M: Mux> Mux for Boxed<M> {
    type Stream = MuxStream;

    async fn open(&self) -> Result<MuxStream, MuxError> {
        Ok(Box::new(self.0.open().await?))
    }

    async fn accept(&self) -> Option<MuxStream> {
        Some(Box::new(self.0.accept().await?))
    }

    fn close(&self) {
        self.0.close();
    }

    async fn closed(&self) {
        self.0.closed().await;
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    fn counters(&self) -> MuxCounters {
        self.0.counters()
    }
}

/// A stream of a multiplexed connection, with tokio's IO traits, that
/// fails once its connection has ended.
///
/// When the connection ends, a read or write waiting on the stream fails
/// with `ConnectionAborted` (yamux's graceful close does not wake the
/// streams of the side that closed, so a relay would otherwise wait for
/// its other end forever). A stream this side opened holds one of the
/// connection's [`MAX_OPEN_STREAMS`] slots until dropped.
pub struct Muxed<S> {
    inner: S,
    _slot: Option<OwnedSemaphorePermit>,
    connection_ended: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<S> Muxed<S> {
    fn new(inner: S, slot: Option<OwnedSemaphorePermit>, done: &CancellationToken) -> Self {
        Muxed {
            inner,
            _slot: slot,
            connection_ended: Box::pin(done.clone().cancelled_owned()),
        }
    }

    /// After the inner stream answered `Pending`: an error if the
    /// connection has ended (the waker is registered either way).
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.connection_ended.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the multiplexed connection ended",
            )
        })
    }

    /// `poll` on the inner stream, failing instead of waiting once the
    /// connection has ended.
    fn poll_inner<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>>
    where
        S: Unpin,
    {
        match poll(Pin::new(&mut self.inner), cx) {
            Poll::Pending => self
                .poll_ended(cx)
                .map_or(Poll::Pending, |e| Poll::Ready(Err(e))),
            ready => ready,
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Muxed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Muxed").field(&self.inner).finish()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Muxed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_inner(cx, |s, cx| s.poll_read(cx, buf))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Muxed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_inner(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_inner(cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_inner(cx, |s, cx| s.poll_shutdown(cx))
    }
}
