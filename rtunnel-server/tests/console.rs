//! The browser terminal page in a real browser: headless Chromium (Debian's
//! `chromium`, installed by `scripts/test-deps.sh`) driven over the Chrome
//! DevTools Protocol, against real server and agent processes and a real
//! PTY. Also: the page's headers and the vendored xterm.js files.

#![allow(clippy::unwrap_used)]

#[path = "support/console_setup.rs"]
mod console_setup;
mod support;
#[path = "support/webapp.rs"]
mod webapp;

use std::path::Path;

use console_setup::setup;
use serde_json::{Value, json};
use support::chromium::Chromium;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_echo_hello_in_the_browser_terminal_shows_hello() {
    let s = setup().await;
    let path = format!("/api/v1/sessions/{}/terminal-ticket", s.session);
    let (status, v) = api_call(s.server.addr, "POST", &path, Some(&s.admin), None).await;
    assert_eq!(status, 200, "{v}");
    let ticket = v["ticket"].as_str().unwrap();

    let mut browser = Chromium::start(s.tmp.path()).await;
    browser.call("Page.enable", json!({})).await;
    let url = format!(
        "{}/console/terminal?session={}#ticket={ticket}",
        s.server.base_url(),
        s.session
    );
    browser.call("Page.navigate", json!({"url": url})).await;
    browser
        .wait_eval(
            "the terminal to connect",
            "window.rtunnelTerminal && window.rtunnelTerminal.status",
            |v| v == "open",
        )
        .await;
    // The single-use ticket is gone from the address bar.
    let href = browser.eval("location.href").await;
    assert!(!href.as_str().unwrap().contains(ticket), "{href}");

    browser.wait_prompt().await;
    browser.type_line("echo hello").await;
    browser.wait_line("hello").await;
    // Sized to the browser window, not to a default.
    browser.type_line("stty size").await;
    let cols = browser.eval("window.rtunnelTerminal.term.cols").await;
    let rows = browser.eval("window.rtunnelTerminal.term.rows").await;
    browser.wait_line(&format!("{rows} {cols}")).await;
    assert_ne!(cols, 80, "the page did not fit the terminal to the window");

    browser.type_line("exit 7").await;
    browser
        .wait_eval("the exit code", "window.rtunnelTerminal.exitCode", |v| {
            v == 7
        })
        .await;
    browser
        .wait_eval("the close", "window.rtunnelTerminal.status", |v| {
            v == "closed"
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_ticket_the_page_signs_in_and_the_shell_knows_the_operator() {
    let s = setup().await;
    user_with_password(&s.server, "olga", "operator", "correct horse battery");
    s.server.admin(&["grant", "olga", "customer-box"]);
    let mut browser = Chromium::start(s.tmp.path()).await;
    let url = format!(
        "{}/console/terminal?session={}",
        s.server.base_url(),
        s.session
    );
    browser.call("Page.navigate", json!({"url": url})).await;
    browser
        .wait_eval(
            "the login form",
            "!!document.getElementById('login') && !document.getElementById('login').hidden",
            |v| v == true,
        )
        .await;
    // A wrong password is shown, not a broken page.
    let submit = |user: &str, password: &str| {
        format!(
            "(() => {{ const f = document.getElementById('login'); \
             f.username.value = {user:?}; f.password.value = {password:?}; \
             f.requestSubmit(); return true; }})()"
        )
    };
    browser.eval(&submit("olga", "wrong password!")).await;
    browser
        .wait_eval(
            "the login error",
            "document.getElementById('login-error').textContent",
            |v| {
                v.as_str()
                    .is_some_and(|t| t.contains("invalid_credentials"))
            },
        )
        .await;
    browser.eval(&submit("olga", "correct horse battery")).await;
    browser
        .wait_eval(
            "the terminal to connect",
            "window.rtunnelTerminal.status",
            |v| v == "open",
        )
        .await;
    browser.wait_prompt().await;
    browser.type_line("echo \"op=$RTUNNEL_OPERATOR\"").await;
    browser.wait_line("op=olga").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_files_come_from_the_server_with_a_strict_policy() {
    let s = setup().await;
    let request = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            s.server.addr
        )
    };
    let (status, head, body) =
        http_raw_head(s.server.addr, &request("/console/terminal?session=x")).await;
    assert_eq!(status, 200);
    // Relative, so the page works under a path prefix too.
    assert!(body.contains("src=\"assets/xterm.js\""), "{body}");
    let csp = header(&head, "content-security-policy").unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive}: {csp}");
    }
    assert_eq!(header(&head, "x-frame-options"), Some("DENY"));
    for (file, kind) in [
        ("xterm.js", "text/javascript"),
        ("addon-fit.js", "text/javascript"),
        ("terminal.js", "text/javascript"),
        ("xterm.css", "text/css"),
        ("console.css", "text/css"),
    ] {
        let (status, head, _) =
            http_raw_head(s.server.addr, &request(&format!("/console/assets/{file}"))).await;
        assert_eq!(status, 200, "{file}");
        assert!(
            header(&head, "content-type").unwrap().starts_with(kind),
            "{file}: {head}"
        );
        assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"));
    }
    let (status, _, body) =
        http_raw_head(s.server.addr, &request("/console/assets/..%2Fsecret.key")).await;
    assert_eq!(status, 404, "{body}");

    // The console: its own files, no inline script, WebAssembly for the
    // recording player only.
    let (status, head, _) = http_raw_head(s.server.addr, &request("/console")).await;
    assert_eq!(status, 308);
    assert_eq!(header(&head, "location"), Some("console/"));
    // The server's root leads a browser there too.
    let (status, head, _) = http_raw_head(s.server.addr, &request("/")).await;
    assert_eq!(status, 307);
    assert_eq!(header(&head, "location"), Some("/console/"));
    let (status, head, body) = http_raw_head(s.server.addr, &request("/console/")).await;
    assert_eq!(status, 200);
    assert!(body.contains("src=\"assets/app.js\""), "{body}");
    assert!(!body.contains("<script>"), "no inline script: {body}");
    assert!(!body.contains("http"), "nothing from elsewhere: {body}");
    let csp = header(&head, "content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self' 'wasm-unsafe-eval';"),
        "{csp}"
    );
    assert!(!csp.contains("script-src 'self' 'unsafe-inline'"), "{csp}");
    assert_eq!(header(&head, "cache-control"), Some("no-store"));
    for (file, kind) in [
        ("app.js", "text/javascript"),
        ("app.css", "text/css"),
        ("asciinema-player.js", "text/javascript"),
        ("asciinema-player.css", "text/css"),
    ] {
        let (status, head, _) =
            http_raw_head(s.server.addr, &request(&format!("/console/assets/{file}"))).await;
        assert_eq!(status, 200, "{file}");
        assert!(
            header(&head, "content-type").unwrap().starts_with(kind),
            "{file}: {head}"
        );
    }
}

