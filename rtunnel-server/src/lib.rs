//! # rtunnel-server
//!
//! The rtunnel server as a library: agents connect to its tunnel endpoint,
//! operators reach the services behind them through its API. The shipped
//! binary is a thin `main` over [`cli::main`]; services embed it with
//! [`Server::builder`].
//!
//! The modules are private; what an embedder uses is re-exported here:
//! the [`Server`] and its [`ServerBuilder`], [`ServerConfig`], [`Stores`],
//! the running forms ([`ServerHandle`], [`Parts`] with its [`Background`]
//! and [`ServerControl`]), the shared [`AppState`] with the live tunnels
//! ([`Registry`], [`LiveTunnel`]) and the node's [`Cluster`] (with its
//! [`Route`]s), [`ApiError`] (the JSON error envelope), and [`enroll`]
//! (creating systems, users and API tokens). [`cli`] is the shipped
//! binary's command line (feature `cli`).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use rtunnel_core::store::sql::SqlStore;
//! use rtunnel_server::{Server, ServerConfig, Stores};
//!
//! let store = SqlStore::open("/tmp/rtunnel/rtunnel.db".as_ref()).await?;
//! let server = Server::builder()
//!     .config(ServerConfig::default())
//!     .stores(Stores::sqlite(store))
//!     .build()
//!     .await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! server.serve(listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

mod accept;
mod access_log;
mod api;
#[cfg(feature = "cli")]
pub mod cli;
mod client_addr;
mod cluster;
mod config;
mod console;
pub mod enroll;
mod error;
mod events;
mod forward;
mod keys;
mod launcher;
mod lifecycle;
pub mod metrics;
mod proxy;
mod ratelimit;
mod refusals;
mod registry;
mod retention;
mod revocation;
mod routing;
mod server;
mod shards;
mod state;
mod streams;
mod terminal;
mod tickets;
mod tls;
mod tunnel;
mod upgrade;

#[doc(hidden)]
pub mod fuzzing;

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
compile_error!("rtunnel-server needs a database: enable `sqlite`, `postgres` or both");

pub use access_log::AccessLogWriter;
pub use client_addr::TrustedProxies;
#[cfg(feature = "redis")]
pub use cluster::Membership;
pub use cluster::{Cluster, ENTRY_TTL, HEARTBEAT, RemoteTunnel, Route};
pub use config::{DEFAULT_REDIS_PREFIX, ServerConfig};
pub use error::ApiError;
pub use events::{Change, Events, SystemChange};
pub use lifecycle::{ApplyError, Lifecycle};
pub use registry::{LiveTunnel, Registry, TunnelStream};
pub use revocation::{ACCESS_POLL, Access, AccessWatch, Holder};
pub use routing::Tunnels;
pub use server::{
    Background, Parts, Server, ServerBuilder, ServerControl, ServerError, ServerHandle,
};
pub use state::{AppState, Audit, Stores};
pub use tickets::Tickets;
pub use tls::{TlsFiles, TlsReloader};
