//! A WebSocket message stream seen as a byte stream.
//!
//! [`WsStream`] turns any `Stream + Sink` of WebSocket messages (axum's on the
//! server, tokio-tungstenite's on the agent) into `AsyncRead + AsyncWrite`, so
//! yamux can run on top of it:
//!
//! - Binary messages carry the bytes. Ping, Pong and Text messages are
//!   skipped (tungstenite hands Pings to the reader; they are not errors).
//!   A Close message, or the end of the message stream, is end of file.
//! - Writes are buffered until `poll_flush`, so a yamux frame (whose header
//!   and body yamux writes separately) leaves as one WebSocket message. The
//!   buffer is bounded by [`MAX_WRITE_BUFFER_BYTES`].
//! - A message is let go as soon as its last byte is read, so the
//!   WebSocket reader can reuse its memory for the next one: a message's
//!   payload is a view of the reader's buffer, and while any view is alive
//!   the reader allocates (and the kernel faults in) a new buffer for every
//!   message. On a bulk transfer that was a fifth of every process's time.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes are sent as a message once this many bytes are buffered, even
/// before a flush: one full yamux data frame, header included, and room
/// for the small frames (window updates, pings) that may be queued before
/// it, so a full frame is not cut in two.
pub const MAX_WRITE_BUFFER_BYTES: usize = crate::mux::DEFAULT_SPLIT_SEND_BYTES + 4096;

/// The read buffer of a tunnel's WebSocket, either end: what an idle
/// connection holds. tungstenite's default (128 KiB) was most of what an
/// idle tunnel cost the server (171 KiB each at 1,000 agents; 53 KiB with
/// this, measured with `swarm`); a larger frame still grows the buffer to
/// fit it, so throughput is the same (iperf3 through `forward`, both
/// directions, within the noise).
pub const WS_READ_BUFFER_BYTES: usize = 16 * 1024;

/// Largest WebSocket message either end accepts on a tunnel. Leaves room
/// for [`MAX_WRITE_BUFFER_BYTES`] plus any yamux frame.
pub const MAX_WS_MESSAGE_BYTES: usize = 2 * 1024 * 1024;

/// WebSocket close code telling an agent its session was closed on purpose
/// and it must not reconnect.
pub const CLOSE_SESSION_CLOSED: u16 = 4000;

/// What the adapter does with one incoming message.
#[derive(Debug)]
pub enum Incoming {
    /// Payload bytes.
    Data(Bytes),
    /// A message to skip (Ping, Pong, Text).
    Skip,
    /// The peer is closing, with its close code if any: end of stream.
    Close(Option<u16>),
}

/// A WebSocket message type the adapter can carry bytes in.
pub trait WsMessage: Sized {
    /// A binary message holding `data`.
    fn binary(data: Bytes) -> Self;
    /// A close message with a code and reason.
    fn close(code: u16, reason: &str) -> Self;
    /// Classifies an incoming message.
    fn classify(self) -> Incoming;
}

/// Shared view of a [`WsStream`]'s close codes: the code to close with, and
/// the code the peer sent.
#[derive(Debug, Clone, Default)]
pub struct CloseHandle(std::sync::Arc<CloseState>);

#[derive(Debug, Default)]
struct CloseState {
    /// Fast check on the write path.
    code_set: std::sync::atomic::AtomicBool,
    codes: std::sync::Mutex<CloseCodes>,
}

#[derive(Debug, Default)]
struct CloseCodes {
    to_send: Option<(u16, String)>,
    received: Option<u16>,
}

