//! What a terminal stream carries between the server and the agent, after
//! its [`StreamHeader`](crate::proto::StreamHeader) (which holds the
//! [`TerminalOpen`](crate::proto::TerminalOpen) request) and the agent's `ok`.
//!
//! Each message is one type byte, a big-endian `u32` length and the body:
//!
//! | type | direction | body |
//! | --- | --- | --- |
//! | `1` data | both | bytes: keystrokes to the PTY, or its output |
//! | `2` resize | server to agent | `cols` `u16`, `rows` `u16` |
//! | `3` exit | agent to server | exit code `i32` (128 + signal if killed) |
//! | `4` event | agent to server | JSON: who is in a shared terminal (`info`, `joined`, `left`, `control`), a `list` |
//! | `5` control | server to agent | JSON: `{"op":"hand_over","to":NAME}` or `{"op":"take_over"}` |
//! | `6` output | agent to server | position `u64`, then bytes: the shell's output from that position, only to a stream that asked for positions |
//!
//! Bodies are at most [`MAX_TERMINAL_MESSAGE`] bytes.
//!
//! A stream that asks for positions ([`TerminalOpen::positions`], shared
//! terminals) gets the shell's output as `output` messages: the position is
//! the count of bytes the shell wrote before these, so the server can tell,
//! across the streams of all a terminal's participants, which bytes it has
//! recorded and which it has not (a participant who falls behind skips
//! output; the agent then tells it in plain `data`, which is not the
//! shell's). An agent asked for positions sends the scrollback as
//! `output` (at least one message, perhaps empty) right after its `info`
//! event, so the server knows from the start; on one stream, positions
//! never go back.
//!
//! [`TerminalOpen::positions`]: crate::proto::TerminalOpen::positions
//!
//! ```
//! use rtunnel_core::terminal::{TermMsg, read_msg, write_msg};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let mut buf = Vec::new();
//! write_msg(&mut buf, &TermMsg::Resize { cols: 120, rows: 40 }).await.unwrap();
//! write_msg(&mut buf, &TermMsg::Data(b"ls\r".to_vec())).await.unwrap();
//! let mut r = &buf[..];
//! assert_eq!(read_msg(&mut r).await.unwrap(), Some(TermMsg::Resize { cols: 120, rows: 40 }));
//! assert_eq!(read_msg(&mut r).await.unwrap(), Some(TermMsg::Data(b"ls\r".to_vec())));
//! assert_eq!(read_msg(&mut r).await.unwrap(), None);
//! # });
//! ```

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::FrameError;
use crate::proto::ProtoError;

/// Largest body of one terminal message.
pub const MAX_TERMINAL_MESSAGE: usize = 64 * 1024;

/// Most bytes of output one [`TermMsg::Output`] carries (the message's
/// limit less its position).
pub const MAX_OUTPUT_CHUNK: usize = MAX_TERMINAL_MESSAGE - 8;

/// Largest terminal, in columns or rows.
pub const MAX_TERMINAL_SIZE: u16 = 1000;

const DATA: u8 = 1;
const RESIZE: u8 = 2;
const EXIT: u8 = 3;
const EVENT: u8 = 4;
const CONTROL: u8 = 5;
const OUTPUT: u8 = 6;

/// One message of a terminal stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TermMsg {
    /// Keystrokes (to the agent) or output (from it).
    Data(Vec<u8>),
    /// The new size of the operator's terminal.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// The shell ended with this code.
    Exit {
        /// Exit code, or 128 + the signal that killed it.
        code: i32,
    },
    /// A shared terminal's news (JSON), only on streams that asked for a
    /// shared terminal ([`crate::proto::TerminalOpen::mode`]).
    Event(Vec<u8>),
    /// A participant's request about who types in a moderated terminal
    /// (JSON), from the server, which decided it may be made.
    Control(Vec<u8>),
    /// The shell's output, from position `at` (the bytes it wrote before
    /// these), to a stream that asked for positions.
    Output {
        /// Bytes of output before these, since the shell started.
        at: u64,
        /// The output (at most [`MAX_OUTPUT_CHUNK`] bytes).
        bytes: Vec<u8>,
    },
}

