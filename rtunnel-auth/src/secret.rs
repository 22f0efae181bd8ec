//! Random secrets and their stored form.
//!
//! Secrets are 256 random bits, so a plain SHA-256 is a sufficient stored
//! form (passwords, which are guessable, get a slow hash instead). Every
//! check compares hashes in constant time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Bytes of randomness in a generated secret.
pub const SECRET_BYTES: usize = 32;

/// Longest secret accepted for checking; longer input is refused unhashed.
pub const MAX_SECRET_LEN: usize = 256;

/// A new random secret, base64url without padding (43 characters), never
/// starting with `-`: pasted after a flag (`--secret VALUE`), such a value
/// would be taken for another flag (one secret in 64 did).
pub fn generate_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    loop {
        rand::rng().fill_bytes(&mut bytes);
        let secret = URL_SAFE_NO_PAD.encode(bytes);
        if !secret.starts_with('-') {
            return secret;
        }
    }
}

/// A random identifier of `bytes` bytes in lowercase hex.
pub fn generate_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// The stored form of a secret: lowercase hex SHA-256.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `candidate` hashes to `stored_hash`, compared in constant time.
pub fn verify_secret(candidate: &str, stored_hash: &str) -> bool {
    if candidate.len() > MAX_SECRET_LEN {
        return false;
    }
    let computed = hash_secret(candidate);
    computed.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

/// Whether `a` and `b` are equal, in time that depends only on their
/// lengths (for values a client echoes back, such as a CSRF token).
///
/// ```
/// assert!(rtunnel_auth::secret::constant_time_eq(b"abc", b"abc"));
/// assert!(!rtunnel_auth::secret::constant_time_eq(b"abc", b"abd"));
/// ```
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Burns the same work as [`verify_secret`] when there is nothing to compare
/// against (an unknown key), so timing does not tell which half was wrong.
pub fn verify_against_nothing(candidate: &str) -> bool {
    let dummy = "0".repeat(64);
    let _ = verify_secret(candidate, &dummy);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_secret_starts_like_a_flag() {
        // Without the rule, one in 64 would: all 5,000 passing by chance is
        // about one in 10^34.
        for _ in 0..5_000 {
            let secret = generate_secret();
            assert!(!secret.starts_with('-'), "{secret}");
            assert_eq!(secret.len(), 43);
        }
    }

    #[test]
    fn generated_secrets_verify_against_their_hash_only() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        let h = hash_secret(&a);
        assert!(verify_secret(&a, &h));
        assert!(!verify_secret(&b, &h));
        assert!(!verify_secret("", &h));
        assert!(!verify_secret(&"x".repeat(MAX_SECRET_LEN + 1), &h));
        assert!(!verify_against_nothing(&a));
    }
}
