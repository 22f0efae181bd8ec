//! The HTTP/1.1 accept loop.
//!
//! `axum::serve` gives every connection unlimited time to send its request
//! head, so sockets that connect and say nothing would pile up. Here every
//! connection gets TCP_NODELAY, a limit on its request head's size and a
//! deadline for it ([`ServerConfig::handshake_timeout`], also the limit for
//! a tunnel's protocol handshake after the upgrade), WebSocket upgrades, and
//! a graceful end: on shutdown, idle keep-alive connections close and
//! requests in flight get a moment to finish.
//!
//! Connections are capped ([`ConnectionLimits`]): in all, and per client
//! address (IPv4, or IPv6 /64; the trusted reverse proxies are exempt, they
//! carry everyone's). A connection past a cap gets a short answer at once,
//! 503 `server_busy` or 429 `too_many_connections` with the error
//! envelope, and is closed: one client cannot hold every socket.
//!
//! [`ServerConfig::handshake_timeout`]: crate::ServerConfig::handshake_timeout

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Largest request head (request line and headers) the server reads.
pub(crate) const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// How long requests in flight may take to finish once shutdown starts.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How many connections the server holds at once.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimits {
    /// In all (`--max-connections`).
    pub total: usize,
    /// From one address, IPv4 or IPv6 /64 (`--max-connections-per-address`).
    pub per_address: usize,
    /// Addresses not capped one by one (the trusted reverse proxies).
    pub exempt: crate::client_addr::TrustedProxies,
}

/// The connections held, in all and per address.
#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_address: HashMap<String, usize>,
}

/// A connection's place under the caps (and on its connection thread), in
/// its requests' extensions: a handler that upgrades the connection (a
/// WebSocket) keeps a clone for as long as the upgraded connection lives,
/// so it stays counted after hyper has let go of it.
#[derive(Clone)]
pub(crate) struct HeldConnection(Arc<Slot>);

impl HeldConnection {
    /// The connection is now served on the connection thread `home`: it is
    /// counted there from now on.
    pub(crate) fn moved_to(&self, home: &crate::shards::Home) {
        let mut thread = self.0.thread.lock().unwrap_or_else(|p| p.into_inner());
        *thread = Some(home.enter());
    }
}

impl std::fmt::Debug for HeldConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeldConnection")
    }
}

/// One held connection; released when dropped.
struct Slot {
    held: Arc<Mutex<Held>>,
    address: Option<String>,
    /// Its place on its connection thread, if it has one.
    thread: Mutex<Option<crate::shards::OnShard>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.total -= 1;
        if let Some(address) = &self.address
            && let Some(n) = held.by_address.get_mut(address)
        {
            *n -= 1;
            if *n == 0 {
                held.by_address.remove(address);
            }
        }
    }
}

/// Why a connection was turned away.
enum Refused {
    Total,
    Address,
}

fn admit(held: &Arc<Mutex<Held>>, limits: &ConnectionLimits, ip: IpAddr) -> Result<Slot, Refused> {
    let mut h = held.lock().unwrap_or_else(|p| p.into_inner());
    if h.total >= limits.total {
        return Err(Refused::Total);
    }
    let address = (!limits.exempt.contains(ip)).then(|| crate::ratelimit::budget_address(ip));
    if let Some(address) = &address {
        let n = h.by_address.get(address).copied().unwrap_or(0);
        if n >= limits.per_address {
            return Err(Refused::Address);
        }
        h.by_address.insert(address.clone(), n + 1);
    }
    h.total += 1;
    Ok(Slot {
        held: held.clone(),
        address,
        thread: Mutex::new(None),
    })
}

/// An accepted socket: registered with this runtime, or let go of it to be
/// registered on a connection thread's.
enum Accepted {
    Here(TcpStream),
    Moved(std::net::TcpStream),
}