/// Checks a terminal size: 1 to [`MAX_TERMINAL_SIZE`] each way.
pub fn check_size(cols: u16, rows: u16) -> Result<(), ProtoError> {
    if (1..=MAX_TERMINAL_SIZE).contains(&cols) && (1..=MAX_TERMINAL_SIZE).contains(&rows) {
        Ok(())
    } else {
        Err(ProtoError::Malformed(format!(
            "terminal size {cols}x{rows} is outside 1..={MAX_TERMINAL_SIZE}"
        )))
    }
}

/// Writes one message (flushed).
pub async fn write_msg<W: AsyncWrite + Unpin>(w: &mut W, msg: &TermMsg) -> std::io::Result<()> {
    let mut head = [0u8; 5];
    let body: std::borrow::Cow<'_, [u8]> = match msg {
        TermMsg::Data(bytes) => {
            head[0] = DATA;
            bytes.as_slice().into()
        }
        TermMsg::Resize { cols, rows } => {
            head[0] = RESIZE;
            let mut b = cols.to_be_bytes().to_vec();
            b.extend_from_slice(&rows.to_be_bytes());
            b.into()
        }
        TermMsg::Exit { code } => {
            head[0] = EXIT;
            code.to_be_bytes().to_vec().into()
        }
        TermMsg::Event(json) => {
            head[0] = EVENT;
            json.as_slice().into()
        }
        TermMsg::Control(json) => {
            head[0] = CONTROL;
            json.as_slice().into()
        }
        TermMsg::Output { at, bytes } => {
            head[0] = OUTPUT;
            let mut b = Vec::with_capacity(8 + bytes.len());
            b.extend_from_slice(&at.to_be_bytes());
            b.extend_from_slice(bytes);
            b.into()
        }
    };
    if body.len() > MAX_TERMINAL_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "terminal message too large",
        ));
    }
    head[1..].copy_from_slice(&(body.len() as u32).to_be_bytes());
    w.write_all(&head).await?;
    w.write_all(&body).await?;
    w.flush().await
}

/// Reads one message; `None` when the stream ends cleanly between
/// messages.
pub async fn read_msg<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<TermMsg>, FrameError> {
    let mut kind = [0u8; 1];
    match r.read(&mut kind).await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(FrameError::Io(e)),
    }
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.map_err(FrameError::Io)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_TERMINAL_MESSAGE {
        return Err(FrameError::Proto(ProtoError::TooLarge {
            len,
            max: MAX_TERMINAL_MESSAGE,
        }));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(FrameError::Io)?;
    decode(kind[0], body).map(Some).map_err(FrameError::Proto)
}

