//! The behaviour every [`Mux`] over a byte transport must have, as checks
//! that run against any of them: [`WireMux`] and [`YamuxMux`] run them in
//! this crate's tests, and so should a multiplexer a service embedding
//! rtunnel brings.
//!
//! Each check builds a connection's two ends over an in-memory pipe with
//! an [`Ends`], and panics when the connection does something else than
//! the trait promises. [`mux_conformance_tests!`] turns them into one
//! `#[tokio::test]` each:
//!
//! ```ignore
//! rtunnel_core::mux_conformance_tests!(rtunnel_core::mux::conformance::Wire);
//! ```
//!
//! [`mux_conformance_tests!`]: crate::mux_conformance_tests

// Checks fail by panicking, like tests.
#![allow(clippy::unwrap_used)]

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{MAX_OPEN_STREAMS, Mux, MuxConfig, MuxError, WireMux, YamuxMux, batching, shared};
use crate::ws::{Role, WsStream};

/// How long a check waits for what must happen.
const LONG: Duration = Duration::from_secs(30);

/// How long a check waits to see that something does not happen.
const SHORT: Duration = Duration::from_millis(200);

/// The bytes an in-memory pipe between the two ends holds.
const PIPE_BYTES: usize = 256 * 1024;

/// How a check builds the two ends of a connection over a transport.
pub trait Ends: 'static {
    /// The multiplexer under test.
    type Mux: Mux;

    /// The end that dials.
    fn client<T>(io: T, config: &MuxConfig) -> Self::Mux
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static;

    /// The end that answers.
    fn server<T>(io: T, config: &MuxConfig) -> Self::Mux
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static;
}

/// [`WireMux`] at both ends.
#[derive(Debug)]
pub struct Wire;

impl Ends for Wire {
    type Mux = WireMux;

    fn client<T>(io: T, config: &MuxConfig) -> WireMux
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        WireMux::client(io, config)
    }

    fn server<T>(io: T, config: &MuxConfig) -> WireMux
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        WireMux::server(io, config)
    }
}

/// [`YamuxMux`] (the `yamux` crate) at both ends.
#[derive(Debug)]
pub struct Yamux;

impl Ends for Yamux {
    type Mux = YamuxMux;

    fn client<T>(io: T, config: &MuxConfig) -> YamuxMux
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        YamuxMux::client(io, config)
    }

    fn server<T>(io: T, config: &MuxConfig) -> YamuxMux
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        YamuxMux::server(io, config)
    }
}

/// Both ends over an in-memory pipe, with the default configuration.
fn pair<E: Ends>() -> (E::Mux, E::Mux) {
    let (a, b) = tokio::io::duplex(PIPE_BYTES);
    let config = MuxConfig::default();
    (E::client(a, &config), E::server(b, &config))
}

/// `len` bytes of a pattern that differs by `seed`.
pub(crate) fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31) ^ seed) as u8)
        .collect()
}

/// Echoes every stream `m` accepts, after reading it to its end.
pub(crate) fn echo_all<M: Mux>(m: Arc<M>) {
    tokio::spawn(async move {
        while let Some(mut s) = m.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await.unwrap();
                s.write_all(&buf).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
}

/// Sends `len` bytes on a new stream of `m`, half-closes, reads the echo.
async fn round_trip<M: Mux>(m: &M, len: usize, seed: u32) {
    let mut s = m.open().await.unwrap();
    let data = pattern(len, seed);
    let (mut r, mut w) = tokio::io::split(&mut s);
    let send = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let (_, got) = tokio::join!(send, r.read_to_end(&mut back));
    got.unwrap();
    assert!(back == data, "stream {seed}: the echo differs");
}

/// Eight round trips at once on `m`, of different lengths past a
/// stream's window, against a peer that echoes ([`echo_all`]).
pub(crate) async fn many_round_trips<M: Mux>(m: &M) {
    let trips = (0..8u32).map(|i| round_trip(m, 300_000 + i as usize * 77_777, i));
    tokio::time::timeout(LONG, futures::future::join_all(trips))
        .await
        .expect("the round trips finished");
}

/// Eight streams at once, of different lengths past their windows, carry
/// their bytes both ways, in order, and the counters count them.
pub async fn streams_carry_bytes_both_ways<E: Ends>() {
    let (client, server) = pair::<E>();
    let server = Arc::new(server);
    echo_all(server.clone());
    many_round_trips(&client).await;
    assert_eq!(client.counters().streams_opened, 8);
    assert_eq!(server.counters().streams_accepted, 8);
    assert!(client.counters().bytes_out >= 8 * 300_000);
    assert!(server.counters().bytes_in >= 8 * 300_000);
}

/// Behind [`shared`], a stream opened on one side is accepted and read
/// on the other.
pub async fn it_works_behind_the_shared_handle<E: Ends>() {
    let (client, server) = pair::<E>();
    let (client, server) = (shared(client), shared(server));
    let mut s = client.open().await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut peer = server.accept().await.unwrap();
    let mut buf = [0u8; 4];
    peer.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

/// Closing one end ends the other: no more accepts, no more opens.
pub async fn closing_one_side_ends_the_other<E: Ends>() {
    let (client, server) = pair::<E>();
    client.close();
    tokio::time::timeout(LONG, client.closed())
        .await
        .expect("the closing end ended");
    assert!(client.is_closed());
    assert!(server.accept().await.is_none());
    tokio::time::timeout(LONG, server.closed())
        .await
        .expect("the other end ended");
    assert!(matches!(client.open().await, Err(MuxError::Closed)));
}

/// Closing a connection ends a read waiting on one of its streams with an
/// error (`ConnectionAborted`; the `yamux` crate over a pipe says
/// `WriteZero`), even when the peer is silent.
pub async fn closing_ends_the_waits_on_the_connections_streams<E: Ends>() {
    let (client, server) = pair::<E>();
    let mut s = client.open().await.unwrap();
    s.write_all(b"x").await.unwrap();
    let _peer = server.accept().await.unwrap();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        s.read(&mut buf).await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.close();
    let read = tokio::time::timeout(LONG, reader)
        .await
        .expect("a read on a closed connection's stream hung")
        .unwrap();
    let err = read.expect_err("a read on a closed connection's stream failed");
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::ConnectionAborted | io::ErrorKind::WriteZero
        ),
        "{err}"
    );
}

/// Dropping the last handle ends the connection, as closing does: the
/// peer's accept ends (after the streams already opened, if they made it
/// out before the end).
pub async fn dropping_the_handle_closes_the_connection<E: Ends>() {
    let (client, server) = pair::<E>();
    let mut stream = client.open().await.unwrap();
    stream.write_all(b"x").await.unwrap();
    drop(client);
    tokio::time::timeout(LONG, async { while server.accept().await.is_some() {} })
        .await
        .expect("the accept ended");
    tokio::time::timeout(LONG, server.closed())
        .await
        .expect("the connection ended");
}

/// Past [`MAX_OPEN_STREAMS`] of one side's streams open at once, the next
/// open waits (it does not fail, nor end the connection) until one ends.
pub async fn opens_past_the_limit_wait_for_a_stream_to_end<E: Ends>() {
    let (client, server) = pair::<E>();
    let server = Arc::new(server);
    let acceptor = server.clone();
    // The peer answers each stream with its byte, and holds it.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(mut s) = acceptor.accept().await {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b).await.unwrap();
            held.push(s);
        }
    });
    let mut open = Vec::new();
    for _ in 0..MAX_OPEN_STREAMS {
        let mut s = client.open().await.unwrap();
        s.write_all(b"x").await.unwrap();
        open.push(s);
    }
    for s in &mut open {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
    }
    let waiting = tokio::time::timeout(SHORT, client.open()).await;
    assert!(waiting.is_err(), "an open past the limit must wait");
    open.pop();
    let mut s = tokio::time::timeout(LONG, client.open())
        .await
        .expect("a slot came free")
        .unwrap();
    s.write_all(b"y").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"y");
    assert!(!client.is_closed() && !server.is_closed());
}

