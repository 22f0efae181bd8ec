//! The console at `/console/` in a real browser: headless Chromium driven
//! over the DevTools Protocol against a real server, a real agent with a
//! web service and a real PTY. Each flow signs in with a password, as a
//! person would; a failed wait saves a screenshot (see `wait_eval`).
//! With `RTUNNEL_SCREENSHOTS=DIR` the tests also save the pages they pass
//! through, at 1280x800 and at a phone's width (docs/CONSOLE.md shows some).

#![allow(clippy::unwrap_used)]

#[path = "support/console_setup.rs"]
mod console_setup;
mod support;
#[path = "support/webapp.rs"]
mod webapp;

use console_setup::{Setup, setup};
use serde_json::{Value, json};
use support::chromium::Chromium;
use support::*;

/// Saves what the page shows when `RTUNNEL_SCREENSHOTS` names a folder.
async fn shot(browser: &mut Chromium, name: &str) {
    let Ok(dir) = std::env::var("RTUNNEL_SCREENSHOTS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    browser.screenshot(&dir.join(format!("{name}.png"))).await;
}

async fn window(browser: &mut Chromium, width: u32, height: u32) {
    browser
        .call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}),
        )
        .await;
}

/// Opens the console and signs in with a password.
async fn sign_in(browser: &mut Chromium, base: &str, user: &str, password: &str) {
    browser.call("Page.enable", json!({})).await;
    browser.navigate(&format!("{base}/console/")).await;
    browser
        .wait_eval(
            "the sign-in form",
            "!!document.querySelector('#sign-in:not([hidden])')",
            |v| v == true,
        )
        .await;
    shot(browser, "sign-in").await;
    browser.click("#sign-in input[name=username]").await;
    browser.type_text(user).await;
    browser.click("#sign-in input[name=password]").await;
    browser.type_text(password).await;
    browser.press_enter().await;
    browser
        .wait_eval(
            "the console to sign in",
            "window.rtunnelConsole && window.rtunnelConsole.me && window.rtunnelConsole.me.name",
            |v| v == user,
        )
        .await;
}

/// Waits for an element matching `selector` to exist.
async fn wait_for_element(browser: &mut Chromium, what: &str, selector: &str) {
    let expr = format!("!!document.querySelector({selector:?})");
    browser.wait_eval(what, &expr, |v| v == true).await;
}

