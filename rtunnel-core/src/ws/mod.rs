//! The tunnel's WebSocket: an upgraded connection carrying a byte stream.
//!
//! The agent and `forward` reach the server over one WebSocket each; yamux
//! runs inside it. Once the upgrade is done ([`handshake`] on the client,
//! the server's HTTP stack on the other end), [`WsStream`] frames the
//! bytes itself (RFC 6455, section 5) instead of going through a message
//! API: it reads payloads straight into the multiplexer's buffers, writes
//! a frame's header and body in one system call, and holds no buffer while
//! the connection is idle. Through a general-purpose WebSocket library
//! every byte was copied two or three times more at each end, and every
//! tunnel kept the largest buffers it ever needed.
//!
//! - Binary frames carry the bytes, in order, however they are fragmented
//!   into messages; Ping is answered, Pong and Text are skipped. A Close
//!   frame, or the connection's end between frames, is end of file.
//! - Writes are framed into one buffer and sent on flush, so a yamux frame
//!   (header and body written separately) leaves in one system call; a
//!   server's large write leaves from the caller's buffer, in one vectored
//!   write with what is queued before it.
//! - The close codes sent and received are shared through a
//!   [`CloseHandle`].

pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
mod stream;

pub(crate) use stream::DIRECT_WRITE_MIN_BYTES;
pub use stream::{READ_AHEAD_BYTES, Role, WsStream};

/// The longest frame payload written: one full yamux data frame, header
/// included, and room for the small frames (window updates, pings) that
/// may be written with it.
pub const MAX_WRITE_BUFFER_BYTES: usize = crate::mux::DEFAULT_SPLIT_SEND_BYTES + 4096;

/// Largest WebSocket frame either end accepts on a tunnel (close code
/// 1009 past it). Leaves room for [`MAX_WRITE_BUFFER_BYTES`] plus any yamux
/// frame; payloads are streamed, so this is not memory held.
pub const MAX_WS_MESSAGE_BYTES: usize = 2 * 1024 * 1024;

/// WebSocket close code telling an agent its session was closed on purpose
/// and it must not reconnect.
pub const CLOSE_SESSION_CLOSED: u16 = 4000;

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

#[cfg(test)]
mod tests;
