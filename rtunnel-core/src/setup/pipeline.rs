//! Streams that carry data before their reply (0-RTT).
//!
//! The acceptor of a stream reads exactly its header and nothing behind it
//! until it has answered, so an opener may send its payload right behind
//! the header instead of waiting a round trip for `ok`: the acceptor holds
//! those bytes unread (within the stream's window) and they flow on only
//! once it has said `ok`; after a refusal they are dropped with the
//! stream. Three pieces use that:
//!
//! - [`ReplyReader`] reads the reply without holding the stream across an
//!   await, so the same task can write the stream while it waits;
//! - [`request_early`] is the opener at the edge (`rtunnel-agent
//!   forward`): what its client sends before the reply goes on the stream
//!   at once, at most a limit ahead of it;
//! - [`PassReply`] is a node in the middle: it forwards the far end's reply
//!   (mapped to its own codes) to the opener before it, then the data, so
//!   no hop waits for the one behind it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::{MAX_PENDING, SetupError};
use crate::frame::FrameError;
use crate::proto::{
    self, FRAME_PREFIX_BYTES, MAX_STREAM_HEADER_BYTES, Refusal, StreamHeader, StreamReply,
};
use crate::relay::{ReadChunk, WriteInPlace};

/// What [`ReplyReader::poll_reply`] read.
#[derive(Debug)]
pub enum ReplyEvent {
    /// The final answer: `ok`, or why not.
    Final(Result<(), SetupError>),
    /// A `pending` answer: the deadline moved; the final one follows.
    Pending(StreamReply),
}

/// Reads a stream's reply frame by frame, polled, with the opener's
/// deadline (moved by `pending` answers as far as they say, at most
/// [`MAX_PENDING`] past the start).
#[derive(Debug)]
pub struct ReplyReader {
    prefix: [u8; FRAME_PREFIX_BYTES],
    prefix_got: usize,
    body: Vec<u8>,
    body_got: usize,
    timeout: Duration,
    started: Instant,
    deadline: Pin<Box<Sleep>>,
}

impl ReplyReader {
    /// A reader whose deadline is `timeout` from now.
    pub fn new(timeout: Duration) -> Self {
        let started = Instant::now();
        ReplyReader {
            prefix: [0; FRAME_PREFIX_BYTES],
            prefix_got: 0,
            body: Vec::new(),
            body_got: 0,
            timeout,
            started,
            deadline: Box::pin(tokio::time::sleep_until(started + timeout)),
        }
    }

    /// Reads on from `io` towards the next reply frame.
    pub fn poll_reply<S>(&mut self, cx: &mut Context<'_>, io: &mut S) -> Poll<ReplyEvent>
    where
        S: AsyncRead + Unpin + ?Sized,
    {
        match self.poll_frame(cx, io) {
            Poll::Ready(Ok(StreamReply::Ok)) => Poll::Ready(ReplyEvent::Final(Ok(()))),
            Poll::Ready(Ok(StreamReply::Refused(refusal))) => Poll::Ready(ReplyEvent::Final(Err(
                SetupError::Refused(refusal.from_peer()),
            ))),
            Poll::Ready(Ok(StreamReply::Pending { reason, wait_ms })) => {
                let wait = Duration::from_millis(wait_ms).min(MAX_PENDING);
                let latest = self.started + MAX_PENDING + self.timeout;
                let deadline = (Instant::now() + wait + self.timeout).min(latest);
                self.deadline.as_mut().reset(deadline);
                // Cleaned as a refusal's reason is: it may be shown.
                let reason = Refusal::new(crate::proto::RefusalCode::Other, reason)
                    .from_peer()
                    .reason;
                Poll::Ready(ReplyEvent::Pending(StreamReply::Pending {
                    reason,
                    wait_ms,
                }))
            }
            Poll::Ready(Err(e)) => Poll::Ready(ReplyEvent::Final(Err(SetupError::Failed(e)))),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(ReplyEvent::Final(Err(SetupError::Timeout(
                    self.started.elapsed(),
                )))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    /// Polls until the final answer, skipping `pending` ones.
    pub fn poll_final<S>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
    ) -> Poll<Result<(), SetupError>>
    where
        S: AsyncRead + Unpin + ?Sized,
    {
        loop {
            match ready!(self.poll_reply(cx, io)) {
                ReplyEvent::Final(result) => return Poll::Ready(result),
                ReplyEvent::Pending(_) => continue,
            }
        }
    }

    /// One reply frame: the prefix, checked against the limit before the
    /// body is allocated, then the body.
    fn poll_frame<S>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
    ) -> Poll<Result<StreamReply, FrameError>>
    where
        S: AsyncRead + Unpin + ?Sized,
    {
        while self.prefix_got < FRAME_PREFIX_BYTES {
            let mut buf = ReadBuf::new(&mut self.prefix[self.prefix_got..]);
            ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                return Poll::Ready(Err(if self.prefix_got == 0 {
                    FrameError::Closed
                } else {
                    io::Error::from(io::ErrorKind::UnexpectedEof).into()
                }));
            }
            self.prefix_got += n;
            if self.prefix_got == FRAME_PREFIX_BYTES {
                let len = proto::body_len(&self.prefix, MAX_STREAM_HEADER_BYTES)?.unwrap_or(0);
                self.body = vec![0; len];
                self.body_got = 0;
            }
        }
        while self.body_got < self.body.len() {
            let mut buf = ReadBuf::new(&mut self.body[self.body_got..]);
            ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()));
            }
            self.body_got += n;
        }
        self.prefix_got = 0;
        let body = std::mem::take(&mut self.body);
        Poll::Ready(Ok(proto::decode_body(&body)?))
    }
}

