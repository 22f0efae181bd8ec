//! The nginx configuration of docs/DEPLOYMENT.md, run as written in front of
//! a real server (Debian's nginx, installed by `scripts/test-deps.sh`): an
//! agent's tunnel, the API, and the subdomain proxy with its cookie, a
//! streamed body and a WebSocket, all through nginx.

#![allow(clippy::unwrap_used)]

mod support;
#[path = "support/webapp.rs"]
mod webapp;

use std::process::Command;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// nginx with the documented site, listening on `port`, sending to `upstream`.
fn start_nginx(dir: &std::path::Path, port: u16, upstream: std::net::SocketAddr) -> Proc {
    let doc =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy/nginx-rtunnel.conf");
    let site = std::fs::read_to_string(doc)
        .unwrap()
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace("server 127.0.0.1:8080;", &format!("server {upstream};"))
        .replace("support.example.com", "127.0.0.1")
        .replace("*.proxy.example.com", "*.localhost");
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    std::fs::write(prefix.join("site.conf"), site).unwrap();
    let main = format!(
        "pid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\nevents {{}}\nhttp {{\n\
         access_log off;\nclient_body_temp_path {p}/body;\nproxy_temp_path {p}/proxy;\n\
         include {p}/site.conf;\n}}\n",
        p = prefix.display()
    );
    std::fs::write(prefix.join("nginx.conf"), main).unwrap();
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(prefix.join("nginx.conf"))
        .args(["-g", "daemon off;"]);
    Proc::spawn("nginx", &mut cmd, dir.join("nginx.log"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_nginx_site_carries_tunnel_api_and_proxy() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let front = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let public = format!("--public-url=http://127.0.0.1:{port}");
    let server = ServerProc::start(tmp.path(), &[&public]).await;
    let _nginx = start_nginx(tmp.path(), port, server.addr);
    wait_for("nginx to listen", || async {
        tokio::net::TcpStream::connect(front).await.ok().map(|_| ())
    })
    .await;
    let sys = enroll(&server, "behind-nginx");
    let token = user_with_token(&server, "root", "admin");
    let app = webapp::WebApp::start().await;
    // The agent dials nginx, not the server.
    let tunnel = format!("ws://{front}/api/v1/tunnel");
    let _agent = start_agent_at(&server, &tunnel, &sys, &format!("web={}", app.addr), &[]);
    let session = wait_for("an active session, through nginx", || async {
        let path = format!("/api/v1/sessions?status=active&system_id={}", sys.id);
        let (status, v) = api_call(front, "GET", &path, Some(&token), None).await;
        (status == 200)
            .then(|| v["items"][0]["id"].as_str().map(str::to_owned))
            .flatten()
    })
    .await;

    // The subdomain proxy through nginx: link, cookie, redirect, a streamed
    // body, and a WebSocket.
    let path = format!("/api/v1/sessions/{session}/proxy-token");
    let (status, v) = api_call(
        front,
        "POST",
        &path,
        Some(&token),
        Some(&json!({"service": "web"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let url = v["url"]
        .as_str()
        .unwrap()
        .replace("/?token=", "/headers?token=");
    let host = format!("web--{}.localhost", session.replace('-', ""));
    assert!(url.starts_with(&format!("http://{host}:{port}/")), "{url}");
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .no_proxy()
        .resolve(&host, front)
        .build()
        .unwrap();
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

    let token_value = v["token"].as_str().unwrap();
    let (mut ws, _) = proxy_websocket(front, &format!("{host}:{port}"), "/ws", token_value).await;
    ws.send(Message::text("through nginx")).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap(), "through nginx");
}
