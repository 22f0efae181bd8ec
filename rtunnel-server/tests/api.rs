//! The HTTP API in process: the real router over a real SQLite file,
//! called with `tower::ServiceExt::oneshot`, for behaviour where no process
//! boundary matters (envelopes, pagination, authorization). What crosses
//! processes (tunnels, forwards, the proxy, the CLI) is tested with real
//! processes elsewhere.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use rtunnel_core::store::Role;
use rtunnel_core::store::sql::SqlStore;
use rtunnel_server::{AppState, Server, ServerConfig, Stores, enroll};
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// A server's router and state, on its own SQLite file.
struct Api {
    router: axum::Router,
    state: Arc<AppState>,
    _tmp: tempfile::TempDir,
}

impl Api {
    async fn new() -> Api {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqlStore::open(&tmp.path().join("rtunnel.db"))
            .await
            .unwrap();
        let server = Server::builder()
            .config(ServerConfig {
                data_dir: tmp.path().to_owned(),
                ..ServerConfig::default()
            })
            .stores(Stores::sqlite(store))
            .build()
            .await
            .unwrap();
        Api {
            router: server.router(),
            state: server.state().clone(),
            _tmp: tmp,
        }
    }

    /// A request from 127.0.0.1, as JSON; the status and the parsed body.
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1:8080")
            .header("content-type", "application/json");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let mut req = req.body(Body::from(body.to_owned())).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000))));
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A user of `role` and an API token for them.
    async fn user_with_token(&self, name: &str, role: Role) -> String {
        let (user, _) = enroll::new_user(name, role, None, None).unwrap();
        let ids = &self.state.stores.identity;
        ids.create_user(&user).await.unwrap();
        let (record, token) = enroll::new_api_token(user.id, None);
        ids.create_api_token(&record).await.unwrap();
        token
    }
}

/// Every route that needs a user, with its method.
const USER_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/auth/logout"),
    ("GET", "/api/v1/systems"),
    ("POST", "/api/v1/systems"),
    ("GET", "/api/v1/systems/{id}"),
    ("DELETE", "/api/v1/systems/{id}"),
    ("POST", "/api/v1/systems/{id}/regenerate-secret"),
    ("GET", "/api/v1/users"),
    ("POST", "/api/v1/users"),
    ("GET", "/api/v1/users/{id}"),
    ("PATCH", "/api/v1/users/{id}"),
    ("GET", "/api/v1/sessions"),
    ("GET", "/api/v1/sessions/{id}"),
    ("DELETE", "/api/v1/sessions/{id}"),
    ("PATCH", "/api/v1/sessions/{id}/extend"),
    ("GET", "/api/v1/sessions/{id}/logs"),
    ("GET", "/api/v1/sessions/{id}/services"),
    ("GET", "/api/v1/sessions/{id}/forward"),
    ("POST", "/api/v1/sessions/{id}/terminal-ticket"),
    ("POST", "/api/v1/launch"),
    ("GET", "/api/v1/resources"),
    ("POST", "/api/v1/resources"),
    ("GET", "/api/v1/resources/{id}"),
    ("PUT", "/api/v1/resources/{id}"),
    ("DELETE", "/api/v1/resources/{id}"),
    ("POST", "/api/v1/grants"),
    ("DELETE", "/api/v1/grants"),
    ("GET", "/api/v1/audit"),
];

/// Routes that read a JSON body.
const JSON_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/refresh"),
    ("POST", "/api/v1/systems"),
    ("POST", "/api/v1/users"),
    ("PATCH", "/api/v1/users/{id}"),
    ("PATCH", "/api/v1/sessions/{id}/extend"),
    ("POST", "/api/v1/launch"),
    ("POST", "/api/v1/resources"),
    ("PUT", "/api/v1/resources/{id}"),
    ("POST", "/api/v1/grants"),
    ("DELETE", "/api/v1/grants"),
];