/// What an opener takes from its client before the stream's reply: sent
/// behind the header at once (see [`request_early`]).
#[derive(Debug)]
pub struct EarlyData {
    /// Taken from the client and not yet written to the stream.
    unsent: Vec<u8>,
    limit: usize,
    client_done: bool,
    client_error: Option<io::Error>,
    taken: u64,
}

impl EarlyData {
    /// Takes at most `limit` bytes from the client ahead of the reply; past
    /// that the client waits for it.
    pub fn new(limit: usize) -> Self {
        EarlyData {
            unsent: Vec::new(),
            limit,
            client_done: false,
            client_error: None,
            taken: 0,
        }
    }

    /// Every byte taken from the client, including those already sent
    /// on an open stream.
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// The client's read error, if reading it failed while the reply was
    /// awaited: the connection is to be aborted, not ended cleanly.
    pub fn client_error(&mut self) -> Option<io::Error> {
        self.client_error.take()
    }

    /// Whether any byte went out on a stream. Then the stream must not be
    /// opened again after a failure: those bytes may have reached the
    /// service, and sending them twice could repeat a request.
    pub fn sent(&self) -> bool {
        self.taken > self.unsent.len() as u64
    }
}

/// How many bytes [`EarlyData`] takes ahead of the reply by default: a
/// protocol's opening (a TLS or SSH hello, a request) and more.
pub const EARLY_DATA_BYTES: usize = 64 * 1024;

