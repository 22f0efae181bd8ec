//! [`WsStream`] against tungstenite (an independent implementation of
//! RFC 6455) and against raw bytes.

use super::*;
use crate::relay::WriteInPlace;
use futures::{SinkExt, StreamExt};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role as TRole;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};

/// Our server end, and tungstenite's client end.
async fn server_and_peer() -> (WsStream<DuplexStream>, WebSocketStream<DuplexStream>) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let peer = WebSocketStream::from_raw_socket(a, TRole::Client, None).await;
    (WsStream::new(b, Role::Server, &[]), peer)
}

/// Our client end, and tungstenite's server end.
async fn client_and_peer() -> (WsStream<DuplexStream>, WebSocketStream<DuplexStream>) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let peer = WebSocketStream::from_raw_socket(a, TRole::Server, None).await;
    (WsStream::new(b, Role::Client, &[]), peer)
}

#[tokio::test]
async fn bytes_cross_both_ways_with_either_role() {
    for client in [false, true] {
        let (mut ours, mut peer) = if client {
            client_and_peer().await
        } else {
            server_and_peer().await
        };
        ours.write_all(b"hello ").await.unwrap();
        ours.write_all(b"world").await.unwrap();
        ours.flush().await.unwrap();
        let mut got = Vec::new();
        while got.len() < 11 {
            got.extend_from_slice(&peer.next().await.unwrap().unwrap().into_data());
        }
        assert_eq!(got, b"hello world");
        peer.send(Message::binary(vec![7u8; 100_000]))
            .await
            .unwrap();
        let mut back = vec![0u8; 100_000];
        ours.read_exact(&mut back).await.unwrap();
        assert!(back.iter().all(|&b| b == 7));
    }
}

#[tokio::test]
async fn fragments_pings_pongs_and_text_in_the_middle_of_data() {
    let (mut ours, mut peer) = server_and_peer().await;
    peer.send(Message::binary(&b"hello "[..])).await.unwrap();
    // One binary message in three fragments, a ping between two of them.
    let first = Frame::message(Bytes::from_static(b"wo"), OpCode::Data(Data::Binary), false);
    peer.send(Message::Frame(first)).await.unwrap();
    peer.send(Message::Ping(Bytes::from_static(b"p")))
        .await
        .unwrap();
    let mid = Frame::message(
        Bytes::from_static(b"r"),
        OpCode::Data(Data::Continue),
        false,
    );
    peer.send(Message::Frame(mid)).await.unwrap();
    let last = Frame::message(
        Bytes::from_static(b"ld"),
        OpCode::Data(Data::Continue),
        true,
    );
    peer.send(Message::Frame(last)).await.unwrap();
    peer.send(Message::Pong(Bytes::from_static(b"q")))
        .await
        .unwrap();
    peer.send(Message::Text(Utf8Bytes::from_static("skipped")))
        .await
        .unwrap();
    peer.send(Message::binary(&b"!"[..])).await.unwrap();
    peer.close(None).await.unwrap();
    let mut got = Vec::new();
    ours.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hello world!");
    // The ping was answered with its payload, and the close with a close.
    assert_eq!(
        peer.next().await.unwrap().unwrap(),
        Message::Pong(Bytes::from_static(b"p"))
    );
    assert!(matches!(
        peer.next().await,
        Some(Ok(Message::Close(_))) | None
    ));
}

#[tokio::test]
async fn close_codes_cross_both_ways() {
    let (a, b) = tokio::io::duplex(1 << 16);
    let mut client = WsStream::new(a, Role::Client, &[]);
    let mut server = WsStream::new(b, Role::Server, &[]);
    let (hc, hs) = (client.close_handle(), server.close_handle());
    server.write_all(b"last words").await.unwrap();
    server.flush().await.unwrap();
    hs.set_code(CLOSE_SESSION_CLOSED, "closed by an operator");
    // The next write (a multiplexer's goodbye) becomes the Close.
    assert!(server.write_all(b"goodbye").await.is_err());
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"last words");
    assert_eq!(hc.received(), Some(CLOSE_SESSION_CLOSED));
    // The client answered with the same code; writing after is an error.
    assert!(client.write_all(b"more").await.is_err());
    let mut none = Vec::new();
    server.read_to_end(&mut none).await.unwrap();
    assert_eq!(hs.received(), Some(CLOSE_SESSION_CLOSED));
}

