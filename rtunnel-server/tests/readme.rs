//! Every command README.md and docs/ show in a `sh` block is run by a
//! test. The README's quickstart runs here as written, each step's
//! placeholders (`SERVER:8080`, the key, secret, token and session id)
//! filled from what the steps before printed; the deployment and backup
//! commands run here with their paths moved into a temporary directory.
//! Every other documented command is listed in [`ELSEWHERE`] with the test
//! (or the reason) that covers it; a command added to the docs without
//! either fails [`every_documented_command_is_run_somewhere`].

#![allow(clippy::unwrap_used)]

mod support;
#[path = "support/webapp.rs"]
mod webapp;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::*;

/// Documented commands not run by the tests in this file, and where each
/// is run (or why it is not).
const ELSEWHERE: &[(&str, &str)] = &[
    (
        "cargo run --release -p rtunnel-server -- serve",
        "the quickstart below runs `rtunnel-server serve` from the build the tests use",
    ),
    (
        "./scripts/test.sh",
        ".ci/run runs it; this test is part of it",
    ),
    (
        "cargo build --release -p rtunnel-server -p rtunnel-agent",
        "scripts/package.sh builds with cargo (release by default)",
    ),
    (
        "export PATH=\"$PWD/target/release:$PATH\"",
        "the quickstart below runs with the build on PATH",
    ),
    (
        "rtunnel-server serve --listen 10.0.0.11:8080",
        "tests/cluster.rs runs nodes with these flags on PostgreSQL and Redis",
    ),
    (
        "cargo bench -p rtunnel-benches --bench ",
        "scripts/test.sh: `cargo test --all-targets` runs each bench once",
    ),
    (
        "./scripts/bench-peers.sh",
        "a benchmark, run by hand (docs/PERFORMANCE.md), not by the test command",
    ),
    (
        "cargo install cargo-fuzz",
        "fuzzing is run by hand; tests/fuzz_corpus.rs replays every corpus",
    ),
    (
        "cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run",
        "fuzzing is run by hand; tests/fuzz_corpus.rs replays every corpus",
    ),
    (
        "RUSTC_BOOTSTRAP=1 cargo fuzz cmin",
        "fuzzing is run by hand; tests/fuzz_corpus.rs replays every corpus",
    ),
    (
        "apt install ./target/debian/rtunnel-agent_0.1.0-1_amd64.deb",
        "scripts/package.sh --install (dpkg -i) in the test command",
    ),
    ("$EDITOR /etc/rtunnel-agent/agent.toml", "a person's step"),
    (
        "install -m 600 /dev/stdin /etc/rtunnel-agent/secret",
        "tests/config_files.rs writes the agent's secret file",
    ),
    (
        "rtunnel-agent check --config /etc/rtunnel-agent/agent.toml",
        "scripts/package.sh --install runs it on the installed file; tests/config_files.rs on others",
    ),
    (
        "systemctl enable --now rtunnel-agent",
        "not run: the test machine runs no systemd; scripts/package.sh verifies the unit",
    ),
    (
        "docker build --target",
        "not run: no container runtime or registry on the test machine",
    ),
    (
        "rtunnel-agent run --consent approve --consent-command 'DISPLAY=:0 zenity",
        "needs a desktop for zenity; tests/consent.rs runs --consent approve with a scripted command",
    ),
    (
        "docker run -d -p 8080:8080",
        "not run: no container runtime or registry on the test machine",
    ),
];

/// Commands of the `sh` blocks of `doc` (from `from` to the next `## `
/// heading, if given): comments dropped, continued lines joined, runs of
/// spaces made one.
fn commands(doc: &str, from: Option<&str>) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(doc))
        .unwrap();
    let text = match from {
        Some(heading) => {
            let start = text.find(heading).unwrap();
            let rest = &text[start + heading.len()..];
            rest[..rest.find("\n## ").unwrap_or(rest.len())].to_owned()
        }
        None => text,
    };
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = trimmed == "```sh";
            continue;
        }
        if !in_sh || trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        let code = trimmed.split("  #").next().unwrap().trim_end();
        match code.strip_suffix('\\') {
            Some(head) => pending.push_str(&format!("{} ", head.trim_end())),
            None => {
                pending.push_str(code);
                out.push(pending.split_whitespace().collect::<Vec<_>>().join(" "));
                pending.clear();
            }
        }
    }
    out
}

const DOCS: &[&str] = &[
    "README.md",
    "docs/ARCHITECTURE.md",
    "docs/CONSOLE.md",
    "docs/DEPLOYMENT.md",
    "docs/DEVELOPMENT.md",
    "docs/LAUNCHER.md",
    "docs/OPERATIONS.md",
    "docs/PERFORMANCE.md",
    "docs/PROTOCOL.md",
    "docs/SECURITY.md",
];

