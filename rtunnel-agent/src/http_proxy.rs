//! Dialing out through an HTTP proxy with `CONNECT`.
//!
//! Customer networks often reach the outside only through a proxy. The
//! agent asks it for a tunnel to the server (`CONNECT host:port`, with
//! `Proxy-Authorization: Basic` when the proxy URL carries credentials),
//! then speaks TLS and WebSocket through that tunnel as if it had dialed
//! directly: the proxy sees only the server's name and port.
//!
//! Which proxy: `--proxy` (`RTUNNEL_PROXY`) when given; otherwise the usual
//! variables, `HTTPS_PROXY` for `wss://` and `HTTP_PROXY` for `ws://` (either
//! case, falling back to `ALL_PROXY`), unless `NO_PROXY` lists the server.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest proxy answer to a `CONNECT` the agent reads.
pub const MAX_PROXY_RESPONSE_BYTES: usize = 8 * 1024;

/// An HTTP proxy to dial through.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl fmt::Display for Proxy {
    /// The proxy's address, never its password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", authority(&self.host, self.port))
    }
}

/// Why a proxy setting is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad proxy URL {url:?}: {reason}")]
pub struct ProxyUrlError {
    url: String,
    reason: String,
}

impl Proxy {
    /// Parses `http://[user:password@]host[:port]` (port 80 by default;
    /// a bare `host:port` is taken as `http://`). User and password may be
    /// percent-encoded.
    ///
    /// ```
    /// use rtunnel_agent::Proxy;
    ///
    /// let proxy = Proxy::parse("http://alice:p%40ss@proxy.corp:3128")?;
    /// assert_eq!(proxy.to_string(), "http://proxy.corp:3128");
    /// # Ok::<(), rtunnel_agent::ProxyUrlError>(())
    /// ```
    pub fn parse(url: &str) -> Result<Proxy, ProxyUrlError> {
        let err = |reason: &str| ProxyUrlError {
            url: redact(url),
            reason: reason.to_owned(),
        };
        let with_scheme = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        let parsed = url::Url::parse(&with_scheme).map_err(|e| err(&e.to_string()))?;
        if parsed.scheme() != "http" {
            return Err(err(
                "only http:// proxies are supported (the tunnel inside is still TLS for wss://)",
            ));
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(err("no host")),
        };
        if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
            return Err(err("a proxy URL has no path or query"));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| err("credentials are not valid UTF-8"))
        };
        let credentials = if parsed.username().is_empty() && parsed.password().is_none() {
            None
        } else {
            Some((
                decode(parsed.username())?,
                decode(parsed.password().unwrap_or(""))?,
            ))
        };
        Ok(Proxy {
            host,
            port: parsed.port().unwrap_or(80),
            credentials,
        })
    }

    /// The proxy for a connection to `target` (a `ws://` or `wss://` URL):
    /// `explicit` when given, else the environment as read by `env`
    /// (`HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`, honoring `NO_PROXY`).
    ///
    /// ```
    /// use rtunnel_agent::Proxy;
    ///
    /// let env = |name: &str| match name {
    ///     "HTTPS_PROXY" => Some("http://proxy.corp:3128".to_owned()),
    ///     "NO_PROXY" => Some("localhost,.internal".to_owned()),
    ///     _ => None,
    /// };
    /// let via = Proxy::resolve(None, "wss://support.example.com/api/v1/tunnel", env)?;
    /// assert_eq!(via.map(|p| p.to_string()).as_deref(), Some("http://proxy.corp:3128"));
    /// let direct = Proxy::resolve(None, "wss://gw.internal/api/v1/tunnel", env)?;
    /// assert!(direct.is_none());
    /// # Ok::<(), rtunnel_agent::ProxyUrlError>(())
    /// ```
    pub fn resolve(
        explicit: Option<&str>,
        target: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Proxy>, ProxyUrlError> {
        if let Some(url) = explicit.filter(|u| !u.is_empty()) {
            return Proxy::parse(url).map(Some);
        }
        let var = |name: &str| {
            env(name)
                .or_else(|| env(&name.to_ascii_lowercase()))
                .filter(|v| !v.is_empty())
        };
        let secure = target.starts_with("wss://") || target.starts_with("https://");
        let from_env = if secure {
            var("HTTPS_PROXY")
        } else {
            var("HTTP_PROXY")
        }
        .or_else(|| var("ALL_PROXY"));
        let Some(url) = from_env else {
            return Ok(None);
        };
        let (host, port) = target_host_port(target).unwrap_or_default();
        if let Some(list) = var("NO_PROXY")
            && no_proxy_matches(&list, &host, port)
        {
            return Ok(None);
        }
        Proxy::parse(&url).map(Some)
    }

    /// Opens a TCP connection to the proxy and asks it for a tunnel to
    /// `host:port`. The returned stream carries the tunnel.
    pub(crate) async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, ProxyError> {
        let mut stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| ProxyError::Unreachable(format!("{self}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let target = authority(host, port);
        let mut request = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: {}\r\n",
            crate::agent::SOFTWARE
        );
        if let Some((user, password)) = &self.credentials {
            let token = STANDARD.encode(format!("{user}:{password}"));
            request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| ProxyError::Unreachable(format!("{self}: {e}")))?;
        let status = read_connect_answer(&mut stream)
            .await
            .map_err(|e| ProxyError::Protocol(format!("{self}: {e}")))?;
        match status {
            (200..=299, _) => Ok(stream),
            (code, reason) => Err(ProxyError::Refused {
                proxy: self.to_string(),
                target,
                status: code,
                reason,
            }),
        }
    }
}

/// Why a tunnel through the proxy could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The proxy could not be reached.
    #[error("cannot reach the proxy {0}")]
    Unreachable(String),
    /// The proxy answered something that is not HTTP.
    #[error("bad answer from the proxy {0}")]
    Protocol(String),
    /// The proxy refused the tunnel.
    #[error("the proxy {proxy} refused CONNECT {target}: {status} {reason}")]
    Refused {
        /// The proxy, without credentials.
        proxy: String,
        /// What was asked for.
        target: String,
        /// Its HTTP status (407 for missing or wrong credentials).
        status: u16,
        /// Its reason phrase.
        reason: String,
    },
}

