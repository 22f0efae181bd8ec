//! The browser terminal over its real WebSocket, against real server and
//! agent processes and a real PTY: sizes, resizes, exit codes, the shell's
//! environment, several terminals at once, recordings, the access log, and
//! cuts when access goes.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Setup {
    _tmp: tempfile::TempDir,
    server: ServerProc,
    admin: String,
    session: String,
    sys: Enrolled,
    _agent: Proc,
}

async fn setup(agent_flags: &[&str]) -> Setup {
    setup_with(|server, sys, services| {
        let mut flags = vec!["--shell", "/bin/sh"];
        flags.extend_from_slice(agent_flags);
        start_agent(server, sys, services, &flags)
    })
    .await
}

/// A server, an enrolled system, an admin, and the agent `start` runs for
/// it (given the services to offer), its session active.
async fn setup_with(start: impl FnOnce(&ServerProc, &Enrolled, &str) -> Proc) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let sys = enroll(&server, "customer-box");
    let admin = user_with_token(&server, "root", "admin");
    let echo = echo_service().await;
    let mut agent = start(&server, &sys, &format!("echo={echo}"));
    // Past the usual wait, say why: the agent's and the server's logs.
    let waited = tokio::spawn({
        let (addr, admin, system) = (server.addr, admin.clone(), sys.id.clone());
        async move { active_session_at(addr, &admin, &system).await }
    })
    .await;
    let session = match waited {
        Ok(session) => session,
        Err(e) => panic!(
            "{e}\nagent running: {}\n--- agent log ---\n{}\n--- server log ---\n{}",
            agent.is_running(),
            agent.log_text(),
            server.proc.log_text()
        ),
    };
    Setup {
        _tmp: tmp,
        server,
        admin,
        session,
        sys,
        _agent: agent,
    }
}

async fn ticket(s: &Setup, token: &str) -> (u16, Value) {
    let path = format!("/api/v1/sessions/{}/terminal-ticket", s.session);
    api_call(s.server.addr, "POST", &path, Some(token), None).await
}

fn terminal_url(s: &Setup, ticket: &str, size: &str) -> String {
    format!(
        "ws://{}/api/v1/sessions/{}/terminal?ticket={ticket}{size}",
        s.server.addr, s.session
    )
}

async fn open_terminal(s: &Setup, token: &str, size: &str) -> Ws {
    let (status, v) = ticket(s, token).await;
    assert_eq!(status, 200, "{v}");
    let url = terminal_url(s, v["ticket"].as_str().unwrap(), size);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws
}

