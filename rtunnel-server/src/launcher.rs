//! The session launcher's URLs, as its contract
//! (`../shared/seeds/000_*`, and CONTRACT.md) defines them, word for word:
//! which metadata key each connection type reads, what it falls back to,
//! and the error when nothing gives a URL.
//!
//! | type | URL | from |
//! | --- | --- | --- |
//! | `direct` | the URL itself | `external_url`, else the resource's `ip_address` |
//! | `guacamole` | `{pomerium_url}/guacamole/#/client/{base64(id)}?token=T` | id: `guacamole_connection_id`, else the resource id |
//! | `rdp` | same | id: `rdp_connection_id`, else `rdp-{resource id}` |
//! | `ssh` | same | id: `ssh_connection_id`, else `ssh-{resource id}` |
//! | `tsplus` | `{tsplus_url}/html5/?user=U&host=H&token=T` | user: `tsplus_user`, else the user's email; host: `target_host` |
//!
//! `pomerium_url` falls back to `POMERIUM_BASE_URL`, `tsplus_url` to
//! `TSPLUS_BASE_URL`.
//!
//! No URL that is not `http(s)://` ever leaves: `external_url` must be one,
//! base URLs (`pomerium_url`, `tsplus_url` and their fallbacks) must be one
//! without a query or fragment, and a resource's `ip_address` must be a
//! host name or an IP address. They are checked when a resource is written
//! and again at every launch (a row written before these checks, or by hand,
//! gives [`messages::NO_URL`], never its value).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rtunnel_core::store::{Resource, User};

/// The error messages of the launcher contract.
pub(crate) mod messages {
    /// No or an unusable `Authorization` header.
    pub(crate) const MISSING_AUTHORIZATION: &str = "Missing authorization header";
    /// No active grant, or the role cannot launch.
    pub(crate) const ACCESS_DENIED: &str = "Access denied to this resource";
    /// Not one of the five types.
    pub(crate) const INVALID_CONNECTION_TYPE: &str = "Invalid connection type";
    /// Neither metadata nor environment gives a URL.
    pub(crate) const NO_URL: &str = "No URL configured for this resource";
}

/// How a session is launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectionType {
    /// Apache Guacamole behind Pomerium.
    Guacamole,
    /// The TSPlus HTML5 gateway.
    Tsplus,
    /// RDP through Guacamole.
    Rdp,
    /// SSH through Guacamole.
    Ssh,
    /// The resource's own URL (or, for a resource tied to a system's
    /// service, rtunnel's proxy URL for it).
    Direct,
}

impl ConnectionType {
    /// Parses the request's `connectionType`.
    pub(crate) fn parse(s: &str) -> Option<ConnectionType> {
        Some(match s {
            "guacamole" => ConnectionType::Guacamole,
            "tsplus" => ConnectionType::Tsplus,
            "rdp" => ConnectionType::Rdp,
            "ssh" => ConnectionType::Ssh,
            "direct" => ConnectionType::Direct,
            _ => return None,
        })
    }

    /// The name used in requests and audit events.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ConnectionType::Guacamole => "guacamole",
            ConnectionType::Tsplus => "tsplus",
            ConnectionType::Rdp => "rdp",
            ConnectionType::Ssh => "ssh",
            ConnectionType::Direct => "direct",
        }
    }

    /// Whether the URL carries a session token.
    pub(crate) fn needs_token(self) -> bool {
        self != ConnectionType::Direct
    }
}

/// The environment fallbacks.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fallbacks<'a> {
    /// `POMERIUM_BASE_URL`.
    pub pomerium_base_url: Option<&'a str>,
    /// `TSPLUS_BASE_URL`.
    pub tsplus_base_url: Option<&'a str>,
}

/// Metadata keys holding URLs: only `http(s)://` is accepted for them.
pub(crate) const URL_KEYS: [&str; 3] = ["external_url", "pomerium_url", "tsplus_url"];

/// Every metadata key the launcher reads.
pub(crate) const METADATA_KEYS: [&str; 8] = [
    "external_url",
    "pomerium_url",
    "guacamole_connection_id",
    "rdp_connection_id",
    "ssh_connection_id",
    "tsplus_url",
    "tsplus_user",
    "target_host",
];

fn meta<'a>(resource: &'a Resource, key: &str) -> Option<&'a str> {
    resource
        .metadata
        .get(key)
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
}