/// Opener, without the round trip: sends `header` on `stream` and, while
/// it waits (as [`request`](super::request) does) for the reply, copies
/// what `client` sends onto the stream behind it, at most `early`'s limit.
///
/// On `Ok` every byte taken from the client is on the stream, and the
/// caller relays the rest. On [`SetupError::Failed`] (the stream's
/// connection died) a second call with a new stream may be made only if
/// [`EarlyData::sent`] is false; it sends what was taken but never written
/// behind the new header. A client that ends is read no further here (the
/// relay that follows sees its end again); one that fails leaves its error
/// in [`EarlyData::client_error`].
pub async fn request_early<S, C>(
    stream: &mut S,
    header: &StreamHeader,
    timeout: Duration,
    client: &mut C,
    early: &mut EarlyData,
) -> Result<(), SetupError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
    C: AsyncRead + Unpin + ?Sized,
{
    let mut first = proto::encode(header);
    first.extend_from_slice(&early.unsent);
    let deadline = Instant::now() + timeout;
    match tokio::time::timeout_at(deadline, async {
        stream.write_all(&first).await?;
        stream.flush().await
    })
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(SetupError::Failed(e.into())),
        Err(_) => return Err(SetupError::Timeout(timeout)),
    }
    early.unsent.clear();
    let mut unflushed = false;
    let mut reply = ReplyReader::new(timeout);
    // Small: what comes ahead of the reply is mostly a protocol's hello.
    let mut chunk = [0u8; 4096];
    let result = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = reply.poll_final(cx, &mut *stream) {
            return Poll::Ready(result);
        }
        loop {
            if !early.unsent.is_empty() {
                match Pin::new(&mut *stream).poll_write(cx, &early.unsent) {
                    Poll::Ready(Ok(0)) => {
                        let e = io::Error::from(io::ErrorKind::WriteZero);
                        return Poll::Ready(Err(SetupError::Failed(e.into())));
                    }
                    Poll::Ready(Ok(n)) => {
                        early.unsent.drain(..n);
                        unflushed = true;
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(SetupError::Failed(e.into()))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            let ahead = usize::try_from(early.taken).unwrap_or(usize::MAX);
            let room = early.limit.saturating_sub(ahead).min(chunk.len());
            let read = if early.client_done || room == 0 {
                Poll::Pending
            } else {
                let mut buf = ReadBuf::new(&mut chunk[..room]);
                match Pin::new(&mut *client).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) => Poll::Ready(buf.filled().len()),
                    Poll::Ready(Err(e)) => {
                        early.client_error = Some(e);
                        Poll::Ready(0)
                    }
                    Poll::Pending => Poll::Pending,
                }
            };
            match read {
                Poll::Ready(0) => early.client_done = true,
                Poll::Ready(n) => {
                    early.unsent.extend_from_slice(&chunk[..n]);
                    early.taken += n as u64;
                }
                Poll::Pending => {
                    if unflushed {
                        match Pin::new(&mut *stream).poll_flush(cx) {
                            Poll::Ready(Ok(())) => unflushed = false,
                            Poll::Ready(Err(e)) => {
                                return Poll::Ready(Err(SetupError::Failed(e.into())));
                            }
                            Poll::Pending => {}
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    })
    .await;
    result?;
    // Taken but not yet written (the stream's window was full): now.
    if !early.unsent.is_empty() {
        stream
            .write_all(&early.unsent)
            .await
            .map_err(|e| SetupError::Failed(e.into()))?;
    }
    stream
        .flush()
        .await
        .map_err(|e| SetupError::Failed(e.into()))?;
    early.unsent = Vec::new();
    Ok(())
}

/// Maps the far end's failed setup to the refusal this node gives.
pub type RefusalMap = Box<dyn FnMut(SetupError) -> Refusal + Send>;

/// Called once with the far end's final answer, as mapped.
pub type OnReply = Box<dyn FnOnce(&Result<(), Refusal>) + Send>;

/// A stream whose header went on to the far end and whose reply is still
/// to come, seen from a node in the middle: reads give the reply first,
/// re-encoded as a frame for the opener before this node (a refusal mapped
/// by the [`RefusalMap`], `pending` passed on as it is), then the far end's
/// data; writes go on to the far end at once (the far end holds them
/// until it answers). After a refusal, reads end, and writes fail once the
/// refusal has been read (so a relay ends without waiting for the
/// opener). A write that fails before the answer waits for it, so the
/// opener always gets one.
pub struct PassReply<S> {
    io: S,
    reply: Option<ReplyReader>,
    map: RefusalMap,
    on_reply: Option<OnReply>,
    out: Vec<u8>,
    out_pos: usize,
    answer_bytes: u64,
    outcome: Option<Result<(), Refusal>>,
    /// A write failed before the answer was read: the answer (a failure)
    /// is still read and passed on, and no more is written.
    write_failed: bool,
}

impl<S> std::fmt::Debug for PassReply<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassReply")
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl<S> PassReply<S> {
    /// `io` with its header sent; its reply is awaited for `timeout` (and
    /// what `pending` answers add).
    pub fn new(io: S, timeout: Duration, map: RefusalMap) -> Self {
        PassReply {
            io,
            reply: Some(ReplyReader::new(timeout)),
            map,
            on_reply: None,
            out: Vec::new(),
            out_pos: 0,
            answer_bytes: 0,
            outcome: None,
            write_failed: false,
        }
    }

    /// Calls `f` with the final answer as soon as it is read.
    pub fn on_reply(mut self, f: OnReply) -> Self {
        self.on_reply = Some(f);
        self
    }

    /// How many of the bytes read were answers (`pending` and the final
    /// one) rather than the far end's data.
    pub fn answer_bytes(&self) -> u64 {
        self.answer_bytes
    }

    /// The stream itself, for reading on past the answer.
    pub fn into_inner(self) -> S {
        self.io
    }

    /// The far end's final answer, once read.
    pub fn outcome(&self) -> Option<&Result<(), Refusal>> {
        self.outcome.as_ref()
    }

    fn refused(&self) -> bool {
        matches!(self.outcome, Some(Err(_)))
    }

    /// What a write meets before the answer is read, or after a refusal:
    /// `None` when it goes on to the far end. A write that failed before
    /// the answer does not end the relay: the answer (the far end's
    /// failure, mapped) must reach the opener first. After a refusal,
    /// writes are dropped while the refusal is being passed on, and fail
    /// once it has been, which ends the relay.
    fn write_outcome(&self, len: usize) -> Option<io::Result<usize>> {
        if self.refused() {
            if self.out_pos < self.out.len() {
                return Some(Ok(len));
            }
            return Some(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the stream was refused",
            )));
        }
        if self.write_failed && self.outcome.is_none() {
            return Some(Ok(len));
        }
        None
    }

    /// A write error before the answer is kept back (see
    /// [`write_outcome`](Self::write_outcome)).
    fn on_write_error<T>(&mut self, result: Poll<io::Result<T>>, ok: T) -> Poll<io::Result<T>> {
        match result {
            Poll::Ready(Err(_)) if self.outcome.is_none() => {
                self.write_failed = true;
                Poll::Ready(Ok(ok))
            }
            other => other,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PassReply<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                this.answer_bytes += n as u64;
                return Poll::Ready(Ok(()));
            }
            let Some(reader) = this.reply.as_mut() else {
                if this.refused() {
                    return Poll::Ready(Ok(()));
                }
                return Pin::new(&mut this.io).poll_read(cx, buf);
            };
            let frame = match ready!(reader.poll_reply(cx, &mut this.io)) {
                ReplyEvent::Pending(pending) => proto::encode(&pending),
                ReplyEvent::Final(result) => {
                    this.reply = None;
                    let result = result.map_err(&mut this.map);
                    if let Some(f) = this.on_reply.take() {
                        f(&result);
                    }
                    let frame = match &result {
                        Ok(()) => proto::encode(&StreamReply::Ok),
                        Err(refusal) => proto::encode(&StreamReply::Refused(refusal.clone())),
                    };
                    this.outcome = Some(result);
                    frame
                }
            };
            this.out = frame;
            this.out_pos = 0;
        }
    }
}

