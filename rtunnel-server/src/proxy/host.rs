//! Which proxied service a request is for, from its `Host` alone.
//!
//! A proxy host is `<service>--<session id as 32 hex>.<proxy-domain>[:port]`.
//! Only the `Host` header (or the authority of an absolute-form request
//! target, which must then agree with it) is read: `X-Forwarded-Host`,
//! `Forwarded` and the like come from the client and are never believed.

use axum::http::{HeaderMap, Uri, header};
use rtunnel_core::ids::SessionId;

/// Longest `Host` value looked at (DNS names are at most 253 characters).
pub(crate) const MAX_HOST_LEN: usize = 260;

/// A request's proxy target, from a well-formed proxy host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProxyHost {
    /// The service of the session's manifest.
    pub service: String,
    /// The support session.
    pub session_id: SessionId,
    /// The host as the client wrote it, lower-cased, with its port if any:
    /// what redirects back to the proxy use.
    pub authority: String,
}

/// What the `Host` of a request says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Routed {
    /// A proxy host: the request goes to the proxy.
    Proxy(ProxyHost),
    /// Any other host: the request goes to the API.
    Api,
    /// A request whose host cannot be trusted: several `Host` headers, a
    /// `Host` that is not text, or one that disagrees with the request target.
    Invalid(&'static str),
}

/// Routes a request by its `Host`.
pub(crate) fn route(headers: &HeaderMap, uri: &Uri, proxy_domain: &str) -> Routed {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(h), None) => match h.to_str() {
            Ok(h) if h.len() <= MAX_HOST_LEN => Some(h),
            _ => return Routed::Invalid("the Host header is not a host name"),
        },
        (None, _) => None,
        (Some(_), Some(_)) => return Routed::Invalid("a request carries one Host header"),
    };
    let host = match (host, uri.authority()) {
        (Some(h), Some(a)) if !h.eq_ignore_ascii_case(a.as_str()) => {
            return Routed::Invalid("the Host header disagrees with the request target");
        }
        (Some(h), _) => h,
        (None, Some(a)) => a.as_str(),
        (None, None) => return Routed::Api,
    };
    match parse(host, proxy_domain) {
        Some(target) => Routed::Proxy(target),
        None => Routed::Api,
    }
}

/// Parses `host` as a proxy host under `proxy_domain`; `None` for any other
/// host. Strict: one label before the domain, `<service>--<32 lower-case
/// hex>`, an optional decimal port, nothing else (no trailing dot, no user
/// info, no percent-encoding).
pub(crate) fn parse(host: &str, proxy_domain: &str) -> Option<ProxyHost> {
    let authority = host.to_ascii_lowercase();
    let (name, port) = match authority.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (authority.as_str(), None),
    };
    if let Some(port) = port
        && (port.is_empty()
            || port.len() > 5
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().map_or(true, |p| p == 0))
    {
        return None;
    }
    let domain = proxy_domain.to_ascii_lowercase();
    let label = name.strip_suffix(domain.as_str())?.strip_suffix('.')?;
    let (service, session) = label.rsplit_once("--")?;
    if session.len() != 32
        || !session
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    rtunnel_core::proto::validate_service_name(service).ok()?;
    let session_id: SessionId = session.parse().ok()?;
    Some(ProxyHost {
        service: service.to_owned(),
        session_id,
        authority,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderValue;

    const SID: &str = "0123456789abcdef0123456789abcdef";

    fn headers(hosts: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for host in hosts {
            h.append(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        h
    }

    #[test]
    fn a_proxy_host_names_service_and_session() {
        let p = parse(&format!("web--{SID}.localhost:8080"), "localhost").unwrap();
        assert_eq!(p.service, "web");
        assert_eq!(p.session_id.as_uuid().simple().to_string(), SID);
        assert_eq!(p.authority, format!("web--{SID}.localhost:8080"));
        // Case does not matter in host names; a service may hold "--".
        let p = parse(
            &format!("My--App--{}.Proxy.Example.COM", SID.to_uppercase()),
            "proxy.example.com",
        )
        .unwrap();
        assert_eq!(p.service, "my--app");
    }

    #[test]
    fn anything_else_is_not_a_proxy_host() {
        for host in [
            "localhost:8080".to_owned(),
            format!("web-{SID}.localhost"),
            format!("web--{}.localhost", &SID[1..]),
            format!("web--{SID}0.localhost"),
            format!("web--{}g.localhost", &SID[1..]),
            format!("--{SID}.localhost"),
            format!("-web--{SID}.localhost"),
            format!("a.web--{SID}.localhost"),
            format!("web--{SID}.localhost."),
            format!("web--{SID}.localhost:"),
            format!("web--{SID}.localhost:0"),
            format!("web--{SID}.localhost:65536"),
            format!("web--{SID}.localhost:+80"),
            format!("web--{SID}.evillocalhost"),
            format!("web--{SID}.localhost.evil.com"),
            format!("user@web--{SID}.localhost"),
            format!("web--{SID}%2elocalhost"),
            format!("web_x--{SID}.localhost"),
        ] {
            assert_eq!(parse(&host, "localhost"), None, "{host}");
        }
    }

    #[test]
    fn only_one_host_header_is_believed() {
        let uri: Uri = "/".parse().unwrap();
        let proxy = format!("web--{SID}.localhost");
        assert!(matches!(
            route(&headers(&[&proxy]), &uri, "localhost"),
            Routed::Proxy(_)
        ));
        assert_eq!(
            route(&headers(&["localhost"]), &uri, "localhost"),
            Routed::Api
        );
        assert!(matches!(
            route(&headers(&[&proxy, "localhost"]), &uri, "localhost"),
            Routed::Invalid(_)
        ));
        assert_eq!(route(&HeaderMap::new(), &uri, "localhost"), Routed::Api);
        // Forwarded-host headers are not read at all.
        let mut h = headers(&["localhost"]);
        h.insert("x-forwarded-host", HeaderValue::from_str(&proxy).unwrap());
        h.insert(
            "forwarded",
            HeaderValue::from_str(&format!("host={proxy}")).unwrap(),
        );
        assert_eq!(route(&h, &uri, "localhost"), Routed::Api);
    }

    #[test]
    fn an_absolute_target_must_agree_with_the_host() {
        let proxy = format!("web--{SID}.localhost");
        let uri: Uri = format!("http://{proxy}/x").parse().unwrap();
        assert!(matches!(
            route(&headers(&[&proxy]), &uri, "localhost"),
            Routed::Proxy(_)
        ));
        assert!(matches!(
            route(&headers(&["other"]), &uri, "localhost"),
            Routed::Invalid(_)
        ));
        assert!(matches!(
            route(&HeaderMap::new(), &uri, "localhost"),
            Routed::Proxy(_)
        ));
    }
}
