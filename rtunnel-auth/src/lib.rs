//! # rtunnel-auth
//!
//! Everything that guards access in rtunnel:
//!
//! - [`secret`]: random secrets, their stored hashes and constant-time checks;
//! - [`api_token`]: the API token format (a public id and a secret half);
//! - [`signer`]: [`HmacSigner`], the HMAC-SHA256
//!   [`TokenSigner`](rtunnel_core::token::TokenSigner) with key ids;
//! - [`claims`]: typed access, refresh and proxy tokens over a signer;
//! - [`launch_token`]: the session launcher's token, in its contract's format;
//! - [`access`]: the one function that decides what a user may do.
//!
//! ```
//! use rtunnel_auth::api_token::ApiToken;
//! use rtunnel_auth::secret::verify_secret;
//!
//! let (token, stored_hash) = ApiToken::generate();
//! let shown = token.to_string();
//! let parsed = ApiToken::parse(&shown).unwrap();
//! assert_eq!(parsed.id, token.id);
//! assert!(verify_secret(&parsed.secret, &stored_hash));
//! ```

pub mod access;
pub mod api_token;
pub mod claims;
pub mod launch_token;
pub mod mesh;
pub mod node;
pub mod password;
pub mod secret;
pub mod signer;

pub use signer::HmacSigner;

/// The property the `tokens` fuzz target checks, shared with the corpus
/// replay test so both run the same code. Not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use rtunnel_core::token::TokenSigner;

    use crate::HmacSigner;
    use crate::api_token::{ApiToken, MAX_TOKEN_LEN};
    use crate::claims::{Claims, TokenKind};
    use crate::launch_token::LaunchSigner;

    /// Parsers never panic; what parses re-formats to itself; no input
    /// verifies under a key it was not signed with, and signed inputs verify.
    pub fn check_tokens(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Some(token) = ApiToken::parse(text) {
            assert!(text.len() <= MAX_TOKEN_LEN);
            assert_eq!(ApiToken::parse(&token.to_string()), Some(token));
        }
        let signer = HmacSigner::new("fuzz", &[0x42; 32]).unwrap_or_else(|_| unreachable!());
        // Forging needs the key: no input verifies unless signed with it,
        // whatever the token's format.
        assert!(signer.verify(text).is_err());
        for kind in [TokenKind::Access, TokenKind::Refresh, TokenKind::Proxy] {
            assert!(Claims::verify(&signer, text, kind, 0).is_err());
        }
        let launch = LaunchSigner::new(&[0x42; 32]).unwrap_or_else(|_| unreachable!());
        assert!(launch.verify(text, 0).is_err());
        let node = crate::node::NodeKey::new(&[0x42; 32]).unwrap_or_else(|_| unreachable!());
        let mut seen = crate::node::NonceCache::default();
        assert!(node.verify(text, "fuzz", 0, &mut seen).is_err());
        let token = signer.sign(data);
        if token.len() <= crate::signer::MAX_SIGNED_TOKEN_LEN {
            assert_eq!(signer.verify(&token).ok().as_deref(), Some(data));
        } else {
            assert!(signer.verify(&token).is_err());
        }
    }
}
