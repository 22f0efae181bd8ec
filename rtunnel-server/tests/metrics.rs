//! `--metrics-listen` on both binaries: a real scrape of each after a
//! forwarded connection, a refused login and a tunnel handshake, parsed as
//! Prometheus text; the server's connections counted by connection thread.

#![allow(clippy::unwrap_used)]

mod support;

use support::metrics::*;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_binaries_serve_prometheus_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(
        tmp.path(),
        &["--metrics-listen", "127.0.0.1:0", "--threads", "4"],
    )
    .await;
    let server_metrics = metrics_addr(&server.proc).await;
    let token = user_with_token(&server, "root", "admin");
    let echo = echo_service().await;
    let sys = enroll(&server, "measured");
    let agent = start_agent(
        &server,
        &sys,
        &format!("echo={echo}"),
        &["--no-terminal", "--metrics-listen", "127.0.0.1:0"],
    );
    let agent_metrics = metrics_addr(&agent).await;
    let session = active_session(&server, &token, &sys.id).await;
    let (_forward, local) = start_forward(&server, &token, &session, "echo").await;
    let data = vec![7u8; 10_000];
    assert_eq!(echo_through(local, &data).await, data);
    // One refused login.
    let (status, _) = api_call(
        server.addr,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(&serde_json::json!({"username": "root", "password": "wrong-password"})),
    )
    .await;
    assert_eq!(status, 401);

    // The byte counts land when the connection's end is seen: wait for it.
    let s = wait_for("the server's byte counts", || async move {
        let (status, body) = get(server_metrics, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        let s = parse(&body);
        (s.get("rtunnel_bytes_total{direction=\"to_service\"}")
            .copied()
            >= Some(10_000.0))
        .then_some(s)
    })
    .await;
    assert_eq!(sample(&s, "rtunnel_tunnels"), 1.0);
    assert_eq!(sample(&s, "rtunnel_sessions{state=\"active\"}"), 1.0);
    assert!(sample(&s, "rtunnel_streams_opened_total{kind=\"tcp\"}") >= 1.0);
    assert!(sample(&s, "rtunnel_bytes_total{direction=\"from_service\"}") >= 10_000.0);
    assert!(sample(&s, "rtunnel_auth_failures_total{kind=\"login\"}") >= 1.0);
    assert_eq!(sample(&s, "rtunnel_tunnel_handshake_seconds_count"), 1.0);
    assert!(sample(&s, "rtunnel_stream_open_seconds_count") >= 1.0);
    assert_eq!(sample(&s, "rtunnel_store_errors_total"), 0.0);
    // The connections are counted on the connection threads, and the
    // forward went on to its tunnel's thread: once the requests before it
    // have ended, one thread holds both. (Without, the forward stays on the
    // thread it was accepted on, the one holding fewest, not the tunnel's.)
    let threads = wait_for("the forward on its tunnel's thread", || async move {
        let on = connections_by_thread(server_metrics, 4).await;
        (on.iter().sum::<f64>() == 2.0 && on.contains(&2.0)).then_some(on)
    })
    .await;
    assert_eq!(
        threads.iter().filter(|&&n| n == 0.0).count(),
        3,
        "{threads:?}"
    );

    let a = wait_for("the agent's byte counts", || async move {
        let (_, body) = get(agent_metrics, "/metrics").await;
        let a = parse(&body);
        (a.get("rtunnel_agent_bytes_total{direction=\"from_service\"}")
            .copied()
            >= Some(10_000.0))
        .then_some(a)
    })
    .await;
    assert_eq!(sample(&a, "rtunnel_agent_connected"), 1.0);
    assert_eq!(sample(&a, "rtunnel_agent_connects_total"), 1.0);
    assert!(sample(&a, "rtunnel_agent_streams_opened_total{service=\"echo\"}") >= 1.0);
    assert_eq!(sample(&a, "rtunnel_agent_handshake_seconds_count"), 1.0);
    assert!(sample(&a, "rtunnel_agent_service_dial_seconds_count") >= 1.0);

    // Only /metrics is there; the public listener has none.
    assert!(get(agent_metrics, "/").await.0.contains("404"));
    let (status, _) = api_call(server.addr, "GET", "/metrics", None, None).await;
    assert_eq!(status, 404);
}
