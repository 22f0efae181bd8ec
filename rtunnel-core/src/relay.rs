//! Bidirectional copy between two byte streams, with byte counts.
//!
//! Unlike `tokio::io::copy_bidirectional`, [`relay`] reports how many bytes
//! went each way even when one side fails, which the access log needs. When
//! one side reaches end of file, the other side's write half is shut down and
//! the opposite direction carries on (TCP half-close). Each direction uses one
//! buffer of at most [`RELAY_BUFFER_BYTES`], so memory per relay is bounded;
//! it starts at [`RELAY_FIRST_BUFFER_BYTES`] and doubles whenever a read
//! fills it, so a connection that carries small messages (a request, a
//! keystroke) never pays for the large buffer a bulk transfer wants.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A byte stream that can hand what it received to a relay in the chunks
/// it holds it in, without copying it into the relay's buffer (a
/// [`WireStream`](crate::mux::WireStream)'s data frames).
pub trait ReadChunk {
    /// The next chunk received, whole (empty at end of file), as
    /// `poll_read` would have read it; `None` when this stream has no
    /// chunks to hand out now, and the relay reads into its own buffer.
    fn poll_read_chunk(&mut self, _cx: &mut Context<'_>) -> Option<Poll<io::Result<Bytes>>> {
        None
    }
}

impl ReadChunk for tokio::net::TcpStream {}
impl ReadChunk for tokio::io::DuplexStream {}
impl<T: ReadChunk + ?Sized> ReadChunk for Box<T> {
    fn poll_read_chunk(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<Bytes>>> {
        (**self).poll_read_chunk(cx)
    }
}

/// A writer that may take bytes by changing them where they are instead of
/// copying them first: a WebSocket client masks a frame's payload in the
/// caller's buffer ([`WsStream`](crate::ws::WsStream)), and a
/// [`WireStream`](crate::mux::WireStream) over one passes the buffer on. A
/// relay writes its own buffer this way, since it reads over the bytes it
/// wrote anyway.
pub trait WriteInPlace: AsyncWrite {
    /// Like [`poll_write`](AsyncWrite::poll_write), but when it returns
    /// `Ready(Ok(n))` the writer may have changed `buf[..n]`; it changes
    /// nothing else of `buf`, and nothing when it returns anything else.
    fn poll_write_in_place(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write(cx, buf)
    }
}

impl WriteInPlace for tokio::net::TcpStream {}
impl WriteInPlace for tokio::io::DuplexStream {}
impl<T: WriteInPlace + Unpin + ?Sized> WriteInPlace for Box<T> {
    fn poll_write_in_place(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut **self.get_mut()).poll_write_in_place(cx, buf)
    }
}

/// The most each direction's buffer grows to: a full yamux data frame
/// ([`crate::mux::DEFAULT_SPLIT_SEND_BYTES`]), so a bulk transfer moves as
/// few, large frames.
pub const RELAY_BUFFER_BYTES: usize = 256 * 1024;

/// What each direction's buffer starts at.
pub const RELAY_FIRST_BUFFER_BYTES: usize = 8 * 1024;

/// What a finished relay moved and how it ended.
#[derive(Debug)]
pub struct RelayOutcome {
    /// Bytes copied from the first stream to the second.
    pub a_to_b: u64,
    /// Bytes copied from the second stream to the first.
    pub b_to_a: u64,
    /// `Ok` when both directions reached end of file.
    pub result: io::Result<()>,
}

/// Copies `a` to `b` and `b` to `a` until both directions end or one fails.
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> RelayOutcome
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    relay_until(a, b, std::future::pending::<()>()).await
}

/// Like [`relay`], but stops when `stop` resolves (access revoked, the
/// session closed), still reporting the bytes moved so far; the result is
/// then an error of kind `ConnectionAborted`.
pub async fn relay_until<A, B, F>(a: &mut A, b: &mut B, stop: F) -> RelayOutcome
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    F: Future<Output = ()>,
{
    relay_chunks_until(&mut Unchunked(a), &mut Unchunked(b), stop).await
}

/// [`relay_chunks_until`] with nothing to stop it but the streams' ends.
pub async fn relay_chunks<A, B>(a: &mut A, b: &mut B) -> RelayOutcome
where
    A: AsyncRead + WriteInPlace + ReadChunk + Unpin + ?Sized,
    B: AsyncRead + WriteInPlace + ReadChunk + Unpin + ?Sized,
{
    relay_chunks_until(a, b, std::future::pending::<()>()).await
}

