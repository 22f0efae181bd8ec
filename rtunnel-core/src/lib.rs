//! # rtunnel-core
//!
//! What the rtunnel server and agent share, with no knowledge of HTTP routes
//! or databases beyond the store traits:
//!
//! - [`proto`]: the versioned wire protocol, pure code over bytes with hard
//!   size limits; [`frame`] reads and writes its frames on async streams.
//! - [`ws`]: a WebSocket message stream as a byte stream.
//! - [`mux`]: the [`Mux`](mux::Mux) trait, its yamux implementation and an
//!   in-memory one.
//! - [`control`]: the handshake and heartbeats on the control stream.
//! - [`link`]: a connection after its handshake, as a
//!   [`Link`](link::Link) handle and a [`LinkDriver`](link::LinkDriver):
//!   what the server and the agent hold for every tunnel and forward.
//! - [`relay`]: bidirectional copy with byte counts.
//! - [`session`]: the support-session state machine (pure).
//! - [`setup`]: the header and reply that open every stream.
//! - [`signal`]: waiting for SIGINT or SIGTERM.
//! - [`store`]: the [`SessionStore`](store::SessionStore),
//!   [`IdentityStore`](store::IdentityStore),
//!   [`ResourceStore`](store::ResourceStore), [`AuditSink`](store::AuditSink)
//!   and [`AuditReader`](store::AuditReader) traits, with the SQLite
//!   implementation behind the `sqlite` feature.
//! - [`ticket`]: single-use tickets and the
//!   [`TicketStore`](ticket::TicketStore) trait, with an in-process store.
//! - [`token`]: the [`TokenSigner`](token::TokenSigner) trait.
//!
//! A tunnel in memory, end to end:
//!
//! ```
//! use rtunnel_core::mux::{Mux, MuxConfig, WireMux};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (a, b) = tokio::io::duplex(64 * 1024);
//! let client = WireMux::client(a, &MuxConfig::default());
//! let server = WireMux::server(b, &MuxConfig::default());
//! let mut out = client.open().await.unwrap();
//! out.write_all(b"ping").await.unwrap();
//! out.flush().await.unwrap();
//! let mut inbound = server.accept().await.unwrap();
//! let mut buf = [0u8; 4];
//! inbound.read_exact(&mut buf).await.unwrap();
//! assert_eq!(&buf, b"ping");
//! # }
//! ```

#[cfg(feature = "cli-config")]
pub mod cli_config;
#[cfg(feature = "cli-docs")]
pub mod cli_docs;
pub mod control;
pub mod frame;
pub mod ids;
pub mod link;
pub mod log_filter;
#[cfg(feature = "logging")]
pub mod logging;
pub mod malloc;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod mux;
pub mod proto;
pub mod ratelimit;
pub mod recording;
pub mod redact;
pub mod relay;
pub mod session;
pub mod setup;
pub mod signal;
pub mod store;
pub mod terminal;
pub mod ticket;
pub mod token;
pub mod ws;
