//! The rate limits on failed logins and failed tunnel authentications.
//!
//! Three budgets are spent by each failure (see
//! [`rtunnel_core::ratelimit`] for how a budget refills):
//!
//! | budget | burst | then one per | stops |
//! | --- | --- | --- | --- |
//! | this name from this address | 5 | 60 s | one guesser on one account |
//! | this address, any name | 30 | 10 s | one guesser spraying many accounts |
//! | this name, any address | 30 | 2 s | many addresses on one account |
//!
//! A success forgives the first budget. The last budget is the one an
//! attacker elsewhere could use against a real user, so it is short (a
//! two-second wait) and it does not apply at all to an address the user
//! has logged in from in the last 30 days (for a system: the address of its
//! last session's agent). A store that cannot answer lets attempts through
//! (the password check still guards them) and logs why.

use std::net::IpAddr;
use std::time::Duration;

use rtunnel_core::ratelimit::Rule;
use rtunnel_core::store::now_millis;

use crate::error::ApiError;
use crate::state::AppState;

/// Failures of one name from one address.
pub const PER_NAME_AND_ADDRESS: Rule = Rule {
    burst: 5,
    interval: Duration::from_secs(60),
};
/// Failures from one address, whatever the name.
pub const PER_ADDRESS: Rule = Rule {
    burst: 30,
    interval: Duration::from_secs(10),
};
/// Failures of one name, whatever the address.
pub const PER_NAME: Rule = Rule {
    burst: 30,
    interval: Duration::from_secs(2),
};

/// How long a successful login marks its address as the user's own.
pub const KNOWN_ADDRESS_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// Longest name used in a key; longer ones are cut (they fail anyway).
const MAX_NAME_IN_KEY: usize = 128;

/// What is being authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `POST /api/v1/auth/login`: the name is a user name.
    Login,
    /// The tunnel endpoint: the name is a system key.
    Tunnel,
}

impl Scope {
    fn prefix(self) -> &'static str {
        match self {
            Scope::Login => "login",
            Scope::Tunnel => "tunnel",
        }
    }
}

/// One authentication attempt, as the limiter sees it.
#[derive(Debug, Clone)]
pub struct Attempt {
    scope: Scope,
    name: String,
    addr: IpAddr,
}

impl Attempt {
    /// An attempt for `name` from `addr`.
    pub fn new(scope: Scope, name: &str, addr: IpAddr) -> Self {
        let name: String = name
            .chars()
            .take(MAX_NAME_IN_KEY)
            .collect::<String>()
            .to_lowercase();
        Attempt { scope, name, addr }
    }

    fn keys(&self, known_address: bool) -> Vec<(String, Rule)> {
        let p = self.scope.prefix();
        let mut keys = vec![
            (
                format!("{p}:pair:{}|{}", self.name, self.addr),
                PER_NAME_AND_ADDRESS,
            ),
            (format!("{p}:addr:{}", self.addr), PER_ADDRESS),
        ];
        if !known_address {
            keys.push((format!("{p}:name:{}", self.name), PER_NAME));
        }
        keys
    }

    /// 429 with `Retry-After` if any budget of this attempt is spent.
    /// `known_address`: the name has succeeded from this address lately.
    pub async fn check(&self, state: &AppState, known_address: bool) -> Result<(), ApiError> {
        let now = now_millis();
        let mut wait = None::<Duration>;
        for (key, rule) in self.keys(known_address) {
            match state.stores.limiter.check(&key, rule, now).await {
                Ok(w) => wait = wait.max(w),
                Err(e) => tracing::error!(error = %e, "rate limiter unavailable; not limiting"),
            }
        }
        match wait {
            Some(wait) => Err(ApiError::rate_limited(wait)),
            None => Ok(()),
        }
    }

    /// Spends one failure from every budget of this attempt.
    pub async fn failed(&self, state: &AppState) {
        let now = now_millis();
        for (key, rule) in self.keys(false) {
            if let Err(e) = state.stores.limiter.fail(&key, rule, now).await {
                tracing::error!(error = %e, "rate limiter unavailable; failure not counted");
            }
        }
    }

    /// Forgives this name's failures from this address.
    pub async fn succeeded(&self, state: &AppState) {
        let (key, _) = &self.keys(true)[0];
        if let Err(e) = state.stores.limiter.reset(key).await {
            tracing::error!(error = %e, "rate limiter unavailable; success not recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_scoped_case_folded_and_bounded() {
        let a = Attempt::new(Scope::Login, "Alice", "192.0.2.1".parse().unwrap());
        let keys: Vec<_> = a.keys(false).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "login:pair:alice|192.0.2.1",
                "login:addr:192.0.2.1",
                "login:name:alice"
            ]
        );
        assert_eq!(
            a.keys(true).len(),
            2,
            "a known address skips the name budget"
        );
        let t = Attempt::new(Scope::Tunnel, &"k".repeat(10_000), "::1".parse().unwrap());
        assert!(t.keys(false)[2].0.len() < 200);
        assert!(t.keys(false)[2].0.starts_with("tunnel:name:"));
    }
}
