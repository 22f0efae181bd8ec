//! The properties the server's fuzz targets check (`proxy_host`,
//! `proxy_headers`, `launcher_urls`), shared with the corpus replay tests
//! so both run the same code. Not part of the API.
#![doc(hidden)]
#![allow(missing_docs)]

use axum::http::Uri;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::launcher::{ConnectionType, Fallbacks, session_url, validate_host, validate_metadata};
use crate::proxy::headers::{self, Forwarding, is_rtunnel_cookie};
use crate::proxy::host::{self, Routed};

/// Splits fuzz input into lines (at most `max`).
fn lines(data: &[u8], max: usize) -> Vec<&str> {
    std::str::from_utf8(data)
        .map(|s| s.split('\n').take(max).collect())
        .unwrap_or_default()
}

/// `Host` headers and a request target, routed: never a panic; a proxy
/// target always has a valid service, a session, and an authority that
/// names the proxy domain; more than one `Host` is never a proxy request.
pub fn check_proxy_host(data: &[u8]) {
    let lines = lines(data, 8);
    let Some((domain, rest)) = lines.split_first() else {
        return;
    };
    let domain = if domain.is_empty() {
        "localhost"
    } else {
        domain
    };
    let uri: Uri = rest
        .first()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| Uri::from_static("/"));
    let mut headers = HeaderMap::new();
    for host in rest.iter().skip(1) {
        if let Ok(v) = HeaderValue::from_str(host) {
            headers.append(header::HOST, v);
        }
    }
    let routed = host::route(&headers, &uri, domain);
    if let Routed::Proxy(target) = &routed {
        assert!(rtunnel_core::proto::validate_service_name(&target.service).is_ok());
        assert_eq!(target.authority, target.authority.to_ascii_lowercase());
        assert!(target.authority.contains(&domain.to_ascii_lowercase()));
        assert!(headers.get_all(header::HOST).iter().count() <= 1);
        // What parses, parses again to the same.
        assert_eq!(
            host::parse(&target.authority, domain).as_ref(),
            Some(target)
        );
    }
    if let Some(first) = rest.get(1) {
        let _ = host::parse(first, domain);
    }
}

/// Header maps from `name: value` lines, rewritten both ways: never a
/// panic; no rtunnel cookie reaches a service or comes from one; no
/// `Domain` on a service's cookie; no hop-by-hop header passes (but the
/// upgrade of a WebSocket); the client's forwarding headers never pass.
pub fn check_proxy_headers(data: &[u8]) {
    let mut map = HeaderMap::new();
    for line in lines(data, 64) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    let fwd = Forwarding {
        upstream_host: "127.0.0.1:8081",
        upstream_scheme: "http",
        proxy_authority: "web--0123456789abcdef0123456789abcdef.localhost:8080",
        scheme: "https",
        client_ip: [10, 0, 0, 7].into(),
    };
    let _ = headers::request_cookies(&map, headers::COOKIE_NAME);
    let mut up = map.clone();
    headers::to_upstream(&mut up, &fwd);
    headers::strip_rtunnel_authorization(&mut up, |v| v.contains("rtk_"));
    for cookie in up.get_all(header::COOKIE) {
        if let Ok(text) = cookie.to_str() {
            for pair in text.split(';') {
                let name = pair.split_once('=').map_or(pair, |(n, _)| n);
                assert!(!is_rtunnel_cookie(name), "{text}");
            }
        }
    }
    // The proxy's own origin never reaches the service as such.
    for origin in up.get_all(header::ORIGIN) {
        if let Ok(o) = origin.to_str() {
            assert!(
                !o.eq_ignore_ascii_case(&format!("https://{}", fwd.proxy_authority)),
                "{o}"
            );
        }
    }
    for auth in up.get_all(header::AUTHORIZATION) {
        assert!(!auth.to_str().is_ok_and(|a| a.contains("rtk_")));
    }
    for gone in [
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "forwarded",
        "x-real-ip",
    ] {
        assert!(up.get(gone).is_none(), "{gone} passed");
    }
    assert_eq!(
        up.get_all("x-forwarded-for").iter().count(),
        1,
        "exactly the proxy's X-Forwarded-For"
    );
    let mut down = map;
    headers::to_client(&mut down, &fwd, false);
    for cookie in down.get_all(header::SET_COOKIE) {
        let Ok(text) = cookie.to_str() else { continue };
        let mut parts = text.split(';');
        let pair = parts.next().unwrap_or_default();
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        assert!(!is_rtunnel_cookie(name), "{text}");
        for attr in parts {
            let key = attr.split_once('=').map_or(attr, |(k, _)| k);
            assert!(!key.trim().eq_ignore_ascii_case("domain"), "{text}");
        }
    }
    assert!(down.get(header::UPGRADE).is_none());
}

/// Resource metadata and an address launched every way: never a panic,
/// and a URL that leaves is `http(s)://` (or, for `direct` without one,
/// the address, which is then a host or an IP), without whitespace or
/// control characters.
pub fn check_launcher_urls(data: &[u8]) {
    let lines = lines(data, 4);
    let Some(first) = lines.first() else { return };
    let metadata: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|_| serde_json::json!({"external_url": first}));
    let ip = lines.get(1).map(|s| (*s).to_owned());
    let pomerium = lines.get(2).copied();
    // What the API would store is checked; what it would refuse is
    // launched anyway (a row written by hand), and must stay harmless.
    let _ = validate_metadata(&metadata);
    let resource = rtunnel_core::store::Resource {
        id: uuid::Uuid::nil(),
        name: "r".into(),
        ip_address: ip.clone(),
        metadata,
        system_id: None,
        service: None,
        created_at: 0,
        updated_at: 0,
    };
    let user = rtunnel_core::store::User {
        id: Default::default(),
        name: "u".into(),
        role: rtunnel_core::store::Role::Operator,
        disabled: false,
        created_at: 0,
        email: lines.get(3).map(|s| (*s).to_owned()),
    };
    let fallbacks = Fallbacks {
        pomerium_base_url: pomerium,
        tsplus_base_url: pomerium,
    };
    for kind in [
        ConnectionType::Guacamole,
        ConnectionType::Tsplus,
        ConnectionType::Rdp,
        ConnectionType::Ssh,
        ConnectionType::Direct,
    ] {
        let Ok(url) = session_url(&resource, kind, &user, "T.S", &fallbacks) else {
            continue;
        };
        assert!(
            !url.chars().any(|c| c.is_whitespace() || c.is_control()),
            "{url:?}"
        );
        let scheme = url.get(..8).unwrap_or(&url).to_ascii_lowercase();
        let http = scheme.starts_with("http://") || scheme.starts_with("https://");
        let is_address = kind == ConnectionType::Direct
            && ip.as_deref() == Some(url.as_str())
            && validate_host(&url).is_ok();
        assert!(http || is_address, "{kind:?} gave {url:?}");
        if kind != ConnectionType::Direct {
            assert!(url.ends_with("token=T.S"), "{url}");
        }
    }
}
