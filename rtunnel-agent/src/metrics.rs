//! The agent's metrics, served as Prometheus text on `--metrics-listen`
//! (off by default; the customer's own monitoring scrapes it).
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `rtunnel_agent_connected` | gauge | 1 while the tunnel is up |
//! | `rtunnel_agent_connects_total` | counter | tunnels established |
//! | `rtunnel_agent_connect_failures_total` | counter | attempts that failed |
//! | `rtunnel_agent_handshake_seconds` | histogram | from dialing to the tunnel active |
//! | `rtunnel_agent_streams_opened_total` | counter | `service` |
//! | `rtunnel_agent_streams_refused_total` | counter | `code` |
//! | `rtunnel_agent_bytes_total` | counter | `direction`: `to_service`, `from_service` |
//! | `rtunnel_agent_service_dial_seconds` | histogram | connecting to a service (TLS included) |

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rtunnel_core::metrics::latency_buckets;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Service {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Code {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: String,
}

/// The agent's metrics (one set per process).
pub struct Metrics {
    registry: Registry,
    connected: Gauge,
    connects: Counter,
    connect_failures: Counter,
    handshake: Histogram,
    opened: Family<Service, Counter>,
    refused: Family<Code, Counter>,
    bytes: Family<Direction, Counter>,
    dial: Histogram,
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
        let mut registry = Registry::with_prefix("rtunnel_agent");
        let connected = Gauge::default();
        registry.register("connected", "1 while the tunnel is up", connected.clone());
        let connects = Counter::default();
        registry.register("connects", "Tunnels established", connects.clone());
        let connect_failures = Counter::default();
        registry.register(
            "connect_failures",
            "Attempts to establish the tunnel that failed",
            connect_failures.clone(),
        );
        let handshake = Histogram::new(latency_buckets());
        registry.register(
            "handshake_seconds",
            "From dialing the server to the tunnel active",
            handshake.clone(),
        );
        let opened = Family::<Service, Counter>::default();
        registry.register(
            "streams_opened",
            "Streams served, by service",
            opened.clone(),
        );
        let refused = Family::<Code, Counter>::default();
        registry.register(
            "streams_refused",
            "Streams refused, by refusal code",
            refused.clone(),
        );
        let bytes = Family::<Direction, Counter>::default();
        registry.register("bytes", "Bytes relayed to and from services", bytes.clone());
        let dial = Histogram::new(latency_buckets());
        registry.register(
            "service_dial_seconds",
            "Connecting to a service (TLS included)",
            dial.clone(),
        );
        Metrics {
            registry,
            connected,
            connects,
            connect_failures,
            handshake,
            opened,
            refused,
            bytes,
            dial,
        }
    }

    pub(crate) fn connected(&self, took: Duration) {
        self.connected.set(1);
        self.connects.inc();
        self.handshake.observe(took.as_secs_f64());
    }

    pub(crate) fn disconnected(&self) {
        self.connected.set(0);
    }

    pub(crate) fn connect_failed(&self) {
        self.connect_failures.inc();
    }

    pub(crate) fn stream_opened(&self, service: &str, dial: Option<Duration>) {
        self.opened
            .get_or_create(&Service {
                service: service.into(),
            })
            .inc();
        if let Some(d) = dial {
            self.dial.observe(d.as_secs_f64());
        }
    }

    pub(crate) fn stream_refused(&self, code: &str) {
        self.refused
            .get_or_create(&Code { code: code.into() })
            .inc();
    }

    pub(crate) fn relayed(&self, to_service: u64, from_service: u64) {
        for (direction, n) in [("to_service", to_service), ("from_service", from_service)] {
            self.bytes
                .get_or_create(&Direction {
                    direction: direction.into(),
                })
                .inc_by(n);
        }
    }

    /// The text of one scrape.
    pub fn render(&self) -> String {
        rtunnel_core::metrics::encode(&self.registry)
    }
}
