//! Several server nodes on one PostgreSQL and one Redis (both the real
//! ones `scripts/test.sh` starts), as separate processes on loopback: an
//! operator on one node reaches the agent connected to another through the
//! node channel; a close, a revoke or a regenerated secret on any node takes
//! effect where the tunnel or the connection lives; a node killed, its agents resume on
//! another, and the nodes left put the dead node's other sessions in grace.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One node of a test cluster.
async fn node(dir: &std::path::Path, prefix: &str, id: &str) -> ServerProc {
    let args = node_args(&test_redis_url(), prefix, id);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = ServerProc::start(dir, &args).await;
    wait_for("the node to join the cluster", || {
        let log = server.proc.log_text();
        async move { log.contains("joining the cluster").then_some(()) }
    })
    .await;
    server
}

/// The id of the user `name`, as the API lists it.
async fn user_id(server: &ServerProc, admin_token: &str, name: &str) -> String {
    let (status, v) = api_call(server.addr, "GET", "/api/v1/users", Some(admin_token), None).await;
    assert_eq!(status, 200, "{v}");
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Waits until the connection is closed by the far end; returns how long
/// that took.
async fn closed_within(conn: &mut tokio::net::TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(WAIT, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection stayed open"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_on_any_node_reach_an_agent_on_another_and_closes_reach_it() {
    let tmp = tempfile::tempdir().unwrap();
    use_postgres(tmp.path()).await;
    let prefix = unique_prefix();
    let a = node(tmp.path(), &prefix, "node-a").await;
    let b = node(tmp.path(), &prefix, "node-b").await;
    let c = node(tmp.path(), &prefix, "node-c").await;
    let sys = enroll(&a, "far-box");
    let root = user_with_token(&a, "root", "admin");
    let olga = user_with_token(&a, "olga", "operator");
    a.admin(&["grant", "olga", "far-box"]);
    let echo = echo_service().await;
    let web = http_service().await;
    // The agent knows node A only.
    // `gone` names a port nobody listens on: the agent refuses its streams.
    let gone = free_port();
    let agent = start_agent(
        &a,
        &sys,
        &format!("echo={echo},web={web},gone=127.0.0.1:{gone}"),
        &[],
    );
    // Every node answers for the session: the database is shared.
    let session = active_session(&b, &root, &sys.id).await;

    // A forward through node B: its streams are opened on node A's tunnel
    // over the node channel.
    let (_fwd_b, local_b) = start_forward(&b, &olga, &session, "echo").await;
    let data = random_bytes(1 << 20);
    assert!(echo_through(local_b, &data).await == data);

    // The subdomain proxy of node C, to the web service behind node A.
    let (status, v) = api_call(
        c.addr,
        "POST",
        &format!("/api/v1/sessions/{session}/proxy-token"),
        Some(&olga),
        Some(&json!({"service": "web"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let url = v["url"].as_str().unwrap();
    let host = url.split("//").nth(1).unwrap().split(':').next().unwrap();
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .no_proxy()
        .resolve(host, c.addr)
        .build()
        .unwrap();
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("<html"));

    // The agent's refusal crosses the node channel typed and unchanged:
    // its code and its reason reach the browser on node C.
    let (status, v) = api_call(
        c.addr,
        "POST",
        &format!("/api/v1/sessions/{session}/proxy-token"),
        Some(&olga),
        Some(&json!({"service": "gone"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let url = v["url"].as_str().unwrap();
    let host = url.split("//").nth(1).unwrap().split(':').next().unwrap();
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .no_proxy()
        .resolve(host, c.addr)
        .build()
        .unwrap();
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "service_unreachable", "{v}");
    let reason = v["error"].as_str().unwrap();
    assert!(
        reason.contains(&format!("cannot reach gone at 127.0.0.1:{gone}")),
        "{reason}"
    );

    // A revoke on node B cuts olga's open connection through node C.
    let (_fwd_c, local_c) = start_forward(&c, &olga, &session, "echo").await;
    let mut open = tokio::net::TcpStream::connect(local_c).await.unwrap();
    open.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    open.read_exact(&mut back).await.unwrap();
    let olga_id = user_id(&b, &root, "olga").await;
    let (status, v) = api_call(
        b.addr,
        "DELETE",
        "/api/v1/grants",
        Some(&root),
        Some(&json!({"user_id": olga_id, "system_id": sys.id})),
    )
    .await;
    assert!(status < 300, "{status} {v}");
    let cut = closed_within(&mut open).await;
    eprintln!("revoke on node B cut the connection through node C after {cut:?}");
    assert!(cut < Duration::from_secs(1), "revoke took {cut:?}");

    // A close on node C reaches the tunnel on node A: the agent is told.
    let started = Instant::now();
    let (status, v) = api_call(
        c.addr,
        "DELETE",
        &format!("/api/v1/sessions/{session}"),
        Some(&root),
        None,
    )
    .await;
    assert!(status < 300, "{status} {v}");
    wait_for("the agent to be told its session is over", || {
        let log = agent.log_text();
        async move { log.contains("session over").then_some(()) }
    })
    .await;
    let took = started.elapsed();
    eprintln!("close on node C reached the agent on node A after {took:?}");
    assert!(took < Duration::from_secs(1), "close took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_regenerated_on_one_node_stops_the_agent_on_another() {
    let tmp = tempfile::tempdir().unwrap();
    use_postgres(tmp.path()).await;
    let prefix = unique_prefix();
    let a = node(tmp.path(), &prefix, "node-a").await;
    let b = node(tmp.path(), &prefix, "node-b").await;
    let sys = enroll(&a, "leaked");
    let root = user_with_token(&a, "root", "admin");
    let echo = echo_service().await;
    let mut agent = start_agent(&a, &sys, &format!("echo={echo}"), &[]);
    let session = active_session(&b, &root, &sys.id).await;

    let started = Instant::now();
    let path = format!("/api/v1/systems/{}/regenerate-secret", sys.id);
    let (status, v) = api_call(b.addr, "POST", &path, Some(&root), None).await;
    assert_eq!(status, 200, "{v}");
    // The agent on node A is told its credentials are revoked, and stops.
    let exit = agent.wait_exit().await;
    eprintln!(
        "a secret regenerated on node B stopped the agent on node A after {:?}",
        started.elapsed()
    );
    assert_eq!(exit.code(), Some(1));
    let log = agent.log_text();
    assert!(log.contains("revoked this system's credentials"), "{log}");
    let v = session_status(&a, &root, &session).await.unwrap();
    assert_eq!(v["status"], "closed", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_agents_resume_elsewhere_and_its_other_sessions_wait_in_grace() {
    let tmp = tempfile::tempdir().unwrap();
    use_postgres(tmp.path()).await;
    let prefix = unique_prefix();
    let mut a = node(tmp.path(), &prefix, "node-a").await;
    let b = node(tmp.path(), &prefix, "node-b").await;
    let root = user_with_token(&a, "root", "admin");
    let echo = echo_service().await;
    // One agent can fail over to node B; another knows node A only.
    let roaming = enroll(&a, "roaming");
    let urls = format!("{},{}", a.tunnel_url(), b.tunnel_url());
    let roaming_agent = start_agent_at(&a, &urls, &roaming, &format!("echo={echo}"), &[]);
    let stuck = enroll(&a, "stuck");
    let _stuck_agent = start_agent(&a, &stuck, &format!("echo={echo}"), &[]);
    let roaming_session = active_session(&b, &root, &roaming.id).await;
    let stuck_session = active_session(&b, &root, &stuck.id).await;
    let (_fwd, local) = start_forward(&b, &root, &roaming_session, "echo").await;
    assert_eq!(echo_through(local, b"via a").await, b"via a");

    // A third node starting while the others run leaves their sessions
    // alone (it recovers only its own).
    let c = node(tmp.path(), &prefix, "node-c").await;
    for id in [&roaming_session, &stuck_session] {
        let v = session_status(&c, &root, id).await.unwrap();
        assert_eq!(v["status"], "active", "{v}");
    }

    a.proc.kill();
    // The roaming agent resumes its session on node B at once.
    wait_for("the roaming agent to resume on node B", || {
        let log = roaming_agent.log_text();
        async move { log.contains("resumed the session").then_some(()) }
    })
    .await;
    wait_session_active(&b, &root, &roaming_session).await;
    assert_eq!(echo_through(local, b"via b").await, b"via b");
    // Node C reaches it on node B.
    let (_fwd_c, local_c) = start_forward(&c, &root, &roaming_session, "echo").await;
    assert_eq!(echo_through(local_c, b"via c").await, b"via c");

    // The other agent cannot come back; once node A has been silent long
    // enough, the nodes left put its session in grace.
    wait_for("the dead node's session to wait in grace", || async {
        let v = session_status(&b, &root, &stuck_session).await?;
        (v["status"] == "grace_period").then_some(())
    })
    .await;
    let lost = audit_events(tmp.path(), "node_lost").await;
    assert!(
        lost.iter().any(|e| e.details["node"] == "node-a"),
        "{lost:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_channel_refuses_requests_not_signed_with_the_cluster_key() {
    let tmp = tempfile::tempdir().unwrap();
    use_postgres(tmp.path()).await;
    let prefix = unique_prefix();
    let a = node(tmp.path(), &prefix, "node-a").await;
    let channel: std::net::SocketAddr = wait_for("the node channel's address", || {
        let log = a.proc.log_text();
        async move {
            let line = log.lines().find(|l| l.contains("joining the cluster"))?;
            line.split("address=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        }
    })
    .await;
    let session = uuid::Uuid::new_v4();
    let stream = serde_json::to_string(&rtunnel_core::proto::StreamHeader::new(
        "echo",
        rtunnel_core::proto::StreamKind::Tcp,
    ))
    .unwrap();
    let subject = format!("POST /v1/sessions/{session}/streams\n{stream}");
    let request = |auth: &str| {
        format!(
            "POST /v1/sessions/{session}/streams HTTP/1.1\r\nHost: {channel}\r\n\
             Connection: upgrade, close\r\nUpgrade: rtunnel-stream\r\nAuthorization: {auth}\r\n\
             X-Rtunnel-Stream: {stream}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let now = rtunnel_core::store::now_millis();
    let forged_key = rtunnel_auth::node::NodeKey::new(&[9; 32]).unwrap();
    for auth in [
        String::new(),
        "Bearer x".to_owned(),
        forged_key.authorize("node-x", &subject, now),
    ] {
        let (status, body) = http_raw(channel, &request(&auth)).await.unwrap();
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("node_auth_failed"), "{body}");
    }
    // Signed with the cluster key: heard (this node holds no such tunnel),
    // once; the same request again is a replay.
    let key = std::fs::read_to_string(tmp.path().join("data/cluster.key")).unwrap();
    let key = rtunnel_auth::node::NodeKey::new(&hex::decode(key.trim()).unwrap()).unwrap();
    let signed = request(&key.authorize("node-x", &subject, now));
    let (status, body) = http_raw(channel, &signed).await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("tunnel_not_here"), "{body}");
    let (status, body) = http_raw(channel, &signed).await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("replayed"), "{body}");
    // The public listener has no such endpoint.
    let (status, _) = api_call(
        a.addr,
        "POST",
        &format!("/v1/sessions/{session}/streams"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 404);
}
