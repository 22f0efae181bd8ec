//! Networks as customers have them: a real HTTP proxy between the agent and
//! the server, a second agent started with the same credentials, a burst of
//! stream opens on one tunnel. Real processes on loopback.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Base {
    tmp: tempfile::TempDir,
    server: ServerProc,
    sys: Enrolled,
    token: String,
}

async fn base(server_flags: &[&str]) -> Base {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), server_flags).await;
    let sys = enroll(&server, "behind-a-proxy");
    let token = user_with_token(&server, "alice", "admin");
    Base {
        tmp,
        server,
        sys,
        token,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_dials_out_through_a_connect_proxy_with_basic_credentials() {
    let b = base(&[]).await;
    let proxy = Tinyproxy::start(b.tmp.path(), Some(("alice", "s3cret"))).await;
    let echo = echo_service().await;
    let mut cmd = agent_command(&b.server.tunnel_url(), &b.sys, &format!("echo={echo}"));
    cmd.args(["--proxy", &format!("http://alice:s3cret@{}", proxy.addr)]);
    let agent = spawn_agent(&b.server, &mut cmd);

    let session = active_session(&b.server, &b.token, &b.sys.id).await;
    let (_fwd, local) = start_forward(&b.server, &b.token, &session, "echo").await;
    assert_eq!(
        echo_through(local, b"via the proxy").await,
        b"via the proxy"
    );

    let connects = proxy.connects();
    let wanted = format!("CONNECT {} HTTP/1.1", b.server.addr);
    assert!(
        connects.iter().any(|l| l.contains(&wanted)),
        "the proxy carried no tunnel to the server: {connects:?}"
    );
    let log = agent.log_text();
    assert!(
        log.contains(&format!("through the proxy http://{}", proxy.addr)),
        "{log}"
    );
    assert!(
        !log.contains("s3cret"),
        "the proxy password leaked into the log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_takes_its_proxy_from_the_environment_and_honors_no_proxy() {
    let b = base(&[]).await;
    let proxy = Tinyproxy::start(b.tmp.path(), Some(("bob", "pa55w0rd"))).await;
    let echo = echo_service().await;

    // `http_proxy` (lower case, as many systems set it) for a ws:// server,
    // with a password that needs percent-encoding.
    let mut cmd = agent_command(&b.server.tunnel_url(), &b.sys, &format!("echo={echo}"));
    cmd.env(
        "http_proxy",
        format!("http://bob:pa%35%35w0rd@{}", proxy.addr),
    );
    let _agent = spawn_agent(&b.server, &mut cmd);
    active_session(&b.server, &b.token, &b.sys.id).await;
    assert_eq!(proxy.connects().len(), 1, "{:?}", proxy.connects());

    // NO_PROXY names the server: the (dead) proxy is not used.
    let other = enroll(&b.server, "on-the-lan");
    let mut cmd = agent_command(&b.server.tunnel_url(), &other, &format!("echo={echo}"));
    cmd.env("HTTP_PROXY", format!("http://127.0.0.1:{}", free_port()))
        .env("NO_PROXY", "localhost, 127.0.0.1");
    let direct = spawn_agent(&b.server, &mut cmd);
    active_session(&b.server, &b.token, &other.id).await;
    assert!(!direct.log_text().contains("through the proxy"));
    assert_eq!(proxy.connects().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_proxy_credentials_are_reported_and_retried() {
    let b = base(&[]).await;
    let proxy = Tinyproxy::start(b.tmp.path(), Some(("alice", "s3cret"))).await;
    let mut cmd = agent_command(&b.server.tunnel_url(), &b.sys, "echo=127.0.0.1:9");
    cmd.args(["--proxy", &format!("http://alice:wrong@{}", proxy.addr)]);
    let mut agent = spawn_agent(&b.server, &mut cmd);
    let line = wait_for("the agent to report the proxy's refusal", || {
        let log = agent.log_text();
        async move {
            log.lines()
                .find(|l| l.contains("refused CONNECT"))
                .map(str::to_owned)
        }
    })
    .await;
    // tinyproxy answers 401 where RFC 9110 says 407.
    assert!(line.contains(": 407 ") || line.contains(": 401 "), "{line}");
    assert!(
        line.contains("check the proxy's user and password"),
        "{line}"
    );
    assert!(!line.contains("wrong"), "{line}");
    assert!(agent.is_running(), "a proxy refusal is retried, not fatal");
    let (status, body) = http_get(b.server.addr, "/api/v1/sessions", Some(&b.token))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"total\":0"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_with_the_same_credentials_takes_over_the_session() {
    let b = base(&[]).await;
    // The first agent's "svc" echoes; the second one's answers HTTP, so the
    // test can tell which agent carries a stream.
    let echo = echo_service().await;
    let web = http_service().await;
    let mut first = start_agent(&b.server, &b.sys, &format!("svc={echo}"), &[]);
    let session = active_session(&b.server, &b.token, &b.sys.id).await;

    let _second = start_agent(&b.server, &b.sys, &format!("svc={web}"), &[]);
    let status = first.wait_exit().await;
    assert_eq!(status.code(), Some(1), "{}", first.log_text());
    assert!(
        first.log_text().contains(
            "replaced: another agent with the same system credentials connected (one agent"
        ),
        "{}",
        first.log_text()
    );

    // The same session carries on over the second agent.
    let (_fwd, local) = start_forward(&b.server, &b.token, &session, "svc").await;
    let request = format!("GET / HTTP/1.1\r\nHost: {local}\r\nConnection: close\r\n\r\n");
    wait_for("the session to reach the second agent", || {
        let request = request.clone();
        async move {
            let (status, body) = http_raw(local, &request).await.ok()?;
            (status == 200 && body == PAGE).then_some(())
        }
    })
    .await;
    let (status, body) = http_get(
        b.server.addr,
        &format!("/api/v1/sessions?system_id={}", b.sys.id),
        Some(&b.token),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["total"], 1, "a takeover starts no new session: {body}");
    assert_eq!(v["items"][0]["id"], session.as_str());
    assert_eq!(v["items"][0]["status"], "active");

    let taken = audit_events(b.tmp.path(), "tunnel_taken_over").await;
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].session_id.unwrap().to_string(), session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_a_thousand_stream_opens_is_carried_or_refused_cleanly() {
    const BURST: usize = 1000;
    const LIMIT: usize = 64; // the default --max-streams-per-tunnel
    // One operator alone may fill the tunnel here (by default, half).
    let b = base(&["--max-streams-per-user", "64"]).await;
    let echo = echo_service().await;
    let mut agent = start_agent(&b.server, &b.sys, &format!("echo={echo}"), &[]);
    let session = active_session(&b.server, &b.token, &b.sys.id).await;
    let (fwd, local) = start_forward(&b.server, &b.token, &session, "echo").await;

    // Every connection sends its line and waits for the echo or the end of
    // the connection; carried ones then hold their stream until every one
    // has its answer, so the limit is reached and stays reached.
    let all_answered = Arc::new(tokio::sync::Barrier::new(BURST));
    let mut tasks = Vec::new();
    for i in 0..BURST {
        let all_answered = all_answered.clone();
        tasks.push(tokio::spawn(async move {
            let line = format!("connection {i:04}\n");
            let mut s = TcpStream::connect(local).await.unwrap();
            s.write_all(line.as_bytes()).await.unwrap();
            let mut got = vec![0u8; line.len()];
            let carried = match s.read_exact(&mut got).await {
                Ok(_) => {
                    assert_eq!(got, line.as_bytes(), "a carried stream mixed up bytes");
                    true
                }
                // Refused: the forward closes the connection, maybe with
                // a reset since our line was never read.
                Err(e) => {
                    assert!(
                        matches!(
                            e.kind(),
                            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                        ),
                        "{e}"
                    );
                    false
                }
            };
            all_answered.wait().await;
            if carried {
                // Still working after all the refusals around it.
                s.write_all(b"still here\n").await.unwrap();
                let mut again = [0u8; 11];
                s.read_exact(&mut again).await.unwrap();
                assert_eq!(&again, b"still here\n");
            }
            carried
        }));
    }
    let results = tokio::time::timeout(Duration::from_secs(180), futures::future::join_all(tasks))
        .await
        .expect("the burst hung");
    let carried = results.into_iter().filter(|r| *r.as_ref().unwrap()).count();
    eprintln!(
        "burst of {BURST}: {carried} carried, {} refused",
        BURST - carried
    );
    assert_eq!(carried, LIMIT, "exactly the limit is carried at once");
    let log = fwd.log_text();
    let reasons: std::collections::BTreeMap<String, usize> = log
        .lines()
        .filter(|l| l.contains("not forwarded"))
        .fold(Default::default(), |mut m, l| {
            let why = l
                .split("not forwarded: ")
                .nth(1)
                .unwrap_or(l)
                .chars()
                .take(90)
                .collect::<String>();
            *m.entry(why).or_default() += 1;
            m
        });
    eprintln!("{reasons:#?}");
    assert_eq!(
        log.matches("too_many_streams").count(),
        BURST - LIMIT,
        "every refusal says why"
    );

    // The tunnel is healthy: the agent is still there and new streams work.
    assert_eq!(
        echo_through(local, b"after the burst").await,
        b"after the burst"
    );
    assert!(agent.is_running(), "{}", agent.log_text());
    let (_, body) = http_get(
        b.server.addr,
        &format!("/api/v1/sessions/{session}"),
        Some(&b.token),
    )
    .await
    .unwrap();
    assert!(body.contains("\"status\":\"active\""), "{body}");
}