impl<S: ReadChunk> ReadChunk for PassReply<S> {
    /// The stream's own chunks once the answer has been passed on.
    fn poll_read_chunk(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<Bytes>>> {
        if self.out_pos < self.out.len() || self.reply.is_some() || self.refused() {
            return None;
        }
        self.io.poll_read_chunk(cx)
    }
}

impl<S: WriteInPlace + Unpin> WriteInPlace for PassReply<S> {
    fn poll_write_in_place(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(result) = this.write_outcome(buf.len()) {
            return Poll::Ready(result);
        }
        let written = Pin::new(&mut this.io).poll_write_in_place(cx, buf);
        this.on_write_error(written, buf.len())
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PassReply<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(result) = this.write_outcome(buf.len()) {
            return Poll::Ready(result);
        }
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.on_write_error(written, buf.len())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(result) = this.write_outcome(0) {
            return Poll::Ready(result.map(drop));
        }
        let flushed = Pin::new(&mut this.io).poll_flush(cx);
        this.on_write_error(flushed, ())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(result) = this.write_outcome(0) {
            return Poll::Ready(result.map(drop));
        }
        let shut = Pin::new(&mut this.io).poll_shutdown(cx);
        this.on_write_error(shut, ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{read_frame, write_frame};
    use crate::proto::{RefusalCode, StreamKind};
    use crate::setup::accept_header;
    use tokio::io::{AsyncReadExt, duplex};

    const SECOND: Duration = Duration::from_secs(5);

    fn header() -> StreamHeader {
        StreamHeader::new("redis".to_owned(), StreamKind::Tcp)
    }

    /// An acceptor that wants to see the payload before it answers: only a
    /// pipelined opener gets an answer from it.
    #[tokio::test]
    async fn the_payload_reaches_the_acceptor_before_its_answer() {
        let (mut opener, mut acceptor) = duplex(64 * 1024);
        let far = tokio::spawn(async move {
            accept_header(&mut acceptor, SECOND).await.unwrap();
            let mut ping = [0u8; 4];
            acceptor.read_exact(&mut ping).await.unwrap();
            write_frame(&mut acceptor, &StreamReply::Ok).await.unwrap();
            acceptor.write_all(b"PONG").await.unwrap();
            ping
        });
        let (mut client, mut user) = duplex(1024);
        user.write_all(b"PING").await.unwrap();
        let mut early = EarlyData::new(EARLY_DATA_BYTES);
        request_early(&mut opener, &header(), SECOND, &mut client, &mut early)
            .await
            .unwrap();
        assert_eq!(&far.await.unwrap(), b"PING");
        let mut pong = [0u8; 4];
        opener.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"PONG");
        assert_eq!(early.taken(), 4);
        assert!(early.sent());
    }

    /// A stream whose connection dies before the reply says whether any of
    /// the client's bytes went out: if none did, a second stream opens as
    /// the first would have; if some did, the caller must not try again.
    #[tokio::test]
    async fn a_failed_stream_says_whether_client_bytes_went_out() {
        let (mut client, mut user) = duplex(1024);
        let mut early = EarlyData::new(EARLY_DATA_BYTES);
        let (mut opener, mut acceptor) = duplex(64 * 1024);
        // The connection dies right after the header, before the client
        // said anything.
        let far = tokio::spawn(async move {
            accept_header(&mut acceptor, SECOND).await.unwrap();
        });
        let err = request_early(&mut opener, &header(), SECOND, &mut client, &mut early)
            .await
            .unwrap_err();
        assert!(matches!(err, SetupError::Failed(_)), "{err}");
        far.await.unwrap();
        assert!(!early.sent());

        user.write_all(b"hello").await.unwrap();
        let (mut opener, mut acceptor) = duplex(64 * 1024);
        let far = tokio::spawn(async move {
            accept_header(&mut acceptor, SECOND).await.unwrap();
            let mut got = [0u8; 5];
            acceptor.read_exact(&mut got).await.unwrap();
            // And this one dies after the bytes arrived.
            got
        });
        let err = request_early(&mut opener, &header(), SECOND, &mut client, &mut early)
            .await
            .unwrap_err();
        assert!(matches!(err, SetupError::Failed(_)), "{err}");
        assert_eq!(&far.await.unwrap(), b"hello");
        assert!(early.sent(), "bytes that went out are not to be sent again");
    }

    /// Past its limit the opener takes nothing more from the client until
    /// the reply; then the rest flows.
    #[tokio::test]
    async fn no_more_than_the_limit_goes_ahead_of_the_reply() {
        let (mut client, mut user) = duplex(1024);
        user.write_all(b"0123456789abcdefghij").await.unwrap();
        let (mut opener, mut acceptor) = duplex(64 * 1024);
        let far = tokio::spawn(async move {
            accept_header(&mut acceptor, SECOND).await.unwrap();
            let mut ahead = [0u8; 8];
            acceptor.read_exact(&mut ahead).await.unwrap();
            let mut more = [0u8; 1];
            let waited =
                tokio::time::timeout(Duration::from_millis(200), acceptor.read(&mut more)).await;
            assert!(waited.is_err(), "more than the limit went ahead");
            write_frame(&mut acceptor, &StreamReply::Ok).await.unwrap();
            (ahead, acceptor)
        });
        let mut early = EarlyData::new(8);
        request_early(&mut opener, &header(), SECOND, &mut client, &mut early)
            .await
            .unwrap();
        let (ahead, _acceptor) = far.await.unwrap();
        assert_eq!(&ahead, b"01234567");
    }

    fn map_to_unavailable() -> RefusalMap {
        Box::new(|e| match e {
            SetupError::Refused(r) => r,
            SetupError::Timeout(_) => Refusal::new(RefusalCode::AgentTimeout, "no answer"),
            SetupError::Failed(_) => Refusal::new(RefusalCode::AgentUnavailable, "gone"),
        })
    }

    /// A node in the middle passes `pending`, then `ok`, then the data on.
    #[tokio::test]
    async fn the_middle_passes_the_far_ends_answers_on() {
        let (mut near, mut far) = duplex(64 * 1024);
        tokio::spawn(async move {
            accept_header(&mut far, SECOND).await.unwrap();
            let mut early = [0u8; 4];
            far.read_exact(&mut early).await.unwrap();
            let pending = StreamReply::Pending {
                reason: "asking".into(),
                wait_ms: 1_000,
            };
            write_frame(&mut far, &pending).await.unwrap();
            write_frame(&mut far, &StreamReply::Ok).await.unwrap();
            far.write_all(&early).await.unwrap();
            far
        });
        crate::frame::write_frame(&mut near, &header())
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut middle =
            PassReply::new(near, SECOND, map_to_unavailable()).on_reply(Box::new(move |r| {
                let _ = tx.send(r.is_ok());
            }));
        middle.write_all(b"echo").await.unwrap();
        let first: StreamReply = read_frame(&mut middle, 1024).await.unwrap();
        assert!(matches!(first, StreamReply::Pending { wait_ms: 1_000, .. }));
        let second: StreamReply = read_frame(&mut middle, 1024).await.unwrap();
        assert_eq!(second, StreamReply::Ok);
        assert!(rx.await.unwrap());
        let mut back = [0u8; 4];
        middle.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"echo");
        assert_eq!(middle.outcome(), Some(&Ok(())));
    }

