//! [`WireMux`]: rtunnel's own implementation of yamux's wire format.
//!
//! It speaks the frames, flags, stream ids and flow control of yamux
//! (version 0) with every yamux peer, the `yamux` crate's
//! [`YamuxMux`](super::YamuxMux) included, so agents and nodes of any
//! version keep talking to each other. What it does differently is how
//! bytes move inside the process:
//!
//! - **Reads**: the driver reads each data frame body of 16 KiB or more
//!   from the transport straight into a buffer of its own, never zeroed,
//!   and hands it to its stream whole (smaller frames are read several at
//!   a time and copied into one buffer per stream, so a body held unread
//!   pins no other buffer, and a stream's unread one-byte frames cost
//!   about a byte each). A
//!   stream's read copies it once, into the caller's buffer; a relay takes
//!   it whole ([`ReadChunk`](crate::relay::ReadChunk)).
//! - **Writes**: a stream's write frames the caller's bytes and hands
//!   them straight to the transport (a WebSocket server writes them to the
//!   socket from the caller's buffer), with no copy of its own. Only when
//!   another stream or the driver holds the transport at that instant is
//!   the frame copied into the driver's queue instead.
//! - **Opens** need no round trip to the driver: the stream exists when
//!   [`open`](Mux::open) returns, and its SYN leaves with its first frame
//!   (its first data, typically). A stream the application
//!   [accepts](Mux::accept) is acknowledged with the first frame it sends
//!   (its reply), and an open waits while 256 of this side's are
//!   unacknowledged: yamux's own ways, so a burst of opens waits for the
//!   peer's acceptor.
//!
//! The same bounds as [`YamuxMux`](super::YamuxMux): each side keeps at
//! most [`MAX_OPEN_STREAMS`] streams of its own open (the next open
//! waits); a connection holds at most [`YAMUX_MAX_STREAMS`] (a stream the
//! peer opens past that is reset, and the connection carries on); inbound
//! streams waiting for [`accept`](Mux::accept) beyond
//! [`MAX_PENDING_INBOUND`] are reset; a stream's receive window starts at
//! 256 KiB and doubles, while the peer runs out of credit and the reader
//! keeps up, out of the connection's
//! [`window_budget`](MuxConfig::window_budget); the driver stops reading
//! while 64 KiB of its own answers (pongs, resets) wait unsent, so a peer
//! that never reads cannot make them pile up. Frames are checked as they
//! arrive ([`frame::Header::parse`]); a peer that sends more than its
//! window, reuses a stream id or sends a frame no yamux peer sends gets a
//! go-away with the protocol-error code, and the connection ends.
//!
//! ```
//! use rtunnel_core::mux::{Mux, MuxConfig, wire::WireMux};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (a, b) = tokio::io::duplex(64 * 1024);
//! let dialing = WireMux::client(a, &MuxConfig::default());
//! let answering = WireMux::server(b, &MuxConfig::default());
//! let mut out = dialing.open().await.unwrap();
//! out.write_all(b"ping").await.unwrap();
//! let mut inbound = answering.accept().await.unwrap();
//! let mut buf = [0u8; 4];
//! inbound.read_exact(&mut buf).await.unwrap();
//! assert_eq!(&buf, b"ping");
//! # }
//! ```

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use async_trait::async_trait;
use bytes::BytesMut;
use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::relay::WriteInPlace;

use super::{
    MAX_OPEN_STREAMS, MAX_PENDING_INBOUND, Mux, MuxConfig, MuxCounters, MuxError, YAMUX_MAX_STREAMS,
};

mod conn;
mod driver;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
mod stream;

#[cfg(test)]
mod tests;

use conn::{Conn, Counters, INITIAL_WINDOW, MAX_ACK_BACKLOG, Plain, Sink, State, StreamState};
pub use stream::WireStream;

/// rtunnel's yamux, driven by its own task; see the [module](self).
pub struct WireMux {
    conn: Arc<Conn>,
    open_slots: Arc<Semaphore>,
    inbound: tokio::sync::Mutex<mpsc::Receiver<WireStream>>,
}

impl std::fmt::Debug for WireMux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireMux")
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

