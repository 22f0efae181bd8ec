//! # rtunnel-agent
//!
//! Both ends of rtunnel that run outside the server:
//!
//! - [`Agent`]: runs on a customer's system, dials out to the server over one
//!   WebSocket, sends its manifest and serves the streams operators open,
//!   dialing only the services it lists; reconnects with backoff and jitter.
//! - [`forward::Forwarder`]: runs on an operator's machine, turning local TCP
//!   connections into streams to a service of a session.
//!
//! The `rtunnel-agent` binary is a thin `main` over [`cli::main`].

pub mod access_log;
pub mod agent;
pub mod backoff;
mod check;
pub mod cli;
mod config;
pub mod consent;
pub mod dial;
pub mod forward;
pub mod handler;
pub mod harden;
pub mod http_proxy;
pub mod metrics;
pub mod runtime;
pub mod services;
pub mod shell;
pub mod state;
pub mod terminal;
mod tls;

pub use agent::{
    Agent, AgentBuilder, AgentConfig, AgentError, AgentExit, AgentHandle, AgentStatus, Endpoint,
};
pub use forward::{ForwardConfig, ForwardError, ForwardTarget, Forwarder};
pub use handler::{ServiceStream, StreamHandler};
pub use http_proxy::{Proxy, ProxyError, ProxyUrlError};
pub use services::{ServiceSpec, parse_services};
pub use tls::ExtraRoots;