fn assert_envelope(v: &Value, code: &str, context: &str) {
    assert_eq!(v["success"], false, "{context}: {v}");
    assert_eq!(v["code"], code, "{context}: {v}");
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{context}: {v}"
    );
    assert_eq!(
        v["trace_id"].as_str().map(str::len),
        Some(16),
        "{context}: {v}"
    );
    assert_eq!(
        v.as_object().unwrap().len(),
        4,
        "{context}: nothing but the envelope: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_its_errors_in_the_envelope() {
    let server = Api::new().await;
    let admin = server.user_with_token("root", Role::Admin).await;
    let unknown = uuid::Uuid::new_v4().to_string();

    for (method, path) in USER_ROUTES {
        let path = path.replace("{id}", &unknown);
        let (status, v) = server.call(method, &path, None, "").await;
        assert_eq!(status, 401, "{method} {path}: {v}");
        assert_envelope(&v, "missing_authorization", &format!("{method} {path}"));
        let (status, v) = server
            .call(method, &path, Some("forged.token.here"), "")
            .await;
        assert_eq!(status, 401, "{method} {path}: {v}");
        assert_envelope(&v, "unauthorized", &format!("{method} {path}"));
    }
    for (method, path) in JSON_ROUTES {
        let path = path.replace("{id}", &unknown);
        let (status, v) = server.call(method, &path, Some(&admin), "{not json").await;
        assert_eq!(status, 400, "{method} {path}: {v}");
        assert_envelope(&v, "invalid_body", &format!("{method} {path}"));
        let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(70_000));
        let (status, v) = server.call(method, &path, Some(&admin), &big).await;
        assert_eq!(status, 413, "{method} {path}: {v}");
        assert_envelope(&v, "body_too_large", &format!("{method} {path}"));
    }
    // Unknown ids: 404 with a code naming what was not found.
    for (method, path, body, code) in [
        ("GET", "/api/v1/systems/{id}", "", "system_not_found"),
        ("DELETE", "/api/v1/systems/{id}", "", "system_not_found"),
        ("GET", "/api/v1/users/{id}", "", "user_not_found"),
        ("PATCH", "/api/v1/users/{id}", "{}", "user_not_found"),
        ("GET", "/api/v1/sessions/{id}", "", "session_not_found"),
        ("GET", "/api/v1/resources/{id}", "", "resource_not_found"),
        ("DELETE", "/api/v1/resources/{id}", "", "resource_not_found"),
    ] {
        for id in [unknown.as_str(), "not-a-uuid"] {
            let path = path.replace("{id}", id);
            let (status, v) = server.call(method, &path, Some(&admin), body).await;
            assert_eq!(status, 404, "{method} {path}: {v}");
            assert_envelope(&v, code, &format!("{method} {path}"));
        }
    }
    let (status, v) = server.call("PUT", "/api/v1/audit", Some(&admin), "").await;
    assert_eq!(status, 405);
    assert_envelope(&v, "method_not_allowed", "PUT /api/v1/audit");
    let (status, v) = server
        .call("GET", "/api/v2/anything", Some(&admin), "")
        .await;
    assert_eq!(status, 404);
    assert_envelope(&v, "route_not_found", "GET /api/v2/anything");
}

#[tokio::test]
async fn lists_page_through_everything_once() {
    let api = Api::new().await;
    let admin = api.user_with_token("root", Role::Admin).await;
    for i in 0..23 {
        let body = json!({"name": format!("box-{i:02}")}).to_string();
        let (status, v) = api
            .call("POST", "/api/v1/systems", Some(&admin), &body)
            .await;
        assert_eq!(status, 201, "{v}");
    }
    let mut seen = Vec::new();
    for page in 1..=3 {
        let path = format!("/api/v1/systems?page={page}&page_size=10");
        let (status, v) = api.call("GET", &path, Some(&admin), "").await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            (
                v["page"].as_u64(),
                v["page_size"].as_u64(),
                v["total"].as_u64()
            ),
            (Some(page), Some(10), Some(23))
        );
        seen.extend(
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].as_str().unwrap().to_owned()),
        );
    }
    let mut expected: Vec<String> = (0..23).map(|i| format!("box-{i:02}")).collect();
    expected.sort();
    assert_eq!(seen, expected, "each system once, in name order");
    for bad in ["page=0", "page_size=0", "page_size=501", "page=x"] {
        let (status, v) = api
            .call("GET", &format!("/api/v1/systems?{bad}"), Some(&admin), "")
            .await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert_envelope(
            &v,
            if bad == "page=x" {
                "invalid_query"
            } else {
                "invalid_pagination"
            },
            bad,
        );
    }
}

#[tokio::test]
async fn each_role_sees_and_does_what_it_may() {
    let api = Api::new().await;
    let admin = api.user_with_token("root", Role::Admin).await;
    let olga = api.user_with_token("olga", Role::Operator).await;
    let vera = api.user_with_token("vera", Role::Viewer).await;
    let mut ids = Vec::new();
    for name in ["granted-box", "other-box"] {
        let body = json!({"name": name}).to_string();
        let (status, v) = api
            .call("POST", "/api/v1/systems", Some(&admin), &body)
            .await;
        assert_eq!(status, 201, "{v}");
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let (_, users) = api.call("GET", "/api/v1/users", Some(&admin), "").await;
    let id_of = |name: &str| {
        users["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for user in ["olga", "vera"] {
        let body = json!({"user_id": id_of(user), "system_id": ids[0]}).to_string();
        let (status, v) = api
            .call("POST", "/api/v1/grants", Some(&admin), &body)
            .await;
        assert!(status < 300, "{v}");
    }
    // Operators and viewers see the systems granted to them, no others.
    for token in [&olga, &vera] {
        let (status, v) = api.call("GET", "/api/v1/systems", Some(token), "").await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["total"], 1, "{v}");
        assert_eq!(v["items"][0]["name"], "granted-box");
        let other = format!("/api/v1/systems/{}", ids[1]);
        let (status, v) = api.call("GET", &other, Some(token), "").await;
        assert_eq!(status, 404, "an ungranted system is not even there: {v}");
    }
    // Only admins administer.
    let body = json!({"name": "new-box"}).to_string();
    for token in [&olga, &vera] {
        for (method, path, body) in [
            ("POST", "/api/v1/systems".to_owned(), body.as_str()),
            ("GET", "/api/v1/users".to_owned(), ""),
            ("GET", "/api/v1/audit".to_owned(), ""),
            ("DELETE", format!("/api/v1/systems/{}", ids[0]), ""),
        ] {
            let (status, v) = api.call(method, &path, Some(token), body).await;
            assert_eq!(status, 403, "{method} {path}: {v}");
            assert_envelope(&v, "forbidden", &format!("{method} {path}"));
        }
    }
}
