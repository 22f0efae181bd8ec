//! The client's address behind trusted reverse proxies.
//!
//! Behind nginx every connection comes from nginx. With
//! `--trusted-proxies` naming nginx's addresses, a request from one of them
//! is taken to be from the address it put in `X-Forwarded-For`: the list
//! is read from the right, trusted hops are skipped, and the first address
//! that is not trusted is the client (entries further left were written by
//! the client itself and prove nothing). Audit events, access logs, login
//! failure budgets and the subdomain proxy's own `X-Forwarded-For` all use
//! that address. From any other peer the header is ignored.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::state::AppState;

/// Most `X-Forwarded-For` entries read; a longer list is cut on the left.
pub(crate) const MAX_FORWARDED_HOPS: usize = 32;

/// Addresses and networks whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<(IpAddr, u8)>,
}

impl TrustedProxies {
    /// Parses a comma-separated list of addresses and CIDR networks
    /// (`127.0.0.1, 10.0.0.0/8, fd00::/8`); empty trusts nobody.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut networks = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (addr, len) = match item.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (item, None),
            };
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("--trusted-proxies: {item:?} is not an address or network"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len =
                match len {
                    None => max,
                    Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| {
                        format!("--trusted-proxies: bad prefix length in {item:?}")
                    })?,
                };
            networks.push((addr.to_canonical(), len));
        }
        Ok(TrustedProxies { networks })
    }

    /// The list as `--trusted-proxies` takes it (`10.0.0.0/8,127.0.0.1/32`).
    pub fn to_list(&self) -> String {
        let items: Vec<String> = self
            .networks
            .iter()
            .map(|(addr, len)| format!("{addr}/{len}"))
            .collect();
        items.join(",")
    }

    /// Whether nobody is trusted.
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks
            .iter()
            .any(|&(net, len)| in_network(ip, net, len))
    }

    /// The client of a request that came from `peer` with the
    /// `X-Forwarded-For` values `forwarded` (in header order).
    pub fn client<'a>(
        &self,
        peer: SocketAddr,
        forwarded: impl Iterator<Item = &'a str>,
    ) -> SocketAddr {
        if !self.contains(peer.ip()) {
            return peer;
        }
        let hops: Vec<&str> = forwarded
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer.ip();
        for hop in hops.iter().rev().take(MAX_FORWARDED_HOPS) {
            match hop.parse::<IpAddr>() {
                // The hop that handed the request to a trusted proxy.
                Ok(ip) => {
                    client = ip.to_canonical();
                    if !self.contains(client) {
                        break;
                    }
                }
                // Garbage: the last address a trusted proxy vouched for.
                Err(_) => break,
            }
        }
        SocketAddr::new(client, 0)
    }
}

fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Middleware: replaces the request's peer address with the client's when
/// the peer is a trusted proxy.
pub(crate) async fn resolve_client(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let trusted = &state.config.trusted_proxies;
    if !trusted.is_empty()
        && let Some(&ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>()
    {
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok());
        let client = trusted.client(peer, forwarded);
        req.extensions_mut().insert(ConnectInfo(client));
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 4000)
    }

    fn client(t: &TrustedProxies, from: &str, xff: &[&str]) -> String {
        t.client(peer(from), xff.iter().copied()).ip().to_string()
    }

    #[test]
    fn parses_addresses_and_networks() {
        let t = TrustedProxies::parse(" 127.0.0.1, 10.0.0.0/8 ,fd00::/8").unwrap();
        assert!(t.contains("127.0.0.1".parse().unwrap()));
        assert!(!t.contains("127.0.0.2".parse().unwrap()));
        assert!(t.contains("10.200.3.4".parse().unwrap()));
        assert!(!t.contains("11.0.0.1".parse().unwrap()));
        assert!(t.contains("fd12::1".parse().unwrap()));
        assert!(
            t.contains("::ffff:10.1.1.1".parse().unwrap()),
            "IPv4-mapped"
        );
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        assert!(
            TrustedProxies::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        for bad in ["nginx", "10.0.0.0/33", "10.0.0.0/x", "::/129", "1.2.3.4:80"] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let t = TrustedProxies::parse("127.0.0.1,10.0.0.0/8").unwrap();
        // A peer that is not trusted: the header is the client's own word.
        assert_eq!(client(&t, "203.0.113.9", &["1.2.3.4"]), "203.0.113.9");
        // nginx on loopback, the client direct.
        assert_eq!(client(&t, "127.0.0.1", &["198.51.100.7"]), "198.51.100.7");
        // A spoofed entry on the left does not help the client.
        assert_eq!(
            client(&t, "127.0.0.1", &["6.6.6.6, 198.51.100.7"]),
            "198.51.100.7"
        );
        // Two trusted hops (a load balancer in 10/8, then nginx).
        assert_eq!(
            client(&t, "127.0.0.1", &["198.51.100.7", "10.0.0.5"]),
            "198.51.100.7"
        );
        // Every hop trusted: the leftmost.
        assert_eq!(client(&t, "127.0.0.1", &["10.0.0.5"]), "10.0.0.5");
        // No header: the proxy itself.
        assert_eq!(client(&t, "127.0.0.1", &[]), "127.0.0.1");
        // Garbage stops the walk at the last vouched-for address.
        assert_eq!(
            client(&t, "127.0.0.1", &["198.51.100.7, junk, 10.0.0.5"]),
            "10.0.0.5"
        );
    }

    #[test]
    fn a_long_list_is_read_only_so_far() {
        let t = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let mut hops = vec!["198.51.100.7".to_owned()];
        hops.extend((0..100).map(|i| format!("10.0.0.{}", i % 250)));
        let header = hops.join(",");
        // Never reaches the client's entry: the leftmost hop read is used.
        let got = client(&t, "10.0.0.1", &[&header]);
        assert!(got.starts_with("10.0.0."), "{got}");
    }
}
