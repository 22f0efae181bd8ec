//! A link: one multiplexed connection after its handshake, as a handle
//! and a driver.
//!
//! Every connection rtunnel speaks its protocol on (an agent's tunnel, an
//! operator's `forward` connection, both ends of each) is the same three
//! parts: the handshake on the control stream, the control channel
//! (heartbeats, control messages, `Close`), and the streams the peer opens.
//! [`dial`] and [`accept`] do the handshake; what they give is a [`Link`],
//! the cheap handle that opens streams and sends control messages, and a
//! [`LinkDriver`] that runs the control channel and hands each inbound
//! stream to a callback until the connection ends.
//!
//! ```
//! use rtunnel_core::link::{self, LinkEnd};
//! use rtunnel_core::mux::{Mux, memory::MemoryMux, shared};
//! use std::time::Duration;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (near, far) = MemoryMux::pair();
//! let server = tokio::spawn(async move {
//!     let incoming = link::accept(shared(far), Duration::from_secs(5)).await.unwrap();
//!     let session = rtunnel_core::ids::SessionId::new();
//!     let (link, driver) = incoming
//!         .welcome(session, Duration::from_secs(15), None)
//!         .await
//!         .unwrap();
//!     // Echo every stream the peer opens, until the peer says goodbye.
//!     let end = driver
//!         .run(|mut stream| {
//!             tokio::spawn(async move {
//!                 let (mut r, mut w) = tokio::io::split(&mut stream);
//!                 let _ = tokio::io::copy(&mut r, &mut w).await;
//!             });
//!         })
//!         .await;
//!     drop(link);
//!     end
//! });
//! let dialed = link::dial(shared(near), "example/1", None).await.unwrap();
//! let link = dialed.link;
//! tokio::spawn(dialed.driver.run(|_| {}));
//! let mut stream = link.open().await.unwrap();
//! stream.write_all(b"hello").await.unwrap();
//! let mut buf = [0u8; 5];
//! stream.read_exact(&mut buf).await.unwrap();
//! assert_eq!(&buf, b"hello");
//! link.close(rtunnel_core::proto::CloseCode::Shutdown, "done").await;
//! assert!(matches!(server.await.unwrap(), LinkEnd::PeerClosed { .. }));
//! # }
//! ```

use std::time::Duration;

use tokio::sync::mpsc;

use crate::control::{
    ControlChannel, ControlEnd, HandshakeError, Hello, client_handshake, send_welcome,
    server_handshake,
};
use crate::frame::{FrameError, write_frame};
use crate::ids::SessionId;
use crate::mux::{MuxCounters, MuxError, MuxStream, SharedMux};
use crate::proto::{CloseCode, Control, Resume};

/// How a link ended: how its control channel ended, or the connection
/// under it.
pub type LinkEnd = ControlEnd;

/// The handle of a running link: opens streams, sends control messages,
/// closes. Clones share the connection.
#[derive(Clone)]
pub struct Link {
    mux: SharedMux,
    outbox: mpsc::Sender<Control>,
    session_id: SessionId,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("session_id", &self.session_id)
            .field("counters", &self.mux.counters())
            .finish_non_exhaustive()
    }
}

impl Link {
    /// The session the handshake named.
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// Opens a stream to the peer.
    pub async fn open(&self) -> Result<MuxStream, MuxError> {
        self.mux.open().await
    }

    /// Queues a control message for the peer; `false` once the control
    /// channel has ended.
    pub async fn send(&self, message: Control) -> bool {
        self.outbox.send(message).await.is_ok()
    }

    /// Tells the peer why the link closes; the driver ends with
    /// [`ControlEnd::LocalClose`] once the message is out. The connection
    /// itself stays up until [`Self::shutdown`] or the peer hangs up, so
    /// the message can arrive.
    ///
    /// Never waits: a peer that stopped reading fills the outbox, and then
    /// the connection is ended at once instead.
    pub async fn close(&self, code: CloseCode, reason: &str) {
        let close = Control::Close {
            code,
            reason: reason.to_owned(),
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.outbox.try_send(close) {
            self.mux.close();
        }
    }

    /// Ends the connection now; every stream on it fails.
    pub fn shutdown(&self) {
        self.mux.close();
    }

    /// Resolves once the connection has ended.
    pub async fn closed(&self) {
        self.mux.closed().await;
    }

    /// Whether the connection has ended or is closing.
    pub fn is_closed(&self) -> bool {
        self.mux.is_closed()
    }

    /// Whether `other` is a handle of the same connection.
    pub fn same_connection(&self, other: &Link) -> bool {
        std::sync::Arc::ptr_eq(&self.mux, &other.mux)
    }

    /// The connection's counters.
    pub fn counters(&self) -> MuxCounters {
        self.mux.counters()
    }
}

/// Runs a link's control channel and takes the streams the peer opens;
/// see [`Self::run`].
pub struct LinkDriver {
    mux: SharedMux,
    control: MuxStream,
    heartbeat: Duration,
    channel: ControlChannel,
    on_message: Option<Box<dyn FnMut(Control) + Send>>,
}

impl std::fmt::Debug for LinkDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkDriver")
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

impl LinkDriver {
    fn new(
        mux: SharedMux,
        control: MuxStream,
        heartbeat: Duration,
    ) -> (Self, mpsc::Sender<Control>) {
        let channel = ControlChannel::new();
        let outbox = channel.outbox.clone();
        let driver = LinkDriver {
            mux,
            control,
            heartbeat,
            channel,
            on_message: None,
        };
        (driver, outbox)
    }