/// Like [`relay_until`], for streams that may hand over what they received
/// without a copy ([`ReadChunk`]): a chunk goes from one stream's buffer
/// to the other's write as it is, and only streams that have none are
/// read into the relay's buffer, which is written in place
/// ([`WriteInPlace`]).
pub async fn relay_chunks_until<A, B, F>(a: &mut A, b: &mut B, stop: F) -> RelayOutcome
where
    A: AsyncRead + WriteInPlace + ReadChunk + Unpin + ?Sized,
    B: AsyncRead + WriteInPlace + ReadChunk + Unpin + ?Sized,
    F: Future<Output = ()>,
{
    let mut ab = OneWay::new();
    let mut ba = OneWay::new();
    let mut stop = std::pin::pin!(stop);
    let result = std::future::poll_fn(|cx| {
        if stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "relay stopped",
            )));
        }
        let ab_state = ab.poll_copy(cx, &mut *a, &mut *b)?;
        let ba_state = ba.poll_copy(cx, &mut *b, &mut *a)?;
        if ab_state.is_ready() && ba_state.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await;
    RelayOutcome {
        a_to_b: ab.bytes,
        b_to_a: ba.bytes,
        result,
    }
}

/// Any stream, for [`relay_chunks_until`]: one with no chunks to hand out,
/// read into the relay's buffer.
#[derive(Debug)]
pub struct Unchunked<'a, T: ?Sized>(pub &'a mut T);

impl<T: ?Sized> ReadChunk for Unchunked<'_, T> {}
impl<T: AsyncWrite + Unpin + ?Sized> WriteInPlace for Unchunked<'_, T> {}

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for Unchunked<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for Unchunked<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

struct OneWay {
    /// A chunk taken from the reader whole, being written.
    chunk: Bytes,
    buf: Box<[u8]>,
    pos: usize,
    cap: usize,
    bytes: u64,
    /// The last read filled the buffer: the next one gets a larger one.
    filled: bool,
    read_done: bool,
    need_flush: bool,
    done: bool,
}