impl WireMux {
    /// Runs the dialing side (odd stream ids; the side that opens the
    /// control stream).
    pub fn client<T>(io: T, config: &MuxConfig) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::spawn(Box::pin(Plain(io)), config, true)
    }

    /// Like [`client`](Self::client), over a transport that may take a
    /// data frame's body by changing it in place ([`WriteInPlace`]): a
    /// WebSocket client ([`WsStream`](crate::ws::WsStream)) masks the
    /// bytes a relay wrote in the relay's own buffer instead of copying
    /// them first.
    pub fn client_in_place<T>(io: T, config: &MuxConfig) -> Self
    where
        T: AsyncRead + WriteInPlace + Send + 'static,
    {
        Self::spawn(Box::pin(io), config, true)
    }

    /// Runs the accepting side (even stream ids).
    pub fn server<T>(io: T, config: &MuxConfig) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::spawn(Box::pin(Plain(io)), config, false)
    }

    fn spawn(io: Pin<Box<dyn conn::Transport>>, config: &MuxConfig, client: bool) -> Self {
        let conn = Arc::new(Conn {
            sink: Mutex::new(Sink::new(io)),
            state: Mutex::new(State {
                streams: HashMap::new(),
                next_id: if client { 1 } else { 2 },
                queued: BytesMut::new(),
                write_waiters: Vec::new(),
                unacked: 0,
                ack_waiters: Vec::new(),
                ended: None,
                budget: config.window_budget,
                unaccepted: 0,
            }),
            counters: Counters::default(),
            split: config
                .split_send_size
                .clamp(1, frame::MAX_BODY_BYTES as usize),
            flush_wanted: AtomicBool::new(false),
            frames: AtomicU32::new(0),
            driver: AtomicWaker::new(),
            shutdown: CancellationToken::new(),
            done: CancellationToken::new(),
        });
        let (in_tx, in_rx) = mpsc::channel(MAX_PENDING_INBOUND);
        let driver = driver::Driver {
            conn: conn.clone(),
            inbound: in_tx,
            peer_ids_odd: !client,
            max_streams: YAMUX_MAX_STREAMS,
            rbuf: BytesMut::new(),
            large: None,
            yielded: false,
            batching: 0,
            answers: 0,
        };
        tokio::spawn(driver.run());
        WireMux {
            conn,
            open_slots: Arc::new(Semaphore::new(MAX_OPEN_STREAMS)),
            inbound: tokio::sync::Mutex::new(in_rx),
        }
    }
}

#[async_trait]
impl Mux for WireMux {
    type Stream = WireStream;

    async fn open(&self) -> Result<WireStream, MuxError> {
        let slot = tokio::select! {
            slot = self.open_slots.clone().acquire_owned() => slot.map_err(|_| MuxError::Closed)?,
            _ = self.conn.done.cancelled() => return Err(MuxError::Closed),
        };
        let id = poll_fn(|cx| {
            let mut st = self.conn.state();
            if st.ended.is_some() || self.conn.shutdown.is_cancelled() {
                return Poll::Ready(Err(MuxError::Closed));
            }
            if st.streams.len() >= YAMUX_MAX_STREAMS {
                return Poll::Ready(Err(MuxError::TooManyStreams));
            }
            if st.unacked >= MAX_ACK_BACKLOG {
                if !st.ack_waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    st.ack_waiters.push(cx.waker().clone());
                }
                return Poll::Pending;
            }
            let id = st.next_id;
            let Some(next) = id.checked_add(2) else {
                return Poll::Ready(Err(MuxError::Yamux(
                    "no stream ids left on this connection".into(),
                )));
            };
            st.next_id = next;
            st.unacked += 1;
            // The SYN leaves with the stream's first frame.
            let stream = StreamState::new(INITIAL_WINDOW, false, frame::SYN);
            st.streams.insert(id, stream);
            Poll::Ready(Ok(id))
        })
        .await?;
        self.conn.counters.opened.fetch_add(1, Ordering::Relaxed);
        Ok(WireStream::new(self.conn.clone(), id, Some(slot)))
    }

    async fn accept(&self) -> Option<WireStream> {
        let stream = self.inbound.lock().await.recv().await?;
        // Acknowledged with the first frame the application sends on it, as
        // yamux does: the peer's opens wait (past its backlog) for this
        // side's acceptor, not for its driver.
        let mut st = self.conn.state();
        let State {
            streams,
            unaccepted,
            ..
        } = &mut *st;
        if let Some(s) = streams.get_mut(&stream.id()) {
            s.flags |= frame::ACK;
            if std::mem::take(&mut s.waiting) {
                *unaccepted -= s.recv_len();
            }
        }
        drop(st);
        Some(stream)
    }

    fn close(&self) {
        self.conn.shutdown.cancel();
        self.conn.driver.wake();
    }

    async fn closed(&self) {
        self.conn.done.cancelled().await;
    }

    fn is_closed(&self) -> bool {
        self.conn.done.is_cancelled() || self.conn.shutdown.is_cancelled()
    }

    fn counters(&self) -> MuxCounters {
        self.conn.counters.snapshot()
    }
}

impl Drop for WireMux {
    fn drop(&mut self) {
        self.close();
    }
}