/// The session URL for `resource` launched as `kind` by `user`, with the
/// signed session `token` (unused for `direct`). `Err` carries
/// [`messages::NO_URL`].
pub(crate) fn session_url(
    resource: &Resource,
    kind: ConnectionType,
    user: &User,
    token: &str,
    fallbacks: &Fallbacks<'_>,
) -> Result<String, &'static str> {
    let id = resource.id.to_string();
    let guacamole = |connection: String| {
        let base = meta(resource, "pomerium_url")
            .or(fallbacks.pomerium_base_url)
            .filter(|b| is_base_url(b))
            .ok_or(messages::NO_URL)?;
        let encoded = encode_component(&STANDARD.encode(connection));
        Ok(format!(
            "{}/guacamole/#/client/{encoded}?token={token}",
            base.trim_end_matches('/')
        ))
    };
    match kind {
        ConnectionType::Direct => match meta(resource, "external_url") {
            Some(url) if is_http_url(url) => Ok(url.to_owned()),
            Some(_) => Err(messages::NO_URL),
            None => resource
                .ip_address
                .as_deref()
                .filter(|a| is_host(a))
                .map(str::to_owned)
                .ok_or(messages::NO_URL),
        },
        ConnectionType::Guacamole => guacamole(
            meta(resource, "guacamole_connection_id")
                .map(str::to_owned)
                .unwrap_or(id),
        ),
        ConnectionType::Rdp => guacamole(
            meta(resource, "rdp_connection_id")
                .map(str::to_owned)
                .unwrap_or_else(|| format!("rdp-{id}")),
        ),
        ConnectionType::Ssh => guacamole(
            meta(resource, "ssh_connection_id")
                .map(str::to_owned)
                .unwrap_or_else(|| format!("ssh-{id}")),
        ),
        ConnectionType::Tsplus => {
            let base = meta(resource, "tsplus_url")
                .or(fallbacks.tsplus_base_url)
                .filter(|b| is_base_url(b))
                .ok_or(messages::NO_URL)?;
            let tsplus_user = meta(resource, "tsplus_user")
                .or(user.email.as_deref())
                .unwrap_or(&user.name);
            let host = meta(resource, "target_host")
                .or(resource.ip_address.as_deref())
                .unwrap_or_default();
            Ok(format!(
                "{}/html5/?user={}&host={}&token={token}",
                base.trim_end_matches('/'),
                encode_component(tsplus_user),
                encode_component(host)
            ))
        }
    }
}

/// Percent-encodes as JavaScript's `encodeURIComponent` does.
fn encode_component(s: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'!')
        .remove(b'~')
        .remove(b'*')
        .remove(b'\'')
        .remove(b'(')
        .remove(b')');
    percent_encoding::utf8_percent_encode(s, KEEP).to_string()
}

/// Metadata keys holding base URLs, which the launcher extends: no query,
/// no fragment.
pub(crate) const BASE_URL_KEYS: [&str; 2] = ["pomerium_url", "tsplus_url"];

/// Checks a resource's metadata: a JSON object whose launcher keys are
/// strings, URL keys `http(s)://` URLs (a `javascript:` launch target must
/// never reach a browser), base URLs without query or fragment.
pub(crate) fn validate_metadata(metadata: &serde_json::Value) -> Result<(), String> {
    let Some(map) = metadata.as_object() else {
        return Err("metadata must be a JSON object".into());
    };
    for key in METADATA_KEYS {
        match map.get(key) {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(v)) => {
                if URL_KEYS.contains(&key) && !v.is_empty() && !is_http_url(v) {
                    return Err(format!("metadata.{key} must be an http(s):// URL"));
                }
                if BASE_URL_KEYS.contains(&key) && !v.is_empty() && !is_base_url(v) {
                    return Err(format!(
                        "metadata.{key} must be an http(s):// URL without query or fragment"
                    ));
                }
            }
            Some(_) => return Err(format!("metadata.{key} must be a string")),
        }
    }
    Ok(())
}

/// An absolute `http://` or `https://` URL with a host, written out in full:
/// the URL parser forgives `https:host` and `https:./host`, browsers do
/// too, but what leaves the launcher is given as it was written.
fn is_http_url(v: &str) -> bool {
    let lower = v.get(..8).unwrap_or(v).to_ascii_lowercase();
    // The parser drops or escapes whitespace and control characters; the
    // string handed on would still hold them.
    !v.chars().any(|c| c.is_whitespace() || c.is_control())
        && (lower.starts_with("http://") || lower.starts_with("https://"))
        && url::Url::parse(v).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
}

/// An `http(s)://` URL the launcher may extend with a path and a query.
pub(crate) fn is_base_url(v: &str) -> bool {
    is_http_url(v)
        && url::Url::parse(v)
            .is_ok_and(|u| u.query().is_none() && u.fragment().is_none() && !v.contains(['?', '#']))
}

