//! Connection threads: each a tokio runtime of one thread, and every
//! accepted connection served on one of them from start to end
//! (`--threads`, [`ServerConfig::threads`]).
//!
//! On tokio's shared multi-thread runtime a connection's tasks (its HTTP
//! connection, a tunnel's mux driver, the relays of its streams) move
//! between workers: a task woken on one worker wakes the other to take
//! part of the queue, and each frame's hand-over between the tasks of one
//! tunnel can cross cores. Measured on the forward path (two vCPUs, the
//! server, agent and `forward` busy together), that hand-over was about
//! half of the server's CPU per request. Here a connection and every task
//! it spawns stay on its thread (the model of nginx's and Envoy's
//! workers), and connections are spread over the threads by how many each
//! holds. A stream between two connections on different threads crosses
//! where its relay meets the other connection, and then costs what it
//! costs on the shared runtime. So a `forward` does not stay where it was
//! accepted: once its upgrade names its session, it goes on to the thread
//! of the connection its streams will use ([`Home`]): its tunnel's, or the
//! mesh connection's to the node holding the tunnel (a plain connection
//! only; TLS cannot be taken apart and stays).
//!
//! The work that is not a connection's (the background, the database's
//! own threads) stays on the runtime that started the server; the node
//! mesh's accepted connections go to the thread their ClientHello asks for
//! (`crate::cluster::mesh`). What a connection creates on first use and
//! others then share (the database and Redis connections it opened, the
//! access log's writer) lives on its thread, and ends with the threads
//! when the server's `serve` returns.
//!
//! [`ServerConfig::threads`]: crate::ServerConfig::threads

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The connection threads of one server; they stop when it is dropped
/// (tasks still on them are dropped with their runtime).
pub(crate) struct Shards {
    shards: Vec<Home>,
    /// Ends every thread's runtime (the threads are not joined: joining
    /// from inside another runtime would block it).
    stop: CancellationToken,
}

/// How many more connections than the least-loaded thread a thread may
/// hold and still take a connection that follows its tunnel there: past
/// it, a `forward` stays where it was accepted (many operators on one
/// tunnel, or one operator opening forward after forward, do not pile onto
/// one thread).
pub(crate) const FOLLOW_SLACK: usize = 64;

/// One connection thread: where to spawn on it, and how many connections
/// it holds.
#[derive(Clone)]
pub(crate) struct Home {
    index: usize,
    handle: Handle,
    /// Connections on each of the server's threads now, this one's at
    /// `index`.
    live: Arc<[AtomicUsize]>,
}

thread_local! {
    /// The connection thread this is, on one.
    static HERE: std::cell::RefCell<Option<Home>> = const { std::cell::RefCell::new(None) };
}

/// The connection thread the caller runs on, if it runs on one: what a
/// tunnel records, so the connections that use it can follow it there.
pub(crate) fn here() -> Option<Home> {
    HERE.with(|h| h.borrow().clone())
}

impl Home {
    /// Its place among the server's threads (`rtunnel-conn-INDEX`).
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// The runtime of this thread.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Whether the caller runs on this thread (of this server: two servers
    /// in one process have threads of the same index).
    pub(crate) fn is_here(&self) -> bool {
        HERE.with(|h| {
            h.borrow()
                .as_ref()
                .is_some_and(|h| h.index == self.index && Arc::ptr_eq(&h.live, &self.live))
        })
    }

    /// Whether a connection may follow its tunnel here: the thread holds
    /// at most [`FOLLOW_SLACK`] more than the least-loaded one.
    pub(crate) fn takes_followers(&self) -> bool {
        let least = self
            .live
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        self.live[self.index].load(Ordering::Relaxed) <= least + FOLLOW_SLACK
    }

    /// Serves `tcp` on this thread with `serve`: the socket is let go of by
    /// the caller's runtime and registered with this thread's, so its
    /// readiness wakes the thread that serves it. An error if the socket
    /// could not be let go of (it is closed then).
    pub(crate) fn take<F, Fut>(
        &self,
        tcp: tokio::net::TcpStream,
        serve: F,
    ) -> std::io::Result<tokio::task::JoinHandle<()>>
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let std = tcp.into_std()?;
        Ok(self.handle.spawn(async move {
            match tokio::net::TcpStream::from_std(std) {
                Ok(tcp) => serve(tcp).await,
                Err(e) => tracing::debug!("could not take the connection on its thread: {e}"),
            }
        }))
    }

    /// Counts one more connection on this thread, until the place is
    /// dropped.
    pub(crate) fn enter(&self) -> OnShard {
        self.live[self.index].fetch_add(1, Ordering::Relaxed);
        let gauge = crate::metrics::global().connections_on(&self.index.to_string());
        gauge.inc();
        OnShard {
            live: self.live.clone(),
            index: self.index,
            gauge,
        }
    }
}

