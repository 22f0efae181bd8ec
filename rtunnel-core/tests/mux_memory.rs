//! What a hostile peer can make a [`WireMux`] hold in memory, counted by
//! the allocator: the test binary's global allocator counts the bytes
//! allocated and not yet freed.
//!
//! The peer is a raw TCP socket on loopback writing yamux frames; the
//! kernel's socket buffers are not counted, the mux's buffers are.

// A counting global allocator cannot be written without `unsafe`; it
// only forwards to `System`. Tests fail by panicking.
#![allow(unsafe_code, clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use rtunnel_core::mux::wire::frame::{Header, Kind, SYN};
use rtunnel_core::mux::{Mux, MuxConfig, WireMux};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The system allocator, counting what is live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call goes to `System` unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System::alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System::dealloc`'s.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: the caller's contract is `System::realloc`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The allocator's count is the process's: one test at a time runs, its
/// runtime built and dropped while it holds this.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `test` alone, on a runtime of its own.
fn alone<F: Future<Output = ()>>(test: impl FnOnce() -> F) {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(test());
}

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// A stream's whole initial window.
const WINDOW: usize = 256 * 1024;

/// A `WireMux` server on a loopback connection whose other end is raw.
async fn raw_peer() -> (TcpStream, WireMux) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (io, _) = listener.accept().await.unwrap();
    (raw, WireMux::server(io, &MuxConfig::default()))
}

/// Writes `frames` data frames of `len` bytes each on stream `id`, the
/// bytes counting up from 0 (mod 251), in batches so the test's own
/// buffer stays small.
async fn send_frames(raw: &mut TcpStream, id: u32, frames: usize, len: usize) {
    let mut batch = Vec::new();
    let mut at = 0usize;
    for _ in 0..frames {
        batch.extend_from_slice(&Header::new(Kind::Data, 0, id, len as u32).encode());
        batch.extend((at..at + len).map(|i| (i % 251) as u8));
        at += len;
        if batch.len() >= 64 * 1024 {
            raw.write_all(&batch).await.unwrap();
            batch.clear();
        }
    }
    raw.write_all(&batch).await.unwrap();
}

/// Waits until the mux read `bytes` from its transport.
async fn until_read(mux: &WireMux, bytes: u64) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while mux.counters().bytes_in < bytes {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the mux read everything the peer sent");
}

/// One-byte frames filling a stream's window make the stream hold about
/// the window, not a buffer and a queue entry for each frame (which was
/// 64 bytes and more per byte received: 16 MiB per stream, times the 256
/// streams a peer may leave waiting to be accepted).
#[test]
fn tiny_frames_held_unread_cost_about_their_bytes() {
    alone(|| async {
        let (mut raw, mux) = raw_peer().await;
        // Open stream 1 with a window update (no data yet).
        raw.write_all(&Header::new(Kind::WindowUpdate, SYN, 1, 0).encode())
            .await
            .unwrap();
        let mut stream = mux.accept().await.expect("the stream arrives");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = live();

        send_frames(&mut raw, 1, WINDOW, 1).await;
        until_read(&mux, (12 + WINDOW * 13) as u64).await;
        let held = live() - before;
        // The bytes are held (the count sees them), in about their size.
        assert!(
            (WINDOW as isize..1024 * 1024).contains(&held),
            "{WINDOW} one-byte frames held unread cost {held} bytes"
        );

        // Nothing was lost or reordered.
        let mut got = vec![0u8; WINDOW];
        stream.read_exact(&mut got).await.unwrap();
        assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    });
}

/// Bodies of every size held unread cost about their bytes too: a short
/// body does not pin the read buffer it arrived in, a long one has a
/// buffer of exactly its size.
#[test]
fn frames_of_every_size_held_unread_cost_about_their_bytes() {
    alone(|| async {
        let (mut raw, mux) = raw_peer().await;
        let sizes = [100usize, 4_000, 16 * 1024 - 1, 16 * 1024, 40_000];
        let mut streams = Vec::new();
        for (i, _) in sizes.iter().enumerate() {
            let id = 1 + 2 * i as u32;
            raw.write_all(&Header::new(Kind::WindowUpdate, SYN, id, 0).encode())
                .await
                .unwrap();
            streams.push(mux.accept().await.expect("the stream arrives"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = live();

        let mut sent = 12 * sizes.len();
        let mut carried = 0;
        for (i, len) in sizes.iter().enumerate() {
            let frames = WINDOW / len;
            send_frames(&mut raw, 1 + 2 * i as u32, frames, *len).await;
            sent += frames * (12 + len);
            carried += frames * len;
        }
        until_read(&mux, sent as u64).await;
        let held = live() - before;
        // Each stream's last buffer being filled may be twice its bytes.
        let bound = (carried + carried / 4 + sizes.len() * 32 * 1024) as isize;
        assert!(
            (carried as isize..bound).contains(&held),
            "{carried} bytes held unread cost {held} bytes"
        );
    });
}

/// A short body held unread does not pin the read buffer it arrived in:
/// one-byte frames, each among 16 KiB of frames that leave nothing behind
/// (empty window updates), cost bytes, not a read buffer each.
#[test]
fn a_short_body_does_not_pin_the_read_buffer_it_arrived_in() {
    alone(|| async {
        let (mut raw, mux) = raw_peer().await;
        raw.write_all(&Header::new(Kind::WindowUpdate, SYN, 1, 0).encode())
            .await
            .unwrap();
        let _stream = mux.accept().await.expect("the stream arrives");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = live();

        const ROUNDS: usize = 128;
        const PADDING: usize = 16 * 1024 / 12;
        let mut round = Vec::new();
        round.extend_from_slice(&Header::new(Kind::Data, 0, 1, 1).encode());
        round.push(7);
        for _ in 0..PADDING {
            round.extend_from_slice(&Header::new(Kind::WindowUpdate, 0, 1, 0).encode());
        }
        for _ in 0..ROUNDS {
            raw.write_all(&round).await.unwrap();
        }
        until_read(&mux, (12 + ROUNDS * round.len()) as u64).await;
        drop(round);
        let held = live() - before;
        assert!(
            (ROUNDS as isize..64 * 1024).contains(&held),
            "{ROUNDS} one-byte bodies held unread cost {held} bytes"
        );
    });
}
