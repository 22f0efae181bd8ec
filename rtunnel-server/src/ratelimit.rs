//! The rate limits on failed logins and failed tunnel authentications.
//!
//! Each attempt reserves one failure from three budgets before its password
//! or secret is checked, atomically, so parallel guesses cannot all pass
//! one check (see [`rtunnel_core::ratelimit`] for how a budget refills); a
//! success gives the reservation back. Addresses are IPv4 addresses or IPv6
//! /64 networks (one host usually holds a whole /64):
//!
//! | budget | burst | then one per | stops |
//! | --- | --- | --- | --- |
//! | this name from this address | 5 | 60 s | one guesser on one account |
//! | this address, any name | 30 | 10 s | one guesser spraying many accounts |
//! | this name, any address | 30 | 2 s | many addresses on one account |
//!
//! A success forgives the first budget. The last budget is the one an
//! attacker elsewhere could use against a real user, so it is short (a
//! two-second wait: refused attempts spend nothing, so however hard a name
//! is hammered, its owner waits at most that) and it does not apply at all
//! to an address the user has logged in from in the last 30 days (for a
//! system: the address of its last session's agent). A store that cannot
//! answer lets attempts through (the password check still guards them) and
//! logs why.

use std::net::IpAddr;
use std::time::Duration;

use rtunnel_core::ratelimit::Rule;
use rtunnel_core::store::now_millis;

use crate::error::ApiError;
use crate::state::AppState;

/// Failures of one name from one address.
pub(crate) const PER_NAME_AND_ADDRESS: Rule = Rule {
    burst: 5,
    interval: Duration::from_secs(60),
};
/// Failures from one address, whatever the name.
pub(crate) const PER_ADDRESS: Rule = Rule {
    burst: 30,
    interval: Duration::from_secs(10),
};
/// Failures of one name, whatever the address.
pub(crate) const PER_NAME: Rule = Rule {
    burst: 30,
    interval: Duration::from_secs(2),
};

/// How long a successful login marks its address as the user's own.
pub(crate) const KNOWN_ADDRESS_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// Longest name used in a key; longer ones are cut (they fail anyway).
const MAX_NAME_IN_KEY: usize = 128;

/// What is being authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
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
pub(crate) struct Attempt {
    scope: Scope,
    name: String,
    addr: String,
}

impl Attempt {
    /// An attempt for `name` from `addr`.
    pub(crate) fn new(scope: Scope, name: &str, addr: IpAddr) -> Self {
        let name: String = name
            .chars()
            .take(MAX_NAME_IN_KEY)
            .collect::<String>()
            .to_lowercase();
        Attempt {
            scope,
            name,
            addr: budget_address(addr),
        }
    }

    /// The address its budget is kept under: an IPv4 address, or the /64
    /// network of an IPv6 address.
    pub(crate) fn address(&self) -> &str {
        &self.addr
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

    /// Reserves one failure from every budget of this attempt, before the
    /// credentials are checked. 429 with `Retry-After` when a budget is
    /// spent; what was reserved is then given back. `known_address`: the
    /// name has succeeded from this address lately.
    pub(crate) async fn reserve(
        &self,
        state: &AppState,
        known_address: bool,
    ) -> Result<Reservation, ApiError> {
        let now = now_millis();
        let limiter = &state.stores.limiter;
        let mut reserved = Vec::new();
        for (key, rule) in self.keys(known_address) {
            match limiter.reserve(&key, rule, now).await {
                Ok(None) => reserved.push((key, rule)),
                Ok(Some(wait)) => {
                    for (key, rule) in &reserved {
                        if let Err(e) = limiter.refund(key, *rule, now).await {
                            tracing::error!(error = %e, "rate limiter unavailable; reservation kept");
                        }
                    }
                    return Err(ApiError::rate_limited(wait));
                }
                Err(e) => tracing::error!(error = %e, "rate limiter unavailable; not limiting"),
            }
        }
        Ok(Reservation { reserved })
    }
}

/// The failures an [`Attempt`] reserved: spent if it fails (drop it), given
/// back if it succeeds.
#[derive(Debug)]
#[must_use = "a reservation is given back with `succeeded`, or kept by dropping it"]
pub(crate) struct Reservation {
    reserved: Vec<(String, Rule)>,
}

impl Reservation {
    /// The attempt succeeded: this name's failures from this address are
    /// forgiven, and the other budgets get their reservation back.
    pub(crate) async fn succeeded(self, state: &AppState) {
        let now = now_millis();
        let limiter = &state.stores.limiter;
        for (i, (key, rule)) in self.reserved.iter().enumerate() {
            let done = if i == 0 && key.contains(":pair:") {
                limiter.reset(key).await
            } else {
                limiter.refund(key, *rule, now).await
            };
            if let Err(e) = done {
                tracing::error!(error = %e, "rate limiter unavailable; success not recorded");
            }
        }
    }
}

/// The address a budget is kept under: IPv4 as it is (also when written as
/// an IPv4-mapped IPv6 address), IPv6 as its /64 network.
pub(crate) fn budget_address(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{net}/64")
            }
        },
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

    #[test]
    fn ipv6_addresses_share_the_budget_of_their_64() {
        let a = |s: &str| budget_address(s.parse().unwrap());
        assert_eq!(a("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(a("2001:db8:1:2:ffff:1:2:3"), "2001:db8:1:2::/64");
        assert_ne!(a("2001:db8:1:3::1"), "2001:db8:1:2::/64");
        assert_eq!(a("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(a("192.0.2.7"), "192.0.2.7");
        let one = Attempt::new(Scope::Login, "ann", "2001:db8::1".parse().unwrap());
        let other = Attempt::new(Scope::Login, "ann", "2001:db8::ffff".parse().unwrap());
        assert_eq!(one.keys(false), other.keys(false));
    }
}
