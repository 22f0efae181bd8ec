//! [`WireStream`]: one stream of a [`WireMux`](super::WireMux).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

use super::conn::Conn;
use crate::relay::{ReadChunk, WriteInPlace};

/// A stream of a [`WireMux`](super::WireMux), with tokio's IO traits.
///
/// - Reads hand out the data frames' bodies as they arrived, with no copy
///   but the one into the caller's buffer; reading grants the peer more
///   credit.
/// - A write sends one data frame, straight to the connection when no
///   other stream is writing to it at that instant (else through the
///   driver's queue), and waits only for the peer's credit.
/// - Shutting down sends FIN; reads go on until the peer's FIN.
/// - Dropping the stream resets it, unless both sides finished it.
/// - Once the connection has ended, reads return what had arrived, then
///   fail with `ConnectionAborted`, as writes do at once.
///
/// One opened by this side holds one of the connection's
/// [`MAX_OPEN_STREAMS`](crate::mux::MAX_OPEN_STREAMS) slots until dropped.
pub struct WireStream {
    conn: Arc<Conn>,
    id: u32,
    _slot: Option<OwnedSemaphorePermit>,
}

impl WireStream {
    pub(super) fn new(conn: Arc<Conn>, id: u32, slot: Option<OwnedSemaphorePermit>) -> Self {
        WireStream {
            conn,
            id,
            _slot: slot,
        }
    }

    /// The stream's id on the connection: odd for the dialing side's
    /// streams, even for the accepting side's.
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl std::fmt::Debug for WireStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireStream").field("id", &self.id).finish()
    }
}

impl AsyncRead for WireStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        self.conn.poll_read(self.id, cx, buf)
    }
}

impl ReadChunk for WireStream {
    /// The next data frame's body (or what is left of it), as it arrived.
    fn poll_read_chunk(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<Bytes>>> {
        Some(self.conn.poll_read_chunk(self.id, cx))
    }
}

impl AsyncWrite for WireStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.conn.poll_write(self.id, cx, buf)
    }

    /// Ready at once: written frames are the connection's, which sends
    /// them without being asked.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.conn.shutdown_stream(self.id))
    }
}

impl WriteInPlace for WireStream {
    /// One data frame, whose body the connection's transport may take in
    /// place (a WebSocket client masks it there): see
    /// [`WireMux::client_in_place`](super::WireMux::client_in_place).
    fn poll_write_in_place(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.conn.poll_write_in_place(self.id, cx, buf)
    }
}

impl Drop for WireStream {
    fn drop(&mut self) {
        self.conn.drop_stream(self.id);
    }
}
