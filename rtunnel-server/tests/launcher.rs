//! The session launcher against the real server: its contract's URLs,
//! error messages word for word, grants, signed tokens, and the audit.

#![allow(clippy::unwrap_used)]

mod support;

use rtunnel_auth::HmacSigner;
use rtunnel_auth::claims::{Claims, TokenKind};
use rtunnel_auth::launch_token::LaunchSigner;
use rtunnel_core::store::now_millis;
use serde_json::{Value, json};
use support::*;

struct User {
    id: String,
    token: String,
}

fn user(server: &ServerProc, name: &str, role: &str, email: Option<&str>) -> User {
    let mut args = vec!["user", "add", name, "--role", role, "--token", "--json"];
    if let Some(e) = email {
        args.extend(["--email", e]);
    }
    let v: Value = serde_json::from_str(&server.admin(&args)).unwrap();
    User {
        id: v["id"].as_str().unwrap().into(),
        token: v["token"].as_str().unwrap().into(),
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    server: ServerProc,
    admin: User,
}

async fn setup(env: &[(&str, &str)]) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start_with_env(tmp.path(), &[], env).await;
    let admin = user(&server, "root", "admin", None);
    Setup {
        _tmp: tmp,
        server,
        admin,
    }
}

async fn create_resource(s: &Setup, body: Value) -> String {
    let (status, v) = api_call(
        s.server.addr,
        "POST",
        "/api/v1/resources",
        Some(&s.admin.token),
        Some(&body),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

async fn grant(s: &Setup, user: &User, resource: &str, expires_in: Option<&str>) {
    let mut body = json!({"user_id": user.id, "resource_id": resource});
    if let Some(e) = expires_in {
        body["expires_in"] = json!(e);
    }
    let (status, v) = api_call(
        s.server.addr,
        "POST",
        "/api/v1/grants",
        Some(&s.admin.token),
        Some(&body),
    )
    .await;
    assert_eq!(status, 201, "{v}");
}

async fn launch(s: &Setup, token: Option<&str>, resource: &str, kind: &str) -> (u16, Value) {
    api_call(
        s.server.addr,
        "POST",
        "/api/v1/launch",
        token,
        Some(&json!({"resourceId": resource, "connectionType": kind})),
    )
    .await
}

fn key_file(s: &Setup, name: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(s.server.dir.join("data").join(name)).unwrap();
    hex::decode(text.trim()).unwrap()
}

fn assert_error(status: u16, v: &Value, want_status: u16, want_message: &str) {
    assert_eq!(status, want_status, "{v}");
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["error"], want_message, "{v}");
    assert!(v["code"].is_string() && v["trace_id"].is_string(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_of_the_launcher_contract_word_for_word() {
    let s = setup(&[]).await;
    let op = user(&s.server, "olivia", "operator", None);
    let viewer = user(&s.server, "victor", "viewer", None);
    let bare = create_resource(&s, json!({"name": "bare"})).await;
    grant(&s, &op, &bare, None).await;
    grant(&s, &viewer, &bare, None).await;

    let (status, v) = launch(&s, None, &bare, "direct").await;
    assert_error(status, &v, 401, "Missing authorization header");

    let (status, v) = launch(&s, Some(&op.token), &bare, "vnc").await;
    assert_error(status, &v, 400, "Invalid connection type");

    // No grant, a viewer, a resource that does not exist, an id that is no id.
    let stranger = user(&s.server, "sam", "operator", None);
    for (token, resource) in [
        (&stranger.token, bare.as_str()),
        (&viewer.token, bare.as_str()),
        (&op.token, "6a1f7d4e-0000-4000-8000-000000000000"),
        (&op.token, "not-a-uuid"),
    ] {
        let (status, v) = launch(&s, Some(token), resource, "direct").await;
        assert_error(status, &v, 403, "Access denied to this resource");
    }

    for kind in ["guacamole", "tsplus", "rdp", "ssh", "direct"] {
        let (status, v) = launch(&s, Some(&op.token), &bare, kind).await;
        assert_error(status, &v, 400, "No URL configured for this resource");
    }
    // Nothing was launched, so nothing was audited as launched.
    assert!(
        audit_events(&s.server.dir, "session_launched")
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_type_answers_its_url_with_a_signed_token_and_is_audited() {
    let s = setup(&[]).await;
    let op = user(&s.server, "olivia", "operator", Some("olivia@example.com"));
    let id = create_resource(
        &s,
        json!({
            "name": "rdp-box",
            "ip_address": "10.0.1.50",
            "metadata": {
                "pomerium_url": "https://access.company.com",
                "guacamole_connection_id": "rdp-connection-123",
                "tsplus_url": "https://rdp.company.com/",
                "external_url": "https://app.example.com"
            }
        }),
    )
    .await;
    grant(&s, &op, &id, Some("8h")).await;
    let launch_key = LaunchSigner::new(&key_file(&s, "launch.key")).unwrap();

    let (status, v) = launch(&s, Some(&op.token), &id, "guacamole").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["success"], true);
    let url = v["sessionUrl"].as_str().unwrap();
    let prefix = "https://access.company.com/guacamole/#/client/cmRwLWNvbm5lY3Rpb24tMTIz?token=";
    assert!(url.starts_with(prefix), "{url}");
    let token = launch_key
        .verify(&url[prefix.len()..], now_millis() / 1000)
        .unwrap();
    assert_eq!(token.sub, op.id);
    assert_eq!(token.rid, id);
    assert_eq!(token.cid, v["connectionId"].as_str().unwrap());
    assert_eq!(token.exp - token.iat, 3600);
    // Gateways may check what kind of launch the token is for.
    assert_eq!(token.ctype.as_deref(), Some("guacamole"));

    let (_, v) = launch(&s, Some(&op.token), &id, "rdp").await;
    let rdp = base64_of(&format!("rdp-{id}"));
    assert!(
        v["sessionUrl"].as_str().unwrap().starts_with(&format!(
            "https://access.company.com/guacamole/#/client/{rdp}?token="
        )),
        "{v}"
    );
    let (_, v) = launch(&s, Some(&op.token), &id, "tsplus").await;
    assert!(
        v["sessionUrl"].as_str().unwrap().starts_with(
            "https://rdp.company.com/html5/?user=olivia%40example.com&host=10.0.1.50&token="
        ),
        "{v}"
    );
    let (_, v) = launch(&s, Some(&op.token), &id, "direct").await;
    assert_eq!(v["sessionUrl"], "https://app.example.com");

    let events = audit_events(&s.server.dir, "session_launched").await;
    assert_eq!(events.len(), 4);
    let last = events.iter().max_by_key(|e| e.at).unwrap();
    assert_eq!(last.actor.as_deref(), Some("olivia"));
    for key in [
        "resource_id",
        "resource_name",
        "connection_type",
        "connection_id",
        "ip_address",
    ] {
        assert!(last.details[key].is_string(), "{key}: {}", last.details);
    }
    assert_eq!(last.details["resource_name"], "rdp-box");
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .encode(s)
        .replace('=', "%3D")
        .replace('+', "%2B")
        .replace('/', "%2F")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_fallbacks_give_the_gateway_urls() {
    let s = setup(&[
        ("POMERIUM_BASE_URL", "https://pomerium.example"),
        ("TSPLUS_BASE_URL", "https://tsplus.example"),
    ])
    .await;
    let id = create_resource(
        &s,
        json!({"name": "plain", "metadata": {"target_host": "db1"}}),
    )
    .await;
    // Admins launch without a grant.
    let (status, v) = launch(&s, Some(&s.admin.token), &id, "ssh").await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v["sessionUrl"]
            .as_str()
            .unwrap()
            .starts_with("https://pomerium.example/guacamole/#/client/"),
        "{v}"
    );
    let (_, v) = launch(&s, Some(&s.admin.token), &id, "tsplus").await;
    assert!(
        v["sessionUrl"]
            .as_str()
            .unwrap()
            .starts_with("https://tsplus.example/html5/?user=root&host=db1&token="),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_expired_grants_stop_launches() {
    let s = setup(&[]).await;
    let op = user(&s.server, "olivia", "operator", None);
    let id = create_resource(
        &s,
        json!({"name": "app", "metadata": {"external_url": "https://app.example.com"}}),
    )
    .await;
    grant(&s, &op, &id, None).await;
    assert_eq!(launch(&s, Some(&op.token), &id, "direct").await.0, 200);
    let (status, v) = api_call(
        s.server.addr,
        "DELETE",
        "/api/v1/grants",
        Some(&s.admin.token),
        Some(&json!({"user_id": op.id, "resource_id": id})),
    )
    .await;
    assert_eq!(status, 204, "{v}");
    let (status, v) = launch(&s, Some(&op.token), &id, "direct").await;
    assert_error(status, &v, 403, "Access denied to this resource");

    grant(&s, &op, &id, Some("1s")).await;
    wait_for("the grant to expire", || async {
        let (status, _) = launch(&s, Some(&op.token), &id, "direct").await;
        (status == 403).then_some(())
    })
    .await;

    // The admin CLI grants and revokes resources by name too.
    s.server
        .admin(&["grant", "olivia", "app", "--resource", "--expires-in", "1h"]);
    assert_eq!(launch(&s, Some(&op.token), &id, "direct").await.0, 200);
    s.server.admin(&["revoke", "olivia", "app", "--resource"]);
    assert_eq!(launch(&s, Some(&op.token), &id, "direct").await.0, 403);
    let grants = audit_events(&s.server.dir, "grant_created").await;
    assert!(
        grants
            .iter()
            .any(|e| e.details["resource_name"] == "app" && e.details["expires_at"].is_string()),
        "{grants:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_are_checked_and_admin_only() {
    let s = setup(&[]).await;
    let op = user(&s.server, "olivia", "operator", None);
    let (status, v) = api_call(
        s.server.addr,
        "POST",
        "/api/v1/resources",
        Some(&op.token),
        Some(&json!({"name": "x"})),
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    for (body, want, code) in [
        (
            json!({"name": "x", "metadata": {"external_url": "javascript:alert(1)"}}),
            400,
            "invalid_resource",
        ),
        (
            json!({"name": "x", "metadata": [1]}),
            400,
            "invalid_resource",
        ),
        // `direct` falls back to the address: it must be a host or an IP.
        (
            json!({"name": "x", "ip_address": "javascript:alert(document.cookie)"}),
            400,
            "invalid_resource",
        ),
        (
            json!({"name": "x", "ip_address": "https://evil.example/"}),
            400,
            "invalid_resource",
        ),
        (
            json!({"name": "x", "metadata": {"pomerium_url": "https://p.example/?next=//evil"}}),
            400,
            "invalid_resource",
        ),
        (
            json!({"name": "x", "service": "ssh"}),
            400,
            "invalid_resource",
        ),
        (json!({"name": "x", "surprise": true}), 422, "invalid_body"),
    ] {
        let (status, v) = api_call(
            s.server.addr,
            "POST",
            "/api/v1/resources",
            Some(&s.admin.token),
            Some(&body),
        )
        .await;
        assert_eq!(
            (status, v["code"].as_str()),
            (want, Some(code)),
            "{body}: {v}"
        );
    }
    let id = create_resource(&s, json!({"name": "x"})).await;
    let (status, v) = api_call(
        s.server.addr,
        "POST",
        "/api/v1/resources",
        Some(&s.admin.token),
        Some(&json!({"name": "x"})),
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("name_taken")),
        "{v}"
    );
    let path = format!("/api/v1/resources/{id}");
    let (status, v) = api_call(
        s.server.addr,
        "PUT",
        &path,
        Some(&s.admin.token),
        Some(&json!({"name": "y", "ip_address": "192.0.2.7"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ip_address"], "192.0.2.7");
    let (status, _) = api_call(s.server.addr, "DELETE", &path, Some(&s.admin.token), None).await;
    assert_eq!(status, 204);
    let (status, _) = api_call(s.server.addr, "GET", &path, Some(&s.admin.token), None).await;
    assert_eq!(status, 404);
    let created = audit_events(&s.server.dir, "resource_created").await;
    assert_eq!(created.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_tied_to_a_service_launches_direct_to_its_proxy_url() {
    let s = setup(&[]).await;
    let sys = enroll(&s.server, "customer-box");
    let web = http_service().await;
    let _agent = start_agent(&s.server, &sys, &format!("web={web}"), &[]);
    let session = active_session(&s.server, &s.admin.token, &sys.id).await;
    let op = user(&s.server, "olivia", "operator", None);
    let id = create_resource(
        &s,
        json!({"name": "customer-web", "system_id": sys.id, "service": "web"}),
    )
    .await;
    grant(&s, &op, &id, None).await;

    // The resource grant alone is not access to the system.
    let (status, v) = launch(&s, Some(&op.token), &id, "direct").await;
    assert_error(status, &v, 403, "Access denied to this resource");
    s.server.admin(&["grant", "olivia", "customer-box"]);

    let (status, v) = launch(&s, Some(&op.token), &id, "direct").await;
    assert_eq!(status, 200, "{v}");
    let url = v["sessionUrl"].as_str().unwrap();
    let hex = session.replace('-', "");
    let prefix = format!(
        "http://web--{hex}.localhost:{}/?token=",
        s.server.addr.port()
    );
    assert!(url.starts_with(&prefix), "{url}");
    let signer = HmacSigner::new("k1", &key_file(&s, "secret.key")).unwrap();
    let claims = Claims::verify(
        &signer,
        &url[prefix.len()..],
        TokenKind::Proxy,
        now_millis(),
    )
    .unwrap();
    assert_eq!(claims.sub.to_string(), op.id);
    assert_eq!(claims.sid.unwrap().to_string(), session);
    assert_eq!(claims.svc.as_deref(), Some("web"));
    assert!(claims.exp - claims.iat == 3_600_000);
}
