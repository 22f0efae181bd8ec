//! The control stream: handshake, then heartbeats and control messages.
//!
//! The dialing side opens the control stream as its first stream and sends
//! [`Control::Hello`]; the accepting side answers [`Control::Welcome`] or
//! [`Control::Close`] with [`CloseCode::VersionMismatch`]. Afterwards
//! [`ControlChannel::run`] sends a heartbeat every interval and declares the
//! peer dead when nothing arrives for [`MISSED_HEARTBEATS`] intervals.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use crate::frame::{FrameError, read_frame, write_frame};
use crate::mux::{Mux, MuxError};
use crate::proto::{CloseCode, Control, MAX_CONTROL_FRAME_BYTES, PROTOCOL_VERSION, Resume};

/// How long a peer has to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default interval between heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);

/// A peer silent for this many heartbeat intervals is considered dead.
pub const MISSED_HEARTBEATS: u32 = 3;

/// Why the handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer speaks another protocol version.
    #[error(
        "protocol version mismatch: this side speaks version {ours}, the peer speaks version {theirs}"
    )]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// The peer refused the tunnel with a reason.
    #[error("the peer closed the tunnel: {code}{}", if reason.is_empty() { String::new() } else { format!(" ({reason})") })]
    Refused {
        /// The peer's close code.
        code: CloseCode,
        /// The peer's reason.
        reason: String,
    },
    /// The peer did not finish the handshake in time.
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The peer sent an unexpected message.
    #[error("unexpected message during the handshake: {0}")]
    Unexpected(String),
    /// The control stream failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The multiplexed connection failed.
    #[error(transparent)]
    Mux(#[from] MuxError),
}

/// What the accepting side learned from a successful handshake.
#[derive(Debug)]
pub struct Hello {
    /// The peer's protocol version.
    pub version: u16,
    /// The peer's software string.
    pub software: String,
    /// The session an agent asks to get back.
    pub resume: Option<Resume>,
}

/// What the dialing side learned from a successful handshake.
#[derive(Debug)]
pub struct Welcome<S> {
    /// The control stream, for [`ControlChannel::run`].
    pub stream: S,
    /// The session this connection belongs to.
    pub session_id: crate::ids::SessionId,
    /// How often to send heartbeats.
    pub heartbeat: Duration,
    /// For a tunnel: the token that resumes the session next time.
    pub reconnect_token: Option<String>,
}

/// Dialing side: opens the control stream, sends `Hello` (asking to resume a
/// session if `resume` is given), waits for `Welcome`.
pub async fn client_handshake<M: Mux + ?Sized>(
    mux: &M,
    software: &str,
    resume: Option<Resume>,
) -> Result<Welcome<M::Stream>, HandshakeError> {
    let fut = async {
        let mut stream = mux.open().await?;
        write_frame(
            &mut stream,
            &Control::Hello {
                version: PROTOCOL_VERSION,
                software: software.to_owned(),
                resume,
            },
        )
        .await?;
        match read_frame::<Control, _>(&mut stream, MAX_CONTROL_FRAME_BYTES).await? {
            Control::Welcome {
                version,
                session_id,
                heartbeat_interval_ms,
                reconnect_token,
            } if version == PROTOCOL_VERSION => Ok(Welcome {
                stream,
                session_id,
                heartbeat: Duration::from_millis(heartbeat_interval_ms.clamp(100, 3_600_000)),
                reconnect_token,
            }),
            Control::Welcome { version, .. } => Err(HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: version,
            }),
            Control::Close { code, reason } => Err(HandshakeError::Refused { code, reason }),
            other => Err(HandshakeError::Unexpected(format!("{other:?}"))),
        }
    };
    timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| HandshakeError::Timeout(HANDSHAKE_TIMEOUT))?
}

/// Accepting side: waits for the control stream and its `Hello`.
///
/// On a version mismatch the peer is told why with a `Close` before the
/// error is returned. The caller answers with [`send_welcome`].
pub async fn server_handshake<M: Mux + ?Sized>(
    mux: &M,
    wait: Duration,
) -> Result<(M::Stream, Hello), HandshakeError> {
    let fut = async {
        let mut stream = mux.accept().await.ok_or(MuxError::Closed)?;
        match read_frame::<Control, _>(&mut stream, MAX_CONTROL_FRAME_BYTES).await? {
            Control::Hello {
                version,
                software,
                resume,
            } if version == PROTOCOL_VERSION => Ok((
                stream,
                Hello {
                    version,
                    software,
                    resume,
                },
            )),
            Control::Hello { version, .. } => {
                let err = HandshakeError::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    theirs: version,
                };
                let _ = write_frame(
                    &mut stream,
                    &Control::Close {
                        code: CloseCode::VersionMismatch,
                        reason: err.to_string(),
                    },
                )
                .await;
                Err(err)
            }
            other => Err(HandshakeError::Unexpected(format!("{other:?}"))),
        }
    };
    timeout(wait, fut)
        .await
        .map_err(|_| HandshakeError::Timeout(wait))?
}

