//! Terminals that survive a closed tab, and several people in one: a
//! terminal whose viewer left waits detached with its shell (variables,
//! working directory) and its recent screen, listed by `GET
//! .../terminals`; attaching gets both back. A viewer watches what an
//! operator types and cannot type; the terminal has one recording with who
//! joined and left marked in it, and each joining is audited.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// `rtunnel-agent shell` on pipes, with `extra` flags.
fn shell(server: &ServerProc, token: &str, system: &str, extra: &[&str]) -> Child {
    let mut cmd = Command::new(agent_bin());
    cmd.args(["shell", "--server", &server.base_url(), "--system", system])
        .args(extra)
        .env("RTUNNEL_TOKEN", token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    clear_proxy_env(cmd.as_std_mut());
    cmd.spawn().unwrap()
}

/// Reads `child`'s stdout into `seen` until it holds `text`.
async fn read_until(child: &mut Child, seen: &mut String, text: &str) {
    let out = child.stdout.as_mut().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 4096];
    while !seen.contains(text) {
        let n = tokio::time::timeout_at(deadline, out.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("never saw {text:?}; saw {seen:?}"))
            .unwrap();
        assert!(n > 0, "output ended before {text:?}; saw {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

async fn terminals(server: &ServerProc, token: &str, session: &str) -> serde_json::Value {
    let (status, v) = api_call(
        server.addr,
        "GET",
        &format!("/api/v1/sessions/{session}/terminals"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["items"].clone()
}

/// Waits until the session has no live terminal.
async fn wait_no_terminals(server: &ServerProc, token: &str, session: &str, what: &str) {
    wait_for(what, || async move {
        let items = terminals(server, token, session).await;
        items.as_array()?.is_empty().then_some(())
    })
    .await;
}

/// The session's newest recording, once it is finished.
async fn finished_recording(server: &ServerProc, token: &str, session: &str) -> String {
    wait_for("the recording to be written", || async move {
        let (_, recs) = api_call(
            server.addr,
            "GET",
            &format!("/api/v1/sessions/{session}/recordings"),
            Some(token),
            None,
        )
        .await;
        let rec = &recs["items"][0];
        rec["ended_at"].as_str()?;
        let path = format!("/api/v1/recordings/{}", rec["id"].as_str()?);
        let (_, body) = http_get(server.addr, &path, Some(token)).await.ok()?;
        Some(body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_terminal_keeps_its_shell_and_a_viewer_watches_without_typing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let root = user_with_token(&server, "root", "admin");
    let vera = user_with_token(&server, "vera", "viewer");
    let sys = enroll(&server, "box");
    server.admin(&["grant", "vera", "box"]);
    let _agent = start_agent(&server, &sys, "", &["--shell", "/bin/sh"]);
    let session = active_session(&server, &root, &sys.id).await;

    // A shell with a variable and a working directory, then the tab closes.
    let mut first = shell(&server, &root, "box", &[]);
    let stdin = first.stdin.as_mut().unwrap();
    stdin
        .write_all(b"MARK=kept-$((6*7)); cd /tmp; echo first-$((1+1))\n")
        .await
        .unwrap();
    let mut seen = String::new();
    read_until(&mut first, &mut seen, "first-2").await;
    first.kill().await.unwrap();
    let listed = wait_for("the terminal to wait detached", || {
        let (server, root, session) = (&server, root.clone(), session.clone());
        async move {
            let items = terminals(server, &root, &session).await;
            (items.as_array()?.len() == 1 && items[0]["detached"] == true).then_some(items)
        }
    })
    .await;
    assert_eq!(listed[0]["started_by"], "root", "{listed}");
    let id = listed[0]["id"].as_str().unwrap().to_owned();

    // Attached again: the recent screen first, then the same shell.
    let mut again = shell(&server, &root, "box", &["--attach", &id]);
    let mut seen = String::new();
    read_until(&mut again, &mut seen, "first-2").await;
    let stdin = again.stdin.as_mut().unwrap();
    stdin.write_all(b"echo \"$MARK in $PWD\"\n").await.unwrap();
    read_until(&mut again, &mut seen, "kept-42 in /tmp").await;

    // A viewer watches: sees what is typed, types nothing.
    let mut watcher = shell(&server, &vera, "box", &["--attach", &id, "--watch"]);
    let mut watched = String::new();
    read_until(&mut watcher, &mut watched, "kept-42 in /tmp").await;
    let _ = watcher
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"echo from-the-$((0+1))-watcher\n")
        .await;
    let stdin = again.stdin.as_mut().unwrap();
    stdin.write_all(b"echo typed-by-$((2+2))\n").await.unwrap();
    read_until(&mut watcher, &mut watched, "typed-by-4").await;
    read_until(&mut again, &mut seen, "typed-by-4").await;
    assert!(!seen.contains("from-the-1-watcher"), "{seen}");
    // Nor start a shell of her own by "watching" nothing.
    let out = shell(&server, &vera, "box", &["--watch"])
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("attach_required"), "{stderr}");
    // The viewer cannot take the keyboard by asking for it.
    let joins = shell(&server, &vera, "box", &["--attach", &id]);
    let out = joins.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("403"), "{stderr}");
    watcher.kill().await.unwrap();
    // (Her leaving reaches the shell before it ends, or the recording
    // could not mark it.)
    wait_for("the viewer to have left", || {
        let (server, root, session) = (&server, &root, &session);
        async move {
            let items = terminals(server, root, session).await;
            let people = items.as_array()?.first()?["participants"]
                .as_array()?
                .clone();
            (!people.is_empty() && people.iter().all(|p| p["name"] != "vera")).then_some(())
        }
    })
    .await;

    // The shell ends: everyone attached hears it.
    again
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"exit 5\n")
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), again.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(5));
    wait_no_terminals(&server, &root, &session, "the terminal to be gone").await;

    // One recording for the terminal, with the viewer's coming and going.
    let (_, recs) = api_call(
        server.addr,
        "GET",
        &format!("/api/v1/sessions/{session}/recordings"),
        Some(&root),
        None,
    )
    .await;
    let recs = recs["items"].as_array().unwrap().clone();
    let mut casts = Vec::new();
    for r in &recs {
        let path = format!("/api/v1/recordings/{}", r["id"].as_str().unwrap());
        let (_, body) = http_get(server.addr, &path, Some(&root)).await.unwrap();
        casts.push(body);
    }
    let shared: Vec<&String> = casts.iter().filter(|c| c.contains("typed-by-4")).collect();
    assert_eq!(
        shared.len(),
        1,
        "one recording holds the attached part: {casts:#?}"
    );
    assert!(
        shared[0].contains("\"m\",\"vera joined (watch)\""),
        "{}",
        shared[0]
    );
    assert!(shared[0].contains("\"m\",\"vera left\""), "{}", shared[0]);
    let (_, audit) = api_call(
        server.addr,
        "GET",
        "/api/v1/audit?event=terminal_opened",
        Some(&root),
        None,
    )
    .await;
    let items = audit["items"].as_array().unwrap();
    assert!(
        items
            .iter()
            .any(|e| e["actor"] == "vera" && e["details"]["mode"] == "watch"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_terminal_ends_after_the_detach_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let root = user_with_token(&server, "root", "admin");
    let sys = enroll(&server, "short");
    let agent = start_agent(
        &server,
        &sys,
        "",
        &["--shell", "/bin/sh", "--terminal-detach-timeout", "1s"],
    );
    let session = active_session(&server, &root, &sys.id).await;
    let mut first = shell(&server, &root, "short", &[]);
    first
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"echo up-$((1+1))\n")
        .await
        .unwrap();
    let mut seen = String::new();
    read_until(&mut first, &mut seen, "up-2").await;
    assert_eq!(
        terminals(&server, &root, &session)
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    first.kill().await.unwrap();
    wait_no_terminals(&server, &root, &session, "the detached terminal to end").await;
    assert!(
        agent.log_text().contains("nobody attached"),
        "{}",
        agent.log_text()
    );
    // Attaching to it now says it is gone.
    let (status, v) = api_call(
        server.addr,
        "GET",
        &format!("/api/v1/sessions/{session}/terminals"),
        Some(&root),
        None,
    )
    .await;
    assert_eq!(
        (status, v["items"].as_array().map(Vec::len)),
        (200, Some(0))
    );
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A terminal WebSocket by system, as a program opens one (bearer token),
/// hearing who is in it.
async fn terminal_ws(server: &ServerProc, token: &str, system: &str, query: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!(
        "ws://{}/api/v1/systems/{system}/terminal?events=true{query}",
        server.addr
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

/// What a participant sees: output and events, until `done` says so.
async fn watch_until(
    ws: &mut Ws,
    seen: &mut String,
    events: &mut Vec<serde_json::Value>,
    done: impl Fn(&str, &[serde_json::Value]) -> bool,
) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(seen, events) {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("timed out; saw {seen:?} and {events:#?}"));
        match msg {
            Some(Ok(Message::Binary(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Some(Ok(Message::Text(t))) => events.push(serde_json::from_str(t.as_str()).unwrap()),
            other => panic!("the terminal ended: {other:?}; saw {seen:?}"),
        }
    }
}

async fn send_keys(ws: &mut Ws, keys: &str) {
    use futures::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        keys.as_bytes().to_vec().into(),
    ))
    .await
    .unwrap();
}

async fn send_json(ws: &mut Ws, v: serde_json::Value) {
    use futures::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        v.to_string().into(),
    ))
    .await
    .unwrap();
}

fn controller_is(name: &'static str) -> impl Fn(&str, &[serde_json::Value]) -> bool {
    move |_, events| {
        events
            .iter()
            .any(|e| e["event"] == "control" && e["controller"] == name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moderated_terminal_is_handed_over_and_taken_over_with_an_audit_trail() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let root = user_with_token(&server, "root", "admin");
    let alice = user_with_token(&server, "alice", "operator");
    let bob = user_with_token(&server, "bob", "operator");
    let sys = enroll(&server, "pair");
    server.admin(&["grant", "alice", "pair"]);
    server.admin(&["grant", "bob", "pair"]);
    let _agent = start_agent(&server, &sys, "", &["--shell", "/bin/sh"]);
    let session = active_session(&server, &root, &sys.id).await;

    // Alice starts a moderated terminal: she holds it.
    let mut a = terminal_ws(&server, &alice, "pair", "&moderated=true").await;
    let (mut a_seen, mut a_events) = (String::new(), Vec::new());
    watch_until(&mut a, &mut a_seen, &mut a_events, |_, e| !e.is_empty()).await;
    assert_eq!(a_events[0]["event"], "info");
    assert_eq!(a_events[0]["controller"], "alice");
    assert_eq!(a_events[0]["moderated"], true);
    let id = a_events[0]["terminal"].as_str().unwrap().to_owned();

    // Bob joins; his keys go nowhere while Alice holds it.
    let mut b = terminal_ws(&server, &bob, "pair", &format!("&attach={id}")).await;
    let (mut b_seen, mut b_events) = (String::new(), Vec::new());
    watch_until(&mut b, &mut b_seen, &mut b_events, |_, e| !e.is_empty()).await;
    send_keys(&mut b, "echo bob-early-$((1+1))\r").await;
    send_keys(&mut a, "echo alice-$((2+3))\r").await;
    watch_until(&mut a, &mut a_seen, &mut a_events, |s, _| {
        s.contains("alice-5")
    })
    .await;
    watch_until(&mut b, &mut b_seen, &mut b_events, |s, _| {
        s.contains("alice-5")
    })
    .await;
    assert!(!a_seen.contains("bob-early"), "{a_seen}");
    // Nor can he take it: only an admin takes over.
    send_json(&mut b, serde_json::json!({"type": "take_over"})).await;
    watch_until(&mut b, &mut b_seen, &mut b_events, |_, e| {
        e.iter()
            .any(|e| e["type"] == "error" && e["code"] == "forbidden")
    })
    .await;

    // Alice hands it to Bob; everyone hears it; Bob types.
    send_json(
        &mut a,
        serde_json::json!({"type": "hand_over", "to": "bob"}),
    )
    .await;
    watch_until(&mut a, &mut a_seen, &mut a_events, controller_is("bob")).await;
    watch_until(&mut b, &mut b_seen, &mut b_events, controller_is("bob")).await;
    send_keys(&mut b, "echo bob-$((3+4))\r").await;
    watch_until(&mut a, &mut a_seen, &mut a_events, |s, _| {
        s.contains("bob-7")
    })
    .await;

    // An admin takes it over: Bob's keys go nowhere again.
    let mut r = terminal_ws(&server, &root, "pair", &format!("&attach={id}")).await;
    let (mut r_seen, mut r_events) = (String::new(), Vec::new());
    watch_until(&mut r, &mut r_seen, &mut r_events, |_, e| !e.is_empty()).await;
    send_json(&mut r, serde_json::json!({"type": "take_over"})).await;
    watch_until(&mut b, &mut b_seen, &mut b_events, controller_is("root")).await;
    send_keys(&mut b, "echo late-bob-$((4+4))\r").await;
    send_keys(&mut r, "echo root-$((5+5))\r").await;
    watch_until(&mut a, &mut a_seen, &mut a_events, |s, _| {
        s.contains("root-10")
    })
    .await;
    assert!(!a_seen.contains("late-bob"), "{a_seen}");

    // Every change is in the audit log, and marked in the recording.
    let (_, audit) = api_call(
        server.addr,
        "GET",
        "/api/v1/audit?event=terminal_control_changed",
        Some(&root),
        None,
    )
    .await;
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{audit}");
    assert_eq!(items[1]["actor"], "alice");
    assert_eq!(items[1]["details"]["op"], "hand_over");
    assert_eq!(items[1]["details"]["to"], "bob");
    assert_eq!(items[0]["actor"], "root");
    assert_eq!(items[0]["details"]["op"], "take_over");
    send_keys(&mut r, "exit\r").await;
    watch_until(&mut a, &mut a_seen, &mut a_events, |_, _| true).await;
    drop((a, b, r));
    let cast = finished_recording(&server, &root, &session).await;
    assert!(cast.contains("bob has control (from alice)"), "{cast}");
    assert!(cast.contains("root took control"), "{cast}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_whose_only_operator_loses_access_ends_instead_of_waiting() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let root = user_with_token(&server, "root", "admin");
    let olga = user_with_token(&server, "olga", "operator");
    let sys = enroll(&server, "revoked");
    server.admin(&["grant", "olga", "revoked"]);
    let _agent = start_agent(&server, &sys, "", &["--shell", "/bin/sh"]);
    let session = active_session(&server, &root, &sys.id).await;
    let mut olgas = shell(&server, &olga, "revoked", &[]);
    olgas
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"echo started-$((2+2)); sleep 1000\n")
        .await
        .unwrap();
    let mut seen = String::new();
    read_until(&mut olgas, &mut seen, "started-4").await;
    server.admin(&["revoke", "olga", "revoked"]);
    let status = tokio::time::timeout(Duration::from_secs(30), olgas.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(255), "cut");
    // Her `sleep` does not wait detached for five minutes.
    wait_no_terminals(&server, &root, &session, "the terminal to end").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_stops_reading_is_dropped_and_the_recording_goes_on() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let root = user_with_token(&server, "root", "admin");
    let sys = enroll(&server, "flood");
    let _agent = start_agent(&server, &sys, "", &["--shell", "/bin/sh"]);
    let session = active_session(&server, &root, &sys.id).await;

    // The first participant (whose bridge records first) reads its first
    // message, then nothing more, on a socket with a small receive buffer.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    let tcp = tokio_tungstenite::MaybeTlsStream::Plain(
        tokio::net::TcpStream::from_std(socket.into()).unwrap(),
    );
    let url = format!(
        "ws://{}/api/v1/systems/flood/terminal?events=true",
        server.addr
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {root}").parse().unwrap());
    let (mut stalled, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    let (mut s_seen, mut s_events) = (String::new(), Vec::new());
    watch_until(&mut stalled, &mut s_seen, &mut s_events, |_, e| {
        !e.is_empty()
    })
    .await;
    let id = s_events[0]["terminal"].as_str().unwrap().to_owned();

    // Another participant floods the terminal and goes on reading.
    let mut b = terminal_ws(&server, &root, "flood", &format!("&attach={id}")).await;
    let (mut b_seen, mut b_events) = (String::new(), Vec::new());
    watch_until(&mut b, &mut b_seen, &mut b_events, |_, e| !e.is_empty()).await;
    // Floods of 20 MB until the stalled browser is dropped: how much of
    // each reaches its bridge depends on the machine's speed (a bridge
    // that falls behind the shell skips output), so there is no one size
    // that is enough everywhere.
    let dropped = || async {
        let (_, audit) = api_call(
            server.addr,
            "GET",
            "/api/v1/audit?event=terminal_closed",
            Some(&root),
            None,
        )
        .await;
        audit["items"].as_array().is_some_and(|items| {
            items
                .iter()
                .any(|e| e["details"]["reason"] == "browser_too_slow")
        })
    };
    // (The drop is audited once its bridge is done: up to 2 s after it,
    // for the stalled socket's last write.)
    let dropped_soon = || async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            if dropped().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    let mut floods = 0;
    while floods == 0 || !dropped_soon().await {
        floods += 1;
        assert!(floods <= 10, "the stalled browser was never dropped");
        let keys = format!(
            "head -c 20000000 /dev/zero | tr '\\0' a; echo; echo flood-$(({floods}+1000))-done\r"
        );
        send_keys(&mut b, &keys).await;
        read_output_until(&mut b, &format!("flood-{}-done", floods + 1000)).await;
    }
    eprintln!("dropped after {floods} floods of 20 MB");
    // The recording goes on without the stalled browser's bridge, which fed
    // it first.
    send_keys(&mut b, "echo after-$((40+2))\r").await;
    read_output_until(&mut b, "after-42").await;
    send_keys(&mut b, "exit\r").await;
    drop(b);
    drop(stalled);
    let cast = finished_recording(&server, &root, &session).await;
    assert!(
        cast.contains("after-42"),
        "what came after is recorded ({} bytes)",
        cast.len()
    );
}

/// Reads a terminal's output until `needle` shows (only the tail is kept:
/// floods are large).
async fn read_output_until(ws: &mut Ws, needle: &str) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut tail = String::new();
    while !tail.contains(needle) {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {needle} within 2 minutes"));
        match msg {
            Some(Ok(Message::Binary(bytes))) => {
                tail.push_str(&String::from_utf8_lossy(&bytes));
                if tail.len() > 4096 {
                    tail = tail[tail.len() - 64..].to_owned();
                }
            }
            Some(Ok(_)) => {}
            other => panic!("the terminal ended before {needle}: {other:?}"),
        }
    }
}