/// Reads output until it contains `want`; returns everything read.
async fn read_until(ws: &mut Ws, want: &str) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen.contains(want) {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} in the terminal output: {seen:?}"));
        match msg {
            Some(Ok(Message::Binary(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Some(Ok(Message::Text(t))) => panic!("unexpected text {t} after {seen:?}"),
            other => panic!("terminal ended waiting for {want:?}: {other:?}; {seen:?}"),
        }
    }
    seen
}

async fn type_line(ws: &mut Ws, line: &str) {
    ws.send(Message::Binary(format!("{line}\r").into_bytes().into()))
        .await
        .unwrap();
}

/// Reads to the end: the exit message's code and the close code.
async fn read_exit(ws: &mut Ws) -> (Option<i64>, Option<u16>) {
    let mut exit = None;
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["type"], "exit", "{v}");
                exit = v["code"].as_i64();
            }
            Some(Ok(Message::Close(frame))) => {
                return (exit, frame.map(|f| u16::from(f.code)));
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return (exit, None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_has_the_asked_size_resizes_and_reports_the_exit_code() {
    let s = setup(&[]).await;
    let mut ws = open_terminal(&s, &s.admin, "&cols=100&rows=30").await;
    type_line(&mut ws, "stty size").await;
    read_until(&mut ws, "30 100").await;
    let resize = json!({"type": "resize", "cols": 120, "rows": 40}).to_string();
    ws.send(Message::Text(resize.into())).await.unwrap();
    type_line(&mut ws, "stty size").await;
    read_until(&mut ws, "40 120").await;

    // The shell's environment: the operator is named, no agent secret.
    type_line(&mut ws, "echo TERM=$TERM; env | grep -c '^RTUNNEL_' ; echo \"op=$RTUNNEL_OPERATOR\"; echo \"secret=[$RTUNNEL_SECRET]\"; echo zz\"\"end").await;
    // The typed line echoes `zz""end`; only the shell prints `zzend`, after
    // everything else (one read, whatever the output's chunks).
    let out = read_until(&mut ws, "zzend").await;
    assert!(out.contains("TERM=xterm-256color"), "{out}");
    assert!(out.contains("op=root"), "{out}");
    assert!(
        out.contains("secret=[]"),
        "the agent's secret reached the shell: {out}"
    );
    assert!(!out.contains(&s.sys.secret), "{out}");

    type_line(&mut ws, "exit 3").await;
    let (code, close) = read_exit(&mut ws).await;
    assert_eq!(code, Some(3));
    assert_eq!(close, Some(1000));

    // The access log has the terminal, closed, with its bytes.
    let logs_path = format!("/api/v1/sessions/{}/logs", s.session);
    let logs = wait_for("the terminal's access log entry to close", || async {
        let (_, v) = api_call(s.server.addr, "GET", &logs_path, Some(&s.admin), None).await;
        let items = v["items"].as_array()?.clone();
        items
            .into_iter()
            .find(|e| e["kind"] == "terminal" && e["closed_at"].is_string())
    })
    .await;
    assert!(logs["bytes_to_service"].as_u64().unwrap() > 20, "{logs}");
    assert!(logs["bytes_from_service"].as_u64().unwrap() > 20, "{logs}");

    // The recording: asciicast v2 with the size, the resize and the output.
    let rec_path = format!("/api/v1/sessions/{}/recordings", s.session);
    let (status, v) = api_call(s.server.addr, "GET", &rec_path, Some(&s.admin), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["total"], 1, "{v}");
    let url = v["items"][0]["url"].as_str().unwrap().to_owned();
    let request = format!(
        "GET {url} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        s.admin
    );
    let (status, head, body) = http_raw_from("127.0.0.1".parse().unwrap(), s.server.addr, &request)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "content-type"),
        Some("application/x-asciicast")
    );
    let cast = if header(&head, "transfer-encoding") == Some("chunked") {
        dechunk(&body)
    } else {
        body
    };
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(100), Some(30))
    );
    let mut output = String::new();
    let mut resizes = Vec::new();
    let mut markers: Vec<String> = Vec::new();
    let mut last_t = 0.0;
    for line in lines {
        let ev: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let t = ev[0].as_f64().unwrap();
        assert!(t >= last_t, "times go forward: {line}");
        last_t = t;
        match ev[1].as_str().unwrap() {
            "o" => output.push_str(ev[2].as_str().unwrap()),
            "r" => resizes.push(ev[2].as_str().unwrap().to_owned()),
            // Who joined and left a shared terminal.
            "m" => markers.push(ev[2].as_str().unwrap().to_owned()),
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(resizes, ["120x40"]);
    assert_eq!(markers, ["root joined (join)"]);
    // asciinema itself reads it (scripts/test-deps.sh installs it).
    let file = s.server.dir.join("downloaded.cast");
    std::fs::write(&file, &cast).unwrap();
    // asciinema 2 wants a terminal of its own: script(1) gives it one.
    let played = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("asciinema cat {}", file.display()),
            "/dev/null",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script(1) runs asciinema, installed by scripts/test-deps.sh");
    assert!(
        played.status.success(),
        "{}",
        String::from_utf8_lossy(&played.stderr)
    );
    let played = String::from_utf8_lossy(&played.stdout);
    assert!(
        played.contains("40 120") && played.contains("exit 3"),
        "{played}"
    );
    assert!(
        output.contains("stty size") && output.contains("40 120"),
        "{output}"
    );
    assert!(output.contains("exit 3"), "{output}");

    // A viewer cannot download recordings.
    let viewer = user_with_token(&s.server, "vic", "viewer");
    let (status, _) = http_get(s.server.addr, &url, Some(&viewer)).await.unwrap();
    assert_eq!(status, 403);
    assert_eq!(
        audit_events(&s.server.dir, "terminal_opened").await.len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_terminals_run_at_once_and_a_ticket_opens_only_one() {
    let s = setup(&[]).await;
    let (_, v) = ticket(&s, &s.admin).await;
    let t = v["ticket"].as_str().unwrap().to_owned();
    let (mut a, _) = tokio_tungstenite::connect_async(terminal_url(&s, &t, ""))
        .await
        .unwrap();
    // The same ticket again: refused with the envelope.
    let again = tokio_tungstenite::connect_async(terminal_url(&s, &t, "")).await;
    match again {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401);
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["code"], "invalid_ticket");
        }
        other => panic!("a used ticket opened a terminal: {other:?}"),
    }
    let mut b = open_terminal(&s, &s.admin, "").await;
    type_line(&mut a, "echo one-$((40+2))").await;
    type_line(&mut b, "echo two-$((40+3))").await;
    let out_b = read_until(&mut b, "two-43").await;
    let out_a = read_until(&mut a, "one-42").await;
    assert!(!out_a.contains("two-43") && !out_b.contains("one-42"));
    type_line(&mut a, "exit").await;
    assert_eq!(read_exit(&mut a).await.0, Some(0));
    type_line(&mut b, "echo still-here").await;
    read_until(&mut b, "still-here").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_and_a_closed_session_end_open_terminals() {
    let s = setup(&[]).await;
    let op = user_with_token(&s.server, "olga", "operator");
    s.server.admin(&["grant", "olga", "customer-box"]);
    let mut ws = open_terminal(&s, &op, "").await;
    type_line(&mut ws, "echo ready").await;
    read_until(&mut ws, "ready").await;
    s.server.admin(&["revoke", "olga", "customer-box"]);
    let (_, close) = read_exit(&mut ws).await;
    assert_eq!(close, Some(1008), "cut for access revoked");

    let mut ws = open_terminal(&s, &s.admin, "").await;
    type_line(&mut ws, "echo ready").await;
    read_until(&mut ws, "ready").await;
    let path = format!("/api/v1/sessions/{}", s.session);
    let (status, _) = api_call(s.server.addr, "DELETE", &path, Some(&s.admin), None).await;
    assert_eq!(status, 200);
    let ended = tokio::time::timeout(Duration::from_secs(15), read_exit(&mut ws)).await;
    assert!(ended.is_ok(), "the terminal outlived its session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_opened_under_a_login_ends_at_logout() {
    let s = setup(&[]).await;
    user_with_password(&s.server, "olga", "operator", "correct horse battery");
    s.server.admin(&["grant", "olga", "customer-box"]);
    let body = json!({"username": "olga", "password": "correct horse battery"});
    let (status, v) = api_call(
        s.server.addr,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(&body),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let access = v["access_token"].as_str().unwrap().to_owned();
    let mut ws = open_terminal(&s, &access, "").await;
    type_line(&mut ws, "echo ready").await;
    read_until(&mut ws, "ready").await;
    let (status, _) = api_call(
        s.server.addr,
        "POST",
        "/api/v1/auth/logout",
        Some(&access),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (_, close) = read_exit(&mut ws).await;
    assert_eq!(close, Some(1008), "cut when its login ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_no_terminal_offers_none() {
    let s = setup(&["--no-terminal"]).await;
    let path = format!("/api/v1/sessions/{}/services", s.session);
    let (_, v) = api_call(s.server.addr, "GET", &path, Some(&s.admin), None).await;
    let text = v.to_string();
    assert!(!text.contains("\"terminal\""), "{text}");
    let (_, v) = ticket(&s, &s.admin).await;
    let url = terminal_url(&s, v["ticket"].as_str().unwrap(), "");
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 409);
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["code"], "terminal_unavailable");
        }
        other => panic!("a terminal opened on --no-terminal: {other:?}"),
    }
}

/// The body of a chunked HTTP/1.1 response.
/// The users `scripts/test-deps.sh` creates for these tests, or `None`
/// (skipping) where the tests do not run as root and nobody asked for
/// them. Under `./scripts/test.sh` (RTUNNEL_TEST_SERVICES=required) a
/// missing user fails the test.
fn test_users() -> Option<()> {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let required = std::env::var("RTUNNEL_TEST_SERVICES").as_deref() == Ok("required");
    let exist = ["rtunnel-test-agent", "rtunnel-test-shell"]
        .iter()
        .all(|u| {
            std::process::Command::new("id")
                .arg(u)
                .output()
                .is_ok_and(|o| o.status.success())
        });
    match (root && exist, required) {
        (true, _) => Some(()),
        (false, true) => panic!(
            "these tests run as root with the users scripts/test-deps.sh creates (rtunnel-test-agent, rtunnel-test-shell)"
        ),
        (false, false) => {
            eprintln!("skipped: needs root and scripts/test-deps.sh's users");
            None
        }
    }
}

/// A copy of the agent binary that any user may run (the build directory
/// may sit under a home only root can enter).
fn agent_copy_for_anyone(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    for d in [dir, bin_dir.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let bin = bin_dir.join("rtunnel-agent");
    std::fs::copy(agent_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// What the shell shows of the agent process: its user, home, whether it
/// could read the agent's environment, and the agent's command line.
async fn probe_agent_from_the_shell(s: &Setup, agent_pid: u32) -> String {
    let mut ws = open_terminal(s, &s.admin, "").await;
    type_line(
        &mut ws,
        &format!(
            "echo \"user=$(id -un)\"; echo \"home=$HOME\"; cat /proc/{agent_pid}/environ; echo \"environ=$?\"; \
             tr '\\0' ' ' < /proc/{agent_pid}/cmdline; echo; echo zz\"\"done"
        ),
    )
    .await;
    // The typed line echoes `zz""done`; only the shell prints `zzdone`.
    read_until(&mut ws, "zzdone").await
}

/// Finding: a shell run as the agent's own user could read the system
/// secret from /proc/<agent>/environ. The agent is non-dumpable now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_of_the_agent_s_own_user_cannot_read_its_secret() {
    if test_users().is_none() {
        return;
    }
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = agent_copy_for_anyone(bin_dir.path());
    let s = setup_with(|server, sys, services| {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args([
            "--reuid=rtunnel-test-agent",
            "--regid=rtunnel-test-agent",
            "--init-groups",
            "--",
        ])
        .arg(&bin)
        .args(["run", "--url", &server.tunnel_url(), "--key", &sys.key])
        .args(["--static-services", services, "--shell", "/bin/sh"])
        .env("RTUNNEL_SECRET", &sys.secret);
        spawn_agent(server, &mut cmd)
    })
    .await;
    let out = probe_agent_from_the_shell(&s, s._agent.child.id()).await;
    assert!(out.contains("user=rtunnel-test-agent"), "{out}");
    assert!(
        out.contains("environ=1"),
        "the shell read the agent's environment: {out}"
    );
    assert!(
        !out.contains(&s.sys.secret),
        "the shell saw the secret: {out}"
    );
}

/// `--terminal-user`: an agent running as root starts shells as that user
/// (its home, its groups), who cannot read the secret either, not even one
/// passed as a flag: the agent overwrites it in its command line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_run_as_the_terminal_user_who_cannot_read_the_secret() {
    if test_users().is_none() {
        return;
    }
    let s = setup_with(|server, sys, services| {
        let mut cmd = agent_command(&server.tunnel_url(), sys, services);
        cmd.env_remove("RTUNNEL_SECRET").args([
            "--secret",
            &sys.secret,
            "--terminal-user",
            "rtunnel-test-shell",
        ]);
        spawn_agent(server, &mut cmd)
    })
    .await;
    let pid = s._agent.child.id();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(cmdline.contains("--secret"), "{cmdline}");
    assert!(
        !cmdline.contains(&s.sys.secret),
        "ps shows the secret: {cmdline}"
    );
    assert!(
        s._agent.log_text().contains("hidden from ps now"),
        "{}",
        s._agent.log_text()
    );

    let home = std::process::Command::new("getent")
        .args(["passwd", "rtunnel-test-shell"])
        .output()
        .unwrap();
    let home = String::from_utf8_lossy(&home.stdout)
        .split(':')
        .nth(5)
        .unwrap()
        .to_owned();
    let out = probe_agent_from_the_shell(&s, pid).await;
    assert!(out.contains("user=rtunnel-test-shell"), "{out}");
    assert!(out.contains(&format!("home={home}")), "{out}");
    assert!(out.contains("environ=1"), "{out}");
    assert!(
        !out.contains(&s.sys.secret),
        "the shell saw the secret: {out}"
    );
}

/// A terminal user that does not exist stops the agent at start (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_terminal_user_is_a_configuration_error() {
    let out = std::process::Command::new(agent_bin())
        .args([
            "run",
            "--url",
            "ws://127.0.0.1:9/api/v1/tunnel",
            "--key",
            "k",
        ])
        .args(["--terminal-user", "no-such-user-rtunnel"])
        .env("RTUNNEL_SECRET", "s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--terminal-user no-such-user-rtunnel: no such user"),
        "{err}"
    );
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}
