//! The runtime the `rtunnel-agent` binary runs on.
//!
//! Everything an agent or a `forward` does goes through one connection
//! (its tunnel or its WebSocket to the server), whose multiplexer is one
//! task: a second worker thread adds no throughput to it, only hand-overs
//! between cores. On tokio's multi-thread runtime a frame woke the other
//! worker at nearly every step (the connection's reader, the stream's
//! relay, the writer); on one thread the agent and `forward` each spent
//! about a third less CPU per request (docs/PERFORMANCE.md, "Connection
//! threads"). So the binary runs on a single thread unless
//! `RTUNNEL_AGENT_THREADS` asks for more (a multi-thread runtime with that
//! many workers), for an agent whose many streams' relays should spread
//! over cores. The access log is written on tokio's blocking threads; a
//! few short steps still block the one thread for their milliseconds
//! (saving the state file, loading the system's CA certificates at a dial,
//! starting a terminal's shell), as docs/OPERATIONS.md, "Threads", lists.

use tokio::runtime::{Builder, Runtime};

/// The variable that sets the worker threads.
pub const THREADS_VAR: &str = "RTUNNEL_AGENT_THREADS";

/// A runtime of `threads` workers, as [`THREADS_VAR`] reads (`None`: one).
///
/// ```
/// let rt = rtunnel_agent::runtime::build(Some("1")).unwrap();
/// assert_eq!(
///     rt.handle().runtime_flavor(),
///     tokio::runtime::RuntimeFlavor::CurrentThread
/// );
/// assert!(rtunnel_agent::runtime::build(Some("zero")).is_err());
/// ```
pub fn build(threads: Option<&str>) -> Result<Runtime, String> {
    let threads = match threads.map(str::trim) {
        None | Some("") => 1,
        Some(v) => match v.parse::<usize>() {
            Ok(n @ 1..=1024) => n,
            _ => {
                return Err(format!(
                    "{THREADS_VAR} must be a number of threads from 1 to 1024, not {v:?}"
                ));
            }
        },
    };
    let mut builder = if threads == 1 {
        Builder::new_current_thread()
    } else {
        let mut b = Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn one_thread_unless_asked_for_more() {
        let flavor = |v| build(v).unwrap().handle().runtime_flavor();
        assert_eq!(flavor(None), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(Some(" 1 ")), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(Some("3")), RuntimeFlavor::MultiThread);
        let workers = build(Some("3")).unwrap().metrics().num_workers();
        assert_eq!(workers, 3);
        for bad in ["0", "-1", "two", "1025"] {
            let e = build(Some(bad)).unwrap_err();
            assert!(e.contains(THREADS_VAR) && e.contains(bad), "{e}");
        }
    }
}
