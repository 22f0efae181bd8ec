//! Sealing what rtunnel writes to Redis, so that what it reads back is
//! known to come from a node of the cluster.
//!
//! Whoever can write to Redis must not be able to hand a node a ticket (a
//! root terminal), a route or a command of their own. Every value and
//! every pub/sub message is written as `<mac>.<payload>`, where `mac` is
//! HMAC-SHA256 (base64url) under a key derived from the cluster key, over
//! the full Redis key or channel the value belongs to and the payload, so
//! a value moved to another key does not verify either. What fails to
//! verify is ignored and logged. Pub/sub messages also carry the time they
//! were sealed and are refused when older than [`MAX_MESSAGE_AGE_MS`], so a
//! recorded command cannot be played again later.
//!
//! The failure budgets (rate limits) are numbers updated by Lua scripts in
//! Redis and are not sealed: someone who can write to Redis can reset them
//! (the password check still guards every attempt) or spend them (a
//! denial of service, which writing to Redis allows anyway).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::store::Millis;

type HmacSha256 = Hmac<Sha256>;

/// Length of the base64url MAC and its `.`.
const MAC_LEN: usize = 43;

/// How old a pub/sub message may be when it arrives.
pub const MAX_MESSAGE_AGE_MS: Millis = 60_000;

/// The sealing key of a cluster.
#[derive(Clone)]
pub struct Seal {
    key: HmacSha256,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seal(..)")
    }
}

impl Seal {
    /// A seal derived from the cluster key (every node holds the same).
    pub fn new(cluster_key: &[u8]) -> Self {
        // A key of its own, so a MAC made here is never one the node channel
        // would accept, nor the other way round.
        let mut derive =
            HmacSha256::new_from_slice(cluster_key).expect("HMAC takes keys of any length");
        derive.update(b"rtunnel redis seal v1");
        let derived = derive.finalize().into_bytes();
        Seal {
            key: HmacSha256::new_from_slice(&derived).expect("HMAC takes keys of any length"),
        }
    }

    fn mac(&self, binding: &str, payload: &str) -> HmacSha256 {
        let mut mac = self.key.clone();
        mac.update(&(binding.len() as u64).to_be_bytes());
        mac.update(binding.as_bytes());
        mac.update(payload.as_bytes());
        mac
    }

    /// `payload` sealed for the Redis key or channel `binding`.
    pub fn seal(&self, binding: &str, payload: &str) -> String {
        let tag = URL_SAFE_NO_PAD.encode(self.mac(binding, payload).finalize().into_bytes());
        format!("{tag}.{payload}")
    }

    /// The payload of `value` if it was sealed for `binding` with this key;
    /// `None` (to be ignored) otherwise.
    pub fn open<'a>(&self, binding: &str, value: &'a str) -> Option<&'a str> {
        let (tag, payload) = value.split_at_checked(MAC_LEN)?;
        let payload = payload.strip_prefix('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac(binding, payload).verify_slice(&tag).ok()?;
        Some(payload)
    }

    /// A pub/sub message for `channel`: the time, then the message, sealed.
    pub fn seal_message(&self, channel: &str, message: &str, now: Millis) -> String {
        self.seal(channel, &format!("{now}|{message}"))
    }

    /// The message of a sealed pub/sub `value`, if it verifies and is not
    /// older than [`MAX_MESSAGE_AGE_MS`] (nor from the future by as much).
    pub fn open_message<'a>(&self, channel: &str, value: &'a str, now: Millis) -> Option<&'a str> {
        let payload = self.open(channel, value)?;
        let (at, message) = payload.split_once('|')?;
        let at: Millis = at.parse().ok()?;
        (now.abs_diff(at) <= MAX_MESSAGE_AGE_MS as u64).then_some(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_for_its_key_and_with_its_seal() {
        let seal = Seal::new(b"0123456789abcdef0123456789abcdef");
        let v = seal.seal("rtunnel:ticket:abc", r#"{"user":1}"#);
        assert_eq!(seal.open("rtunnel:ticket:abc", &v), Some(r#"{"user":1}"#));
        assert_eq!(
            seal.open("rtunnel:ticket:abd", &v),
            None,
            "moved to another key"
        );
        let other = Seal::new(b"another cluster key, not ours!!!");
        assert_eq!(other.open("rtunnel:ticket:abc", &v), None);
        let forged = format!("{}.{}", &v[..MAC_LEN], r#"{"user":2}"#);
        assert_eq!(seal.open("rtunnel:ticket:abc", &forged), None);
        for junk in ["", ".", r#"{"user":1}"#, "x.y", &"a".repeat(500)] {
            assert_eq!(seal.open("rtunnel:ticket:abc", junk), None, "{junk:?}");
        }
    }

    #[test]
    fn messages_expire() {
        let seal = Seal::new(b"0123456789abcdef0123456789abcdef");
        let m = seal.seal_message("rtunnel:channel:commands", "close", 1_000_000);
        assert_eq!(
            seal.open_message("rtunnel:channel:commands", &m, 1_030_000),
            Some("close")
        );
        assert_eq!(
            seal.open_message("rtunnel:channel:commands", &m, 1_070_000),
            None
        );
        assert_eq!(
            seal.open_message("rtunnel:channel:other", &m, 1_000_000),
            None
        );
    }
}
