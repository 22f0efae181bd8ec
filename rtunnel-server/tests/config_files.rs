//! Settings files (`--config FILE`, TOML) for both binaries: flags and
//! environment variables win over the file, mistakes name the file and the
//! setting, and the agent reads its services again on SIGHUP, offering the
//! new list on the tunnel it has (same session, no reconnect). `check`
//! reports each problem on a line of its own without starting a session.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use support::*;

/// The service names a session's manifest lists now.
async fn services_of(server: &ServerProc, token: &str, session: &str) -> Vec<String> {
    let (status, v) = api_call(
        server.addr,
        "GET",
        &format!("/api/v1/sessions/{session}"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

/// An agent command reading only `config` (and no RTUNNEL_* variables).
fn agent_with_config(args: &[&str], config: &std::path::Path) -> Command {
    let mut cmd = Command::new(agent_bin());
    cmd.args(args).arg("--config").arg(config);
    clear_proxy_env(&mut cmd);
    for (name, _) in std::env::vars() {
        if name.starts_with("RTUNNEL_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

fn write_secret(dir: &std::path::Path, secret: &str) -> String {
    let path = dir.join("agent.secret");
    std::fs::write(&path, secret).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_takes_its_services_from_the_file_and_again_on_sighup() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let token = user_with_token(&server, "root", "admin");
    let sys = enroll(&server, "configured");
    let (one, two) = (echo_service().await, echo_service().await);
    let secret_file = write_secret(tmp.path(), &sys.secret);
    let config = tmp.path().join("agent.toml");
    let write = |services: &str| {
        std::fs::write(
            &config,
            format!(
                "url = \"{}\"\nkey = \"{}\"\nsecret_file = \"{secret_file}\"\n\
                 reconnect_delay = \"200ms\"\nexclude = [\"hidden-*\"]\n{services}",
                server.tunnel_url(),
                sys.key
            ),
        )
        .unwrap();
    };
    write(&format!(
        "[services.one]\ntarget = \"{one}\"\n[services.hidden-db]\ntarget = \"{two}\"\n"
    ));
    let agent = spawn_agent(&server, &mut agent_with_config(&["run"], &config));
    let session = active_session(&server, &token, &sys.id).await;
    assert_eq!(
        services_of(&server, &token, &session).await,
        ["one", "terminal"]
    );
    let (_fwd, addr) = start_forward(&server, &token, &session, "one").await;
    assert_eq!(echo_through(addr, b"from the file").await, b"from the file");

    // Edited and signalled: the new list, on the same tunnel.
    write(&format!("[services.two]\ntarget = \"{two}\"\n"));
    agent.signal("HUP");
    wait_for("the new services to reach the server", || {
        let (server, token, session) = (&server, token.clone(), session.clone());
        async move {
            (services_of(server, &token, &session).await == ["two", "terminal"]).then_some(())
        }
    })
    .await;
    let (_fwd2, addr2) = start_forward(&server, &token, &session, "two").await;
    assert_eq!(echo_through(addr2, b"after sighup").await, b"after sighup");
    let log = agent.log_text();
    assert_eq!(
        log.matches("connected to").count(),
        1,
        "no reconnect: {log}"
    );
    assert!(log.contains("SIGHUP"), "{log}");
    // A stream for the service that left is refused, naming those there are.
    let (status, v) = api_call(
        server.addr,
        "POST",
        &format!("/api/v1/sessions/{session}/proxy-token"),
        Some(&token),
        Some(&serde_json::json!({ "service": "one" })),
    )
    .await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["code"], "unknown_service", "{v}");
    assert!(v["error"].as_str().unwrap().contains("it has two"), "{v}");

    // A broken edit keeps what is offered, and says why.
    std::fs::write(&config, "url = [").unwrap();
    agent.signal("HUP");
    wait_for("the agent to report the broken file", || {
        let text = agent.log_text();
        async move { text.contains("not valid TOML").then_some(()) }
    })
    .await;
    assert_eq!(
        services_of(&server, &token, &session).await,
        ["two", "terminal"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_each_problem_and_starts_no_session() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let token = user_with_token(&server, "root", "admin");
    let sys = enroll(&server, "checked");
    let echo = echo_service().await;
    let dead = format!("127.0.0.1:{}", free_port());
    let secret_file = write_secret(tmp.path(), &sys.secret);
    let config = tmp.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "url = \"{}\"\nkey = \"{}\"\nsecret_file = \"{secret_file}\"\n\
             [services.echo]\ntarget = \"{echo}\"\n",
            server.tunnel_url(),
            sys.key
        ),
    )
    .unwrap();
    let out = agent_with_config(&["check"], &config).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok    server ws://"), "{stdout}");
    assert!(stdout.contains("ok    service echo"), "{stdout}");

    // A flag wins over the file: a wrong key, and a service that is down.
    let out = agent_with_config(&["check"], &config)
        .args(["--key", "sys_wrongwrongwrongwrongwrong"])
        .args(["--static-services", &format!("dead={dead}")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("FAIL  server") && stdout.contains("check the key and secret"),
        "{stdout}"
    );
    assert!(stdout.contains("ok    service echo"), "{stdout}");
    let dead_line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("FAIL  service dead at {dead}")))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        dead_line.contains("nothing listens at that address"),
        "{dead_line}"
    );
    assert!(stderr.contains("2 checks failed"), "{stderr}");

    // No session came of it.
    let (status, v) = api_call(
        server.addr,
        "GET",
        &format!("/api/v1/systems/{}", sys.id),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["session"].is_null(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reads_a_file_and_flags_win() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("server.toml");
    // `listen` loses to the flag the test harness passes.
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:1\"\nproxy_domain = \"support.example.test\"\ngrace_period = \"2m\"\n",
    )
    .unwrap();
    let server = ServerProc::start(
        tmp.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--grace-period",
            "30s",
        ],
    )
    .await;
    let log = server.proc.log_text();
    let start = log
        .lines()
        .find(|l| l.contains("rtunnel-server starting"))
        .unwrap();
    assert!(
        start.contains("\"proxy_domain\":\"support.example.test\""),
        "{start}"
    );
    assert!(start.contains("\"grace_period\":\"30s\""), "{start}");
    assert!(start.contains("server.toml"), "{start}");

    // Mistakes name the file and the setting, exit 2.
    for (text, why) in [
        ("lisen = \"0.0.0.0:80\"", "unknown setting `lisen`"),
        (
            "grace_period = \"soon\"",
            "invalid value 'soon' for '--grace-period",
        ),
        ("listen = ", "not valid TOML"),
    ] {
        std::fs::write(&config, text).unwrap();
        let out = Command::new(server_bin())
            .args(["serve", "--data-dir"])
            .arg(tmp.path().join("other"))
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(
            stderr.contains(why) && stderr.contains("server.toml"),
            "{text}: {stderr}"
        );
    }
}

/// The TOML blocks of a document, in order.
fn toml_blocks(doc: &str) -> Vec<String> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(doc),
    )
    .unwrap();
    text.split("```toml\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap().to_owned())
        .collect()
}

#[test]
fn the_documented_settings_files_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    // docs/DEPLOYMENT.md's server file: every key is a setting and every
    // value parses; it stops only at what this machine lacks.
    let server = toml_blocks("docs/DEPLOYMENT.md");
    assert_eq!(server.len(), 1, "one server example");
    let path = tmp.path().join("server.toml");
    std::fs::write(&path, &server[0]).unwrap();
    let out = Command::new(server_bin())
        .arg("--config")
        .arg(&path)
        .args(["user", "list"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("config file"), "{stderr}");
    assert!(
        stderr.contains("/var/lib/rtunnel"),
        "read data_dir: {stderr}"
    );

    // README's agent file: read, down to the secret file it names.
    let agent = toml_blocks("README.md");
    assert_eq!(agent.len(), 1, "one agent example");
    let path = tmp.path().join("agent.toml");
    std::fs::write(&path, &agent[0]).unwrap();
    let out = agent_with_config(&["check"], &path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("config file"), "{stderr}");
    assert!(stderr.contains("/etc/rtunnel-agent/secret"), "{stderr}");
}
