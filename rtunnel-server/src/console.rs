//! The operator console the server serves itself: the console at
//! `/console/` (a single page over the public API: sessions, systems,
//! terminals in tabs, recordings, API tokens, and for admins users, grants,
//! launcher resources and the audit log) and the stand-alone browser
//! terminal, `/console/terminal?session=ID`.
//!
//! Everything the pages need is built into the binary: their own scripts
//! and styles, xterm.js with its fit addon and asciinema-player, vendored
//! from the npm registry by `scripts/vendor-console.sh` (versions, licenses
//! and checksums in `assets/vendor/VERSIONS`). Nothing is loaded from
//! elsewhere, no script is inline, and the pages' Content-Security-Policy
//! says so.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::ApiError;

/// The terminal page's policy: scripts and connections only from this
/// origin, no framing. xterm.js adds `<style>` elements for its renderer,
/// hence inline styles (not scripts).
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     connect-src 'self'; img-src 'self' data:; font-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The console's policy: the terminal page's, plus WebAssembly for
/// asciinema-player's terminal emulator (`'wasm-unsafe-eval'` compiles
/// WebAssembly; it allows no JavaScript `eval`).
const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; \
     font-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const TERMINAL_HTML: &str = include_str!("../assets/console/terminal.html");
const CONSOLE_HTML: &str = include_str!("../assets/console/index.html");

/// One built-in file.
struct Asset {
    name: &'static str,
    body: &'static [u8],
    content_type: &'static str,
    /// Vendored files change only with a new rtunnel version.
    vendored: bool,
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const ASSETS: [Asset; 9] = [
    Asset {
        name: "app.js",
        body: include_bytes!("../assets/console/app.js"),
        content_type: JS,
        vendored: false,
    },
    Asset {
        name: "app.css",
        body: include_bytes!("../assets/console/app.css"),
        content_type: CSS,
        vendored: false,
    },
    Asset {
        name: "asciinema-player.js",
        body: include_bytes!("../assets/vendor/asciinema-player.js"),
        content_type: JS,
        vendored: true,
    },
    Asset {
        name: "asciinema-player.css",
        body: include_bytes!("../assets/vendor/asciinema-player.css"),
        content_type: CSS,
        vendored: true,
    },
    Asset {
        name: "terminal.js",
        body: include_bytes!("../assets/console/terminal.js"),
        content_type: JS,
        vendored: false,
    },
    Asset {
        name: "console.css",
        body: include_bytes!("../assets/console/console.css"),
        content_type: CSS,
        vendored: false,
    },
    Asset {
        name: "xterm.js",
        body: include_bytes!("../assets/vendor/xterm.js"),
        content_type: JS,
        vendored: true,
    },
    Asset {
        name: "xterm.css",
        body: include_bytes!("../assets/vendor/xterm.css"),
        content_type: CSS,
        vendored: true,
    },
    Asset {
        name: "addon-fit.js",
        body: include_bytes!("../assets/vendor/addon-fit.js"),
        content_type: JS,
        vendored: true,
    },
];

/// The console's routes (no state: the pages talk to the API themselves).
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/console", get(to_console))
        .route("/console/", get(console_page))
        .route("/console/terminal", get(terminal_page))
        .route("/console/assets/{name}", get(asset))
}

fn with_common_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// `/console` is the console's directory: its relative paths need the
/// slash.
async fn to_console() -> Response {
    let mut resp = axum::http::StatusCode::PERMANENT_REDIRECT.into_response();
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("console/"));
    resp
}

async fn console_page() -> Response {
    page(CONSOLE_HTML, CONSOLE_CSP)
}

async fn terminal_page() -> Response {
    page(TERMINAL_HTML, PAGE_CSP)
}

fn page(html: &'static str, csp: &'static str) -> Response {
    let mut resp = with_common_headers(axum::response::Html(html).into_response());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    let asset = ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| ApiError::not_found("asset_not_found", "no such console file"))?;
    let cache = if asset.vendored {
        "public, max-age=86400"
    } else {
        "no-cache"
    };
    let mut resp = with_common_headers(asset.body.into_response());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    Ok(resp)
}