#[tokio::test]
async fn a_close_code_reaches_tungstenite() {
    let (mut ours, mut peer) = server_and_peer().await;
    ours.close_handle().set_code(CLOSE_SESSION_CLOSED, "bye");
    ours.shutdown().await.unwrap();
    match peer.next().await.unwrap().unwrap() {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), CLOSE_SESSION_CLOSED);
            assert_eq!(frame.reason.as_str(), "bye");
        }
        other => panic!("expected a close, got {other:?}"),
    }
}

/// Feeds `bytes` to a server end and returns what it read and how it ended,
/// and what it wrote back.
async fn server_reading(bytes: &[u8]) -> (Vec<u8>, std::io::Result<()>, Vec<u8>) {
    let (mut raw, b) = tokio::io::duplex(1 << 16);
    let mut ours = WsStream::new(b, Role::Server, &[]);
    raw.write_all(bytes).await.unwrap();
    raw.shutdown().await.unwrap();
    let mut got = Vec::new();
    let result = ours.read_to_end(&mut got).await.map(|_| ());
    drop(ours);
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).await.unwrap();
    (got, result, answer)
}

fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let key = [0x11, 0x22, 0x33, 0x44];
    let mut out = Vec::new();
    frame::FrameHeader {
        fin,
        opcode: match opcode {
            0 => frame::Opcode::Continuation,
            1 => frame::Opcode::Text,
            2 => frame::Opcode::Binary,
            8 => frame::Opcode::Close,
            9 => frame::Opcode::Ping,
            _ => frame::Opcode::Pong,
        },
        mask: Some(key),
        len: payload.len() as u64,
    }
    .encode_into(&mut out);
    frame::extend_masked(&mut out, payload, key);
    out
}

#[tokio::test]
async fn protocol_errors_end_the_stream_with_close_1002() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked", vec![0x82, 0x01, b'x']),
        ("reserved bit", {
            let mut f = masked(2, true, b"x");
            f[0] |= 0x40;
            f
        }),
        ("continuation first", masked(0, true, b"x")),
        ("a new message inside a fragmented one", {
            let mut f = masked(2, false, b"x");
            f.extend(masked(2, true, b"y"));
            f
        }),
    ];
    for (what, bytes) in cases {
        let (got, result, answer) = server_reading(&bytes).await;
        let err = result.expect_err(what);
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{what}: {err}");
        assert!(got.len() <= 1, "{what}");
        // A server's close: unmasked, code 1002.
        assert_eq!(&answer[..4], &[0x88, answer[1], 0x03, 0xEA], "{what}");
    }
}

#[tokio::test]
async fn a_frame_past_the_limit_is_refused_from_its_header() {
    let mut header = Vec::new();
    frame::FrameHeader {
        fin: true,
        opcode: frame::Opcode::Binary,
        mask: Some([1, 2, 3, 4]),
        len: MAX_WS_MESSAGE_BYTES as u64 + 1,
    }
    .encode_into(&mut header);
    let (got, result, answer) = server_reading(&header).await;
    assert_eq!(result.unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    assert!(got.is_empty());
    assert_eq!(&answer[2..4], &1009u16.to_be_bytes());
}

#[tokio::test]
async fn the_end_of_the_connection_is_end_of_file_between_frames_only() {
    let (got, result, _) = server_reading(&masked(2, true, b"whole")).await;
    assert_eq!((got.as_slice(), result.is_ok()), (&b"whole"[..], true));
    let mut cut = masked(2, true, b"cut short");
    cut.truncate(cut.len() - 3);
    let (_, result, _) = server_reading(&cut).await;
    assert_eq!(
        result.unwrap_err().kind(),
        std::io::ErrorKind::UnexpectedEof
    );
    // Inside a fragmented message, even between frames.
    let (_, result, _) = server_reading(&masked(2, false, b"half")).await;
    assert!(result.is_err());
}

#[tokio::test]
async fn frames_split_at_every_byte_read_the_same() {
    let mut bytes = masked(2, false, b"abc");
    bytes.extend(masked(9, true, b"ping"));
    bytes.extend(masked(0, true, &[5u8; 300]));
    bytes.extend(masked(2, true, &[6u8; 70_000]));
    let (mut raw, b) = tokio::io::duplex(7);
    let mut ours = WsStream::new(b, Role::Server, &[]);
    let writer = tokio::spawn(async move {
        for chunk in bytes.chunks(5) {
            raw.write_all(chunk).await.unwrap();
        }
        raw.shutdown().await.unwrap();
        let mut answer = Vec::new();
        raw.read_to_end(&mut answer).await.unwrap();
        answer
    });
    let mut got = Vec::new();
    ours.read_to_end(&mut got).await.unwrap();
    assert_eq!(&got[..3], b"abc");
    assert!(got[3..303].iter().all(|&b| b == 5));
    assert!(got[303..].iter().all(|&b| b == 6));
    assert_eq!(got.len(), 3 + 300 + 70_000);
    drop(ours);
    // The pong went back, unmasked, with the ping's payload.
    assert_eq!(
        &writer.await.unwrap()[..6],
        &[0x8A, 4, b'p', b'i', b'n', b'g']
    );
}

#[tokio::test]
async fn what_came_with_the_handshake_is_read_first() {
    let (_raw, b) = tokio::io::duplex(64);
    let mut leftover = masked(2, true, b"early");
    leftover.extend(masked(8, true, &4000u16.to_be_bytes()));
    let mut ours = WsStream::new(b, Role::Server, &leftover);
    let handle = ours.close_handle();
    let mut got = Vec::new();
    ours.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"early");
    assert_eq!(handle.received(), Some(4000));
}