/// Checks a resource's `ip_address`: a host name or an IP address.
pub(crate) fn validate_host(v: &str) -> Result<(), String> {
    if is_host(v) {
        Ok(())
    } else {
        Err(format!(
            "ip_address must be a host name or an IP address, not {:?}",
            v.chars().take(64).collect::<String>()
        ))
    }
}

/// A DNS host name (letters, digits, `-` and `_` in labels of 1 to 63,
/// up to 253 in all) or an IPv4 or IPv6 address.
fn is_host(v: &str) -> bool {
    if v.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = v.strip_suffix('.').unwrap_or(v);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtunnel_core::store::Role;
    use serde_json::json;
    use uuid::Uuid;

    fn resource(metadata: serde_json::Value, ip: Option<&str>) -> Resource {
        Resource {
            id: Uuid::parse_str("00000000-0000-4000-8000-000000000001").unwrap(),
            name: "r".into(),
            ip_address: ip.map(str::to_owned),
            metadata,
            system_id: None,
            service: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn user(email: Option<&str>) -> User {
        User {
            id: rtunnel_core::ids::UserId::new(),
            name: "alice".into(),
            role: Role::Operator,
            disabled: false,
            created_at: 0,
            email: email.map(str::to_owned),
        }
    }

    const NONE: Fallbacks<'static> = Fallbacks {
        pomerium_base_url: None,
        tsplus_base_url: None,
    };

    #[test]
    fn guacamole_matches_the_contracts_example() {
        let r = resource(
            json!({"pomerium_url": "https://access.company.com", "guacamole_connection_id": "rdp-connection-123"}),
            None,
        );
        let url = session_url(&r, ConnectionType::Guacamole, &user(None), "T.S", &NONE).unwrap();
        assert_eq!(
            url,
            "https://access.company.com/guacamole/#/client/cmRwLWNvbm5lY3Rpb24tMTIz?token=T.S"
        );
    }

    #[test]
    fn connection_ids_default_per_type() {
        let r = resource(json!({"pomerium_url": "https://p.example/"}), None);
        let u = user(None);
        let id = r.id.to_string();
        let enc = |s: &str| encode_component(&STANDARD.encode(s));
        for (kind, conn) in [
            (ConnectionType::Guacamole, id.clone()),
            (ConnectionType::Rdp, format!("rdp-{id}")),
            (ConnectionType::Ssh, format!("ssh-{id}")),
        ] {
            assert_eq!(
                session_url(&r, kind, &u, "t", &NONE).unwrap(),
                format!(
                    "https://p.example/guacamole/#/client/{}?token=t",
                    enc(&conn)
                )
            );
        }
        let r = resource(
            json!({"pomerium_url": "https://p", "rdp_connection_id": "rdp-server-01", "ssh_connection_id": "ssh-prod-server"}),
            None,
        );
        assert!(
            session_url(&r, ConnectionType::Rdp, &u, "t", &NONE)
                .unwrap()
                .contains(&enc("rdp-server-01"))
        );
        assert!(
            session_url(&r, ConnectionType::Ssh, &u, "t", &NONE)
                .unwrap()
                .contains(&enc("ssh-prod-server"))
        );
    }

    #[test]
    fn environment_fallbacks_and_no_url() {
        let r = resource(json!({}), None);
        let u = user(Some("alice@example.com"));
        for kind in [
            ConnectionType::Guacamole,
            ConnectionType::Rdp,
            ConnectionType::Ssh,
            ConnectionType::Tsplus,
            ConnectionType::Direct,
        ] {
            assert_eq!(
                session_url(&r, kind, &u, "t", &NONE),
                Err("No URL configured for this resource")
            );
        }
        let env = Fallbacks {
            pomerium_base_url: Some("https://pom.example"),
            tsplus_base_url: Some("https://ts.example"),
        };
        assert!(
            session_url(&r, ConnectionType::Ssh, &u, "t", &env)
                .unwrap()
                .starts_with("https://pom.example/guacamole/#/client/")
        );
        assert_eq!(
            session_url(&r, ConnectionType::Tsplus, &u, "t", &env).unwrap(),
            "https://ts.example/html5/?user=alice%40example.com&host=&token=t"
        );
    }

    #[test]
    fn tsplus_and_direct() {
        let r = resource(
            json!({"tsplus_url": "https://rdp.company.com", "tsplus_user": "domain\\username", "target_host": "10.0.1.50"}),
            Some("192.0.2.1"),
        );
        assert_eq!(
            session_url(&r, ConnectionType::Tsplus, &user(None), "t", &NONE).unwrap(),
            "https://rdp.company.com/html5/?user=domain%5Cusername&host=10.0.1.50&token=t"
        );
        // Direct: external_url, else the address.
        assert_eq!(
            session_url(&r, ConnectionType::Direct, &user(None), "t", &NONE).unwrap(),
            "192.0.2.1"
        );
        let r = resource(
            json!({"external_url": "https://app.example.com"}),
            Some("192.0.2.1"),
        );
        assert_eq!(
            session_url(&r, ConnectionType::Direct, &user(None), "t", &NONE).unwrap(),
            "https://app.example.com"
        );
        // TSPlus user falls back to the email, then the login name.
        let r = resource(json!({"tsplus_url": "https://ts"}), None);
        assert!(
            session_url(&r, ConnectionType::Tsplus, &user(None), "t", &NONE)
                .unwrap()
                .contains("user=alice&")
        );
    }

    #[test]
    fn nothing_but_http_urls_and_hosts_leave_the_launcher() {
        let u = user(None);
        // A bad address written before the checks, or by hand.
        for bad in ["javascript:alert(1)", "http://x/", "a b", "-x", "x..y", ""] {
            let r = resource(json!({}), Some(bad));
            assert_eq!(
                session_url(&r, ConnectionType::Direct, &u, "t", &NONE),
                Err(messages::NO_URL),
                "{bad:?}"
            );
            if !bad.is_empty() {
                assert!(validate_host(bad).is_err(), "{bad:?}");
            }
        }
        for good in [
            "10.0.1.50",
            "::1",
            "fe80::1",
            "db1",
            "db-1.corp.example",
            "host_x.lan.",
        ] {
            assert!(validate_host(good).is_ok(), "{good:?}");
            let r = resource(json!({}), Some(good));
            assert_eq!(
                session_url(&r, ConnectionType::Direct, &u, "t", &NONE).as_deref(),
                Ok(good)
            );
        }
        // Found by the launcher_urls fuzzer: the URL parser takes these.
        for sloppy in [
            "https:./app.example.com",
            "https:app.example.com",
            "http:/x.example",
            "https://app.example.com/\0x",
            "https://app.example.com/a b",
            "https://app.exa\tmple.com/",
        ] {
            let r = resource(json!({"external_url": sloppy}), None);
            assert_eq!(
                session_url(&r, ConnectionType::Direct, &u, "t", &NONE),
                Err(messages::NO_URL),
                "{sloppy}"
            );
            assert!(validate_metadata(&json!({"external_url": sloppy})).is_err());
        }
        let r = resource(
            json!({"external_url": "javascript:alert(1)"}),
            Some("10.0.0.1"),
        );
        assert_eq!(
            session_url(&r, ConnectionType::Direct, &u, "t", &NONE),
            Err(messages::NO_URL)
        );
        // Base URLs with a query or fragment, or of another scheme.
        for base in [
            "https://p.example/?a=1",
            "https://p.example/#x",
            "javascript://p.example/",
            "data:text/html,x",
        ] {
            let r = resource(json!({"pomerium_url": base, "tsplus_url": base}), None);
            for kind in [ConnectionType::Guacamole, ConnectionType::Tsplus] {
                assert_eq!(
                    session_url(&r, kind, &u, "t", &NONE),
                    Err(messages::NO_URL),
                    "{base}"
                );
            }
            assert!(
                validate_metadata(&json!({"pomerium_url": base})).is_err(),
                "{base}"
            );
        }
        let env = Fallbacks {
            pomerium_base_url: Some("https://pom.example/?x=1"),
            tsplus_base_url: None,
        };
        let r = resource(json!({}), None);
        assert!(session_url(&r, ConnectionType::Ssh, &u, "t", &env).is_err());
    }

    #[test]
    fn metadata_is_checked() {
        assert!(validate_metadata(&json!({"external_url": "https://a.example"})).is_ok());
        assert!(validate_metadata(&json!({"external_url": "javascript:alert(1)"})).is_err());
        assert!(validate_metadata(&json!({"pomerium_url": 5})).is_err());
        assert!(validate_metadata(&json!(["x"])).is_err());
        assert!(validate_metadata(&json!({"custom": {"any": "thing"}})).is_ok());
    }

    #[test]
    fn connection_types_parse() {
        for s in ["guacamole", "tsplus", "rdp", "ssh", "direct"] {
            assert_eq!(ConnectionType::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(ConnectionType::parse("vnc"), None);
        assert_eq!(ConnectionType::parse("SSH"), None);
    }
}
