//! # rtunnel-server
//!
//! The rtunnel server as a library: agents connect to its tunnel endpoint,
//! operators reach the services behind them through its API. The shipped
//! binary is a thin `main` over [`cli::main`]; services embed it with
//! [`Server::builder`].
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

pub mod accept;
pub mod api;
#[cfg(feature = "cli")]
pub mod cli;
pub mod client_addr;
pub mod cluster;
pub mod config;
pub mod console;
pub mod enroll;
pub mod error;
mod forward;
pub mod keys;
pub mod launcher;
pub mod lifecycle;
pub mod proxy;
pub mod ratelimit;
pub mod refusals;
pub mod registry;
pub mod retention;
pub mod revocation;
pub mod server;
pub mod state;
pub mod streams;
pub mod terminal;
pub mod tickets;
mod tunnel;

pub mod fuzzing;

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
compile_error!("rtunnel-server needs a database: enable `sqlite`, `postgres` or both");

pub use config::ServerConfig;
pub use server::{
    Background, Parts, Server, ServerBuilder, ServerControl, ServerError, ServerHandle,
};
pub use state::{AppState, Stores};
