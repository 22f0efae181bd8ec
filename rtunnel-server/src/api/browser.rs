//! The console's credential: cookies a browser holds instead of tokens
//! a script could read.
//!
//! A console login (`POST /api/v1/auth/login` with `"cookie": true`) sets
//! three cookies, all `SameSite=Strict`, host-only (no `Domain`, so no proxy
//! host ever sees them) and, when the public URL is `https`, `Secure` and
//! named with the `__Host-` prefix (see [`CookieNames`]):
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
//! a browser: an `Origin` header must be this server's, scheme included
//! (the public URL's origin, or the requested host under the public URL's
//! scheme: a page on `http://` cannot act on the `https://` console), so a
//! WebSocket or event stream opened from another site is refused even where
//! the cookie would travel; a WebSocket upgrade must carry one; the forward
//! endpoint, which only `rtunnel-agent forward` uses, takes no cookie at
//! all; and a method other than
//! `GET`/`HEAD` must carry the CSRF header equal to the cookie (compared in
//! constant time). Refusals answer 403 `cross_site_request` or
//! `csrf_token_mismatch`.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::error::ApiError;
use crate::proxy::headers::request_cookies;

/// The header the page sends the CSRF value back in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// Longest cookie value looked at.
const MAX_COOKIE_LEN: usize = 2048;

/// The console cookies' names. Over HTTPS at the root they carry the
/// `__Host-` prefix (the refresh cookie, scoped to a path, `__Secure-`): a
/// browser then takes them only from this very host, over HTTPS, without a
/// `Domain`, so a page on a sibling host (a proxied app) can neither set nor
/// shadow them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CookieNames {
    pub access: &'static str,
    pub refresh: &'static str,
    pub csrf: &'static str,
}

const PLAIN: CookieNames = CookieNames {
    access: "rtunnel_access",
    refresh: "rtunnel_refresh",
    csrf: "rtunnel_csrf",
};

const HOST_BOUND: CookieNames = CookieNames {
    access: "__Host-rtunnel_access",
    refresh: "__Secure-rtunnel_refresh",
    csrf: "__Host-rtunnel_csrf",
};

/// How the console's cookies are set and which requests may use them.
#[derive(Debug, Clone)]
pub(crate) struct BrowserPolicy {
    /// The path prefix rtunnel is served under (`""` or `/support`).
    prefix: String,
    /// Whether the console is reached over HTTPS.
    secure: bool,
    /// The public URL's scheme (`http` or `https`), lowercase.
    scheme: String,
    /// The public URL's origin (`https://rt.example.com`), lowercase.
    origin: String,
}

impl BrowserPolicy {
    pub(crate) fn of(config: &crate::config::ServerConfig) -> Self {
        let (scheme, origin) = match url::Url::parse(&config.public_url) {
            Ok(u) => (
                u.scheme().to_ascii_lowercase(),
                u.origin().ascii_serialization().to_ascii_lowercase(),
            ),
            Err(_) => ("http".into(), String::new()),
        };
        BrowserPolicy {
            prefix: config.path_prefix.clone(),
            secure: scheme == "https",
            scheme,
            origin,
        }
    }

    /// The cookies' names under this policy.
    pub(crate) fn names(&self) -> CookieNames {
        if self.secure && self.prefix.is_empty() {
            HOST_BOUND
        } else {
            PLAIN
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
        let n = self.names();
        let csrf = rtunnel_auth::secret::generate_hex(16);
        [
            self.cookie(n.access, access, "/", access_ttl, true),
            self.cookie(n.refresh, refresh, "/api/v1/auth/", refresh_ttl, true),
            self.cookie(n.csrf, &csrf, "/", refresh_ttl, false),
        ]
        .iter()
        .filter_map(|c| HeaderValue::from_str(c).ok())
        .collect()
    }

    /// Cookies that remove the console's (at logout).
    pub(crate) fn cleared(&self) -> Vec<HeaderValue> {
        let n = self.names();
        [
            self.cookie(n.access, "", "/", 0, true),
            self.cookie(n.refresh, "", "/api/v1/auth/", 0, true),
            self.cookie(n.csrf, "", "/", 0, false),
        ]
        .iter()
        .filter_map(|c| HeaderValue::from_str(c).ok())
        .collect()
    }

    /// The access token in the request's cookie, if it carries one.
    pub(crate) fn access_token<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        cookie(headers, self.names().access)
    }

    /// The refresh token in the request's cookie, if it carries one.
    pub(crate) fn refresh_token<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        cookie(headers, self.names().refresh)
    }

    /// Whether `origin` is this server's: the public URL's origin, or the
    /// host the request was sent to under the public URL's scheme (a
    /// server reached under another name); never another scheme.
    fn same_origin(&self, origin: &str, host: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        if !self.origin.is_empty() && origin == self.origin {
            return true;
        }
        !host.is_empty() && origin == format!("{}://{}", self.scheme, host.to_ascii_lowercase())
    }

    /// Checks a request that authenticates with the console's cookie (see
    /// the module documentation).
    pub(crate) fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let upgrade = headers.contains_key(header::UPGRADE);
        match headers.get(header::ORIGIN).map(|o| o.to_str()) {
            Some(Ok(origin)) if self.same_origin(origin, host) => {}
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
        let expected = cookie(headers, self.names().csrf)
            .unwrap_or_default()
            .as_bytes();
        if expected.is_empty() || !rtunnel_auth::secret::constant_time_eq(sent, expected) {
            return Err(forbidden(
                "csrf_token_mismatch",
                "missing or wrong X-CSRF-Token header; reload the console",
            ));
        }
        Ok(())
    }
}