impl OneWay {
    fn new() -> Self {
        OneWay {
            chunk: Bytes::new(),
            buf: vec![0; RELAY_FIRST_BUFFER_BYTES].into_boxed_slice(),
            pos: 0,
            cap: 0,
            bytes: 0,
            filled: false,
            read_done: false,
            need_flush: false,
            done: false,
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ReadChunk + Unpin + ?Sized,
        W: WriteInPlace + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            let mut chunked = false;
            if self.pos == self.cap && self.chunk.is_empty() && !self.read_done {
                match r.poll_read_chunk(cx) {
                    Some(Poll::Ready(Ok(chunk))) => {
                        chunked = true;
                        self.read_done = chunk.is_empty();
                        self.chunk = chunk;
                    }
                    Some(Poll::Ready(Err(e))) => return Poll::Ready(Err(e)),
                    Some(Poll::Pending) => {
                        if self.need_flush {
                            ready!(Pin::new(&mut *w).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    None => {}
                }
            }
            while !self.chunk.is_empty() {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.chunk))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.chunk.advance(n);
                self.bytes += n as u64;
                self.need_flush = true;
            }
            if !chunked && self.pos == self.cap && !self.read_done {
                if self.filled && self.buf.len() < RELAY_BUFFER_BYTES {
                    self.buf = vec![0; self.buf.len() * 2].into_boxed_slice();
                    self.filled = false;
                }
                let mut rb = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                    Poll::Pending => {
                        // Nothing more to read now: push what was written.
                        if self.need_flush {
                            ready!(Pin::new(&mut *w).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.pos = 0;
                            self.cap = n;
                            self.filled = n == self.buf.len();
                        }
                    }
                }
            }
            while self.pos < self.cap {
                // The bytes written are read over next: the writer may
                // change them in place (mask them) instead of copying.
                let n = ready!(
                    Pin::new(&mut *w).poll_write_in_place(cx, &mut self.buf[self.pos..self.cap])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.bytes += n as u64;
                self.need_flush = true;
            }
            if self.read_done {
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_stopped_relay_reports_what_it_moved() {
        let (mut a, mut a_peer) = tokio::io::duplex(1024);
        let (mut b, mut b_peer) = tokio::io::duplex(1024);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            relay_until(&mut a, &mut b, async {
                let _ = stop_rx.await;
            })
            .await
        });
        a_peer.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        b_peer.read_exact(&mut got).await.unwrap();
        // Both sides stay open: only the stop ends the relay.
        stop_tx.send(()).unwrap();
        let outcome = task.await.unwrap();
        assert_eq!(outcome.a_to_b, 5);
        assert_eq!(outcome.b_to_a, 0);
        assert_eq!(
            outcome.result.unwrap_err().kind(),
            io::ErrorKind::ConnectionAborted
        );
    }

    #[tokio::test]
    async fn relay_copies_both_ways_and_counts() {
        let (a_outer, mut a_inner) = tokio::io::duplex(4096);
        let (mut b_inner, b_outer) = tokio::io::duplex(4096);
        let relay_task = tokio::spawn(async move { relay(&mut a_inner, &mut b_inner).await });
        let to_b: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let to_a = vec![9u8; 70_000];
        // Each peer writes and reads at the same time, as TCP peers do.
        async fn talk(peer: tokio::io::DuplexStream, data: Vec<u8>) -> Vec<u8> {
            let (mut r, mut w) = tokio::io::split(peer);
            let write = async move {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let read = async move {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                got
            };
            tokio::join!(write, read).1
        }
        let w1 = tokio::spawn(talk(a_outer, to_b.clone()));
        let w2 = tokio::spawn(talk(b_outer, to_a.clone()));
        assert_eq!(w2.await.unwrap(), to_b);
        assert_eq!(w1.await.unwrap(), to_a);
        let outcome = relay_task.await.unwrap();
        assert!(outcome.result.is_ok());
        assert_eq!(outcome.a_to_b, 300_000);
        assert_eq!(outcome.b_to_a, 70_000);
    }

    /// Bulk data fills the first buffer, which grows (8 KiB up to 64 KiB)
    /// between reads without losing or reordering a byte.
    #[tokio::test]
    async fn the_buffer_grows_under_bulk_data_and_keeps_every_byte() {
        let mut one = OneWay::new();
        assert_eq!(one.buf.len(), RELAY_FIRST_BUFFER_BYTES);
        let mut source = tokio::io::AsyncReadExt::take(tokio::io::repeat(7), 500_000);
        let mut sink = Vec::new();
        std::future::poll_fn(|cx| {
            one.poll_copy(cx, &mut Unchunked(&mut source), &mut Unchunked(&mut sink))
        })
        .await
        .unwrap();
        assert_eq!(sink.len(), 500_000);
        assert_eq!(
            one.buf.len(),
            RELAY_BUFFER_BYTES,
            "full reads grow the buffer"
        );

        let (mut a_outer, mut a_inner) = tokio::io::duplex(1024 * 1024);
        let (mut b_inner, mut b_outer) = tokio::io::duplex(1024 * 1024);
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            a_outer.write_all(&sent).await.unwrap();
            a_outer.shutdown().await.unwrap();
            a_outer
        });
        let relay_task = tokio::spawn(async move { relay(&mut a_inner, &mut b_inner).await });
        let mut got = Vec::new();
        b_outer.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "relayed bytes differ");
        drop(b_outer);
        drop(writer.await.unwrap());
        assert_eq!(relay_task.await.unwrap().a_to_b, 3_000_000);
    }

    #[tokio::test]
    async fn counts_survive_a_failure() {
        let (mut a_outer, mut a_inner) = tokio::io::duplex(1024);
        let (mut b_inner, b_outer) = tokio::io::duplex(1024);
        let relay_task = tokio::spawn(async move { relay(&mut a_inner, &mut b_inner).await });
        let mut b_outer = b_outer;
        a_outer.write_all(&[1u8; 100]).await.unwrap();
        let mut got = [0u8; 100];
        b_outer.read_exact(&mut got).await.unwrap();
        drop(b_outer);
        a_outer.write_all(&[1u8; 10]).await.unwrap();
        let outcome = relay_task.await.unwrap();
        assert!(outcome.result.is_err());
        assert!(outcome.a_to_b >= 100);
    }

    /// A stream that holds its data in chunks hands them over whole: the
    /// relay's own buffer is never read into, and every byte arrives.
    #[tokio::test]
    async fn a_wire_streams_chunks_pass_without_the_relay_buffer() {
        use crate::mux::{Mux, MuxConfig, WireMux};
        let (a, b) = tokio::io::duplex(1 << 20);
        let cfg = MuxConfig::default();
        let (client, server) = (WireMux::client(a, &cfg), WireMux::server(b, &cfg));
        let data: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
        let mut out = client.open().await.unwrap();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            out.write_all(&sent).await.unwrap();
            out.shutdown().await.unwrap();
            out
        });
        let mut inbound = server.accept().await.unwrap();
        let mut one = OneWay::new();
        let mut sink = Vec::new();
        std::future::poll_fn(|cx| one.poll_copy(cx, &mut inbound, &mut Unchunked(&mut sink)))
            .await
            .unwrap();
        let _out = writer.await.unwrap();
        assert!(sink == data, "the bytes differ");
        assert_eq!(one.bytes, data.len() as u64);
        assert_eq!((one.cap, one.buf.len()), (0, RELAY_FIRST_BUFFER_BYTES));
    }
}
