//! The agent's settings file (`--config FILE`, TOML): the long flags'
//! names as keys (`url`, `key`, `secret_file`, `state_dir`, ...), plus the
//! services as tables and the names never to offer:
//!
//! ```toml
//! url = "wss://support.example.com/api/v1/tunnel"
//! key = "sys_0123456789abcdef01234567"
//! secret_file = "/etc/rtunnel-agent/secret"
//! exclude = ["db-*"]
//!
//! [services.web]
//! target = "127.0.0.1:443"
//! tls = true               # checked against the system's roots and --ca-file
//! insecure = false         # true: any certificate (a self-signed one)
//! host = "cockpit.lan"
//!
//! [services.ssh]
//! target = "127.0.0.1:22"
//! ```
//!
//! The services of the file and of `--static-services` are offered
//! together (a name in both takes the flag's); `exclude` removes names
//! (`*` matches any run of characters; `terminal` turns the terminal off).
//! On SIGHUP and every `--discovery-interval` the file is read again and
//! a changed list of services is offered without reconnecting.

use std::path::Path;

use rtunnel_core::cli_config::{ConfigError, ConfigFile};
use rtunnel_core::proto::{self, HostHeader};

use crate::services::{ServiceSpec, parse_target};

/// What the file says about services.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FileServices {
    /// `[services.NAME]` tables, in the file's order.
    pub(crate) services: Vec<ServiceSpec>,
    /// `exclude = [...]`.
    pub(crate) exclude: Vec<String>,
}

impl FileServices {
    /// Takes `services` and `exclude` out of `file`.
    pub(crate) fn take(file: &mut ConfigFile) -> Result<Self, ConfigError> {
        let mut out = FileServices::default();
        if let Some(value) = file.take("exclude") {
            let list = match value {
                toml::Value::Array(items) => items
                    .into_iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>(),
                toml::Value::String(s) => Some(vec![s]),
                _ => None,
            };
            out.exclude = list.ok_or_else(|| file.error("`exclude` is a list of service names"))?;
        }
        let Some(value) = file.take("services") else {
            return Ok(out);
        };
        let toml::Value::Table(table) = value else {
            return Err(file.error(
                "`services` holds one table per service: [services.NAME] with target = \"host:port\"",
            ));
        };
        for (name, entry) in table {
            let spec = service(&name, entry)
                .map_err(|why| file.error(format!("[services.{name}]: {why}")))?;
            out.services.push(spec);
        }
        if out.services.len() > proto::MAX_MANIFEST_SERVICES {
            return Err(file.error(format!(
                "{} services listed, at most {} allowed",
                out.services.len(),
                proto::MAX_MANIFEST_SERVICES
            )));
        }
        Ok(out)
    }

    /// Whether `name` is excluded.
    pub(crate) fn excludes(&self, name: &str) -> bool {
        self.exclude.iter().any(|pattern| glob(pattern, name))
    }

    /// The services to offer: the file's, then `flags` (which win over a
    /// file service of the same name), less the excluded ones.
    pub(crate) fn offered(&self, flags: &[ServiceSpec]) -> Vec<ServiceSpec> {
        let mut out: Vec<ServiceSpec> = self
            .services
            .iter()
            .filter(|s| !flags.iter().any(|f| f.name == s.name))
            .cloned()
            .collect();
        out.extend(flags.iter().cloned());
        out.retain(|s| !self.excludes(&s.name));
        out
    }
}

/// One `[services.NAME]` table.
fn service(name: &str, entry: toml::Value) -> Result<ServiceSpec, String> {
    proto::validate_service_name(name).map_err(|e| e.to_string())?;
    if name == crate::terminal::TERMINAL_SERVICE {
        return Err("the name terminal is reserved for the built-in terminal".into());
    }
    let toml::Value::Table(mut t) = entry else {
        return Err("must be a table with target = \"host:port\"".into());
    };
    let target = match t.remove("target") {
        Some(toml::Value::String(s)) => s,
        Some(_) => return Err("`target` is a string, \"host:port\"".into()),
        None => return Err("`target = \"host:port\"` is missing".into()),
    };
    let tls_word = target.rsplit_once(':').is_some_and(|(_, p)| {
        matches!(
            p.to_ascii_lowercase().as_str(),
            "https" | "ssl" | "tls" | "secure"
        )
    });
    let options_in_target =
        tls_word || (!target.starts_with('[') && target.matches(':').count() > 1);
    if options_in_target {
        return Err(format!(
            "target {target:?} is only host:port; TLS is `tls = true` and the Host sent is `host = \"NAME\"`"
        ));
    }
    let (host, port) = parse_target(&target).map_err(|why| format!("target {target:?}: {why}"))?;
    let tls = match t.remove("tls") {
        None => false,
        Some(toml::Value::Boolean(b)) => b,
        Some(_) => return Err("`tls` is true or false".into()),
    };
    let insecure = match t.remove("insecure") {
        None => false,
        Some(toml::Value::Boolean(b)) => b,
        Some(_) => return Err("`insecure` is true or false".into()),
    };
    if insecure && !tls {
        return Err("`insecure = true` needs `tls = true`".into());
    }
    let host_header = match t.remove("host") {
        None => HostHeader::Target,
        Some(toml::Value::String(s)) if s == "public" => HostHeader::Public,
        Some(toml::Value::String(s)) => {
            proto::validate_host_header(&s).map_err(|_| format!("bad host {s:?}"))?;
            HostHeader::Fixed(s)
        }
        Some(_) => return Err("`host` is a string".into()),
    };
    if let Some(key) = t.keys().next() {
        return Err(format!(
            "unknown key `{key}` (a service has target, tls, insecure and host)"
        ));
    }
    Ok(ServiceSpec {
        name: name.to_owned(),
        host,
        port,
        tls,
        insecure,
        host_header,
    })
}

