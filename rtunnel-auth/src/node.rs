//! Authenticating requests between the server nodes of a cluster.
//!
//! Nodes share one cluster key. A request from one node to another carries
//! an `Authorization` header of the form
//! `RtunnelNode node=<id>, ts=<unix ms>, nonce=<hex>, sig=<hex>`, where
//! `sig` is HMAC-SHA256 under the cluster key of the node id, the time, the
//! nonce, and what the request asks for (`subject`). The key itself never
//! crosses the network. The receiver checks the MAC in constant time, that
//! the time is within [`MAX_SKEW_MS`] of its own clock, and that it has
//! not seen the nonce before ([`NonceCache`]): a request cannot be
//! forged, altered or replayed.
//!
//! ```
//! use rtunnel_auth::node::{NodeKey, NonceCache};
//!
//! let key = NodeKey::new(&[7; 32]).unwrap();
//! let header = key.authorize("node-b", "open ssh of session 42", 1_000);
//! let mut seen = NonceCache::default();
//! let from = key.verify(&header, "open ssh of session 42", 1_500, &mut seen).unwrap();
//! assert_eq!(from, "node-b");
//! // The same request twice is a replay.
//! assert!(key.verify(&header, "open ssh of session 42", 1_500, &mut seen).is_err());
//! ```

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Largest difference between the sender's and the receiver's clocks.
pub const MAX_SKEW_MS: i64 = 30_000;

/// Longest `Authorization` value looked at.
pub const MAX_HEADER_LEN: usize = 512;

/// Longest node id.
pub const MAX_NODE_ID_LEN: usize = 64;

const SCHEME: &str = "RtunnelNode ";

/// Why a node request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NodeAuthError {
    /// Not a node authorization, or one that does not parse.
    #[error("malformed node authorization")]
    Malformed,
    /// The MAC does not match: another key, or an altered request.
    #[error("bad node signature")]
    BadSignature,
    /// Too old or too far in the future.
    #[error("node request outside the allowed clock skew")]
    Stale,
    /// The nonce was used before.
    #[error("node request replayed")]
    Replayed,
}

/// The cluster key.
#[derive(Clone)]
pub struct NodeKey {
    key: Vec<u8>,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKey(..)")
    }
}

impl NodeKey {
    /// A key of at least 16 bytes.
    pub fn new(key: &[u8]) -> Result<Self, NodeAuthError> {
        if key.len() < 16 {
            return Err(NodeAuthError::Malformed);
        }
        Ok(NodeKey { key: key.to_vec() })
    }

    /// The `Authorization` value for a request of `node_id` about `subject`
    /// made at `now` (unix ms).
    pub fn authorize(&self, node_id: &str, subject: &str, now: i64) -> String {
        let nonce = crate::secret::generate_hex(16);
        let sig = hex::encode(self.mac(node_id, now, &nonce, subject));
        format!("{SCHEME}node={node_id}, ts={now}, nonce={nonce}, sig={sig}")
    }

    /// Checks an `Authorization` value for `subject` at `now`; the sending
    /// node's id when it holds.
    pub fn verify(
        &self,
        header: &str,
        subject: &str,
        now: i64,
        seen: &mut NonceCache,
    ) -> Result<String, NodeAuthError> {
        if header.len() > MAX_HEADER_LEN {
            return Err(NodeAuthError::Malformed);
        }
        let fields = header
            .strip_prefix(SCHEME)
            .ok_or(NodeAuthError::Malformed)?;
        let (mut node, mut ts, mut nonce, mut sig) = (None, None, None, None);
        for field in fields.split(", ") {
            let (name, value) = field.split_once('=').ok_or(NodeAuthError::Malformed)?;
            let slot = match name {
                "node" => &mut node,
                "ts" => &mut ts,
                "nonce" => &mut nonce,
                "sig" => &mut sig,
                _ => return Err(NodeAuthError::Malformed),
            };
            if slot.replace(value).is_some() {
                return Err(NodeAuthError::Malformed);
            }
        }
        let (Some(node), Some(ts), Some(nonce), Some(sig)) = (node, ts, nonce, sig) else {
            return Err(NodeAuthError::Malformed);
        };
        let node_ok =
            !node.is_empty() && node.len() <= MAX_NODE_ID_LEN && node.bytes().all(is_node_id_byte);
        let nonce_ok = nonce.len() == 32 && nonce.bytes().all(|b| b.is_ascii_hexdigit());
        if !node_ok || !nonce_ok {
            return Err(NodeAuthError::Malformed);
        }
        let ts: i64 = ts.parse().map_err(|_| NodeAuthError::Malformed)?;
        let sig = hex::decode(sig).map_err(|_| NodeAuthError::Malformed)?;
        let mut mac =
            HmacSha256::new_from_slice(&self.key).map_err(|_| NodeAuthError::Malformed)?;
        feed(&mut mac, node, ts, nonce, subject);
        // `verify_slice` compares in constant time.
        mac.verify_slice(&sig)
            .map_err(|_| NodeAuthError::BadSignature)?;
        if (now - ts).abs() > MAX_SKEW_MS {
            return Err(NodeAuthError::Stale);
        }
        if !seen.insert(nonce, ts, now) {
            return Err(NodeAuthError::Replayed);
        }
        Ok(node.to_owned())
    }