/// The commands the tests of this file run (the quickstart's and the
/// deployment's), as the docs write them.
fn run_here() -> Vec<String> {
    let mut here = commands("README.md", Some("## Quickstart"));
    here.retain(|c| !c.starts_with("cargo build") && !c.starts_with("export PATH"));
    here.extend(deployment_commands());
    here
}

fn deployment_commands() -> Vec<String> {
    let mut out: Vec<String> = commands("docs/DEPLOYMENT.md", None)
        .into_iter()
        .filter(|c| {
            c.starts_with("rtunnel-server serve --listen 127.0.0.1:8080")
                || c.starts_with("install -d -m 700 /etc/rtunnel")
                || c.starts_with("for key in")
                || c.starts_with("(umask 077")
                || c == "done"
        })
        .collect();
    out.extend(
        commands("docs/OPERATIONS.md", None)
            .into_iter()
            .filter(|c| c.contains(" backup ")),
    );
    out
}

#[test]
fn every_documented_command_is_run_somewhere() {
    let here = run_here();
    let mut orphans = Vec::new();
    for doc in DOCS {
        for command in commands(doc, None) {
            let covered = here.contains(&command)
                || ELSEWHERE
                    .iter()
                    .any(|(prefix, _)| command.starts_with(prefix));
            if !covered {
                orphans.push(format!("{doc}: {command}"));
            }
        }
    }
    assert!(
        orphans.is_empty(),
        "documented commands no test runs (run them in tests/readme.rs, or name where in ELSEWHERE):\n{}",
        orphans.join("\n")
    );
}

/// The benches the docs name are the benches that exist: the prefix in
/// [`ELSEWHERE`] covers any name, so a renamed or missing bench is caught
/// here.
#[test]
fn every_documented_bench_exists() {
    let prefix = "cargo bench -p rtunnel-benches --bench ";
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/Cargo.toml"),
    )
    .unwrap();
    let mut seen = 0;
    for doc in DOCS {
        for command in commands(doc, None) {
            let Some(rest) = command.strip_prefix(prefix) else {
                continue;
            };
            let name = rest.split_whitespace().next().unwrap_or_default();
            seen += 1;
            assert!(
                manifest.contains(&format!("name = \"{name}\"")),
                "{doc}: `{command}` names a bench benches/Cargo.toml does not have"
            );
        }
    }
    assert!(
        seen > 0,
        "the docs name no bench (has the command changed?)"
    );
}

