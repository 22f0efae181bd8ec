//! The services an agent offers: `name=host:port[:tls[:insecure]][:host=NAME]`
//! entries. A `:tls` service's certificate is checked against the system's
//! roots and `--ca-file`; `:insecure` accepts any certificate. `:host=NAME` makes the subdomain proxy send `Host: NAME` (an
//! application behind a reverse proxy that routes by name), `:host=public`
//! the public proxy host (an application configured with its external
//! name); by default it sends the service's own `host:port`.

use std::fmt;

use rtunnel_core::proto::{self, HostHeader, ServiceInfo, StreamKind};

/// One service the agent can reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Name in the manifest.
    pub name: String,
    /// Host to dial.
    pub host: String,
    /// Port to dial.
    pub port: u16,
    /// Whether to speak TLS to the target.
    pub tls: bool,
    /// With `tls`: accept any certificate (a self-signed one) instead of
    /// checking it against the system's roots and `--ca-file`.
    pub insecure: bool,
    /// The `Host` the subdomain proxy sends it.
    pub host_header: HostHeader,
}

impl ServiceSpec {
    /// Its manifest entry.
    pub fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: self.name.clone(),
            kind: StreamKind::Tcp,
            target: Some(self.target()),
            tls: self.tls,
            host_header: self.host_header.clone(),
            consent: Default::default(),
            shared: false,
        }
    }

    /// The name a `:tls` service is asked for in the TLS handshake (SNI):
    /// the virtual host of `:host=NAME` without its port, so a reverse
    /// proxy on the customer's side picks the right certificate and
    /// application; otherwise the host dialed.
    pub fn tls_server_name(&self) -> &str {
        match &self.host_header {
            HostHeader::Fixed(name) => strip_port(name),
            HostHeader::Target | HostHeader::Public => &self.host,
        }
    }

    /// `host:port` (IPv6 hosts in brackets).
    pub fn target(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `host` of `host[:port]`, and `::1` of `[::1][:port]`.
fn strip_port(name: &str) -> &str {
    if let Some(rest) = name.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match name.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => name,
    }
}

/// A bad service list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceListError(pub String);

impl fmt::Display for ServiceListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServiceListError {}

/// Parses `name=host:port[:tls[:insecure]][:host=NAME|:host=public],...`
/// (IPv6 hosts in brackets).
pub fn parse_services(list: &str) -> Result<Vec<ServiceSpec>, ServiceListError> {
    let mut out: Vec<ServiceSpec> = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let spec = parse_one(entry)?;
        if out.iter().any(|s| s.name == spec.name) {
            return Err(ServiceListError(format!(
                "service {:?} is listed twice",
                spec.name
            )));
        }
        out.push(spec);
    }
    if out.len() > proto::MAX_MANIFEST_SERVICES {
        return Err(ServiceListError(format!(
            "{} services listed, at most {} allowed",
            out.len(),
            proto::MAX_MANIFEST_SERVICES
        )));
    }
    Ok(out)
}

fn parse_one(entry: &str) -> Result<ServiceSpec, ServiceListError> {
    let bad = |why: &str| {
        ServiceListError(format!(
            "bad service {entry:?}: {why} (expected name=host:port[:tls[:insecure]][:host=NAME|:host=public])"
        ))
    };
    let (name, target) = entry.split_once('=').ok_or_else(|| bad("no '='"))?;
    proto::validate_service_name(name).map_err(|e| ServiceListError(e.to_string()))?;
    if name == "terminal" {
        return Err(bad(
            "the name terminal is reserved for the built-in terminal",
        ));
    }
    let (target, host_header) = match target.split_once(":host=") {
        Some((t, "public")) => (t, HostHeader::Public),
        Some((t, name)) => {
            proto::validate_host_header(name).map_err(|_| bad("bad host= name"))?;
            (t, HostHeader::Fixed(name.to_owned()))
        }
        None => (target, HostHeader::Target),
    };
    let (target, insecure) = match target.strip_suffix(":insecure") {
        Some(t) => (t, true),
        None => (target, false),
    };
    let (target, tls) = match target.strip_suffix(":tls") {
        Some(t) => (t, true),
        None => (target, false),
    };
    if insecure && !tls {
        return Err(bad(
            ":insecure goes after :tls (web=10.0.0.5:443:tls:insecure)",
        ));
    }
    let (host, port) = parse_target(target).map_err(|why| bad(&why))?;
    Ok(ServiceSpec {
        name: name.to_owned(),
        host,
        port,
        tls,
        insecure,
        host_header,
    })
}