/// Answers a connection past a cap and closes it, within a second.
async fn turn_away(mut tcp: TcpStream, why: Refused) {
    let (status, code, message) = match why {
        Refused::Total => (
            "503 Service Unavailable",
            "server_busy",
            "the server holds as many connections as it may; try again shortly",
        ),
        Refused::Address => (
            "429 Too Many Requests",
            "too_many_connections",
            "too many connections from your address; close some and try again",
        ),
    };
    let body = serde_json::json!({
        "success": false,
        "error": message,
        "code": code,
        "trace_id": crate::error::new_trace_id(),
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Retry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = tcp.write_all(answer.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

/// How connections are taken in.
pub(crate) struct Accepting<'a> {
    /// Serve HTTPS.
    pub tls: Option<Arc<crate::TlsReloader>>,
    /// The deadline for a request head (and a TLS handshake).
    pub head_timeout: Duration,
    pub limits: ConnectionLimits,
    /// Serve each connection on the connection thread holding fewest;
    /// without, on the caller's runtime.
    pub shards: Option<&'a crate::shards::Shards>,
}

/// Serves `router` on `listener` until `shutdown` resolves. Then the
/// listener closes at once (nothing new lands on a process that is going
/// away), `drain` runs while open connections still work (the server tells
/// its agents to go), and connections get [`SHUTDOWN_GRACE`] to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    accepting: Accepting<'_>,
    shutdown: impl Future<Output = ()>,
    drain: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let Accepting {
        tls,
        head_timeout,
        limits,
        shards,
    } = accepting;
    let held = Arc::new(Mutex::new(Held::default()));
    // Turned-away connections are logged in a summary, at most every 10 s.
    let mut warned: Option<tokio::time::Instant> = None;
    let mut refused = 0u64;
    let stopping = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        // The buffer bound alone is soft (a head that arrives in one read
        // passes it); this one is exact and answers 431.
        .max_header_size(MAX_REQUEST_HEAD_BYTES)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(ok) => ok,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let mut slot = match admit(&held, &limits, peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                refused += 1;
                if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(
                        connections = refused,
                        latest = %peer.ip(),
                        "turned connections away: past --max-connections or --max-connections-per-address"
                    );
                    refused = 0;
                    warned = Some(tokio::time::Instant::now());
                }
                connections.spawn(turn_away(tcp, why));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        // On a connection thread the socket is registered with that
        // thread's runtime, so its readiness wakes the thread that serves it.
        let (tcp, runtime) = match shards {
            None => (Accepted::Here(tcp), None),
            Some(shards) => match tcp.into_std() {
                Ok(std) => {
                    let (home, on) = shards.pick();
                    slot.thread = Mutex::new(Some(on));
                    (Accepted::Moved(std), Some(home.handle()))
                }
                Err(e) => {
                    tracing::debug!(%peer, "could not hand the connection to a thread: {e}");
                    continue;
                }
            },
        };
        let held = HeldConnection(Arc::new(slot));
        let for_requests = held.clone();
        let service = router
            .clone()
            .map_request(move |mut req: axum::http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(for_requests.clone());
                req
            })
            .map_err(|e: Infallible| match e {});
        let stopping = stopping.clone();
        let builder = builder.clone();
        // Serves one connection until it ends or the server stops.
        macro_rules! drive {
            ($io:expr, $service:expr) => {{
                let conn = builder
                    .serve_connection(TokioIo::new($io), TowerToHyperService::new($service))
                    .with_upgrades();
                let mut conn = std::pin::pin!(conn);
                let ended = tokio::select! {
                    ended = conn.as_mut() => ended,
                    _ = stopping.cancelled() => {
                        // Finish the request in flight, if any, then close.
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = ended {
                    tracing::debug!(%peer, "HTTP connection ended: {e}");
                }
            }};
        }
        let acceptor = tls.as_ref().map(|tls| tls.acceptor());
        let work = async move {
            let _held = held;
            let tcp = match tcp {
                Accepted::Here(tcp) => tcp,
                Accepted::Moved(std) => match TcpStream::from_std(std) {
                    Ok(tcp) => tcp,
                    Err(e) => {
                        tracing::debug!(%peer, "could not take the connection on its thread: {e}");
                        return;
                    }
                },
            };
            let Some(acceptor) = acceptor else {
                drive!(tcp, service);
                return;
            };
            // The handshake has the request head's deadline.
            let stream = match tokio::time::timeout(head_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            // Browsers come back over HTTPS only.
            let service = service.map_response(|mut res: axum::response::Response| {
                res.headers_mut()
                    .entry(axum::http::header::STRICT_TRANSPORT_SECURITY)
                    .or_insert(axum::http::HeaderValue::from_static(crate::tls::HSTS));
                res
            });
            drive!(stream, service);
        };
        match runtime {
            None => connections.spawn(work),
            Some(runtime) => connections.spawn_on(work, runtime),
        };
    }
    drop(listener);
    drain.await;
    stopping.cancel();
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::info!("requests still running after {SHUTDOWN_GRACE:?}; leaving them");
    }
    Ok(())
}

/// Serves `router` on a loopback listener (with `shards`, if any) until
/// `client`, given the address, is done; what it returned. For tests.
#[cfg(test)]
pub(crate) async fn serve_for<T, F>(
    router: Router,
    shards: Option<&crate::shards::Shards>,
    client: impl FnOnce(std::net::SocketAddr) -> F,
) -> T
where
    F: Future<Output = T>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let accepting = Accepting {
        tls: None,
        head_timeout: Duration::from_secs(10),
        limits: ConnectionLimits {
            total: 16,
            per_address: 16,
            exempt: Default::default(),
        },
        shards,
    };
    let serving = serve(
        listener,
        router,
        accepting,
        async {
            let _ = stopped.await;
        },
        async {},
    );
    let asking = async {
        let out = client(addr).await;
        let _ = stop.send(());
        out
    };
    let (served, out) = tokio::join!(serving, asking);
    served.unwrap();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Serves a router that answers with the name of the thread serving
    /// the request; the answers to `requests` connections.
    async fn thread_names(shards: Option<&crate::shards::Shards>, requests: usize) -> Vec<String> {
        let router = Router::new().route(
            "/",
            axum::routing::get(|| async { std::thread::current().name().unwrap_or("").to_owned() }),
        );
        serve_for(router, shards, |addr| async move {
            let mut names = Vec::new();
            for _ in 0..requests {
                let mut tcp = TcpStream::connect(addr).await.unwrap();
                tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await
                    .unwrap();
                let mut answer = String::new();
                tcp.read_to_string(&mut answer).await.unwrap();
                names.push(answer.split("\r\n\r\n").nth(1).unwrap().to_owned());
            }
            names
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_served_on_connection_threads_when_there_are_some() {
        let shards = crate::shards::Shards::start(2).unwrap();
        let names = thread_names(Some(&shards), 3).await;
        for name in &names {
            assert!(name.starts_with("rtunnel-conn-"), "{names:?}");
        }
        // Without threads, the caller's runtime serves them.
        for name in thread_names(None, 2).await {
            assert!(!name.starts_with("rtunnel-conn-"), "{name}");
        }
    }
}
