//! A check that a transport under a [`Mux`] lets the frames of many
//! streams share writes, for the transports built on it (the WebSocket of
//! a tunnel, the node mesh's TLS) to run in their own tests.
//!
//! The mux driver flushes once per poll (see [`yamux`](super::yamux)); a
//! transport that writes each frame out on its own (TLS without a write
//! buffer) would still make a system call per frame.
//!
//! ```
//! use rtunnel_core::mux::{MuxConfig, YamuxMux, batching};
//! use rtunnel_core::ws::{Role, WsStream};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (a, b) = tokio::io::duplex(1 << 20);
//! let (socket, writes) = batching::CountedWrites::new(a);
//! let cfg = MuxConfig::default();
//! let dialing = YamuxMux::client(WsStream::new(socket, Role::Client, &[]), &cfg);
//! let answering = YamuxMux::server(WsStream::new(b, Role::Server, &[]), &cfg);
//! assert_eq!(batching::writes_for_ten_streams(&dialing, &answering, &writes).await, 1);
//! # }
//! ```

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::Mux;

/// How many writes took bytes, of a [`CountedWrites`].
#[derive(Clone, Debug, Default)]
pub struct WriteCount(Arc<AtomicUsize>);

impl WriteCount {
    /// The writes so far.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// A socket that counts the writes made to it that took bytes.
#[derive(Debug)]
pub struct CountedWrites<IO> {
    inner: IO,
    writes: WriteCount,
}

impl<IO> CountedWrites<IO> {
    /// Wraps `inner`; the count is read through the returned [`WriteCount`].
    pub fn new(inner: IO) -> (Self, WriteCount) {
        let writes = WriteCount::default();
        (
            CountedWrites {
                inner,
                writes: writes.clone(),
            },
            writes,
        )
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for CountedWrites<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for CountedWrites<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.writes.0.fetch_add(1, Ordering::Relaxed);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Opens ten streams on `dialing`, queues a small frame on each before its
/// driver runs (on a current-thread runtime), reads them all on
/// `answering`, and returns how many writes `writes` (the dialing side's
/// socket) counted for the ten frames: 1 when they share a write.
///
/// # Panics
///
/// When a stream cannot be opened, accepted or read: the connection is
/// broken, which is a failed check too.
pub async fn writes_for_ten_streams<A: Mux, B: Mux>(
    dialing: &A,
    answering: &B,
    writes: &WriteCount,
) -> usize {
    let mut streams = Vec::new();
    for _ in 0..10 {
        streams.push(dialing.open().await.expect("open a stream"));
    }
    let before = writes.get();
    for (i, s) in streams.iter_mut().enumerate() {
        s.write_all(format!("stream {i}").as_bytes())
            .await
            .expect("queue a frame");
    }
    for _ in 0..10 {
        let mut s = answering.accept().await.expect("accept a stream");
        let mut buf = [0u8; 8];
        s.read_exact(&mut buf).await.expect("read a frame");
        assert!(buf.starts_with(b"stream "), "a frame arrived mangled");
    }
    writes.get() - before
}
