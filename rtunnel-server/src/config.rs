//! Server configuration: what `rtunnel-server serve` reads from its flags and
//! environment, also usable directly by embedding services.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The default [`ServerConfig::redis_prefix`].
pub const DEFAULT_REDIS_PREFIX: &str = "rtunnel:";

/// The most connection threads ([`ServerConfig::threads`]).
pub(crate) const MAX_THREADS: usize = 1024;

/// Why `redis_url` is refused by a server built without the `redis` feature.
pub(crate) const NO_REDIS: &str =
    "--redis-url: this server was built without the `redis` feature, so it cannot join a cluster";

/// Everything the server needs to run. Its `Debug` is
/// [`ServerConfig::summary`]: secrets in URLs are hidden.
#[derive(Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory for the database and the secret key.
    pub data_dir: PathBuf,
    /// Public base URL (`http(s)://host[:port]`), used in URLs handed out.
    pub public_url: String,
    /// Domain under which the subdomain proxy answers.
    pub proxy_domain: String,
    /// Path every route is served under (`--path-prefix`, such as
    /// `/support`; empty for none): agents then dial
    /// `ws://host/support/api/v1/tunnel`, `forward` takes
    /// `--server http://host/support`. Proxy hosts are served at their root
    /// whatever it is.
    pub path_prefix: String,
    /// How long a proxy token (and the browser cookie holding it) lasts.
    pub proxy_token_ttl: Duration,
    /// How long a session lives before it is closed.
    pub session_ttl: Duration,
    /// How long a lost tunnel's session waits for its agent.
    pub grace_period: Duration,
    /// Most streams open at once on one tunnel.
    pub max_streams_per_tunnel: usize,
    /// Interval between heartbeats on tunnels and forwards.
    pub heartbeat_interval: Duration,
    /// How long a new tunnel or forward has to complete the protocol
    /// handshake (hello, welcome, an agent's manifest).
    pub handshake_timeout: Duration,
    /// How long one stream has to be set up: an operator's stream header
    /// to arrive, an agent (or the node holding its tunnel) to answer one.
    pub stream_setup_timeout: Duration,
    /// How long a client has to send an HTTP request's head.
    pub request_head_timeout: Duration,
    /// How long a client has to send a JSON request body (408
    /// `body_timeout` after that).
    pub body_timeout: Duration,
    /// The signing key file (default `<data_dir>/secret.key`).
    pub secret_key_file: Option<PathBuf>,
    /// Production deployments refuse to invent a missing secret key.
    pub production: bool,
    /// The session launcher's key file (default `<data_dir>/launch.key`):
    /// external gateways verify session tokens with it.
    pub launch_key_file: Option<PathBuf>,
    /// The launcher's fallback Pomerium URL (`POMERIUM_BASE_URL`).
    pub pomerium_base_url: Option<String>,
    /// The launcher's fallback TSPlus URL (`TSPLUS_BASE_URL`).
    pub tsplus_base_url: Option<String>,
    /// This node's id in a cluster (default: kept in `<data_dir>/node-id`).
    pub node_id: Option<String>,
    /// Redis shared by the nodes of a cluster; none for a node alone.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel, so deployments can share one
    /// Redis.
    pub redis_prefix: String,
    /// Where the node mesh listens (required with `redis_url`).
    pub node_listen: Option<SocketAddr>,
    /// `host:port` other nodes dial to reach the node mesh (default:
    /// the bound `node_listen`).
    pub node_advertise: Option<String>,
    /// The cluster key file, the same on every node (default
    /// `<data_dir>/cluster.key`).
    pub cluster_key_file: Option<PathBuf>,
    /// Reverse proxies whose `X-Forwarded-For` names the client (see
    /// the operations guide).
    pub trusted_proxies: crate::client_addr::TrustedProxies,
    /// How long audit events and closed access-log entries are kept
    /// (`--audit-retention`); `None` keeps them forever.
    pub audit_retention: Option<Duration>,
    /// How often counted refusals are reported (counted per kind and reported in aggregate).
    pub refusal_report_interval: Duration,
    /// The most streams of one tunnel one operator may hold
    /// (`--max-streams-per-user`); `None`: half the tunnel's.
    pub max_streams_per_user: Option<usize>,
    /// Connections held at once, in all (`--max-connections`).
    pub max_connections: usize,
    /// Connections held at once from one address, IPv4 or IPv6 /64
    /// (`--max-connections-per-address`); trusted proxies are exempt.
    pub max_connections_per_address: usize,
    /// Tunnels set up at once (`--max-tunnel-setups`): the agents beyond
    /// wait briefly, then are told to come back later (503 `server_busy`
    /// with a spread `Retry-After`), so a herd of agents coming back after
    /// a restart is taken in at the pace the database keeps.
    pub max_tunnel_setups: usize,
    /// Connection threads (`--threads`): each a runtime of one thread that
    /// an accepted connection and everything it spawns stay on, the
    /// connections spread over them by how many each holds, and an
    /// operator's `forward` moved to the thread of its tunnel (or of the
    /// mesh connection to the node holding it). See `docs/OPERATIONS.md`,
    /// "Threads". 0, the default here, serves connections on the runtime
    /// that runs [`crate::Server::serve`]; the `rtunnel-server` binary
    /// defaults to one per CPU.
    pub threads: usize,
    /// Where Prometheus metrics are served (`--metrics-listen`; `GET
    /// /metrics` on a listener of its own, none by default). Keep it on an
    /// internal address: it needs no login.
    pub metrics_listen: Option<SocketAddr>,
    /// Serve HTTPS with this certificate and key (`--tls-cert`,
    /// `--tls-key`; reloaded by [`crate::Server::tls`]), with HSTS.
    /// Without it the server speaks plain HTTP, for a reverse proxy in
    /// front that does TLS.
    pub tls: Option<crate::TlsFiles>,
}

