//! [`WsStream`]: a byte stream carried in the binary frames of a WebSocket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frame::{FrameHeader, MAX_CONTROL_PAYLOAD_BYTES, Opcode, apply_mask, extend_masked};
use super::{CloseHandle, MAX_WRITE_BUFFER_BYTES, MAX_WS_MESSAGE_BYTES};
use crate::relay::WriteInPlace;

/// Which end of the WebSocket this is: a client masks every frame it
/// sends, a server requires every frame it reads to be masked (RFC 6455,
/// section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The end that sent the upgrade request (the agent, `forward`).
    Client,
    /// The end that answered it (the server).
    Server,
}

/// Reads shorter than this (frame headers, small messages) go through a
/// read-ahead buffer of this size, so one system call takes in several
/// frames; a payload read at least this long goes from the socket straight
/// into the reader's buffer.
pub const READ_AHEAD_BYTES: usize = 4 * 1024;

/// Written frames are queued until a flush, or until this many bytes wait.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// Write buffer capacity kept after it drained; a larger one (a bulk
/// transfer's) is given back, so an idle connection holds no buffers.
const KEEP_WRITE_BUFFER_BYTES: usize = 4 * 1024;

/// A server's writes at least this long go from the caller's buffer to the
/// connection in one vectored write (what is queued, the frame's header,
/// the payload) instead of through the write buffer: one copy less per
/// byte. Only what the connection did not take is copied. A client's do
/// the same when the caller lets it mask them in place
/// ([`WriteInPlace`]).
pub(crate) const DIRECT_WRITE_MIN_BYTES: usize = 16 * 1024;

const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_TOO_BIG: u16 = 1009;

/// What the reader is in the middle of.
#[derive(Debug, Clone, Copy)]
enum Incoming {
    /// Between frames.
    Header,
    /// In a data frame's payload: `left` bytes to go, `keep` for binary
    /// (text is skipped), `offset` into the masking key's cycle.
    Payload {
        left: u64,
        keep: bool,
        mask: Option<[u8; 4]>,
        offset: usize,
    },
}

/// `AsyncRead + AsyncWrite` over an upgraded WebSocket connection.
///
/// - The bytes written go out as binary frames; the bytes read are the
///   payloads of the binary frames that arrive, in order, however the
///   peer fragments its messages. Text frames are skipped, pings answered,
///   pongs ignored. A Close frame, or the connection's end between frames,
///   is end of file.
/// - Payloads are streamed, never held whole: a read at least
///   [`READ_AHEAD_BYTES`] long goes from the socket into the caller's
///   buffer (unmasked in place); shorter ones through a small read-ahead
///   buffer, released whenever the connection goes quiet. Frames longer
///   than [`MAX_WS_MESSAGE_BYTES`] are refused (close code 1009).
/// - Writes are framed into one buffer and sent on flush (or once
///   64 KiB wait), so a multiplexer's header and body leave in one system
///   call; a drained buffer larger than 4 KiB is let go. A server's write
///   of 16 KiB or more (and a connection that takes vectored writes) goes
///   from the caller's buffer in one vectored write, behind what is
///   queued: only what the connection does not take is copied.
/// - Reading may write (a Pong, the answering Close): both directions must
///   be polled from one task, as a multiplexer's driver does; do not split
///   the stream between tasks.
/// - Breaking RFC 6455 (reserved bits, unknown opcodes, a server's frame
///   masked or a client's not, a continuation with no message) ends the
///   stream with an `InvalidData` error and a Close with code 1002.
///
/// ```
/// use rtunnel_core::ws::{Role, WsStream};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// // Two ends of an upgraded connection (a TCP or TLS stream in real use).
/// let (a, b) = tokio::io::duplex(64 * 1024);
/// let mut client = WsStream::new(a, Role::Client, &[]);
/// let mut server = WsStream::new(b, Role::Server, &[]);
/// client.write_all(b"hello").await?;
/// client.flush().await?;
/// let mut got = [0u8; 5];
/// server.read_exact(&mut got).await?;
/// assert_eq!(&got, b"hello");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct WsStream<IO> {
    io: IO,
    role: Role,
    ahead: Vec<u8>,
    ahead_start: usize,
    ahead_end: usize,
    incoming: Incoming,
    /// In a fragmented message: whether its bytes are kept (binary).
    message: Option<bool>,
    read_eof: bool,
    /// Set when reading failed: later reads fail the same way.
    failed: Option<io::ErrorKind>,
    /// The payload of the last Ping not answered yet: one slot, so a peer
    /// that pings and never reads cannot make answers pile up.
    pong: Option<Vec<u8>>,
    out: Vec<u8>,
    out_pos: usize,
    close: CloseHandle,
    close_sent: bool,
}

