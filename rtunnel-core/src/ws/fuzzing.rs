//! The property the `ws_frames` fuzz target checks, shared with the corpus
//! replay test so both run the same code. Not part of the API.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::frame::FrameHeader;
use super::{MAX_WS_MESSAGE_BYTES, Role, WsStream};

/// A connection that reads `input` and keeps what is written.
struct Replay<'a> {
    input: &'a [u8],
    output: Vec<u8>,
}

impl AsyncRead for Replay<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.input.len().min(buf.remaining());
        buf.put_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.output.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A header that parses re-encodes to the same bytes (the parser takes
/// only the shortest form); either end reading `data`, in small reads and
/// in large ones, never panics, never yields more bytes than came, and
/// answers only with well-formed control frames.
pub fn check_ws_frames(data: &[u8]) {
    if let Ok(Some((header, used))) = FrameHeader::parse(data) {
        let mut again = Vec::new();
        header.encode_into(&mut again);
        assert_eq!(again, data[..used]);
    }
    for role in [Role::Server, Role::Client] {
        for read_size in [7, 64 * 1024] {
            let mut ws = WsStream::new(
                Replay {
                    input: data,
                    output: Vec::new(),
                },
                role,
                &[],
            );
            let mut got = 0;
            let mut buf = vec![0u8; read_size];
            futures::executor::block_on(async {
                while let Ok(n @ 1..) = ws.read(&mut buf).await {
                    got += n;
                }
            });
            assert!(got <= data.len(), "more bytes out than in");
            let mut answer = &ws.get_ref().output[..];
            while !answer.is_empty() {
                let (header, used) = FrameHeader::parse(answer)
                    .ok()
                    .flatten()
                    .expect("answers are whole frames");
                assert!(header.opcode.is_control());
                assert_eq!(header.mask.is_some(), role == Role::Client);
                let len = header.len as usize;
                assert!(len <= MAX_WS_MESSAGE_BYTES);
                answer = &answer[used + len..];
            }
        }
    }
}