    fn mac(&self, node_id: &str, ts: i64, nonce: &str, subject: &str) -> Vec<u8> {
        // Any key length is accepted by HMAC; `new` made sure it is long.
        let mut mac = HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        feed(&mut mac, node_id, ts, nonce, subject);
        mac.finalize().into_bytes().to_vec()
    }
}

/// Whether `b` may appear in a node id (`[A-Za-z0-9._-]`).
pub fn is_node_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

fn feed(mac: &mut HmacSha256, node: &str, ts: i64, nonce: &str, subject: &str) {
    // Lengths first, so no two different requests feed the same bytes.
    for part in [
        node.as_bytes(),
        ts.to_string().as_bytes(),
        nonce.as_bytes(),
        subject.as_bytes(),
    ] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
}

/// Nonces seen within the allowed clock skew, to refuse replays.
#[derive(Debug, Default)]
pub struct NonceCache {
    seen: HashMap<String, i64>,
}

impl NonceCache {
    /// Records `nonce` (of a request made at `ts`); false if it was seen.
    /// Forgets nonces whose requests are too old to pass anyway.
    fn insert(&mut self, nonce: &str, ts: i64, now: i64) -> bool {
        if self.seen.len() > 1024 {
            self.seen.retain(|_, t| (now - *t).abs() <= MAX_SKEW_MS);
        }
        self.seen.insert(nonce.to_owned(), ts).is_none()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn key(b: u8) -> NodeKey {
        NodeKey::new(&[b; 32]).unwrap()
    }

    #[test]
    fn a_signed_request_verifies_once() {
        let mut seen = NonceCache::default();
        let h = key(1).authorize("a", "s", 10_000);
        assert_eq!(key(1).verify(&h, "s", 10_000, &mut seen).unwrap(), "a");
        assert_eq!(
            key(1).verify(&h, "s", 10_000, &mut seen),
            Err(NodeAuthError::Replayed)
        );
    }

    #[test]
    fn another_key_another_subject_or_an_altered_field_fail() {
        let mut seen = NonceCache::default();
        let h = key(1).authorize("a", "s", 10_000);
        assert_eq!(
            key(2).verify(&h, "s", 10_000, &mut seen),
            Err(NodeAuthError::BadSignature)
        );
        assert_eq!(
            key(1).verify(&h, "t", 10_000, &mut seen),
            Err(NodeAuthError::BadSignature)
        );
        let renamed = h.replace("node=a", "node=b");
        assert_eq!(
            key(1).verify(&renamed, "s", 10_000, &mut seen),
            Err(NodeAuthError::BadSignature)
        );
        let later = h.replace("ts=10000", "ts=10001");
        assert_eq!(
            key(1).verify(&later, "s", 10_000, &mut seen),
            Err(NodeAuthError::BadSignature)
        );
    }

    #[test]
    fn old_or_future_requests_fail() {
        let mut seen = NonceCache::default();
        let h = key(1).authorize("a", "s", 100_000);
        assert_eq!(
            key(1).verify(&h, "s", 100_000 + MAX_SKEW_MS + 1, &mut seen),
            Err(NodeAuthError::Stale)
        );
        assert_eq!(
            key(1).verify(&h, "s", 100_000 - MAX_SKEW_MS - 1, &mut seen),
            Err(NodeAuthError::Stale)
        );
    }

    #[test]
    fn malformed_headers_fail_without_panicking() {
        let mut seen = NonceCache::default();
        let k = key(1);
        for h in [
            "",
            "Bearer x",
            "RtunnelNode ",
            "RtunnelNode node=a, ts=1, nonce=00, sig=00",
            "RtunnelNode node=a, node=a, ts=1, nonce=00000000000000000000000000000000, sig=00",
            "RtunnelNode node=a b, ts=1, nonce=00000000000000000000000000000000, sig=00",
            "RtunnelNode node=a, ts=x, nonce=00000000000000000000000000000000, sig=00",
            "RtunnelNode node=a, ts=1, nonce=00000000000000000000000000000000, sig=zz",
        ] {
            assert_eq!(
                k.verify(h, "s", 1, &mut seen),
                Err(NodeAuthError::Malformed),
                "{h}"
            );
        }
        assert_eq!(
            k.verify(&"x".repeat(MAX_HEADER_LEN + 1), "s", 1, &mut seen),
            Err(NodeAuthError::Malformed)
        );
        assert!(NodeKey::new(&[1; 15]).is_err());
    }
}