impl<IO> WsStream<IO> {
    /// A stream over `io`, whose upgrade handshake is done; `leftover` is
    /// what was read past the handshake (frames the peer sent at once).
    pub fn new(io: IO, role: Role, leftover: &[u8]) -> Self {
        let mut ahead = Vec::new();
        if !leftover.is_empty() {
            ahead = vec![0; leftover.len().max(READ_AHEAD_BYTES)];
            ahead[..leftover.len()].copy_from_slice(leftover);
        }
        WsStream {
            io,
            role,
            ahead,
            ahead_start: 0,
            ahead_end: leftover.len(),
            incoming: Incoming::Header,
            message: None,
            read_eof: false,
            failed: None,
            pong: None,
            out: Vec::new(),
            out_pos: 0,
            close: CloseHandle::default(),
            close_sent: false,
        }
    }

    /// The handle to this stream's close codes.
    pub fn close_handle(&self) -> CloseHandle {
        self.close.clone()
    }

    /// The connection underneath.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Bytes of buffer memory the stream holds (read-ahead and writes).
    pub fn buffered_capacity(&self) -> usize {
        self.ahead.capacity() + self.out.capacity()
    }

    /// Queues one frame.
    fn queue_frame(&mut self, opcode: Opcode, payload: &[u8]) {
        let mask = match self.role {
            Role::Client => Some(rand::random::<[u8; 4]>()),
            Role::Server => None,
        };
        FrameHeader {
            fin: true,
            opcode,
            mask,
            len: payload.len() as u64,
        }
        .encode_into(&mut self.out);
        match mask {
            Some(key) => extend_masked(&mut self.out, payload, key),
            None => self.out.extend_from_slice(payload),
        }
    }