impl ServerConfig {
    /// The signing key file: [`secret_key_file`](Self::secret_key_file),
    /// else `secret.key` in the data directory.
    pub fn secret_key_path(&self) -> PathBuf {
        self.secret_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("secret.key"))
    }

    /// The launcher's key file: [`launch_key_file`](Self::launch_key_file),
    /// else `launch.key` in the data directory.
    pub fn launch_key_path(&self) -> PathBuf {
        self.launch_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("launch.key"))
    }

    /// The effective configuration as the server logs it at start: every
    /// setting, with the password of the Redis URL hidden (key files are
    /// named, never read).
    pub fn summary(&self) -> serde_json::Value {
        let secs = flag_duration;
        serde_json::json!({
            "listen": self.listen.to_string(),
            "public_url": rtunnel_core::redact::url(&self.public_url),
            "data_dir": self.data_dir.display().to_string(),
            "proxy_domain": self.proxy_domain,
            "path_prefix": self.path_prefix,
            "production": self.production,
            "session_ttl": secs(self.session_ttl),
            "grace_period": secs(self.grace_period),
            "proxy_token_ttl": secs(self.proxy_token_ttl),
            "heartbeat_interval": secs(self.heartbeat_interval),
            "max_streams_per_tunnel": self.max_streams_per_tunnel,
            "max_streams_per_user": self.max_streams_per_user,
            "max_connections": self.max_connections,
            "max_connections_per_address": self.max_connections_per_address,
            "max_tunnel_setups": self.max_tunnel_setups,
            "threads": self.threads,
            "trusted_proxies": self.trusted_proxies.to_list(),
            "audit_retention": self.audit_retention.map_or_else(|| "never".to_owned(), secs),
            "secret_key_file": self.secret_key_path().display().to_string(),
            "launch_key_file": self.launch_key_path().display().to_string(),
            "redis_url": self.redis_url.as_deref().map(rtunnel_core::redact::url),
            "redis_prefix": self.redis_prefix,
            "node_id": self.node_id,
            "node_listen": self.node_listen.map(|a| a.to_string()),
            "node_advertise": self.node_advertise,
            "pomerium_base_url": self.pomerium_base_url.as_deref().map(rtunnel_core::redact::url),
            "tsplus_base_url": self.tsplus_base_url.as_deref().map(rtunnel_core::redact::url),
            "metrics_listen": self.metrics_listen.map(|a| a.to_string()),
            "tls_cert": self.tls.as_ref().map(|t| t.cert.display().to_string()),
            "tls_key": self.tls.as_ref().map(|t| t.key.display().to_string()),
        })
    }
}

/// A duration as the flags take it, in its largest whole unit: `365d`,
/// `1h`, `90s`, `250ms`.
fn flag_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerConfig {}", self.summary())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        let listen: SocketAddr = ([127, 0, 0, 1], 8080).into();
        ServerConfig {
            listen,
            data_dir: PathBuf::from("./rtunnel-data"),
            public_url: format!("http://{listen}"),
            proxy_domain: "localhost".into(),
            path_prefix: String::new(),
            proxy_token_ttl: rtunnel_auth::claims::PROXY_TTL,
            session_ttl: Duration::from_secs(24 * 3600),
            grace_period: Duration::from_secs(60),
            max_streams_per_tunnel: 64,
            heartbeat_interval: rtunnel_core::control::DEFAULT_HEARTBEAT_INTERVAL,
            handshake_timeout: rtunnel_core::control::HANDSHAKE_TIMEOUT,
            stream_setup_timeout: Duration::from_secs(10),
            request_head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            secret_key_file: None,
            production: false,
            launch_key_file: None,
            pomerium_base_url: None,
            tsplus_base_url: None,
            node_id: None,
            redis_url: None,
            redis_prefix: DEFAULT_REDIS_PREFIX.into(),
            node_listen: None,
            node_advertise: None,
            cluster_key_file: None,
            trusted_proxies: crate::client_addr::TrustedProxies::default(),
            audit_retention: Some(crate::retention::DEFAULT_RETENTION),
            refusal_report_interval: Duration::from_secs(60),
            max_streams_per_user: None,
            max_connections: 16_384,
            max_connections_per_address: 512,
            max_tunnel_setups: 64,
            threads: 0,
            metrics_listen: None,
            tls: None,
        }
    }
}