/// Accepting side: answers a good `Hello`.
pub async fn send_welcome<S: AsyncWrite + Unpin>(
    stream: &mut S,
    session_id: crate::ids::SessionId,
    heartbeat: Duration,
    reconnect_token: Option<String>,
) -> Result<(), FrameError> {
    write_frame(
        stream,
        &Control::Welcome {
            version: PROTOCOL_VERSION,
            session_id,
            heartbeat_interval_ms: heartbeat.as_millis() as u64,
            reconnect_token,
        },
    )
    .await
}

/// How a control channel ended.
#[derive(Debug)]
pub enum ControlEnd {
    /// The peer sent `Close`.
    PeerClosed {
        /// The peer's code.
        code: CloseCode,
        /// The peer's reason.
        reason: String,
    },
    /// This side sent `Close` through the outbox.
    LocalClose(CloseCode),
    /// Nothing arrived for [`MISSED_HEARTBEATS`] intervals.
    HeartbeatTimeout(Duration),
    /// The control stream ended or failed.
    Lost(String),
}

impl std::fmt::Display for ControlEnd {
    /// How the channel ended, for a log line: `the peer closed it: the
    /// server is restarting`, `no heartbeat for 30s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlEnd::PeerClosed { code, reason } if reason.is_empty() => {
                write!(f, "the peer closed it: {code}")
            }
            ControlEnd::PeerClosed { code, reason } => {
                write!(f, "the peer closed it: {code} ({reason})")
            }
            ControlEnd::LocalClose(code) => write!(f, "closed here: {code}"),
            ControlEnd::HeartbeatTimeout(d) => write!(f, "no heartbeat for {}s", d.as_secs()),
            ControlEnd::Lost(why) => write!(f, "lost: {why}"),
        }
    }
}

/// A running control stream after the handshake.
#[derive(Debug)]
pub struct ControlChannel {
    /// Send messages to the peer; a `Close` ends the channel after sending.
    pub outbox: mpsc::Sender<Control>,
    outbox_rx: mpsc::Receiver<Control>,
}

impl Default for ControlChannel {
    fn default() -> Self {
        Self::new()
    }
}

impl ControlChannel {
    /// Creates a channel; keep `outbox` clones before calling [`Self::run`].
    pub fn new() -> Self {
        let (outbox, outbox_rx) = mpsc::channel(16);
        ControlChannel { outbox, outbox_rx }
    }

