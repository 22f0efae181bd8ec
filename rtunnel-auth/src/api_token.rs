//! API tokens: `rtk_<id as 32 hex>_<secret>`.
//!
//! The id half finds the stored row; the secret half is checked against its
//! stored hash in constant time. Only the hash is stored.

use std::fmt;

use uuid::Uuid;

use crate::secret::{generate_secret, hash_secret};

/// Prefix of every API token, so leaked tokens are easy to recognise.
pub const PREFIX: &str = "rtk_";

/// Longest token string accepted by [`ApiToken::parse`].
pub const MAX_TOKEN_LEN: usize = 128;

/// A parsed API token.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// The public id half.
    pub id: Uuid,
    /// The secret half.
    pub secret: String,
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}_{}", self.id.simple(), self.secret)
    }
}

impl ApiToken {
    /// A new token and the hash of its secret, to store.
    pub fn generate() -> (ApiToken, String) {
        let token = ApiToken {
            id: Uuid::new_v4(),
            secret: generate_secret(),
        };
        let hash = hash_secret(&token.secret);
        (token, hash)
    }

    /// Parses a token string; `None` for anything not in the format.
    pub fn parse(s: &str) -> Option<ApiToken> {
        if s.len() > MAX_TOKEN_LEN {
            return None;
        }
        let rest = s.strip_prefix(PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        if id.len() != 32 || secret.is_empty() {
            return None;
        }
        let id = Uuid::try_parse(id).ok()?;
        Some(ApiToken {
            id,
            secret: secret.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_junk_is_refused() {
        let (t, _) = ApiToken::generate();
        let s = t.to_string();
        assert!(s.starts_with("rtk_"));
        assert_eq!(ApiToken::parse(&s), Some(t.clone()));
        assert!(!format!("{t:?}").contains(&t.secret));
        for bad in [
            "",
            "rtk_",
            "rtk_abc_def",
            "xyz_00000000000000000000000000000000_s",
            "rtk_00000000000000000000000000000000_",
            &format!("{s}{}", "a".repeat(MAX_TOKEN_LEN)),
        ] {
            assert_eq!(ApiToken::parse(bad), None, "{bad:?}");
        }
    }
}
