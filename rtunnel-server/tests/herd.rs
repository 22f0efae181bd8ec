//! A thundering herd: 200 agent processes told the server is restarting all
//! come back to their own sessions, spread out by their jitter.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use support::*;

const AGENTS: usize = 200;

async fn create_system(server: &ServerProc, token: &str, name: &str) -> Enrolled {
    let body = format!(r#"{{"name":"{name}"}}"#);
    let request = format!(
        "POST /api/v1/systems HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.addr,
        body.len()
    );
    let (status, answer) = http_raw(server.addr, &request).await.unwrap();
    assert_eq!(status, 201, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    Enrolled {
        id: v["id"].as_str().unwrap().into(),
        key: v["key"].as_str().unwrap().into(),
        secret: v["secret"].as_str().unwrap().into(),
    }
}

async fn count(server: &ServerProc, token: &str, query: &str) -> Option<u64> {
    let (status, body) = http_get(
        server.addr,
        &format!("/api/v1/sessions?page_size=1&{query}"),
        Some(token),
    )
    .await
    .ok()?;
    if status != 200 {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(&body).ok()?["total"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_agents_come_back_to_their_sessions_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &["--grace-period", "5m"]).await;
    let token = user_with_token(&server, "alice", "admin");
    let echo = echo_service().await;
    let mut agents = Vec::with_capacity(AGENTS);
    for i in 0..AGENTS {
        let sys = create_system(&server, &token, &format!("box-{i:03}")).await;
        // The agent's own default delays: 5 s doubling, with jitter.
        let mut cmd = agent_command(&server.tunnel_url(), &sys, &format!("echo={echo}"));
        agents.push(spawn_agent(&server, &mut cmd));
    }
    wait_for("every agent's session to be active", || async {
        (count(&server, &token, "status=active").await? == AGENTS as u64).then_some(())
    })
    .await;

    let addr = server.addr.to_string();
    let mut server = server;
    server.proc.signal("TERM");
    assert!(server.proc.wait_exit().await.success());
    let restarted_at = Instant::now();
    let server = ServerProc::start_on(tmp.path(), &addr, &[]).await;
    let started_in = restarted_at.elapsed();
    let back = wait_for("every agent to resume its session", || async {
        (count(&server, &token, "status=active").await? == AGENTS as u64)
            .then(|| restarted_at.elapsed())
    })
    .await;

    // Every one resumed its own session: no new session, one resume each.
    assert_eq!(count(&server, &token, "").await, Some(AGENTS as u64));
    let resumed = audit_events(&server.dir, "session_resumed").await;
    assert_eq!(resumed.len(), AGENTS);
    let mut sessions: Vec<_> = resumed.iter().map(|e| e.session_id.unwrap()).collect();
    sessions.sort();
    sessions.dedup();
    assert_eq!(sessions.len(), AGENTS);
    for agent in &mut agents {
        assert!(agent.is_running(), "{}", agent.log_text());
    }

    let mut at: Vec<i64> = resumed.iter().map(|e| e.at).collect();
    at.sort();
    let first = at[0];
    let pct = |p: usize| Duration::from_millis((at[(AGENTS - 1) * p / 100] - first) as u64);
    eprintln!(
        "herd of {AGENTS}: server up again in {started_in:?}, all back {back:?} after the \
         restart; resumes spread over {:?} (p50 {:?}, p90 {:?})",
        pct(100),
        pct(50),
        pct(90),
    );
}
