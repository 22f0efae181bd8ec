//! User passwords, stored as argon2id hashes in PHC string form.
//!
//! Passwords are guessable, so unlike the random secrets of
//! [`crate::secret`] they get a slow, memory-hard hash: argon2id with the
//! OWASP parameters (19 MiB, 2 passes, 1 lane). The PHC string carries its
//! parameters, so hashes made with other parameters keep verifying.
//!
//! ```
//! use rtunnel_auth::password::{hash_password, verify_password};
//!
//! let stored = hash_password("correct horse battery staple").unwrap();
//! assert!(stored.starts_with("$argon2id$"));
//! assert!(verify_password("correct horse battery staple", &stored));
//! assert!(!verify_password("Tr0ub4dor&3", &stored));
//! ```

use std::sync::LazyLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;

/// Shortest password accepted when one is set.
pub const MIN_PASSWORD_LEN: usize = 8;

/// Longest password accepted, in bytes; longer input is refused unhashed.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Why a new password is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    /// Fewer than [`MIN_PASSWORD_LEN`] characters.
    #[error("a password needs at least {MIN_PASSWORD_LEN} characters")]
    TooShort,
    /// More than [`MAX_PASSWORD_LEN`] bytes.
    #[error("a password has at most {MAX_PASSWORD_LEN} bytes")]
    TooLong,
    /// The hash function failed (it does not with valid parameters).
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

fn argon2() -> Argon2<'static> {
    // OWASP's first argon2id recommendation. Params::new only fails for
    // out-of-range values, which these are not.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Checks a new password's length and hashes it with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(PasswordError::TooShort);
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(PasswordError::TooLong);
    }
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches the stored PHC string. The final comparison
/// is constant-time; an unparsable stored hash matches nothing.
pub fn verify_password(password: &str, stored: &str) -> bool {
    if password.len() > MAX_PASSWORD_LEN {
        return false;
    }
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    argon2()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password("not a real password, only burns time").unwrap_or_default());

/// Spends the same work as [`verify_password`] when there is no user (or no
/// password) to check against, so the answer's timing does not tell whether
/// a user name exists.
pub fn verify_password_against_nothing(password: &str) -> bool {
    let _ = verify_password(password, &DUMMY_HASH);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_salted_and_verify_only_their_password() {
        let a = hash_password("first password").unwrap();
        let b = hash_password("first password").unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(verify_password("first password", &a));
        assert!(verify_password("first password", &b));
        assert!(!verify_password("first passwore", &a));
        assert!(!verify_password("", &a));
        assert!(!verify_password("first password", "not a phc string"));
        assert!(!verify_password_against_nothing("first password"));
    }

    #[test]
    fn lengths_are_bounded() {
        assert_eq!(hash_password("short"), Err(PasswordError::TooShort));
        let long = "x".repeat(MAX_PASSWORD_LEN + 1);
        assert_eq!(hash_password(&long), Err(PasswordError::TooLong));
        let ok = "x".repeat(MAX_PASSWORD_LEN);
        let h = hash_password(&ok).unwrap();
        assert!(verify_password(&ok, &h));
        assert!(!verify_password(&long, &h));
    }
}