    /// Queues the Close frame (`code` and `reason`, or none), once.
    fn queue_close(&mut self, code: Option<(u16, &str)>) {
        if self.close_sent {
            return;
        }
        let mut payload = Vec::new();
        if let Some((code, reason)) = code {
            payload.extend_from_slice(&code.to_be_bytes());
            payload.extend_from_slice(reason.as_bytes());
        }
        self.queue_frame(Opcode::Close, &payload);
        self.close_sent = true;
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> WsStream<IO> {
    /// Writes the queued frames out; the buffer is let go once drained if
    /// it grew past [`KEEP_WRITE_BUFFER_BYTES`].
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        if self.out.capacity() > KEEP_WRITE_BUFFER_BYTES {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes one binary frame of `payload` (masked already with `mask`,
    /// on a client's) and what is queued before it in one vectored write.
    /// Nothing of the frame is taken until the connection takes its first
    /// byte, and what it does not take then is queued; with `take_anyway`
    /// (a masked payload, which cannot be given back as it was) a
    /// connection that takes nothing now gets the whole frame queued.
    fn poll_write_direct(
        &mut self,
        cx: &mut Context<'_>,
        payload: &[u8],
        mask: Option<[u8; 4]>,
        take_anyway: bool,
    ) -> Poll<io::Result<usize>> {
        let mut head = Vec::with_capacity(14);
        FrameHeader {
            fin: true,
            opcode: Opcode::Binary,
            mask,
            len: payload.len() as u64,
        }
        .encode_into(&mut head);
        loop {
            let queued = self.out.len() - self.out_pos;
            let bufs = [
                io::IoSlice::new(&self.out[self.out_pos..]),
                io::IoSlice::new(&head),
                io::IoSlice::new(payload),
            ];
            let n = match Pin::new(&mut self.io).poll_write_vectored(cx, &bufs) {
                Poll::Pending if take_anyway => {
                    self.out.extend_from_slice(&head);
                    self.out.extend_from_slice(payload);
                    return Poll::Ready(Ok(payload.len()));
                }
                polled => ready!(polled)?,
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n <= queued {
                // Only what was queued went (or all of it, and the frame
                // not begun): try again, or wait for room.
                self.out_pos += n;
                continue;
            }
            self.out.clear();
            self.out_pos = 0;
            if self.out.capacity() > KEEP_WRITE_BUFFER_BYTES {
                self.out = Vec::new();
            }
            let taken = n - queued;
            if taken < head.len() {
                self.out.extend_from_slice(&head[taken..]);
                self.out.extend_from_slice(payload);
            } else {
                self.out.extend_from_slice(&payload[taken - head.len()..]);
            }
            return Poll::Ready(Ok(payload.len()));
        }
    }

    /// Writes what can go without waiting: replies queued while reading.
    fn write_out_eagerly(&mut self, cx: &mut Context<'_>) {
        if let Poll::Ready(Ok(())) = self.poll_write_out(cx) {
            let _ = Pin::new(&mut self.io).poll_flush(cx);
        }
    }

    /// Answers the last Ping, once per read and only while the write
    /// buffer has room (else the answer waits in its slot).
    fn answer_ping(&mut self, cx: &mut Context<'_>) {
        if self.pong.is_none() || self.out.len() - self.out_pos >= WRITE_HIGH_WATER {
            return;
        }
        if let Some(payload) = self.pong.take() {
            if !self.close_sent {
                self.queue_frame(Opcode::Pong, &payload);
            }
            self.write_out_eagerly(cx);
        }
    }

    /// Reads more into the read-ahead buffer: the bytes read, 0 at the
    /// connection's end. Lets the buffer go when the connection is quiet
    /// and nothing is buffered.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.ahead.is_empty() {
            self.ahead = vec![0; READ_AHEAD_BYTES];
        }
        if self.ahead_start == self.ahead_end {
            self.ahead_start = 0;
            self.ahead_end = 0;
        } else if self.ahead_end == self.ahead.len() {
            self.ahead.copy_within(self.ahead_start..self.ahead_end, 0);
            self.ahead_end -= self.ahead_start;
            self.ahead_start = 0;
        }
        let mut buf = ReadBuf::new(&mut self.ahead[self.ahead_end..]);
        match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Pending => {
                if self.ahead_start == self.ahead_end {
                    self.ahead = Vec::new();
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len();
                self.ahead_end += n;
                Poll::Ready(Ok(n))
            }
        }
    }

    /// Ends reading with a protocol error, telling the peer why.
    fn fail(&mut self, cx: &mut Context<'_>, code: u16, why: String) -> Poll<io::Result<()>> {
        self.read_eof = true;
        let reason = if code == CLOSE_TOO_BIG {
            "frame too large"
        } else {
            "protocol error"
        };
        self.queue_close(Some((code, reason)));
        self.write_out_eagerly(cx);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("WebSocket protocol error: {why}"),
        )))
    }

    /// Acts on a control frame's payload.
    fn control(&mut self, cx: &mut Context<'_>, opcode: Opcode, payload: &[u8]) {
        match opcode {
            Opcode::Ping => self.pong = Some(payload.to_vec()),
            Opcode::Close => {
                self.read_eof = true;
                let code = match payload {
                    [] => Ok(None),
                    [a, b, ..] if valid_close_code(u16::from_be_bytes([*a, *b])) => {
                        Ok(Some(u16::from_be_bytes([*a, *b])))
                    }
                    _ => Err(()),
                };
                match code {
                    Ok(code) => {
                        self.close.lock().received = code;
                        // Answered with the same code, as RFC 6455 asks.
                        self.queue_close(code.map(|c| (c, "")));
                    }
                    Err(()) => self.queue_close(Some((CLOSE_PROTOCOL_ERROR, "bad close code"))),
                }
                self.write_out_eagerly(cx);
            }
            _ => {}
        }
    }