impl std::fmt::Debug for Home {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rtunnel-conn-{}", self.index)
    }
}

/// A connection's place on its thread: counted until dropped.
pub(crate) struct OnShard {
    live: Arc<[AtomicUsize]>,
    index: usize,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for OnShard {
    fn drop(&mut self) {
        self.live[self.index].fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

impl Shards {
    /// Starts `n` threads (`rtunnel-conn-0`, ...), each running a runtime
    /// of its own.
    pub(crate) fn start(n: usize) -> std::io::Result<Shards> {
        // Built up in place: if one thread cannot start, dropping what
        // there is stops the threads already running.
        let mut started = Shards {
            shards: Vec::with_capacity(n),
            stop: CancellationToken::new(),
        };
        let live: Arc<[AtomicUsize]> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        for index in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let home = Home {
                index,
                handle: runtime.handle().clone(),
                live: live.clone(),
            };
            let stop = started.stop.clone();
            let its_own = home.clone();
            std::thread::Builder::new()
                .name(format!("rtunnel-conn-{index}"))
                .spawn(move || {
                    HERE.with(|h| *h.borrow_mut() = Some(its_own));
                    runtime.block_on(stop.cancelled());
                    // The thread's own handle goes before its runtime.
                    HERE.with(|h| h.borrow_mut().take());
                })?;
            started.shards.push(home);
        }
        Ok(started)
    }

    /// The thread holding the fewest connections, and the new connection's
    /// place on it.
    pub(crate) fn pick(&self) -> (&Home, OnShard) {
        let home = self.least_loaded();
        (home, home.enter())
    }

    /// The thread holding the fewest connections.
    pub(crate) fn least_loaded(&self) -> &Home {
        self.shards
            .iter()
            .min_by_key(|s| s.live[s.index].load(Ordering::Relaxed))
            .expect("at least one connection thread")
    }

    /// The threads, in order.
    #[cfg_attr(not(any(test, feature = "redis")), allow(dead_code))]
    pub(crate) fn homes(&self) -> &[Home] {
        &self.shards
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        // A runtime that is dropped drops its tasks; a task's drop does not
        // block, so the threads end promptly.
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_go_to_the_thread_holding_fewest_and_stay_there() {
        let shards = Shards::start(2).unwrap();
        let (first, a) = shards.pick();
        let first = first.handle().clone();
        let (second, b) = shards.pick();
        let second = second.handle().clone();
        // Two connections, one on each thread.
        let name = |h: &Handle| {
            let h = h.clone();
            async move {
                h.spawn(async {
                    // What a connection spawns stays on its thread too.
                    tokio::spawn(async { std::thread::current().name().map(str::to_owned) })
                        .await
                        .unwrap()
                })
                .await
                .unwrap()
            }
        };
        let (n1, n2) = (name(&first).await.unwrap(), name(&second).await.unwrap());
        assert!(n1.starts_with("rtunnel-conn-"), "{n1}");
        assert!(n2.starts_with("rtunnel-conn-"), "{n2}");
        assert_ne!(n1, n2);
        // The first ends: the next connection goes where it was.
        drop(a);
        let (third, _c) = shards.pick();
        assert_eq!(name(third.handle()).await.unwrap(), n1);
        drop(b);
    }

    #[tokio::test]
    async fn a_thread_takes_followers_up_to_a_slack_over_the_least_loaded() {
        let shards = Shards::start(2).unwrap();
        let (busy, other) = (shards.homes()[0].clone(), shards.homes()[1].clone());
        let mut held: Vec<OnShard> = (0..FOLLOW_SLACK).map(|_| busy.enter()).collect();
        assert!(busy.takes_followers());
        held.push(busy.enter());
        assert!(
            !busy.takes_followers(),
            "{} over the other",
            FOLLOW_SLACK + 1
        );
        assert!(other.takes_followers());
        // The other thread fills too: the first may take followers again.
        let _also: Vec<OnShard> = (0..2).map(|_| other.enter()).collect();
        assert!(busy.takes_followers());
        // And a place given up is counted off.
        held.truncate(1);
        assert!(busy.takes_followers() && other.takes_followers());
    }

    #[tokio::test]
    async fn dropping_the_threads_ends_them() {
        let shards = Shards::start(1).unwrap();
        let (home, _on) = shards.pick();
        let handle = home.handle().clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        handle.spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await
        });
        drop(shards);
        // The pending task was dropped with its runtime: its sender closes.
        tokio::time::timeout(std::time::Duration::from_secs(10), rx)
            .await
            .expect("the thread's runtime ended")
            .unwrap_err();
    }
}
