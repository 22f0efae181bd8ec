//! `GET /api/v1/openapi.json`: the HTTP API as an OpenAPI 3.1 document,
//! generated from the handlers' `#[utoipa::path]` attributes and the types
//! they take and answer (`ToSchema`), so it cannot drift from the code. A
//! test reads the router's route table and fails when a route is missing
//! from the document, or the document names one the router does not have.

use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The document, assembled from every handler.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "rtunnel",
        description = "Remote-support access gateway: agents, support sessions, operators' \
                       access (forward, terminal, subdomain proxy, launcher) and the audit log. \
                       Errors answer the envelope `{success: false, error, code, trace_id}`. \
                       Paths are relative to the server's path prefix, if it has one."
    ),
    paths(
        super::healthz,
        super::readyz,
        openapi_json,
        crate::tunnel::tunnel_endpoint,
        super::login::login,
        super::login::refresh,
        super::login::logout,
        super::login::me,
        super::systems::list,
        super::systems::create,
        super::systems::show,
        super::systems::rename,
        super::systems::delete,
        super::systems::regenerate_secret,
        super::users::list,
        super::users::create,
        super::users::show,
        super::users::update,
        super::sessions::list,
        super::sessions::show,
        super::sessions::close,
        super::sessions::extend,
        super::sessions::logs,
        super::sessions::services,
        crate::forward::forward_endpoint,
        crate::forward::system_forward_endpoint,
        super::sessions::terminal_ticket,
        crate::terminal::terminal_endpoint,
        crate::terminal::system_terminal_endpoint,
        crate::terminal::list_terminals,
        super::sessions::proxy_token,
        super::recordings::list,
        super::recordings::download,
        super::launch::launch,
        super::resources::list,
        super::resources::create,
        super::resources::show,
        super::resources::update,
        super::resources::delete,
        super::audit::list,
        crate::events::stream,
        super::tokens::list,
        super::tokens::create,
        super::tokens::revoke,
        super::grants::list,
        super::grants::create,
        super::grants::revoke,
    ),
    modifiers(&Credentials),
    security(("bearer" = []), ("console_cookie" = [])),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "agents", description = "Where agents connect"),
        (name = "auth", description = "Logins, tokens, the console's cookies"),
        (name = "systems", description = "Enrolled systems"),
        (name = "users", description = "Users and roles (admin)"),
        (name = "sessions", description = "Support sessions and the access through them"),
        (name = "recordings", description = "Terminal recordings (admin)"),
        (name = "launcher", description = "The session launcher and its resources"),
        (name = "audit", description = "The audit log (admin)"),
        (name = "events", description = "Live changes"),
        (name = "tokens", description = "API tokens"),
        (name = "grants", description = "Who may reach which system (admin)"),
    )
)]
struct ApiDoc;

/// The ways to authenticate: a bearer token (an API token or an access
/// token), the console's cookie, and HTTP Basic for agents.
struct Credentials;

impl utoipa::Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "console_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "rtunnel_access",
                "The console's sign-in (`__Host-rtunnel_access` over HTTPS); changes also \
                 need the X-CSRF-Token header",
            ))),
        );
        components.add_security_scheme(
            "agent_basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}

/// The document as JSON, built once.
pub(crate) fn document() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"cannot build the document: {e}\"}}"))
    })
}

/// The API's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "health",
    security(()),
    responses((status = 200, description = "This document", body = serde_json::Value))
)]
pub(crate) async fn openapi_json() -> Response {
    let mut resp = document().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Every `(METHOD, path)` of the router's route table in `api/mod.rs`.
    fn routed() -> BTreeSet<(String, String)> {
        let source = include_str!("mod.rs");
        let table = source
            .split_once("pub(crate) fn routes(")
            .and_then(|(_, rest)| rest.split_once(".merge(crate::console::routes())"))
            .map(|(table, _)| table)
            .expect("the route table");
        let mut found = BTreeSet::new();
        for chunk in table.split(".route(").skip(1) {
            let path = chunk.split('"').nth(1).expect("a path literal");
            for method in ["get", "post", "put", "patch", "delete"] {
                let calls = chunk.matches(&format!("{method}(")).count()
                    - chunk.matches(&format!("_{method}(")).count();
                if calls > 0 {
                    found.insert((method.to_uppercase(), path.to_owned()));
                }
            }
        }
        found
    }

    fn documented() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(super::document()).unwrap();
        let mut found = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                found.insert((method.to_uppercase(), path.clone()));
            }
        }
        found
    }

    #[test]
    fn every_route_is_in_the_document_and_nothing_else() {
        let routed = routed();
        let documented = documented();
        assert!(
            routed.len() > 40,
            "the route table was not read: {routed:?}"
        );
        let missing: Vec<_> = routed.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "routes missing from the OpenAPI document: {missing:?}"
        );
        let extra: Vec<_> = documented.difference(&routed).collect();
        assert!(extra.is_empty(), "documented but not routed: {extra:?}");
    }

    #[test]
    fn the_document_is_openapi_3_1_with_its_schemas() {
        let doc: serde_json::Value = serde_json::from_str(super::document()).unwrap();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in [
            "SessionView",
            "SystemView",
            "ErrorBody",
            "Change",
            "ServiceInfo",
            "Enrolled",
        ] {
            assert!(schemas.contains_key(name), "no schema {name}");
        }
        let sessions = &doc["paths"]["/api/v1/sessions"]["get"];
        let params: Vec<_> = sessions["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for p in ["status", "system_id", "sort", "page", "page_size"] {
            assert!(
                params.contains(&p),
                "GET /api/v1/sessions lacks {p}: {params:?}"
            );
        }
        assert!(doc["components"]["securitySchemes"]["console_cookie"].is_object());
    }
}