    /// Reads the next frame header (acting on control frames whole).
    fn poll_header(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let buffered = &self.ahead[self.ahead_start..self.ahead_end];
            let parsed = match FrameHeader::parse(buffered) {
                Ok(parsed) => parsed,
                Err(e) => return self.fail(cx, CLOSE_PROTOCOL_ERROR, e.to_string()),
            };
            let Some((header, used)) = parsed else {
                if ready!(self.poll_fill(cx))? == 0 {
                    return self.end_of_connection();
                }
                continue;
            };
            match (self.role, header.mask) {
                (Role::Server, None) => {
                    return self.fail(
                        cx,
                        CLOSE_PROTOCOL_ERROR,
                        "unmasked frame from a client".into(),
                    );
                }
                (Role::Client, Some(_)) => {
                    return self.fail(
                        cx,
                        CLOSE_PROTOCOL_ERROR,
                        "masked frame from a server".into(),
                    );
                }
                _ => {}
            }
            if header.opcode.is_control() {
                let len = header.len as usize;
                if buffered.len() < used + len {
                    if ready!(self.poll_fill(cx))? == 0 {
                        return self.end_of_connection();
                    }
                    continue;
                }
                let mut payload = [0u8; MAX_CONTROL_PAYLOAD_BYTES];
                let payload = &mut payload[..len];
                payload.copy_from_slice(&buffered[used..used + len]);
                if let Some(key) = header.mask {
                    apply_mask(payload, key, 0);
                }
                self.ahead_start += used + len;
                self.control(cx, header.opcode, payload);
                if self.read_eof {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let keep = match (header.opcode, self.message) {
                (Opcode::Continuation, Some(keep)) => keep,
                (Opcode::Continuation, None) => {
                    return self.fail(
                        cx,
                        CLOSE_PROTOCOL_ERROR,
                        "continuation outside a message".into(),
                    );
                }
                (_, Some(_)) => {
                    return self.fail(
                        cx,
                        CLOSE_PROTOCOL_ERROR,
                        "new message inside a fragmented one".into(),
                    );
                }
                (opcode, None) => opcode == Opcode::Binary,
            };
            if header.len > MAX_WS_MESSAGE_BYTES as u64 {
                return self.fail(cx, CLOSE_TOO_BIG, format!("frame of {} bytes", header.len));
            }
            self.message = (!header.fin).then_some(keep);
            self.ahead_start += used;
            self.incoming = Incoming::Payload {
                left: header.len,
                keep,
                mask: header.mask,
                offset: 0,
            };
            return Poll::Ready(Ok(()));
        }
    }

    /// The connection ended while reading a header: end of file between
    /// frames, an error inside one.
    fn end_of_connection(&mut self) -> Poll<io::Result<()>> {
        self.read_eof = true;
        if self.ahead_start == self.ahead_end && self.message.is_none() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(truncated()))
        }
    }
}