impl CloseHandle {
    /// Ends the stream with a Close message carrying `code` and `reason`:
    /// the next write or shutdown sends it (after what is already buffered)
    /// and later writes fail. Used when the multiplexer's own goodbye would
    /// hide the code from the peer, which stops reading at that goodbye.
    pub fn set_code(&self, code: u16, reason: &str) {
        let mut reason = reason.to_owned();
        // A close reason is limited to 123 bytes by the protocol.
        while reason.len() > 123 {
            reason.pop();
        }
        self.lock().to_send = Some((code, reason));
        self.0
            .code_set
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The close code the peer sent, once its Close has been read.
    pub fn received(&self) -> Option<u16> {
        self.lock().received
    }

    fn is_set(&self) -> bool {
        self.0.code_set.load(std::sync::atomic::Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CloseCodes> {
        self.0.codes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `AsyncRead + AsyncWrite` over a stream and sink of WebSocket messages.
#[derive(Debug)]
pub struct WsStream<S> {
    inner: S,
    read_buf: Bytes,
    read_eof: bool,
    write_buf: BytesMut,
    close: CloseHandle,
    close_sent: bool,
}

impl<S> WsStream<S> {
    /// Wraps a WebSocket connection.
    pub fn new(inner: S) -> Self {
        WsStream {
            inner,
            read_buf: Bytes::new(),
            read_eof: false,
            write_buf: BytesMut::new(),
            close: CloseHandle::default(),
            close_sent: false,
        }
    }

    /// The handle to this stream's close codes.
    pub fn close_handle(&self) -> CloseHandle {
        self.close.clone()
    }

    /// Returns the wrapped connection.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, M, E, SE> WsStream<S>
where
    S: Stream<Item = Result<M, E>> + Sink<M, Error = SE> + Unpin,
    M: WsMessage,
    SE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Hands the buffered bytes to the sink as one message.
    fn poll_send_buffered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(to_io)?;
        let msg = M::binary(self.write_buf.split().freeze());
        Pin::new(&mut self.inner).start_send(msg).map_err(to_io)?;
        Poll::Ready(Ok(()))
    }

    /// Sends the Close message with the code set on the handle, once.
    fn poll_send_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.close_sent {
            return Poll::Ready(Ok(()));
        }
        let code = self.close.lock().to_send.clone();
        if let Some((code, reason)) = code {
            ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(to_io)?;
            Pin::new(&mut self.inner)
                .start_send(M::close(code, &reason))
                .map_err(to_io)?;
        }
        self.close_sent = true;
        Poll::Ready(Ok(()))
    }
}

fn to_io<E: Into<Box<dyn std::error::Error + Send + Sync>>>(e: E) -> io::Error {
    let e = e.into();
    io::Error::new(io::ErrorKind::BrokenPipe, e)
}

impl<S, M, E> AsyncRead for WsStream<S>
where
    S: Stream<Item = Result<M, E>> + Unpin,
    M: WsMessage,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.read_buf.is_empty() {
                let n = this.read_buf.len().min(buf.remaining());
                buf.put_slice(&this.read_buf[..n]);
                this.read_buf.advance(n);
                if this.read_buf.is_empty() {
                    // An empty view still holds the reader's buffer.
                    this.read_buf = Bytes::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                None => this.read_eof = true,
                Some(Err(e)) => {
                    this.read_eof = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        e.into(),
                    )));
                }
                Some(Ok(msg)) => match msg.classify() {
                    Incoming::Data(data) => this.read_buf = data,
                    Incoming::Skip => {}
                    Incoming::Close(code) => {
                        this.close.lock().received = code;
                        this.read_eof = true;
                    }
                },
            }
        }
    }
}

impl<S, M, E, SE> AsyncWrite for WsStream<S>
where
    S: Stream<Item = Result<M, E>> + Sink<M, Error = SE> + Unpin,
    M: WsMessage,
    SE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close.is_set() {
            ready!(this.poll_send_buffered(cx))?;
            ready!(this.poll_send_close(cx))?;
            ready!(Pin::new(&mut this.inner).poll_flush(cx)).map_err(to_io)?;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the WebSocket was closed with a code",
            )));
        }
        if this.write_buf.len() >= MAX_WRITE_BUFFER_BYTES {
            ready!(this.poll_send_buffered(cx))?;
        }
        let n = buf.len().min(MAX_WRITE_BUFFER_BYTES - this.write_buf.len());
        this.write_buf.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_buffered(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_buffered(cx))?;
        ready!(this.poll_send_close(cx))?;
        Pin::new(&mut this.inner).poll_close(cx).map_err(to_io)
    }
}

#[cfg(feature = "tungstenite")]
impl WsMessage for tokio_tungstenite::tungstenite::Message {
    fn binary(data: Bytes) -> Self {
        Self::Binary(data)
    }

    fn close(code: u16, reason: &str) -> Self {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        Self::Close(Some(CloseFrame {
            code: code.into(),
            reason: reason.to_owned().into(),
        }))
    }

