//! Real web applications through the subdomain proxy, in a real browser:
//! Debian's Cockpit and Jupyter Notebook (installed by
//! `scripts/test-deps.sh`) behind a real agent, driven in headless Chromium
//! through a proxy link exactly as an operator would use them. Both check
//! that their WebSockets and API calls come from their own origin, so they
//! fail ("Connection failed", "Kernel error") unless the proxy hands them
//! a self-consistent request. A third case puts nginx on the customer's
//! side, serving both applications by name behind one address.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use support::chromium::Chromium;
use support::*;

const COCKPIT_WS: &str = "/usr/lib/cockpit/cockpit-ws";
const COCKPIT_USER: &str = "rtunnel-test-cockpit";

/// Whether these tests can run here: as root (Cockpit signs in a local
/// user the test creates) with the applications installed. Skipped
/// otherwise, unless `./scripts/test.sh` asked for every test
/// (RTUNNEL_TEST_SERVICES=required), where a missing part fails.
fn applications_available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let installed = Path::new(COCKPIT_WS).exists() && on_path("jupyter-notebook");
    let required = std::env::var("RTUNNEL_TEST_SERVICES").as_deref() == Ok("required");
    match (root && installed, required) {
        (true, _) => true,
        (false, true) => panic!(
            "these tests run as root with Cockpit and Jupyter installed (scripts/test-deps.sh); \
             root: {root}, installed: {installed}"
        ),
        (false, false) => {
            eprintln!("skipped: needs root, cockpit-ws and jupyter-notebook");
            false
        }
    }
}

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

async fn wait_listening(addr: SocketAddr, what: &str) {
    wait_for(what, || async {
        tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
    })
    .await;
}

