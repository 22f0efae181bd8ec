//! The customer in the loop: an agent with `--consent approve` asks its
//! `--consent-command` before an operator's first access, and a refusal
//! (or no answer in time) refuses the forward, the terminal and the proxy
//! with `consent_denied` and the command's reason, audited on the server.
//! An approval holds for the session. The agent's own `--access-log` has a
//! line for every stream, served or refused.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Stdio;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A consent command that answers what `answer` says (`yes`, `no`, or
/// `wait`), and writes down who asked.
fn consent_script(dir: &Path) -> String {
    let script = dir.join("consent.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             echo \"$RTUNNEL_CONSENT $RTUNNEL_OPERATOR $RTUNNEL_SERVICE $RTUNNEL_SESSION\" >> {asked}\n\
             case \"$(cat {answer})\" in\n\
             yes) exit 0 ;;\n\
             wait) sleep 30 ;;\n\
             *) echo 'not now, I am on a call'; exit 1 ;;\n\
             esac\n",
            asked = dir.join("asked").display(),
            answer = dir.join("answer").display(),
        ),
    )
    .unwrap();
    format!("sh {}", script.display())
}

fn answer(dir: &Path, what: &str) {
    std::fs::write(dir.join("answer"), what).unwrap();
}

fn asked(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("asked"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// What a connection through a forward got: the echo, or nothing.
async fn through(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = conn.write_all(b"hello").await;
    let mut back = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let mut buf = [0u8; 64];
        while back.len() < 5 {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => back.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    back
}

async fn shell_exit(server: &ServerProc, token: &str, system: &str) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new(agent_bin());
    cmd.args(["shell", "--server", &server.base_url(), "--system", system])
        .env("RTUNNEL_TOKEN", token)
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"echo MARK-$((6*7)); exit 0\n")
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customer_approves_or_refuses_each_operator_once_per_session() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = ServerProc::start(dir, &[]).await;
    let token = user_with_token(&server, "root", "admin");
    let sys = enroll(&server, "asks-first");
    let echo = echo_service().await;
    let web = http_service().await;
    let access_log = dir.join("agent-access.log");
    answer(dir, "no");
    let _agent = start_agent(
        &server,
        &sys,
        &format!("echo={echo},web={web}"),
        &[
            "--consent",
            "approve",
            "--consent-command",
            &consent_script(dir),
            "--consent-timeout",
            "3s",
            // Asked again at once after a refusal (the unit tests cover
            // how long one stands).
            "--consent-refusal-stands",
            "0s",
            "--access-log",
            access_log.to_str().unwrap(),
        ],
    );
    let session = active_session(&server, &token, &sys.id).await;
    // Operators can see that the customer will be asked.
    let (_, v) = api_call(
        server.addr,
        "GET",
        &format!("/api/v1/sessions/{session}"),
        Some(&token),
        None,
    )
    .await;
    assert!(
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["consent"] == "approve"),
        "{v}"
    );

    // Refused: the forward's connection closes, the terminal does not open,
    // the proxy answers 403, each with the customer's reason.
    let (fwd, addr) = start_forward(&server, &token, &session, "echo").await;
    assert!(through(addr).await.is_empty());
    wait_for("the forward to report the refusal", || {
        let text = fwd.log_text();
        async move {
            (text.contains("consent_denied") && text.contains("not now, I am on a call"))
                .then_some(())
        }
    })
    .await;
    let (code, out) = shell_exit(&server, &token, "asks-first").await;
    assert_eq!(code, Some(255), "{out}");
    assert!(
        out.contains("consent_denied") && out.contains("not now"),
        "{out}"
    );
    let (status, v) = api_call(
        server.addr,
        "POST",
        &format!("/api/v1/sessions/{session}/proxy-token"),
        Some(&token),
        Some(&serde_json::json!({"service": "web"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let url = v["url"].as_str().unwrap();
    let host = url
        .split("//")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let link_token = v["token"].as_str().unwrap();
    let cookie = redeem_proxy_link(server.addr, &host, link_token).await;
    let request =
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n");
    let (status, head, body) = http_raw_from("127.0.0.1".parse().unwrap(), server.addr, &request)
        .await
        .unwrap();
    assert_eq!(status, 403, "{head}{body}");
    assert!(body.contains("consent_denied"), "{body}");
    let (_, audit) = api_call(
        server.addr,
        "GET",
        "/api/v1/audit?event=consent_denied",
        Some(&token),
        None,
    )
    .await;
    let events = audit["items"].as_array().unwrap();
    assert!(events.len() >= 3, "{audit}");
    assert!(events.iter().all(|e| e["actor"] == "root"), "{audit}");
    assert!(
        events[0]["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("not now"),
        "{audit}"
    );

    // No answer in time refuses too.
    answer(dir, "wait");
    let started = std::time::Instant::now();
    let (code, out) = shell_exit(&server, &token, "asks-first").await;
    assert_eq!(code, Some(255), "{out}");
    assert!(out.contains("did not answer within 3s"), "{out}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(3));

    // Approved once: everything opens, and the customer is not asked again.
    answer(dir, "yes");
    let before = asked(dir).len();
    assert_eq!(through(addr).await, b"hello");
    let (code, out) = shell_exit(&server, &token, "asks-first").await;
    assert_eq!((code, out.contains("MARK-42")), (Some(0), true), "{out}");
    assert_eq!(through(addr).await, b"hello");
    let now = asked(dir);
    assert_eq!(now.len(), before + 1, "{now:?}");
    assert!(
        now.last()
            .unwrap()
            .starts_with(&format!("approve root echo {session}")),
        "{now:?}"
    );

    // The agent's own record: every stream, with who, what and how it went.
    // (Each line is written when its stream ends, on the agent's side.)
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&access_log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let count = |lines: &[serde_json::Value], result: &str, kind: &str| {
        lines
            .iter()
            .filter(|l| l["result"] == result && l["kind"] == kind)
            .count()
    };
    let lines = wait_for("the agent to log every stream", || {
        let lines = read();
        async move {
            let done = count(&lines, "ok", "tcp") == 2
                && count(&lines, "ok", "terminal") == 1
                && count(&lines, "refused", "tcp") >= 1
                && count(&lines, "refused", "terminal") >= 2
                && count(&lines, "refused", "http") >= 1;
            done.then_some(lines)
        }
    })
    .await;
    let ok = lines
        .iter()
        .find(|l| l["result"] == "ok" && l["kind"] == "tcp")
        .unwrap();
    assert_eq!(ok["operator"], "root");
    assert_eq!(ok["service"], "echo");
    assert_eq!(ok["session"], session.as_str());
    assert_eq!(ok["bytes_to_service"], 5);
    assert_eq!(ok["bytes_from_service"], 5);
    let shell = lines
        .iter()
        .find(|l| l["result"] == "ok" && l["kind"] == "terminal")
        .unwrap();
    assert_eq!(shell["exit_code"], 0, "{shell}");
    assert!(
        lines
            .iter()
            .filter(|l| l["result"] == "refused")
            .all(|l| l["code"] == "consent_denied"),
        "{lines:#?}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&access_log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_tells_the_customer_and_lets_the_operator_in() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = ServerProc::start(dir, &[]).await;
    let token = user_with_token(&server, "root", "admin");
    let sys = enroll(&server, "tells");
    let echo = echo_service().await;
    answer(dir, "no");
    let _agent = start_agent(
        &server,
        &sys,
        &format!("echo={echo}"),
        &[
            "--consent",
            "notify",
            "--consent-command",
            &consent_script(dir),
        ],
    );
    let session = active_session(&server, &token, &sys.id).await;
    let (_fwd, addr) = start_forward(&server, &token, &session, "echo").await;
    // The answer does not matter: the access opens, and the customer knows.
    assert_eq!(through(addr).await, b"hello");
    assert_eq!(through(addr).await, b"hello");
    wait_for("the customer to be told", || {
        let now = asked(dir);
        async move { (now.len() == 1 && now[0].starts_with("notify root echo")).then_some(()) }
    })
    .await;
    // A bad combination is refused at start.
    let out = std::process::Command::new(agent_bin())
        .args([
            "run",
            "--url",
            &server.tunnel_url(),
            "--key",
            &sys.key,
            "--consent",
            "approve",
        ])
        .env("RTUNNEL_SECRET", &sys.secret)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--consent-command"));
}
