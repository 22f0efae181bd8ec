//! The console's credential: cookies a browser holds instead of tokens
//! a script could read.
//!
//! A console login (`POST /api/v1/auth/login` with `"cookie": true`) sets
//! three cookies, all `SameSite=Strict`, host-only (no `Domain`, so no proxy
//! host ever sees them) and `Secure` when the public URL is `https`:
//!
//! - `rtunnel_access`: the access token, `HttpOnly`, for every API path, as
//!   long as the token lasts (15 minutes);
//! - `rtunnel_refresh`: the refresh token, `HttpOnly`, sent only to
//!   `/api/v1/auth/`; `POST /api/v1/auth/refresh` without a body token
//!   rotates both (a refresh token replayed ends the login, as for any
//!   client);
//! - `rtunnel_csrf`: a random value the page reads and sends back as
//!   `X-CSRF-Token` on every request that changes something (double submit).
//!
//! A request that authenticates with the cookie is checked as coming from
//! a browser: an `Origin` header must name this very host (a WebSocket or
//! event stream opened from another site is refused even where the cookie
//! would travel), a WebSocket upgrade must carry one, and a method other than
//! `GET`/`HEAD` must carry the CSRF header equal to the cookie (compared in
//! constant time). Refusals answer 403 `cross_site_request` or
//! `csrf_token_mismatch`.

use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::error::ApiError;
use crate::proxy::headers::request_cookies;

/// The access token's cookie.
pub(crate) const ACCESS_COOKIE: &str = "rtunnel_access";
/// The refresh token's cookie.
pub(crate) const REFRESH_COOKIE: &str = "rtunnel_refresh";
/// The CSRF cookie (readable by the page).
pub(crate) const CSRF_COOKIE: &str = "rtunnel_csrf";
/// The header the page sends the CSRF value back in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// Longest cookie value looked at.
const MAX_COOKIE_LEN: usize = 2048;

/// Where and how the console's cookies are set.
#[derive(Debug, Clone)]
pub(crate) struct CookieScope {
    /// The path prefix rtunnel is served under (`""` or `/support`).
    pub prefix: String,
    /// Whether the console is reached over HTTPS.
    pub secure: bool,
}

impl CookieScope {
    pub(crate) fn of(config: &crate::config::ServerConfig) -> Self {
        CookieScope {
            prefix: config.path_prefix.clone(),
            secure: config.public_url.starts_with("https://"),
        }
    }

    fn cookie(&self, name: &str, value: &str, path: &str, max_age: u64, http_only: bool) -> String {
        let mut c = format!(
            "{name}={value}; Path={}{path}; Max-Age={max_age}; SameSite=Strict",
            self.prefix
        );
        if http_only {
            c.push_str("; HttpOnly");
        }
        if self.secure {
            c.push_str("; Secure");
        }
        c
    }

    /// The three cookies of a console login (or of its rotation).
    pub(crate) fn login(
        &self,
        access: &str,
        access_ttl: u64,
        refresh: &str,
        refresh_ttl: u64,
    ) -> Vec<HeaderValue> {
        let csrf = rtunnel_auth::secret::generate_hex(16);
        [
            self.cookie(ACCESS_COOKIE, access, "/", access_ttl, true),
            self.cookie(REFRESH_COOKIE, refresh, "/api/v1/auth/", refresh_ttl, true),
            self.cookie(CSRF_COOKIE, &csrf, "/", refresh_ttl, false),
        ]
        .iter()
        .filter_map(|c| HeaderValue::from_str(c).ok())
        .collect()
    }

    /// Cookies that remove the console's (at logout, or when its refresh
    /// fails).
    pub(crate) fn cleared(&self) -> Vec<HeaderValue> {
        [
            self.cookie(ACCESS_COOKIE, "", "/", 0, true),
            self.cookie(REFRESH_COOKIE, "", "/api/v1/auth/", 0, true),
            self.cookie(CSRF_COOKIE, "", "/", 0, false),
        ]
        .iter()
        .filter_map(|c| HeaderValue::from_str(c).ok())
        .collect()
    }
}

/// The one value of cookie `name`, if the request carries exactly one
/// (two of the same name cannot be told apart: neither is used).
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    match request_cookies(headers, name).as_slice() {
        [one] if one.len() <= MAX_COOKIE_LEN => Some(one),
        _ => None,
    }
}