/// The one value of cookie `name`, if the request carries exactly one
/// (two of the same name cannot be told apart: neither is used).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    match request_cookies(headers, name).as_slice() {
        [one] if one.len() <= MAX_COOKIE_LEN => Some(one),
        _ => None,
    }
}

fn forbidden(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(public_url: &str, prefix: &str) -> BrowserPolicy {
        BrowserPolicy::of(&crate::config::ServerConfig {
            public_url: public_url.into(),
            path_prefix: prefix.into(),
            ..Default::default()
        })
    }

    fn check(p: &BrowserPolicy, method: &str, headers: &[(&str, &str)]) -> &'static str {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        p.check(&method, &h).err().map_or("ok", |e| e.code)
    }

    #[test]
    fn cookie_requests_from_this_server_pass_and_others_are_refused() {
        let p = policy("https://rt.example:8443", "");
        let jar = "__Host-rtunnel_access=A; __Host-rtunnel_csrf=C1";
        let host = ("host", "rt.example:8443");
        assert_eq!(check(&p, "GET", &[host, ("cookie", jar)]), "ok");
        let same = [
            host,
            ("origin", "https://rt.example:8443"),
            ("cookie", jar),
            ("x-csrf-token", "C1"),
        ];
        assert_eq!(check(&p, "POST", &same), "ok");
        // Another scheme on the same host is another origin.
        let http = [
            host,
            ("origin", "http://rt.example:8443"),
            ("cookie", jar),
            ("x-csrf-token", "C1"),
        ];
        assert_eq!(check(&p, "POST", &http), "cross_site_request");
        for origin in [
            "https://evil.example",
            "null",
            "https://rt.example:8443.evil.example",
        ] {
            let h = [
                host,
                ("origin", origin),
                ("cookie", jar),
                ("x-csrf-token", "C1"),
            ];
            assert_eq!(check(&p, "POST", &h), "cross_site_request", "{origin}");
        }
        // A WebSocket must say where it comes from.
        let ws = [host, ("upgrade", "websocket"), ("cookie", jar)];
        assert_eq!(check(&p, "GET", &ws), "cross_site_request");
        for bad in ["", "C2", "C1x"] {
            let h = [host, ("cookie", jar), ("x-csrf-token", bad)];
            assert_eq!(check(&p, "DELETE", &h), "csrf_token_mismatch", "{bad:?}");
        }
        // The plain name is not the cookie over HTTPS: nothing to compare with.
        let plain = [host, ("cookie", "rtunnel_csrf=C1"), ("x-csrf-token", "C1")];
        assert_eq!(check(&p, "POST", &plain), "csrf_token_mismatch");
        // Reached under another name, the requested host counts.
        let p = policy("http://127.0.0.1:8080", "");
        let other = [
            ("host", "localhost:8080"),
            ("origin", "http://localhost:8080"),
            ("cookie", "rtunnel_csrf=C"),
            ("x-csrf-token", "C"),
        ];
        assert_eq!(check(&p, "POST", &other), "ok");
    }

    #[test]
    fn cookies_are_strict_host_only_and_host_bound_over_https() {
        let set = |p: &BrowserPolicy| -> Vec<String> {
            p.login("ACC", 900, "REF", 86400)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect()
        };
        let https = set(&policy("HTTPS://rt.example", ""));
        assert!(
            https[0].starts_with(
                "__Host-rtunnel_access=ACC; Path=/; Max-Age=900; SameSite=Strict; HttpOnly; Secure"
            ),
            "{}",
            https[0]
        );
        assert!(
            https[1].starts_with("__Secure-rtunnel_refresh=REF; Path=/api/v1/auth/"),
            "{}",
            https[1]
        );
        assert!(https[2].starts_with("__Host-rtunnel_csrf="), "{}", https[2]);
        assert!(
            !https[2].contains("HttpOnly"),
            "the page reads the CSRF value"
        );
        // Under a prefix the cookies need a path: no __Host- then.
        let prefixed = set(&policy("https://rt.example", "/support"));
        assert!(
            prefixed[0].starts_with("rtunnel_access=ACC; Path=/support/;"),
            "{}",
            prefixed[0]
        );
        assert!(
            prefixed[1].contains("Path=/support/api/v1/auth/"),
            "{}",
            prefixed[1]
        );
        assert!(prefixed.iter().all(|c| c.contains("Secure")));
        let http = set(&policy("http://127.0.0.1:8080", ""));
        assert!(
            http.iter()
                .all(|c| !c.contains("Secure") && !c.contains("Domain"))
        );
    }

    #[test]
    fn two_cookies_of_one_name_count_as_none() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("rtunnel_access=A; rtunnel_access=B"),
        );
        assert_eq!(policy("http://x", "").access_token(&h), None);
    }
}