    /// Runs heartbeats and message exchange on `stream` until it ends.
    ///
    /// Messages other than heartbeats and `Close` are passed to `on_message`.
    pub async fn run<S, F>(self, stream: S, interval: Duration, mut on_message: F) -> ControlEnd
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        F: FnMut(Control) + Send,
    {
        let ControlChannel {
            outbox,
            mut outbox_rx,
        } = self;
        drop(outbox);
        let (mut reader, mut writer) = tokio::io::split(stream);
        let (in_tx, mut in_rx) = mpsc::channel::<Result<Control, FrameError>>(16);
        // Reading a frame is not cancel-safe, so it runs in its own task.
        let reader_task = tokio::spawn(async move {
            loop {
                let msg = read_frame::<Control, _>(&mut reader, MAX_CONTROL_FRAME_BYTES).await;
                let failed = msg.is_err();
                if in_tx.send(msg).await.is_err() || failed {
                    break;
                }
            }
        });
        let dead_after = interval * MISSED_HEARTBEATS;
        let mut deadline = Instant::now() + dead_after;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0u64;
        let mut outbox_open = true;
        let end = loop {
            tokio::select! {
                _ = ticker.tick() => {
                    seq += 1;
                    if let Err(e) = write_frame(&mut writer, &Control::Heartbeat { seq }).await {
                        break ControlEnd::Lost(e.to_string());
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    break ControlEnd::HeartbeatTimeout(dead_after);
                }
                out = outbox_rx.recv(), if outbox_open => match out {
                    Some(msg) => {
                        let close = match &msg { Control::Close { code, .. } => Some(*code), _ => None };
                        let sent = write_frame(&mut writer, &msg).await;
                        if let Some(code) = close {
                            break ControlEnd::LocalClose(code);
                        }
                        if let Err(e) = sent {
                            break ControlEnd::Lost(e.to_string());
                        }
                    }
                    // Every outbox sender is gone; keep running on heartbeats.
                    None => outbox_open = false,
                },
                incoming = in_rx.recv() => match incoming {
                    Some(Ok(msg)) => {
                        deadline = Instant::now() + dead_after;
                        match msg {
                            Control::Heartbeat { .. } => {}
                            Control::Close { code, reason } => break ControlEnd::PeerClosed { code, reason },
                            other => on_message(other),
                        }
                    }
                    Some(Err(FrameError::Closed)) | None => break ControlEnd::Lost("control stream closed by the peer".into()),
                    Some(Err(e)) => break ControlEnd::Lost(e.to_string()),
                },
            }
        };
        reader_task.abort();
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::{MuxConfig, WireMux};

    fn pair() -> (WireMux, WireMux) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let cfg = MuxConfig::default();
        (WireMux::client(a, &cfg), WireMux::server(b, &cfg))
    }

    #[tokio::test]
    async fn handshake_succeeds_with_matching_versions() {
        let (client, server) = pair();
        let id = crate::ids::SessionId::new();
        let srv = tokio::spawn(async move {
            let (mut stream, hello) = server_handshake(&server, HANDSHAKE_TIMEOUT).await.unwrap();
            assert_eq!(hello.software, "test/1");
            send_welcome(&mut stream, id, Duration::from_secs(5), Some("tok".into()))
                .await
                .unwrap();
            (server, stream)
        });
        let welcome = client_handshake(&client, "test/1", None).await.unwrap();
        assert_eq!(welcome.session_id, id);
        assert_eq!(welcome.heartbeat, Duration::from_secs(5));
        assert_eq!(welcome.reconnect_token.as_deref(), Some("tok"));
        drop(srv.await.unwrap());
    }

    #[tokio::test]
    async fn version_mismatch_is_reported_on_both_ends() {
        let (client, server) = pair();
        let srv = tokio::spawn(async move {
            let err = server_handshake(&server, HANDSHAKE_TIMEOUT)
                .await
                .unwrap_err();
            (server, err)
        });
        let mut stream = client.open().await.unwrap();
        write_frame(
            &mut stream,
            &Control::Hello {
                version: PROTOCOL_VERSION + 1,
                software: "future".into(),
                resume: None,
            },
        )
        .await
        .unwrap();
        let reply: Control = read_frame(&mut stream, MAX_CONTROL_FRAME_BYTES)
            .await
            .unwrap();
        match reply {
            Control::Close { code, reason } => {
                assert_eq!(code, CloseCode::VersionMismatch);
                assert!(reason.contains("version 2"), "{reason}");
            }
            other => panic!("expected close, got {other:?}"),
        }
        let (_server, err) = srv.await.unwrap();
        assert!(matches!(
            err,
            HandshakeError::VersionMismatch { ours: 1, theirs: 2 }
        ));
    }

    #[tokio::test]
    async fn silent_peer_is_declared_dead_after_three_intervals() {
        let (a, b) = tokio::io::duplex(1024);
        let start = Instant::now();
        let interval = Duration::from_millis(50);
        let end = ControlChannel::new().run(a, interval, |_| {}).await;
        assert!(matches!(end, ControlEnd::HeartbeatTimeout(_)), "{end:?}");
        assert!(start.elapsed() >= interval * MISSED_HEARTBEATS);
        drop(b);
    }

    #[tokio::test]
    async fn heartbeats_keep_both_sides_alive_and_close_is_delivered() {
        let (a, b) = tokio::io::duplex(1024);
        let interval = Duration::from_millis(20);
        let left = ControlChannel::new();
        let left_outbox = left.outbox.clone();
        let right = tokio::spawn(ControlChannel::new().run(b, interval, |_| {}));
        let closer = tokio::spawn(async move {
            // Long enough for several missed-heartbeat windows to pass.
            tokio::time::sleep(interval * 10).await;
            left_outbox
                .send(Control::Close {
                    code: CloseCode::Shutdown,
                    reason: "bye".into(),
                })
                .await
                .unwrap();
        });
        let end = left.run(a, interval, |_| {}).await;
        assert!(matches!(end, ControlEnd::LocalClose(CloseCode::Shutdown)));
        closer.await.unwrap();
        match right.await.unwrap() {
            ControlEnd::PeerClosed { code, reason } => {
                assert_eq!(code, CloseCode::Shutdown);
                assert_eq!(reason, "bye");
            }
            other => panic!("expected peer close, got {other:?}"),
        }
    }
}
