//! Redis stopped under two running nodes and started again (a
//! `redis-server` of this test's own, so no other test shares the outage;
//! PostgreSQL is the shared one of `scripts/test.sh`): `/readyz` names
//! Redis, what lives in Redis (terminal tickets) answers 503 with the
//! envelope, tunnels and open connections keep flowing, new connections
//! are routed by the database, and once Redis is back the nodes announce
//! themselves again, resubscribe, and catch up on the commands they missed.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Instant;

use serde_json::Value;
use support::*;

/// One node on `redis`.
async fn node(dir: &std::path::Path, redis: &str, prefix: &str, id: &str) -> ServerProc {
    let args = node_args(redis, prefix, id);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = ServerProc::start(dir, &args).await;
    wait_subscribed(&server, 1).await;
    server
}

/// Waits until `server` has subscribed to the other nodes' commands `n`
/// times (once at start, once more after each Redis restart).
async fn wait_subscribed(server: &ServerProc, n: usize) {
    wait_for("the node to listen to the other nodes", || {
        let log = server.proc.log_text();
        async move {
            (log.matches("listening to the other nodes' commands")
                .count()
                >= n)
                .then_some(())
        }
    })
    .await;
}

async fn readyz(server: &ServerProc) -> (u16, Value) {
    api_call(server.addr, "GET", "/readyz", None, None).await
}

async fn close_session(server: &ServerProc, token: &str, session: &str) {
    let (status, v) = api_call(
        server.addr,
        "DELETE",
        &format!("/api/v1/sessions/{session}"),
        Some(token),
        None,
    )
    .await;
    assert!(status < 300, "{status} {v}");
}

async fn wait_told_over(agent: &Proc) {
    wait_for("the agent to be told its session is over", || {
        let log = agent.log_text();
        async move { log.contains("session over").then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_and_back_is_ridden_out_by_every_node() {
    let tmp = tempfile::tempdir().unwrap();
    use_postgres(tmp.path()).await;
    let port = free_port();
    let redis = OwnRedis::start(port).await;
    let url = redis.url();
    let prefix = unique_prefix();
    let a = node(tmp.path(), &url, &prefix, "node-a").await;
    let b = node(tmp.path(), &url, &prefix, "node-b").await;
    let root = user_with_token(&a, "root", "admin");
    let echo = echo_service().await;
    // Two agents on node A, each with a session; operators use node B.
    let first = enroll(&a, "first");
    let mut first_agent = start_agent(&a, &first, &format!("echo={echo}"), &[]);
    let second = enroll(&a, "second");
    let second_agent = start_agent(&a, &second, &format!("echo={echo}"), &[]);
    let first_session = active_session(&b, &root, &first.id).await;
    let second_session = active_session(&b, &root, &second.id).await;
    let (_fwd, local) = start_forward(&b, &root, &first_session, "echo").await;
    let mut open = tokio::net::TcpStream::connect(local).await.unwrap();
    roundtrip(&mut open, b"before").await;
    let ticket_path = format!("/api/v1/sessions/{first_session}/terminal-ticket");
    let (status, v) = api_call(b.addr, "POST", &ticket_path, Some(&root), None).await;
    assert_eq!(status, 200, "{v}");

    drop(redis);
    let outage = Instant::now();
    for node in [&a, &b] {
        let (status, v) = readyz(node).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (503, Some("redis_unavailable")),
            "{v}"
        );
    }
    // Tickets live in Redis: none can be issued.
    let (status, v) = api_call(b.addr, "POST", &ticket_path, Some(&root), None).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (503, Some("tickets_unavailable")),
        "{v}"
    );
    assert_eq!(v["success"], false);
    assert!(v["trace_id"].is_string(), "{v}");
    assert!(
        !v["error"].as_str().unwrap().contains("redis"),
        "no internals: {v}"
    );
    // The audit log does not claim a ticket was issued.
    let issued = audit_events(tmp.path(), "terminal_ticket_issued").await;
    assert_eq!(issued.len(), 1, "{issued:?}");
    // What lives in the database still answers.
    let v = session_status(&b, &root, &first_session).await.unwrap();
    assert_eq!(v["status"], "active", "{v}");
    // The open connection through node B to node A carries on, for longer
    // than a few heartbeats; new connections find node A by the database.
    for i in 0..5 {
        roundtrip(&mut open, b"during the outage").await;
        let data = format!("new connection {i}");
        assert_eq!(
            echo_through(local, data.as_bytes()).await,
            data.as_bytes(),
            "{}",
            b.proc.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(first_agent.is_running(), "{}", first_agent.log_text());
    eprintln!("ran through {:?} without Redis", outage.elapsed());

    // Redis back on the same port: every node is ready again by itself,
    // and listens to the others again.
    let redis = OwnRedis::start(port).await;
    let back = Instant::now();
    for node in [&a, &b] {
        wait_for("the node to be ready again", || async {
            let (status, _) = readyz(node).await;
            (status == 200).then_some(())
        })
        .await;
        wait_subscribed(node, 2).await;
    }
    eprintln!(
        "both nodes ready and subscribed {:?} after Redis came back",
        back.elapsed()
    );
    let (status, v) = api_call(b.addr, "POST", &ticket_path, Some(&root), None).await;
    assert_eq!(status, 200, "{v}");
    roundtrip(&mut open, b"after").await;
    // A close on node B reaches the tunnel on node A over the new
    // subscription.
    close_session(&b, &root, &first_session).await;
    wait_told_over(&first_agent).await;

    // A close made while Redis is away is not lost: node A catches up when
    // it subscribes again.
    drop(redis);
    close_session(&b, &root, &second_session).await;
    let _redis = OwnRedis::start(port).await;
    let started = Instant::now();
    wait_subscribed(&a, 3).await;
    wait_told_over(&second_agent).await;
    eprintln!(
        "the close made during the outage reached the agent {:?} after Redis came back",
        started.elapsed()
    );
}