/// A folder of its own for one more browser (profile and log).
fn browser_dir(s: &Setup, name: &str) -> std::path::PathBuf {
    let dir = s.tmp.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn session_row(session: &str) -> String {
    format!("tr[data-session='{session}']")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_signs_in_opens_a_terminal_plays_it_back_and_manages_grants() {
    let s = setup().await;
    user_with_password(&s.server, "ada", "admin", "ada's password");
    let base = s.server.base_url();
    let mut browser = Chromium::start(s.tmp.path()).await;
    window(&mut browser, 1280, 800).await;
    sign_in(&mut browser, &base, "ada", "ada's password").await;

    // The credential is a cookie the page cannot read.
    let cookies = browser.eval("document.cookie").await;
    assert!(
        !cookies.as_str().unwrap().contains("rtunnel_access"),
        "{cookies}"
    );
    let stored = browser
        .eval("JSON.stringify(localStorage) + JSON.stringify(sessionStorage)")
        .await;
    assert_eq!(stored, "{}{}");

    // The sessions list shows the active session; its page, its services.
    wait_for_element(
        &mut browser,
        "the session in the list",
        &session_row(&s.session),
    )
    .await;
    shot(&mut browser, "sessions").await;
    browser
        .click(&format!("{} a", session_row(&s.session)))
        .await;
    wait_for_element(
        &mut browser,
        "the session's services",
        "tr[data-service='web'] button.forward",
    )
    .await;
    shot(&mut browser, "session").await;

    // A TCP service shows the ready-to-paste forward command.
    browser.click("tr[data-service='web'] button.forward").await;
    let command = browser
        .wait_eval(
            "the forward command",
            "document.querySelector('#forward-box code') && document.querySelector('#forward-box code').textContent",
            |v| v.is_string(),
        )
        .await;
    let command = command.as_str().unwrap();
    assert!(
        command.starts_with(&format!(
            "rtunnel-agent forward --server {base} --session {} --service web --listen 127.0.0.1:",
            s.session
        )),
        "{command}"
    );

    // The terminal opens in a tab; typing reaches the shell.
    browser.click("tr[data-service='terminal'] button").await;
    browser
        .wait_eval(
            "the terminal to connect",
            "window.rtunnelTerminal && window.rtunnelTerminal.status",
            |v| v == "open",
        )
        .await;
    browser.wait_prompt().await;
    browser.type_line("echo hello from the console").await;
    browser.wait_line("hello from the console").await;
    shot(&mut browser, "terminal").await;
    // A second terminal opens beside it (the first stays open).
    browser
        .navigate(&format!("{base}/console/#/sessions/{}", s.session))
        .await;
    wait_for_element(
        &mut browser,
        "the session page again",
        "tr[data-service='terminal'] button",
    )
    .await;
    browser.click("tr[data-service='terminal'] button").await;
    browser
        .wait_eval(
            "the second terminal",
            "document.querySelectorAll('#terminal-tabs .tab').length === 2 && window.rtunnelTerminal.status",
            |v| v == "open",
        )
        .await;
    browser.wait_prompt().await;

    browser.type_line("exit").await;
    browser
        .wait_eval("the shell to end", "window.rtunnelTerminal.status", |v| {
            v == "closed"
        })
        .await;
    let tabs = browser
        .eval("document.querySelectorAll('#terminal-tabs .tab').length")
        .await;
    assert_eq!(tabs, 2, "both terminals have a tab");

    // Its recording plays in the page.
    browser
        .navigate(&format!("{base}/console/#/sessions/{}", s.session))
        .await;
    wait_for_element(
        &mut browser,
        "the recording in the list",
        "a[href^='#/recordings/']",
    )
    .await;
    browser.click("a[href^='#/recordings/']").await;
    wait_for_element(&mut browser, "the player", "#player .ap-player").await;
    shot(&mut browser, "recording").await;

    // Grants: give one to an operator, see it listed, revoke it.
    user_with_password(&s.server, "otto", "operator", "otto's password");
    browser.navigate(&format!("{base}/console/#/grants")).await;
    wait_for_element(
        &mut browser,
        "the grant form",
        "#give-grant select[name=user_id]",
    )
    .await;
    browser.click("#give-grant button[type=submit]").await;
    wait_for_element(&mut browser, "the new grant", "tr[data-grant]").await;
    shot(&mut browser, "grants").await;
    let (status, v) = api_call(s.server.addr, "GET", "/api/v1/grants", Some(&s.admin), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["total"], 1, "{v}");
    // The confirmation dialog says yes.
    browser.eval("window.confirm = () => true").await;
    browser.click("tr[data-grant] button").await;
    browser
        .wait_eval(
            "the grant to go",
            "document.querySelectorAll('tr[data-grant]').length",
            |v| v == 0,
        )
        .await;
    let (_, v) = api_call(s.server.addr, "GET", "/api/v1/grants", Some(&s.admin), None).await;
    assert_eq!(v["total"], 0, "{v}");

    // A password set in the users page's dialog works at once.
    browser.navigate(&format!("{base}/console/#/users")).await;
    wait_for_element(
        &mut browser,
        "otto's row",
        "tr[data-user='otto'] .row-actions button",
    )
    .await;
    browser
        .click("tr[data-user='otto'] .row-actions button:last-child")
        .await;
    wait_for_element(
        &mut browser,
        "the password dialog",
        "dialog[open] input[name=password]",
    )
    .await;
    shot(&mut browser, "set-password").await;
    browser.type_text("otto's new password").await;
    browser.press_enter().await;
    browser
        .wait_eval(
            "the dialog to close",
            "document.querySelectorAll('dialog').length",
            |v| v == 0,
        )
        .await;
    let login = json!({"username": "otto", "password": "otto's new password"});
    let (status, v) = api_call(
        s.server.addr,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(&login),
    )
    .await;
    assert_eq!(status, 200, "{v}");

    // The other admin pages render without an error.
    for page in ["systems", "users", "tokens", "resources", "audit"] {
        browser.navigate(&format!("{base}/console/#/{page}")).await;
        browser
            .wait_eval(&format!("the {page} page"), "document.querySelector('#view h1') && document.querySelector('#view h1').textContent", |v| v.is_string())
            .await;
        let error = browser.eval("window.rtunnelConsole.lastError").await;
        assert_eq!(error, Value::Null, "{page}: {error}");
        shot(&mut browser, page).await;
    }
    // Narrow windows get the same pages.
    window(&mut browser, 390, 800).await;
    browser
        .navigate(&format!("{base}/console/#/sessions/{}", s.session))
        .await;
    wait_for_element(&mut browser, "the session on a phone", "tr[data-service]").await;
    shot(&mut browser, "session-narrow").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_no_write_buttons_and_a_second_browser_sees_a_close_live() {
    let s = setup().await;
    user_with_password(&s.server, "ada", "admin", "ada's password");
    let base = s.server.base_url();
    user_with_password(&s.server, "vera", "viewer", "vera's password");
    s.server.admin(&["grant", "vera", "customer-box"]);

    let mut viewer = Chromium::start(&browser_dir(&s, "viewer")).await;
    sign_in(&mut viewer, &base, "vera", "vera's password").await;
    wait_for_element(
        &mut viewer,
        "the session in the viewer's list",
        &session_row(&s.session),
    )
    .await;
    // No admin pages in the menu.
    let admin_links = viewer
        .eval("[...document.querySelectorAll('nav a[data-admin]')].filter(a => !a.hidden).length")
        .await;
    assert_eq!(admin_links, 0);
    // Her session page: services listed, no button that changes anything
    // (refreshing the list of live terminals, and watching them, change
    // nothing).
    viewer
        .navigate(&format!("{base}/console/#/sessions/{}", s.session))
        .await;
    wait_for_element(&mut viewer, "the services", "tr[data-service='web']").await;
    let buttons = viewer
        .eval("[...document.querySelectorAll('#view button:not(.refresh):not(.watch)')].map(b => b.textContent)")
        .await;
    assert_eq!(buttons, json!([]), "a viewer sees no action");
    viewer.navigate(&format!("{base}/console/#/systems")).await;
    wait_for_element(&mut viewer, "the systems", "tr[data-system]").await;
    assert_eq!(
        viewer.eval("!!document.querySelector('#enroll')").await,
        false
    );

    // A second browser follows the sessions list; a close made elsewhere
    // shows there without a reload.
    let mut admin = Chromium::start(&browser_dir(&s, "admin")).await;
    sign_in(&mut admin, &base, "ada", "ada's password").await;
    wait_for_element(
        &mut admin,
        "the active session",
        &format!("{}[data-status='active']", session_row(&s.session)),
    )
    .await;
    admin.eval("window.__loaded = true").await;
    admin
        .wait_eval(
            "the event stream",
            "window.rtunnelConsole.eventsOpen",
            |v| v == true,
        )
        .await;
    let (status, v) = api_call(
        s.server.addr,
        "DELETE",
        &format!("/api/v1/sessions/{}", s.session),
        Some(&s.admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    wait_for_element(
        &mut admin,
        "the session to show closed",
        &format!("{}[data-status='closed']", session_row(&s.session)),
    )
    .await;
    assert_eq!(admin.eval("window.__loaded").await, true, "no reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_waits_for_the_customer_and_the_console_says_so() {
    let s = setup().await;
    user_with_password(&s.server, "ada", "admin", "ada's password");
    // A second system, whose customer approves each operator: the consent
    // command answers when the test says so.
    let sys = enroll(&s.server, "asks-first");
    let go = s.tmp.path().join("go");
    let command = format!("while [ ! -f {} ]; do sleep 0.1; done", go.display());
    let _agent = start_agent(
        &s.server,
        &sys,
        "",
        &[
            "--shell",
            "/bin/sh",
            "--consent",
            "approve",
            "--consent-command",
            &command,
            "--consent-timeout",
            "60s",
        ],
    );
    let session = active_session(&s.server, &s.admin, &sys.id).await;
    let base = s.server.base_url();
    let mut browser = Chromium::start(&browser_dir(&s, "consent")).await;
    window(&mut browser, 1280, 800).await;
    sign_in(&mut browser, &base, "ada", "ada's password").await;
    browser
        .navigate(&format!("{base}/console/#/sessions/{session}"))
        .await;
    wait_for_element(
        &mut browser,
        "the note that the customer is asked",
        ".note.consent",
    )
    .await;
    browser.click("tr[data-service='terminal'] button").await;
    browser
        .wait_eval(
            "the terminal to wait for the customer",
            "window.rtunnelTerminal && document.querySelector('.term-status').textContent",
            |v| v == "waiting for the customer's approval",
        )
        .await;
    shot(&mut browser, "consent-waiting").await;
    // The customer says yes: the terminal opens.
    std::fs::write(&go, "").unwrap();
    browser
        .wait_eval(
            "the terminal to open",
            "window.rtunnelTerminal.status",
            |v| v == "open",
        )
        .await;
    browser.wait_prompt().await;
    browser.type_line("echo approved-$((6*7))").await;
    browser.wait_line("approved-42").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_console_attaches_to_the_same_shell() {
    let s = setup().await;
    user_with_password(&s.server, "ada", "admin", "ada's password");
    let base = s.server.base_url();
    let mut browser = Chromium::start(&browser_dir(&s, "reload")).await;
    window(&mut browser, 1280, 800).await;
    sign_in(&mut browser, &base, "ada", "ada's password").await;
    let page = format!("{base}/console/#/sessions/{}", s.session);
    browser.navigate(&page).await;
    wait_for_element(
        &mut browser,
        "the terminal button",
        "tr[data-service='terminal'] button",
    )
    .await;
    browser.click("tr[data-service='terminal'] button").await;
    browser
        .wait_eval(
            "the terminal to connect",
            "window.rtunnelTerminal && window.rtunnelTerminal.status",
            |v| v == "open",
        )
        .await;
    browser.wait_prompt().await;
    // One line: a second one typed before the prompt would share its line.
    browser
        .type_line("KEPT=still-$((40+2)); cd /tmp; echo before-reload")
        .await;
    browser.wait_line("before-reload").await;

    // The page goes away (and its WebSocket with it); the shell waits on
    // the agent. The console comes back signed in (its cookie).
    browser.navigate("about:blank").await;
    browser.navigate(&page).await;
    // (The page that left may still count as inside for a moment: the
    // list is asked again until the agent says the terminal is detached.)
    let detached = "(() => { const c = document.querySelector('#live-terminals tr[data-terminal] td:nth-child(3)'); \
         if (c && c.textContent.includes('detached')) return true; \
         const r = document.querySelector('#live-terminals button.refresh'); if (r) r.click(); return false; })()";
    browser
        .wait_eval("the live terminal, detached", detached, |v| v == true)
        .await;
    shot(&mut browser, "live-terminals").await;
    browser
        .click("#live-terminals tr[data-terminal] button.attach")
        .await;
    browser
        .wait_eval(
            "the terminal to attach",
            "window.rtunnelTerminal && window.rtunnelTerminal.status",
            |v| v == "open",
        )
        .await;
    // The recent screen came back, and the shell is the same one.
    browser.wait_line("before-reload").await;
    browser.type_line("echo \"$KEPT in $PWD\"").await;
    browser.wait_line("still-42 in /tmp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moderated_terminal_shows_who_has_control() {
    let s = setup().await;
    user_with_password(&s.server, "ada", "admin", "ada's password");
    let base = s.server.base_url();
    let mut browser = Chromium::start(&browser_dir(&s, "moderated")).await;
    window(&mut browser, 1280, 800).await;
    sign_in(&mut browser, &base, "ada", "ada's password").await;
    browser
        .navigate(&format!("{base}/console/#/sessions/{}", s.session))
        .await;
    wait_for_element(
        &mut browser,
        "the moderated button",
        "tr[data-service='terminal'] button.moderated",
    )
    .await;
    browser
        .click("tr[data-service='terminal'] button.moderated")
        .await;
    browser
        .wait_eval(
            "the control bar",
            "!document.getElementById('terminal-control').hidden && document.getElementById('terminal-control').textContent",
            |v| v == "Moderated · control: ada",
        )
        .await;
    shot(&mut browser, "moderated-terminal").await;
    browser.wait_prompt().await;
    browser
        .type_line("echo typed-by-the-$((1+1))-controller")
        .await;
    browser.wait_line("typed-by-the-2-controller").await;
}