/// Reads the proxy's answer head, byte by byte so nothing of the tunnel
/// behind it is consumed. Returns the status and reason phrase.
async fn read_connect_answer(stream: &mut TcpStream) -> Result<(u16, String), String> {
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_PROXY_RESPONSE_BYTES {
            return Err(format!(
                "its answer exceeds {MAX_PROXY_RESPONSE_BYTES} bytes"
            ));
        }
        match stream.read_u8().await {
            Ok(b) => head.push(b),
            Err(e) => return Err(format!("connection ended in its answer: {e}")),
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&head) {
        Ok(httparse::Status::Complete(_)) => Ok((
            response.code.unwrap_or_default(),
            response.reason.unwrap_or_default().to_owned(),
        )),
        Ok(httparse::Status::Partial) => Err("incomplete answer".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether a `NO_PROXY` list covers `host` (and `port`): `*` covers all;
/// entries are names (`example.com` and `.example.com` both cover the name
/// and its subdomains), addresses, or either with `:port`.
///
/// ```
/// use rtunnel_agent::http_proxy::no_proxy_matches;
///
/// assert!(no_proxy_matches("localhost, .corp.example", "gw.corp.example", 443));
/// assert!(no_proxy_matches("corp.example:443", "corp.example", 443));
/// assert!(!no_proxy_matches("corp.example:8443", "corp.example", 443));
/// assert!(!no_proxy_matches("example.com", "notexample.com", 443));
/// ```
pub fn no_proxy_matches(list: &str, host: &str, port: u16) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let (name, entry_port) = split_entry_port(entry);
            if entry_port.is_some_and(|p| p != port) {
                return false;
            }
            let name = name
                .trim_start_matches("*.")
                .trim_start_matches('.')
                .trim_end_matches('.')
                .to_ascii_lowercase();
            !name.is_empty() && (host == name || host.ends_with(&format!(".{name}")))
        })
}

