//! The session launcher's session token, in the launcher contract's format
//! and signed as it says production must be:
//! `base64url(payload).base64url(HMAC-SHA256(key, base64url(payload)))`,
//! payload `{"sub","rid","cid","exp","iat"}` with `exp`/`iat` in Unix
//! seconds, one hour. External gateways (Guacamole, TSPlus) that hold the
//! launch key verify it the same way.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rtunnel_core::token::TokenError;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Lifetime of a session token.
pub const SESSION_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Longest session token [`LaunchSigner::verify`] looks at.
pub const MAX_SESSION_TOKEN_LEN: usize = 2048;

/// The payload of a session token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionToken {
    /// The user's id.
    pub sub: String,
    /// The resource's id.
    pub rid: String,
    /// The connection id of this launch (a UUID).
    pub cid: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issue time, Unix seconds.
    pub iat: i64,
    /// The connection type launched (`guacamole`, `tsplus`, `rdp`, `ssh`),
    /// so a gateway can refuse a token minted for another kind of launch.
    /// Absent in tokens of older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctype: Option<String>,
}

/// Signs and verifies session tokens with the launch key.
#[derive(Clone)]
pub struct LaunchSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for LaunchSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LaunchSigner(<key>)")
    }
}

impl LaunchSigner {
    /// A signer with `key` (at least 16 bytes).
    pub fn new(key: &[u8]) -> Result<LaunchSigner, TokenError> {
        if key.len() < 16 {
            return Err(TokenError::Malformed);
        }
        Ok(LaunchSigner { key: key.to_vec() })
    }

    fn mac(&self, signed: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(signed);
        mac
    }

    /// The token for `payload`.
    ///
    /// ```
    /// use rtunnel_auth::launch_token::{LaunchSigner, SessionToken};
    ///
    /// let signer = LaunchSigner::new(b"a launch key of 16+ bytes").unwrap();
    /// let payload = SessionToken {
    ///     sub: "user".into(), rid: "resource".into(), cid: "conn".into(),
    ///     iat: 1_700_000_000, exp: 1_700_003_600, ctype: Some("ssh".into()),
    /// };
    /// let token = signer.sign(&payload);
    /// assert_eq!(token.matches('.').count(), 1);
    /// assert_eq!(signer.verify(&token, 1_700_000_001).unwrap(), payload);
    /// ```
    pub fn sign(&self, payload: &SessionToken) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(payload).unwrap_or_default());
        let tag = self.mac(body.as_bytes()).finalize().into_bytes();
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Checks the signature (constant time), then the expiry at `now`
    /// (Unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<SessionToken, TokenError> {
        if token.len() > MAX_SESSION_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let (body, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        self.mac(body.as_bytes())
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        let token: SessionToken =
            serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if now >= token.exp {
            return Err(TokenError::Expired);
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> SessionToken {
        SessionToken {
            sub: "u1".into(),
            rid: "r1".into(),
            cid: "c1".into(),
            iat: 100,
            exp: 100 + SESSION_TOKEN_TTL.as_secs() as i64,
            ctype: None,
        }
    }

    #[test]
    fn the_format_is_the_contracts() {
        let s = LaunchSigner::new(&[1u8; 32]).unwrap();
        let token = s.sign(&payload());
        let (body, tag) = token.split_once('.').unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"sub": "u1", "rid": "r1", "cid": "c1", "exp": 3700, "iat": 100})
        );
        // The MAC covers the base64url payload text, as the contract says.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&[1u8; 32]).unwrap();
        mac.update(body.as_bytes());
        assert_eq!(
            URL_SAFE_NO_PAD.decode(tag).unwrap(),
            mac.finalize().into_bytes().to_vec()
        );
    }

    #[test]
    fn tampered_expired_and_foreign_tokens_are_refused() {
        let s = LaunchSigner::new(&[1u8; 32]).unwrap();
        let token = s.sign(&payload());
        assert_eq!(s.verify(&token, 3699).unwrap(), payload());
        assert_eq!(s.verify(&token, 3700), Err(TokenError::Expired));
        let other = LaunchSigner::new(&[2u8; 32]).unwrap();
        assert_eq!(other.verify(&token, 101), Err(TokenError::BadSignature));
        let mut longer = payload();
        longer.exp += 86400;
        let forged_body = s.sign(&longer).split_once('.').unwrap().0.to_owned();
        let tag = token.split_once('.').unwrap().1;
        assert_eq!(
            s.verify(&format!("{forged_body}.{tag}"), 101),
            Err(TokenError::BadSignature)
        );
        assert_eq!(s.verify("no-dot", 101), Err(TokenError::Malformed));
        assert_eq!(s.verify(&"x".repeat(3000), 101), Err(TokenError::TooLong));
        assert!(LaunchSigner::new(b"short").is_err());
    }
}
