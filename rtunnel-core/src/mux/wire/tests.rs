//! [`WireMux`] against itself, against the `yamux` crate both ways, and
//! against a hostile peer that writes raw frames.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

use super::frame::{self, ACK, FIN, HEADER_BYTES, Header, Kind, RST, SESSION_ID, SYN};
use super::*;
use crate::mux::YamuxMux;
use crate::mux::conformance::{echo_all, many_round_trips, pattern};

const LONG: Duration = Duration::from_secs(30);

// What every multiplexer must do.
crate::mux_conformance_tests!(crate::mux::conformance::Wire);

fn pair() -> (WireMux, WireMux) {
    let (a, b) = tokio::io::duplex(256 * 1024);
    let cfg = MuxConfig::default();
    (WireMux::client(a, &cfg), WireMux::server(b, &cfg))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wire_client_talks_to_a_yamux_server() {
    let (a, b) = tokio::io::duplex(256 * 1024);
    let cfg = MuxConfig::default();
    let client = WireMux::client(a, &cfg);
    echo_all(Arc::new(YamuxMux::server(b, &cfg)));
    many_round_trips(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yamux_client_talks_to_a_wire_server() {
    let (a, b) = tokio::io::duplex(256 * 1024);
    let cfg = MuxConfig::default();
    let client = YamuxMux::client(a, &cfg);
    echo_all(Arc::new(WireMux::server(b, &cfg)));
    many_round_trips(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_open_streams_to_a_yamux_peer() {
    // The server side opens too (the server opens streams to an agent).
    let (a, b) = tokio::io::duplex(256 * 1024);
    let cfg = MuxConfig::default();
    let wire = Arc::new(WireMux::server(a, &cfg));
    let yamux = Arc::new(YamuxMux::client(b, &cfg));
    echo_all(yamux.clone());
    echo_all(wire.clone());
    tokio::join!(many_round_trips(&*wire), many_round_trips(&*yamux));
}

#[tokio::test]
async fn a_dropped_stream_is_reset_for_the_peer() {
    let (client, server) = pair();
    let mut s = client.open().await.unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut peer = server.accept().await.unwrap();
    let mut buf = [0u8; 5];
    peer.read_exact(&mut buf).await.unwrap();
    drop(s);
    let err = tokio::time::timeout(LONG, peer.read(&mut buf))
        .await
        .expect("the reset arrived")
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    let err = peer.write_all(b"more").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    // The connection carries on.
    let mut again = client.open().await.unwrap();
    again.write_all(b"x").await.unwrap();
    assert!(server.accept().await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_streams_window_grows_out_of_the_budget_and_goes_back() {
    let (client, server) = pair();
    let server = Arc::new(server);
    let mut s = client.open().await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut peer = server.accept().await.unwrap();
    let id = peer.id();
    let sender = tokio::spawn(async move {
        let chunk = vec![1u8; 256 * 1024];
        for _ in 0..64 {
            s.write_all(&chunk).await.unwrap();
        }
        s.shutdown().await.unwrap();
        s
    });
    let mut sink = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut grew = 0;
    loop {
        let n = peer.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        sink.push(n);
        let st = server.conn.state();
        grew = grew.max(st.streams[&id].window);
    }
    let _s = sender.await.unwrap();
    assert!(grew > conn::INITIAL_WINDOW, "the window stayed at {grew}");
    let budget = server.conn.state().budget;
    assert!(budget < DEFAULT_BUDGET, "nothing was taken from the budget");
    drop(peer);
    assert_eq!(server.conn.state().budget, DEFAULT_BUDGET);
}

const DEFAULT_BUDGET: usize = crate::mux::DEFAULT_WINDOW_BUDGET;

#[tokio::test]
async fn opens_past_the_ack_backlog_wait_for_the_peers_acceptor() {
    let (client, server) = pair();
    let mut open = Vec::new();
    for _ in 0..conn::MAX_ACK_BACKLOG {
        let mut s = client.open().await.unwrap();
        s.write_all(b"x").await.unwrap();
        open.push(s);
    }
    let waiting = tokio::time::timeout(Duration::from_millis(200), client.open()).await;
    assert!(waiting.is_err(), "an open past the backlog must wait");
    // Accepted is not enough: the ACK leaves with the acceptor's first
    // frame.
    let mut taken = server.accept().await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(200), client.open()).await;
    assert!(waiting.is_err(), "no ACK was sent yet");
    taken.write_all(b"ok").await.unwrap();
    let more = tokio::time::timeout(LONG, client.open())
        .await
        .expect("the ACK freed an open");
    assert!(more.is_ok());
    assert_eq!(server.counters().streams_refused, 0);
}

#[tokio::test]
async fn inbound_streams_nobody_accepts_are_refused() {
    // A peer that ignores the backlog (no yamux peer does).
    let (mut peer, server) = RawPeer::new();
    let extra = 5;
    for i in 0..(MAX_PENDING_INBOUND + extra) as u32 {
        peer.send(Header::new(Kind::WindowUpdate, SYN, 2 * i + 1, 0), &[])
            .await;
    }
    let mut resets = Vec::new();
    while resets.len() < extra {
        let (header, _) = peer.next().await.expect("the resets arrive");
        if header.has(RST) {
            resets.push(header.stream);
        }
    }
    let last = 2 * (MAX_PENDING_INBOUND + extra) as u32 - 1;
    assert_eq!(resets, ((last - 8)..=last).step_by(2).collect::<Vec<_>>());
    assert_eq!(server.counters().streams_refused, extra as u64);
    assert!(server.accept().await.is_some());
}

/// A peer that writes raw frames at a [`WireMux`] server.
struct RawPeer {
    io: DuplexStream,
}

impl RawPeer {
    fn new() -> (RawPeer, WireMux) {
        let (a, b) = tokio::io::duplex(4 << 20);
        (RawPeer { io: a }, WireMux::server(b, &MuxConfig::default()))
    }

    async fn send(&mut self, header: Header, body: &[u8]) {
        self.io.write_all(&header.encode()).await.unwrap();
        self.io.write_all(body).await.unwrap();
    }

    /// The next frame, skipping window updates; `None` at end of file.
    async fn next(&mut self) -> Option<(Header, Vec<u8>)> {
        next_frame(&mut self.io).await
    }
}

async fn next_frame<R: AsyncRead + Unpin>(io: &mut R) -> Option<(Header, Vec<u8>)> {
    let mut head = [0u8; HEADER_BYTES];
    tokio::time::timeout(LONG, io.read_exact(&mut head))
        .await
        .expect("a frame or the end")
        .ok()?;
    let header = Header::parse(&head).unwrap();
    let mut body = vec![0u8; header.body_len()];
    io.read_exact(&mut body).await.unwrap();
    Some((header, body))
}

/// Reads frames until a go-away, and returns its code; panics at the end
/// of file without one.
async fn go_away_code(peer: &mut RawPeer) -> u32 {
    while let Some((header, _)) = peer.next().await {
        if header.kind == Kind::GoAway {
            return header.length;
        }
    }
    panic!("the connection ended without a go-away");
}

#[tokio::test]
async fn pings_are_answered_with_their_value() {
    let (mut peer, _server) = RawPeer::new();
    peer.send(Header::new(Kind::Ping, SYN, SESSION_ID, 0xdead_beef), &[])
        .await;
    let (header, _) = peer.next().await.unwrap();
    assert_eq!(
        header,
        Header::new(Kind::Ping, ACK, SESSION_ID, 0xdead_beef)
    );
}

#[tokio::test]
async fn a_peer_sending_past_its_window_is_sent_away() {
    let (mut peer, server) = RawPeer::new();
    peer.send(Header::new(Kind::WindowUpdate, SYN, 1, 0), &[])
        .await;
    let chunk = vec![0u8; 128 * 1024];
    for _ in 0..3 {
        peer.send(Header::new(Kind::Data, 0, 1, chunk.len() as u32), &chunk)
            .await;
    }
    assert_eq!(go_away_code(&mut peer).await, frame::GO_AWAY_PROTOCOL_ERROR);
    tokio::time::timeout(LONG, server.closed()).await.unwrap();
}

#[tokio::test]
async fn frames_no_yamux_peer_sends_end_the_connection() {
    let bad: [&[u8]; 4] = [
        // Version 1.
        &[1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0],
        // Type 9.
        &[0, 9, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0],
        // A data frame of 2 MiB.
        &[0, 0, 0, 1, 0, 0, 0, 1, 0, 0x20, 0, 0],
        // The peer opens a stream with one of this side's ids (even).
        &[0, 1, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0],
    ];
    for frame in bad {
        let (mut peer, server) = RawPeer::new();
        peer.io.write_all(frame).await.unwrap();
        assert_eq!(
            go_away_code(&mut peer).await,
            frame::GO_AWAY_PROTOCOL_ERROR,
            "{frame:?}"
        );
        tokio::time::timeout(LONG, server.closed()).await.unwrap();
        assert!(server.accept().await.is_none());
    }
}

#[tokio::test]
async fn a_stream_opened_twice_ends_the_connection() {
    let (mut peer, server) = RawPeer::new();
    peer.send(Header::new(Kind::WindowUpdate, SYN, 1, 0), &[])
        .await;
    let _s = server.accept().await.unwrap();
    peer.send(Header::new(Kind::Data, SYN, 1, 1), b"x").await;
    assert_eq!(go_away_code(&mut peer).await, frame::GO_AWAY_PROTOCOL_ERROR);
}

#[tokio::test]
async fn frames_for_unknown_streams_are_dropped_and_the_connection_goes_on() {
    let (mut peer, server) = RawPeer::new();
    peer.send(Header::new(Kind::Data, 0, 41, 3), b"abc").await;
    peer.send(Header::new(Kind::WindowUpdate, 0, 43, 1000), &[])
        .await;
    peer.send(Header::new(Kind::Data, SYN | FIN, 1, 5), b"hello")
        .await;
    let mut s = server.accept().await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hello");
    // The acceptor's first frame acknowledges the stream.
    s.write_all(b"bye").await.unwrap();
    s.shutdown().await.unwrap();
    let (header, body) = peer.next().await.unwrap();
    assert_eq!(header, Header::new(Kind::Data, ACK, 1, 3));
    assert_eq!(body, b"bye");
    let (header, _) = peer.next().await.unwrap();
    assert_eq!((header.stream, header.has(FIN)), (1, true));
    drop(s);
    // Both sides finished the stream: nothing more is sent for it.
    peer.send(Header::new(Kind::Ping, SYN, SESSION_ID, 7), &[])
        .await;
    let (header, _) = peer.next().await.unwrap();
    assert_eq!((header.kind, header.has(RST)), (Kind::Ping, false));
}

#[allow(dead_code)]
fn assert_stream_is_io<T: AsyncRead + AsyncWrite + Send + Unpin>() {}

#[test]
fn wire_streams_are_io() {
    assert_stream_is_io::<WireStream>();
}

#[tokio::test]
async fn a_peer_that_pings_and_never_reads_cannot_grow_the_answers() {
    let (a, b) = tokio::io::duplex(16 * 1024);
    let server = WireMux::server(b, &MuxConfig::default());
    let (_unread, mut peer) = tokio::io::split(a);
    let flood = tokio::spawn(async move {
        let ping = Header::new(Kind::Ping, SYN, SESSION_ID, 1).encode();
        let burst: Vec<u8> = ping.iter().copied().cycle().take(12 * 1000).collect();
        while peer.write_all(&burst).await.is_ok() {}
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = server.conn.state().queued.len() + conn::lock(&server.conn.sink).pending.len();
    assert!(held <= 96 * 1024, "{held} bytes of answers held");
    assert!(!flood.is_finished(), "the flood was never held back");
    flood.abort();
}

/// What a [`Gated`] transport holds back, and the one waker waiting on it.
#[derive(Default)]
struct Gate {
    writes_held: bool,
    flushes_held: bool,
    waker: Option<std::task::Waker>,
    flushes_waited: usize,
}

impl Gate {
    fn wait(&mut self, cx: &mut std::task::Context<'_>) {
        self.waker = Some(cx.waker().clone());
    }
}

/// A transport whose writes and flushes the test holds back at will. Like
/// a socket, it keeps one waker for both: a poll that must wait replaces
/// the waker that waited before it.
struct Gated {
    io: DuplexStream,
    gate: Arc<std::sync::Mutex<Gate>>,
}

impl AsyncRead for Gated {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gated {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        {
            let mut gate = self.gate.lock().unwrap();
            if gate.writes_held {
                gate.wait(cx);
                return std::task::Poll::Pending;
            }
        }
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        {
            let mut gate = self.gate.lock().unwrap();
            if gate.flushes_held {
                gate.flushes_waited += 1;
                gate.wait(cx);
                return std::task::Poll::Pending;
            }
        }
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Lets the runtime's other tasks (the driver) run for a while.
async fn let_others_run() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// A large frame goes to its reader before the driver reads the next one
/// into another buffer: the reader takes it while it is still in the
/// cache, and eight busy streams do not hold eight frames at once.
#[tokio::test(flavor = "current_thread")]
async fn a_large_frames_reader_takes_it_before_the_next_frame_is_read() {
    let (mut peer, server) = RawPeer::new();
    for id in [1, 3] {
        peer.send(Header::new(Kind::WindowUpdate, SYN, id, 0), &[])
            .await;
    }
    let mut first = server.accept().await.unwrap();
    let _second = server.accept().await.unwrap();
    let conn = server.conn.clone();
    let reader = tokio::spawn(async move {
        let mut byte = [0u8; 1];
        first.read_exact(&mut byte).await.unwrap();
        // What the other stream holds when this one's frame arrives.
        conn.state().streams[&3].unread()
    });
    let_others_run().await;
    // Both frames wait in the transport together, as under load.
    let body = pattern(64 * 1024, 3);
    for id in [1, 3] {
        peer.send(Header::new(Kind::Data, 0, id, body.len() as u32), &body)
            .await;
    }
    let held = tokio::time::timeout(LONG, reader).await.unwrap().unwrap();
    assert_eq!(
        held, 0,
        "the next frame was read before the first was taken"
    );
}

/// A stream that writes straight to a full transport leaves its own waker
/// there in place of the driver's, which was waiting on a flush: the
/// driver must be woken all the same, or the frame waits forever.
#[tokio::test(flavor = "current_thread")]
async fn a_frame_left_at_a_full_transport_is_written_when_it_drains() {
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let gate = Arc::new(std::sync::Mutex::new(Gate::default()));
    let io = Gated {
        io: a,
        gate: gate.clone(),
    };
    let client = WireMux::client(io, &MuxConfig::default());
    gate.lock().unwrap().flushes_held = true;
    let mut s = client.open().await.unwrap();
    s.write_all(b"a").await.unwrap();
    // The driver flushes the frame and waits on the held flush.
    tokio::time::timeout(LONG, async {
        while gate.lock().unwrap().flushes_waited == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the driver flushed");
    // This write goes straight to the transport, which takes nothing: the
    // frame is left for the driver, and the transport keeps this task's
    // waker instead of the driver's.
    gate.lock().unwrap().writes_held = true;
    s.write_all(b"b").await.unwrap();
    let_others_run().await;
    {
        let mut gate = gate.lock().unwrap();
        gate.writes_held = false;
        gate.flushes_held = false;
        if let Some(w) = gate.waker.take() {
            w.wake();
        }
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let (header, body) = tokio::time::timeout(Duration::from_secs(10), next_frame(&mut b))
            .await
            .expect("the frame left at the full transport was written")
            .expect("a frame");
        assert_eq!(header.stream, 1);
        got.extend_from_slice(&body);
    }
    assert_eq!(got, b"ab");
}

/// A transport that counts the bytes it takes in place, and scrambles
/// them once taken (as a WebSocket client's masking changes them): a byte
/// sent again from the caller's buffer would arrive scrambled.
struct InPlaceCounter {
    io: DuplexStream,
    in_place: Arc<std::sync::atomic::AtomicUsize>,
}

impl AsyncRead for InPlaceCounter {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for InPlaceCounter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl crate::relay::WriteInPlace for InPlaceCounter {
    fn poll_write_in_place(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = polled {
            self.in_place
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            for b in &mut buf[..n] {
                *b ^= 0xa5;
            }
        }
        polled
    }
}

/// Relays 1 MB from a socket into a stream of a connection made with
/// `in_place` or not; how many bytes its transport was offered in place.
async fn relayed_in_place(in_place: bool) -> usize {
    let (a, b) = tokio::io::duplex(256 * 1024);
    let counted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let io = InPlaceCounter {
        io: a,
        in_place: counted.clone(),
    };
    let cfg = MuxConfig::default();
    let client = match in_place {
        true => WireMux::client_in_place(io, &cfg),
        false => WireMux::client(io, &cfg),
    };
    let server = WireMux::server(b, &cfg);
    let data = pattern(1 << 20, 5);
    let (mut source, mut feed) = tokio::io::duplex(64 * 1024);
    let sent = data.clone();
    tokio::spawn(async move {
        feed.write_all(&sent).await.unwrap();
    });
    let mut stream = client.open().await.unwrap();
    let relay =
        tokio::spawn(async move { crate::relay::relay_chunks(&mut source, &mut stream).await });
    let mut peer = server.accept().await.unwrap();
    let mut got = vec![0u8; data.len()];
    tokio::time::timeout(LONG, peer.read_exact(&mut got))
        .await
        .expect("the bytes arrived")
        .unwrap();
    assert!(got == data, "the relayed bytes differ");
    relay.abort();
    counted.load(std::sync::atomic::Ordering::Relaxed)
}

/// A relay's buffer reaches the transport in place through a connection
/// made for it (whenever the transport has room at once), and never
/// through any other; what is taken in place is never sent again.
#[tokio::test]
async fn a_relays_buffer_reaches_an_in_place_transport_in_place() {
    let offered = relayed_in_place(true).await;
    assert!(offered > 0, "nothing was offered in place");
    assert_eq!(relayed_in_place(false).await, 0);
}

/// Streams the peer opened hold at most `MAX_UNACCEPTED_BYTES` together
/// before they are accepted: the stream whose data would go past it is
/// reset and what it held let go; accepting a stream gives its bytes back
/// to the budget, and the streams within it read whole.
#[tokio::test]
async fn streams_nobody_accepted_yet_hold_a_bounded_number_of_bytes() {
    let (mut peer, server) = RawPeer::new();
    let window = conn::INITIAL_WINDOW as usize;
    let fit = conn::MAX_UNACCEPTED_BYTES / window;
    let body = pattern(window, 9);
    // One stream more than fits, each sent its whole window.
    for i in 0..=fit as u32 {
        let id = 2 * i + 1;
        peer.send(Header::new(Kind::WindowUpdate, SYN, id, 0), &[])
            .await;
        for piece in body.chunks(64 * 1024) {
            peer.send(Header::new(Kind::Data, 0, id, piece.len() as u32), piece)
                .await;
        }
    }
    let last = 2 * fit as u32 + 1;
    loop {
        let (header, _) = peer.next().await.expect("the reset arrives");
        if header.has(RST) {
            assert_eq!(header.stream, last, "another stream was reset");
            break;
        }
    }
    assert_eq!(server.conn.state().unaccepted, fit * window);
    // The first stream reads whole; taking it frees its bytes.
    let mut first = server.accept().await.unwrap();
    assert_eq!(
        server.conn.state().unaccepted,
        (fit - 1) * window,
        "accepting gave nothing back"
    );
    let mut got = vec![0u8; window];
    first.read_exact(&mut got).await.unwrap();
    assert!(got == body);
    // Room for one more window now.
    let next = last + 2;
    peer.send(Header::new(Kind::WindowUpdate, SYN, next, 0), &[])
        .await;
    peer.send(Header::new(Kind::Data, 0, next, window as u32), &body)
        .await;
    for _ in 1..fit {
        server.accept().await.unwrap();
    }
    let mut refused = server.accept().await.unwrap();
    let err = refused.read(&mut got).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    let mut late = server.accept().await.unwrap();
    assert_eq!(late.id(), next);
    late.read_exact(&mut got).await.unwrap();
    assert!(got == body);
    assert_eq!(server.conn.state().unaccepted, 0);
}
