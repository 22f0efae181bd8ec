//! `swarm`: many real agents against one server, from one process.
//!
//! Enrolls N systems through the API, runs one agent (the real agent
//! library: WebSocket, handshake, manifest, heartbeats, reconnects) for
//! each, and prints one JSON line when all are active. While it holds the
//! tunnels (`--hold`), every time agents lose their tunnel (a server
//! restart) it prints another line when all are back, with the spread of
//! the reconnect delays they drew (the jitter that keeps a restart from
//! becoming a thundering herd). With `--server-pid` it also reports the
//! server's resident memory, and what each idle tunnel costs it.
//!
//! ```text
//! cargo run --release -p rtunnel-benches --bin swarm -- \
//!     --server http://127.0.0.1:8080 --token "$ADMIN_TOKEN" --agents 1000 --hold 60s
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use rtunnel_agent::agent::{Agent, AgentHandle, AgentStatus};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(about = "Holds many real agents' tunnels to one rtunnel server")]
struct Args {
    /// The server's base URL, with its path prefix if it has one.
    #[arg(long)]
    server: String,
    /// An admin's API token.
    #[arg(long, env = "RTUNNEL_TOKEN", hide_env_values = true)]
    token: String,
    /// How many agents.
    #[arg(long)]
    agents: usize,
    /// How long to hold the tunnels once all are active.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Enrollment requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// The server's process id (same machine): report its memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The agents' first reconnect delay (doubling, with jitter).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    reconnect_delay: Duration,
    /// The agents' longest reconnect delay.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    max_reconnect_delay: Duration,
    /// Delete the enrolled systems at the end.
    #[arg(long)]
    cleanup: bool,
}

#[derive(Debug, Deserialize)]
struct Enrolled {
    id: String,
    key: String,
    secret: String,
}

/// A status change of agent `index`, seen at `at`.
struct Change {
    index: usize,
    at: Instant,
    status: AgentStatus,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("swarm: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    // Every agent holds a socket.
    let (_, hard) = rlimit::Resource::NOFILE.get().map_err(|e| e.to_string())?;
    rlimit::Resource::NOFILE
        .set(hard, hard)
        .map_err(|e| format!("cannot raise the open-file limit: {e}"))?;
    if (hard as usize) < args.agents + 256 {
        return Err(format!(
            "the open-file limit ({hard}) is too low for {} agents",
            args.agents
        ));
    }
    let base = args.server.trim_end_matches('/').to_owned();
    let ws_url = format!(
        "{}/api/v1/tunnel",
        base.replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1)
    );
    let http = reqwest::Client::new();
    let rss_before = args.server_pid.and_then(rss_kib);