/// Counts the reads that reach the connection.
struct CountReads<T> {
    inner: T,
    reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<T: AsyncRead + Unpin> AsyncRead for CountReads<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountReads<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn large_payloads_are_read_in_few_reads_and_no_buffer_is_kept() {
    const FRAME: usize = 256 * 1024;
    let (a, b) = tokio::io::duplex(4 << 20);
    let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut sender = WsStream::new(a, Role::Client, &[]);
    let mut receiver = WsStream::new(
        CountReads {
            inner: b,
            reads: reads.clone(),
        },
        Role::Server,
        &[],
    );
    for _ in 0..4 {
        // As yamux writes a frame: a 12-byte header, then the body.
        sender.write_all(&[1u8; 12]).await.unwrap();
        sender.write_all(&vec![2u8; FRAME]).await.unwrap();
        sender.flush().await.unwrap();
    }
    // Drained and flushed, the sender keeps no large buffer.
    assert!(
        sender.buffered_capacity() <= 4096,
        "{}",
        sender.buffered_capacity()
    );
    let mut header = [0u8; 12];
    let mut body = vec![0u8; FRAME];
    for _ in 0..4 {
        receiver.read_exact(&mut header).await.unwrap();
        receiver.read_exact(&mut body).await.unwrap();
        assert!(header.iter().all(|&b| b == 1) && body.iter().all(|&b| b == 2));
    }
    // A read-ahead for each header, the rest straight into the body: not
    // one read per 16 KiB (64 for this megabyte) as through a message API.
    let reads = reads.load(std::sync::atomic::Ordering::Relaxed);
    assert!(reads <= 12, "{reads} reads");
    // Quiet now: the next read waits, and the stream holds no buffer.
    let mut one = [0u8; 1];
    let waiting = futures::poll!(std::pin::pin!(receiver.read(&mut one)));
    assert!(waiting.is_pending());
    assert_eq!(receiver.buffered_capacity(), 0);
}

#[tokio::test]
async fn writes_are_bounded_per_frame_and_sent_on_flush() {
    let (mut ours, mut peer) = server_and_peer().await;
    ours.write_all(&[1u8; 12]).await.unwrap();
    ours.write_all(&[2u8; 1000]).await.unwrap();
    // Nothing went before the flush.
    let early = futures::poll!(std::pin::pin!(peer.next()));
    assert!(early.is_pending());
    ours.flush().await.unwrap();
    assert_eq!(peer.next().await.unwrap().unwrap().len(), 12);
    assert_eq!(peer.next().await.unwrap().unwrap().len(), 1000);
    let n = ours
        .write(&vec![3u8; 3 * MAX_WRITE_BUFFER_BYTES])
        .await
        .unwrap();
    assert_eq!(n, MAX_WRITE_BUFFER_BYTES);
}

#[tokio::test]
async fn a_bulk_transfer_over_the_mux_arrives_whole() {
    use crate::mux::{Mux, MuxConfig, WireMux};
    let (a, b) = tokio::io::duplex(1 << 20);
    let config = MuxConfig::default();
    let sender = WireMux::client(WsStream::new(a, Role::Client, &[]), &config);
    let receiver = WireMux::server(WsStream::new(b, Role::Server, &[]), &config);
    const TOTAL: usize = 8 * 1024 * 1024;
    let reading = tokio::spawn(async move {
        let mut stream = receiver.accept().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        got
    });
    let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    let mut stream = sender.open().await.unwrap();
    stream.write_all(&data).await.unwrap();
    stream.shutdown().await.unwrap();
    assert!(reading.await.unwrap() == data);
}

#[tokio::test]
async fn a_ping_flood_gets_few_answers_and_cannot_grow_the_write_buffer() {
    let mut pings = Vec::new();
    // (As many as the test connection holds before anyone reads: 56 KB.)
    for i in 0..7_000u16 {
        pings.extend(masked(9, true, &i.to_be_bytes()));
    }
    pings.extend(masked(2, true, b"after"));
    let (got, result, answer) = server_reading(&pings).await;
    assert!(result.is_ok());
    assert_eq!(got, b"after");
    // The answers: Pongs (4 bytes each), then the Close.
    let pongs = answer.chunks(4).take_while(|f| f[0] == 0x8A).count();
    assert!((1..100).contains(&pongs), "{pongs} pongs for 7,000 pings");
}

#[tokio::test]
async fn a_bad_close_code_is_answered_with_1002() {
    for payload in [&[0x03][..], &1005u16.to_be_bytes(), &999u16.to_be_bytes()] {
        let (_, result, answer) = server_reading(&masked(8, true, payload)).await;
        assert!(result.is_ok());
        assert_eq!(&answer[..4], &[0x88, answer[1], 0x03, 0xEA], "{payload:?}");
    }
}

/// Serves one HTTP answer `head` (with `{accept}` replaced by the right
/// accept key) to the client handshake, and returns its result.
async fn handshake_against(
    head: &str,
) -> Result<WsStream<DuplexStream>, handshake::HandshakeError> {
    let (client_io, mut server_io) = tokio::io::duplex(1 << 16);
    let head = head.to_owned();
    let server = tokio::spawn(async move {
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") {
            server_io.read_exact(&mut byte).await.unwrap();
            request.push(byte[0]);
        }
        let request = String::from_utf8(request).unwrap();
        let key = request
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap()
            .to_owned();
        let answer = head.replace("{accept}", &handshake::accept_key(key.as_bytes()));
        server_io.write_all(answer.as_bytes()).await.unwrap();
        // A frame right behind the head: a server's close code 4000.
        server_io
            .write_all(&[0x88, 0x02, 0x0F, 0xA0])
            .await
            .unwrap();
        server_io
    });
    let request = handshake::ClientRequest::from_url("ws://example.test:8080/api/v1/tunnel")
        .unwrap()
        .header("authorization", "Basic abc")
        .unwrap();
    let result = handshake::client(client_io, &request).await;
    drop(server.await.unwrap());
    result
}

