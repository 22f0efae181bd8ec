//! WebSocket frame headers (RFC 6455, section 5.2) and masking.
//!
//! Only the header is parsed here: a frame's payload is streamed by
//! [`WsStream`](super::WsStream) without being buffered whole, so a header
//! is all a peer can make us hold (at most [`MAX_HEADER_BYTES`]).

/// The longest frame header: 2 bytes, an 8-byte length and a 4-byte mask.
pub const MAX_HEADER_BYTES: usize = 14;

/// Longest payload of a control frame (Close, Ping, Pong).
pub const MAX_CONTROL_PAYLOAD_BYTES: usize = 125;

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// The next fragment of a message.
    Continuation,
    /// A UTF-8 text message (skipped by the tunnel).
    Text,
    /// A binary message: the tunnel's bytes.
    Binary,
    /// The closing handshake.
    Close,
    /// A ping, answered with a pong.
    Ping,
    /// A pong.
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// Close, Ping and Pong.
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The last fragment of its message.
    pub fin: bool,
    /// What the frame carries.
    pub opcode: Opcode,
    /// The masking key, on frames a client sends.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub len: u64,
}

/// Why a header is refused. Each is a protocol error: the connection is
/// closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// An RSV bit is set, and no extension was agreed.
    #[error("reserved bits set")]
    Reserved,
    /// An opcode RFC 6455 does not define.
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    /// A control frame that is fragmented or longer than 125 bytes.
    #[error("malformed control frame")]
    Control,
    /// A length that is not in its shortest form, or has the top bit set.
    #[error("malformed payload length")]
    Length,
}

impl FrameHeader {
    /// Parses a header from the start of `buf`: the header and its length
    /// in bytes, or `None` when `buf` holds only part of it.
    pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameError> {
        let [b0, b1, rest @ ..] = buf else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err(FrameError::Reserved);
        }
        let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(FrameError::Opcode(b0 & 0x0F))?;
        let fin = b0 & 0x80 != 0;
        let masked = b1 & 0x80 != 0;
        let (len, len_bytes) = match b1 & 0x7F {
            126 => {
                let Some(b) = rest.get(..2) else {
                    return Ok(None);
                };
                let len = u64::from(u16::from_be_bytes([b[0], b[1]]));
                if len < 126 {
                    return Err(FrameError::Length);
                }
                (len, 2)
            }
            127 => {
                let Some(b) = rest.get(..8) else {
                    return Ok(None);
                };
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let len = u64::from_be_bytes(a);
                if len <= u64::from(u16::MAX) || len >> 63 != 0 {
                    return Err(FrameError::Length);
                }
                (len, 8)
            }
            n => (u64::from(n), 0),
        };
        if opcode.is_control() && (!fin || len > MAX_CONTROL_PAYLOAD_BYTES as u64) {
            return Err(FrameError::Control);
        }
        let mut used = 2 + len_bytes;
        let mask = if masked {
            let Some(b) = buf.get(used..used + 4) else {
                return Ok(None);
            };
            used += 4;
            Some([b[0], b[1], b[2], b[3]])
        } else {
            None
        };
        Ok(Some((
            FrameHeader {
                fin,
                opcode,
                mask,
                len,
            },
            used,
        )))
    }

    /// Appends this header to `out`, in its shortest form.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(u8::from(self.fin) << 7 | self.opcode.bits());
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        if self.len < 126 {
            out.push(mask_bit | self.len as u8);
        } else if let Ok(len) = u16::try_from(self.len) {
            out.push(mask_bit | 126);
            out.extend_from_slice(&len.to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&self.len.to_be_bytes());
        }
        if let Some(mask) = self.mask {
            out.extend_from_slice(&mask);
        }
    }
}

/// XORs `buf` with `key`, starting at byte `offset` of the key's cycle
/// (a payload read in pieces continues where the last piece ended).
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let mut key = key;
    key.rotate_left(offset % 4);
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Appends `payload` XORed with `key` to `out` (a copy, then the mask
/// applied to it in place, while it is still in cache).
pub fn extend_masked(out: &mut Vec<u8>, payload: &[u8], key: [u8; 4]) {
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(fin: bool, opcode: Opcode, mask: Option<[u8; 4]>, len: u64) -> FrameHeader {
        FrameHeader {
            fin,
            opcode,
            mask,
            len,
        }
    }

    #[test]
    fn headers_round_trip_in_their_shortest_form() {
        for (len, size) in [
            (0, 2),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
            (1 << 40, 10),
        ] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let h = header(true, Opcode::Binary, mask, len);
                let mut out = Vec::new();
                h.encode_into(&mut out);
                let expect = size + if mask.is_some() { 4 } else { 0 };
                assert_eq!(out.len(), expect, "{len}");
                assert_eq!(FrameHeader::parse(&out), Ok(Some((h, expect))));
                // Every strict prefix is incomplete, not an error.
                for cut in 0..out.len() {
                    assert_eq!(FrameHeader::parse(&out[..cut]), Ok(None), "{len} cut {cut}");
                }
            }
        }
    }

    #[test]
    fn what_rfc_6455_forbids_is_refused() {
        assert_eq!(FrameHeader::parse(&[0xC2, 0x00]), Err(FrameError::Reserved));
        assert_eq!(
            FrameHeader::parse(&[0x83, 0x00]),
            Err(FrameError::Opcode(3))
        );
        // A fragmented ping, and a ping of 126 bytes.
        assert_eq!(FrameHeader::parse(&[0x09, 0x00]), Err(FrameError::Control));
        assert_eq!(
            FrameHeader::parse(&[0x89, 126, 0, 126]),
            Err(FrameError::Control)
        );
        // Lengths not in their shortest form, and the top bit of 64.
        assert_eq!(
            FrameHeader::parse(&[0x82, 126, 0, 125]),
            Err(FrameError::Length)
        );
        assert_eq!(
            FrameHeader::parse(&[0x82, 127, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]),
            Err(FrameError::Length)
        );
        assert_eq!(
            FrameHeader::parse(&[0x82, 127, 0x80, 0, 0, 0, 0, 1, 0, 0]),
            Err(FrameError::Length)
        );
    }

    #[test]
    fn masking_in_pieces_equals_masking_at_once() {
        let key = [0xA1, 0xB2, 0xC3, 0xD4];
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        for (i, b) in whole.iter().enumerate() {
            assert_eq!(*b, data[i] ^ key[i % 4]);
        }
        let mut pieces = data.clone();
        let mut at = 0;
        for step in [1, 3, 7, 8, 9, 100, 500] {
            let end = (at + step).min(pieces.len());
            apply_mask(&mut pieces[at..end], key, at);
            at = end;
        }
        apply_mask(&mut pieces[at..], key, at);
        assert_eq!(pieces, whole);
        let mut copied = Vec::new();
        extend_masked(&mut copied, &data, key);
        assert_eq!(copied, whole);
    }
}