/// `*` matches any run of characters; everything else itself.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob(rest, &tail[i..]))
        }
    }
}

/// Reads the file again for its services ([`FileServices::take`]), and
/// says which other settings changed: those take effect at restart.
pub(crate) fn reread(
    path: &Path,
    first: &ConfigFile,
) -> Result<(FileServices, Vec<String>), ConfigError> {
    let mut file = ConfigFile::load(path)?;
    let services = FileServices::take(&mut file)?;
    let mut changed: Vec<String> = file
        .table()
        .iter()
        .filter(|(k, v)| first.table().get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    changed.extend(
        first
            .table()
            .keys()
            .filter(|k| !file.table().contains_key(*k))
            .cloned(),
    );
    Ok((services, changed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<FileServices, String> {
        let mut f = ConfigFile::parse("agent.toml".as_ref(), text).map_err(|e| e.to_string())?;
        FileServices::take(&mut f).map_err(|e| e.to_string())
    }

    #[test]
    fn services_come_from_tables() {
        let got = file(
            "exclude = [\"db-*\"]\n[services.web]\ntarget = \"127.0.0.1:443\"\ntls = true\ninsecure = true\nhost = \"cockpit.lan\"\n\
             [services.db-main]\ntarget = \"[::1]:5432\"\n[services.ssh]\ntarget = \"h:22\"\nhost = \"public\"",
        )
        .unwrap();
        assert_eq!(got.services.len(), 3);
        let web = &got.services[0];
        assert_eq!((web.name.as_str(), web.port, web.tls), ("web", 443, true));
        assert!(web.insecure);
        assert_eq!(web.host_header, HostHeader::Fixed("cockpit.lan".into()));
        assert_eq!(got.services[1].target(), "[::1]:5432");
        assert_eq!(got.services[2].host_header, HostHeader::Public);
        // The flag's `ssh` wins; `db-main` is excluded.
        let flags = crate::parse_services("ssh=10.0.0.1:2222").unwrap();
        let offered = got.offered(&flags);
        let names: Vec<_> = offered.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "ssh"]);
        assert_eq!(offered[1].port, 2222);
    }

    #[test]
    fn mistakes_name_the_service_and_the_file() {
        for (text, why) in [
            (
                "[services.web]\ntls = true",
                "`target = \"host:port\"` is missing",
            ),
            ("[services.web]\ntarget = \"h:443:tls\"", "`tls = true`"),
            ("[services.web]\ntarget = \"h:https\"", "`tls = true`"),
            ("[services.web]\ntarget = \"h:web\"", "is not a port"),
            (
                "[services.web]\ntarget = \"h:1\"\nport = 2",
                "unknown key `port`",
            ),
            ("[services.Web]\ntarget = \"h:1\"", "invalid service name"),
            ("[services.terminal]\ntarget = \"h:1\"", "reserved"),
            ("services = 3", "one table per service"),
            ("exclude = 3", "list of service names"),
            (
                "[services.web]\ntarget = \"h:1\"\ninsecure = true",
                "needs `tls = true`",
            ),
        ] {
            let e = file(text).unwrap_err();
            assert!(e.contains(why) && e.contains("agent.toml"), "{text}: {e}");
        }
    }

    #[test]
    fn exclusions_match_with_stars() {
        for (pattern, name, yes) in [
            ("db", "db", true),
            ("db", "db-1", false),
            ("db-*", "db-1", true),
            ("*-admin", "web-admin", true),
            ("*-admin", "web", false),
            ("w*b*", "web-b", true),
            ("*", "anything", true),
        ] {
            assert_eq!(glob(pattern, name), yes, "{pattern} {name}");
        }
    }
}