    /// The control stream, for what the protocol exchanges between the
    /// handshake and the heartbeats (the agent's manifest).
    pub fn control_mut(&mut self) -> &mut MuxStream {
        &mut self.control
    }

    /// Control messages other than heartbeats and `Close` go to `f`
    /// (ignored, logged at debug, without it).
    pub fn on_message(mut self, f: impl FnMut(Control) + Send + 'static) -> Self {
        self.on_message = Some(Box::new(f));
        self
    }

    /// Runs heartbeats and control messages, and gives every stream the
    /// peer opens to `on_stream`, until the link ends; returns why.
    ///
    /// `on_stream` must not wait: spawn the stream's work. Streams are
    /// refused (dropped, which resets them) by a callback that drops them.
    /// The connection is not closed on return: the caller decides whether
    /// to let a last `Close` arrive first ([`Link::closed`]) or to end it
    /// now ([`Link::shutdown`]); dropping every handle ends it too.
    pub async fn run(self, mut on_stream: impl FnMut(MuxStream) + Send) -> LinkEnd {
        let LinkDriver {
            mux,
            control,
            heartbeat,
            channel,
            on_message,
        } = self;
        let on_message = on_message
            .unwrap_or_else(|| Box::new(|msg| tracing::debug!("control message ignored: {msg:?}")));
        let accept_loop = async {
            while let Some(stream) = mux.accept().await {
                on_stream(stream);
            }
        };
        tokio::select! {
            end = channel.run(control, heartbeat, on_message) => end,
            _ = accept_loop => ControlEnd::Lost("the connection closed".into()),
        }
    }
}

/// What [`dial`] gives: the link, its driver, and what the peer said.
#[derive(Debug)]
pub struct Dialed {
    /// The handle.
    pub link: Link,
    /// The driver; run it (after sending anything that must precede the
    /// heartbeats on [`LinkDriver::control_mut`]).
    pub driver: LinkDriver,
    /// For a tunnel: the token that resumes the session next time.
    pub reconnect_token: Option<String>,
}

/// Dialing side: opens the control stream on `mux` and does the handshake
/// (asking to resume a session if `resume` is given), within
/// [`HANDSHAKE_TIMEOUT`](crate::control::HANDSHAKE_TIMEOUT).
pub async fn dial(
    mux: SharedMux,
    software: &str,
    resume: Option<Resume>,
) -> Result<Dialed, HandshakeError> {
    let welcome = match client_handshake(&*mux, software, resume).await {
        Ok(welcome) => welcome,
        Err(e) => {
            mux.close();
            return Err(e);
        }
    };
    let (driver, outbox) = LinkDriver::new(mux.clone(), welcome.stream, welcome.heartbeat);
    Ok(Dialed {
        link: Link {
            mux,
            outbox,
            session_id: welcome.session_id,
        },
        driver,
        reconnect_token: welcome.reconnect_token,
    })
}

/// Accepting side: waits (at most `wait`) for the control stream and its
/// `Hello`. A version mismatch is answered and returned as an error.
pub async fn accept(mux: SharedMux, wait: Duration) -> Result<Incoming, HandshakeError> {
    match server_handshake(&*mux, wait).await {
        Ok((control, hello)) => Ok(Incoming {
            mux,
            control,
            hello,
        }),
        Err(e) => {
            mux.close();
            Err(e)
        }
    }
}

/// A connection whose peer said `Hello`, waiting for this side's answer.
pub struct Incoming {
    mux: SharedMux,
    control: MuxStream,
    hello: Hello,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("hello", &self.hello)
            .finish_non_exhaustive()
    }
}

impl Incoming {
    /// What the peer said.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Ends the connection without an answer.
    pub fn shutdown(self) {
        self.mux.close();
    }

    /// Answers `Welcome` for `session_id`; the link runs from here.
    pub async fn welcome(
        mut self,
        session_id: SessionId,
        heartbeat: Duration,
        reconnect_token: Option<String>,
    ) -> Result<(Link, LinkDriver), FrameError> {
        if let Err(e) =
            send_welcome(&mut self.control, session_id, heartbeat, reconnect_token).await
        {
            self.mux.close();
            return Err(e);
        }
        let (driver, outbox) = LinkDriver::new(self.mux.clone(), self.control, heartbeat);
        let link = Link {
            mux: self.mux,
            outbox,
            session_id,
        };
        Ok((link, driver))
    }
}

