//! Signing and verifying tokens, independent of the algorithm.
//!
//! The HMAC-SHA256 implementation with key ids is `rtunnel_auth::HmacSigner`.

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is longer than the parser accepts.
    #[error("token too long")]
    TooLong,
    /// The token is not in the expected format.
    #[error("malformed token")]
    Malformed,
    /// The token names a key this signer does not hold.
    #[error("unknown signing key")]
    UnknownKey,
    /// The signature does not match.
    #[error("bad signature")]
    BadSignature,
    /// The token was good but its time is over.
    #[error("token expired")]
    Expired,
    /// A good token of another kind (an access token where a refresh token
    /// is expected, a proxy token as a login...).
    #[error("wrong kind of token")]
    WrongKind,
}

/// Signs payloads into tokens and verifies them (in constant time).
pub trait TokenSigner: Send + Sync {
    /// Returns a token carrying `payload`, signed with the current key.
    fn sign(&self, payload: &[u8]) -> String;
    /// Checks a token's signature and returns its payload.
    fn verify(&self, token: &str) -> Result<Vec<u8>, TokenError>;
}
