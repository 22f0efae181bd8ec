//! An in-memory [`Mux`]: two connected ends in one process.
//!
//! Each stream is a [`tokio::io::duplex`] pipe; opening one hands its far
//! end to the peer's `accept`. It keeps the contract of the yamux
//! connection that matters to the code above it: at most
//! [`MAX_OPEN_STREAMS`] streams opened by one side at once, at most
//! [`MAX_PENDING_INBOUND`] waiting for `accept` (more are refused), closing
//! either end (or dropping it) ends both, and a stream waiting on an ended
//! connection fails with `ConnectionAborted`.
//!
//! There is no underlying connection, so the byte counters stay 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tokio::io::DuplexStream;
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::{MAX_OPEN_STREAMS, MAX_PENDING_INBOUND, Mux, MuxCounters, MuxError, Muxed};

/// Bytes each direction of a stream buffers before the writer waits.
const STREAM_BUFFER: usize = 256 * 1024;

/// A stream of a [`MemoryMux`].
pub type MemoryStream = Muxed<DuplexStream>;

/// One end of an in-memory multiplexed connection; see the module docs.
#[derive(Debug)]
pub struct MemoryMux {
    to_peer: mpsc::Sender<DuplexStream>,
    inbound: Mutex<mpsc::Receiver<DuplexStream>>,
    open_slots: Arc<Semaphore>,
    /// Shared by both ends: the connection is one.
    done: CancellationToken,
    opened: AtomicU64,
    accepted: AtomicU64,
    /// Streams the peer opened that this end refused.
    refused: Arc<AtomicU64>,
    /// The peer's `refused`: this end counts there what it could not hand over.
    peer_refused: Arc<AtomicU64>,
}

impl MemoryMux {
    /// Two connected ends.
    pub fn pair() -> (MemoryMux, MemoryMux) {
        let done = CancellationToken::new();
        let (a_tx, a_rx) = mpsc::channel(MAX_PENDING_INBOUND);
        let (b_tx, b_rx) = mpsc::channel(MAX_PENDING_INBOUND);
        let (a_refused, b_refused) = (Arc::default(), Arc::default());
        let end =
            |to_peer, inbound, refused: &Arc<AtomicU64>, peer_refused: &Arc<AtomicU64>| MemoryMux {
                to_peer,
                inbound: Mutex::new(inbound),
                open_slots: Arc::new(Semaphore::new(MAX_OPEN_STREAMS)),
                done: done.clone(),
                opened: AtomicU64::new(0),
                accepted: AtomicU64::new(0),
                refused: refused.clone(),
                peer_refused: peer_refused.clone(),
            };
        (
            end(b_tx, a_rx, &a_refused, &b_refused),
            end(a_tx, b_rx, &b_refused, &a_refused),
        )
    }
}

#[async_trait]
impl Mux for MemoryMux {
    type Stream = MemoryStream;

    async fn open(&self) -> Result<MemoryStream, MuxError> {
        if self.done.is_cancelled() {
            return Err(MuxError::Closed);
        }
        let slot = tokio::select! {
            slot = self.open_slots.clone().acquire_owned() => slot.map_err(|_| MuxError::Closed)?,
            _ = self.done.cancelled() => return Err(MuxError::Closed),
        };
        let (near, far) = tokio::io::duplex(STREAM_BUFFER);
        // Like yamux, a peer that does not keep up with accepting has the
        // stream refused (the far end is dropped: the opener reads EOF).
        if self.to_peer.try_send(far).is_err() {
            if self.done.is_cancelled() {
                return Err(MuxError::Closed);
            }
            self.peer_refused.fetch_add(1, Ordering::Relaxed);
        }
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(Muxed::new(near, Some(slot), &self.done))
    }

    async fn accept(&self) -> Option<MemoryStream> {
        let mut inbound = self.inbound.lock().await;
        let stream = tokio::select! {
            stream = inbound.recv() => stream?,
            _ = self.done.cancelled() => return None,
        };
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Some(Muxed::new(stream, None, &self.done))
    }

    fn close(&self) {
        self.done.cancel();
    }

    async fn closed(&self) {
        self.done.cancelled().await;
    }

    fn is_closed(&self) -> bool {
        self.done.is_cancelled()
    }

    fn counters(&self) -> MuxCounters {
        MuxCounters {
            streams_opened: self.opened.load(Ordering::Relaxed),
            streams_accepted: self.accepted.load(Ordering::Relaxed),
            streams_refused: self.refused.load(Ordering::Relaxed),
            bytes_in: 0,
            bytes_out: 0,
        }
    }
}

impl Drop for MemoryMux {
    fn drop(&mut self) {
        self.done.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn streams_carry_bytes_both_ways_and_close_ends_both_sides() {
        let (a, b) = MemoryMux::pair();
        let mut out = a.open().await.unwrap();
        out.write_all(b"ping").await.unwrap();
        let mut inbound = b.accept().await.unwrap();
        let mut buf = [0u8; 4];
        inbound.read_exact(&mut buf).await.unwrap();
        inbound.write_all(b"pong").await.unwrap();
        out.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        assert_eq!(a.counters().streams_opened, 1);
        assert_eq!(b.counters().streams_accepted, 1);

        let reader = tokio::spawn(async move { out.read(&mut buf).await });
        b.close();
        a.closed().await;
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted);
        assert!(a.accept().await.is_none());
        assert!(matches!(a.open().await, Err(MuxError::Closed)));
    }

    #[tokio::test]
    async fn dropping_one_end_closes_the_other() {
        let (a, b) = MemoryMux::pair();
        drop(a);
        assert!(b.is_closed());
        assert!(b.accept().await.is_none());
    }
}
