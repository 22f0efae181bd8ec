//! The server on PostgreSQL, end to end: real server, admin CLI, agent and
//! forward processes on the real PostgreSQL `scripts/test.sh` starts
//! (`--database-url postgres://...`), including a crash and a restart on
//! the same database.

#![allow(clippy::unwrap_used)]

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_postgres_carries_a_session_and_survives_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let url = use_postgres(tmp.path()).await;
    // The admin CLI works on the same database before the server runs.
    let out = admin(tmp.path(), &["migrate"]);
    assert!(!out.contains("error"), "{out}");
    let listen = format!("127.0.0.1:{}", free_port());
    let server = ServerProc::start_on(tmp.path(), &listen, &[]).await;
    assert!(
        server.proc.log_text().contains("rtunnel-server listening"),
        "{}",
        server.proc.log_text()
    );
    let sys = enroll(&server, "pg-box");
    let token = user_with_token(&server, "root", "admin");
    let echo = echo_service().await;
    let mut agent = start_agent(&server, &sys, &format!("echo={echo}"), &[]);
    let session = active_session(&server, &token, &sys.id).await;
    let (_fwd, local) = start_forward(&server, &token, &session, "echo").await;
    assert_eq!(
        echo_through(local, b"through postgres").await,
        b"through postgres"
    );

    // Nothing of it is in a SQLite file: the data directory holds keys only.
    assert!(!tmp.path().join("data/rtunnel.db").exists());
    let events = audit_events(tmp.path(), "forward_opened").await;
    assert_eq!(events.len(), 1, "{url}");

    // A crash: the new process finds the session in PostgreSQL, puts it in
    // grace, and the agent resumes it.
    let mut server = server;
    server.proc.kill();
    let server = ServerProc::start_on(tmp.path(), &listen, &[]).await;
    wait_session_active(&server, &token, &session).await;
    let data = random_bytes(256 << 10);
    assert!(echo_through(local, &data).await == data);
    assert_eq!(audit_events(tmp.path(), "session_resumed").await.len(), 1);
    assert!(agent.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fails_over_to_another_node_and_resumes_its_session() {
    let tmp = tempfile::tempdir().unwrap();
    use_postgres(tmp.path()).await;
    let (a_addr, b_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut node_a = ServerProc::start_on(tmp.path(), &a_addr, &[]).await;
    let sys = enroll(&node_a, "roaming");
    let token = user_with_token(&node_a, "root", "admin");
    let echo = echo_service().await;
    // Both nodes, comma separated, as RTUNNEL_URL would carry them.
    let urls = format!("ws://{a_addr}/api/v1/tunnel,ws://{b_addr}/api/v1/tunnel");
    let agent = start_agent_at(&node_a, &urls, &sys, &format!("echo={echo}"), &[]);
    let session = active_session(&node_a, &token, &sys.id).await;

    // Node A dies; node B (same database) takes over: the session waits in
    // grace there and the agent, failing over, resumes it.
    node_a.proc.kill();
    let node_b = ServerProc::start_on(tmp.path(), &b_addr, &[]).await;
    // The agent's word first: until node B's recovery ran, the database
    // still says "active" from node A's time.
    wait_for("the agent to resume its session on node B", || {
        let log = agent.log_text();
        async move { log.contains("resumed the session").then_some(()) }
    })
    .await;
    let log = agent.log_text();
    assert!(
        log.contains(&format!("next attempt goes to ws://{b_addr}")),
        "{log}"
    );
    wait_session_active(&node_b, &token, &session).await;
    let (_fwd, local) = start_forward(&node_b, &token, &session, "echo").await;
    assert_eq!(echo_through(local, b"via node B").await, b"via node B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_database_url_is_a_usage_error() {
    let out = std::process::Command::new(server_bin())
        .args(["--database-url", "mysql://x/y", "migrate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unsupported --database-url"), "{err}");
}