/// Runs one documented command with `bash -c` in `dir`, with our binaries
/// first on PATH; returns stdout, failing on a non-zero exit.
fn sh(dir: &Path, command: &str, env: &[(&str, &str)]) -> String {
    let out = shell_command(dir, command, env).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command}\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn shell_command(dir: &Path, command: &str, env: &[(&str, &str)]) -> Command {
    let bin = server_bin().parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", command])
        .current_dir(dir)
        .env("PATH", path)
        .envs(env.iter().copied());
    clear_proxy_env(&mut cmd);
    for (name, _) in std::env::vars() {
        if name.starts_with("RTUNNEL_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Starts a documented command in the background, logging into `dir`.
fn spawn(dir: &Path, name: &'static str, command: &str, env: &[(&str, &str)]) -> Proc {
    let mut cmd = shell_command(dir, &format!("exec {command}"), env);
    cmd.stdin(Stdio::null());
    Proc::spawn(name, &mut cmd, dir.join(format!("{name}.log")))
}

/// The value after `label` on its line of `text`.
fn field(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in {text}"))
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_runs_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let steps = commands("README.md", Some("## Quickstart"));
    let step = |start: &str| -> String {
        steps
            .iter()
            .find(|c| c.starts_with(start))
            .unwrap_or_else(|| panic!("the quickstart has no {start:?} step: {steps:#?}"))
            .clone()
    };
    let port = free_port();
    let server_at = format!("127.0.0.1:{port}");
    let fill = |c: &str| {
        c.replace("SERVER:8080", &server_at)
            .replace("0.0.0.0:8080", &format!("0.0.0.0:{port}"))
    };

    // 1. The server, listening for other machines.
    let server = spawn(dir, "server", &fill(&step("rtunnel-server serve")), &[]);
    let addr = server_at.parse().unwrap();
    wait_for("the server to answer", || async move {
        let (status, _) = http_get(addr, "/readyz", None).await.ok()?;
        (status == 200).then_some(())
    })
    .await;
    assert!(dir.join("rtunnel-data/secret.key").exists());

    // 2. Enroll, and an admin with a token.
    let enrolled = sh(dir, &step("rtunnel-server system add customer-box"), &[]);
    let (key, secret) = (field(&enrolled, "key:"), field(&enrolled, "secret:"));
    let token = sh(dir, &step("rtunnel-server user add alice"), &[])
        .trim()
        .to_owned();
    assert!(token.starts_with("rtk_"), "{token}");

    // 3. The agent. The machine has no sshd: an echo service stands in for
    // port 22; and step 5's premise, a web service over TLS, is added.
    let echo = echo_service().await;
    let web = webapp::WebApp::start_tls_self_signed().await;
    let secret_step = step("export RTUNNEL_SECRET=");
    assert_eq!(secret_step, "export RTUNNEL_SECRET='3kQ...'");
    let agent_step = fill(&step("rtunnel-agent --url"))
        .replace("sys_6b1f2e...", &key)
        .replace(
            "ssh=127.0.0.1:22",
            &format!("ssh={echo},web={}:tls:insecure", web.addr),
        );
    let _agent = spawn(dir, "agent", &agent_step, &[("RTUNNEL_SECRET", &secret)]);

    // 4. The session, a forward, and a connection through it.
    assert_eq!(
        step("export RTUNNEL_TOKEN="),
        "export RTUNNEL_TOKEN='rtk_...'"
    );
    let env = [("RTUNNEL_TOKEN", token.as_str())];
    let list = fill(&step("curl -s -H \"Authorization"));
    let session = wait_for("the quickstart's curl to list the session", || {
        let out = sh(dir, &list, &env);
        async move {
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            v["items"][0]["id"].as_str().map(str::to_owned)
        }
    })
    .await;
    let local = free_port();
    let forward = fill(&step("rtunnel-agent forward"))
        .replace("<session id>", &session)
        .replace("127.0.0.1:2222", &format!("127.0.0.1:{local}"));
    let fwd = spawn(dir, "forward", &forward, &env);
    wait_for("the forward to listen", || {
        let text = fwd.log_text();
        async move { text.contains("forwarding").then_some(()) }
    })
    .await;
    assert_eq!(step("ssh -p 2222"), "ssh -p 2222 user@127.0.0.1");
    let through = format!("127.0.0.1:{local}").parse().unwrap();
    assert_eq!(echo_through(through, b"quickstart").await, b"quickstart");

    // 5. A proxy link for the web service.
    let link = fill(&step("curl -s -X POST")).replace("<session id>", &session);
    let v: serde_json::Value = serde_json::from_str(&sh(dir, &link, &env)).unwrap();
    let url = v["url"].as_str().unwrap();
    assert!(
        url.starts_with("http://web--") && url.contains("?token="),
        "{v}"
    );
    assert_eq!(v["expires_in"], 3600, "{v}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_and_backup_commands_run_with_their_paths_moved() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let moved = |c: &str| -> String {
        c.replace(
            "/etc/rtunnel",
            &root.join("etc/rtunnel").display().to_string(),
        )
        .replace(
            "/var/lib/rtunnel",
            &root.join("var/lib/rtunnel").display().to_string(),
        )
        .replace(
            "/var/backups",
            &root.join("var/backups").display().to_string(),
        )
    };
    let cmds = deployment_commands();
    // The keys, provisioned as written (one shell: the loop spans lines).
    let keys: Vec<&String> = cmds
        .iter()
        .filter(|c| !c.starts_with("rtunnel-server") && !c.contains(" backup "))
        .collect();
    assert_eq!(keys.len(), 4, "{cmds:#?}");
    let script = keys.iter().map(|c| moved(c)).collect::<Vec<_>>().join("\n");
    sh(root, &script, &[]);
    for key in ["secret", "launch"] {
        use std::os::unix::fs::PermissionsExt;
        let path = root.join(format!("etc/rtunnel/{key}.key"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim().len(), 64);
    }

    // The server as the deployment guide starts it.
    let serve = cmds
        .iter()
        .find(|c| c.starts_with("rtunnel-server serve"))
        .unwrap();
    let port = free_port();
    let serve = moved(serve).replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
    let server = spawn(root, "server", &serve, &[]);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for("the deployed server to answer", || async move {
        let (status, _) = http_get(addr, "/readyz", None).await.ok()?;
        (status == 200).then_some(())
    })
    .await;

    // The backup of docs/OPERATIONS.md, while it serves.
    std::fs::create_dir_all(root.join("var/backups")).unwrap();
    let backup = cmds.iter().find(|c| c.contains(" backup ")).unwrap();
    sh(root, &moved(backup), &[]);
    let made: Vec<PathBuf> = std::fs::read_dir(root.join("var/backups"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(made.len(), 1, "{made:?}");
    assert!(std::fs::metadata(&made[0]).unwrap().len() > 0);
    drop(server);
}