/// A reader that stops reading holds its sender back: the stream's window
/// (256 KiB) goes out, and at most one write more.
pub async fn a_reader_that_stops_reading_holds_back_the_sender<E: Ends>() {
    let (client, server) = pair::<E>();
    let server_task = tokio::spawn(async move {
        let s = server.accept().await.unwrap();
        // Never read; keep the stream and the connection alive.
        std::future::pending::<()>().await;
        drop((s, server));
    });
    let mut s = client.open().await.unwrap();
    let chunk = vec![7u8; 16 * 1024];
    // The window is the peer's promise: it goes out, however slow the
    // machine.
    let window = vec![7u8; 256 * 1024];
    tokio::time::timeout(LONG, s.write_all(&window))
        .await
        .expect("the window went out")
        .unwrap();
    let mut written = window.len();
    while let Ok(Ok(())) = tokio::time::timeout(SHORT, s.write_all(&chunk)).await {
        written += chunk.len();
        assert!(written < 64 << 20, "the sender was never held back");
    }
    let bound = 256 * 1024 + chunk.len();
    assert!(
        written <= bound,
        "{written} bytes went out, more than {bound}"
    );
    assert!(!client.is_closed());
    server_task.abort();
}

/// Small frames of ten streams, written before the driver runs, leave in
/// one write of a WebSocket transport ([`batching`]). Needs a
/// current-thread runtime.
pub async fn frames_of_many_streams_leave_in_one_write<E: Ends>() {
    let (a, b) = tokio::io::duplex(1 << 20);
    let (socket, writes) = batching::CountedWrites::new(a);
    let config = MuxConfig::default();
    let client = E::client(WsStream::new(socket, Role::Client, &[]), &config);
    let server = E::server(WsStream::new(b, Role::Server, &[]), &config);
    let sent = batching::writes_for_ten_streams(&client, &server, &writes).await;
    assert_eq!(sent, 1, "ten frames took {sent} writes");
}

/// One `#[tokio::test]` per check of [`mux::conformance`](crate::mux::conformance)
/// for the [`Ends`] given, in the module where it is invoked: on a runtime
/// of two worker threads (the driver and the streams' tasks run at once),
/// but for the check that needs one thread.
#[macro_export]
macro_rules! mux_conformance_tests {
    ($ends:ty) => {
        $crate::mux_conformance_tests!(@each $ends, (flavor = "multi_thread", worker_threads = 2); streams_carry_bytes_both_ways, it_works_behind_the_shared_handle, closing_one_side_ends_the_other, closing_ends_the_waits_on_the_connections_streams, dropping_the_handle_closes_the_connection, opens_past_the_limit_wait_for_a_stream_to_end, a_reader_that_stops_reading_holds_back_the_sender);
        $crate::mux_conformance_tests!(@each $ends, (flavor = "current_thread"); frames_of_many_streams_leave_in_one_write);
    };
    (@each $ends:ty, $flavor:tt; $($check:ident),*) => {
        $(
            #[tokio::test $flavor]
            async fn $check() {
                $crate::mux::conformance::$check::<$ends>().await;
            }
        )*
    };
}
