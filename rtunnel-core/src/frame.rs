//! Reading and writing [`crate::proto`] frames on async byte streams.
//!
//! The length prefix is checked against the limit before the body is read,
//! so a peer cannot make us allocate more than the limit.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::{self, FRAME_PREFIX_BYTES, ProtoError, Validate};

/// Errors while reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or ended in the middle of a frame.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ended cleanly before a frame started.
    #[error("stream closed")]
    Closed,
    /// The frame broke a protocol rule.
    #[error(transparent)]
    Proto(#[from] ProtoError),
}

/// Reads one frame of at most `max` body bytes and decodes it as `T`.
pub async fn read_frame<T, R>(reader: &mut R, max: usize) -> Result<T, FrameError>
where
    T: for<'de> Deserialize<'de> + Validate,
    R: AsyncRead + Unpin + ?Sized,
{
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    let first = reader.read(&mut prefix).await?;
    if first == 0 {
        return Err(FrameError::Closed);
    }
    reader.read_exact(&mut prefix[first..]).await?;
    let len = proto::body_len(&prefix, max)?.unwrap_or_default();
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(proto::decode_body(&body)?)
}

/// Encodes `msg` and writes it as one frame, then flushes.
pub async fn write_frame<T, W>(writer: &mut W, msg: &T) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin + ?Sized,
{
    writer.write_all(&proto::encode(msg)).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Control, MAX_CONTROL_FRAME_BYTES, StreamHeader, StreamKind};

    #[tokio::test]
    async fn frames_cross_a_pipe() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let header = StreamHeader {
            service: "ssh".into(),
            kind: StreamKind::Tcp,
            terminal: None,
            operator: None,
        };
        let sent = header.clone();
        let writer = tokio::spawn(async move { write_frame(&mut a, &sent).await });
        let got: StreamHeader = read_frame(&mut b, 1024).await.unwrap();
        assert_eq!(got, header);
        writer.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_without_reading_the_body() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_frame::<Control, _>(&mut b, MAX_CONTROL_FRAME_BYTES)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            FrameError::Proto(ProtoError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn clean_end_before_a_frame_is_closed() {
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        let err = read_frame::<Control, _>(&mut b, 1024).await.unwrap_err();
        assert!(matches!(err, FrameError::Closed));
    }

    #[tokio::test]
    async fn end_inside_a_frame_is_an_io_error() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 10, b'{']).await.unwrap();
        drop(a);
        let err = read_frame::<Control, _>(&mut b, 1024).await.unwrap_err();
        assert!(matches!(err, FrameError::Io(_)));
    }
}
