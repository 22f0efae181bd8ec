//! The error envelope on every route of the real server: no credentials,
//! bad bodies, unknown ids, and a 5xx that keeps its internals in the log
//! under the trace id it answers with.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{Value, json};
use support::*;

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

async fn raw(
    s: &ServerProc,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = http_raw(s.addr, &req).await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_its_errors_in_the_envelope() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let admin = user_with_token(&server, "root", "admin");
    let unknown = uuid::Uuid::new_v4().to_string();

    for (method, path) in USER_ROUTES {
        let path = path.replace("{id}", &unknown);
        let (status, v) = raw(&server, method, &path, None, "").await;
        assert_eq!(status, 401, "{method} {path}: {v}");
        assert_envelope(&v, "missing_authorization", &format!("{method} {path}"));
        let (status, v) = raw(&server, method, &path, Some("forged.token.here"), "").await;
        assert_eq!(status, 401, "{method} {path}: {v}");
        assert_envelope(&v, "unauthorized", &format!("{method} {path}"));
    }
    for (method, path) in JSON_ROUTES {
        let path = path.replace("{id}", &unknown);
        let (status, v) = raw(&server, method, &path, Some(&admin), "{not json").await;
        assert_eq!(status, 400, "{method} {path}: {v}");
        assert_envelope(&v, "invalid_body", &format!("{method} {path}"));
        let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(70_000));
        let (status, v) = raw(&server, method, &path, Some(&admin), &big).await;
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
            let (status, v) = raw(&server, method, &path, Some(&admin), body).await;
            assert_eq!(status, 404, "{method} {path}: {v}");
            assert_envelope(&v, code, &format!("{method} {path}"));
        }
    }
    let (status, v) = raw(&server, "PUT", "/api/v1/audit", Some(&admin), "").await;
    assert_eq!(status, 405);
    assert_envelope(&v, "method_not_allowed", "PUT /api/v1/audit");
    let (status, v) = raw(&server, "GET", "/api/v2/anything", Some(&admin), "").await;
    assert_eq!(status, 404);
    assert_envelope(&v, "route_not_found", "GET /api/v2/anything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_keeps_its_internals_in_the_log_under_its_trace_id() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let admin = user_with_token(&server, "root", "admin");

    // Take the audit table away under the running server: a real database
    // fault, on demand.
    let db = tmp.path().join("data/rtunnel.db");
    let url = format!("sqlite://{}", db.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("ALTER TABLE audit_events RENAME TO audit_events_away")
        .execute(&pool)
        .await
        .unwrap();

    let create = |name: &'static str| {
        let admin = admin.clone();
        let addr = server.addr;
        async move {
            let body = json!({ "name": name });
            api_call(addr, "POST", "/api/v1/systems", Some(&admin), Some(&body)).await
        }
    };
    let (status, v) = create("while-broken").await;
    assert_eq!(status, 503, "{v}");
    assert_envelope(&v, "audit_unavailable", "POST /api/v1/systems");
    let text = v.to_string();
    assert!(
        !text.contains("audit_events") && !text.contains("sqlite") && !text.contains("table"),
        "no internals in a 5xx: {text}"
    );
    let trace_id = v["trace_id"].as_str().unwrap().to_owned();
    let line = wait_for("the log line of the failure", || {
        let log = server.proc.log_text();
        let trace_id = trace_id.clone();
        async move {
            log.lines()
                .find(|l| l.contains(&trace_id))
                .map(str::to_owned)
        }
    })
    .await;
    assert!(
        line.contains("audit_events"),
        "the detail is in the log: {line}"
    );
    // Nothing was created while the audit could not be written.
    let (_, v) = api_call(server.addr, "GET", "/api/v1/systems", Some(&admin), None).await;
    assert_eq!(v["total"], 0, "{v}");

    // Put it back: the server recovers by itself.
    sqlx::query("ALTER TABLE audit_events_away RENAME TO audit_events")
        .execute(&pool)
        .await
        .unwrap();
    let (status, v) = create("after").await;
    assert_eq!(status, 201, "{v}");
}
