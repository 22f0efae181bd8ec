//! How headers change on their way through the proxy, both ways.
//!
//! Pure functions over header maps, so every rule is unit-tested:
//! hop-by-hop headers end at the proxy (RFC 9110 section 7.6.1), the
//! service sees its own `Host` and the proxy's `X-Forwarded-*` (never the
//! client's), no rtunnel cookie (any named `rtunnel_*`, with or without a
//! `__Host-`/`__Secure-` prefix) and no rtunnel credential in
//! `Authorization` reaches the service, the service cannot set a cookie for
//! other hosts or any rtunnel cookie, redirects
//! to the service's own address come back to the proxy host, and every
//! answer carries the security headers of the contract.

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::uri::Authority;

/// The cookie holding a browser's proxy credential on plain http.
pub(crate) const COOKIE_NAME: &str = "rtunnel_proxy";

/// The same on https: the `__Host-` prefix makes browsers refuse it unless
/// it is `Secure`, for `Path=/` and without `Domain`, so no other host (a
/// sibling proxy host, say) can set or shadow it.
pub(crate) const SECURE_COOKIE_NAME: &str = "__Host-rtunnel_proxy";

/// Whether a cookie is one of rtunnel's: never sent to a service, never set
/// by one.
pub(crate) fn is_rtunnel_cookie(name: &str) -> bool {
    let lower = name.trim().to_ascii_lowercase();
    let bare = lower
        .strip_prefix("__host-")
        .or_else(|| lower.strip_prefix("__secure-"))
        .unwrap_or(&lower);
    bare.starts_with("rtunnel_")
}

/// Headers that describe one connection, not the message (RFC 9110 7.6.1,
/// plus the old `Keep-Alive` and `Proxy-Connection`).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request headers a client could use to lie about where it is.
const CLIENT_FORWARDING: [&str; 7] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
];

/// What the proxy says about a request to the service.
#[derive(Debug, Clone)]
pub(crate) struct Forwarding<'a> {
    /// The `Host` the service expects (its `host:port`).
    pub upstream_host: &'a str,
    /// `http`, or `https` for a service the agent reaches over TLS.
    pub upstream_scheme: &'a str,
    /// The proxy host the client used, with its port.
    pub proxy_authority: &'a str,
    /// `http` or `https`, as the client sees the proxy.
    pub scheme: &'a str,
    /// The client's address.
    pub client_ip: std::net::IpAddr,
}

/// The protocol a request asks to switch to (`Upgrade`, with `Connection:
/// upgrade`), if any.
pub(crate) fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Removes the hop-by-hop headers, including those `Connection` names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Rewrites a client's request headers for the service.
pub(crate) fn to_upstream(headers: &mut HeaderMap, fwd: &Forwarding<'_>) {
    let upgrade = upgrade_protocol(headers);
    remove_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    for name in CLIENT_FORWARDING {
        headers.remove(name);
    }
    let set = |headers: &mut HeaderMap, name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    set(headers, "host", fwd.upstream_host);
    set(headers, "x-forwarded-for", &fwd.client_ip.to_string());
    set(headers, "x-forwarded-proto", fwd.scheme);
    set(headers, "x-forwarded-host", fwd.proxy_authority);
    strip_rtunnel_cookies(headers);
    rewrite_own_origin(headers, fwd);
}

/// `Origin` and `Referer` naming the proxy host name the service's own
/// origin instead, so a service that checks same-origin (WebSockets, its
/// API) sees a request consistent with the `Host` it receives. A foreign
/// origin stays as it is: the service's own CSRF checks still see it.
fn rewrite_own_origin(headers: &mut HeaderMap, fwd: &Forwarding<'_>) {
    let public = origin(fwd.scheme, fwd.proxy_authority);
    let upstream = origin(fwd.upstream_scheme, fwd.upstream_host);
    let rewrite = |value: &str| -> Option<String> {
        let (scheme, rest) = value.split_once("://")?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        (origin(scheme, authority) == public).then(|| format!("{upstream}{tail}"))
    };
    for name in [header::ORIGIN, header::REFERER] {
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        if values.is_empty() {
            continue;
        }
        headers.remove(&name);
        for v in values {
            let changed = v
                .to_str()
                .ok()
                .and_then(rewrite)
                .and_then(|s| HeaderValue::from_str(&s).ok());
            headers.append(&name, changed.unwrap_or(v));
        }
    }
}

/// `scheme://host[:port]` lower-cased, without the scheme's default port,
/// as browsers write an `Origin`.
fn origin(scheme: &str, authority: &str) -> String {
    let scheme = scheme.to_ascii_lowercase();
    let authority = authority.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => "",
    };
    let authority = if !default.is_empty() && authority.ends_with(default) {
        &authority[..authority.len() - default.len()]
    } else {
        &authority
    };
    format!("{scheme}://{authority}")
}