fn decode(kind: u8, body: Vec<u8>) -> Result<TermMsg, ProtoError> {
    let malformed = |what: &str| ProtoError::Malformed(format!("terminal message: {what}"));
    match kind {
        DATA => Ok(TermMsg::Data(body)),
        RESIZE => {
            let b: [u8; 4] = body
                .try_into()
                .map_err(|_| malformed("resize is 4 bytes"))?;
            let cols = u16::from_be_bytes([b[0], b[1]]);
            let rows = u16::from_be_bytes([b[2], b[3]]);
            check_size(cols, rows)?;
            Ok(TermMsg::Resize { cols, rows })
        }
        EXIT => {
            let b: [u8; 4] = body.try_into().map_err(|_| malformed("exit is 4 bytes"))?;
            Ok(TermMsg::Exit {
                code: i32::from_be_bytes(b),
            })
        }
        EVENT => Ok(TermMsg::Event(body)),
        CONTROL => Ok(TermMsg::Control(body)),
        OUTPUT => {
            let Some((at, _)) = body.split_first_chunk::<8>() else {
                return Err(malformed("output starts with an 8-byte position"));
            };
            let at = u64::from_be_bytes(*at);
            let mut bytes = body;
            bytes.drain(..8);
            Ok(TermMsg::Output { at, bytes })
        }
        other => Err(malformed(&format!("unknown type {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_messages_are_refused_with_a_reason() {
        for (bytes, want) in [
            (vec![9, 0, 0, 0, 0], "unknown type 9"),
            (vec![7, 0, 0, 0, 0], "unknown type 7"),
            (vec![6, 0, 0, 0, 3, 0, 0, 1], "8-byte position"),
            (vec![2, 0, 0, 0, 1, 7], "resize is 4 bytes"),
            (vec![2, 0, 0, 0, 4, 0, 0, 0, 24], "outside"),
            (vec![1, 0, 1, 0, 1], "exceeds the limit"),
        ] {
            let err = read_msg(&mut &bytes[..]).await.unwrap_err();
            assert!(err.to_string().contains(want), "{err} / {want}");
        }
        // Cut in the middle of a message: an error, not a clean end.
        assert!(read_msg(&mut &[1u8, 0, 0, 0, 5, b'a'][..]).await.is_err());
        let big = TermMsg::Data(vec![0; MAX_TERMINAL_MESSAGE + 1]);
        assert!(write_msg(&mut Vec::new(), &big).await.is_err());
    }

    #[tokio::test]
    async fn output_carries_its_position() {
        let mut buf = Vec::new();
        let big = TermMsg::Output {
            at: u64::MAX - 1,
            bytes: vec![b'x'; MAX_OUTPUT_CHUNK],
        };
        for msg in [
            TermMsg::Output {
                at: 0,
                bytes: Vec::new(),
            },
            TermMsg::Output {
                at: 70_000,
                bytes: b"ls\r\n".to_vec(),
            },
            big.clone(),
        ] {
            write_msg(&mut buf, &msg).await.unwrap();
            assert_eq!(read_msg(&mut &buf[..]).await.unwrap(), Some(msg));
            buf.clear();
        }
        // One byte more than a chunk is more than a message.
        let over = TermMsg::Output {
            at: 0,
            bytes: vec![0; MAX_OUTPUT_CHUNK + 1],
        };
        assert!(write_msg(&mut buf, &over).await.is_err());
    }

    #[tokio::test]
    async fn exit_codes_round_trip() {
        let mut buf = Vec::new();
        write_msg(&mut buf, &TermMsg::Exit { code: -1 })
            .await
            .unwrap();
        write_msg(&mut buf, &TermMsg::Exit { code: 137 })
            .await
            .unwrap();
        let mut r = &buf[..];
        assert_eq!(
            read_msg(&mut r).await.unwrap(),
            Some(TermMsg::Exit { code: -1 })
        );
        assert_eq!(
            read_msg(&mut r).await.unwrap(),
            Some(TermMsg::Exit { code: 137 })
        );
    }
}

/// The property the `terminal_frames` fuzz target checks, shared with the
/// corpus replay test so both run the same code. Not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Reading never panics nor takes more than a message's limit; every
    /// message read is within bounds and writes back to bytes that read as
    /// the same message.
    pub fn check_terminal_frames(data: &[u8]) {
        futures::executor::block_on(async {
            let mut r = data;
            let mut read = 0usize;
            while let Ok(Some(msg)) = read_msg(&mut r).await {
                read += 1;
                assert!(read <= data.len(), "more messages than bytes");
                match &msg {
                    TermMsg::Data(bytes) | TermMsg::Event(bytes) | TermMsg::Control(bytes) => {
                        assert!(bytes.len() <= MAX_TERMINAL_MESSAGE)
                    }
                    TermMsg::Resize { cols, rows } => assert!(check_size(*cols, *rows).is_ok()),
                    TermMsg::Exit { .. } => {}
                    TermMsg::Output { bytes, .. } => assert!(bytes.len() <= MAX_OUTPUT_CHUNK),
                }
                let mut again = Vec::new();
                write_msg(&mut again, &msg)
                    .await
                    .unwrap_or_else(|e| panic!("a message read cannot be written: {e}"));
                let mut back = &again[..];
                assert_eq!(
                    read_msg(&mut back).await.ok().flatten().as_ref(),
                    Some(&msg)
                );
                assert!(back.is_empty());
            }
        });
    }
}
