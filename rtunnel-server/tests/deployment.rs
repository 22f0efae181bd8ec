//! The nginx configuration of docs/DEPLOYMENT.md, run as written (Debian's
//! nginx, installed by `scripts/test-deps.sh`): in front of one real server,
//! an agent's tunnel, the API, and the subdomain proxy with its cookie, a
//! streamed body and a WebSocket; in front of two nodes on the PostgreSQL
//! and Redis of `scripts/test.sh`, the same paths spread over both nodes
//! and an agent failing over through nginx when its node dies.

#![allow(clippy::unwrap_used)]

mod support;
#[path = "support/webapp.rs"]
mod webapp;

use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// nginx with the documented site, listening on `port`, sending to
/// `upstreams`.
fn start_nginx(dir: &std::path::Path, port: u16, upstreams: &[SocketAddr]) -> Proc {
    let doc =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy/nginx-rtunnel.conf");
    let site = std::fs::read_to_string(doc)
        .unwrap()
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace("server 127.0.0.1:8080;", &servers(upstreams))
        .replace("support.example.com", "127.0.0.1")
        .replace("*.proxy.example.com", "*.localhost")
        .replace(
            "/var/log/nginx/rtunnel-access.log",
            &dir.join("nginx/logs/access.log").display().to_string(),
        );
    std::fs::create_dir_all(dir.join("nginx")).unwrap();
    std::fs::write(dir.join("nginx/site.conf"), site).unwrap();
    nginx(dir, "nginx", "include {prefix}/site.conf;")
}

/// The `server` lines of the upstream block.
fn servers(upstreams: &[SocketAddr]) -> String {
    upstreams
        .iter()
        .map(|a| format!("server {a};"))
        .collect::<Vec<_>>()
        .join("\n    ")
}

async fn wait_listening(front: SocketAddr) {
    wait_for("nginx to listen", || async {
        tokio::net::TcpStream::connect(front).await.ok().map(|_| ())
    })
    .await;
}

/// The id of the active session of `system_id`, asked through `front`.
async fn active_session_through(front: SocketAddr, token: &str, system_id: &str) -> String {
    wait_for("an active session, through nginx", || async {
        let path = format!("/api/v1/sessions?status=active&system_id={system_id}");
        let (status, v) = api_call(front, "GET", &path, Some(token), None).await;
        (status == 200)
            .then(|| v["items"][0]["id"].as_str().map(str::to_owned))
            .flatten()
    })
    .await
}

/// A client with cookies that finds `host` at `front`.
fn browser(host: &str, front: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .no_proxy()
        .resolve(host, front)
        .build()
        .unwrap()
}

/// The status of `GET /headers` on the proxied web app at `host`.
async fn get_headers(client: &reqwest::Client, host: &str, port: u16) -> u16 {
    let url = format!("http://{host}:{port}/headers");
    client.get(url).send().await.unwrap().status().as_u16()
}