/// Splits `name:port`, `[v6]:port`, leaving a bare IPv6 address whole.
fn split_entry_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((addr, tail)) => (addr, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (entry, None),
        };
    }
    match entry.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => match port.parse() {
            Ok(p) => (name, Some(p)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

/// `host:port`, bracketing an IPv6 address.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The host (without brackets) and port of a `ws(s)://` or `http(s)://` URL.
pub(crate) fn target_host_port(target: &str) -> Option<(String, u16)> {
    let url = url::Url::parse(target).ok()?;
    let host = match url.host()? {
        url::Host::Domain(d) => d.to_owned(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => ip.to_string(),
    };
    Some((host, url.port_or_known_default()?))
}

/// The URL with any password replaced, for error messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proxy_urls() {
        let p = Proxy::parse("http://u%3Ax:p%40ss@127.0.0.1:3128").unwrap();
        assert_eq!(p.host, "127.0.0.1");
        assert_eq!(p.port, 3128);
        assert_eq!(p.credentials, Some(("u:x".into(), "p@ss".into())));
        assert_eq!(Proxy::parse("proxy.corp").unwrap().port, 80);
        assert_eq!(Proxy::parse("http://[::1]:8080").unwrap().host, "::1");
        let e = Proxy::parse("https://user:secret@proxy.corp:443").unwrap_err();
        assert!(e.to_string().contains("only http://"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(Proxy::parse("http://proxy.corp:3128/some/path").is_err());
        assert!(Proxy::parse("http://:3128").is_err());
    }

    #[test]
    fn debug_and_display_hide_the_password() {
        let p = Proxy::parse("http://alice:hunter2@proxy:3128").unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
        assert!(!p.to_string().contains("hunter2"));
    }

    #[test]
    fn resolve_prefers_the_flag_then_the_scheme_variable() {
        let env = |name: &str| match name {
            "https_proxy" => Some("http://secure:1".to_owned()),
            "HTTP_PROXY" => Some("http://plain:2".to_owned()),
            "ALL_PROXY" => Some("http://all:3".to_owned()),
            _ => None,
        };
        let show = |p: Option<Proxy>| p.map(|p| p.to_string());
        assert_eq!(
            show(Proxy::resolve(Some("http://flag:9"), "wss://s/x", env).unwrap()),
            Some("http://flag:9".into())
        );
        assert_eq!(
            show(Proxy::resolve(None, "wss://s/x", env).unwrap()),
            Some("http://secure:1".into())
        );
        assert_eq!(
            show(Proxy::resolve(None, "ws://s/x", env).unwrap()),
            Some("http://plain:2".into())
        );
        let only_all = |name: &str| (name == "ALL_PROXY").then(|| "http://all:3".to_owned());
        assert_eq!(
            show(Proxy::resolve(None, "ws://s/x", only_all).unwrap()),
            Some("http://all:3".into())
        );
        assert_eq!(Proxy::resolve(None, "ws://s/x", |_| None).unwrap(), None);
    }

    #[test]
    fn no_proxy_applies_to_the_environment_only() {
        let env = |name: &str| match name {
            "HTTPS_PROXY" => Some("http://proxy:3128".to_owned()),
            "NO_PROXY" => Some("127.0.0.1,[::1]:8443".to_owned()),
            _ => None,
        };
        assert_eq!(
            Proxy::resolve(None, "wss://127.0.0.1:8443/t", env).unwrap(),
            None
        );
        assert_eq!(
            Proxy::resolve(None, "wss://[::1]:8443/t", env).unwrap(),
            None
        );
        assert!(
            Proxy::resolve(None, "wss://[::1]:443/t", env)
                .unwrap()
                .is_some()
        );
        assert!(
            Proxy::resolve(Some("http://proxy:3128"), "wss://127.0.0.1/t", env)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn no_proxy_entries() {
        assert!(no_proxy_matches("*", "anything", 1));
        assert!(no_proxy_matches("example.com", "EXAMPLE.com.", 443));
        assert!(no_proxy_matches("*.example.com", "a.b.example.com", 443));
        assert!(!no_proxy_matches(".example.com", "example.org", 443));
        assert!(no_proxy_matches("::1", "[::1]", 443));
        assert!(!no_proxy_matches("", "example.com", 443));
    }

    async fn fake_proxy(answer: &'static [u8]) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 1024];
            let n = s.read(&mut buf).await.unwrap();
            buf.truncate(n);
            s.write_all(answer).await.unwrap();
            buf
        });
        (port, task)
    }

    #[tokio::test]
    async fn sends_connect_with_credentials_and_reads_the_answer() {
        let (port, task) = fake_proxy(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
        let proxy = Proxy::parse(&format!("http://alice:s3cret@127.0.0.1:{port}")).unwrap();
        proxy.connect("server.example", 443).await.unwrap();
        let request = String::from_utf8(task.await.unwrap()).unwrap();
        assert!(request.starts_with("CONNECT server.example:443 HTTP/1.1\r\n"));
        assert!(request.contains("Host: server.example:443\r\n"));
        let token = STANDARD.encode("alice:s3cret");
        assert!(request.contains(&format!("Proxy-Authorization: Basic {token}\r\n")));
    }

    #[tokio::test]
    async fn a_refusal_carries_the_status() {
        let (port, _task) =
            fake_proxy(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                .await;
        let proxy = Proxy::parse(&format!("127.0.0.1:{port}")).unwrap();
        let e = proxy.connect("::1", 8443).await.unwrap_err();
        assert!(matches!(e, ProxyError::Refused { status: 407, .. }), "{e}");
        assert!(e.to_string().contains("CONNECT [::1]:8443"), "{e}");
    }

    #[tokio::test]
    async fn an_endless_answer_is_cut_at_the_limit() {
        static JUNK: [u8; MAX_PROXY_RESPONSE_BYTES + 10] = [b'x'; MAX_PROXY_RESPONSE_BYTES + 10];
        let (port, _task) = fake_proxy(&JUNK).await;
        let proxy = Proxy::parse(&format!("127.0.0.1:{port}")).unwrap();
        let e = proxy.connect("s", 443).await.unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
    }
}