    /// A far end that does not answer in time is refused by the middle
    /// with its own code; the stream then ends and takes no more bytes.
    #[tokio::test(start_paused = true)]
    async fn silence_becomes_the_middles_refusal() {
        let (near, _far) = duplex(64 * 1024);
        let mut middle = PassReply::new(near, Duration::from_secs(2), map_to_unavailable());
        let answer: StreamReply = read_frame(&mut middle, 1024).await.unwrap();
        let StreamReply::Refused(refusal) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(refusal.code, RefusalCode::AgentTimeout);
        let mut rest = Vec::new();
        middle.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        // Refused and said so: a relay writing on ends here.
        let write = middle.write_all(b"more").await.unwrap_err();
        assert_eq!(write.kind(), io::ErrorKind::BrokenPipe);
        assert!(matches!(middle.outcome(), Some(Err(r)) if r.code == RefusalCode::AgentTimeout));
    }

    /// A far end that goes away while the opener's bytes are written to
    /// it: the write does not end the relay, the opener still gets the
    /// middle's refusal.
    #[tokio::test]
    async fn a_write_that_fails_before_the_answer_still_gets_one() {
        let (near, far) = duplex(64);
        drop(far);
        let mut middle = PassReply::new(near, SECOND, map_to_unavailable());
        middle.write_all(&[0u8; 1024]).await.unwrap();
        middle.flush().await.unwrap();
        let answer: StreamReply = read_frame(&mut middle, 1024).await.unwrap();
        let StreamReply::Refused(refusal) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(refusal.code, RefusalCode::AgentUnavailable);
    }