/// The subdomain proxy in a real browser: a proxy link followed from a page
/// of another site (the console), the app's own login cookie and redirect,
/// and a WebSocket opened by the proxied page, with the `SameSite=Strict`
/// cookie doing the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_link_opened_from_the_console_works_in_the_browser() {
    let s = setup().await;
    let path = format!("/api/v1/sessions/{}/proxy-token", s.session);
    let body = json!({"service": "web"});
    let (status, v) = api_call(s.server.addr, "POST", &path, Some(&s.admin), Some(&body)).await;
    assert_eq!(status, 200, "{v}");
    let url = v["url"]
        .as_str()
        .unwrap()
        .replace("/?token=", "/headers?token=");

    let mut browser = Chromium::start(s.tmp.path()).await;
    let console = format!(
        "{}/console/terminal?session={}",
        s.server.base_url(),
        s.session
    );
    browser.call("Page.navigate", json!({"url": console})).await;
    browser
        .wait_eval("the console page", "document.readyState", |v| {
            v == "complete"
        })
        .await;
    // Followed from the console's page, as a link would be: a cross-site
    // navigation, then the proxy's redirect.
    browser
        .eval(&format!("location.href = {url:?}; true"))
        .await;
    let text = browser
        .wait_eval(
            "the service's answer",
            "location.pathname === '/headers' && document.body ? document.body.innerText : ''",
            |v| v.as_str().is_some_and(|t| t.contains("x-forwarded-host")),
        )
        .await;
    let seen: Value = serde_json::from_str(text.as_str().unwrap()).unwrap();
    assert_eq!(
        seen["headers"]["x-forwarded-proto"],
        json!(["http"]),
        "{seen}"
    );
    let href = browser.eval("location.href").await;
    assert!(!href.as_str().unwrap().contains("token="), "{href}");

    // The app's login: its cookie, its redirect to its own address.
    browser.eval("location.href = '/login'; true").await;
    browser
        .wait_eval(
            "the app's login",
            "location.pathname === '/me' && document.body ? document.body.innerText : ''",
            |v| v.as_str().is_some_and(|t| t.starts_with("logged in")),
        )
        .await;
    // A WebSocket from the proxied page.
    let echoed = browser
        .eval(
            "new Promise((resolve) => { \
               const ws = new WebSocket('ws://' + location.host + '/ws'); \
               ws.onopen = () => ws.send('hello over the proxy'); \
               ws.onmessage = (e) => { resolve(e.data); ws.close(); }; \
               ws.onerror = () => resolve('error'); })",
        )
        .await;
    assert_eq!(echoed, "hello over the proxy");
}

/// The vendored files are the ones `scripts/vendor-console.sh` fetched
/// from the npm registry: their checksums match the ones it recorded.
#[test]
fn the_vendored_files_match_their_recorded_checksums() {
    use sha2::{Digest, Sha256};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/vendor");
    let versions = std::fs::read_to_string(dir.join("VERSIONS")).unwrap();
    let mut checked = 0;
    for line in versions
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains(" sha512-"))
    {
        let (sum, file) = line.split_once("  ").unwrap();
        let got = hex::encode(Sha256::digest(std::fs::read(dir.join(file)).unwrap()));
        assert_eq!(got, sum, "{file} differs from what was vendored");
        checked += 1;
    }
    assert_eq!(checked, 7, "{versions}");
}

/// A raw request read to the end: status, head, body.
async fn http_raw_head(addr: std::net::SocketAddr, request: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (
        head[9..12].parse().unwrap(),
        head.to_owned(),
        body.to_owned(),
    )
}
