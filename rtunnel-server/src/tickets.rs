//! Issuing and redeeming single-use tickets (see [`rtunnel_core::ticket`]).

use std::sync::Arc;

use rtunnel_auth::secret::generate_hex;
use rtunnel_core::ids::{SessionId, UserId};
use rtunnel_core::ratelimit::{RateLimiter, Rule};
use rtunnel_core::store::now_millis;
use rtunnel_core::ticket::{TICKET_LEN, TICKET_TTL, Ticket, TicketStore, ticket_key};

use crate::error::ApiError;
use crate::revocation::Holder;

/// How many tickets (terminal tickets and proxy links) one user may ask
/// for: [`Rule::burst`](rtunnel_core::ratelimit::Rule) at once, then one
/// more per interval, on every node together. The ticket store is shared:
/// one user must not fill it for everyone (a proxy link lasts an hour, so
/// one user holds at most 64 + 360 of them, and it takes hundreds of users
/// to fill an in-process store's 100,000).
pub(crate) const TICKETS_PER_USER: Rule = Rule {
    burst: 64,
    interval: std::time::Duration::from_secs(10),
};

/// Single-use tickets: issued to an authenticated holder for one session,
/// redeemed once by whatever opens access with them (a terminal's
/// WebSocket, a proxy link), each user's issuing limited by
/// a budget (64 at once, then one more every 10 s, on every node
/// together). Clones share the store and the budget.
#[derive(Clone)]
pub struct Tickets {
    store: Arc<dyn TicketStore>,
    limiter: Arc<dyn RateLimiter>,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tickets").finish_non_exhaustive()
    }
}

impl Tickets {
    /// Tickets kept in `store`, budgets kept in `limiter`.
    pub fn new(store: Arc<dyn TicketStore>, limiter: Arc<dyn RateLimiter>) -> Self {
        Tickets { store, limiter }
    }

    /// Spends one ticket of `user_id`'s budget, or answers 429
    /// `too_many_tickets` with `Retry-After`. A limiter that cannot answer lets
    /// the ticket through (and logs why).
    pub(crate) async fn spend_budget(&self, user_id: UserId) -> Result<(), ApiError> {
        let key = format!("tickets:user:{user_id}");
        match self
            .limiter
            .reserve(&key, TICKETS_PER_USER, now_millis())
            .await
        {
            Ok(None) => Ok(()),
            Ok(Some(wait)) => Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too_many_tickets",
                "you asked for too many terminal tickets or proxy links at once; try again in a moment",
            )
            .with_retry_after(wait.max(std::time::Duration::from_secs(1)))),
            Err(e) => {
                tracing::error!(error = %e, "rate limiter unavailable; ticket budget not checked");
                Ok(())
            }
        }
    }

    /// A new ticket for `holder` on `session_id`, stored hashed.
    pub(crate) async fn issue(
        &self,
        session_id: SessionId,
        holder: Holder,
    ) -> Result<String, ApiError> {
        self.spend_budget(holder.user_id).await?;
        let ticket = generate_hex(TICKET_LEN / 2);
        let held = Ticket {
            session_id,
            user_id: holder.user_id,
            login: holder.login,
            token: holder.token,
            expires_at: now_millis() + TICKET_TTL.as_millis() as i64,
        };
        self.store
            .put(ticket_key(&ticket), held)
            .await
            .map_err(|e| ApiError::unavailable("tickets_unavailable", e))?;
        Ok(ticket)
    }

    /// Uses up `ticket` for `session_id`: answers who it was issued to, or
    /// 401 `invalid_ticket` if it is unknown, used, expired, or for another
    /// session (it is spent either way).
    pub async fn redeem(&self, ticket: &str, session_id: SessionId) -> Result<Holder, ApiError> {
        let invalid = || {
            ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "invalid_ticket",
                "the ticket is unknown, used or expired",
            )
        };
        if ticket.len() != TICKET_LEN {
            return Err(invalid());
        }
        let held = self
            .store
            .take(&ticket_key(ticket), now_millis())
            .await
            .map_err(|e| ApiError::unavailable("tickets_unavailable", e))?
            .ok_or_else(invalid)?;
        if held.session_id != session_id {
            return Err(invalid());
        }
        Ok(Holder {
            user_id: held.user_id,
            login: held.login,
            token: held.token,
        })
    }
}