    fn classify(self) -> Incoming {
        use tokio_tungstenite::tungstenite::Message;
        match self {
            Message::Binary(data) => Incoming::Data(data),
            Message::Close(frame) => Incoming::Close(frame.map(|f| u16::from(f.code))),
            Message::Text(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                Incoming::Skip
            }
        }
    }
}

#[cfg(feature = "axum")]
impl WsMessage for axum::extract::ws::Message {
    fn binary(data: Bytes) -> Self {
        Self::Binary(data)
    }

    fn close(code: u16, reason: &str) -> Self {
        Self::Close(Some(axum::extract::ws::CloseFrame {
            code,
            reason: reason.to_owned().into(),
        }))
    }

    fn classify(self) -> Incoming {
        use axum::extract::ws::Message;
        match self {
            Message::Binary(data) => Incoming::Data(data),
            Message::Close(frame) => Incoming::Close(frame.map(|f| f.code)),
            Message::Text(_) | Message::Ping(_) | Message::Pong(_) => Incoming::Skip,
        }
    }
}

#[cfg(all(test, feature = "tungstenite"))]
mod tests {
    use super::*;
    use futures::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

    async fn pair() -> (
        WebSocketStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let a = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let b = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        (a, b)
    }

    #[tokio::test]
    async fn ping_pong_and_text_in_the_middle_of_data_are_skipped() {
        let (mut raw, server) = pair().await;
        let mut stream = WsStream::new(server);
        raw.send(Message::binary(&b"hello "[..])).await.unwrap();
        raw.send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        raw.send(Message::Pong(Bytes::from_static(b"q")))
            .await
            .unwrap();
        raw.send(Message::Text(Utf8Bytes::from_static("ignored")))
            .await
            .unwrap();
        raw.send(Message::binary(&b"world"[..])).await.unwrap();
        raw.close(None).await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello world");
    }

    /// A message stream that yields one given payload, then ends.
    struct OneMessage(Option<Bytes>);