/// Removes an `Authorization` header that holds an rtunnel credential (as
/// `is_rtunnel` tells), so a service never sees a token that opens rtunnel.
/// The service's own credentials pass.
pub(crate) fn strip_rtunnel_authorization(
    headers: &mut HeaderMap,
    is_rtunnel: impl Fn(&str) -> bool,
) {
    let ours = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .any(|v| v.to_str().is_ok_and(&is_rtunnel));
    if ours {
        headers.remove(header::AUTHORIZATION);
    }
}

/// Removes rtunnel's cookies from the `Cookie` headers (the service must
/// never see a credential that opens rtunnel).
fn strip_rtunnel_cookies(headers: &mut HeaderMap) {
    let kept: Vec<HeaderValue> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| {
            let Ok(text) = v.to_str() else {
                // Not text: cannot hold our cookie in a form we would read.
                return Some(v.clone());
            };
            let rest: Vec<&str> = text
                .split(';')
                .map(str::trim)
                .filter(|pair| !pair.is_empty() && !is_rtunnel_cookie(cookie_name(pair)))
                .collect();
            (!rest.is_empty())
                .then(|| HeaderValue::from_str(&rest.join("; ")).ok())
                .flatten()
        })
        .collect();
    headers.remove(header::COOKIE);
    for v in kept {
        headers.append(header::COOKIE, v);
    }
}

fn cookie_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(n, _)| n).trim()
}

/// The values of the cookie `name` in a request, in order, skipping pairs
/// that are malformed or empty.
pub(crate) fn request_cookies<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(n, _)| n.trim() == name)
        .map(|(_, value)| value.trim().trim_matches('"'))
        .filter(|value| !value.is_empty())
        .collect()
}

/// Rewrites the service's response headers for the client. `switching`
/// keeps `Connection` and `Upgrade` of a `101 Switching Protocols`.
pub(crate) fn to_client(headers: &mut HeaderMap, fwd: &Forwarding<'_>, switching: bool) {
    let upgrade = switching
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    remove_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    let cookies: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(set_cookie_for_client)
        .collect();
    headers.remove(header::SET_COOKIE);
    for c in cookies {
        headers.append(header::SET_COOKIE, c);
    }
    if let Some(location) = headers.get(header::LOCATION).and_then(|l| l.to_str().ok())
        && let Some(rewritten) = location_for_client(location, fwd)
        && let Ok(v) = HeaderValue::from_str(&rewritten)
    {
        headers.insert(header::LOCATION, v);
    }
    add_security_headers(headers);
}

/// A service's `Set-Cookie` without its `Domain` attribute (so the cookie
/// stays on this proxy host), or nothing if it would set the proxy's own
/// cookie.
fn set_cookie_for_client(value: &HeaderValue) -> Option<HeaderValue> {
    let Ok(text) = value.to_str() else {
        return Some(value.clone());
    };
    let mut parts = text.split(';');
    let pair = parts.next()?.trim();
    if is_rtunnel_cookie(cookie_name(pair)) {
        return None;
    }
    let mut out = pair.to_owned();
    for attr in parts.map(str::trim).filter(|a| !a.is_empty()) {
        if cookie_name(attr).eq_ignore_ascii_case("domain") {
            continue;
        }
        out.push_str("; ");
        out.push_str(attr);
    }
    HeaderValue::from_str(&out).ok()
}

/// A redirect to the service's own address, pointed back at the proxy
/// host; `None` leaves the `Location` as it is (relative, or elsewhere).
fn location_for_client(location: &str, fwd: &Forwarding<'_>) -> Option<String> {
    let (scheme, rest) = location.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let authority: Authority = authority.parse().ok()?;
    let upstream: Authority = fwd.upstream_host.parse().ok()?;
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    };
    let same_host = authority.host().eq_ignore_ascii_case(upstream.host());
    let same_port =
        authority.port_u16().unwrap_or(default_port) == upstream.port_u16().unwrap_or(default_port);
    if !(same_host && same_port) {
        return None;
    }
    let slash = if path.starts_with('/') { "" } else { "/" };
    Some(format!(
        "{}://{}{slash}{path}",
        fwd.scheme, fwd.proxy_authority
    ))
}

