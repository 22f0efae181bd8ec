//! The server's metrics, served as Prometheus text on `--metrics-listen`
//! (off by default; keep it on an internal address).
//!
//! One set per process ([`global`]): the code that counts is spread over
//! every path (the tunnel, streams, logins, the stores), and a scrape
//! reads it whole. The gauges (tunnels, live sessions) are read at each
//! scrape from the server itself.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `rtunnel_tunnels` | gauge | live tunnels on this node |
//! | `rtunnel_connections` | gauge | `thread`: connections held by each connection thread (`--threads`) |
//! | `rtunnel_sessions` | gauge | `state`: `pending`, `active`, `grace_period` (all nodes) |
//! | `rtunnel_streams_opened_total` | counter | `kind`: `tcp`, `pty`, `http` |
//! | `rtunnel_streams_refused_total` | counter | `code`: the refusal code |
//! | `rtunnel_bytes_total` | counter | `direction`: `to_service`, `from_service` |
//! | `rtunnel_auth_failures_total` | counter | `kind`: `login`, `tunnel`, `token` |
//! | `rtunnel_tunnel_handshake_seconds` | histogram | from the WebSocket upgrade to the tunnel active |
//! | `rtunnel_stream_open_seconds` | histogram | from asking for a stream to the agent's answer |
//! | `rtunnel_store_errors_total` | counter | database failures |
//! | `rtunnel_redis_errors_total` | counter | Redis failures (a cluster) |

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rtunnel_core::metrics::latency_buckets;
use rtunnel_core::store::{Page, SessionFilter, SessionStatus};

use crate::state::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Code {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Thread {
    thread: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: String,
}

/// Scrapes within this long of the last count reuse its session counts.
const COUNT_SESSIONS_EVERY: Duration = Duration::from_secs(1);

/// The server's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    tunnels: Gauge,
    connections: Family<Thread, Gauge>,
    sessions: Family<State, Gauge>,
    streams_opened: Family<Kind, Counter>,
    streams_refused: Family<Code, Counter>,
    bytes: Family<Direction, Counter>,
    auth_failures: Family<Kind, Counter>,
    handshake: Histogram,
    stream_open: Histogram,
    store_errors: Counter,
    /// When the sessions were last counted: scrapes within a second of it
    /// reuse the counts (the database is not asked more than once a
    /// second, however often the port is scraped).
    counted_at: tokio::sync::Mutex<Option<std::time::Instant>>,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    redis_errors: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// This process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("rtunnel");
        let tunnels = Gauge::default();
        registry.register("tunnels", "Live tunnels on this node", tunnels.clone());
        let connections = Family::<Thread, Gauge>::default();
        registry.register(
            "connections",
            "Connections held, by connection thread (--threads)",
            connections.clone(),
        );
        let sessions = Family::<State, Gauge>::default();
        registry.register(
            "sessions",
            "Sessions not ended, by state (every node's)",
            sessions.clone(),
        );
        let streams_opened = Family::<Kind, Counter>::default();
        registry.register(
            "streams_opened",
            "Streams opened to agents, by kind",
            streams_opened.clone(),
        );
        let streams_refused = Family::<Code, Counter>::default();
        registry.register(
            "streams_refused",
            "Streams refused to operators, by refusal code",
            streams_refused.clone(),
        );
        let bytes = Family::<Direction, Counter>::default();
        registry.register(
            "bytes",
            "Bytes relayed between operators and services",
            bytes.clone(),
        );
        let auth_failures = Family::<Kind, Counter>::default();
        registry.register(
            "auth_failures",
            "Refused logins, agent credentials and bearer tokens",
            auth_failures.clone(),
        );
        let handshake = Histogram::new(latency_buckets());
        registry.register(
            "tunnel_handshake_seconds",
            "From an agent's WebSocket upgrade to its tunnel active",
            handshake.clone(),
        );
        let stream_open = Histogram::new(latency_buckets());
        registry.register(
            "stream_open_seconds",
            "From asking for a stream to the agent's answer",
            stream_open.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Database operations that failed",
            store_errors.clone(),
        );
        let redis_errors = Counter::default();
        registry.register(
            "redis_errors",
            "Redis operations that failed",
            redis_errors.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                tunnels,
                connections,
                sessions,
                streams_opened,
                streams_refused,
                bytes,
                auth_failures,
                handshake,
                stream_open,
                store_errors,
                redis_errors,
                counted_at: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// The gauge of the connections held by connection thread `thread`.
    pub(crate) fn connections_on(&self, thread: &str) -> Gauge {
        self.inner
            .connections
            .get_or_create(&Thread {
                thread: thread.into(),
            })
            .clone()
    }

    /// A stream to an agent opened, after `took`.
    pub(crate) fn stream_opened(&self, kind: &str, took: Duration) {
        self.inner
            .streams_opened
            .get_or_create(&Kind { kind: kind.into() })
            .inc();
        self.inner.stream_open.observe(took.as_secs_f64());
    }

    /// A stream was refused with `code`.
    pub(crate) fn stream_refused(&self, code: &str) {
        self.inner
            .streams_refused
            .get_or_create(&Code { code: code.into() })
            .inc();
    }

    /// A connection ended having relayed these bytes.
    pub(crate) fn relayed(&self, to_service: u64, from_service: u64) {
        for (direction, n) in [("to_service", to_service), ("from_service", from_service)] {
            self.inner
                .bytes
                .get_or_create(&Direction {
                    direction: direction.into(),
                })
                .inc_by(n);
        }
    }

    /// A login, agent credential or bearer token was refused.
    pub(crate) fn auth_failed(&self, kind: &str) {
        self.inner
            .auth_failures
            .get_or_create(&Kind { kind: kind.into() })
            .inc();
    }

    /// A tunnel became active `took` after its upgrade.
    pub(crate) fn handshake(&self, took: Duration) {
        self.inner.handshake.observe(took.as_secs_f64());
    }

    /// A database operation failed.
    pub(crate) fn store_error(&self) {
        self.inner.store_errors.inc();
    }

    /// A Redis operation failed.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn redis_error(&self) {
        self.inner.redis_errors.inc();
    }

    /// One scrape: the gauges read from `state`, then every metric.
    pub(crate) async fn render(&self, state: &AppState) -> String {
        self.inner.tunnels.set(state.tunnels.registry.len() as i64);
        let mut counted_at = self.inner.counted_at.lock().await;
        if counted_at.is_some_and(|at| at.elapsed() < COUNT_SESSIONS_EVERY) {
            return rtunnel_core::metrics::encode(&self.inner.registry);
        }
        *counted_at = Some(std::time::Instant::now());
        for status in [
            SessionStatus::Pending,
            SessionStatus::Active,
            SessionStatus::GracePeriod,
        ] {
            let filter = SessionFilter {
                status: Some(status),
                ..SessionFilter::default()
            };
            let page = Page {
                page: 1,
                page_size: 1,
            };
            match state
                .stores
                .sessions
                .list_sessions(&filter, rtunnel_core::store::now_millis(), page)
                .await
            {
                Ok(found) => {
                    self.inner
                        .sessions
                        .get_or_create(&State {
                            state: status.as_str().into(),
                        })
                        .set(found.total as i64);
                }
                Err(e) => {
                    self.store_error();
                    tracing::warn!(error = %e, "metrics: cannot count sessions");
                }
            }
        }
        rtunnel_core::metrics::encode(&self.inner.registry)
    }
}