/// Tells the peer why on `control` and ends nothing else: for a refusal
/// between the handshake and [`LinkDriver::run`].
pub async fn send_close(control: &mut MuxStream, code: CloseCode, reason: &str) {
    let _ = write_frame(
        control,
        &Control::Close {
            code,
            reason: reason.to_owned(),
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::memory::MemoryMux;
    use crate::mux::{MuxConfig, WireMux, shared};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn memory() -> (SharedMux, SharedMux) {
        let (a, b) = MemoryMux::pair();
        (shared(a), shared(b))
    }

    fn yamux() -> (SharedMux, SharedMux) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        let cfg = MuxConfig::default();
        (
            shared(WireMux::client(a, &cfg)),
            shared(WireMux::server(b, &cfg)),
        )
    }

    /// Handshake, a stream each way, a control message, and `Close`
    /// arriving as the peer's end, over one transport.
    async fn a_link_carries_streams_messages_and_close((near, far): (SharedMux, SharedMux)) {
        let session = SessionId::new();
        let server = tokio::spawn(async move {
            let incoming = accept(far, Duration::from_secs(5)).await.unwrap();
            assert_eq!(incoming.hello().software, "test/1");
            let (link, driver) = incoming
                .welcome(session, Duration::from_secs(5), Some("token".into()))
                .await
                .unwrap();
            let (seen_tx, mut seen) = mpsc::unbounded_channel();
            let driver = driver.on_message(move |msg| {
                let _ = seen_tx.send(msg);
            });
            let opener = link.clone();
            let run = tokio::spawn(driver.run(|mut stream| {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4];
                    stream.read_exact(&mut buf).await.unwrap();
                    stream.write_all(&buf).await.unwrap();
                });
            }));
            // A stream the accepting side opens.
            let mut out = opener.open().await.unwrap();
            out.write_all(b"back").await.unwrap();
            let message = seen.recv().await.unwrap();
            (run.await.unwrap(), message)
        });
        let dialed = dial(near, "test/1", None).await.unwrap();
        assert_eq!(dialed.link.session_id(), session);
        assert_eq!(dialed.reconnect_token.as_deref(), Some("token"));
        let link = dialed.link;
        let (inbound_tx, mut inbound) = mpsc::unbounded_channel();
        let driver = tokio::spawn(dialed.driver.run(move |s| {
            let _ = inbound_tx.send(s);
        }));
        let mut s = link.open().await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        let mut from_server = inbound.recv().await.unwrap();
        from_server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"back");
        assert!(
            link.send(Control::Manifest {
                services: Vec::new()
            })
            .await
        );
        link.close(CloseCode::Shutdown, "bye").await;
        assert!(matches!(
            driver.await.unwrap(),
            ControlEnd::LocalClose(CloseCode::Shutdown)
        ));
        let (end, message) = server.await.unwrap();
        assert!(matches!(message, Control::Manifest { .. }));
        match end {
            ControlEnd::PeerClosed { code, reason } => {
                assert_eq!(code, CloseCode::Shutdown);
                assert_eq!(reason, "bye");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_link_over_yamux() {
        a_link_carries_streams_messages_and_close(yamux()).await;
    }

    #[tokio::test]
    async fn a_link_over_memory() {
        a_link_carries_streams_messages_and_close(memory()).await;
    }

    #[tokio::test]
    async fn a_driver_ends_when_the_connection_does() {
        let (near, far) = memory();
        let server = tokio::spawn(async move {
            let incoming = accept(far, Duration::from_secs(5)).await.unwrap();
            let (link, driver) = incoming
                .welcome(SessionId::new(), Duration::from_secs(60), None)
                .await
                .unwrap();
            let end = driver.run(drop).await;
            (link, end)
        });
        let dialed = dial(near, "test/1", None).await.unwrap();
        dialed.link.shutdown();
        let (_link, end) = server.await.unwrap();
        assert!(matches!(end, ControlEnd::Lost(_)), "{end:?}");
    }

    #[tokio::test]
    async fn closing_a_link_whose_peer_stopped_reading_ends_it_at_once() {
        let (near, far) = memory();
        let server = tokio::spawn(async move {
            let incoming = accept(far, Duration::from_secs(5)).await.unwrap();
            incoming
                .welcome(SessionId::new(), Duration::from_secs(60), None)
                .await
                .unwrap()
        });
        let dialed = dial(near, "test/1", None).await.unwrap();
        let (_server_link, _server_driver) = server.await.unwrap();
        // The dialer's driver never runs: nothing drains its outbox.
        let link = dialed.link;
        while link
            .outbox
            .try_send(Control::Manifest {
                services: Vec::new(),
            })
            .is_ok()
        {}
        tokio::time::timeout(
            Duration::from_secs(5),
            link.close(CloseCode::Shutdown, "bye"),
        )
        .await
        .expect("close waited on a full outbox");
        assert!(link.is_closed());
    }

    #[tokio::test]
    async fn a_silent_dialer_fails_the_accept_in_time() {
        let (_near, far) = memory();
        let err = accept(far.clone(), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, HandshakeError::Timeout(_)), "{err}");
        assert!(far.is_closed());
    }
}
