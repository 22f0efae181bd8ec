//! The operator console pages the server serves itself: for now the
//! browser terminal, `/console/terminal?session=ID`.
//!
//! Everything the page needs is built into the binary: its own script and
//! style, and xterm.js with its fit addon, vendored from the npm registry by
//! `scripts/vendor-xterm.sh` (versions and checksums in
//! `assets/vendor/VERSIONS`). Nothing is loaded from elsewhere, and the
//! page's Content-Security-Policy says so.

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

const TERMINAL_HTML: &str = include_str!("../assets/console/terminal.html");

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

const ASSETS: [Asset; 5] = [
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

async fn terminal_page() -> Response {
    let mut resp = with_common_headers(axum::response::Html(TERMINAL_HTML).into_response());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
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
