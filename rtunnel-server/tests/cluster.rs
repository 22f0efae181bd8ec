//! Several server nodes on one PostgreSQL and one Redis (both the real
//! ones `scripts/test.sh` starts), as separate processes on loopback: an
//! operator on one node reaches the agent connected to another through the
//! node mesh (TLS, encrypted, only for the cluster's nodes); a close, a revoke or a regenerated secret on any node takes
//! effect where the tunnel or the connection lives; a node killed, its agents resume on
//! another, and the nodes left put the dead node's other sessions in grace.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP proxy that keeps a copy of every byte it carries, both ways.
struct RecordingProxy {
    addr: std::net::SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl RecordingProxy {
    async fn start(upstream: std::net::SocketAddr) -> RecordingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(copy_recording(dr, uw, record.clone()));
                tokio::spawn(copy_recording(ur, dw, record.clone()));
            }
        });
        RecordingProxy { addr, seen }
    }

    fn bytes(&self) -> Vec<u8> {
        self.seen.lock().unwrap().clone()
    }
}

async fn copy_recording(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// One node of a test cluster.
async fn node(dir: &std::path::Path, prefix: &str, id: &str) -> ServerProc {
    node_with(dir, prefix, id, &[]).await
}

/// One node of a test cluster, with more arguments.
async fn node_with(dir: &std::path::Path, prefix: &str, id: &str, more: &[&str]) -> ServerProc {
    let args = node_args(&test_redis_url(), prefix, id);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend_from_slice(more);
    let server = ServerProc::start(dir, &args).await;
    wait_for("the node to join the cluster", || {
        let log = server.proc.log_text();
        async move { log.contains("joining the cluster").then_some(()) }
    })
    .await;
    server
}

/// Two nodes on one PostgreSQL database, an agent with an `echo` service
/// on node A, and its session active as node B sees it.
struct EchoOnA {
    _tmp: tempfile::TempDir,
    a: ServerProc,
    b: ServerProc,
    root: String,
    system_id: String,
    agent: Proc,
    session: String,
}

async fn echo_on_a(system: &str) -> EchoOnA {
    let tmp = tempfile::tempdir().unwrap();
    use_postgres(tmp.path()).await;
    let prefix = unique_prefix();
    let a = node(tmp.path(), &prefix, "node-a").await;
    let b = node(tmp.path(), &prefix, "node-b").await;
    let sys = enroll(&a, system);
    let root = user_with_token(&a, "root", "admin");
    let echo = echo_service().await;
    let agent = start_agent(&a, &sys, &format!("echo={echo}"), &[]);
    let session = active_session(&b, &root, &sys.id).await;
    EchoOnA {
        _tmp: tmp,
        a,
        b,
        root,
        system_id: sys.id,
        agent,
        session,
    }
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

/// Mints a proxy link to `service` on `node` as `token` and follows it
/// (cookies kept); the service's answer.
async fn follow_proxy_link(
    node: &ServerProc,
    token: &str,
    session: &str,
    service: &str,
) -> reqwest::Response {
    let (status, v) = api_call(
        node.addr,
        "POST",
        &format!("/api/v1/sessions/{session}/proxy-token"),
        Some(token),
        Some(&json!({ "service": service })),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let url = v["url"].as_str().unwrap();
    let host = url.split("//").nth(1).unwrap().split(':').next().unwrap();
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .no_proxy()
        .resolve(host, node.addr)
        .build()
        .unwrap();
    client.get(url).send().await.unwrap()
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
    // over the node mesh.
    let (_fwd_b, local_b) = start_forward(&b, &olga, &session, "echo").await;
    let data = random_bytes(1 << 20);
    assert!(echo_through(local_b, &data).await == data);

    // The subdomain proxy of node C, to the web service behind node A.
    let resp = follow_proxy_link(&c, &olga, &session, "web").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("<html"));

    // The agent's refusal crosses the node mesh typed and unchanged:
    // its code and its reason reach the browser on node C.
    let resp = follow_proxy_link(&c, &olga, &session, "gone").await;
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

    // A console on node B follows the session live.
    let mut events = reqwest::Client::new()
        .get(format!("http://{}/api/v1/events", b.addr))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);

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
    // ...and the console on node B hears of it.
    let closed = format!(
        r#""id":"{session}","system_id":"{}","status":"closed""#,
        sys.id
    );
    let mut seen = String::new();
    while !seen.contains(&closed) {
        let chunk = tokio::time::timeout(Duration::from_secs(20), events.chunk())
            .await
            .expect("node B streams the close made on node C")
            .unwrap()
            .expect("the event stream stays open");
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

/// On connection threads, a stream through another node crosses no
/// thread on either node: the holder serves the mesh connection on its
/// tunnel's thread (the route names it, the dialing node asks for it), and
/// the operator's node moves a `forward` to the thread of its mesh
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_through_another_node_shares_threads_with_the_mesh_and_the_tunnel() {
    let tmp = tempfile::tempdir().unwrap();
    use_postgres(tmp.path()).await;
    let prefix = unique_prefix();
    let threads = ["--threads", "2", "--metrics-listen", "127.0.0.1:0"];
    let a = node_with(tmp.path(), &prefix, "node-a", &threads).await;
    let b = node_with(tmp.path(), &prefix, "node-b", &threads).await;
    let (a_metrics, b_metrics) = (
        support::metrics::metrics_addr(&a.proc).await,
        support::metrics::metrics_addr(&b.proc).await,
    );
    let sys = enroll(&a, "far-box");
    let root = user_with_token(&a, "root", "admin");
    let echo = echo_service().await;
    let _agent = start_agent(&a, &sys, &format!("echo={echo}"), &[]);
    let session = active_session(&b, &root, &sys.id).await;
    // The first forward's first stream dials node B's mesh connection to
    // node A, on the first forward's thread.
    let (_first, local) = start_forward(&b, &root, &session, "echo").await;
    assert_eq!(echo_through(local, b"first").await, b"first");
    // The second is accepted on the other thread (it holds fewer), and
    // goes on to the mesh connection's.
    let (_second, local) = start_forward(&b, &root, &session, "echo").await;
    assert_eq!(echo_through(local, b"second").await, b"second");
    // Once the requests before them have ended, one thread of each node
    // holds both its connections: node B's two forwards, node A's tunnel
    // and the mesh connection from node B. (Each would go to the thread
    // holding fewest otherwise: one connection on each.)
    for (node, metrics) in [("B", b_metrics), ("A", a_metrics)] {
        wait_for(
            &format!("node {node}'s connections on one thread"),
            || async move {
                let on = support::metrics::connections_by_thread(metrics, 2).await;
                (on.iter().sum::<f64>() == 2.0 && on.contains(&2.0)).then_some(())
            },
        )
        .await;
    }
}

/// A node uses a route it read less than a second ago again (no Redis
/// round trip per stream), and forgets it as soon as the holder says the
/// tunnel ended: a connection through node B right after the agent on
/// node A left hears that the agent is reconnecting (the session's
/// grace), not node A's "not connected to the node it was routed to".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_forgets_a_route_as_soon_as_its_tunnel_ends() {
    // Every field is bound: one left out would be dropped here (node A
    // stopped, the data directory deleted).
    let EchoOnA {
        _tmp,
        a: _a,
        b,
        root,
        system_id: _,
        mut agent,
        session,
    } = echo_on_a("far-box").await;
    // Node B reads the route now, and would use it again for a second.
    let (fwd, local) = start_forward(&b, &root, &session, "echo").await;
    assert_eq!(echo_through(local, b"via a").await, b"via a");
    agent.kill();
    wait_for("the session to enter grace", || async {
        let v = session_status(&b, &root, &session).await?;
        (v["status"] == "grace_period").then_some(())
    })
    .await;
    let mut conn = tokio::net::TcpStream::connect(local).await.unwrap();
    let _ = conn.write_all(b"anyone?").await;
    let mut buf = [0u8; 16];
    assert!(
        matches!(conn.read(&mut buf).await, Ok(0) | Err(_)),
        "refused"
    );
    let refusal = wait_for("the forward to log the refusal", || async {
        let log = fwd.log_text();
        log.lines()
            .find(|l| l.contains("refused the connection"))
            .map(str::to_owned)
    })
    .await;
    assert!(refusal.contains("agent_reconnecting"), "{refusal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_regenerated_on_one_node_stops_the_agent_on_another() {
    let EchoOnA {
        _tmp,
        a,
        b,
        root,
        system_id,
        mut agent,
        session,
    } = echo_on_a("leaked").await;

    let started = Instant::now();
    let path = format!("/api/v1/systems/{}/regenerate-secret", system_id);
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
    // Node B writes the session active in the database and then puts its
    // tunnel in its registry, a few microseconds apart: a stream opened in
    // between would be refused (the route still names node A, which is
    // gone) and the next one gets through, so the test does not count on
    // the first.
    wait_for("a stream through node B", || async move {
        (echo_through(local, b"via b").await == b"via b").then_some(())
    })
    .await;
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

/// The mesh address a node announced.
async fn mesh_address(server: &ServerProc) -> std::net::SocketAddr {
    logged_address(&server.proc, "joining the cluster", "address").await
}

/// TLS to a node's mesh address with the identity of `cluster_key`.
async fn mesh_tls(
    addr: std::net::SocketAddr,
    cluster_key: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let identity = rtunnel_auth::mesh::MeshIdentity::from_cluster_key(cluster_key).unwrap();
    let connector = tokio_rustls::TlsConnector::from(identity.client_config().unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(rtunnel_auth::mesh::SERVER_NAME).unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    // TLS 1.3 reports a refused client certificate on the first read.
    tls.write_all(b"").await?;
    Ok(tls)
}

/// Sends a hello; the node's answer.
async fn hello(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    hello: &serde_json::Value,
) -> Result<rtunnel_core::proto::StreamReply, String> {
    rtunnel_core::frame::write_frame(tls, hello)
        .await
        .map_err(|e| e.to_string())?;
    rtunnel_core::frame::read_frame(tls, 4096)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_mesh_admits_only_nodes_of_the_cluster_each_to_itself() {
    use rtunnel_core::proto::{RefusalCode, StreamReply};
    let tmp = tempfile::tempdir().unwrap();
    use_postgres(tmp.path()).await;
    let prefix = unique_prefix();
    let a = node(tmp.path(), &prefix, "node-a").await;
    let mesh = mesh_address(&a).await;
    let key = std::fs::read_to_string(tmp.path().join("data/cluster.key")).unwrap();
    let key = hex::decode(key.trim()).unwrap();
    let node_key = rtunnel_auth::node::NodeKey::new(&key).unwrap();
    let signed = |to: &str| {
        json!({
            "from": "node-x",
            "to": to,
            "authorization": node_key.authorize(
                "node-x",
                &format!("rtunnel mesh hello to {to}"),
                rtunnel_core::store::now_millis(),
            ),
        })
    };

    // Plain HTTP gets no answer: the mesh speaks TLS only.
    let plain = http_raw(
        mesh,
        "POST /v1/sessions/x/streams HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(
        plain.as_ref().map_or(true, |(status, _)| *status == 0),
        "{plain:?}"
    );
    // A node with another cluster key does not get through TLS.
    let mut stranger = mesh_tls(mesh, &[9; 32]).await.ok();
    if let Some(tls) = stranger.as_mut() {
        let answer = hello(tls, &signed("node-a")).await;
        assert!(answer.is_err(), "a stranger got {answer:?}");
    }

    // The cluster's identity, a hello meant for another node: refused.
    let mut tls = mesh_tls(mesh, &key).await.unwrap();
    match hello(&mut tls, &signed("node-z")).await.unwrap() {
        StreamReply::Refused(r) => {
            assert_eq!(r.code, RefusalCode::Forbidden);
            assert!(r.reason.contains("this is node node-a"), "{}", r.reason);
        }
        other => panic!("a hello for node-z was accepted by node-a: {other:?}"),
    }
    // A hello for node-a: admitted, once; the same hello again is a replay.
    let good = signed("node-a");
    let mut tls = mesh_tls(mesh, &key).await.unwrap();
    assert_eq!(hello(&mut tls, &good).await.unwrap(), StreamReply::Ok);
    let mut again = mesh_tls(mesh, &key).await.unwrap();
    match hello(&mut again, &good).await.unwrap() {
        StreamReply::Refused(r) => assert!(r.reason.contains("replayed"), "{}", r.reason),
        other => panic!("a replayed hello was accepted: {other:?}"),
    }
    // On the admitted connection: a stream that does not name its
    // operator is refused, and one for a session node-a does not hold too,
    // typed.
    let mux = rtunnel_core::mux::YamuxMux::client(tls, &Default::default());
    let ask = |header: serde_json::Value| {
        let request = json!({"session_id": uuid::Uuid::new_v4(), "header": header});
        let mux = &mux;
        async move {
            let mut stream = rtunnel_core::mux::Mux::open(mux).await.unwrap();
            rtunnel_core::frame::write_frame(&mut stream, &request)
                .await
                .unwrap();
            match rtunnel_core::frame::read_frame::<StreamReply, _>(&mut stream, 4096)
                .await
                .unwrap()
            {
                StreamReply::Refused(r) => r,
                other => panic!("a stream to no tunnel was opened: {other:?}"),
            }
        }
    };
    let r = ask(json!({"service": "echo", "kind": "tcp"})).await;
    assert_eq!(r.code, RefusalCode::BadStreamHeader, "{}", r.reason);
    let r = ask(json!({"service": "echo", "kind": "tcp", "operator": "olga"})).await;
    assert_eq!(r.code, RefusalCode::AgentUnavailable, "{}", r.reason);
    assert!(
        r.reason.contains("not connected to the node"),
        "{}",
        r.reason
    );
    // The public listener has no such endpoint.
    let (status, _) = api_call(a.addr, "POST", "/v1/sessions/x/streams", None, None).await;
    assert_eq!(status, 404);
}

/// What crosses between nodes is encrypted: a forward through node B to
/// the agent on node A, with node A's mesh address behind a proxy that
/// records every byte, carries data that never shows up in the recording.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_an_operator_sends_crosses_the_node_network_in_the_clear() {
    let tmp = tempfile::tempdir().unwrap();
    use_postgres(tmp.path()).await;
    let prefix = unique_prefix();
    // Node A listens on a port of its own and announces the recorder's.
    let listen = free_port();
    let recorder = RecordingProxy::start(([127, 0, 0, 1], listen).into()).await;
    let mut args = node_args(&test_redis_url(), &prefix, "node-a");
    let at = args.iter().position(|a| a == "--node-listen").unwrap();
    args[at + 1] = format!("127.0.0.1:{listen}");
    args.extend(["--node-advertise".to_owned(), recorder.addr.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = ServerProc::start(tmp.path(), &args).await;
    let b = node(tmp.path(), &prefix, "node-b").await;
    let sys = enroll(&a, "far-box");
    let root = user_with_token(&a, "root", "admin");
    let echo = echo_service().await;
    let _agent = start_agent(&a, &sys, &format!("echo={echo}"), &[]);
    let session = active_session(&b, &root, &sys.id).await;
    let (_fwd, local) = start_forward(&b, &root, &session, "echo").await;
    let marker = b"OPERATOR-KEYSTROKES-rtunnel-mesh-0123456789".repeat(64);
    assert!(echo_through(local, &marker).await == marker);
    let seen = recorder.bytes();
    assert!(
        seen.len() > marker.len(),
        "the stream did not cross the recorder"
    );
    let needle = &marker[..43];
    assert!(
        !seen.windows(needle.len()).any(|w| w == needle),
        "operator data crossed the node network in the clear"
    );
}