/// `host:port` or `[v6]:port`, with the reason when it is not one.
pub(crate) fn parse_target(target: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = target.strip_prefix('[') {
        rest.split_once("]:")
            .ok_or_else(|| "bad IPv6 address".to_owned())?
    } else {
        target
            .rsplit_once(':')
            .ok_or_else(|| "no port".to_owned())?
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err("empty host".into());
    }
    // A word where the port goes is an option spelled wrong (`:https`,
    // `:ssl`), or the port is missing: say which.
    if !port.is_empty() && !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(match port.to_ascii_lowercase().as_str() {
            "https" | "ssl" | "tls" | "secure" => {
                "the options after the port are :tls, :insecure and \
                 :host=NAME; for HTTPS write :tls after the port (web=127.0.0.1:443:tls)"
                    .to_owned()
            }
            other => format!(
                "{other:?} is not a port; the options after the port are :tls, :insecure and :host=NAME"
            ),
        });
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| "the port must be a number from 1 to 65535".to_owned())?;
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_lists_parse() {
        let s = parse_services("ssh=127.0.0.1:22, web=localhost:443:tls,db=[::1]:5432").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].target(), "127.0.0.1:22");
        assert!(!s[0].tls);
        assert!(s[1].tls);
        assert_eq!(s[1].port, 443);
        assert_eq!(s[2].host, "::1");
        assert_eq!(s[2].target(), "[::1]:5432");
        assert!(parse_services("").unwrap().is_empty());
    }

    #[test]
    fn a_service_may_name_the_host_the_proxy_sends() {
        let s = parse_services(
            "a=10.0.0.5:443:tls:host=cockpit.lan,b=10.0.0.5:80:host=app.lan:8080,c=[::1]:80:host=public,d=h:1",
        )
        .unwrap();
        assert_eq!(s[0].host_header, HostHeader::Fixed("cockpit.lan".into()));
        assert!(s[0].tls);
        assert_eq!(s[0].port, 443);
        assert_eq!(s[1].host_header, HostHeader::Fixed("app.lan:8080".into()));
        assert_eq!(s[2].host_header, HostHeader::Public);
        assert_eq!(s[2].target(), "[::1]:80");
        assert_eq!(s[3].host_header, HostHeader::Target);
        assert_eq!(s[0].info().host_header, s[0].host_header);
        // The TLS handshake asks for the virtual host, without its port.
        assert_eq!(s[0].tls_server_name(), "cockpit.lan");
        assert_eq!(s[1].tls_server_name(), "app.lan");
        assert_eq!(s[2].tls_server_name(), "::1");
        assert_eq!(s[3].tls_server_name(), "h");
        let v6 = parse_services("e=10.0.0.5:443:tls:host=[fd00::5]:8443").unwrap();
        assert_eq!(v6[0].tls_server_name(), "fd00::5");
        for bad in ["a=h:1:host=", "a=h:1:host=a b", "a=h:1:host=x/y"] {
            assert!(parse_services(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_tls_service_is_checked_unless_marked_insecure() {
        let s = parse_services("a=h:443:tls,b=h:443:tls:insecure:host=app.lan,c=h:80").unwrap();
        assert!(s[0].tls && !s[0].insecure);
        assert!(s[1].tls && s[1].insecure);
        assert_eq!(s[1].host_header, HostHeader::Fixed("app.lan".into()));
        assert!(!s[2].tls && !s[2].insecure);
        let e = parse_services("a=h:443:insecure").unwrap_err().to_string();
        assert!(e.contains(":insecure goes after :tls"), "{e}");
    }

    #[test]
    fn an_option_spelled_wrong_is_named_not_taken_for_a_port() {
        let e = parse_services("web=127.0.0.1:443:https")
            .unwrap_err()
            .to_string();
        assert!(e.contains("write :tls after the port"), "{e}");
        let e = parse_services("web=127.0.0.1:443:secret")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"secret\" is not a port"), "{e}");
        let e = parse_services("web=127.0.0.1:70000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("from 1 to 65535"), "{e}");
    }

    #[test]
    fn bad_service_lists_are_refused_clearly() {
        for (bad, why) in [
            ("ssh", "no '='"),
            ("ssh=host", "no port"),
            ("ssh=host:0", "port"),
            ("ssh=host:99999", "port"),
            ("SSH=host:22", "invalid service name"),
            ("a=h:1,a=h:2", "twice"),
            ("terminal=h:1", "reserved"),
            ("x=:22", "empty host"),
        ] {
            let err = parse_services(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