    let started = Instant::now();
    let run_id = format!(
        "{:06x}",
        std::process::id() ^ (started.elapsed().as_nanos() as u32)
    );
    let systems: Vec<Enrolled> = futures::stream::iter(0..args.agents)
        .map(|i| enroll(&http, &base, &args.token, format!("swarm-{run_id}-{i}")))
        .buffer_unordered(args.concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let enrolled_s = started.elapsed().as_secs_f64();
    eprintln!(
        "swarm: enrolled {} systems in {enrolled_s:.1}s",
        systems.len()
    );

    let (changes_tx, mut changes) = mpsc::unbounded_channel();
    let connecting = Instant::now();
    let mut agents: Vec<AgentHandle> = Vec::with_capacity(systems.len());
    for (index, system) in systems.iter().enumerate() {
        let agent = Agent::builder()
            .url(ws_url.clone())
            .credentials(system.key.clone(), system.secret.clone())
            .terminal(None)
            .reconnect_delay(args.reconnect_delay)
            .max_reconnect_delay(args.max_reconnect_delay)
            .build()
            .map_err(|e| e.to_string())?
            .spawn();
        let mut status = agent.status();
        let tx = changes_tx.clone();
        tokio::spawn(async move {
            loop {
                let change = Change {
                    index,
                    at: Instant::now(),
                    status: status.borrow_and_update().clone(),
                };
                if tx.send(change).is_err() || status.changed().await.is_err() {
                    break;
                }
            }
        });
        agents.push(agent);
    }
    drop(changes_tx);

    let mut active = vec![false; agents.len()];
    let mut count = 0usize;
    let mut first_active = Vec::with_capacity(agents.len());
    while count < agents.len() {
        let Some(change) = changes.recv().await else {
            return Err("every agent stopped".into());
        };
        match change.status {
            AgentStatus::Active { .. } if !active[change.index] => {
                active[change.index] = true;
                count += 1;
                first_active.push(change.at.duration_since(connecting));
            }
            AgentStatus::Closed { reason } => {
                return Err(format!("agent {} stopped: {reason}", change.index));
            }
            _ => {}
        }
    }
    let all_active = connecting.elapsed();
    // Let allocations settle before reading the server's memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = args.server_pid.and_then(rss_kib);
    let per_tunnel = match (rss_before, rss_after) {
        (Some(b), Some(a)) => Some((a.saturating_sub(b)) as f64 / agents.len() as f64),
        _ => None,
    };
    println!(
        "{}",
        json!({
            "event": "active",
            "agents": agents.len(),
            "enroll_seconds": round(enrolled_s),
            "seconds_until_all_active": round(all_active.as_secs_f64()),
            "first_active_seconds": spread(&mut first_active),
            "server_rss_kib_before": rss_before,
            "server_rss_kib": rss_after,
            "server_kib_per_tunnel": per_tunnel.map(round),
        })
    );

    hold(&args, &mut changes, &mut active, rss_before).await;

    for agent in agents {
        let _ = agent.shutdown().await;
    }
    if args.cleanup {
        let deleted = futures::stream::iter(systems.iter())
            .map(|s| {
                http.delete(format!("{base}/api/v1/systems/{}", s.id))
                    .bearer_auth(&args.token)
                    .send()
            })
            .buffer_unordered(args.concurrency.max(1))
            .filter(|r| std::future::ready(r.as_ref().is_ok_and(|r| r.status().is_success())))
            .count()
            .await;
        eprintln!("swarm: deleted {deleted} systems");
    }
    Ok(())
}

/// Holds the tunnels for `--hold`; after every loss, prints when all are
/// back and the reconnect delays the lost agents drew.
async fn hold(
    args: &Args,
    changes: &mut mpsc::UnboundedReceiver<Change>,
    active: &mut [bool],
    rss_before: Option<u64>,
) {
    let deadline = tokio::time::Instant::now() + args.hold;
    let mut lost_at: Option<Instant> = None;
    let mut lost = 0usize;
    let mut delays: Vec<Duration> = Vec::new();
    let mut down = 0usize;
    loop {
        let change = tokio::select! {
            change = changes.recv() => change,
            _ = tokio::time::sleep_until(deadline) => break,
        };
        let Some(change) = change else { break };
        match change.status {
            AgentStatus::Active { .. } if !active[change.index] => {
                active[change.index] = true;
                down -= 1;
                if down == 0
                    && let Some(since) = lost_at.take()
                {
                    let rss = args.server_pid.and_then(rss_kib);
                    println!(
                        "{}",
                        json!({
                            "event": "recovered",
                            "agents": active.len(),
                            "lost": lost,
                            "seconds_until_all_active": round(change.at.duration_since(since).as_secs_f64()),
                            "reconnect_delay_seconds": spread(&mut delays),
                            "server_rss_kib": rss,
                            "server_rss_kib_before": rss_before,
                        })
                    );
                    lost = 0;
                    delays.clear();
                }
            }
            AgentStatus::Reconnecting { retry_in, .. } => {
                if active[change.index] {
                    active[change.index] = false;
                    down += 1;
                    lost += 1;
                    lost_at.get_or_insert(change.at);
                }
                delays.push(retry_in);
            }
            AgentStatus::Closed { reason } => {
                eprintln!("swarm: agent {} stopped: {reason}", change.index);
            }
            _ => {}
        }
    }
}

async fn enroll(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    name: String,
) -> Result<Enrolled, String> {
    let response = http
        .post(format!("{base}/api/v1/systems"))
        .bearer_auth(token)
        .json(&json!({ "name": name }))
        .send()
        .await
        .map_err(|e| format!("cannot enroll {name}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(format!("cannot enroll {name}: {status} {body}"));
    }
    response
        .json()
        .await
        .map_err(|e| format!("cannot enroll {name}: {e}"))
}

/// Resident memory of process `pid`, in KiB (Linux).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Minimum, median, 99th percentile and maximum, in seconds.
fn spread(values: &mut [Duration]) -> serde_json::Value {
    if values.is_empty() {
        return serde_json::Value::Null;
    }
    values.sort();
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize].as_secs_f64();
    json!({
        "min": round(at(0.0)),
        "p50": round(at(0.5)),
        "p99": round(at(0.99)),
        "max": round(at(1.0)),
    })
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