fn random_hex() -> String {
    use rand::Rng as _;
    let bytes: [u8; 12] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// cockpit-ws without TLS on a free loopback port, signing in the local
/// user of these tests.
struct Cockpit {
    addr: SocketAddr,
    password: String,
    _user: CockpitUser,
    _proc: Proc,
}

impl Cockpit {
    async fn start(dir: &Path) -> Cockpit {
        let user = CockpitUser::acquire();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new(COCKPIT_WS);
        cmd.args(["--no-tls", "--address", "127.0.0.1", "--port"])
            .arg(addr.port().to_string());
        let proc = Proc::spawn("cockpit-ws", &mut cmd, dir.join("cockpit-ws.log"));
        wait_listening(addr, "cockpit-ws to listen").await;
        Cockpit {
            addr,
            password: user.password.clone(),
            _user: user,
            _proc: proc,
        }
    }
}

/// The tests' local user: created if missing and given a new random
/// password when the first test of this run needs it, locked again when
/// the last one is done. Tests running at once share it.
struct CockpitUser {
    password: String,
}

/// How many tests hold the user, and its password while any does.
static COCKPIT_USER_HELD: std::sync::Mutex<(usize, String)> =
    std::sync::Mutex::new((0, String::new()));

impl CockpitUser {
    fn acquire() -> CockpitUser {
        let mut held = COCKPIT_USER_HELD.lock().unwrap();
        if held.0 == 0 {
            let exists = Command::new("id")
                .arg(COCKPIT_USER)
                .output()
                .is_ok_and(|o| o.status.success());
            if !exists {
                let status = Command::new("useradd")
                    .args(["--create-home", "--shell", "/bin/bash", COCKPIT_USER])
                    .status()
                    .unwrap();
                assert!(status.success(), "useradd {COCKPIT_USER}");
            }
            held.1 = format!("Pw-{}", random_hex());
            set_password(&held.1);
        }
        held.0 += 1;
        CockpitUser {
            password: held.1.clone(),
        }
    }
}

/// `chpasswd` sets the password and unlocks the account.
fn set_password(password: &str) {
    use std::io::Write as _;
    let mut chpasswd = Command::new("chpasswd")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = format!("{COCKPIT_USER}:{password}\n");
    chpasswd
        .stdin
        .take()
        .unwrap()
        .write_all(line.as_bytes())
        .unwrap();
    assert!(chpasswd.wait().unwrap().success(), "chpasswd");
    let _ = Command::new("usermod")
        .args(["--unlock", COCKPIT_USER])
        .status();
}

impl Drop for CockpitUser {
    fn drop(&mut self) {
        let Ok(mut held) = COCKPIT_USER_HELD.lock() else {
            return;
        };
        held.0 -= 1;
        if held.0 == 0 {
            // The password was only for this run.
            let _ = Command::new("usermod")
                .args(["--lock", COCKPIT_USER])
                .status();
            held.1.clear();
        }
    }
}

/// Jupyter Notebook on a free loopback port, with its own configuration,
/// data and runtime directories, a token to sign in with, and one notebook
/// holding one cell.
struct Jupyter {
    addr: SocketAddr,
    token: String,
    _proc: Proc,
}

const NOTEBOOK: &str = "check.ipynb";
const CELL_OUTPUT: &str = "answer 42";

impl Jupyter {
    /// `behind_a_proxy`: Jupyter refuses a `Host` naming anything but
    /// itself unless told it is reached from elsewhere, as anyone putting
    /// it behind a name-routing proxy does.
    async fn start(dir: &Path, behind_a_proxy: bool) -> Jupyter {
        let root = dir.join("jupyter");
        let notebooks = root.join("notebooks");
        std::fs::create_dir_all(&notebooks).unwrap();
        let notebook = json!({
            "cells": [{
                "cell_type": "code", "execution_count": null, "id": "answer",
                "metadata": {}, "outputs": [], "source": ["print('answer', 6 * 7)"],
            }],
            "metadata": {"kernelspec": {
                "display_name": "Python 3", "language": "python", "name": "python3",
            }},
            "nbformat": 4, "nbformat_minor": 5,
        });
        std::fs::write(notebooks.join(NOTEBOOK), notebook.to_string()).unwrap();
        // Compressed WebSocket messages (permessage-deflate), which
        // Chromium always offers: the extension must pass the proxy.
        let config = root.join("config");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(
            config.join("jupyter_notebook_config.py"),
            "c.NotebookApp.websocket_compression_options = {}\n",
        )
        .unwrap();
        let token = random_hex();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new("jupyter-notebook");
        cmd.args([
            "--no-browser",
            "--allow-root",
            "--ip",
            "127.0.0.1",
            "--port",
        ])
        .arg(addr.port().to_string())
        .arg(format!("--NotebookApp.token={token}"))
        .arg(format!("--notebook-dir={}", notebooks.display()))
        .env("HOME", &root)
        .env("JUPYTER_CONFIG_DIR", &config)
        .env("JUPYTER_DATA_DIR", root.join("data"))
        .env("JUPYTER_RUNTIME_DIR", root.join("runtime"))
        .env("IPYTHONDIR", root.join("ipython"));
        if behind_a_proxy {
            cmd.arg("--NotebookApp.allow_remote_access=True");
        }
        let proc = Proc::spawn("jupyter-notebook", &mut cmd, dir.join("jupyter.log"));
        wait_listening(addr, "jupyter-notebook to listen").await;
        Jupyter {
            addr,
            token,
            _proc: proc,
        }
    }
}

/// A server, an agent with `services`, an admin and the active session.
struct Setup {
    dir: PathBuf,
    server: ServerProc,
    admin: String,
    session: String,
    _agent: Proc,
}

impl Setup {
    async fn start(dir: &Path, services: &str) -> Setup {
        let server = ServerProc::start(dir, &[]).await;
        let sys = enroll(&server, "customer-box");
        let admin = user_with_token(&server, "root", "admin");
        let agent = start_agent(&server, &sys, services, &[]);
        let session = active_session(&server, &admin, &sys.id).await;
        Setup {
            dir: dir.to_owned(),
            server,
            admin,
            session,
            _agent: agent,
        }
    }

    /// A new proxy link to `service`, as the admin.
    async fn link(&self, service: &str) -> String {
        let path = format!("/api/v1/sessions/{}/proxy-token", self.session);
        let body = json!({ "service": service });
        let (status, v) = api_call(
            self.server.addr,
            "POST",
            &path,
            Some(&self.admin),
            Some(&body),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        v["url"].as_str().unwrap().to_owned()
    }

    async fn browser(&self) -> Chromium {
        Chromium::start(&self.dir).await
    }

    /// Where the screenshot of a finished flow goes: kept under the
    /// target directory (`test-screenshots/`) for people to look at.
    fn shot(&self, name: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(format!("{name}.png"))
    }
}

/// Follows a proxy link to Cockpit, signs in with the login form and waits
/// for the system overview, Cockpit's dashboard, which it fills from its
/// WebSocket.
async fn cockpit_signs_in(browser: &mut Chromium, link: &str, password: &str, shot: &Path) {
    browser.navigate(link).await;
    browser
        .wait_eval(
            "Cockpit's login form",
            "document.readyState === 'complete' && document.querySelector('#login')?.hidden === false",
            |v| v == true,
        )
        .await;
    browser.click("#login-user-input").await;
    browser.type_text(COCKPIT_USER).await;
    browser.click("#login-password-input").await;
    browser.type_text(password).await;
    browser.press_enter().await;
    let overview = "(() => { \
          const frame = document.querySelector('iframe[name=\"cockpit1:localhost/system\"]'); \
          const doc = frame && frame.contentDocument; \
          return doc && doc.body ? doc.body.innerText : ''; })()";
    let seen = browser
        .wait_eval("Cockpit's overview", overview, |v| {
            v.as_str().is_some_and(|t| t.contains("Health"))
        })
        .await;
    browser.screenshot(shot).await;
    let shell = browser.eval("document.body.innerText").await;
    let shell = shell.as_str().unwrap_or_default();
    assert!(!shell.contains("Connection failed"), "{shell}");
    assert!(
        shell.contains(COCKPIT_USER),
        "signed in as: {shell}\n{seen}"
    );
}

/// Follows a proxy link to Jupyter, signs in with its token, opens the
/// notebook, runs its cell and waits for the output the kernel sends back
/// over the notebook's WebSocket.
async fn jupyter_runs_a_cell(browser: &mut Chromium, link: &str, token: &str, shot: &Path) {
    browser.navigate(link).await;
    browser
        .wait_eval(
            "Jupyter's login form",
            "document.readyState === 'complete' && !!document.querySelector('#password_input')",
            |v| v == true,
        )
        .await;
    let sign_in = format!(
        "document.querySelector('#password_input').value = {token:?}; \
         document.querySelector('#login_submit').click(); true"
    );
    browser.eval(&sign_in).await;
    browser
        .wait_eval("Jupyter's file list", "location.pathname", |v| v == "/tree")
        .await;
    browser
        .eval(&format!("location.href = '/notebooks/{NOTEBOOK}'; true"))
        .await;
    browser
        .wait_eval(
            "the notebook's kernel",
            "!!(window.Jupyter && Jupyter.notebook && Jupyter.notebook.kernel \
               && Jupyter.notebook.kernel.is_connected() \
               && Jupyter.notebook.kernel_busy === false)",
            |v| v == true,
        )
        .await;
    browser
        .eval("Jupyter.notebook.select(0); Jupyter.notebook.execute_selected_cells(); true")
        .await;
    let output = browser
        .wait_eval(
            "the cell's output",
            "Array.from(document.querySelectorAll('.output_area')).map(e => e.innerText).join('\\n')",
            |v| v.as_str().is_some_and(|t| t.contains(CELL_OUTPUT)),
        )
        .await;
    browser.screenshot(shot).await;
    let extensions = browser.eval("Jupyter.notebook.kernel.ws.extensions").await;
    assert!(
        extensions
            .as_str()
            .is_some_and(|e| e.starts_with("permessage-deflate")),
        "the kernel's WebSocket extensions: {extensions}"
    );
    let status = browser
        .eval("document.querySelector('#notification_kernel').innerText")
        .await;
    assert!(
        !status.as_str().unwrap_or_default().contains("error"),
        "kernel: {status}; output: {output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cockpit_signs_in_and_shows_its_dashboard_through_the_proxy() {
    if !applications_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cockpit = Cockpit::start(tmp.path()).await;
    let s = Setup::start(tmp.path(), &format!("cockpit={}", cockpit.addr)).await;
    let mut browser = s.browser().await;
    let link = s.link("cockpit").await;
    cockpit_signs_in(&mut browser, &link, &cockpit.password, &s.shot("cockpit")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jupyter_runs_a_notebook_cell_through_the_proxy() {
    if !applications_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let jupyter = Jupyter::start(tmp.path(), false).await;
    let s = Setup::start(tmp.path(), &format!("notebook={}", jupyter.addr)).await;
    let mut browser = s.browser().await;
    let link = s.link("notebook").await;
    jupyter_runs_a_cell(&mut browser, &link, &jupyter.token, &s.shot("jupyter")).await;
}

/// nginx on the customer's side, one address, the application chosen by
/// `Host`, as NethServer 8 routes its applications behind Traefik: each
/// service names its virtual host (`:host=NAME`), and both applications
/// work through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_routed_by_name_behind_one_address_work_through_the_proxy() {
    if !applications_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cockpit = Cockpit::start(tmp.path()).await;
    let jupyter = Jupyter::start(tmp.path(), true).await;
    let front = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _nginx = customer_nginx(
        tmp.path(),
        front,
        &[
            ("cockpit.customer.lan", cockpit.addr),
            ("notebook.customer.lan", jupyter.addr),
        ],
    );
    wait_listening(front, "the customer's nginx to listen").await;
    let services = format!(
        "cockpit={front}:host=cockpit.customer.lan,notebook={front}:host=notebook.customer.lan,\
         nameless={front}"
    );
    let s = Setup::start(tmp.path(), &services).await;

    // Without a name, nginx has nothing to serve: the name is what routes.
    let mut browser = s.browser().await;
    let link = s.link("nameless").await;
    browser.navigate(&link).await;
    browser
        .wait_eval("nginx's refusal", "document.title", |v| {
            v.as_str().is_some_and(|t| t.contains("404"))
        })
        .await;

    let link = s.link("notebook").await;
    jupyter_runs_a_cell(
        &mut browser,
        &link,
        &jupyter.token,
        &s.shot("jupyter-by-name"),
    )
    .await;
    let link = s.link("cockpit").await;
    cockpit_signs_in(
        &mut browser,
        &link,
        &cockpit.password,
        &s.shot("cockpit-by-name"),
    )
    .await;
}

/// nginx serving each `(name, upstream)` by name on `front`, and nothing
/// (404) to any other name: a typical customer-side reverse proxy,
/// WebSockets included.
fn customer_nginx(dir: &Path, front: SocketAddr, sites: &[(&str, SocketAddr)]) -> Proc {
    let mut http = format!(
        "access_log {{prefix}}/logs/access.log;\n\
         map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
         server {{ listen {front} default_server; return 404; }}\n"
    );
    for (name, upstream) in sites {
        http.push_str(&format!(
            "server {{\n  listen {front};\n  server_name {name};\n  location / {{\n\
             \x20   proxy_pass http://{upstream};\n    proxy_http_version 1.1;\n\
             \x20   proxy_set_header Host $host;\n\
             \x20   proxy_set_header Upgrade $http_upgrade;\n\
             \x20   proxy_set_header Connection $connection_upgrade;\n\
             \x20   proxy_buffering off;\n    proxy_read_timeout 1h;\n  }}\n}}\n"
        ));
    }
    nginx(dir, "customer-nginx", &http)
}