fn forbidden(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message.to_owned())
}

/// Whether `origin` (`scheme://host[:port]`) names the host the request
/// was sent to.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((_, rest)) = origin.split_once("://") else {
        return false;
    };
    !host.is_empty() && rest.eq_ignore_ascii_case(host)
}

/// Checks a request that authenticates with the console's cookie (see the
/// module documentation).
pub(crate) fn check_browser_request(parts: &Parts) -> Result<(), ApiError> {
    check_browser(&parts.method, &parts.headers)
}

/// [`check_browser_request`] on a request's method and headers.
pub(crate) fn check_browser(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let upgrade = headers.contains_key(header::UPGRADE);
    match headers.get(header::ORIGIN).map(|o| o.to_str()) {
        Some(Ok(origin)) if same_origin(origin, host) => {}
        None if !upgrade => {}
        _ => {
            return Err(forbidden(
                "cross_site_request",
                "this request comes from another site; the console's sign-in only works from the console",
            ));
        }
    }
    if method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    let sent = headers
        .get(CSRF_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let expected = cookie(headers, CSRF_COOKIE).unwrap_or_default().as_bytes();
    if expected.is_empty() || !rtunnel_auth::secret::constant_time_eq(sent, expected) {
        return Err(forbidden(
            "csrf_token_mismatch",
            "missing or wrong X-CSRF-Token header; reload the console",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri("/api/v1/x");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn code(r: Result<(), ApiError>) -> &'static str {
        r.err().map_or("ok", |e| e.code)
    }

    #[test]
    fn cookie_requests_from_this_host_pass_and_others_are_refused() {
        let csrf = "rtunnel_access=A; rtunnel_csrf=C1";
        let ok = [("host", "rt.example:8080"), ("cookie", csrf)];
        assert_eq!(code(check_browser_request(&parts("GET", &ok))), "ok");
        let same = [
            ("host", "rt.example:8080"),
            ("origin", "https://rt.example:8080"),
            ("cookie", csrf),
            ("x-csrf-token", "C1"),
        ];
        assert_eq!(code(check_browser_request(&parts("POST", &same))), "ok");
        let other = [
            ("host", "rt.example:8080"),
            ("origin", "https://evil.example"),
            ("cookie", csrf),
            ("x-csrf-token", "C1"),
        ];
        assert_eq!(
            code(check_browser_request(&parts("POST", &other))),
            "cross_site_request"
        );
        // A WebSocket must say where it comes from.
        let ws = [
            ("host", "rt.example"),
            ("upgrade", "websocket"),
            ("cookie", csrf),
        ];
        assert_eq!(
            code(check_browser_request(&parts("GET", &ws))),
            "cross_site_request"
        );
        for bad in ["", "C2", "C1x"] {
            let h = [
                ("host", "rt.example"),
                ("cookie", csrf),
                ("x-csrf-token", bad),
            ];
            assert_eq!(
                code(check_browser_request(&parts("DELETE", &h))),
                "csrf_token_mismatch",
                "{bad:?}"
            );
        }
        // No CSRF cookie: nothing to compare with.
        let h = [
            ("host", "rt.example"),
            ("cookie", "rtunnel_access=A"),
            ("x-csrf-token", ""),
        ];
        assert_eq!(
            code(check_browser_request(&parts("POST", &h))),
            "csrf_token_mismatch"
        );
    }

    #[test]
    fn cookies_are_strict_host_only_and_secure_over_https() {
        let scope = CookieScope {
            prefix: "/support".into(),
            secure: true,
        };
        let set: Vec<String> = scope
            .login("ACC", 900, "REF", 86400)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert!(
            set[0].starts_with(
                "rtunnel_access=ACC; Path=/support/; Max-Age=900; SameSite=Strict; HttpOnly; Secure"
            ),
            "{}",
            set[0]
        );
        assert!(set[1].contains("Path=/support/api/v1/auth/"), "{}", set[1]);
        assert!(set[1].contains("HttpOnly"));
        assert!(
            !set[2].contains("HttpOnly"),
            "the page reads the CSRF value"
        );
        assert!(set.iter().all(|c| !c.contains("Domain")));
    }

    #[test]
    fn two_cookies_of_one_name_count_as_none() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("rtunnel_access=A; rtunnel_access=B"),
        );
        assert_eq!(cookie(&h, ACCESS_COOKIE), None);
    }
}
