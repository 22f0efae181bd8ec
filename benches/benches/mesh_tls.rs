//! What the node mesh's TLS costs per byte carried between two nodes.
//!
//! A stream through another node crosses the mesh: the operator's node
//! seals every byte, the tunnel's node opens it. Each iteration here is one
//! 256 KiB yamux data frame (rtunnel's largest) written into one node's TLS
//! connection, turned into records, read by the other's and handed out,
//! with the cluster identity's own TLS settings (`rtunnel_auth::mesh`),
//! in memory: the cipher and rustls's copies, no sockets.

#![allow(missing_docs, clippy::unwrap_used, clippy::print_stderr)]

use std::io::{Read, Write};
use std::ops::DerefMut;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rtunnel_auth::mesh::{MeshIdentity, SERVER_NAME};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ConnectionCommon, ServerConnection};

/// One yamux data frame at its largest.
const FRAME: usize = 256 * 1024;
/// The most plaintext one TLS record carries.
const RECORD: usize = 16 * 1024;

/// Moves what `from` has to send into `to`.
fn pass<A, B>(
    from: &mut impl DerefMut<Target = ConnectionCommon<A>>,
    to: &mut impl DerefMut<Target = ConnectionCommon<B>>,
    wire: &mut Vec<u8>,
) {
    wire.clear();
    while from.wants_write() {
        from.write_tls(wire).unwrap();
    }
    let mut rd = wire.as_slice();
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
        to.process_new_packets().unwrap();
    }
}

fn connected() -> (ClientConnection, ServerConnection) {
    let identity = MeshIdentity::from_cluster_key(&[7; 32]).unwrap();
    let name = ServerName::try_from(SERVER_NAME).unwrap();
    let mut c = ClientConnection::new(identity.client_config().unwrap(), name).unwrap();
    let mut s = ServerConnection::new(identity.server_config().unwrap()).unwrap();
    let mut wire = Vec::new();
    while c.is_handshaking() || s.is_handshaking() {
        pass(&mut c, &mut s, &mut wire);
        pass(&mut s, &mut c, &mut wire);
    }
    (c, s)
}

fn bench(c: &mut Criterion) {
    let (mut client, mut server) = connected();
    let suite = client.negotiated_cipher_suite().unwrap().suite();
    let frame = vec![0x5a_u8; FRAME];
    let mut out = vec![0u8; FRAME];
    let mut wire = Vec::with_capacity(FRAME + FRAME / 8);
    let mut group = c.benchmark_group("mesh_tls");
    group.throughput(Throughput::Bytes(FRAME as u64));
    // The name stays the same whatever the suite, so builds compare.
    eprintln!("mesh_tls: the nodes agreed on {suite:?}");
    group.bench_function("one 256 KiB frame sealed and opened", |b| {
        b.iter(|| {
            // A record at a time: the receiving side holds at most one
            // record's plaintext (16 KiB) until it is read, as on the mesh.
            for (piece, into) in frame.chunks(RECORD).zip(out.chunks_mut(RECORD)) {
                client.writer().write_all(piece).unwrap();
                pass(&mut client, &mut server, &mut wire);
                server.reader().read_exact(into).unwrap();
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
