//! Typed tokens signed by a [`TokenSigner`]: access, refresh and proxy
//! tokens.
//!
//! Every token says what kind it is (`typ`), who it is for (`sub`), when it
//! was issued and when it ends (`iat`, `exp`, Unix milliseconds), and carries
//! a unique id (`jti`). A token of one kind is refused where another kind is
//! expected, so a proxy token handed to a browser can never be used as an
//! API login. Single-use terminal tickets are not signed tokens: they are
//! random values held in a ticket store (see `rtunnel_core::ticket`).

use std::time::Duration;

use rtunnel_core::ids::{SessionId, UserId};
use rtunnel_core::token::{TokenError, TokenSigner};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Lifetime of an access token.
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// Lifetime of a refresh token (each use replaces it with a new one).
pub const REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default lifetime of a proxy token (`--proxy-token-ttl`).
pub const PROXY_TTL: Duration = Duration::from_secs(3600);

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Calls the API as a user (`Authorization: Bearer`), 15 minutes.
    Access,
    /// Gets a new access and refresh pair, once.
    Refresh,
    /// A proxy link's token (`?token=`): redeemed once for a
    /// [`TokenKind::ProxyCookie`].
    Proxy,
    /// Held in the browser's proxy cookie once a link was redeemed: reaches
    /// the same service of the same session, and is never a link itself.
    ProxyCookie,
}

/// The claims of a signed token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Kind.
    pub typ: TokenKind,
    /// The user.
    pub sub: UserId,
    /// Issued at, Unix milliseconds.
    pub iat: i64,
    /// Expires at, Unix milliseconds.
    pub exp: i64,
    /// Unique id of this token.
    pub jti: Uuid,
    /// Refresh and access tokens: the login (refresh family) they belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fam: Option<Uuid>,
    /// Proxy tokens minted with an API token: that token, so the proxy
    /// stops working when it is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tok: Option<Uuid>,
    /// Proxy tokens: the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<SessionId>,
    /// Proxy tokens: the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svc: Option<String>,
}

impl Claims {
    /// New claims of `typ` for `sub`, valid for `ttl` from `now` (ms).
    pub fn new(typ: TokenKind, sub: UserId, now: i64, ttl: Duration) -> Claims {
        Claims {
            typ,
            sub,
            iat: now,
            exp: now.saturating_add(ttl.as_millis() as i64),
            jti: Uuid::new_v4(),
            fam: None,
            tok: None,
            sid: None,
            svc: None,
        }
    }

    /// Signs the claims into a token.
    pub fn sign(&self, signer: &dyn TokenSigner) -> String {
        // Serializing plain data into a Vec cannot fail.
        let payload = serde_json::to_vec(self).unwrap_or_default();
        signer.sign(&payload)
    }

    /// Verifies `token` and returns its claims if it is of kind `typ` and
    /// not expired at `now` (ms). The signature is checked (in constant
    /// time) before anything in the payload is believed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use rtunnel_auth::HmacSigner;
    /// use rtunnel_auth::claims::{Claims, TokenKind};
    /// use rtunnel_core::token::TokenError;
    ///
    /// let signer = HmacSigner::new("k1", &[9u8; 32]).unwrap();
    /// let user = rtunnel_core::ids::UserId::new();
    /// let token = Claims::new(TokenKind::Access, user, 1_000, Duration::from_secs(60)).sign(&signer);
    /// assert_eq!(Claims::verify(&signer, &token, TokenKind::Access, 2_000).unwrap().sub, user);
    /// assert_eq!(Claims::verify(&signer, &token, TokenKind::Refresh, 2_000), Err(TokenError::WrongKind));
    /// assert_eq!(Claims::verify(&signer, &token, TokenKind::Access, 61_000), Err(TokenError::Expired));
    /// ```
    pub fn verify(
        signer: &dyn TokenSigner,
        token: &str,
        typ: TokenKind,
        now: i64,
    ) -> Result<Claims, TokenError> {
        let payload = signer.verify(token)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if claims.typ != typ {
            return Err(TokenError::WrongKind);
        }
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HmacSigner;

    fn signer() -> HmacSigner {
        HmacSigner::new("k1", &[5u8; 32]).unwrap()
    }

    #[test]
    fn each_kind_verifies_only_as_itself() {
        let s = signer();
        let user = UserId::new();
        let kinds = [
            TokenKind::Access,
            TokenKind::Refresh,
            TokenKind::Proxy,
            TokenKind::ProxyCookie,
        ];
        for typ in kinds {
            let token = Claims::new(typ, user, 0, ACCESS_TTL).sign(&s);
            for expected in kinds {
                let got = Claims::verify(&s, &token, expected, 1);
                if typ == expected {
                    assert_eq!(got.unwrap().sub, user);
                } else {
                    assert_eq!(got, Err(TokenError::WrongKind));
                }
            }
        }
    }

    #[test]
    fn expiry_is_exclusive() {
        let s = signer();
        let c = Claims::new(
            TokenKind::Access,
            UserId::new(),
            1000,
            Duration::from_millis(10),
        );
        let t = c.sign(&s);
        assert!(Claims::verify(&s, &t, TokenKind::Access, 1009).is_ok());
        assert_eq!(
            Claims::verify(&s, &t, TokenKind::Access, 1010),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn forged_tampered_and_foreign_tokens_are_refused() {
        let s = signer();
        let c = Claims::new(TokenKind::Access, UserId::new(), 0, ACCESS_TTL);
        let token = c.sign(&s);
        // Another key with the same id.
        let other = HmacSigner::new("k1", &[6u8; 32]).unwrap();
        assert_eq!(
            Claims::verify(&other, &token, TokenKind::Access, 1),
            Err(TokenError::BadSignature)
        );
        // A key id the verifier does not hold.
        let stranger = HmacSigner::new("k2", &[5u8; 32]).unwrap();
        assert_eq!(
            Claims::verify(&s, &c.sign(&stranger), TokenKind::Access, 1),
            Err(TokenError::UnknownKey)
        );
        // Claims edited after signing (a longer life, another user).
        let mut longer = c.clone();
        longer.exp += 1_000_000;
        let forged = longer.sign(&s);
        let spliced = format!(
            "{}.{}",
            forged.rsplit_once('.').unwrap().0,
            token.rsplit_once('.').unwrap().1
        );
        assert_eq!(
            Claims::verify(&s, &spliced, TokenKind::Access, 1),
            Err(TokenError::BadSignature)
        );
        // A signed payload that is not claims.
        assert_eq!(
            Claims::verify(&s, &s.sign(b"[1,2,3]"), TokenKind::Access, 1),
            Err(TokenError::Malformed)
        );
    }
}