impl ServerConfig {
    /// The most streams of one tunnel one operator may hold: the setting,
    /// else half the tunnel's (at least one).
    pub fn streams_per_user(&self) -> usize {
        self.max_streams_per_user
            .unwrap_or(self.max_streams_per_tunnel / 2)
            .clamp(1, self.max_streams_per_tunnel.max(1))
    }

    /// Checks the settings that have bounds; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        let max = rtunnel_core::proto::MAX_OPEN_STREAMS;
        if !(1..=max).contains(&self.max_streams_per_tunnel) {
            return Err(format!(
                "--max-streams-per-tunnel must be between 1 and {max}"
            ));
        }
        if self.threads > MAX_THREADS {
            return Err(format!("--threads must be at most {MAX_THREADS}"));
        }
        if self.max_tunnel_setups == 0 {
            return Err("--max-tunnel-setups must be at least 1".into());
        }
        if self.max_connections == 0 || self.max_connections_per_address == 0 {
            return Err(
                "--max-connections and --max-connections-per-address must be at least 1".into(),
            );
        }
        if self.heartbeat_interval < Duration::from_millis(100) {
            return Err("--heartbeat-interval must be at least 100ms".into());
        }
        if !is_path_prefix(&self.path_prefix) {
            return Err(format!(
                "--path-prefix must be empty or a path like /support (letters, digits, '-', '_', '.', '/'; no trailing '/'), not {:?}",
                self.path_prefix
            ));
        }
        if cfg!(not(feature = "redis")) && self.redis_url.is_some() {
            return Err(NO_REDIS.into());
        }
        if self.redis_url.is_some() && self.node_listen.is_none() {
            return Err(
                "--redis-url makes this node part of a cluster: set --node-listen too (the internal address other nodes reach it at)"
                    .into(),
            );
        }
        for (name, value) in [
            ("POMERIUM_BASE_URL", &self.pomerium_base_url),
            ("TSPLUS_BASE_URL", &self.tsplus_base_url),
        ] {
            if let Some(v) = value
                && !crate::launcher::is_base_url(v)
            {
                return Err(format!(
                    "{name} must be an http(s):// URL without query or fragment, not {v:?}"
                ));
            }
        }
        Ok(())
    }
}

/// Whether `prefix` is empty or `/segment[/segment...]` of URL-safe
/// characters, without a trailing slash.
pub(crate) fn is_path_prefix(prefix: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    let Some(rest) = prefix.strip_prefix('/') else {
        return false;
    };
    prefix.len() <= 128
        && rest.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_and_debug_hide_the_redis_password() {
        let config = ServerConfig {
            redis_url: Some("redis://:hunter2@10.0.0.5:6379/0".into()),
            trusted_proxies: crate::client_addr::TrustedProxies::parse("10.0.0.0/8, 127.0.0.1")
                .unwrap(),
            ..ServerConfig::default()
        };
        let summary = config.summary();
        assert_eq!(summary["redis_url"], "redis://:***@10.0.0.5:6379/0");
        assert_eq!(summary["trusted_proxies"], "10.0.0.0/8,127.0.0.1/32");
        assert_eq!(summary["session_ttl"], "1d");
        assert_eq!(summary["audit_retention"], "365d");
        assert_eq!(summary["heartbeat_interval"], "15s");
        assert_eq!(flag_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(flag_duration(Duration::from_secs(90)), "90s");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("10.0.0.5"), "{debug}");
    }

    #[test]
    fn connection_threads_are_bounded() {
        let threads = |threads| ServerConfig {
            threads,
            ..ServerConfig::default()
        };
        assert_eq!(threads(0).validate(), Ok(()));
        assert_eq!(threads(MAX_THREADS).validate(), Ok(()));
        assert_eq!(
            threads(MAX_THREADS + 1).validate(),
            Err(format!("--threads must be at most {MAX_THREADS}"))
        );
        assert_eq!(threads(3).summary()["threads"], 3);
    }

    #[test]
    fn path_prefixes_are_plain_paths() {
        for good in ["", "/support", "/a/b-c_d.e"] {
            assert!(is_path_prefix(good), "{good}");
        }
        for bad in [
            "support",
            "/",
            "/support/",
            "//x",
            "/a/../b",
            "/a b",
            "/a?b",
            "/%2e",
        ] {
            assert!(!is_path_prefix(bad), "{bad}");
        }
    }
}
