//! Setting up a stream: the opener sends a [`StreamHeader`] and waits for the
//! [`StreamReply`]; the acceptor reads the header and answers. Both halves
//! have a deadline, and a bad header is refused with a reason. The acceptor
//! reads nothing behind the header before it answers, so an opener may
//! send its payload without waiting for the reply ([`pipeline`]).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::frame::{FrameError, read_frame, write_frame};
use crate::proto::{MAX_STREAM_HEADER_BYTES, Refusal, RefusalCode, StreamHeader, StreamReply};

pub mod pipeline;

pub use pipeline::{EARLY_DATA_BYTES, EarlyData, PassReply, ReplyReader, request_early};

/// Why the opener's setup failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The other side refused the stream.
    #[error("refused ({}): {}", .0.code, .0.reason)]
    Refused(Refusal),
    /// The stream failed before a reply arrived.
    #[error("stream failed: {0}")]
    Failed(#[from] FrameError),
    /// No reply within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The longest an opener waits on `pending` answers, past its own
/// deadline.
pub const MAX_PENDING: Duration = Duration::from_secs(600);

/// Opener: sends `header` and waits up to `timeout` for an `ok`. A
/// `pending` answer (the agent asks the customer first) moves the deadline
/// to its `wait_ms` from now, plus `timeout`, at most [`MAX_PENDING`] past
/// the start.
pub async fn request<S>(
    stream: &mut S,
    header: &StreamHeader,
    timeout: Duration,
) -> Result<(), SetupError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    send_header(stream, header, timeout).await?;
    let mut reply = ReplyReader::new(timeout);
    std::future::poll_fn(|cx| reply.poll_final(cx, &mut *stream)).await
}

/// Opener, pipelined: sends `header` within `timeout` and does not wait
/// for the reply; payload may follow at once (see [`pipeline`]).
pub async fn send_header<S>(
    stream: &mut S,
    header: &StreamHeader,
    timeout: Duration,
) -> Result<(), SetupError>
where
    S: AsyncWrite + Unpin + ?Sized,
{
    match tokio::time::timeout(timeout, write_frame(stream, header)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SetupError::Failed(e)),
        Err(_) => Err(SetupError::Timeout(timeout)),
    }
}

/// Acceptor: reads the header within `timeout`. A malformed header is
/// refused with `bad_stream_header`; `None` means the stream is done with.
pub async fn accept_header<S>(stream: &mut S, timeout: Duration) -> Option<StreamHeader>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(
        timeout,
        read_frame::<StreamHeader, _>(stream, MAX_STREAM_HEADER_BYTES),
    )
    .await
    {
        Ok(Ok(header)) => Some(header),
        Ok(Err(FrameError::Proto(e))) => {
            refuse(
                stream,
                StreamReply::refused(RefusalCode::BadStreamHeader, e.to_string()),
            )
            .await;
            None
        }
        Ok(Err(_)) | Err(_) => None,
    }
}

/// Acceptor: answers with a refusal and closes the stream.
pub async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, reply: StreamReply) {
    let _ = write_frame(stream, &reply).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::StreamKind;

    fn header(service: &str) -> StreamHeader {
        StreamHeader {
            service: service.into(),
            kind: StreamKind::Tcp,
            terminal: None,
            operator: None,
        }
    }

    #[tokio::test]
    async fn accepted_and_refused_streams() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let acceptor = tokio::spawn(async move {
            let h = accept_header(&mut b, Duration::from_secs(5)).await.unwrap();
            refuse(
                &mut b,
                StreamReply::refused(RefusalCode::UnknownService, format!("no {}", h.service)),
            )
            .await;
        });
        let err = request(&mut a, &header("db"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(err, SetupError::Refused(ref r) if r.code == RefusalCode::UnknownService && r.reason == "no db")
        );
        acceptor.await.unwrap();

        let (mut a, mut b) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            accept_header(&mut b, Duration::from_secs(5)).await.unwrap();
            write_frame(&mut b, &StreamReply::Ok).await.unwrap();
            b
        });
        request(&mut a, &header("ssh"), Duration::from_secs(5))
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn pending_moves_the_deadline_as_far_as_it_says() {
        // Asked to wait 5 s: an answer after 3 s (past the 1 s deadline)
        // is taken.
        let (mut a, mut b) = tokio::io::duplex(4096);
        let acceptor = tokio::spawn(async move {
            accept_header(&mut b, Duration::from_secs(5)).await.unwrap();
            let pending = StreamReply::Pending {
                reason: "waiting for the customer's approval".into(),
                wait_ms: 5_000,
            };
            write_frame(&mut b, &pending).await.unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await;
            write_frame(&mut b, &StreamReply::Ok).await.unwrap();
            b
        });
        request(&mut a, &header("ssh"), Duration::from_secs(1))
            .await
            .unwrap();
        let _b = acceptor.await.unwrap();
        // But no further than that, plus the usual deadline.
        let (mut a, mut b) = tokio::io::duplex(4096);
        let acceptor = tokio::spawn(async move {
            accept_header(&mut b, Duration::from_secs(5)).await.unwrap();
            let pending = StreamReply::Pending {
                reason: "asking".into(),
                wait_ms: 2_000,
            };
            write_frame(&mut b, &pending).await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            b
        });
        let started = tokio::time::Instant::now();
        let err = request(&mut a, &header("ssh"), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, SetupError::Timeout(_)), "{err}");
        assert_eq!(started.elapsed().as_secs(), 3);
        acceptor.abort();
    }

    #[tokio::test]
    async fn a_bad_header_is_refused_with_a_reason() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let acceptor =
            tokio::spawn(async move { accept_header(&mut b, Duration::from_secs(5)).await });
        let err = request(&mut a, &header("Not_Valid"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(err, SetupError::Refused(ref r) if r.code == RefusalCode::BadStreamHeader),
            "{err:?}"
        );
        assert!(acceptor.await.unwrap().is_none());
    }

    #[tokio::test]
    async fn silence_times_out_on_both_sides() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let err = request(&mut a, &header("ssh"), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, SetupError::Timeout(_)));
        let (_a2, mut b2) = tokio::io::duplex(4096);
        assert!(
            accept_header(&mut b2, Duration::from_millis(50))
                .await
                .is_none()
        );
        drop(b.shutdown().await);
    }
}
