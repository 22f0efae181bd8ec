//! PostgreSQL stopped under a running server and started again: the API
//! answers 503 with the envelope, `/readyz` names the database, the tunnel
//! and the operator's open connection keep flowing, and everything recovers
//! by itself. The real PostgreSQL of `scripts/test.sh`, stopped and started
//! with `scripts/test-services.sh pg-stop|pg-start` (alone in this test
//! binary: no other test shares the outage).

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use serde_json::Value;
use support::*;

fn services(action: &str) {
    let dir = std::env::var("RTUNNEL_TEST_SERVICES_DIR")
        .expect("RTUNNEL_TEST_SERVICES_DIR is not set: run ./scripts/test.sh");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-services.sh");
    let status = Command::new(script).args([action, &dir]).status().unwrap();
    assert!(status.success(), "test-services.sh {action} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_going_away_and_back_is_ridden_out() {
    let tmp = tempfile::tempdir().unwrap();
    use_postgres(tmp.path()).await;
    let server = ServerProc::start(tmp.path(), &[]).await;
    let sys = enroll(&server, "steady");
    let token = user_with_token(&server, "root", "admin");
    let echo = echo_service().await;
    let agent = start_agent(&server, &sys, &format!("echo={echo}"), &[]);
    let session = active_session(&server, &token, &sys.id).await;
    let (_fwd, local) = start_forward(&server, &token, &session, "echo").await;
    // One operator connection open across the outage.
    let mut open = tokio::net::TcpStream::connect(local).await.unwrap();
    roundtrip(&mut open, b"before").await;

    services("pg-stop");
    let (status, v) = api_call(server.addr, "GET", "/readyz", None, None).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (503, Some("database_unavailable")),
        "{v}"
    );
    let (status, v) = api_call(server.addr, "GET", "/api/v1/sessions", Some(&token), None).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["success"], false);
    assert!(v["trace_id"].is_string(), "{v}");
    assert!(
        !v["error"].as_str().unwrap().contains("postgres"),
        "no internals: {v}"
    );
    // The open connection and the tunnel carry on without the database,
    // for longer than a few heartbeats and sweeps.
    for _ in 0..5 {
        roundtrip(&mut open, b"during the outage").await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let mut agent = agent;
    assert!(agent.is_running(), "{}", agent.log_text());

    services("pg-start");
    wait_for("the server to be ready again", || async {
        let (status, _) = api_call(server.addr, "GET", "/readyz", None, None).await;
        (status == 200).then_some(())
    })
    .await;
    let (status, v): (u16, Value) = api_call(
        server.addr,
        "GET",
        &format!("/api/v1/sessions/{session}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["status"], "active",
        "the session lived through the outage: {v}"
    );
    roundtrip(&mut open, b"after").await;
    // New connections too (each is checked against the database again).
    assert_eq!(echo_through(local, b"a new one").await, b"a new one");
}
