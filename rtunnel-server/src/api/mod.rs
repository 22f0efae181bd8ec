//! The HTTP surface: routes, and the read-only operator API.

mod audit;
pub(crate) mod auth;
pub(crate) mod browser;
pub(crate) mod extract;
mod grants;
mod launch;
pub(crate) mod login;
mod openapi;
mod recordings;
mod resources;
pub(crate) mod sessions;
mod systems;
mod tokens;
mod users;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, patch, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::routing::Tunnels;
use crate::state::{AppState, Stores};
use crate::{forward, terminal, tunnel};
use rtunnel_core::store::{MAX_PAGE_SIZE, Page};

/// Every route of the server.
/// The whole router as the server serves it: [`routes`] with the JSON
/// fallbacks, under the configured path prefix, inside [`outer_layers`].
pub(crate) fn router(state: Arc<AppState>) -> Router {
    // A browser pointed at the server lands on the console, not on a JSON
    // error (temporary: the root may serve something else one day). Not
    // part of the API, so not in its table or its OpenAPI document.
    let console_home = format!("{}/console/", state.config.path_prefix);
    let to_console = get(move || async move { axum::response::Redirect::temporary(&console_home) });
    let routes = routes(state.clone())
        .route("/", to_console.clone())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    let app = match state.config.path_prefix.as_str() {
        "" => routes,
        // The nested `/` answers the prefix alone; its slashed form too.
        prefix => Router::new()
            .route(&format!("{prefix}/"), to_console)
            .nest(prefix, routes)
            .fallback(not_found),
    };
    outer_layers(app, state)
}

/// The server's outer layers around `app` (the whole router of whoever
/// serves it): a request for a proxy host goes to the subdomain proxy and
/// never reaches `app`; the client's address is resolved (from a trusted
/// reverse proxy's headers) before anything reads it.
pub(crate) fn outer_layers(app: Router, state: Arc<AppState>) -> Router {
    app
        // Outermost: a proxy host never reaches the API routes.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::proxy::dispatch,
        ))
        // Before anything reads the peer's address.
        .layer(axum::middleware::from_fn_with_state(
            state,
            crate::client_addr::resolve_client,
        ))
}

/// Every route (health, tunnel, API, console) with its state and body
/// limit, and no fallback: it can be nested under any prefix or merged.
pub(crate) fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/openapi.json", get(openapi::openapi_json))
        .route("/api/v1/tunnel", get(tunnel::tunnel_endpoint))
        .route("/api/v1/auth/login", post(login::login))
        .route("/api/v1/auth/refresh", post(login::refresh))
        .route("/api/v1/auth/logout", post(login::logout))
        .route("/api/v1/auth/me", get(login::me))
        .route("/api/v1/systems", get(systems::list).post(systems::create))
        .route(
            "/api/v1/systems/{id}",
            get(systems::show)
                .patch(systems::rename)
                .delete(systems::delete),
        )
        .route("/api/v1/users", get(users::list).post(users::create))
        .route("/api/v1/users/{id}", get(users::show).patch(users::update))
        .route(
            "/api/v1/systems/{id}/regenerate-secret",
            post(systems::regenerate_secret),
        )
        .route("/api/v1/sessions", get(sessions::list))
        .route(
            "/api/v1/sessions/{id}",
            get(sessions::show).delete(sessions::close),
        )
        .route("/api/v1/sessions/{id}/extend", patch(sessions::extend))
        .route("/api/v1/sessions/{id}/logs", get(sessions::logs))
        .route("/api/v1/sessions/{id}/services", get(sessions::services))
        .route(
            "/api/v1/sessions/{id}/forward",
            get(forward::forward_endpoint),
        )
        .route(
            "/api/v1/systems/{id}/forward",
            get(forward::system_forward_endpoint),
        )
        .route(
            "/api/v1/sessions/{id}/terminal-ticket",
            post(sessions::terminal_ticket),
        )
        .route(
            "/api/v1/sessions/{id}/terminal",
            get(terminal::terminal_endpoint),
        )
        .route(
            "/api/v1/systems/{id}/terminal",
            get(terminal::system_terminal_endpoint),
        )
        .route(
            "/api/v1/sessions/{id}/terminals",
            get(terminal::list_terminals),
        )
        .route(
            "/api/v1/sessions/{id}/proxy-token",
            post(sessions::proxy_token),
        )
        .route("/api/v1/sessions/{id}/recordings", get(recordings::list))
        .route("/api/v1/recordings/{id}", get(recordings::download))
        .route("/api/v1/launch", post(launch::launch))
        .route(
            "/api/v1/resources",
            get(resources::list).post(resources::create),
        )
        .route(
            "/api/v1/resources/{id}",
            get(resources::show)
                .put(resources::update)
                .delete(resources::delete),
        )
        .route("/api/v1/audit", get(audit::list))
        .route("/api/v1/events", get(crate::events::stream))
        .route("/api/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/api/v1/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route(
            "/api/v1/grants",
            get(grants::list)
                .post(grants::create)
                .delete(grants::revoke),
        )
        .merge(crate::console::routes())
        .layer(axum::extract::DefaultBodyLimit::max(
            extract::MAX_JSON_BODY_BYTES,
        ))
        .with_state(state)
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "The process answers", body = serde_json::Value), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the database answers; otherwise 503 `database_unavailable`
/// (tunnels and open connections keep flowing meanwhile).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses((status = 200, description = "The database (and Redis, in a cluster) answer", body = serde_json::Value), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
async fn readyz(
    State(stores): State<Stores>,
    State(tunnels): State<Tunnels>,
) -> Result<Json<Value>, ApiError> {
    if let Err(e) = stores.sessions.ping().await {
        tracing::warn!(error = %e, "readiness: the database does not answer");
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "not ready: the database does not answer",
        ));
    }
    if let Err(e) = tunnels.cluster.ping().await {
        tracing::warn!(error = %e, "readiness: Redis does not answer");
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "redis_unavailable",
            "not ready: Redis does not answer",
        ));
    }
    let redis = if tunnels.cluster.is_shared() {
        "ok"
    } else {
        "none"
    };
    Ok(Json(
        json!({"status": "ready", "database": "ok", "redis": redis, "node": tunnels.cluster.node_id(), "version": env!("CARGO_PKG_VERSION")}),
    ))
}

async fn not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// `page` and `page_size` of a list request.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    page: Option<u32>,
    page_size: Option<u32>,
}

impl PageQuery {
    /// Checks the bounds of the contract.
    pub(crate) fn page(&self) -> Result<Page, ApiError> {
        check_page(self.page, self.page_size)
    }
}

/// Checks `page` (from 1) and `page_size` (1 to 500, default 50).
pub(crate) fn check_page(page: Option<u32>, page_size: Option<u32>) -> Result<Page, ApiError> {
    let page = page.unwrap_or(1);
    let page_size = page_size.unwrap_or(50);
    if page == 0 || page_size == 0 || page_size > MAX_PAGE_SIZE {
        return Err(ApiError::bad_request(
            "invalid_pagination",
            format!("page starts at 1 and page_size is between 1 and {MAX_PAGE_SIZE}"),
        ));
    }
    Ok(Page { page, page_size })
}

/// Parses a path id, answering 404 for anything that is not a UUID.
/// An id from a path (a [`uuid::Uuid`] or one of the typed ids); 404 `what`
/// when it is not a UUID.
pub(crate) fn parse_id<T: From<uuid::Uuid>>(raw: &str, what: &'static str) -> Result<T, ApiError> {
    uuid::Uuid::parse_str(raw)
        .map(T::from)
        .map_err(|_| ApiError::not_found(what, "no such id"))
}