/// A proxy link for `service` of `session`, asked through `front`.
async fn proxy_link(front: SocketAddr, token: &str, session: &str, service: &str) -> Value {
    let path = format!("/api/v1/sessions/{session}/proxy-token");
    let (status, v) = api_call(
        front,
        "POST",
        &path,
        Some(token),
        Some(&json!({"service": service})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_nginx_site_carries_tunnel_api_and_proxy() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    let public = format!("--public-url=http://127.0.0.1:{port}");
    // nginx connects from 127.0.0.1; clients below come from 127.0.0.2/3.
    let trusted = "--trusted-proxies=127.0.0.1";
    let server = ServerProc::start(tmp.path(), &[&public, trusted]).await;
    let _nginx = start_nginx(tmp.path(), port, &[server.addr]);
    wait_listening(front).await;
    let sys = enroll(&server, "behind-nginx");
    let token = user_with_token(&server, "root", "admin");
    let app = webapp::WebApp::start().await;
    // The agent dials nginx, not the server.
    let tunnel = format!("ws://{front}/api/v1/tunnel");
    let _agent = start_agent_at(&server, &tunnel, &sys, &format!("web={}", app.addr), &[]);
    let session = active_session_through(front, &token, &sys.id).await;

    // The subdomain proxy through nginx: link, cookie, redirect, a streamed
    // body, and a WebSocket.
    let v = proxy_link(front, &token, &session, "web").await;
    let url = v["url"]
        .as_str()
        .unwrap()
        .replace("/?token=", "/headers?token=");
    let host = format!("web--{}.localhost", session.replace('-', ""));
    assert!(url.starts_with(&format!("http://{host}:{port}/")), "{url}");
    let client = browser(&host, front);
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.url().path(), "/headers");
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(
        seen["headers"]["host"],
        json!([app.addr.to_string()]),
        "{seen}"
    );
    let big = client
        .get(format!("http://{host}:{port}/big?bytes={}", 8 << 20))
        .send()
        .await
        .unwrap();
    assert_eq!(big.bytes().await.unwrap().len(), 8 << 20);

    // A link works once: the WebSocket below gets a cookie of its own.
    let fresh = proxy_link(front, &token, &session, "web").await;
    let link = fresh["token"].as_str().unwrap();
    let cookie = redeem_proxy_link(front, &format!("{host}:{port}"), link).await;

    // The audit log names the client behind nginx (the server trusts
    // nginx's X-Forwarded-For), not nginx, and not what a client claims.
    let path = format!("/api/v1/sessions/{session}/proxy-token");
    let body = json!({"service": "web"}).to_string();
    let ask = |forged: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
             {forged}Content-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let forged = "X-Forwarded-For: 6.6.6.6\r\n";
    let from2 = "127.0.0.2".parse().unwrap();
    let from3 = "127.0.0.3".parse().unwrap();
    for (from, to, request) in [
        (from2, front, ask("")),
        (from2, front, ask(forged)),
        (from3, server.addr, ask(forged)),
    ] {
        let (status, _, body) = http_raw_from(from, to, &request).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let seen: Vec<Option<String>> = audit_events(tmp.path(), "proxy_token_issued")
        .await
        .into_iter()
        .map(|e| e.ip_address)
        .collect();
    for ip in ["127.0.0.2", "127.0.0.3"] {
        assert!(seen.contains(&Some(ip.to_owned())), "{ip}: {seen:?}");
    }
    assert!(!seen.contains(&Some("6.6.6.6".to_owned())), "{seen:?}");
    assert_eq!(
        seen.iter()
            .filter(|ip| ip.as_deref() == Some("127.0.0.2"))
            .count(),
        2,
        "{seen:?}"
    );
    let (mut ws, _) = proxy_websocket(front, &format!("{host}:{port}"), "/ws", &cookie).await;

    ws.send(Message::text("through nginx")).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap(), "through nginx");

    // The documented site logs paths, never query strings: proxy links'
    // tokens stay out of nginx's log.
    let access_log = tmp.path().join("nginx/logs/access.log");
    let log = wait_for("nginx to log the proxied requests", || {
        let log = std::fs::read_to_string(&access_log).unwrap_or_default();
        async move { log.contains("/headers").then_some(log) }
    })
    .await;
    assert!(!log.contains("token="), "{log}");
    assert!(!log.contains(&token), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_nginx_site_fronts_a_cluster_and_its_agents_fail_over_through_it() {
    let tmp = tempfile::tempdir().unwrap();
    use_postgres(tmp.path()).await;
    let port = free_port();
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    let public = format!("--public-url=http://127.0.0.1:{port}");
    let prefix = unique_prefix();
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b"] {
        let mut args = node_args(&test_redis_url(), &prefix, id);
        args.push(public.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        nodes.push(ServerProc::start(tmp.path(), &args).await);
    }
    let _nginx = start_nginx(tmp.path(), port, &[nodes[0].addr, nodes[1].addr]);
    wait_listening(front).await;
    let sys = enroll(&nodes[0], "clustered");
    let token = user_with_token(&nodes[0], "root", "admin");
    let echo = echo_service().await;
    let app = webapp::WebApp::start().await;
    // Agent and operators know nginx only; nginx spreads their requests
    // over both nodes.
    let tunnel = format!("ws://{front}/api/v1/tunnel");
    let services = format!("echo={echo},web={}", app.addr);
    let agent = start_agent_at(&nodes[0], &tunnel, &sys, &services, &[]);
    let session = active_session_through(front, &token, &sys.id).await;
    let base = format!("http://{front}");
    let (_fwd, local) = start_forward_at(tmp.path(), &base, &token, &session, "echo").await;
    assert_eq!(echo_through(local, b"one").await, b"one");
    let v = proxy_link(front, &token, &session, "web").await;
    let host = format!("web--{}.localhost", session.replace('-', ""));
    let client = browser(&host, front);
    let url = v["url"]
        .as_str()
        .unwrap()
        .replace("/?token=", "/headers?token=");
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // Round robin: consecutive requests go to both nodes, whichever holds
    // the tunnel, and all are answered.
    for _ in 0..4 {
        assert_eq!(get_headers(&client, &host, port).await, 200);
    }

    // (nginx logs a request once it is done, which may be just after the
    // client has its answer.)
    let access_log = tmp.path().join("nginx/logs/access.log");
    wait_for("nginx to log proxied requests served by both nodes", || {
        let log = std::fs::read_to_string(&access_log).unwrap_or_default();
        let both = nodes.iter().all(|n| {
            log.lines().any(|l| {
                l.contains("\"GET /headers HTTP/1.1\" 200") && l.ends_with(&n.addr.to_string())
            })
        });
        async move { both.then_some(()) }
    })
    .await;

    // The node holding the tunnel dies; the agent reconnects to nginx,
    // which sends it to the node left, and it resumes its session.
    let v = session_status(&nodes[0], &token, &session).await.unwrap();
    let holder = match v["node_id"].as_str() {
        Some("node-a") => 0,
        Some("node-b") => 1,
        other => panic!("the session names no node: {other:?} {v}"),
    };
    nodes[holder].proc.kill();
    let left = &nodes[1 - holder];
    wait_for("the agent to resume through nginx", || {
        let log = agent.log_text();
        async move { log.contains("resumed the session").then_some(()) }
    })
    .await;
    wait_session_active(left, &token, &session).await;
    let v = session_status(left, &token, &session).await.unwrap();
    assert_eq!(v["node_id"], if holder == 0 { "node-b" } else { "node-a" });
    let (_fwd, local) = start_forward_at(tmp.path(), &base, &token, &session, "echo").await;
    assert_eq!(echo_through(local, b"after").await, b"after");
    assert_eq!(get_headers(&client, &host, port).await, 200);
}

/// The systemd unit of docs/DEPLOYMENT.md: systemd reads it without a
/// warning, and the server starts the way systemd would start it (its
/// `Environment=`, its credentials in `%d`, production mode), which needs
/// every key the unit provisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_systemd_unit_is_valid_and_its_server_starts() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/DEPLOYMENT.md"),
    )
    .unwrap();
    let unit = doc
        .split_once("```ini\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(unit, _)| unit.to_owned())
        .expect("a unit in docs/DEPLOYMENT.md");
    let tmp = tempfile::tempdir().unwrap();
    let bin = server_bin();
    let unit = unit.replace("/usr/local/bin/rtunnel-server", bin.to_str().unwrap());

    // systemd reads it without a warning (where systemd-analyze exists).
    std::fs::write(tmp.path().join("rtunnel.service"), &unit).unwrap();
    if let Ok(out) = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(tmp.path().join("rtunnel.service"))
        .output()
    {
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && warnings.trim().is_empty(),
            "{warnings}"
        );
    }

    // Start it as systemd would: credentials in %d, the state directory.
    let creds = tmp.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    let state = tmp.path().join("state");
    let mut env: Vec<(String, String)> = Vec::new();
    let mut exec = String::new();
    for line in unit.lines() {
        if let Some(v) = line.strip_prefix("Environment=") {
            let (k, v) = v.split_once('=').unwrap();
            env.push((k.to_owned(), v.replace("%d", creds.to_str().unwrap())));
        } else if let Some(v) = line.strip_prefix("LoadCredential=") {
            // As systemd hands credentials over: read-only, to the service.
            use std::os::unix::fs::PermissionsExt;
            let (name, _) = v.split_once(':').unwrap();
            let file = creds.join(name);
            std::fs::write(&file, rtunnel_auth::secret::generate_hex(32)).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)).unwrap();
        } else if let Some(v) = line.strip_prefix("ExecStart=") {
            exec = v.to_owned();
        }
    }
    assert!(
        env.iter()
            .any(|(k, v)| k == "RTUNNEL_ENV" && v == "production")
    );
    let port = free_port();
    let args: Vec<String> = exec
        .split_whitespace()
        .skip(1)
        .map(|a| a.replace("/var/lib/rtunnel", state.to_str().unwrap()))
        .map(|a| a.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}")))
        .collect();
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(&args).envs(env);
    let mut server = Proc::spawn("rtunnel-server", &mut cmd, tmp.path().join("server.log"));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for("the unit's server to answer", || {
        let running = server.is_running();
        let log = server.log_text();
        async move {
            assert!(running, "the server of the documented unit exited: {log}");
            let (status, _) = http_get(addr, "/healthz", None).await.ok()?;
            (status == 200).then_some(())
        }
    })
    .await;
    // It made no key of its own: production takes the provisioned ones.
    assert!(!state.join("secret.key").exists());
    assert!(!state.join("launch.key").exists());
}
