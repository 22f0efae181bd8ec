//! HMAC-SHA256 token signing with key ids.
//!
//! A token is `<kid>.<base64url(payload)>.<base64url(mac)>`, where the MAC
//! covers `<kid>.<base64url(payload)>`. The newest key signs; every key held
//! verifies, so keys rotate by adding a new one and removing the old one once
//! its tokens have expired. Verification is constant time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rtunnel_core::token::{TokenError, TokenSigner};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest token [`HmacSigner::verify`] looks at.
pub const MAX_SIGNED_TOKEN_LEN: usize = 4096;

/// Longest key id.
pub const MAX_KID_LEN: usize = 32;

/// An HMAC-SHA256 [`TokenSigner`] holding one or more keys.
#[derive(Clone)]
pub struct HmacSigner {
    /// Keys by id; the last one signs.
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for HmacSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("HmacSigner").field("kids", &kids).finish()
    }
}

impl HmacSigner {
    /// A signer with one key. `kid` is 1 to 32 characters of `[A-Za-z0-9_-]`.
    pub fn new(kid: &str, key: &[u8]) -> Result<Self, TokenError> {
        let mut s = HmacSigner { keys: Vec::new() };
        s.add_key(kid, key)?;
        Ok(s)
    }

    /// Adds a key that signs from now on; older keys still verify.
    pub fn add_key(&mut self, kid: &str, key: &[u8]) -> Result<(), TokenError> {
        let kid_ok = !kid.is_empty()
            && kid.len() <= MAX_KID_LEN
            && kid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !kid_ok || key.len() < 16 {
            return Err(TokenError::Malformed);
        }
        self.keys.retain(|(k, _)| k != kid);
        self.keys.push((kid.to_owned(), key.to_vec()));
        Ok(())
    }

    /// Removes a key; tokens signed with it stop verifying.
    pub fn remove_key(&mut self, kid: &str) {
        self.keys.retain(|(k, _)| k != kid);
    }

    fn mac(key: &[u8], signed_part: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        mac.update(signed_part);
        mac
    }
}

impl TokenSigner for HmacSigner {
    fn sign(&self, payload: &[u8]) -> String {
        let (kid, key) = self.keys.last().unwrap_or_else(|| unreachable!());
        let mut token = format!("{kid}.{}", URL_SAFE_NO_PAD.encode(payload));
        let tag = Self::mac(key, token.as_bytes()).finalize().into_bytes();
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(tag));
        token
    }

    fn verify(&self, token: &str) -> Result<Vec<u8>, TokenError> {
        if token.len() > MAX_SIGNED_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let (signed_part, tag) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (kid, payload) = signed_part.split_once('.').ok_or(TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let (_, key) = self
            .keys
            .iter()
            .find(|(k, _)| k == kid)
            .ok_or(TokenError::UnknownKey)?;
        Self::mac(key, signed_part.as_bytes())
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_tokens_verify_and_tampering_is_refused() {
        let s = HmacSigner::new("k1", &[7u8; 32]).unwrap();
        let t = s.sign(br#"{"sub":"u"}"#);
        assert_eq!(s.verify(&t).unwrap(), br#"{"sub":"u"}"#);
        let (head, tag) = t.rsplit_once('.').unwrap();
        let other_payload = format!("k1.{}", URL_SAFE_NO_PAD.encode(b"{\"sub\":\"admin\"}"));
        assert_eq!(
            s.verify(&format!("{other_payload}.{tag}")),
            Err(TokenError::BadSignature)
        );
        let mut bad_tag = tag.to_owned();
        bad_tag.replace_range(0..1, if tag.starts_with('A') { "B" } else { "A" });
        assert_eq!(
            s.verify(&format!("{head}.{bad_tag}")),
            Err(TokenError::BadSignature)
        );
        assert_eq!(s.verify("nodots"), Err(TokenError::Malformed));
        assert_eq!(s.verify(&"a".repeat(5000)), Err(TokenError::TooLong));
    }

    #[test]
    fn rotation_keeps_old_tokens_until_their_key_goes() {
        let mut s = HmacSigner::new("old", &[1u8; 32]).unwrap();
        let old_token = s.sign(b"x");
        s.add_key("new", &[2u8; 32]).unwrap();
        let new_token = s.sign(b"y");
        assert!(new_token.starts_with("new."));
        assert_eq!(s.verify(&old_token).unwrap(), b"x");
        s.remove_key("old");
        assert_eq!(s.verify(&old_token), Err(TokenError::UnknownKey));
        assert_eq!(s.verify(&new_token).unwrap(), b"y");
        let other = HmacSigner::new("new", &[3u8; 32]).unwrap();
        assert_eq!(other.verify(&new_token), Err(TokenError::BadSignature));
    }

    #[test]
    fn weak_keys_and_bad_kids_are_refused() {
        assert!(HmacSigner::new("k", &[0u8; 8]).is_err());
        assert!(HmacSigner::new("a.b", &[0u8; 32]).is_err());
        assert!(HmacSigner::new("", &[0u8; 32]).is_err());
    }
}
