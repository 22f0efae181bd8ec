//! The embedding example (`examples/embed.rs`) run as its users would:
//! an axum app with rtunnel nested under `/support`, a real agent dialing
//! `ws://HOST/support/api/v1/tunnel` and a real `forward` given
//! `--server http://HOST/support`, bytes echoed through both.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::*;

/// The example's binary, next to the server's: the test command builds it
/// (`cargo build --examples`; `cargo test` alone builds examples under
/// hashed names only).
fn example_bin() -> PathBuf {
    let p = server_bin()
        .with_file_name("examples")
        .join(format!("embed{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build --workspace --examples`, as ./scripts/test.sh does)",
        p.display()
    );
    p
}

/// The example running, and the first line it printed.
struct Embed {
    proc: Proc,
    addr: SocketAddr,
    first: Value,
}

impl Embed {
    /// Starts the example and waits until it listens.
    async fn start(dir: &std::path::Path) -> Embed {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join("embed.log");
        let mut child = Command::new(example_bin())
            .env("EMBED_LISTEN", addr.to_string())
            .env("EMBED_DATA_DIR", dir.join("data"))
            .env("RTUNNEL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        let first: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the first line is not JSON ({e}): {line:?}"));
        wait_for("the example to listen", || async {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
        Embed {
            proc: Proc {
                child,
                log,
                name: "embed example",
            },
            addr,
            first,
        }
    }
}

/// A real `forward` given the prefixed server URL, to `echo` of `session`,
/// with `bytes` echoed through it.
async fn echo_through_the_prefix(
    dir: &std::path::Path,
    addr: SocketAddr,
    token: &str,
    session: &str,
    bytes: usize,
) {
    let base = format!("http://{addr}/support");
    let (_fwd, local) = start_forward_at(dir, &base, token, session, "echo").await;
    let data = random_bytes(bytes);
    assert!(echo_through(local, &data).await == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedding_example_carries_a_forward_through_its_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let mut embed = Embed::start(tmp.path()).await;
    let addr = embed.addr;
    let token = embed.first["token"].as_str().unwrap().to_owned();
    let sys = Enrolled {
        id: embed.first["system"]["id"].as_str().unwrap().into(),
        key: embed.first["system"]["key"].as_str().unwrap().into(),
        secret: embed.first["system"]["secret"].as_str().unwrap().into(),
    };

    // The app keeps its own routes and its own fallback.
    let (status, body) = http_raw(
        addr,
        "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "the embedding app"));
    let (status, body) = http_raw(
        addr,
        "GET /nothing-here HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!((status, body.as_str()), (404, "not a page of this app"));
    let (status, v) = api_call(addr, "GET", "/support/healthz", None, None).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("ok")));
    // The console under the prefix asks for its files relative to itself.
    let (status, page) = http_raw(
        addr,
        "GET /support/console/terminal HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("src=\"assets/terminal.js\""), "{page}");

    // A real agent dialing the prefixed tunnel URL.
    let echo = echo_service().await;
    let mut cmd = agent_command(
        &format!("ws://{addr}/support/api/v1/tunnel"),
        &sys,
        &format!("echo={echo}"),
    );
    cmd.args(["--reconnect-delay", "200ms", "--max-reconnect-delay", "1s"]);
    let agent = Proc::spawn("rtunnel-agent", &mut cmd, tmp.path().join("agent.log"));
    let path = format!(
        "/support/api/v1/sessions?status=active&system_id={}",
        sys.id
    );
    let session = wait_for("an active session", || async {
        let (status, v) = api_call(addr, "GET", &path, Some(&token), None).await;
        if status != 200 {
            return None;
        }
        v["items"][0]["id"].as_str().map(str::to_owned)
    })
    .await;

    // A real forward given the prefixed server URL.
    echo_through_the_prefix(tmp.path(), addr, &token, &session, 256 * 1024).await;

    // The app's own audit sink saw the forward open.
    wait_for("the example's audit sink to print", || {
        let log = embed.proc.log_text();
        async move { log.contains("audit: forward_opened by admin").then_some(()) }
    })
    .await;

    // Ctrl-C: agents are told to come back later, and the app exits.
    embed.proc.signal("INT");
    let status = embed.proc.wait_exit().await;
    assert!(status.success(), "{status}: {}", embed.proc.log_text());
    wait_for("the agent to hear of the restart", || {
        let log = agent.log_text();
        async move { log.contains("restarting").then_some(()) }
    })
    .await;
}

/// `rtunnel-server serve --path-prefix /support`: the same routes under the
/// prefix, nothing at the root, and agents and forwards follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_under_a_path_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &["--path-prefix", "/support"]).await;
    let sys = enroll(&server, "prefixed-box");
    let admin = user_with_token(&server, "root", "admin");
    let (status, v) = api_call(server.addr, "GET", "/api/v1/sessions", Some(&admin), None).await;
    assert_eq!((status, v["code"].as_str()), (404, Some("route_not_found")));
    let (status, v) = api_call(server.addr, "GET", "/", None, None).await;
    assert_eq!((status, v["code"].as_str()), (404, Some("route_not_found")));
    for root in ["/support", "/support/"] {
        let request = format!(
            "GET {root} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.addr
        );
        let loopback = std::net::Ipv4Addr::LOCALHOST.into();
        let (status, head, _) = http_raw_from(loopback, server.addr, &request)
            .await
            .unwrap();
        assert_eq!(status, 307, "{root}");
        assert_eq!(header(&head, "location"), Some("/support/console/"));
    }
    let echo = echo_service().await;
    let url = format!("ws://{}/support/api/v1/tunnel", server.addr);
    let _agent = start_agent_at(&server, &url, &sys, &format!("echo={echo}"), &[]);
    let path = format!(
        "/support/api/v1/sessions?status=active&system_id={}",
        sys.id
    );
    let session = wait_for("an active session", || async {
        let (status, v) = api_call(server.addr, "GET", &path, Some(&admin), None).await;
        (status == 200)
            .then(|| v["items"][0]["id"].as_str().map(str::to_owned))
            .flatten()
    })
    .await;
    let (_fwd, local) = start_forward_at(
        tmp.path(),
        &format!("{}/support", server.base_url()),
        &admin,
        &session,
        "echo",
    )
    .await;
    assert!(echo_through(local, b"under a prefix").await == b"under a prefix");
    // A prefix that is not a plain path is refused at start, naming the flag.
    let out = Command::new(server_bin())
        .args(["serve", "--path-prefix", "support/"])
        .arg("--data-dir")
        .arg(tmp.path().join("other"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--path-prefix"), "{stderr}");
}

/// Both examples together: the agent embedded in a service of its own
/// (an in-process `echo`, no TCP port) connects to the embedding app
/// through its prefix, reports its status, and a real `forward` reaches
/// the in-process service, which learns who the operator is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_agent_serves_an_in_process_service_through_the_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let embed = Embed::start(tmp.path()).await;
    let addr = embed.addr;
    let token = embed.first["token"].as_str().unwrap().to_owned();
    let system = &embed.first["system"];
    let agent_bin = server_bin()
        .with_file_name("examples")
        .join(format!("embed-agent{}", std::env::consts::EXE_SUFFIX));
    assert!(agent_bin.exists(), "{} is missing", agent_bin.display());
    let out = tmp.path().join("agent.out");
    let log = tmp.path().join("agent.log");
    let child = Command::new(agent_bin)
        .env("EMBED_URL", format!("ws://{addr}/support/api/v1/tunnel"))
        .env("EMBED_KEY", system["key"].as_str().unwrap())
        .env("EMBED_SECRET", system["secret"].as_str().unwrap())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _agent = Proc {
        child,
        log,
        name: "embedded agent",
    };
    let printed = || std::fs::read_to_string(&out).unwrap_or_default();
    let session = wait_for("the embedded agent to be active", || {
        let text = printed();
        async move {
            let line = text.lines().find(|l| l.starts_with("status: active"))?;
            line.split("session=").nth(1).map(str::to_owned)
        }
    })
    .await;
    assert!(printed().starts_with("status: connecting"), "{}", printed());

    echo_through_the_prefix(tmp.path(), addr, &token, &session, 64 * 1024).await;
    wait_for("the handler to name the operator", || {
        let text = printed();
        async move { text.contains("echo: a stream from admin").then_some(()) }
    })
    .await;
}
