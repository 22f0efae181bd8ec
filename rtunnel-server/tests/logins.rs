//! Logins against the real server: passwords, access and refresh tokens,
//! refresh rotation and replay, logout, rate limits on failed logins and
//! failed tunnel authentications, and the users API.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{Value, json};
use support::*;

const PASSWORD: &str = "correct horse battery staple";

struct Setup {
    _tmp: tempfile::TempDir,
    server: ServerProc,
    admin: String,
}

async fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    // Throttled attempts are reported once per interval: a short one here.
    let server = ServerProc::start(tmp.path(), &["--refusal-report-interval", "1s"]).await;
    let admin = user_with_token(&server, "root", "admin");
    Setup {
        _tmp: tmp,
        server,
        admin,
    }
}

/// Creates a user with a password through the CLI (`--password-stdin`).
fn user_with_password(s: &Setup, name: &str, role: &str) -> String {
    let out = admin_with_stdin(
        &s.server.dir,
        &[
            "user",
            "add",
            name,
            "--role",
            role,
            "--password-stdin",
            "--json",
        ],
        &format!("{PASSWORD}\n"),
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

async fn login_from(s: &Setup, from: &str, username: &str, password: &str) -> Answer {
    api_call_from(
        from,
        s.server.addr,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(&json!({"username": username, "password": password})),
    )
    .await
}

async fn login(s: &Setup, username: &str, password: &str) -> Answer {
    login_from(s, "127.0.0.1", username, password).await
}

async fn refresh(s: &Setup, token: &str) -> (u16, Value) {
    api_call(
        s.server.addr,
        "POST",
        "/api/v1/auth/refresh",
        None,
        Some(&json!({ "refresh_token": token })),
    )
    .await
}

/// The status of an authenticated read with `token`.
async fn whoami_status(s: &Setup, token: &str) -> u16 {
    api_call(s.server.addr, "GET", "/api/v1/sessions", Some(token), None)
        .await
        .0
}

fn assert_envelope(v: &Value, code: &str) {
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    assert_eq!(v["trace_id"].as_str().map(str::len), Some(16), "{v}");
}

fn tokens(a: &Answer) -> (String, String) {
    assert_eq!(a.status, 200, "{}", a.body);
    (
        a.body["access_token"].as_str().unwrap().to_owned(),
        a.body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_login_gives_tokens_that_work_until_logout() {
    let s = setup().await;
    user_with_password(&s, "olga", "operator");

    let wrong = login(&s, "olga", "not the password").await;
    assert_eq!(wrong.status, 401);
    assert_envelope(&wrong.body, "invalid_credentials");
    let unknown = login(&s, "nobody", PASSWORD).await;
    assert_eq!(unknown.status, 401);
    assert_eq!(
        unknown.body["error"], wrong.body["error"],
        "no hint which half was wrong"
    );

    let ok = login(&s, "olga", PASSWORD).await;
    assert_eq!(ok.body["expires_in"], 900);
    assert_eq!(ok.body["token_type"], "Bearer");
    let (access, refresh_token) = tokens(&ok);
    assert_eq!(whoami_status(&s, &access).await, 200);
    // A refresh token is not an access token.
    assert_eq!(whoami_status(&s, &refresh_token).await, 401);
    // An access token does not refresh.
    let (status, v) = refresh(&s, &access).await;
    assert_eq!(status, 401);
    assert_envelope(&v, "invalid_refresh_token");

    let (status, v) = api_call(
        s.server.addr,
        "POST",
        "/api/v1/auth/logout",
        Some(&access),
        None,
    )
    .await;
    assert_eq!(status, 204, "{v}");
    assert_eq!(whoami_status(&s, &access).await, 401, "logged out");
    let (status, _) = refresh(&s, &refresh_token).await;
    assert_eq!(status, 401, "the login's refresh token ended with it");

    // An API token is not a login.
    let (status, v) = api_call(
        s.server.addr,
        "POST",
        "/api/v1/auth/logout",
        Some(&s.admin),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert_envelope(&v, "not_a_login");

    let failed = audit_events(&s.server.dir, "login_failed").await;
    let reasons: Vec<_> = failed.iter().map(|e| e.details["reason"].clone()).collect();
    assert!(reasons.contains(&json!("wrong_password")), "{reasons:?}");
    assert!(reasons.contains(&json!("unknown_user")), "{reasons:?}");
    let logins = audit_events(&s.server.dir, "login").await;
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0].actor.as_deref(), Some("olga"));
    assert_eq!(audit_events(&s.server.dir, "logout").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_refresh_token_kills_the_family() {
    let s = setup().await;
    user_with_password(&s, "rita", "viewer");
    let (a1, r1) = tokens(&login(&s, "rita", PASSWORD).await);
    let (_, other_refresh) = tokens(&login(&s, "rita", PASSWORD).await);

    // Refreshing rotates: a new pair, and the old refresh token is dead.
    let (status, v) = refresh(&s, &r1).await;
    assert_eq!(status, 200, "{v}");
    let a2 = v["access_token"].as_str().unwrap().to_owned();
    let r2 = v["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    assert_eq!(whoami_status(&s, &a1).await, 200);
    assert_eq!(whoami_status(&s, &a2).await, 200);

    // Someone replays the first refresh token: refused, and the whole
    // family ends, for the thief and the rightful holder alike.
    let (status, v) = refresh(&s, &r1).await;
    assert_eq!(status, 401);
    assert_envelope(&v, "invalid_refresh_token");
    assert_eq!(
        refresh(&s, &r2).await.0,
        401,
        "the newest refresh token died too"
    );
    assert_eq!(whoami_status(&s, &a2).await, 401);
    assert_eq!(whoami_status(&s, &a1).await, 401);

    let replays = audit_events(&s.server.dir, "refresh_token_replayed").await;
    assert_eq!(replays.len(), 1);
    assert_eq!(replays[0].actor.as_deref(), Some("rita"));
    assert_eq!(replays[0].details["family_revoked"], true);

    // Another login of the same user is another family: untouched.
    assert_eq!(refresh(&s, &other_refresh).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_limited_per_name_and_address_but_not_from_elsewhere() {
    let s = setup().await;
    user_with_password(&s, "ann", "operator");
    user_with_password(&s, "bob", "operator");

    // One address guessing one name: five failures, then 429.
    for _ in 0..5 {
        assert_eq!(
            login_from(&s, "127.0.0.2", "ann", "guess").await.status,
            401
        );
    }
    let limited = login_from(&s, "127.0.0.2", "ann", PASSWORD).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_envelope(&limited.body, "rate_limited");
    let wait: u64 = header(&limited.head, "retry-after")
        .unwrap()
        .parse()
        .unwrap();
    assert!((55..=60).contains(&wait), "Retry-After {wait}");
    // The real ann, elsewhere, is not locked out.
    assert_eq!(
        login_from(&s, "127.0.0.3", "ann", PASSWORD).await.status,
        200
    );

    // One address spraying many names: 30 failures, then 429 for any name.
    for i in 0..30 {
        let name = format!("user{}", i / 5);
        assert_eq!(
            login_from(&s, "127.0.0.4", &name, "guess").await.status,
            401
        );
    }
    let sprayed = login_from(&s, "127.0.0.4", "bob", PASSWORD).await;
    assert_eq!(sprayed.status, 429, "{}", sprayed.body);

    // Many addresses on one name: bob logged in from 127.0.3.1 before the
    // attack, so that address still gets in; a new address waits, briefly.
    assert_eq!(
        login_from(&s, "127.0.3.1", "bob", PASSWORD).await.status,
        200
    );
    // Five guesses from each address, until the name's own budget runs
    // out: 30 at once, but it refills one every 2 s, and on a slow machine
    // 30 guesses (each a password hash) take longer than that.
    let mut guesses = 0;
    loop {
        let from = format!("127.0.1.{}", guesses / 5 + 1);
        let status = login_from(&s, &from, "bob", "guess").await.status;
        if status == 429 {
            break;
        }
        assert_eq!(status, 401);
        guesses += 1;
        assert!(guesses < 250, "the name's budget never ran out");
    }
    assert!(guesses >= 30, "the name's budget is 30 at once: {guesses}");
    let new_place = login_from(&s, "127.0.2.1", "bob", PASSWORD).await;
    assert_eq!(new_place.status, 429, "{}", new_place.body);
    let wait: u64 = header(&new_place.head, "retry-after")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        wait <= 2,
        "a real user is held up for seconds, not minutes: {wait}"
    );
    assert_eq!(
        login_from(&s, "127.0.3.1", "bob", PASSWORD).await.status,
        200
    );

    // Throttled attempts are not audited one by one: one event per name and
    // address says how many there were.
    let throttled = wait_for("the throttled logins to be reported", || async {
        let failed = audit_events(&s.server.dir, "login_failed").await;
        let limited: Vec<_> = failed
            .into_iter()
            .filter(|e| e.details["reason"] == "rate_limited")
            .collect();
        (limited.len() >= 3).then_some(limited)
    })
    .await;
    let ann = throttled
        .iter()
        .find(|e| e.actor.as_deref() == Some("ann"))
        .expect("ann's throttled attempt reported");
    assert_eq!(ann.ip_address.as_deref(), Some("127.0.0.2"));
    assert_eq!(ann.details["attempts"], 1, "{:?}", ann.details);
}

/// Finding: parallel guesses all passed the budget check before any of
/// them was counted. The budget is reserved before the password is
/// checked now: of 40 guesses at once, exactly the five of the budget are
/// checked, the rest are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_get_no_more_tries_than_the_budget() {
    let s = setup().await;
    user_with_password(&s, "ann", "operator");
    let guesses = (0..40).map(|_| login_from(&s, "127.0.0.7", "ann", "guess"));
    let answers = futures::future::join_all(guesses).await;
    let checked = answers.iter().filter(|a| a.status == 401).count();
    let refused = answers.iter().filter(|a| a.status == 429).count();
    assert_eq!(
        (checked, refused),
        (5, 35),
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    // The refused ones are one audit event, with their count.
    let event = wait_for("the throttled guesses to be reported", || async {
        audit_events(&s.server.dir, "login_failed")
            .await
            .into_iter()
            .find(|e| e.details["reason"] == "rate_limited")
    })
    .await;
    assert_eq!(event.details["attempts"], 35, "{:?}", event.details);
    let wrong = audit_events(&s.server.dir, "login_failed")
        .await
        .into_iter()
        .filter(|e| e.details["reason"] == "wrong_password")
        .count();
    assert_eq!(wrong, 5);
    // Names of the attacker's choosing make no audit rows of their own: the
    // address's budget checks 25 more (audited one by one, unknown_user),
    // the rest are counted into the address's events.
    let s = &s;
    let names = (0..60).map(|i| {
        let name = format!("random-{i}");
        async move { login_from(s, "127.0.0.7", &name, "guess").await.status }
    });
    let statuses = futures::future::join_all(names).await;
    assert_eq!(statuses.iter().filter(|&&st| st == 401).count(), 25);
    let limited = wait_for("every throttled attempt to be reported", || async {
        let events: Vec<_> = audit_events(&s.server.dir, "login_failed")
            .await
            .into_iter()
            .filter(|e| e.details["reason"] == "rate_limited")
            .collect();
        let attempts: u64 = events
            .iter()
            .map(|e| e.details["attempts"].as_u64().unwrap())
            .sum();
        (attempts == 70).then_some(events)
    })
    .await;
    assert!(limited.len() <= 3, "{limited:?}");
    assert!(
        limited
            .iter()
            .all(|e| e.ip_address.as_deref() == Some("127.0.0.7"))
    );
    let unknown = audit_events(&s.server.dir, "login_failed")
        .await
        .into_iter()
        .filter(|e| e.details["reason"] == "unknown_user")
        .count();
    assert_eq!(unknown, 25);
    // The server stays responsive while logins are checked: password
    // hashing runs off the async runtime.
    assert_eq!(
        api_call(s.server.addr, "GET", "/healthz", None, None)
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tunnel_authentications_are_limited_but_the_real_agent_gets_in() {
    let s = setup().await;
    let sys = enroll(&s.server, "box");
    let echo = echo_service().await;
    let mut agent = start_agent(&s.server, &sys, &format!("echo={echo}"), &[]);
    active_session(&s.server, &s.admin, &sys.id).await;
    agent.kill();

    // Authentication is checked before the upgrade: without upgrade headers
    // good credentials answer 400 websocket_required, bad ones 401.
    let tunnel = |from: &'static str, secret: String| {
        let key = sys.key.clone();
        let addr = s.server.addr;
        async move {
            use base64::Engine;
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}"));
            let req = format!(
                "GET /api/v1/tunnel HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {basic}\r\nConnection: close\r\n\r\n"
            );
            http_raw_from(from.parse().unwrap(), addr, &req)
                .await
                .unwrap()
        }
    };
    assert_eq!(tunnel("127.0.0.9", sys.secret.clone()).await.0, 400);
    for _ in 0..5 {
        assert_eq!(tunnel("127.0.0.9", "wrong".into()).await.0, 401);
    }
    let (status, head, body) = tunnel("127.0.0.9", sys.secret.clone()).await;
    assert_eq!(status, 429, "{body}");
    assert!(header(&head, "retry-after").is_some());

    // Guessing the key from many addresses spends its budget (30, five of
    // them spent above), but the agent's own address (its last session's)
    // still gets in.
    for a in 0..5 {
        let from: &'static str = Box::leak(format!("127.0.4.{}", a + 1).into_boxed_str());
        for _ in 0..5 {
            assert_eq!(tunnel(from, "wrong".into()).await.0, 401);
        }
    }
    assert_eq!(tunnel("127.0.5.1", sys.secret.clone()).await.0, 429);
    assert_eq!(tunnel("127.0.0.1", sys.secret.clone()).await.0, 400);
    let refused = wait_for("the throttled attempts to be reported", || async {
        let events = audit_events(&s.server.dir, "tunnel_auth_failed").await;
        events
            .iter()
            .any(|e| e.details["reason"] == "rate_limited")
            .then_some(events)
    })
    .await;
    // Every wrong secret was audited, each throttled attempt only counted.
    let wrong = refused
        .iter()
        .filter(|e| e.details["reason"] == "invalid_credentials")
        .count();
    assert_eq!(wrong, 30);
}

/// Finding: every request to the tunnel endpoint without credentials wrote
/// an audit row, so an anonymous client could fill the disk, and the audit
/// fails closed. Such requests are counted and logged in a summary now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_tunnel_requests_are_counted_not_audited() {
    let s = setup().await;
    let req = "GET /api/v1/tunnel HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    for _ in 0..200 {
        let (status, _, _) = http_raw_from("127.0.0.1".parse().unwrap(), s.server.addr, req)
            .await
            .unwrap();
        assert_eq!(status, 401);
    }
    let garbage = "GET /api/v1/tunnel HTTP/1.1\r\nHost: x\r\nAuthorization: Basic !!!\r\nConnection: close\r\n\r\n";
    let (status, _, _) = http_raw_from("127.0.0.1".parse().unwrap(), s.server.addr, garbage)
        .await
        .unwrap();
    assert_eq!(status, 401);
    wait_for("the summary of anonymous requests in the log", || async {
        s.server
            .proc
            .log_text()
            .contains("requests=201")
            .then_some(())
    })
    .await;
    let rows = audit_events(&s.server.dir, "tunnel_auth_failed").await;
    assert!(rows.is_empty(), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_manage_users_and_disabling_one_ends_their_logins() {
    let s = setup().await;
    let addr = s.server.addr;
    let (status, v) = api_call(
        addr,
        "POST",
        "/api/v1/users",
        Some(&s.admin),
        Some(&json!({"name": "vera", "role": "viewer", "email": "vera@example.com", "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["has_password"], true);
    assert!(v.get("password_hash").is_none());
    let vera = v["id"].as_str().unwrap().to_owned();
    let (status, v) = api_call(
        addr,
        "POST",
        "/api/v1/users",
        Some(&s.admin),
        Some(&json!({"name": "weak", "role": "viewer", "password": "short"})),
    )
    .await;
    assert_eq!(status, 400);
    assert_envelope(&v, "invalid_password");

    let (status, v) = api_call(addr, "GET", "/api/v1/users", Some(&s.admin), None).await;
    assert_eq!(status, 200);
    assert_eq!(v["total"], 2);
    let (access, refresh_token) = tokens(&login(&s, "vera", PASSWORD).await);
    // A viewer cannot manage users.
    let (status, v) = api_call(addr, "GET", "/api/v1/users", Some(&access), None).await;
    assert_eq!(status, 403);
    assert_envelope(&v, "forbidden");

    let path = format!("/api/v1/users/{vera}");
    let (status, v) = api_call(
        addr,
        "PATCH",
        &path,
        Some(&s.admin),
        Some(&json!({"disabled": true})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["disabled"], true);
    assert_eq!(whoami_status(&s, &access).await, 401);
    assert_eq!(refresh(&s, &refresh_token).await.0, 401);
    assert_eq!(login(&s, "vera", PASSWORD).await.status, 401);
    assert_eq!(audit_events(&s.server.dir, "user_disabled").await.len(), 1);

    let (status, _) = api_call(
        addr,
        "PATCH",
        &path,
        Some(&s.admin),
        Some(&json!({"disabled": false, "password": "a new password"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(login(&s, "vera", PASSWORD).await.status, 401);
    let (access, refresh_token) = tokens(&login(&s, "vera", "a new password").await);

    // A password set with the CLI ends the logins made with the old one.
    admin_with_stdin(
        &s.server.dir,
        &["user", "passwd", "vera"],
        "a third password\n",
    );
    assert_eq!(whoami_status(&s, &access).await, 401);
    assert_eq!(refresh(&s, &refresh_token).await.0, 401);
    assert_eq!(login(&s, "vera", "a third password").await.status, 200);

    // The CLI disables too.
    s.server.admin(&["user", "disable", "vera"]);
    assert_eq!(login(&s, "vera", "a third password").await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_system_stops_its_agent_and_cli_grants_expire() {
    let s = setup().await;
    let sys = enroll(&s.server, "doomed");
    let echo = echo_service().await;
    let mut agent = start_agent(&s.server, &sys, &format!("echo={echo}"), &[]);
    active_session(&s.server, &s.admin, &sys.id).await;

    // A grant from the CLI that ends by itself.
    let op = user_with_token(&s.server, "otto", "operator");
    s.server
        .admin(&["grant", "otto", "doomed", "--expires-in", "2s"]);
    let visible = || async {
        let (_, v) = api_call(s.server.addr, "GET", "/api/v1/systems", Some(&op), None).await;
        v["total"].as_u64().unwrap()
    };
    assert_eq!(visible().await, 1);
    wait_for("the grant to expire", || async {
        (visible().await == 0).then_some(())
    })
    .await;

    let path = format!("/api/v1/systems/{}", sys.id);
    let (status, v) = api_call(s.server.addr, "DELETE", &path, Some(&op), None).await;
    assert_eq!(status, 403, "{v}");
    let (status, v) = api_call(s.server.addr, "DELETE", &path, Some(&s.admin), None).await;
    assert_eq!(status, 204, "{v}");
    let exit = agent.wait_exit().await;
    assert_eq!(exit.code(), Some(1), "the agent stops instead of retrying");
    assert!(agent.log_text().contains("revoked"), "{}", agent.log_text());
    let (status, v) = api_call(s.server.addr, "GET", &path, Some(&s.admin), None).await;
    assert_eq!(status, 404);
    assert_envelope(&v, "system_not_found");
    assert_eq!(audit_events(&s.server.dir, "system_deleted").await.len(), 1);
}

/// `token create` prints the token's id, tokens last 90 days unless told
/// otherwise, `token list` shows them and `token revoke` ends one at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_lists_and_revokes_api_tokens() {
    let s = setup().await;
    let out = s.server.admin(&[
        "user", "add", "tia", "--role", "operator", "--token", "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let first_id = v["token_id"].as_str().unwrap().to_owned();
    let first = v["token"].as_str().unwrap().to_owned();
    let out = s.server.admin(&["token", "create", "tia", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let second = v["token"].as_str().unwrap().to_owned();
    let second_id = v["id"].as_str().unwrap().to_owned();
    s.server
        .admin(&["token", "create", "tia", "--ttl", "never"]);

    let out = s
        .server
        .admin(&["token", "list", "--user", "tia", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["total"], 3, "{v}");
    let items = v["items"].as_array().unwrap();
    let never = items.iter().filter(|t| t["expires_at"].is_null()).count();
    assert_eq!(never, 1, "{v}");
    let first_row = items.iter().find(|t| t["id"] == first_id.as_str()).unwrap();
    let expires = first_row["expires_at"].as_str().unwrap();
    let days =
        (chrono_days(expires) - chrono_days(first_row["created_at"].as_str().unwrap())).round();
    assert_eq!(days, 90.0, "{first_row}");
    let table = s.server.admin(&["token", "list"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains(&second_id) && table.contains("tia"),
        "{table}"
    );

    assert_eq!(whoami_status(&s, &second).await, 200);
    s.server.admin(&["token", "revoke", &second_id]);
    assert_eq!(whoami_status(&s, &second).await, 401);
    assert_eq!(whoami_status(&s, &first).await, 200);
    let out = s
        .server
        .admin(&["token", "list", "--user", "tia", "--json"]);
    assert!(out.contains("\"revoked\""), "{out}");
    assert_eq!(
        audit_events(&s.server.dir, "api_token_revoked").await.len(),
        1
    );
}

/// Days since the epoch of an RFC 3339 time `YYYY-MM-DDTHH:MM:SS...Z`.
fn chrono_days(t: &str) -> f64 {
    let date = &t[..10];
    let mut parts = date.split('-').map(|p| p.parse::<i64>().unwrap());
    let (y, m, d) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let hours: f64 = t[11..13].parse().unwrap();
    days as f64 + hours / 24.0
}
