//! The property the `mux_frames` fuzz target checks, shared with the
//! corpus replay test so both run the same code. Not part of the API.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::WireMux;
use super::frame::{HEADER_BYTES, Header, Kind};
use crate::mux::{Mux, MuxConfig};

/// A header that parses re-encodes to the same bytes; a [`WireMux`] that
/// reads `data` from its peer (whose streams are read, answered and
/// dropped as they come) never panics, ends once the peer's bytes do, and
/// answers only with well-formed frames.
pub fn check_mux_frames(data: &[u8]) {
    if let Some(head) = data.first_chunk::<HEADER_BYTES>()
        && let Ok(header) = Header::parse(head)
    {
        assert_eq!(&header.encode(), head);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    for client in [false, true] {
        let output = runtime.block_on(replay(data, client));
        let mut answer = &output[..];
        while !answer.is_empty() {
            let head = answer
                .first_chunk::<HEADER_BYTES>()
                .expect("answers are whole frames");
            let header = Header::parse(head).expect("answers parse");
            let end = HEADER_BYTES + header.body_len();
            assert!(answer.len() >= end, "answers are whole frames");
            if header.kind == Kind::Data {
                assert_eq!(
                    header.stream % 2 == 1,
                    !client,
                    "only the peer opened streams"
                );
            }
            answer = &answer[end..];
        }
    }
}

/// Feeds `data` to a [`WireMux`] and returns what it wrote back.
async fn replay(data: &[u8], client: bool) -> Vec<u8> {
    let (mut peer, ours) = tokio::io::duplex(4 << 20);
    let cfg = MuxConfig::default();
    let mux = if client {
        WireMux::client(ours, &cfg)
    } else {
        WireMux::server(ours, &cfg)
    };
    peer.write_all(data)
        .await
        .expect("the pipe takes the input");
    peer.shutdown().await.expect("the input ends");
    let serve = async {
        while let Some(mut stream) = mux.accept().await {
            let mut buf = [0u8; 64];
            if let Ok(n @ 1..) = stream.read(&mut buf).await {
                let _ = stream.write_all(&buf[..n]).await;
            }
        }
    };
    let mut output = Vec::new();
    let read = peer.read_to_end(&mut output);
    let (_, read) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(serve, read) })
            .await
            .expect("the connection ended with its input");
    read.expect("the output reads");
    output
}
