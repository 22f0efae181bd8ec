//! The operator path against plain loopback TCP, in one run:
//!
//! - `throughput/*`: one stream moving 16 MiB per iteration to a sink that
//!   acknowledges each block (so the time covers delivery, not buffering);
//! - `round_trip/*`: one byte there and back on an open connection;
//! - `connect_ping/*`: a new connection plus one round trip.
//!
//! `tunnel` is the whole operator path: local TCP to `Forwarder` (yamux over
//! a WebSocket) to the server, a stream on the agent's tunnel (yamux over a
//! WebSocket), the agent, and TCP to the service. `tcp` is the same client
//! talking to the same service directly.

#![allow(missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rtunnel_agent::{Agent, ForwardConfig, Forwarder, parse_services};
use rtunnel_core::store::{Role, User, now_millis};
use rtunnel_server::{Server, ServerConfig, enroll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const BLOCK: usize = 16 * 1024 * 1024;

struct Rig {
    _tmp: tempfile::TempDir,
    sink: SocketAddr,
    sink_via_tunnel: SocketAddr,
    echo: SocketAddr,
    echo_via_tunnel: SocketAddr,
}

/// Reads BLOCK bytes, answers one byte, forever.
async fn sink_service() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let mut left = BLOCK;
                    while left > 0 {
                        let want = left.min(buf.len());
                        match s.read(&mut buf[..want]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => left -= n,
                        }
                    }
                    if s.write_all(b"k").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn echo_service() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn rig() -> Rig {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::builder()
        .config(ServerConfig {
            data_dir: tmp.path().to_owned(),
            ..ServerConfig::default()
        })
        .build()
        .await
        .unwrap();
    let state = server.state().clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener, std::future::pending()));

    let (system, enrolled) = enroll::new_system("bench");
    state.stores.identity.create_system(&system).await.unwrap();
    let admin = User {
        id: rtunnel_core::ids::UserId::new(),
        name: "bench".into(),
        role: Role::Admin,
        disabled: false,
        created_at: now_millis(),
        email: None,
    };
    state.stores.identity.create_user(&admin).await.unwrap();
    let (record, token) = enroll::new_api_token(admin.id, None);
    state
        .stores
        .identity
        .create_api_token(&record)
        .await
        .unwrap();

    let sink = sink_service().await;
    let echo = echo_service().await;
    let agent = Agent::builder()
        .url(format!("ws://{addr}/api/v1/tunnel"))
        .credentials(enrolled.key, enrolled.secret)
        .services(parse_services(&format!("sink={sink},echo={echo}")).unwrap())
        .build()
        .unwrap();
    tokio::spawn(async move { agent.run(std::future::pending()).await });
    let session = loop {
        if let Some(t) = state.tunnels.registry.all().first() {
            break t.session_id;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut local = Vec::new();
    for service in ["sink", "echo"] {
        let fwd = Forwarder::connect(ForwardConfig {
            ca_roots: Default::default(),
            server: format!("http://{addr}"),
            token: token.clone(),
            target: session.into(),
            service: service.into(),
            tls_insecure: false,
            proxy: None,
        })
        .await
        .unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        local.push(l.local_addr().unwrap());
        tokio::spawn(async move { fwd.serve(l, std::future::pending()).await });
    }
    Rig {
        _tmp: tmp,
        sink,
        sink_via_tunnel: local[0],
        echo,
        echo_via_tunnel: local[1],
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

async fn send_block(s: &mut TcpStream, block: &[u8]) {
    s.write_all(block).await.unwrap();
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await.unwrap();
}

async fn ping(s: &mut TcpStream) {
    s.write_all(b"p").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
}

fn benches(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let rig = rt.block_on(rig());
    let block = vec![0x5au8; BLOCK];

    let mut g = c.benchmark_group("throughput");
    g.throughput(Throughput::Bytes(BLOCK as u64));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(10));
    for (name, addr) in [("tcp", rig.sink), ("tunnel", rig.sink_via_tunnel)] {
        let mut s = rt.block_on(connect(addr));
        g.bench_function(name, |b| {
            b.iter(|| rt.block_on(send_block(&mut s, &block)));
        });
    }
    g.finish();

    let mut g = c.benchmark_group("round_trip");
    for (name, addr) in [("tcp", rig.echo), ("tunnel", rig.echo_via_tunnel)] {
        let mut s = rt.block_on(connect(addr));
        g.bench_function(name, |b| b.iter(|| rt.block_on(ping(&mut s))));
    }
    g.finish();

    let mut g = c.benchmark_group("connect_ping");
    for (name, addr) in [("tcp", rig.echo), ("tunnel", rig.echo_via_tunnel)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut s = connect(addr).await;
                    ping(&mut s).await;
                })
            })
        });
    }
    g.finish();
}

criterion_group!(throughput, benches);
criterion_main!(throughput);