#[tokio::test]
async fn the_client_handshake_keeps_what_follows_the_101() {
    let mut ws = handshake_against(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n",
    )
    .await
    .unwrap();
    let close = ws.close_handle();
    let mut rest = Vec::new();
    ws.read_to_end(&mut rest).await.unwrap();
    assert_eq!(close.received(), Some(CLOSE_SESSION_CLOSED));
}

#[tokio::test]
async fn the_client_handshake_refuses_what_it_did_not_ask_for() {
    let wrong_key = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: bm90IGl0\r\n\r\n";
    let deflate = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\
                   Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n";
    let no_upgrade = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {accept}\r\n\r\n";
    for head in [wrong_key, deflate, no_upgrade] {
        let err = handshake_against(head).await.unwrap_err();
        assert!(
            matches!(err, handshake::HandshakeError::Response(_)),
            "{err}"
        );
    }
}

#[tokio::test]
async fn a_refusal_comes_back_with_its_status_headers_and_body() {
    let body = r#"{"code":"server_busy"}"#;
    let head = format!(
        "HTTP/1.0 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    match handshake_against(&head).await.unwrap_err() {
        handshake::HandshakeError::Refused(refusal) => {
            assert_eq!(refusal.status, 503);
            assert_eq!(refusal.header("retry-after"), Some("7"));
            assert_eq!(refusal.body, body.as_bytes());
        }
        other => panic!("{other}"),
    }
}

#[test]
fn header_values_cannot_smuggle_lines() {
    let request = handshake::ClientRequest::from_url("wss://h/x").unwrap();
    assert!(
        request
            .clone()
            .header("authorization", "a\r\nX-Evil: 1")
            .is_err()
    );
    assert!(request.clone().header("bad name", "v").is_err());
    assert!(handshake::ClientRequest::from_url("http://h/x").is_err());
}

/// A connection that takes at most `limit` bytes per write, vectored, and
/// says "not now" to every other write.
struct Choppy {
    written: Vec<u8>,
    limit: usize,
    calls: usize,
}

impl Choppy {
    fn new(limit: usize) -> Self {
        Choppy {
            written: Vec::new(),
            limit,
            calls: 0,
        }
    }
}