/// The headers every answer from a proxy host carries.
pub(crate) fn add_security_headers(headers: &mut HeaderMap) {
    // A second policy is enforced on top of the service's own one.
    headers.append(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'self'"),
    );
    // The service's own policy is kept, ours comes last: browsers apply the
    // last policy they understand, so `no-referrer` holds.
    let ours_last = headers
        .get_all(header::REFERRER_POLICY)
        .iter()
        .next_back()
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no-referrer"));
    if !ours_last {
        headers.append(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fwd() -> Forwarding<'static> {
        Forwarding {
            upstream_host: "127.0.0.1:8081",
            upstream_scheme: "http",
            proxy_authority: "web--0123456789abcdef0123456789abcdef.localhost:8080",
            scheme: "http",
            client_ip: [10, 0, 0, 7].into(),
        }
    }

    #[test]
    fn the_proxys_own_origin_becomes_the_services_a_foreign_one_stays() {
        let own = "http://web--0123456789abcdef0123456789abcdef.localhost:8080";
        let mut h = map(&[
            ("origin", own),
            ("referer", &format!("{own}/app/page?x=1#f")),
        ]);
        to_upstream(&mut h, &fwd());
        assert_eq!(all(&h, "origin"), ["http://127.0.0.1:8081"]);
        assert_eq!(all(&h, "referer"), ["http://127.0.0.1:8081/app/page?x=1#f"]);
        // Case and the default port do not hide the proxy's origin.
        let mut h = map(&[(
            "origin",
            "HTTP://WEB--0123456789ABCDEF0123456789ABCDEF.localhost:8080",
        )]);
        to_upstream(&mut h, &fwd());
        assert_eq!(all(&h, "origin"), ["http://127.0.0.1:8081"]);
        let mut tls = fwd();
        tls.upstream_scheme = "https";
        tls.upstream_host = "10.0.0.5:443";
        tls.scheme = "https";
        tls.proxy_authority = "web--0123456789abcdef0123456789abcdef.proxy.example.com";
        let mut h = map(&[(
            "origin",
            "https://web--0123456789abcdef0123456789abcdef.proxy.example.com:443",
        )]);
        to_upstream(&mut h, &tls);
        assert_eq!(all(&h, "origin"), ["https://10.0.0.5"]);
        // Foreign origins, other schemes, sibling proxy hosts, `null`: as they are.
        for foreign in [
            "http://evil.example",
            "https://web--0123456789abcdef0123456789abcdef.localhost:8080",
            "http://other--0123456789abcdef0123456789abcdef.localhost:8080",
            "http://web--0123456789abcdef0123456789abcdef.localhost:8080.evil.example",
            "null",
        ] {
            let mut h = map(&[("origin", foreign), ("referer", foreign)]);
            to_upstream(&mut h, &fwd());
            assert_eq!(all(&h, "origin"), [foreign]);
            assert_eq!(all(&h, "referer"), [foreign]);
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn all(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn the_service_sees_its_host_and_the_proxys_forwarding_headers_only() {
        let mut h = map(&[
            ("host", "web--x.localhost:8080"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=1.2.3.4;host=evil.example"),
            ("x-real-ip", "1.2.3.4"),
            ("accept", "text/html"),
        ]);
        to_upstream(&mut h, &fwd());
        assert_eq!(all(&h, "host"), ["127.0.0.1:8081"]);
        assert_eq!(all(&h, "x-forwarded-for"), ["10.0.0.7"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["http"]);
        assert_eq!(all(&h, "x-forwarded-host"), [fwd().proxy_authority]);
        assert!(h.get("forwarded").is_none() && h.get("x-real-ip").is_none());
        assert_eq!(all(&h, "accept"), ["text/html"]);
    }

    #[test]
    fn hop_by_hop_headers_end_at_the_proxy() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic abc"),
            ("upgrade", "h2c"),
            ("x-kept", "1"),
        ]);
        to_upstream(&mut h, &fwd());
        for gone in [
            "connection",
            "keep-alive",
            "x-secret",
            "te",
            "proxy-authorization",
            "upgrade",
        ] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        assert_eq!(all(&h, "x-kept"), ["1"]);
    }

    #[test]
    fn a_websocket_upgrade_passes() {
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "abc"),
        ]);
        to_upstream(&mut h, &fwd());
        assert_eq!(all(&h, "connection"), ["upgrade"]);
        assert_eq!(all(&h, "upgrade"), ["websocket"]);
        assert_eq!(all(&h, "sec-websocket-key"), ["abc"]);
        let mut r = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        to_client(&mut r, &fwd(), true);
        assert_eq!(all(&r, "upgrade"), ["websocket"]);
        let mut r = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        to_client(&mut r, &fwd(), false);
        assert!(r.get("upgrade").is_none());
    }

    #[test]
    fn no_rtunnel_cookie_reaches_the_service() {
        let mut h = map(&[
            (
                "cookie",
                "a=1; rtunnel_proxy=TOKEN; b=2; __Host-rtunnel_proxy=S; rtunnel_console=C",
            ),
            (
                "cookie",
                "rtunnel_proxy=OTHER; __Secure-RTUNNEL_x=1; rtunnelish=kept",
            ),
        ]);
        assert_eq!(request_cookies(&h, COOKIE_NAME), ["TOKEN", "OTHER"]);
        assert_eq!(request_cookies(&h, SECURE_COOKIE_NAME), ["S"]);
        to_upstream(&mut h, &fwd());
        assert_eq!(all(&h, "cookie"), ["a=1; b=2", "rtunnelish=kept"]);
        assert!(request_cookies(&h, COOKIE_NAME).is_empty());
    }

    #[test]
    fn malformed_proxy_cookies_are_skipped_not_fatal() {
        let junk = "rtunnel_proxy; rtunnel_proxy=; =x; rtunnel_proxy=\"\"; ".repeat(20);
        let h = map(&[("cookie", &format!("{junk}rtunnel_proxy=REAL"))]);
        assert_eq!(request_cookies(&h, COOKIE_NAME), ["REAL"]);
    }

    #[test]
    fn rtunnel_credentials_in_authorization_are_removed_others_kept() {
        let ours = |v: &str| v.starts_with("Bearer rtk_");
        let mut h = map(&[("authorization", "Bearer rtk_abc.def")]);
        strip_rtunnel_authorization(&mut h, ours);
        assert!(h.get("authorization").is_none());
        let mut h = map(&[("authorization", "Bearer the-apps-own")]);
        strip_rtunnel_authorization(&mut h, ours);
        assert_eq!(all(&h, "authorization"), ["Bearer the-apps-own"]);
    }

    #[test]
    fn service_cookies_lose_their_domain_and_cannot_replace_the_proxys() {
        let mut h = map(&[
            ("set-cookie", "sid=abc; Domain=127.0.0.1; Path=/; HttpOnly"),
            ("set-cookie", "x=1;domain=.localhost;Secure"),
            ("set-cookie", "rtunnel_proxy=forged; Path=/"),
            ("set-cookie", "RTUNNEL_PROXY=forged"),
            ("set-cookie", "__Host-rtunnel_proxy=forged; Secure; Path=/"),
            ("set-cookie", "rtunnel_console=forged"),
        ]);
        to_client(&mut h, &fwd(), false);
        assert_eq!(
            all(&h, "set-cookie"),
            ["sid=abc; Path=/; HttpOnly", "x=1; Secure"]
        );
    }

    #[test]
    fn redirects_to_the_service_come_back_to_the_proxy_host() {
        let proxy = format!("http://{}", fwd().proxy_authority);
        for (location, want) in [
            (
                "http://127.0.0.1:8081/login?next=/",
                format!("{proxy}/login?next=/"),
            ),
            ("http://127.0.0.1:8081", format!("{proxy}/")),
            ("HTTP://127.0.0.1:8081?x", format!("{proxy}/?x")),
            ("/relative", "/relative".to_owned()),
            (
                "https://elsewhere.example/x",
                "https://elsewhere.example/x".to_owned(),
            ),
            (
                "http://127.0.0.1:9999/x",
                "http://127.0.0.1:9999/x".to_owned(),
            ),
        ] {
            let mut h = map(&[("location", location)]);
            to_client(&mut h, &fwd(), false);
            assert_eq!(all(&h, "location"), [want], "{location}");
        }
    }

    #[test]
    fn every_answer_carries_the_security_headers() {
        let mut h = map(&[
            ("content-security-policy", "default-src 'self'"),
            ("referrer-policy", "unsafe-url"),
        ]);
        to_client(&mut h, &fwd(), false);
        assert_eq!(
            all(&h, "content-security-policy"),
            ["default-src 'self'", "frame-ancestors 'self'"]
        );
        // The service's own headers are kept; ours decide where both speak.
        assert_eq!(all(&h, "referrer-policy"), ["unsafe-url", "no-referrer"]);
        assert_eq!(all(&h, "x-content-type-options"), ["nosniff"]);
        let mut h = map(&[
            ("strict-transport-security", "max-age=600"),
            ("x-frame-options", "DENY"),
            ("permissions-policy", "camera=()"),
        ]);
        to_client(&mut h, &fwd(), false);
        assert_eq!(all(&h, "strict-transport-security"), ["max-age=600"]);
        assert_eq!(all(&h, "x-frame-options"), ["DENY"]);
        assert_eq!(all(&h, "permissions-policy"), ["camera=()"]);
        assert_eq!(all(&h, "referrer-policy"), ["no-referrer"]);
    }
}
