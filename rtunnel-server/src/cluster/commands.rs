//! Commands to every node, over Redis pub/sub.
//!
//! The node that decides something acts on its own tunnels at once and
//! publishes the command; every other node acts on its tunnels when it
//! receives it. Pub/sub forgets what it said to a node that was not
//! listening, so after (re)subscribing a node catches up: its open
//! connections check access again and every tunnel it holds is checked
//! against its session in the database.

#[cfg(feature = "redis")]
pub(super) use over_redis::{listen, publish};
use rtunnel_core::ids::{SessionId, SystemId};
use rtunnel_core::proto::CloseCode;
use serde::{Deserialize, Serialize};

/// What one node tells the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub(crate) enum Command {
    /// Close the tunnel of a session, telling its agent why.
    CloseTunnel {
        /// The session.
        session_id: SessionId,
        /// The close code the agent sees.
        code: CloseCode,
        /// The reason the agent sees.
        reason: String,
    },
    /// Access changed: open connections check theirs again.
    AccessChanged,
    /// A tunnel of this session (or system) became live on the sending
    /// node: any other copy is stale.
    TunnelAttached {
        /// The session.
        session_id: SessionId,
        /// Its system.
        system_id: SystemId,
    },
    /// The tunnel of this session ended on the sending node: a route to it
    /// read before is stale. (A node that does not know this command logs
    /// it as one that does not parse and goes on.)
    TunnelDetached {
        /// The session.
        session_id: SessionId,
    },
    /// Something subscribers to live changes hear of.
    Changed {
        /// What changed.
        change: crate::events::Change,
    },
}

/// Publishing and receiving commands (feature `redis`).
#[cfg(feature = "redis")]
mod over_redis {
    use rtunnel_core::proto::CloseCode;
    use rtunnel_core::store::redis::Delivery;
    use serde::{Deserialize, Serialize};
    use tokio::sync::mpsc;

    use super::Command;
    use crate::cluster::Shared;
    use crate::state::AppState;

    /// Longest command message read.
    const MAX_COMMAND_BYTES: usize = 16 * 1024;

    #[derive(Debug, Serialize, Deserialize)]
    struct Envelope {
        from: String,
        #[serde(flatten)]
        command: Command,
    }

    pub(crate) async fn publish(live: &Shared, node_id: &str, command: Command) {
        let envelope = Envelope {
            from: node_id.to_owned(),
            command,
        };
        let Ok(text) = serde_json::to_string(&envelope) else {
            return;
        };
        if let Err(e) = live.pubsub.publish(&text).await {
            // The other nodes still catch up: access through the database's
            // access epoch (within ACCESS_POLL),
            // tunnels when they next subscribe.
            tracing::warn!(error = %e, command = ?envelope.command, "cannot tell the other nodes");
        }
    }

    /// Receives commands until the server shuts down.
    pub(crate) async fn listen(state: &AppState, live: &Shared) {
        let (tx, mut rx) = mpsc::channel(256);
        let subscription = live.pubsub.run(tx);
        let handle = async {
            while let Some(delivery) = rx.recv().await {
                match delivery {
                    Delivery::Subscribed => {
                        tracing::info!("listening to the other nodes' commands");
                        catch_up(state).await;
                    }
                    Delivery::Message(text) => handle(state, &text).await,
                }
            }
        };
        tokio::join!(subscription, handle);
    }

    async fn handle(state: &AppState, text: &str) {
        if text.len() > MAX_COMMAND_BYTES {
            tracing::warn!(bytes = text.len(), "ignoring an oversized command");
            return;
        }
        let envelope: Envelope = match serde_json::from_str(text) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a command that does not parse");
                return;
            }
        };
        if envelope.from == state.tunnels.cluster.node_id() {
            return;
        }
        tracing::debug!(from = %envelope.from, command = ?envelope.command, "command from another node");
        match envelope.command {
            Command::CloseTunnel {
                session_id,
                code,
                reason,
            } => {
                if let Some(t) = state.tunnels.registry.by_session(session_id) {
                    t.close(code, &reason).await;
                }
            }
            Command::AccessChanged => state.access.watch().changed(),
            Command::Changed { change } => state.tunnels.cluster.events().local(change),
            Command::TunnelDetached { session_id } => {
                if let Some(live) = &state.tunnels.cluster.live {
                    live.route_changed(Some(session_id));
                }
            }
            Command::TunnelAttached {
                session_id,
                system_id,
            } => {
                if let Some(live) = &state.tunnels.cluster.live {
                    live.route_changed(Some(session_id));
                }
                for t in state.tunnels.registry.all() {
                    if t.session_id == session_id || t.system_id == system_id {
                        tracing::info!(session = %t.session_id, node = %envelope.from, "the agent is connected to another node now: closing the stale tunnel");
                        t.close(
                            CloseCode::Replaced,
                            "the agent connected to another server node",
                        )
                        .await;
                    }
                }
            }
        }
    }

    /// After (re)subscribing: whatever was missed meanwhile is found again.
    async fn catch_up(state: &AppState) {
        state.access.watch().changed();
        // Routes may have changed unheard of.
        if let Some(live) = &state.tunnels.cluster.live {
            live.route_changed(None);
        }
        for t in state.tunnels.registry.all() {
            match state.stores.sessions.session(t.session_id).await {
                Ok(Some(s)) if s.status.is_final() => {
                    t.close(CloseCode::SessionClosed, "the session was closed")
                        .await;
                }
                Ok(Some(s))
                    if s.node_id
                        .as_deref()
                        .is_some_and(|n| n != state.tunnels.cluster.node_id()) =>
                {
                    t.close(
                        CloseCode::Replaced,
                        "the agent connected to another server node",
                    )
                    .await;
                }
                Ok(_) => {}
                Err(e) => {
                    crate::state::log_store_error("checking a tunnel's session", &e);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_detached_command_names_a_session_and_nothing_else_reads_as_one() {
        let id = SessionId::new();
        let sent = Command::TunnelDetached { session_id: id };
        let text = serde_json::to_string(&sent).unwrap();
        assert_eq!(
            text,
            format!(r#"{{"command":"tunnel_detached","session_id":"{id}"}}"#)
        );
        assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), sent);
        // Hostile or broken ones do not parse (the listener logs and
        // ignores them; a good one can only make a node read Redis again).
        for bad in [
            r#"{"command":"tunnel_detached"}"#.to_owned(),
            r#"{"command":"tunnel_detached","session_id":"not-a-uuid"}"#.to_owned(),
            r#"{"command":"tunnel_detached","session_id":42}"#.to_owned(),
            format!(
                r#"{{"command":"tunnel_detached","session_id":"{}"}}"#,
                "a".repeat(20_000)
            ),
            r#"{"command":"tunnel_gone","session_id":"00000000-0000-0000-0000-000000000000"}"#
                .to_owned(),
        ] {
            assert!(serde_json::from_str::<Command>(&bad).is_err(), "{bad}");
        }
    }
}