/// What a WebSocket end of `role` reads from `bytes`, to its end.
async fn read_back(bytes: &[u8], role: Role) -> Vec<u8> {
    let (mut a, b) = tokio::io::duplex(bytes.len() + 1);
    a.write_all(bytes).await.unwrap();
    drop(a);
    let mut reader = WsStream::new(b, role, &[]);
    let mut got = Vec::new();
    reader.read_to_end(&mut got).await.unwrap();
    got
}

impl AsyncRead for Choppy {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

impl AsyncWrite for Choppy {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.calls += 1;
        if self.calls.is_multiple_of(2) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(self.limit - n);
            self.written.extend_from_slice(&b[..take]);
            n += take;
        }
        Poll::Ready(Ok(n))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_server_writes_large_payloads_from_the_callers_buffer_however_little_the_connection_takes()
 {
    const FRAME: usize = 256 * 1024;
    for limit in [1, 7, 13, 100, 5000, 70_000, FRAME + 100, 4 << 20] {
        let mut ours = WsStream::new(Choppy::new(limit), Role::Server, &[]);
        let mut sent = Vec::new();
        for i in 0..3u8 {
            // As yamux writes a frame: a 12-byte header, then the body.
            let header = [i; 12];
            let body: Vec<u8> = (0..FRAME + i as usize)
                .map(|k| (k % 251) as u8 ^ i)
                .collect();
            ours.write_all(&header).await.unwrap();
            ours.write_all(&body).await.unwrap();
            if limit == 4 << 20 && i == 0 {
                // The body went at once, with the header queued before
                // it, in one write: nothing waits for the flush.
                let written = ours.get_ref().written.len();
                assert_eq!(written, 2 + 12 + 10 + FRAME, "not through the buffer");
                assert!(ours.buffered_capacity() <= 4096);
            }
            ours.flush().await.unwrap();
            sent.extend_from_slice(&header);
            sent.extend_from_slice(&body);
        }
        // What went out reads back as the same bytes, in whole frames.
        let got = read_back(&ours.get_ref().written, Role::Client).await;
        assert!(
            got == sent,
            "limit {limit}: {} bytes of {}",
            got.len(),
            sent.len()
        );
    }
}

/// Writes `buf` with [`WriteInPlace::poll_write_in_place`] until all of
/// it is taken.
async fn write_all_in_place<W: WriteInPlace + Unpin>(w: &mut W, mut buf: &mut [u8]) {
    while !buf.is_empty() {
        let n = std::future::poll_fn(|cx| Pin::new(&mut *w).poll_write_in_place(cx, buf))
            .await
            .unwrap();
        assert!(n > 0);
        buf = &mut buf[n..];
    }
}

#[tokio::test]
async fn a_client_masks_large_payloads_in_the_callers_buffer_however_little_the_connection_takes() {
    const FRAME: usize = 256 * 1024;
    for limit in [1, 7, 13, 100, 5000, 70_000, FRAME + 100, 4 << 20] {
        let mut ours = WsStream::new(Choppy::new(limit), Role::Client, &[]);
        let mut sent = Vec::new();
        for i in 0..3u8 {
            let header = [i; 12];
            let body: Vec<u8> = (0..FRAME + i as usize)
                .map(|k| (k % 251) as u8 ^ i)
                .collect();
            ours.write_all(&header).await.unwrap();
            let mut scratch = body.clone();
            write_all_in_place(&mut ours, &mut scratch).await;
            if limit == 4 << 20 && i == 0 {
                // Masked where it was and written from there, with the
                // header queued before it, in one write.
                assert_ne!(scratch, body, "the payload was not masked in place");
                let written = ours.get_ref().written.len();
                assert_eq!(written, 6 + 12 + 14 + FRAME, "not through the buffer");
                assert!(ours.buffered_capacity() <= 4096);
            }
            ours.flush().await.unwrap();
            sent.extend_from_slice(&header);
            sent.extend_from_slice(&body);
        }
        // What went out reads back as the same bytes at a server.
        let got = read_back(&ours.get_ref().written, Role::Server).await;
        assert!(
            got == sent,
            "limit {limit}: {} bytes of {}",
            got.len(),
            sent.len()
        );
    }
}

/// A small write, or a server's, leaves the caller's buffer as it was.
#[tokio::test]
async fn writes_in_place_that_are_not_masked_there_leave_the_buffer_alone() {
    for (role, len) in [(Role::Client, 100), (Role::Server, 300_000)] {
        let mut ours = WsStream::new(Choppy::new(4 << 20), role, &[]);
        let body: Vec<u8> = (0..len).map(|k| (k % 251) as u8).collect();
        let mut scratch = body.clone();
        write_all_in_place(&mut ours, &mut scratch).await;
        assert!(scratch == body, "{role:?}: the buffer changed");
    }
}