    impl Stream for OneMessage {
        type Item = Result<Message, std::io::Error>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Ready(self.0.take().map(|b| Ok(Message::Binary(b))))
        }
    }

    #[tokio::test]
    async fn a_message_read_to_its_end_is_let_go() {
        let payload = Bytes::from(vec![9u8; 4096]);
        let probe = payload.clone();
        let mut stream = WsStream::new(OneMessage(Some(payload)));
        let mut got = [0u8; 4000];
        stream.read_exact(&mut got).await.unwrap();
        assert!(!probe.is_unique(), "96 bytes are still to be read");
        let mut rest = [0u8; 96];
        stream.read_exact(&mut rest).await.unwrap();
        // Only the probe holds the buffer now: the reader that made it can
        // reuse it for the next message instead of allocating another.
        assert!(probe.is_unique());
    }

    #[tokio::test]
    async fn close_is_end_of_stream() {
        let (mut raw, server) = pair().await;
        let mut stream = WsStream::new(server);
        raw.send(Message::binary(&b"x"[..])).await.unwrap();
        raw.send(Message::Close(None)).await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"x");
        let mut more = [0u8; 8];
        assert_eq!(stream.read(&mut more).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn close_codes_cross_both_ways() {
        let (client, server) = pair().await;
        let mut a = WsStream::new(client);
        let mut b = WsStream::new(server);
        let (ha, hb) = (a.close_handle(), b.close_handle());
        b.write_all(b"last words").await.unwrap();
        b.flush().await.unwrap();
        hb.set_code(CLOSE_SESSION_CLOSED, "closed by an operator");
        // The next write (a multiplexer's goodbye) becomes the Close.
        assert!(b.write_all(b"goodbye").await.is_err());
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"last words");
        assert_eq!(ha.received(), Some(CLOSE_SESSION_CLOSED));
        assert_eq!(hb.received(), None);
    }

    #[tokio::test]
    async fn writes_become_one_message_per_flush() {
        use futures::StreamExt;
        let (mut raw, server) = pair().await;
        let mut stream = WsStream::new(server);
        // yamux writes a 12-byte header and the body separately, then flushes.
        stream.write_all(&[1u8; 12]).await.unwrap();
        stream.write_all(&[2u8; 1000]).await.unwrap();
        stream.flush().await.unwrap();
        stream.write_all(&[3u8; 5]).await.unwrap();
        stream.flush().await.unwrap();
        let first = raw.next().await.unwrap().unwrap();
        assert_eq!(first.len(), 1012);
        let second = raw.next().await.unwrap().unwrap();
        assert_eq!(second.into_data(), Bytes::from_static(&[3u8; 5]));
    }

    /// A message stream that records the size of every message it yields.
    struct Tap<S> {
        inner: S,
        sizes: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl<S: Stream<Item = Result<Message, E>> + Unpin, E> Stream for Tap<S> {
        type Item = Result<Message, E>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            let next = ready!(Pin::new(&mut self.inner).poll_next(cx));
            if let Some(Ok(Message::Binary(b))) = &next {
                self.sizes.lock().expect("not poisoned").push(b.len());
            }
            Poll::Ready(next)
        }
    }

    impl<S: Sink<Message> + Unpin> Sink<Message> for Tap<S> {
        type Error = S::Error;
        fn poll_ready(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), S::Error>> {
            Pin::new(&mut self.inner).poll_ready(cx)
        }
        fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), S::Error> {
            Pin::new(&mut self.inner).start_send(item)
        }
        fn poll_flush(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), S::Error>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_close(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), S::Error>> {
            Pin::new(&mut self.inner).poll_close(cx)
        }
    }

    #[tokio::test]
    async fn a_bulk_transfer_over_yamux_leaves_in_full_messages() {
        use crate::mux::{Mux, MuxConfig, YamuxMux};
        let (client, server) = pair().await;
        let sizes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tap = Tap {
            inner: server,
            sizes: sizes.clone(),
        };
        let config = MuxConfig::default();
        let sender = YamuxMux::client(WsStream::new(client), &config);
        let receiver = YamuxMux::server(WsStream::new(tap), &config);
        const TOTAL: usize = 8 * 1024 * 1024;
        let reading = tokio::spawn(async move {
            let mut stream = receiver.accept().await.unwrap();
            let mut got = Vec::new();
            stream.read_to_end(&mut got).await.unwrap();
            got.len()
        });
        let mut stream = sender.open().await.unwrap();
        stream.write_all(&vec![5u8; TOTAL]).await.unwrap();
        stream.shutdown().await.unwrap();
        assert_eq!(reading.await.unwrap(), TOTAL);
        let sizes = sizes.lock().unwrap().clone();
        // Bulk data goes in frames of a whole 256 KiB window, one message
        // each (64 KiB frames made four times the messages).
        assert!(
            sizes.len() <= 2 * TOTAL / (256 * 1024) + 3,
            "few, large messages: {sizes:?}"
        );
        // Frames fill messages: no frame is cut in two across messages,
        // which would leave a header-sized sliver in a message of its own.
        // Small messages: yamux's ping and pong and the stream's close (and
        // another ping and pong if the run takes over yamux's 10 s).
        let slivers = sizes.iter().filter(|&&n| n <= 64).count();
        assert!(slivers <= 5, "control frames only: {sizes:?}");
        let frame = crate::mux::DEFAULT_SPLIT_SEND_BYTES + crate::mux::YAMUX_HEADER_BYTES;
        let full = sizes.iter().filter(|&&n| n >= frame).count();
        assert!(
            full >= TOTAL / MAX_WRITE_BUFFER_BYTES / 2,
            "most messages are full: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn large_writes_are_bounded_per_message() {
        use futures::StreamExt;
        let (mut raw, server) = pair().await;
        let mut stream = WsStream::new(server);
        let data = vec![7u8; 3 * MAX_WRITE_BUFFER_BYTES + 5];
        let writer = tokio::spawn(async move {
            stream.write_all(&data).await.unwrap();
            stream.shutdown().await.unwrap();
        });
        let mut total = 0;
        while let Some(Ok(msg)) = raw.next().await {
            if let Message::Binary(b) = msg {
                assert!(b.len() <= MAX_WRITE_BUFFER_BYTES);
                total += b.len();
            }
        }
        assert_eq!(total, 3 * MAX_WRITE_BUFFER_BYTES + 5);
        writer.await.unwrap();
    }
}
