//! Single-use tickets: short-lived random values that stand for one
//! operator's right to open one thing (a browser terminal) on one session.
//!
//! A WebSocket opened by a browser cannot carry an `Authorization` header, so
//! the API hands out a ticket (`POST /api/v1/sessions/{id}/terminal-ticket`)
//! and the browser presents it once, within [`TICKET_TTL`]. The store keeps
//! only a SHA-256 of each ticket; [`TicketStore::take`] removes it as it
//! returns it (Redis `GETDEL` across nodes, a map on one).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::store::{Millis, StoreError};

/// How long a ticket is good for.
pub const TICKET_TTL: Duration = Duration::from_secs(30);

/// Length of a ticket as handed out (hex of 32 random bytes).
pub const TICKET_LEN: usize = 64;

/// What a ticket grants.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ticket {
    /// The session it opens something on.
    pub session_id: crate::ids::SessionId,
    /// The user it was issued to.
    pub user_id: crate::ids::UserId,
    /// The login (refresh family) the user asked under, if any: what is
    /// opened with the ticket ends when that login does.
    pub login: Option<Uuid>,
    /// The API token the user asked with, if any: what is opened with the
    /// ticket ends when that token is revoked or expires.
    #[serde(default)]
    pub token: Option<Uuid>,
    /// When it stops working.
    pub expires_at: Millis,
}

/// The key a ticket is stored under: the hex SHA-256 of the ticket.
pub fn ticket_key(ticket: &str) -> String {
    hex_lower(&Sha256::digest(ticket.as_bytes()))
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Where tickets wait to be used.
#[async_trait]
pub trait TicketStore: Send + Sync {
    /// Stores a ticket under [`ticket_key`] of its value.
    async fn put(&self, key: String, ticket: Ticket) -> Result<(), StoreError>;
    /// Removes and returns the ticket stored under `key`, if it is there and
    /// not expired at `now`. A second `take` of the same key finds nothing.
    async fn take(&self, key: &str, now: Millis) -> Result<Option<Ticket>, StoreError>;
}

/// Most tickets an in-process store holds; a full store drops expired ones
/// and then refuses new ones until some are used or expire.
pub const MAX_TICKETS: usize = 100_000;

/// The in-process [`TicketStore`] of a single node.
#[derive(Debug, Default)]
pub struct MemoryTicketStore {
    tickets: Mutex<HashMap<String, Ticket>>,
}

impl MemoryTicketStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Ticket>> {
        // The map stays consistent even if a holder panicked.
        self.tickets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl TicketStore for MemoryTicketStore {
    async fn put(&self, key: String, ticket: Ticket) -> Result<(), StoreError> {
        let mut map = self.lock();
        if map.len() >= MAX_TICKETS {
            let now = crate::store::now_millis();
            map.retain(|_, t| t.expires_at > now);
            if map.len() >= MAX_TICKETS {
                return Err(StoreError::Backend("too many outstanding tickets".into()));
            }
        }
        map.insert(key, ticket);
        Ok(())
    }

    async fn take(&self, key: &str, now: Millis) -> Result<Option<Ticket>, StoreError> {
        Ok(self.lock().remove(key).filter(|t| t.expires_at > now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_store_meets_the_ticket_checks() {
        let store = MemoryTicketStore::new();
        crate::store::conformance::tickets_are_taken_once_and_only_before_they_expire(&store).await;
        // Taking an expired ticket also removed it.
        assert!(store.lock().is_empty());
    }

    #[test]
    fn keys_are_hashes_not_tickets() {
        let key = ticket_key("secret-ticket");
        assert_eq!(key.len(), 64);
        assert!(!key.contains("secret"));
    }
}