/// A close code a peer may send (RFC 6455, section 7.4).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the WebSocket connection ended inside a frame",
    )
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = this.poll_read_payload(cx, buf);
        this.answer_ping(cx);
        if let Poll::Ready(Err(e)) = &read {
            this.failed.get_or_insert(e.kind());
        }
        read
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> WsStream<IO> {
    /// What [`AsyncRead::poll_read`] does, but answering Pings.
    fn poll_read_payload(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self;
        if let Some(kind) = this.failed {
            return Poll::Ready(Err(io::Error::new(kind, "the WebSocket failed earlier")));
        }
        loop {
            if this.read_eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let Incoming::Payload {
                left,
                keep,
                mask,
                offset,
            } = this.incoming
            else {
                ready!(this.poll_header(cx))?;
                continue;
            };
            if left == 0 {
                this.incoming = Incoming::Header;
                continue;
            }
            let left_now = usize::try_from(left).unwrap_or(usize::MAX);
            let buffered = this.ahead_end - this.ahead_start;
            let n = if buffered > 0 {
                let n = buffered.min(left_now);
                let n = if keep { n.min(buf.remaining()) } else { n };
                if keep {
                    let start = buf.filled().len();
                    buf.put_slice(&this.ahead[this.ahead_start..this.ahead_start + n]);
                    if let Some(key) = mask {
                        apply_mask(&mut buf.filled_mut()[start..], key, offset);
                    }
                }
                this.ahead_start += n;
                n
            } else if keep && buf.remaining() >= READ_AHEAD_BYTES {
                // Straight from the socket into the caller's buffer, which
                // is not zeroed first (a multiplexer's is uninitialized).
                let want = left_now.min(buf.remaining());
                let mut direct = buf.take(want);
                let start = direct.filled().as_ptr();
                ready!(Pin::new(&mut this.io).poll_read(cx, &mut direct))?;
                // The reader must have filled this buffer, not swapped in
                // another (safe code could): else nothing wrote `buf`.
                assert_eq!(
                    start,
                    direct.filled().as_ptr(),
                    "the reader swapped its buffer"
                );
                let n = direct.filled().len();
                if n == 0 {
                    this.read_eof = true;
                    return Poll::Ready(Err(truncated()));
                }
                if let Some(key) = mask {
                    apply_mask(direct.filled_mut(), key, offset);
                }
                // SAFETY: `direct` is the first `want` bytes of `buf`'s
                // unfilled part, and its first `n` bytes are filled, which a
                // `ReadBuf` guarantees are initialized.
                #[allow(unsafe_code)]
                unsafe {
                    buf.assume_init(n);
                }
                buf.advance(n);
                n
            } else {
                if ready!(this.poll_fill(cx))? == 0 {
                    this.read_eof = true;
                    return Poll::Ready(Err(truncated()));
                }
                continue;
            };
            this.incoming = Incoming::Payload {
                left: left - n as u64,
                keep,
                mask,
                offset: offset + n,
            };
            if keep {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> WriteInPlace for WsStream<IO> {
    /// A client's large write is masked in the caller's buffer and written
    /// from there, with what is queued and the frame's header, in one
    /// vectored write: no copy of the payload. What the connection does
    /// not take is queued (masked) and counted as written. Any other write
    /// is [`poll_write`](AsyncWrite::poll_write)'s.
    fn poll_write_in_place(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.role == Role::Server
            || buf.len() < DIRECT_WRITE_MIN_BYTES
            || !this.io.is_write_vectored()
            || this.close.is_set()
            || this.close_sent
        {
            return Pin::new(this).poll_write(cx, buf);
        }
        if this.out.len() - this.out_pos >= WRITE_HIGH_WATER {
            ready!(this.poll_write_out(cx))?;
        }
        let n = buf.len().min(MAX_WRITE_BUFFER_BYTES);
        let key = rand::random::<[u8; 4]>();
        apply_mask(&mut buf[..n], key, 0);
        let written = this.poll_write_direct(cx, &buf[..n], Some(key), true);
        if matches!(written, Poll::Ready(Err(_))) {
            // Not taken: the caller's bytes as they were.
            apply_mask(&mut buf[..n], key, 0);
        }
        written
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close.is_set() && !this.close_sent {
            let code = this.close.lock().to_send.clone();
            this.queue_close(code.as_ref().map(|(c, r)| (*c, r.as_str())));
        }
        if this.close_sent {
            ready!(this.poll_write_out(cx))?;
            ready!(Pin::new(&mut this.io).poll_flush(cx))?;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the WebSocket is closed",
            )));
        }
        if this.out.len() - this.out_pos >= WRITE_HIGH_WATER {
            ready!(this.poll_write_out(cx))?;
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(MAX_WRITE_BUFFER_BYTES);
        if this.role == Role::Server && n >= DIRECT_WRITE_MIN_BYTES && this.io.is_write_vectored() {
            return this.poll_write_direct(cx, &buf[..n], None, false);
        }
        this.queue_frame(Opcode::Binary, &buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let code = this.close.lock().to_send.clone();
        this.queue_close(code.as_ref().map(|(c, r)| (*c, r.as_str())));
        ready!(this.poll_write_out(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
