//! # rtunnel-auth
//!
//! Everything that guards access in rtunnel:
//!
//! - [`secret`]: random secrets, their stored hashes and constant-time checks;
//! - [`api_token`]: the API token format (a public id and a secret half);
//! - [`signer`]: [`HmacSigner`], the HMAC-SHA256
//!   [`TokenSigner`](rtunnel_core::token::TokenSigner) with key ids;
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
pub mod secret;
pub mod signer;

pub use signer::HmacSigner;
