//! The services an agent offers: `name=host:port[:tls]` entries.

use std::fmt;

use rtunnel_core::proto::{self, ServiceInfo, StreamKind};

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
}

impl ServiceSpec {
    /// Its manifest entry.
    pub fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: self.name.clone(),
            kind: StreamKind::Tcp,
            target: Some(self.target()),
            tls: self.tls,
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

/// A bad service list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceListError(pub String);

impl fmt::Display for ServiceListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServiceListError {}

/// Parses `name=host:port[:tls],...` (IPv6 hosts in brackets).
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
            "bad service {entry:?}: {why} (expected name=host:port[:tls])"
        ))
    };
    let (name, target) = entry.split_once('=').ok_or_else(|| bad("no '='"))?;
    proto::validate_service_name(name).map_err(|e| ServiceListError(e.to_string()))?;
    if name == "terminal" {
        return Err(bad(
            "the name terminal is reserved for the built-in terminal",
        ));
    }
    let (target, tls) = match target.strip_suffix(":tls") {
        Some(t) => (t, true),
        None => (target, false),
    };
    let (host, port) = if let Some(rest) = target.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or_else(|| bad("bad IPv6 address"))?;
        (host, port)
    } else {
        target.rsplit_once(':').ok_or_else(|| bad("no port"))?
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad("empty host"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("port must be 1-65535"))?;
    Ok(ServiceSpec {
        name: name.to_owned(),
        host: host.to_owned(),
        port,
        tls,
    })
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
