//! `relay`: a hop that only copies, for comparison.
//!
//! Listens on one address and, for every connection it accepts, opens a
//! TCP connection to another and copies bytes both ways until both sides
//! are done: no framing, no multiplexing, no authentication, no audit.
//! It copies with rtunnel's own relay loop ([`rtunnel_core::relay`]:
//! buffers that start at 8 KiB and grow on full reads) under the allocator
//! settings rtunnel's binaries use, so what separates it from an rtunnel
//! hop is the WebSocket and the multiplexing, not the copying.
//! `scripts/bench-peers.sh` chains three of them (the path `relays`), next
//! to rtunnel's three processes (a forward client, a server and an agent)
//! and rathole's two.
//!
//! ```text
//! cargo run --release -p rtunnel-benches --bin relay -- 127.0.0.1:7000 127.0.0.1:6379
//! ```
#![allow(clippy::print_stderr)]

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

/// One thread, as rtunnel's agent binary runs: on the benchmark's two
/// cores a multi-threaded runtime spent a third more CPU per request
/// handing work between its threads.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    rtunnel_core::malloc::tune_for_relaying();
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream), None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: relay LISTEN-ADDRESS UPSTREAM-ADDRESS");
        std::process::exit(2);
    };
    let (listen, upstream): (SocketAddr, SocketAddr) = match (listen.parse(), upstream.parse()) {
        (Ok(listen), Ok(upstream)) => (listen, upstream),
        _ => {
            eprintln!("relay: addresses are IP:PORT");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("relay: cannot listen on {listen}: {error}");
            std::process::exit(1);
        }
    };
    loop {
        let (mut inbound, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("relay: accept: {error}");
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = inbound.set_nodelay(true);
            let mut outbound = match TcpStream::connect(upstream).await {
                Ok(outbound) => outbound,
                Err(error) => {
                    eprintln!("relay: cannot reach {upstream}: {error}");
                    return;
                }
            };
            let _ = outbound.set_nodelay(true);
            let _ = rtunnel_core::relay::relay(&mut inbound, &mut outbound).await;
        });
    }
}