    /// A far end announcing a reply larger than a stream reply may be is
    /// cut off at the length prefix: nothing that size is allocated, and
    /// the opener gets the middle's refusal.
    #[tokio::test]
    async fn an_oversized_reply_is_refused_at_its_length() {
        let (near, mut far) = duplex(4096);
        far.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let mut middle = PassReply::new(near, SECOND, map_to_unavailable());
        let answer: StreamReply = read_frame(&mut middle, 1024).await.unwrap();
        assert!(
            matches!(answer, StreamReply::Refused(ref r) if r.code == RefusalCode::AgentUnavailable),
            "{answer:?}"
        );
        let mut reply = ReplyReader::new(SECOND);
        let (mut near, mut far) = duplex(4096);
        far.write_all(&((MAX_STREAM_HEADER_BYTES + 1) as u32).to_be_bytes())
            .await
            .unwrap();
        let event = std::future::poll_fn(|cx| reply.poll_reply(cx, &mut near)).await;
        assert!(
            matches!(
                event,
                ReplyEvent::Final(Err(SetupError::Failed(FrameError::Proto(_))))
            ),
            "{event:?}"
        );
    }

    /// What the far end says while the customer is asked is shown to
    /// people: it arrives cleaned of control characters.
    #[tokio::test]
    async fn pending_reasons_are_cleaned() {
        let (mut near, mut far) = duplex(4096);
        let pending = StreamReply::Pending {
            reason: "ask\x1b[2Jing\n".into(),
            wait_ms: 5,
        };
        write_frame(&mut far, &pending).await.unwrap();
        let mut reply = ReplyReader::new(SECOND);
        let event = std::future::poll_fn(|cx| reply.poll_reply(cx, &mut near)).await;
        let ReplyEvent::Pending(StreamReply::Pending { reason, .. }) = event else {
            panic!("{event:?}")
        };
        assert_eq!(reason, "ask [2Jing ");
    }
}
