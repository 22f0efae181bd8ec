//! The yamux frame header: twelve bytes in front of every frame.
//!
//! ```text
//! version (u8, 0) | type (u8) | flags (u16) | stream id (u32) | length (u32)
//! ```
//!
//! All big-endian. `length` is the body's length for a data frame, the
//! credit granted for a window update, an opaque value for a ping and the
//! error code of a go-away; only data frames carry a body.

use std::fmt;

/// Bytes of a frame header.
pub const HEADER_BYTES: usize = 12;

/// The largest data frame body accepted, whatever a stream's window:
/// yamux's own limit, so any yamux peer's frames fit.
pub const MAX_BODY_BYTES: u32 = 1024 * 1024;

/// The session-wide stream id, of pings and go-aways.
pub const SESSION_ID: u32 = 0;

/// Flag: the first frame of a new stream.
pub const SYN: u16 = 1;
/// Flag: the acknowledgement of a new stream, or the answer to a ping.
pub const ACK: u16 = 2;
/// Flag: the sender will send no more on this stream (half-close).
pub const FIN: u16 = 4;
/// Flag: the stream is reset: neither side sends more.
pub const RST: u16 = 8;

/// A go-away's code: the connection ends normally.
pub const GO_AWAY_NORMAL: u32 = 0;
/// A go-away's code: the peer broke the protocol.
pub const GO_AWAY_PROTOCOL_ERROR: u32 = 1;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Stream data, `length` bytes of body.
    Data = 0,
    /// Credit for a stream's sender.
    WindowUpdate = 1,
    /// A ping, or its answer (ACK).
    Ping = 2,
    /// The connection ends.
    GoAway = 3,
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the frame is.
    pub kind: Kind,
    /// [`SYN`], [`ACK`], [`FIN`], [`RST`], or'ed.
    pub flags: u16,
    /// The stream, or [`SESSION_ID`].
    pub stream: u32,
    /// Body length, credit, ping value or go-away code, by `kind`.
    pub length: u32,
}

/// A header that cannot be read: the connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Only version 0 exists.
    #[error("unknown yamux version {0}")]
    Version(u8),
    /// Types go up to 3 (go-away).
    #[error("unknown yamux frame type {0}")]
    Kind(u8),
    /// A data frame longer than [`MAX_BODY_BYTES`].
    #[error("yamux data frame of {0} bytes, more than the 1 MiB allowed")]
    TooLarge(u32),
    /// A data frame or window update for stream 0, which is no stream.
    #[error("yamux {0:?} frame on stream 0")]
    NoStream(Kind),
}

impl Header {
    /// A header of `kind` with `flags` for `stream`.
    pub fn new(kind: Kind, flags: u16, stream: u32, length: u32) -> Self {
        Header {
            kind,
            flags,
            stream,
            length,
        }
    }

    /// Whether `flag` is set.
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// The header's twelve bytes.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[1] = self.kind as u8;
        b[2..4].copy_from_slice(&self.flags.to_be_bytes());
        b[4..8].copy_from_slice(&self.stream.to_be_bytes());
        b[8..12].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Reads a header, refusing what no yamux peer sends.
    pub fn parse(b: &[u8; HEADER_BYTES]) -> Result<Header, FrameError> {
        if b[0] != 0 {
            return Err(FrameError::Version(b[0]));
        }
        let kind = match b[1] {
            0 => Kind::Data,
            1 => Kind::WindowUpdate,
            2 => Kind::Ping,
            3 => Kind::GoAway,
            other => return Err(FrameError::Kind(other)),
        };
        let header = Header {
            kind,
            flags: u16::from_be_bytes([b[2], b[3]]),
            stream: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            length: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        };
        // Pings and go-aways are meant for stream 0, but yamux answers a
        // ping on any stream: so does this.
        if matches!(kind, Kind::Data | Kind::WindowUpdate) && header.stream == SESSION_ID {
            return Err(FrameError::NoStream(kind));
        }
        if kind == Kind::Data && header.length > MAX_BODY_BYTES {
            return Err(FrameError::TooLarge(header.length));
        }
        Ok(header)
    }

    /// Bytes of body that follow this header.
    pub fn body_len(&self) -> usize {
        match self.kind {
            Kind::Data => self.length as usize,
            _ => 0,
        }
    }
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} stream {} flags {:#x} length {}",
            self.kind, self.stream, self.flags, self.length
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        for header in [
            Header::new(Kind::Data, SYN | FIN, 7, 65_536),
            Header::new(Kind::WindowUpdate, ACK, 2, 262_144),
            Header::new(Kind::Ping, SYN, SESSION_ID, 42),
            Header::new(Kind::GoAway, 0, SESSION_ID, GO_AWAY_PROTOCOL_ERROR),
        ] {
            assert_eq!(Header::parse(&header.encode()), Ok(header));
        }
    }

    #[test]
    fn the_layout_is_yamuxs() {
        let b = Header::new(Kind::WindowUpdate, SYN, 0x0102_0304, 0x0a0b_0c0d).encode();
        assert_eq!(b, [0, 1, 0, 1, 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d]);
    }

    #[test]
    fn what_no_peer_sends_is_refused() {
        let mut b = Header::new(Kind::Data, 0, 1, 10).encode();
        b[0] = 1;
        assert_eq!(Header::parse(&b), Err(FrameError::Version(1)));
        let mut b = Header::new(Kind::Data, 0, 1, 10).encode();
        b[1] = 4;
        assert_eq!(Header::parse(&b), Err(FrameError::Kind(4)));
        let b = Header::new(Kind::Data, 0, 1, MAX_BODY_BYTES + 1).encode();
        assert_eq!(
            Header::parse(&b),
            Err(FrameError::TooLarge(MAX_BODY_BYTES + 1))
        );
        let b = Header::new(Kind::Data, 0, SESSION_ID, 1).encode();
        assert_eq!(Header::parse(&b), Err(FrameError::NoStream(Kind::Data)));
        // A window update's length is credit, not a body: any value goes.
        let b = Header::new(Kind::WindowUpdate, 0, 1, u32::MAX).encode();
        assert!(Header::parse(&b).is_ok());
    }
}
