//! A service embedding the rtunnel agent: it offers an in-process `echo`
//! service (no TCP port anywhere) and prints the agent's status as it
//! changes, one line each on stdout.
//!
//! ```text
//! EMBED_URL=ws://127.0.0.1:8090/support/api/v1/tunnel EMBED_KEY=sys_... \
//!     EMBED_SECRET=... cargo run -p rtunnel-agent --example embed-agent
//! ```
//!
//! Operators then reach `echo` like any other service, for example with
//! `rtunnel-agent forward --service echo`.

// Printing is what this example is for.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use rtunnel_agent::{Agent, AgentStatus, ServiceStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends back what the operator sends.
async fn echo(mut stream: ServiceStream) {
    let operator = stream.operator().unwrap_or("?").to_owned();
    println!("echo: a stream from {operator}");
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is required"));
    let agent = Agent::builder()
        .url(var("EMBED_URL")?)
        .credentials(var("EMBED_KEY")?, var("EMBED_SECRET")?)
        .handler("echo", echo)
        .build()?;
    let handle = agent.spawn();
    let mut status = handle.status();
    let printer = tokio::spawn(async move {
        loop {
            let line = match &*status.borrow_and_update() {
                AgentStatus::Connecting => "status: connecting".to_owned(),
                AgentStatus::Active { session_id } => {
                    format!("status: active session={session_id}")
                }
                AgentStatus::Reconnecting { retry_in, reason } => {
                    format!("status: reconnecting in {retry_in:?}: {reason}")
                }
                AgentStatus::Closed { reason } => format!("status: closed: {reason}"),
                other => format!("status: {other:?}"),
            };
            println!("{line}");
            if status.changed().await.is_err() {
                break;
            }
        }
    });
    let mut handle = handle;
    let ended = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        ended = handle.wait() => Some(ended),
    };
    let exit = match ended {
        Some(ended) => ended?,
        None => handle.shutdown().await?,
    };
    println!("stopped: {exit:?}");
    let _ = printer.await;
    Ok(())
}
