//! What the binaries log for a log collector and a newcomer: with
//! `--log-format json` every line is one JSON object; both say their
//! version and effective configuration at start; `/readyz` names the
//! version.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::Value;
use support::*;

/// Every line of `text` as JSON; panics on one that is not.
fn json_lines(text: &str, who: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{who}: a log line is not JSON ({e}): {l}"))
        })
        .collect()
}

fn line_with<'a>(lines: &'a [Value], message: &str) -> Option<&'a Value> {
    lines
        .iter()
        .find(|l| l["fields"]["message"].as_str() == Some(message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_the_version_at_start_and_in_readyz() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(
        tmp.path(),
        &[
            "--log-format",
            "json",
            "--proxy-domain",
            "support.example.com",
        ],
    )
    .await;
    let version = env!("CARGO_PKG_VERSION");

    let (status, ready) = api_call(server.addr, "GET", "/readyz", None, None).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["version"], version);

    let sys = enroll(&server, "logbox");
    let agent = start_agent(
        &server,
        &sys,
        "web=127.0.0.1:9",
        &["--log-format", "json", "--no-terminal"],
    );
    wait_for("the agent's session", || {
        let text = agent.log_text();
        async move { text.contains("connected to ws:").then_some(()) }
    })
    .await;
    wait_for("the server's tunnel line", || {
        let text = server.proc.log_text();
        async move { text.contains("tunnel active").then_some(()) }
    })
    .await;

    let lines = json_lines(&server.proc.log_text(), "server");
    let start = line_with(&lines, "rtunnel-server starting").expect("a start line");
    assert_eq!(start["fields"]["version"], version);
    assert_eq!(start["level"], "INFO");
    let config: Value = serde_json::from_str(start["fields"]["config"].as_str().unwrap()).unwrap();
    assert_eq!(config["proxy_domain"], "support.example.com");
    assert!(config["session_ttl"].is_string(), "{config}");
    // Connections are served on a thread per CPU unless told otherwise.
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(config["threads"], cpus, "{config}");
    assert!(
        start["fields"]["database"].as_str().is_some(),
        "the database is named: {start}"
    );
    // Key files are named where they are, defaults included.
    let key_file = config["secret_key_file"].as_str().unwrap_or_default();
    assert!(key_file.ends_with("secret.key"), "{config}");
    // A database without users: the server says what to do next.
    let hint = lines
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .find(|m| m.starts_with("no users yet"))
        .expect("a first-steps line");
    assert!(
        hint.contains("rtunnel-server user add NAME --role admin"),
        "{hint}"
    );
    assert!(
        hint.contains(&format!("http://{}/console/", server.addr)),
        "{hint}"
    );
    let listening = line_with(&lines, "rtunnel-server listening").unwrap();
    assert_eq!(listening["fields"]["version"], version);
    assert_eq!(listening["fields"]["threads"], cpus);
    // The tunnel's services, named as the agent names them.
    let active = line_with(&lines, "tunnel active").expect("a tunnel line");
    assert_eq!(active["fields"]["services"], "web", "{active}");

    let lines = json_lines(&agent.log_text(), "agent");
    let start = line_with(&lines, "rtunnel-agent starting").expect("a start line");
    assert_eq!(start["fields"]["version"], version);
    assert_eq!(start["fields"]["services"], "web");
    assert_eq!(start["fields"]["key"], sys.key.as_str());
    let all = agent.log_text();
    assert!(!all.contains(&sys.secret), "the secret is never logged");
}

#[test]
fn an_unknown_log_format_is_refused_by_both_binaries() {
    let tmp = tempfile::tempdir().unwrap();
    for (bin, args) in [
        (
            server_bin(),
            vec!["--data-dir", tmp.path().to_str().unwrap(), "migrate"],
        ),
        (
            agent_bin(),
            vec![
                "run",
                "--url",
                "ws://127.0.0.1:9/api/v1/tunnel",
                "--key",
                "k",
            ],
        ),
    ] {
        let out = std::process::Command::new(&bin)
            .args(&args)
            .env("RTUNNEL_LOG_FORMAT", "yaml")
            .env("RTUNNEL_SECRET", "s")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bin:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("use text or json"), "{bin:?}: {err}");
    }
}
